#!/usr/bin/env bash
# IDE on AlexNet-F: the memory-vs-T benchmark, and a CIFAR-10 (JPEG q75 copy) / T=30 / LIF training
# run that outlives one device call (it runs detached and the next calls wait on it).
#   run_ide_alexnet_gpu.sh memory OUT_JSONL          ide_memory.py: ide and bptt, T in 5,10,30,100, batch 128
#   run_ide_alexnet_gpu.sh start CIFAR RUNS BUDGET_S  pick E epochs that fit BUDGET_S at the measured
#        ide step time (from RUNS/../ide_memory jsonl given as $MEM), shorten the recipe to E epochs
#        (x0.1 at E/2 and 3E/4, same warm-up; labelled shortened), and launch it detached
#   run_ide_alexnet_gpu.sh wait RUNS SECONDS          wait, printing the epochs done
#   (EXTRA: more overrides for the training run, e.g. a CPU smoke test's train.max_steps_per_epoch=2)
#   run_ide_alexnet_gpu.sh finish RUNS OUT            stop the run if still going, write its JSON line
#        (a run stopped early is recorded as such) to OUT/train.jsonl, pack its metrics.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
CFG=configs/ide_alexnet_f_cifar10_t30_lif.yaml
NAME=ide_alexnet_f_cifar10_t30_lif
cmd=$1; shift
case $cmd in
memory)
  python benchmarks/ide_memory.py --model alexnet_f --batch 128 --steps 5,10,30,100 --out "$1" ${MEM_ARGS:-} ;;
start)
  CIFAR=$1; RUNS=$2; BUDGET=$3
  E=$(python - "$MEM" "$BUDGET" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ide = {r["T"]: r["median_ms"] for r in rows if r["rule"] == "ide" and "median_ms" in r}
ms = ide.get(30, ide[max(ide)])  # the step time at T=30 (smoke runs: the largest T measured)
epoch_s = ms / 1e3 * 391 * 1.6 + 15   # 391 steps; x1.6 for sharing the GPU and the data path; test pass
print(max(2, math.floor(float(sys.argv[2]) / epoch_s)))
EOF
) || exit 1
  M1=$((E / 2)); M2=$((3 * E / 4)); [ "$M2" -le "$M1" ] && M2=$((M1 + 1))
  echo "AlexNet-F: $E epochs (milestones $M1, $M2)" | tee "$RUNS.plan"
  mkdir -p "$RUNS"
  echo "train.epochs=$E schedule.milestones=[$M1,$M2] ${EXTRA:-}" > "$RUNS/overrides.txt"
  setsid nohup python benchmarks/train_bench.py --config $CFG --data-dir "$CIFAR" --out "$RUNS/train.jsonl" \
    train.epochs="$E" "schedule.milestones=[$M1,$M2]" train.name=$NAME train.out_dir="$RUNS" ${EXTRA:-} \
    > "$RUNS/log.txt" 2>&1 < /dev/null &
  echo $! > "$RUNS/pid" ;;
wait)  # RUNS may be several run folders, quoted: "A B"
  END=$((SECONDS + $2))
  while [ $SECONDS -lt $END ]; do
    alive=0
    for R in $1; do kill -0 "$(cat "$R/pid")" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 20
  done
  for R in $1; do echo "$R: $(tail -n 1 "$R/$NAME/metrics.jsonl" 2>/dev/null | cut -c1-200)"; done ;;
finish)
  RUNS=$1; OUT=$2; read -r -a OV < "$RUNS/overrides.txt"
  if kill -0 "$(cat "$RUNS/pid")" 2>/dev/null; then
    kill "$(cat "$RUNS/pid")"; sleep 3
    python benchmarks/train_bench.py --record "$RUNS/$NAME" --config $CFG --out "$OUT/train.jsonl" "${OV[@]}"
  else
    cat "$RUNS/train.jsonl" >> "$OUT/train.jsonl"
  fi
  tar czf "$OUT/$(basename "$RUNS").tgz" -C "$RUNS" log.txt $(cd "$RUNS" && ls "$NAME/metrics.jsonl" 2>/dev/null) ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
