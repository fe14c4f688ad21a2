#!/usr/bin/env bash
# The foundation issue's GPU benchmark: the MLP (bp) and the spiking convnet (bptt, T=4) on the
# full MNIST, both runs in parallel on one GPU. Usage: benchmarks/run_foundation.sh DATA_DIR [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: run_foundation.sh DATA_DIR [OUT_JSONL]}
OUT=${2:-benchmarks/results/train.jsonl}
export PYTHONPATH=src CI=true
python benchmarks/train_bench.py --config configs/mnist_mlp_bp.yaml --data-dir "$DATA" --out "$OUT" train.out_dir=/tmp/runs &
python benchmarks/train_bench.py --config configs/mnist_snn_bptt.yaml --data-dir "$DATA" --out "$OUT" train.out_dir=/tmp/runs &
wait
