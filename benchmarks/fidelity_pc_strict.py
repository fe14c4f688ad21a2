"""Strict predictive coding against Torch2PC's ``StrictPCPredErrs`` on the same model and batch.

    # Torch2PC cannot be fetched here: put TorchSeq2PC.py of RobertRosenbaum/Torch2PC (the stored
    # version is commit 85b5944) into .ref/torch2pc/ (gitignored), then
    python benchmarks/fidelity_pc_strict.py [--out benchmarks/results/fidelity.jsonl]

Model: Linear 6-5 + tanh, Linear 5-4 + tanh, Linear 4-3 (three blocks), cross-entropy, float64,
batch 7, seed 0. For (n, eta) in (1, 0.1), (5, 0.1), (20, 0.1) the errors that define the
parameter update are compared: Torch2PC's returned ``epsilon`` (its hidden errors are
``v - f(v)``; the last sweep's, computed before that sweep's belief update) against ours with
``strict_errors`` = ``torch2pc`` and ``final``. One JSON line per (n, eta, mode): the maximum
absolute difference per block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import ROOT, environment, write_lines

from bioprop.rules.predictive_coding import pc_errors  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=str(ROOT / ".ref" / "torch2pc"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fidelity.jsonl"))
    a = p.parse_args()
    if not (Path(a.ref) / "TorchSeq2PC.py").is_file():
        raise SystemExit(f"{a.ref}/TorchSeq2PC.py missing: see this script's docstring")
    sys.path.insert(0, a.ref)
    import TorchSeq2PC as T  # type: ignore

    torch.manual_seed(0)
    D = torch.float64
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Tanh(),
                            torch.nn.Linear(4, 3)).to(D)
    blocks = [m[0:2], m[2:4], m[4]]
    seq = torch.nn.Sequential(*blocks)
    x, y = torch.randn(7, 6, dtype=D), torch.randint(0, 3, (7,))
    lf = torch.nn.functional.cross_entropy
    vhat, _, _ = T.FwdPassPlus(seq, lf, x, y)
    vinit = [v.detach() for v in vhat]
    env, rows = environment(torch.device("cpu")), []
    for n, eta in ((1, 0.1), (5, 0.1), (20, 0.1)):
        _, eps = T.StrictPCPredErrs(seq, vinit, lf, y, eta, n)
        for mode in ("torch2pc", "final"):
            r = pc_errors(blocks, x, y, lf, "strict", eta, n, strict_errors=mode)
            diff = [float((r.eps[l].detach() - eps[l + 1].detach()).abs().max()) for l in range(len(blocks))]
            rows.append({"bench": "fidelity", "reference": "RobertRosenbaum/Torch2PC", "ref_commit": "85b5944",
                         "check": "Strict errors used by the update", "n": n, "eta": eta, "strict_errors": mode,
                         "max_abs_diff_per_block": diff, **env})
            print(f"n={n:<3} eta={eta} {mode:<9} max |eps diff| per block " + " ".join(f"{d:.1e}" for d in diff))
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
