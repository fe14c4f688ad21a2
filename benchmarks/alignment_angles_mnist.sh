#!/usr/bin/env bash
# The Two Routes angle metrics over training, on a CPU-sized run: an MLP 784-256-256-10 on the
# first 3,200 MNIST training images (50 steps of 64 per epoch, 12 epochs, SGD 0.01 momentum 0.9, seed 0)
# with each rule; every 5 steps the angle between each layer's B and W, every 10 the angle between
# its update and the BP gradient on the same batch. Plots both per epoch (plot_metrics.py).
# Usage: benchmarks/alignment_angles_mnist.sh MNIST_DIR [RUNS] [PNG]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "$1"); RUNS=${2:-/tmp/bioprop_angles}; PNG=${3:-benchmarks/results/alignment_angles_mnist.png}
export PYTHONPATH=src
rm -rf "$RUNS"
for r in fa sign_symmetry kp wm ia sa aa; do
  python -m bioprop.cli train --device cpu model=mlp "model.hidden=[256,256]" data.name=mnist "data.data_dir=$DATA" \
    data.train_limit=3200 optim.name=sgd optim.lr=0.01 optim.momentum=0.9 schedule.name=none train.epochs=12 \
    train.seed=0 rule="$r" rule.angle_every=5 rule.compare_every=10 "train.out_dir=$RUNS" train.name="$r" \
    | tail -n 1
done
python benchmarks/plot_metrics.py $(for r in fa sign_symmetry kp wm ia sa aa; do echo "$RUNS/$r"; done) --out "$PNG" \
  --title "MLP 784-256-256-10, MNIST (first 3,200 training images), SGD 0.01 m0.9, 12 epochs of 50 steps, seed 0, $(python -c 'import platform; print(platform.machine())') CPU, commit $(git rev-parse --short HEAD)"
