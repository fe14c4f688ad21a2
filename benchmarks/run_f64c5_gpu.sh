#!/usr/bin/env bash
# Issue #3's open bar in one device call: F64C5 / MNIST / T=30 / LIF (configs/ide_f64c5_mnist_lif.yaml)
# with several feedback bounds side by side on one GPU, on the fast path, on a schedule sized to
# the call, then every run recorded (a run the time limit stopped is recorded as shortened).
#   benchmarks/run_f64c5_gpu.sh DATA RUNS OUT [SECONDS]
# As one device call: here `mkdir -p .data/gpu && cp -r ../shared/data/mnist .data/gpu/`, then run
# `benchmarks/run_f64c5_gpu.sh .data/gpu /tmp/runs $OUT 500` with carry [".data/gpu"], timeout 600.
# DATA: a folder with mnist/ (IDX files); RUNS: scratch folder for the runs; OUT: where train.jsonl,
# runs.tgz and the feedback strength of each run's checkpoints (feedback.jsonl) are written;
# SECONDS (default 480): how long the call may train (probe included) before the runs are stopped
# and recorded.
# E: epochs, LR x0.1 at 30%, 60%, 90% of them (the recipe's 30/60/90 at E=100, which needs about
# 20 GPU minutes an arm on an H100, eager). The default, E=auto, sizes the schedule to the call: a
# probe trains every arm concurrently for two epochs of 50 steps, each with its test pass (the
# runs share the GPU as the real ones will; img/s from the second, past the warm-up),
# and E is the most epochs the slowest arm finishes in 85% of the SECONDS left (solver iterations
# grow as the feedback strengthens), at most the recipe's 100. Any E < 100 is a shortened
# schedule, which each row records (recipe_epochs) and the README's table says.
# ARMS: ';'-separated arms, each 'NAME override...' (default: the bound 1.8 < Vth on the exact
# Fourier bound, and the reference's kernel normalisation, which lets ||W|| grow to 1.8 Vth: the
# CPU proxy in the README; the operator bound 1.8 matched the Fourier one there and is left out so
# that the two arms get the longer schedule: add 'r1.8 model.fb_norm_range=1.8' to run it too).
# FAST: fast-path options (default bf16 + channels-last; add rule.cuda_graph=true once the GPU-only
# tests of tests/test_ide_fast.py have passed on that machine). SMOKE=1: CPU-sized.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
SRC=$(realpath "$1"); RUNS=$(realpath -m "$2"); OUT=$(realpath -m "$3"); LIMIT=${4:-480}
mkdir -p "$RUNS" "$OUT"
ARMS=${ARMS:-"fourier1.8 model.sigma_of=fourier model.fb_norm_range=1.8;kernel model.sigma_of=kernel"}
read -r -a FASTOPT <<< "${FAST:-rule.precision=bf16 rule.channels_last=true}"
SMALL=()
if [ -n "${SMOKE:-}" ]; then
  SMALL=(train.max_steps_per_epoch=2 data.train_limit=512 data.eval_batch_size=500 model.time_steps=2)
  FASTOPT=(); E=${E:-2}
fi
E=${E:-auto}
IFS=';' read -r -a ARMLIST <<< "$ARMS"
# launch_arms DIR PREFIX OVERRIDE...: every arm, detached, as DIR/PREFIX<arm name>, recorded in NAMES
launch_arms() {
  local dir=$1 prefix=$2 arm; shift 2; NAMES=()
  for arm in "${ARMLIST[@]}"; do
    read -r -a A <<< "$arm"
    NAMES+=("$prefix${A[0]}")
    benchmarks/detached.sh launch "$dir" "${NAMES[-1]}" configs/ide_f64c5_mnist_lif.yaml "$SRC/mnist" \
      "${FASTOPT[@]}" "$@" "${A[@]:1}" "${SMALL[@]}"
  done
}
if [ "$E" = auto ]; then
  launch_arms "$RUNS/probe" probe_ train.epochs=2 train.max_steps_per_epoch=50 train.keep_checkpoints=1
  benchmarks/detached.sh wait "$RUNS/probe" "$LIMIT" > /dev/null
  E=$(python benchmarks/train_bench.py --size-epochs "$RUNS/probe" --seconds $((LIMIT - SECONDS)) --max-epochs 100)
  [ -n "$E" ] || { echo "probe failed: see $RUNS/probe/log_*.txt" >&2; cat "$RUNS"/probe/log_*.txt >&2; exit 1; }
  echo "E=auto: $E epochs fit the $((LIMIT - SECONDS)) s left"
fi
ms() { local v=$(($1 * E / 10)); echo $((v < 1 ? 1 : v)); }  # a milestone at epoch 0 would cut the lr at once
launch_arms "$RUNS" ide_f64c5_ train.epochs=$E "schedule.milestones=[$(ms 3),$(ms 6),$(ms 9)]"
benchmarks/detached.sh wait "$RUNS" $((LIMIT - SECONDS))
benchmarks/detached.sh finish "$RUNS" "$OUT"
DIRS=()
for n in "${NAMES[@]}"; do [ -d "$RUNS/$n/checkpoints" ] && DIRS+=("$RUNS/$n"); done
[ ${#DIRS[@]} -gt 0 ] && python benchmarks/feedback_norm.py "${DIRS[@]}" > "$OUT/feedback.jsonl"
cat "$OUT/train.jsonl" 2>/dev/null | cut -c1-400
