#!/usr/bin/env bash
# IDE core GPU runs (full recipe): F400 / Fashion-MNIST / T=5 / LIF and F64C5 / MNIST / T=30 / LIF,
# in parallel on one GPU. Each run checkpoints every epoch under RUNS; a run cut by the time limit
# resumes with RESUME=1. Usage: benchmarks/run_ide_core.sh DATA_DIR RUNS OUT_JSONL [LIMIT_S]
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=$1; RUNS=$2; OUT=$3; LIMIT=${4:-100000}
export PYTHONPATH=src CI=true
R=${RESUME:+--resume}
timeout "$LIMIT" python benchmarks/train_bench.py $R --config configs/ide_f400_fmnist_lif.yaml --data-dir "$DATA" --out "$OUT" train.out_dir="$RUNS" &
timeout "$LIMIT" python benchmarks/train_bench.py $R --config configs/ide_f64c5_mnist_lif.yaml --data-dir "$DATA" --out "$OUT" train.out_dir="$RUNS" &
wait
