#!/usr/bin/env bash
# IDE's fast path on one GPU across several device calls (issue #8):
#   run_ide_fast_gpu.sh start SRC RUNS   1. the GPU-only tests of tests/test_ide_fast.py (CUDA-graph
#        simulation == eager, bitwise); the training runs use rule.cuda_graph=true only if they pass;
#        2. (GPU idle) ide_speed.py: every model of the speed table, every variant against the
#        reference path -> RUNS/ide_speed.jsonl; 3. launch detached: F400 / Fashion-MNIST / T=5 on the
#        fast path, full 100-epoch recipe; AlexNet-F / CIFAR-10 (JPEG q75 copy) / T=30 for 3 epochs on
#        the reference path and on the fast path (same seed: equal accuracy within noise); AlexNet-F
#        T=30 on the fast path, shortened to E epochs (default 30; x0.1 at E/2 and 3E/4)
#        (issue #3's F64C5 bar has a driver of its own that fits one call: run_f64c5_gpu.sh)
#   run_ide_fast_gpu.sh wait RUNS SECONDS / finish RUNS OUT: benchmarks/detached.sh (finish also
#        copies ide_speed.jsonl to OUT)
# SRC: a folder with fashion-mnist/ (IDX files), cifar10-jpeg75.tar.gz, cifar10_from_jpeg.py
# FAST: the fast-path options of the training runs (default: rule.precision=bf16 rule.channels_last=true
#       plus rule.cuda_graph=true when the graph tests pass). E: epochs of the long AlexNet-F run.
# SMOKE=1: CPU-sized (2 steps per epoch, 512 images, tiny speed benchmark).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
cmd=$1; shift
case $cmd in
start)
  SRC=$(realpath "$1"); RUNS=$(realpath -m "$2"); mkdir -p "$RUNS"
  SMALL=(); TINY=(); SPEED=(); E=${E:-30}
  if [ -n "${SMOKE:-}" ]; then
    SMALL=(train.max_steps_per_epoch=2 data.train_limit=512 data.eval_batch_size=500 model.time_steps=2 train.epochs=2)
    TINY=("model.channels=[4,4,4,4,4]"); SPEED=(--smoke --batch 8 --repeat 2); E=2
  fi
  CIFAR=$RUNS/cifar
  [ -d "$CIFAR/cifar-10-batches-py" ] || python "$SRC/cifar10_from_jpeg.py" "$SRC/cifar10-jpeg75.tar.gz" "$CIFAR" || exit 1
  GRAPH=false
  if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    python -m pytest -q tests/test_ide_fast.py -p no:cacheprovider > "$RUNS/log_fast_tests.txt" 2>&1 && GRAPH=true
    tail -n 3 "$RUNS/log_fast_tests.txt"
  fi
  read -r -a FASTOPT <<< "${FAST:-rule.precision=bf16 rule.channels_last=true rule.cuda_graph=$GRAPH}"
  echo "${FASTOPT[*]}" | tee "$RUNS/fast_options.txt"
  python benchmarks/ide_speed.py "${SPEED[@]}" --out "$RUNS/ide_speed.jsonl" 2>&1 | tee "$RUNS/log_speed.txt"
  L=benchmarks/detached.sh
  A=configs/ide_alexnet_f_cifar10_t30_lif.yaml
  $L launch "$RUNS" ide_f400_fmnist_fast configs/ide_f400_fmnist_lif.yaml "$SRC/fashion-mnist" "${FASTOPT[@]}" "${SMALL[@]}"
  $L launch "$RUNS" ide_alexnet_3ep_reference $A "$CIFAR" rule.fast=false train.epochs=3 "${SMALL[@]}" "${TINY[@]}"
  $L launch "$RUNS" ide_alexnet_3ep_fast $A "$CIFAR" "${FASTOPT[@]}" train.epochs=3 "${SMALL[@]}" "${TINY[@]}"
  $L launch "$RUNS" ide_alexnet_fast_${E}ep $A "$CIFAR" "${FASTOPT[@]}" train.epochs=$E \
    "schedule.milestones=[$((E / 2)),$((3 * E / 4))]" "${SMALL[@]}" "${TINY[@]}" ;;
wait) benchmarks/detached.sh wait "$@" ;;
finish) benchmarks/detached.sh finish "$@" && cp "$1/ide_speed.jsonl" "$2/" ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
