"""Time per training step of predictive coding against eager BP, in the same run.

    python benchmarks/pc_speed.py [--device cuda] [--batch 300] [--repeat 30] [--out FILE]

Model: Rosenbaum's 5-block MNIST CNN (``pc_cnn``); one step = ``rule.step`` (inference and
updates into ``.grad``) + ``Adam.step`` (lr 2e-3), on a fixed random batch of 28x28 images.
Variants: BP, Exact, FixedPred(1, L), FixedPred(0.1, 20), Strict(0.1, 20) (PC steps as CUDA
graphs on a GPU, the rule's default; FixedPred(1, L) and Strict also eager). Writes one JSON line
per variant to ``benchmarks/results/pc_speed.jsonl`` with the median time, the ratio to BP of
the same run, the device, torch version, commit and date. The reference code's figures (Torch2PC on
an H100, another run) are not typed here: they and their source are in ``benchmarks/published.json``
(``pc_reference_speed``), which ``benchmarks/tables.py`` reads to set them beside ours, labelled
as a cross-run comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, environment, time_ms, write_lines

from bioprop import create_model, create_rule  # noqa: E402

VARIANTS = {
    "bp": {"name": "bp"},
    "exact": {"name": "pc", "variant": "exact"},
    "fixed_pred(1,L)": {"name": "pc", "variant": "fixed_pred", "eta": 1.0},
    "fixed_pred(0.1,20)": {"name": "pc", "variant": "fixed_pred", "eta": 0.1, "n": 20},
    "strict(0.1,20)": {"name": "pc", "variant": "strict", "eta": 0.1, "n": 20},
    # the same without CUDA-graph capture (eager inference), for the record
    "fixed_pred(1,L) eager": {"name": "pc", "variant": "fixed_pred", "eta": 1.0, "cuda_graph": False},
    "strict(0.1,20) eager": {"name": "pc", "variant": "strict", "eta": 0.1, "n": 20, "cuda_graph": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pc_speed.jsonl"))
    a = p.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
    rows, bp_ms = [], None
    env = environment(dev)
    for name, spec in VARIANTS.items():
        torch.manual_seed(0)
        model = create_model("pc_cnn").to(dev)
        kw = dict(spec)
        rule = create_rule(kw.pop("name"), **kw)
        model = rule.prepare(model)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            rule.step(model, x, y, F.cross_entropy)
            opt.step()

        t = time_ms(step, dev, repeat=a.repeat)
        bp_ms = t["median_ms"] if name == "bp" else bp_ms
        rows.append({"bench": "pc_speed", "variant": name, "rule": spec, "batch": a.batch, **t,
                     "ratio_to_bp": t["median_ms"] / bp_ms, **env})
        print(f"{name:<20} {t['median_ms']:8.2f} ms  {t['median_ms'] / bp_ms:6.2f}x BP (same run)")
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
