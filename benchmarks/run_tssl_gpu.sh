#!/usr/bin/env bash
# TSSL-BP on one GPU across several device calls (the runs go on detached between calls):
#   run_tssl_gpu.sh start SRC RUNS      1. the GPU-only tests of tests/test_tssl.py (CUDA-graph step ==
#        eager step in float64); the runs use rule.cuda_graph=true only if they pass; 2. (GPU idle)
#        tssl_speed.py: train images/s of tssl, tssl+graph and bptt on every TSSL-BP network, T=5,
#        batch 50 -> RUNS/tssl_speed.jsonl; 3. launch the reference recipes detached: MNIST
#        15C5-P2-40C5-P2-300, Fashion-MNIST 32C5-P2-64C5-P2-1024 and 400-400, CIFAR-10 (JPEG q75 copy)
#        96C3-...-1024-1024 (full epoch counts: they run until `finish`; a stopped run is recorded as
#        shortened, with its curve)
#   run_tssl_gpu.sh wait RUNS SECONDS / finish RUNS OUT: see benchmarks/detached.sh (finish also
#        copies tssl_speed.jsonl to OUT)
# SRC: a folder with mnist/ and fashion-mnist/ (IDX files), cifar10-jpeg75.tar.gz, cifar10_from_jpeg.py
# SMOKE=1: CPU-sized (2 steps per epoch, 512 training images, one small speed measurement).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
cmd=$1; shift
case $cmd in
start)
  SRC=$(realpath "$1"); RUNS=$(realpath -m "$2"); mkdir -p "$RUNS"
  SMALL=(); SPEED=()
  if [ -n "${SMOKE:-}" ]; then
    SMALL=(train.max_steps_per_epoch=2 data.train_limit=512 data.eval_batch_size=500 train.epochs=2)
    SPEED=(--models tssl_mnist_cnn,tssl_fmnist_mlp --repeat 2)
  fi
  CIFAR=$RUNS/cifar
  [ -d "$CIFAR/cifar-10-batches-py" ] || python "$SRC/cifar10_from_jpeg.py" "$SRC/cifar10-jpeg75.tar.gz" "$CIFAR" || exit 1
  GRAPH=false
  if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    python -m pytest -q tests/test_tssl.py -k cuda_graph -p no:cacheprovider > "$RUNS/log_graph_test.txt" 2>&1 \
      && GRAPH=true
    tail -n 3 "$RUNS/log_graph_test.txt"
  fi
  echo "rule.cuda_graph=$GRAPH" | tee "$RUNS/graph.txt"
  python benchmarks/tssl_speed.py "${SPEED[@]}" --out "$RUNS/tssl_speed.jsonl" 2>&1 | tee "$RUNS/log_speed.txt"
  L=benchmarks/detached.sh
  $L launch "$RUNS" tssl_mnist_cnn configs/tssl_mnist_cnn.yaml "$SRC/mnist" rule.cuda_graph=$GRAPH "${SMALL[@]}"
  for n in tssl_fmnist_cnn tssl_fmnist_mlp; do
    $L launch "$RUNS" $n configs/$n.yaml "$SRC/fashion-mnist" rule.cuda_graph=$GRAPH "${SMALL[@]}"
  done
  $L launch "$RUNS" tssl_cifar10_cnn configs/tssl_cifar10_cnn.yaml "$CIFAR" rule.cuda_graph=$GRAPH "${SMALL[@]}" ;;
wait) benchmarks/detached.sh wait "$@" ;;
finish) benchmarks/detached.sh finish "$@" && cp "$1/tssl_speed.jsonl" "$2/" ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
