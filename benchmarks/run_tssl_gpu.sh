#!/usr/bin/env bash
# TSSL-BP on one GPU across several device calls (the runs go on detached between calls):
#   run_tssl_gpu.sh start SRC RUNS      1. the GPU-only tests of tests/test_tssl.py (CUDA-graph step ==
#        eager step in float64); the runs use rule.cuda_graph=true only if they pass; 2. (GPU idle)
#        tssl_speed.py: train images/s of tssl, tssl+graph and bptt on every TSSL-BP network, T=5,
#        batch 50; 3. launch the reference recipes detached: MNIST 15C5-P2-40C5-P2-300, Fashion-MNIST
#        32C5-P2-64C5-P2-1024 and 400-400, CIFAR-10 (JPEG q75 copy) 96C3-...-1024-1024 (full epoch
#        counts; they run until `finish`, so a stopped run is recorded as shortened, with its curve)
#   run_tssl_gpu.sh wait RUNS SECONDS   wait, printing each run's last epoch
#   run_tssl_gpu.sh finish RUNS OUT     stop the runs still going, write every run's JSON line to
#        OUT/train.jsonl (final epoch, validation-selected epoch, best test epoch labelled), copy
#        OUT/tssl_speed.jsonl, pack the logs and metrics into OUT/tssl_runs.tgz
# SRC: a folder with mnist/ and fashion-mnist/ (IDX files), cifar10-jpeg75.tar.gz, cifar10_from_jpeg.py
# SMOKE=1: CPU-sized (2 steps per epoch, 512 training images, one small speed measurement).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
RUNNAMES="tssl_mnist_cnn tssl_fmnist_cnn tssl_fmnist_mlp tssl_cifar10_cnn"
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
  for name in $RUNNAMES; do
    case $name in
      tssl_mnist_cnn) data=$SRC/mnist ;;
      tssl_fmnist_*) data=$SRC/fashion-mnist ;;
      *) data=$CIFAR ;;
    esac
    echo "rule.cuda_graph=$GRAPH ${SMALL[*]}" > "$RUNS/overrides_$name.txt"
    setsid nohup python benchmarks/train_bench.py --config "configs/$name.yaml" --data-dir "$data" \
      --out "$RUNS/train_$name.jsonl" rule.cuda_graph=$GRAPH "${SMALL[@]}" train.name="$name" train.out_dir="$RUNS" \
      > "$RUNS/log_$name.txt" 2>&1 < /dev/null &
    echo $! > "$RUNS/pid_$name"
  done ;;
wait)
  RUNS=$1; END=$((SECONDS + $2))
  while [ $SECONDS -lt $END ]; do
    alive=0
    for name in $RUNNAMES; do kill -0 "$(cat "$RUNS/pid_$name")" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 15
  done
  for name in $RUNNAMES; do echo "$name: $(tail -n 1 "$RUNS/$name/metrics.jsonl" 2>/dev/null | cut -c1-220)"; done ;;
finish)
  RUNS=$1; OUT=$(realpath -m "$2"); mkdir -p "$OUT"
  for name in $RUNNAMES; do
    read -r -a OV < "$RUNS/overrides_$name.txt"
    if kill -0 "$(cat "$RUNS/pid_$name")" 2>/dev/null; then
      kill "$(cat "$RUNS/pid_$name")"; sleep 3
      [ -f "$RUNS/$name/metrics.jsonl" ] && python benchmarks/train_bench.py --record "$RUNS/$name" \
        --config "configs/$name.yaml" --out "$OUT/train.jsonl" "${OV[@]}"
    elif [ -f "$RUNS/train_$name.jsonl" ]; then
      cat "$RUNS/train_$name.jsonl" >> "$OUT/train.jsonl"
    fi
  done
  cp "$RUNS/tssl_speed.jsonl" "$OUT/"
  (cd "$RUNS" && tar czf "$OUT/tssl_runs.tgz" log_*.txt graph.txt $(ls */metrics.jsonl 2>/dev/null)) ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
