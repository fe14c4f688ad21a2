"""ResNet-20 on CIFAR-10 with BP and every Two Routes rule, on one schedule: final-epoch test
accuracy and time per training step relative to eager BP, measured in the same run.

    python benchmarks/alignment_resnet20.py --data-dir DIR [--epochs 30] [--rules fa,kp,...]
        [--max-steps N] [--out benchmarks/results/alignment_resnet20.jsonl]

Data: the CIFAR-10 python batches in DIR (say "CIFAR-10 (JPEG q75 copy)" when they come from
``../shared/tools/cifar10_from_jpeg.py``). Schedule (same for all): SGD 0.1, momentum 0.9,
wd 5e-4 (KP's B decays with the same wd), cosine, batch 128, crop 4 + flip. The step time is the
median over 30 steps on a fixed batch (rule.step + optimizer.step + rule.after_step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, time_ms, write_lines
from train_bench import result_row

from bioprop.train import Trainer, load_config  # noqa: E402

RULES = ["bp", "fa", "sign_symmetry", "kp", "wm", "ia", "sa", "aa"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--data-label", default="CIFAR-10 (JPEG q75 copy)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--max-steps", type=int, default=None, help="cut epochs short (smoke runs; labelled)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment_resnet20.jsonl"))
    p.add_argument("--runs", default="/tmp/bioprop_alignment_runs")
    a = p.parse_args()
    cfg_path = ROOT / "configs" / "alignment_resnet20_cifar10.yaml"
    rows, bp_ms = [], None
    for rule in a.rules.split(","):
        ov = [f"rule={rule}", f"train.epochs={a.epochs}", f"data.data_dir={a.data_dir}",
              f"train.out_dir={a.runs}", f"train.name={rule}"]
        if a.max_steps:
            ov.append(f"train.max_steps_per_epoch={a.max_steps}")
        if a.train_limit:
            ov.append(f"data.train_limit={a.train_limit}")
        cfg = load_config(cfg_path, ov)
        trainer = Trainer(cfg)
        trainer.fit()
        # time per step on a fixed batch, after training (warm)
        x, y = next(iter(trainer.dataset.loader("train", trainer.device, seed=0, epoch=0)))

        def step():
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.rule.step(trainer.model, x, y, F.cross_entropy)
            trainer.optimizer.step()
            trainer.rule.after_step(trainer.model)

        t = time_ms(step, trainer.device)
        bp_ms = t["median_ms"] if rule == "bp" else bp_ms
        row = result_row(cfg, trainer.history, trainer.env, str(cfg_path), ov[:2], a.data_label, "alignment_resnet20")
        row.update({"step_ms": t["median_ms"], "step_ratio_to_bp": t["median_ms"] / bp_ms if bp_ms else None})
        rows.append(row)
        print(f"{rule:<14} test acc {100 * row['test_acc']:.2f}%  step {t['median_ms']:.2f} ms"
              + (f"  {t['median_ms'] / bp_ms:.2f}x BP" if bp_ms else ""))
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
