"""Build the README's results tables from the JSON lines in ``benchmarks/results/``.

Each table lists the newest line per (config, overrides, seed) of one results file; figures are
never typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

RESULTS = Path(__file__).resolve().parent / "results"


def _rows(name: str) -> List[Dict]:
    f = RESULTS / name
    if not f.is_file():
        return []
    rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    newest: Dict[tuple, Dict] = {}
    for r in rows:
        newest[(r.get("config"), tuple(r.get("overrides", [])), r.get("seed"))] = r
    return list(newest.values())


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def train_table(name: str = "train.jsonl") -> str:
    rows = _rows(name)
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| config | data | rule | T | epochs | seed | test acc % (final epoch) | best test epoch % (labelled) | train img/s | peak MiB | device | commit |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["config"]):
        T = r["model"].get("time_steps", "-")
        ov = f" ({' '.join(r['overrides'])})" if r.get("overrides") else ""
        mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f}"
        short = " (shortened)" if r.get("shortened") else ""
        out.append(f"| `{r['config']}`{ov} | {r['data']} | {r['rule']['name']} | {T} | {r['epochs']}{short} | {r['seed']} "
                   f"| {_pct(r['test_acc'])} | {_pct(r.get('best_test_acc'))} | {r['train_images_per_s']:,.0f} "
                   f"| {mem} | {r['device']} | {r.get('commit') or '-'} |")
    return "\n".join(out) + "\n"


def results_markdown() -> str:
    return "**Training runs** (`benchmarks/results/train.jsonl`, from `benchmarks/train_bench.py`)\n\n" + train_table()


if __name__ == "__main__":
    print(results_markdown())
