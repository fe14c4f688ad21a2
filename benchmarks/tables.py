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


#: published figures of the reference implementations (REFERENCES.md), for the configs that reproduce them
PUBLISHED = {
    "configs/ide_f400_fmnist_if.yaml": "90.04 +- 0.09 (best 90.14)",
    "configs/ide_f400_fmnist_lif.yaml": "90.07 +- 0.10 (best 90.25)",
    "configs/ide_f64c5_mnist_if.yaml": "99.49 +- 0.04 (best 99.55)",
    "configs/ide_f64c5_mnist_lif.yaml": "99.53 +- 0.04 (best 99.59)",
    "configs/ide_f64c5_nmnist_if.yaml": "99.30 +- 0.04 (best 99.35)",
    "configs/ide_f64c5_nmnist_lif.yaml": "99.42 +- 0.04 (best 99.47)",
    "configs/ide_alexnet_f_cifar10_t30_lif.yaml": "91.74 +- 0.09 (best 91.92)",
}


def train_table(name: str = "train.jsonl", published: bool = True) -> str:
    rows = _rows(name)
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| config | data | rule | T | epochs | seed | test acc % (final epoch) | best test epoch % (labelled) "
           "| published (best test epoch) | train img/s | train time | peak MiB | device | commit |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["config"]):
        T = r["model"].get("time_steps", "-")
        shown = [o for o in r.get("overrides", []) if not o.startswith("train.out_dir=")]
        ov = f" ({' '.join(shown)})" if shown else ""
        mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f}"
        planned = r.get("planned_epochs") or r["epochs"]
        ep = f"{r['epochs']}" + (f" of {planned} (shortened)" if r.get("shortened") else "")
        acc = _pct(r["test_acc"]) + ("" if r["epochs"] == planned else f" (epoch {r['epochs']})")
        secs = r.get("train_time_total_s") or r.get("wall_s")
        tt = "-" if secs is None else f"{secs / 60:.1f} min"
        out.append(f"| `{r['config']}`{ov} | {r['data']} | {r['rule']['name']} | {T} | {ep} | {r['seed']} "
                   f"| {acc} | {_pct(r.get('best_test_acc'))} | {PUBLISHED.get(r['config'], '-') if published else '-'} "
                   f"| {r['train_images_per_s']:,.0f} | {tt} | {mem} | {r['device']} | {r.get('commit') or '-'} |")
    return "\n".join(out) + "\n"


def results_markdown() -> str:
    return ("**Training runs** (`benchmarks/results/train.jsonl`, from `benchmarks/train_bench.py`)\n\n"
            + train_table() + "\n**Ablation: spectral norm of the F64C5 feedback convolution** "
            "(`benchmarks/results/ablation_f64c5_sigma.jsonl`; 10-epoch schedule, x0.1 at 5 and 8, both runs "
            "sharing one GPU; `sigma_of=kernel` is the reference's normalisation)\n\n"
            + train_table("ablation_f64c5_sigma.jsonl", published=False))


if __name__ == "__main__":
    print(results_markdown())
