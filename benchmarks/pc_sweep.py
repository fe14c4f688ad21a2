"""Sweep (eta, n) of predictive coding: angle of each block's update to the BP gradient.

    python benchmarks/pc_sweep.py [--data-dir DIR] [--device cpu] [--batch 300]

Model: Rosenbaum's 5-block MNIST CNN (``pc_cnn``) at its initialisation (seed 0), on one batch
of MNIST training images (the embedded subset when no ``--data-dir`` is given). For FixedPred and
Strict, every eta in {0.05, 0.1, 0.2, 0.5, 1} and n in {1, 2, 3, 5, 10, 20, 50}: the angle
(degrees) and the relative error between the PC update and BP's gradient of each block (an
all-zero update, below FixedPred's descending front, is at 90 degrees). Writes JSON lines to
``benchmarks/results/pc_sweep.jsonl`` and the figure ``benchmarks/results/pc_sweep.png``
(needs matplotlib: ``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, environment, write_lines

from bioprop import create_dataset, create_model  # noqa: E402
from bioprop.metrics import angle_degrees  # noqa: E402
from bioprop.models import blocks_of  # noqa: E402
from bioprop.rules.predictive_coding import pc_errors  # noqa: E402

ETAS = [0.05, 0.1, 0.2, 0.5, 1.0]
NS = [1, 2, 3, 5, 10, 20, 50]


def block_grads(model, grads, params):
    index = {id(p): i for i, p in enumerate(params)}
    out = []
    for b in blocks_of(model):
        out.append(torch.cat([grads[index[id(p)]].flatten() for p in b.parameters()]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pc_sweep.jsonl"))
    a = p.parse_args()
    dev = torch.device(a.device)
    ds = create_dataset("mnist", data_dir=a.data_dir) if a.data_dir else create_dataset("mnist_embedded")
    x, y = next(iter(ds.loader("train", dev, batch_size=a.batch, seed=0, epoch=0)))
    torch.manual_seed(0)
    model = create_model("pc_cnn").to(dev)
    params = list(model.parameters())
    bp = block_grads(model, torch.autograd.grad(F.cross_entropy(model(x), y), params), params)
    rows = []
    env = environment(dev)
    for variant in ("fixed_pred", "strict"):
        for eta in ETAS:
            for n in NS:
                r = pc_errors(blocks_of(model), x, y, F.cross_entropy, variant=variant, eta=eta, n=n)
                g = block_grads(model, torch.autograd.grad(r.outputs, params, r.eps), params)
                angles = [angle_degrees(u, v) for u, v in zip(g, bp)]
                relerr = [float((u - v).norm() / v.norm()) for u, v in zip(g, bp)]
                rows.append({"bench": "pc_sweep", "variant": variant, "eta": eta, "n": n, "angles_deg": angles,
                             "relative_error": relerr,
                             "data": ds.name, "batch": a.batch, "model": "pc_cnn (init, seed 0)", **env})
    out = Path(a.out)
    out.unlink(missing_ok=True)
    write_lines(out, rows)
    plot(rows, out.with_suffix(".png"))


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = len(rows[0]["angles_deg"])
    fig, axes = plt.subplots(2, L, figsize=(3.2 * L, 6), sharex=True, sharey=True)
    for i, variant in enumerate(("fixed_pred", "strict")):
        for l in range(L):
            ax = axes[i, l]
            for eta in ETAS:
                pts = [(r["n"], r["angles_deg"][l]) for r in rows if r["variant"] == variant and r["eta"] == eta]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"eta={eta}")
            ax.set_xscale("log")
            ax.set_title(f"{'FixedPred' if variant == 'fixed_pred' else 'Strict'}: block {l + 1}", fontsize=9)
            if l == 0:
                ax.set_ylabel("angle to BP (degrees)")
            if i == 1:
                ax.set_xlabel("inference sweeps n")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Predictive coding update vs BP gradient per block (5-block MNIST CNN at init, one batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
