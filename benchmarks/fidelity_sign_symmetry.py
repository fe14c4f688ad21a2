"""Sign symmetry (uSF) against biotorch on the same weights: the backward kernel and the input
gradient of Linear and Conv2d layers.

    G=<path returned by the fetch of github:jsalbert/biotorch>   # or a clone of the repository
    mkdir -p .ref/biotorch && git --git-dir=$G archive HEAD biotorch | tar -x -C .ref/biotorch
    python benchmarks/fidelity_sign_symmetry.py [--out benchmarks/results/fidelity.jsonl]

For each layer shape a biotorch ``usf`` layer (its default ``init: xavier``) and our
``sign_symmetry`` rule (default ``sign_init: xavier``) get the same forward weights; biotorch forms
its backward kernel in its forward call. Recorded per layer: the maximum difference of the two
backward kernels, of the input gradients of one random batch (float64), and the ratio of the
scale our rule used before this change (the measured std of one draw of PyTorch's default init,
seed 0) to biotorch's, for the record.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

from common import ROOT, environment, write_lines

from bioprop import create_rule  # noqa: E402
from bioprop.rules.alignment import fb_layers  # noqa: E402

LAYERS = [("linear", (784, 400)), ("linear", (400, 10)), ("conv", (3, 64, 3, 1, 1)), ("conv", (64, 128, 3, 2, 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=str(ROOT / ".ref" / "biotorch"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fidelity.jsonl"))
    a = p.parse_args()
    if not (Path(a.ref) / "biotorch").is_dir():
        raise SystemExit(f"{a.ref}/biotorch missing: check biotorch out as this script's docstring says")
    sys.path.insert(0, a.ref)
    from biotorch.layers.usf.conv import Conv2d as UConv  # type: ignore
    from biotorch.layers.usf.linear import Linear as ULinear  # type: ignore

    torch.manual_seed(0)
    env = environment(torch.device("cpu"))
    rows = []
    for kind, shape in LAYERS:
        if kind == "linear":
            theirs = ULinear(*shape).double()
            ours = nn.Sequential(nn.Linear(*shape)).double()
            x = torch.randn(16, shape[0], dtype=torch.float64)
        else:
            cin, cout, k, s, pad = shape
            theirs = UConv(cin, cout, k, stride=s, padding=pad).double()
            ours = nn.Sequential(nn.Conv2d(cin, cout, k, stride=s, padding=pad)).double()
            x = torch.randn(4, cin, 16, 16, dtype=torch.float64)
        with torch.no_grad():
            ours[0].weight.copy_(theirs.weight)
            ours[0].bias.copy_(theirs.bias)
        old_scale = float(torch.empty_like(ours[0].weight).uniform_(-1, 1).mul_(1 / math.sqrt(ours[0].weight[0].numel())).std())
        rule = create_rule("sign_symmetry")
        ours = rule.prepare(ours)
        layer = next(l for _, l in fb_layers(ours))
        xt, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yt = theirs(xt)
        yo = ours(xo)
        dy = torch.randn_like(yt)
        yt.backward(dy)
        yo.backward(dy)
        row = {"bench": "fidelity", "reference": "jsalbert/biotorch", "ref_commit": "HEAD (74fad0d)",
               "check": "sign_symmetry uSF backward kernel and input gradient", "layer": kind, "shape": list(shape),
               "max_abs_diff_B": float((layer.weight_b - theirs.weight_backward).abs().max()),
               "max_abs_diff_dx": float((xo.grad - xt.grad).abs().max()),
               "max_abs_dx": float(xt.grad.abs().max()),
               "biotorch_scale": float(theirs.scaling_factor),
               "previous_scale_over_biotorch": old_scale / float(theirs.scaling_factor), **env}
        rows.append(row)
        print(f"{kind:<6} {str(shape):<20} |B diff| {row['max_abs_diff_B']:.1e}  |dx diff| {row['max_abs_diff_dx']:.1e} "
              f"(|dx| {row['max_abs_dx']:.2g})  previous scale / biotorch {row['previous_scale_over_biotorch']:.2f}")
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
