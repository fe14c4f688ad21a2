"""ResNet-20 on CIFAR-10 with BP and every Two Routes rule: time per training step relative to
eager BP (measured in one process, one rule after the other, on an otherwise idle device), the
schedule that fits a time budget, and the plot of the alignment angles over training.

    python benchmarks/alignment_resnet20.py time --data-dir DIR [--rules bp,fa,...] [--out FILE]
        [--fit-budget-s S --fit-out FILE]
    python benchmarks/alignment_resnet20.py plot RUN_DIR [RUN_DIR ...] --out FIG.png

``time``: for each rule, a fresh ResNet-20 (``configs/alignment_resnet20_cifar10.yaml``, the rule
swapped in with ``rule=NAME``) takes 5 warm-up and 30 timed steps on one real training batch
(rule.step + SGD step + rule.after_step, no diagnostics: ``angle_every=0``); one JSON line per
rule with the median step time and its ratio to BP's, to ``benchmarks/results/alignment_resnet20_step.jsonl``.
With ``--fit-budget-s`` it also writes the number of epochs E such that training every rule
concurrently for E epochs fits the budget, assuming the concurrent runs together go at least
``--concurrency-gain`` times faster than one after the other (the schedule is then the same
for all rules, and stated with the results).

Training is ``benchmarks/train_bench.py`` on the same config (the ``methods`` suite of ``benchmarks/suites.yaml``);
``plot`` draws the mean over layers of the B-W^T angle and of the update-vs-BP angle per rule.
Data: the CIFAR-10 python batches in DIR; say "CIFAR-10 (JPEG q75 copy)" when they come from
``../shared/tools/cifar10_from_jpeg.py``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, time_ms, write_lines

from bioprop.train import Trainer, load_config  # noqa: E402

RULES = ["bp", "fa", "sign_symmetry", "kp", "wm", "ia", "sa", "aa"]
CONFIG = ROOT / "configs" / "alignment_resnet20_cifar10.yaml"


def time_rules(a) -> None:
    rows, bp_ms = [], None
    for rule in a.rules.split(","):
        ov = [f"rule={rule}", f"data.data_dir={a.data_dir}", "train.out_dir=/tmp/bioprop_alignment_time",
              f"train.name={rule}"] + ([] if rule == "bp" else ["rule.angle_every=0"])
        if a.train_limit:
            ov.append(f"data.train_limit={a.train_limit}")
        cfg = load_config(CONFIG, ov)
        trainer = Trainer(cfg)
        trainer.model.train()
        x, y = next(iter(trainer.dataset.loader("train", trainer.device, seed=0, epoch=0)))

        def step():
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.rule.step(trainer.model, x, y, F.cross_entropy)
            trainer.optimizer.step()
            trainer.rule.after_step(trainer.model)

        t = time_ms(step, trainer.device, repeat=a.repeat)
        bp_ms = t["median_ms"] if rule == "bp" else bp_ms
        rows.append({"bench": "alignment_resnet20_step", "rule": rule, "config": str(CONFIG.relative_to(ROOT)),
                     "batch": int(x.shape[0]), **t, "steps_per_epoch": len(trainer.dataset.loader("train", trainer.device)),
                     "step_ratio_to_bp": t["median_ms"] / bp_ms if bp_ms else None, **trainer.env})
        print(f"{rule:<14} {t['median_ms']:7.2f} ms" + (f"  {t['median_ms'] / bp_ms:.2f}x BP" if bp_ms else ""))
        del trainer
    write_lines(Path(a.out), rows)
    if a.fit_budget_s:
        per_epoch_s = sum(r["median_ms"] * r["steps_per_epoch"] for r in rows) / 1e3 * a.overhead
        epochs = max(1, math.floor(a.fit_budget_s * a.concurrency_gain / per_epoch_s))
        print(f"one epoch of every rule, one after the other: {per_epoch_s:.0f} s; budget {a.fit_budget_s:.0f} s "
              f"x gain {a.concurrency_gain} -> {epochs} epochs")
        Path(a.fit_out).write_text(f"{epochs}\n")


def plot(a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = {"B_W_angle": "angle between B and W^T (deg, mean over layers)",
             "update_angle": "angle of the update to the BP gradient (deg, mean over layers)"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for run in a.runs:
        rows = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]
        for ax, kind in zip(axes, kinds):
            pts = defaultdict(list)
            for r in rows:
                vals = [v for k, v in r.items() if k.startswith(f"train/align/{kind}/")]
                if vals:
                    pts["x"].append(r["epoch"])
                    pts["y"].append(sum(vals) / len(vals))
            if pts:
                ax.plot(pts["x"], pts["y"], marker="o", ms=3, label=Path(run).name)
    for ax, title in zip(axes, kinds.values()):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 95)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(a.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time", help="time per step of every rule against BP")
    t.add_argument("--data-dir", required=True)
    t.add_argument("--rules", default=",".join(RULES))
    t.add_argument("--repeat", type=int, default=30)
    t.add_argument("--train-limit", type=int, default=None, help="load fewer training images (smoke runs)")
    t.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment_resnet20_step.jsonl"))
    t.add_argument("--fit-budget-s", type=float, default=None)
    t.add_argument("--concurrency-gain", type=float, default=2.0)
    t.add_argument("--overhead", type=float, default=1.25, help="factor for evaluation and diagnostics")
    t.add_argument("--fit-out", default="/tmp/bioprop_alignment_epochs")
    q = sub.add_parser("plot", help="alignment angles over training, one line per rule")
    q.add_argument("runs", nargs="+")
    q.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment_resnet20_angles.png"))
    q.add_argument("--title", default="ResNet-20, CIFAR-10 (JPEG q75 copy)")
    a = p.parse_args()
    time_rules(a) if a.cmd == "time" else plot(a)


if __name__ == "__main__":
    main()
