#!/usr/bin/env bash
# Training runs that outlive one device call: launched detached, waited on by later calls (the
# GPU machine keeps them while it stays warm), then stopped and recorded.
#   detached.sh launch RUNS NAME CONFIG DATA [overrides...]   start train_bench.py on CONFIG in RUNS/NAME
#   detached.sh wait RUNS SECONDS     wait until every run in RUNS ended or SECONDS passed; print each last epoch
#   detached.sh finish RUNS OUT       stop the runs still going and write every run's JSON line to
#        OUT/train.jsonl (a stopped run is recorded as shortened, with its curve); pack the logs and
#        metrics into OUT/runs.tgz
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src CI=true PYTHONUNBUFFERED=1
cmd=$1; shift
case $cmd in
launch)
  RUNS=$(realpath -m "$1"); NAME=$2; CFG=$3; DATA=$4; shift 4; mkdir -p "$RUNS"
  printf '%s\n' "$CFG" "$@" > "$RUNS/plan_$NAME.txt"
  setsid nohup python benchmarks/train_bench.py --config "$CFG" --data-dir "$DATA" --out "$RUNS/train_$NAME.jsonl" \
    "$@" train.name="$NAME" train.out_dir="$RUNS" > "$RUNS/log_$NAME.txt" 2>&1 < /dev/null &
  echo $! > "$RUNS/pid_$NAME" ;;
wait)
  RUNS=$1; END=$((SECONDS + $2))
  while [ $SECONDS -lt $END ]; do
    alive=0
    for f in "$RUNS"/pid_*; do kill -0 "$(cat "$f")" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 15
  done
  for f in "$RUNS"/pid_*; do
    n=${f##*/pid_}; echo "$n: $(tail -n 1 "$RUNS/$n/metrics.jsonl" 2>/dev/null | cut -c1-220)"
  done ;;
finish)
  RUNS=$1; OUT=$(realpath -m "$2"); mkdir -p "$OUT"
  for f in "$RUNS"/pid_*; do
    n=${f##*/pid_}; mapfile -t PLAN < "$RUNS/plan_$n.txt"
    if kill -0 "$(cat "$f")" 2>/dev/null; then
      kill "$(cat "$f")"; sleep 3
      if [ -f "$RUNS/$n/metrics.jsonl" ]; then
        python benchmarks/train_bench.py --record "$RUNS/$n" --config "${PLAN[0]}" --out "$OUT/train.jsonl" "${PLAN[@]:1}"
      else
        echo "$n: stopped before its first epoch ended; nothing recorded (see log_$n.txt)"
      fi
    elif [ -f "$RUNS/train_$n.jsonl" ]; then
      cat "$RUNS/train_$n.jsonl" >> "$OUT/train.jsonl"
    fi
  done
  (cd "$RUNS" && tar czf "$OUT/runs.tgz" $(ls log_*.txt *.txt 2>/dev/null | sort -u) $(ls */metrics.jsonl 2>/dev/null)) ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
