"""Train one config and append a JSON line of its results to ``benchmarks/results/``.

    python benchmarks/train_bench.py --config configs/mnist_mlp_bp.yaml --data-dir DIR \
        [--out benchmarks/results/train.jsonl] [section.key=value ...]

The line records the config, seed, epochs, data, the final-epoch test accuracy (and, labelled,
the best test epoch and the validation-selected epoch when a validation split exists), training
images/s (mean over epochs after the first, which includes warm-up), peak device memory
(``torch.cuda.max_memory_allocated``), wall time, commit, device, torch version and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bioprop.train import Trainer, load_config  # noqa: E402


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def run(config_path: str, overrides, data_dir=None, out=None, bench="train", resume=False) -> dict:
    ov = list(overrides) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cfg = load_config(config_path, ov)
    trainer = Trainer(cfg, resume=resume)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    t0 = time.perf_counter()
    final = trainer.fit()
    wall = time.perf_counter() - t0
    hist = trainer.history
    ips = [r["train_images_per_s"] for r in hist[1:]] or [hist[0]["train_images_per_s"]]
    tests = [(r["test_acc"], r["epoch"]) for r in hist if "test_acc" in r]
    row = {
        "bench": bench,
        "config": _rel(config_path),
        "overrides": [o for o in overrides if not o.startswith("train.out_dir=")],
        "model": cfg.model, "rule": cfg.rule, "data": cfg.data["name"], "dataset": trainer.dataset.describe(),
        "seed": cfg.train.seed, "epochs": cfg.train.epochs,
        "shortened": bool(cfg.train.max_steps_per_epoch),
        "test_acc": final.get("test_acc"), "selection": "final epoch",
        "best_test_acc": max(tests)[0] if tests else None, "best_test_epoch": max(tests)[1] if tests else None,
        "train_images_per_s": sum(ips) / len(ips),
        "peak_memory_mib": (torch.cuda.max_memory_allocated(trainer.device) / 2**20
                            if trainer.device.type == "cuda" else None),
        "wall_s": wall,
        "train_time_total_s": sum(r["train_time_s"] for r in hist),
        "resumed": bool(resume),
        "curve": [{k: r[k] for k in ("epoch", "train_loss", "train_acc", "test_acc", "val_acc") if k in r}
                  for r in hist],
        **trainer.env,
    }
    vals = [(r["val_acc"], r["test_acc"], r["epoch"]) for r in hist if "val_acc" in r and "test_acc" in r]
    if vals:
        v = max(vals, key=lambda t: t[0])
        row.update({"val_selected_test_acc": v[1], "val_selected_epoch": v[2]})
    out = Path(out or ROOT / "benchmarks" / "results" / f"{bench}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("config", "test_acc", "best_test_acc", "train_images_per_s",
                                          "peak_memory_mib", "wall_s", "device")}))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--out")
    p.add_argument("--bench", default="train")
    p.add_argument("--resume", action="store_true", help="continue the run's last checkpoint")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    run(a.config, a.overrides, a.data_dir, a.out, a.bench, a.resume)


if __name__ == "__main__":
    main()
