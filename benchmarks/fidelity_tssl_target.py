"""TSSL-BP's kernel-loss target against the reference code at each of its versions.

    # the reference code, checked out (never committed) under .ref/:
    G=<path returned by the fetch of github:stonezwr/TSSL-BP>   # or a clone of the repository
    for c in d0a06b7 1d46185 87a678f HEAD; do mkdir -p .ref/tssl-$c && \\
        git --git-dir=$G archive $c main.py functions/loss_f.py | tar -x -C .ref/tssl-$c; done
    python benchmarks/fidelity_tssl_target.py [--out benchmarks/results/fidelity.jsonl]

For each commit the script reads the desired spike train from that commit's ``main.py`` (its
``n_steps < 10`` branch), filters it with the commit's own ``loss_f.psp`` as ``main.py`` does, and
passes the result through the commit's ``loss_kernel`` with zero outputs (its ``delta`` is then
minus the target it compares against). ``.cuda()`` is made a no-op so the reference runs on the
CPU. Our target is :func:`bioprop.rules.tssl.desired_psp` with the ``desired_train`` and
``target_filters`` that ``docs/methods/tssl.md`` names for that commit. One JSON line per commit:
the maximum absolute difference (float64), T = 5, tau_s = 3 (the reference's MNIST / Fashion-MNIST
settings); and whether our default reproduces that commit.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import torch

from common import ROOT, environment, write_lines

from bioprop.rules.tssl import TSSLConfig, desired_psp  # noqa: E402

#: commit -> (desired_train, target_filters) that reproduce it (docs/methods/tssl.md)
OURS = {"d0a06b7": ([0, 1, 0, 1, 1], 1), "1d46185": ([0, 1, 1, 1, 1], 1), "87a678f": ([0, 1, 1, 1, 1], 2),
        "HEAD": ([0, 1, 1, 1, 1], 2)}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_target(root: Path, steps: int, tau_s: float) -> tuple:
    """``(d, target)`` of the reference checked out at ``root``."""
    main = (root / "main.py").read_text()
    m = re.search(r"else:\s*\n\s*desired_spikes = torch\.tensor\((\[[0-9, ]+\])\)", main)
    if m is None:
        raise SystemExit(f"{root}/main.py: the desired spike train of the n_steps < 10 branch was not found")
    d = ast.literal_eval(m.group(1))
    sys.path.insert(0, str(root))
    try:
        for k in [k for k in sys.modules if k in ("global_v", "loss_f")]:
            del sys.modules[k]
        # loss_f's imports, stubbed: global_v (dtype / device of older commits) and functions.TSSLBP (unused here)
        glv = types.ModuleType("global_v")
        glv.dtype, glv.device = torch.float64, torch.device("cpu")
        sys.modules["global_v"] = glv
        pkg = types.ModuleType("functions")
        pkg.TSSLBP = types.ModuleType("functions.TSSLBP")
        sys.modules["functions"], sys.modules["functions.TSSLBP"] = pkg, pkg.TSSLBP
        loss_f = _load(root / "functions" / "loss_f.py", "loss_f")
    finally:
        sys.path.remove(str(root))
    cfg = {"n_steps": steps, "tau_s": tau_s}
    spikes = torch.tensor(d * (steps // len(d)), dtype=torch.float64).view(1, 1, 1, 1, steps)
    filtered = loss_f.psp(spikes, cfg).view(1, 1, 1, steps)                       # main.py's train()
    target = filtered.expand(1, 1, 1, 1, steps).clone()                            # targets[i, label, ...]
    outputs = torch.zeros_like(target)
    delta = loss_f.loss_kernel.apply(outputs, target, cfg)                         # outputs - its target
    return d, (-delta).reshape(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=str(ROOT / ".ref"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fidelity.jsonl"))
    a = p.parse_args()
    torch.Tensor.cuda = lambda self, *args, **kw: self  # the reference calls .cuda(); run it on the CPU
    _zeros = torch.zeros
    torch.zeros = lambda *s, **kw: _zeros(*s, **{"dtype": torch.float64, **kw})  # its buffers in float64
    default = TSSLConfig()
    rows, env = [], environment(torch.device("cpu"))
    try:
        for commit, (train, filters) in OURS.items():
            root = Path(a.ref) / f"tssl-{commit}"
            if not root.is_dir():
                raise SystemExit(f"{root} missing: check the reference out as this script's docstring says")
            d, ref = reference_target(root, 5, 3.0)
            ours = desired_psp(train, 5, 3.0, torch.float64, filters=filters)
            diff = float((ours - ref).abs().max())
            dflt = desired_psp(default.desired_train, 5, 3.0, torch.float64, filters=default.target_filters)
            rows.append({"bench": "fidelity", "reference": "stonezwr/TSSL-BP", "ref_commit": commit,
                         "check": "kernel-loss target (T=5, tau_s=3)", "ref_desired_train": d,
                         "ours": {"desired_train": train, "target_filters": filters}, "max_abs_diff": diff,
                         "default_reproduces": bool(float((dflt - ref).abs().max()) < 1e-12),
                         "ref_target": [round(float(v), 12) for v in ref], **env})
            print(f"{commit:<8} d={d} ours={train} x{filters}: max |diff| {diff:.2e}  "
                  f"(default reproduces: {rows[-1]['default_reproduces']})")
    finally:
        torch.zeros = _zeros
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
