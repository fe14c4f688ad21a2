"""Train one config and append a JSON line of its results to ``benchmarks/results/``.

    python benchmarks/train_bench.py --config configs/mnist_mlp_bp.yaml --data-dir DIR \
        [--out benchmarks/results/train.jsonl] [section.key=value ...]

The line records the config, seed, epochs (and the config's own, ``recipe_epochs``: a row with
fewer planned epochs ran a shortened schedule), data, the final-epoch test accuracy (and, labelled,
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


#: per-epoch figures kept in a row's curve (the IDE ones only where the run logged them)
CURVE_KEYS = ("epoch", "train_loss", "train_acc", "test_acc", "val_acc", "train/feedback/gain", "train/feedback/norm",
              "train/solver/iters", "train/fixed_point/distance")


def recipe_epochs(config_path: str):
    """The epochs of the config file itself, before overrides (None if it cannot be read)."""
    try:
        return load_config(config_path).train.epochs
    except Exception:  # noqa: BLE001 - a row is still written when its config has moved or changed
        return None


def result_row(cfg, hist, env, config_path, overrides, dataset, bench="train", peak_mib=None, wall=None,
               resumed=False, sizes=None) -> dict:
    """One JSON line of results from a run's config and per-epoch history (``sizes``: the numbers
    of training and test images, where known)."""
    ips = [r["train_images_per_s"] for r in hist[1:]] or [hist[0]["train_images_per_s"]]
    tests = [(r["test_acc"], r["epoch"]) for r in hist if "test_acc" in r]
    last = hist[-1]
    row = {
        "bench": bench,
        "config": _rel(config_path),
        "overrides": [o for o in overrides if not o.startswith("train.out_dir=")],
        "model": cfg.model, "rule": cfg.rule, "data": cfg.data["name"], "dataset": dataset,
        "seed": cfg.train.seed, "epochs": last["epoch"], "planned_epochs": cfg.train.epochs,
        "recipe_epochs": recipe_epochs(config_path),
        "shortened": bool(cfg.train.max_steps_per_epoch) or last["epoch"] < cfg.train.epochs,
        "test_acc": last.get("test_acc"),
        "selection": "final epoch" if last["epoch"] == cfg.train.epochs else f"last epoch run ({last['epoch']})",
        "best_test_acc": max(tests)[0] if tests else None, "best_test_epoch": max(tests)[1] if tests else None,
        "train_images_per_s": sum(ips) / len(ips),
        "peak_memory_mib": peak_mib,
        "wall_s": wall,
        "train_time_total_s": sum(r["train_time_s"] for r in hist),
        "resumed": bool(resumed),
        "curve": [{k: r[k] for k in CURVE_KEYS if k in r} for r in hist],
        **(sizes or {}),
        **env,
    }
    vals = [(r["val_acc"], r["test_acc"], r["epoch"]) for r in hist if "val_acc" in r and "test_acc" in r]
    if vals:
        v = max(vals, key=lambda t: t[0])
        row.update({"val_selected_test_acc": v[1], "val_selected_epoch": v[2]})
    return row


def command_line() -> str:
    """The command that reproduces this row (``python benchmarks/train_bench.py ARGS``, without
    the run folder's ``train.out_dir``); rows written by the suite runner carry its own."""
    import shlex

    return shlex.join(["python", "benchmarks/train_bench.py"]
                      + [a for a in sys.argv[1:] if not a.startswith("train.out_dir=")])


def write_row(row: dict, out=None, bench="train") -> None:
    out = Path(out or ROOT / "benchmarks" / "results" / f"{bench}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    row.setdefault("command", command_line())
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row.get(k) for k in ("config", "epochs", "test_acc", "best_test_acc", "train_images_per_s",
                                              "peak_memory_mib", "wall_s", "device", "failed")}))


def run(config_path: str, overrides, data_dir=None, out=None, bench="train", resume=False) -> dict:
    ov = list(overrides) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cfg = load_config(config_path, ov)
    trainer = Trainer(cfg, resume=resume)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    t0 = time.perf_counter()
    try:
        trainer.fit()
    except FloatingPointError as e:  # a diverged run is a result too: record it, then fail
        row = {"bench": bench, "config": _rel(config_path),
               "overrides": [o for o in overrides if not o.startswith("train.out_dir=")],
               "model": cfg.model, "rule": cfg.rule, "data": cfg.data["name"], "seed": cfg.train.seed,
               "epochs": len(trainer.history), "planned_epochs": cfg.train.epochs, "test_acc": None,
               "failed": str(e), "curve": trainer.history, **trainer.env}
        write_row(row, out, bench)
        raise
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if trainer.device.type == "cuda" else None
    ds = trainer.dataset
    sizes = {"train_size": len(ds.train_x), "test_size": len(ds.test_x)}
    row = result_row(cfg, trainer.history, trainer.env, config_path, overrides, ds.describe(), bench,
                     peak, wall, resume, sizes)
    write_row(row, out, bench)
    return row


def record(run_dir: str, config_path: str, overrides, out=None, bench="train") -> dict:
    """Write the line of a run that was stopped before its last epoch (e.g. out of GPU time),
    from its run directory (metrics.jsonl and the last checkpoint's environment)."""
    from bioprop.train import RunConfig, latest_checkpoint, load_checkpoint

    rd = Path(run_dir)
    hist = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines() if l.strip()]
    state = load_checkpoint(latest_checkpoint(rd))
    cfg = RunConfig.from_dict(state["config"])
    row = result_row(cfg, hist, state["env"], config_path, overrides, cfg.data["name"], bench)
    write_row(row, out, bench)
    return row


def size_epochs(probe_dir: str, seconds: float, max_epochs: int, margin: float = 0.85) -> int:
    """The most epochs every probed run finishes in ``margin * seconds``, from the rows that short
    probes (two epochs of a few steps, each with its test pass, run concurrently as the real runs
    will be) wrote into ``probe_dir``. An epoch costs ``train_size / img/s`` (img/s of the second
    epoch: past the warm-up) plus the probe's time per epoch outside training (the test pass, the
    checkpoint). Raises if a probe wrote no complete row."""
    rows = [json.loads(l) for f in sorted(Path(probe_dir).glob("train_*.jsonl")) for l in f.read_text().splitlines()
            if l.strip()]
    if not rows or any(r.get("failed") or not r.get("train_size") for r in rows):
        raise RuntimeError(f"no complete probe rows in {probe_dir}: see its log_*.txt")
    epoch_s = max(r["train_size"] / r["train_images_per_s"]
                  + max(0.0, r["wall_s"] - r["train_time_total_s"]) / r["epochs"] for r in rows)
    return max(1, min(max_epochs, int(margin * seconds / epoch_s)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.add_argument("--out")
    p.add_argument("--bench", default="train")
    p.add_argument("--resume", action="store_true", help="continue the run's last checkpoint")
    p.add_argument("--record", metavar="RUN_DIR", help="only write the line of a run stopped early")
    p.add_argument("--size-epochs", metavar="PROBE_DIR",
                   help="only print how many epochs fit --seconds, from the probe rows in PROBE_DIR")
    p.add_argument("--seconds", type=float)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    if not a.size_epochs and not a.config:
        p.error("--config is required")
    if a.size_epochs:
        if a.seconds is None:
            p.error("--size-epochs needs --seconds")
        print(size_epochs(a.size_epochs, a.seconds, a.max_epochs))
    elif a.record:
        record(a.record, a.config, a.overrides, a.out, a.bench)
    else:
        run(a.config, a.overrides, a.data_dir, a.out, a.bench, a.resume)


if __name__ == "__main__":
    main()
