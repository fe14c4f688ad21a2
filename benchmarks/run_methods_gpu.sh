#!/usr/bin/env bash
# Predictive coding and Two Routes on one GPU, in one call of at most ~9.5 minutes:
#   1. (device otherwise idle) pc_speed.py: time per step of every PC variant against eager BP;
#      alignment_resnet20.py time: time per step of every Two Routes rule against eager BP, and the
#      number of epochs E that lets all eight ResNet-20 runs train concurrently within BUDGET_S;
#   2. (concurrently) ResNet-20 / CIFAR-10 (JPEG q75 copy) with BP and each rule for E epochs (one
#      schedule for all), and the paper's 2-epoch MNIST runs of BP, FixedPred and Strict on the
#      5-block CNN. A run still going at the deadline is stopped and recorded as shortened.
# Usage: benchmarks/run_methods_gpu.sh SRC OUT [BUDGET_S] [DEADLINE_S]
#   SRC: a folder with mnist/ (IDX files), cifar10-jpeg75.tar.gz and cifar10_from_jpeg.py
#   OUT: where the JSON lines go, with logs.tgz (logs, the runs' metrics.jsonl, the chosen E):
#        at most 6 files, as a device call brings back 8.
#   SMOKE=1: CPU-sized smoke run (2 steps per epoch, 512 training images, 1 epoch).
#   BEFORE_TRAINING: a command run between the timing and the training phases (e.g. another
#        timing benchmark that wants the device idle, then the launch of a detached run).
#   VARIANTS=1: also train sa_x10 on the same schedule (SA with reg_scale 10: B's time constant
#        1 / (lr 2 alpha reg_scale) falls from 5,000 to 500 steps; same fixed point). It shares the
#        GPU with the eight runs, so E is scaled by 8/9. (Batch-centred AA with reg_scale 10 is left
#        out: on the CPU it reached NaN at step 393, alignment_dynamics.jsonl.)
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$(realpath "$1"); DEST=$(realpath -m "$2"); BUDGET=${3:-400}; DEADLINE=${4:-560}
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
OUT=$(mktemp -d /tmp/bioprop_methods.XXXX); mkdir -p "$DEST"
RUNS=${RUNS:-/tmp/bioprop_runs}; CIFAR=${CIFAR:-/tmp/bioprop_cifar}
SMALL=(); TIME_SMALL=(); PC_SMALL=()
if [ -n "${SMOKE:-}" ]; then
  SMALL=(train.max_steps_per_epoch=2 data.train_limit=512 data.eval_batch_size=500); TIME_SMALL=(--repeat 2 --train-limit 512)
  PC_SMALL=(--repeat 2)
fi
[ -d "$CIFAR/cifar-10-batches-py" ] || python "$SRC/cifar10_from_jpeg.py" "$SRC/cifar10-jpeg75.tar.gz" "$CIFAR" || exit 1

python benchmarks/pc_speed.py "${PC_SMALL[@]}" --out "$OUT/pc_speed.jsonl" 2>&1 | tee "$OUT/log_pc_speed.txt"
python benchmarks/alignment_resnet20.py time --data-dir "$CIFAR" "${TIME_SMALL[@]}" --out "$OUT/alignment_resnet20_step.jsonl" \
  --fit-budget-s "$BUDGET" --fit-out "$OUT/epochs.txt" 2>&1 | tee "$OUT/log_alignment_time.txt"
E=$(cat "$OUT/epochs.txt"); [ -n "${VARIANTS:-}" ] && E=$(( E * 8 / 9 > 0 ? E * 8 / 9 : 1 ))
[ -n "${SMOKE:-}" ] && E=1
[ -n "${BEFORE_TRAINING:-}" ] && bash -c "$BEFORE_TRAINING"

train() {  # NAME CONFIG OUT_JSONL RUN_ROOT overrides...: train with a deadline; record a stopped run
  local name=$1 cfg=$2 out=$3 root=$4; shift 4
  timeout $((DEADLINE - SECONDS)) python benchmarks/train_bench.py --config "$cfg" --data-dir "$DATA" --out "$out" \
    "$@" "${SMALL[@]}" train.name="$name" train.out_dir="$root" > "$OUT/log_$name.txt" 2>&1
  if [ $? -eq 124 ]; then
    python benchmarks/train_bench.py --record "$root/$name" --config "$cfg" --out "$out" "$@" >> "$OUT/log_$name.txt" 2>&1
  fi
}
DATA=$CIFAR
for r in bp fa sign_symmetry kp wm ia sa aa; do
  extra=(); [ "$r" != bp ] && extra=(rule.compare_every=100)
  train "$r" configs/alignment_resnet20_cifar10.yaml "$OUT/alignment_resnet20.jsonl" "$RUNS/alignment" \
    rule="$r" "${extra[@]}" train.epochs="$E" &
done
if [ -n "${VARIANTS:-}" ]; then
  train sa_x10 configs/alignment_resnet20_cifar10.yaml "$OUT/alignment_resnet20.jsonl" "$RUNS/alignment" \
    rule=sa rule.reg_scale=10 rule.compare_every=100 train.epochs="$E" &
fi
DATA=$SRC
for v in bp fixed_pred strict; do
  extra=(); [ "$v" != bp ] && extra=(rule.compare_every=50)
  train "pc_$v" "configs/pc_mnist_cnn_$v.yaml" "$OUT/train.jsonl" "$RUNS/pc" "${extra[@]}" &
done
wait
tail -n 2 "$OUT"/log_*.txt
cp "$OUT"/*.jsonl "$DEST"/
(cd "$RUNS" && find . -name metrics.jsonl > "$OUT/metrics_files.txt")
tar czf "$DEST/logs.tgz" -C "$OUT" $(cd "$OUT" && ls log_*.txt epochs.txt) -C "$RUNS" -T "$OUT/metrics_files.txt"
