"""Broyden's history products on one device: the list (reference), and the batched buffers applied
term by term (``loop``, the CPU default) or with batched matrix products (``bmm``, the CUDA default).

    OMP_NUM_THREADS=1 python benchmarks/broyden_history.py [--device cpu] [--batch 128] [--n 400]
        [--stored 5,15,30] [--repeat 200] [--out benchmarks/results/broyden_history.jsonl]

Times one ``H z`` plus one ``z^T H`` (what a Broyden step applies per stored update count ``k``)
with ``k`` updates stored, at F400's adjoint size (batch 128, 400 rates). The three are timed in
rounds, one call of each per round in alternating order, so their ratios are same-run ratios; on a
shared CPU the absolute figures are not comparable across runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import ROOT, environment, write_lines

from bioprop.equilibrium.solvers import _BatchedHistory, _ListHistory  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--stored", default="5,15,30")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "broyden_history.jsonl"))
    a = p.parse_args()
    dev = torch.device(a.device)
    env = environment(dev)
    if dev.type == "cpu":
        env["note"] = "CPU shared with other jobs: only the same-run ratios are meaningful"
    rows = []
    for k in (int(v) for v in a.stored.split(",")):
        g = torch.Generator().manual_seed(k)
        x = torch.zeros(a.batch, a.n, device=dev)
        hists = {"list": _ListHistory(x, 30), "loop": _BatchedHistory(x, 30, "loop"),
                 "bmm": _BatchedHistory(x, 30, "bmm")}
        for _ in range(k):
            u, vt = (torch.randn(a.batch, a.n, generator=g).to(dev) for _ in range(2))
            for h in hists.values():
                h.append(u, vt)
        z = torch.randn(a.batch, a.n, generator=g).to(dev)
        times = {name: [] for name in hists}
        names = list(hists)
        for r in range(a.repeat + 10):
            for name in (names if r % 2 == 0 else names[::-1]):
                h = hists[name]
                t0 = time.perf_counter()
                h.matvec(z)
                h.rmatvec(z)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if r >= 10:
                    times[name].append(1e6 * (time.perf_counter() - t0))
        med = {name: statistics.median(t) for name, t in times.items()}
        for name in names:
            rows.append({"bench": "broyden_history", "products": name, "stored": k, "batch": a.batch, "n": a.n,
                         "median_us": med[name], "min_us": min(times[name]), "repeat": a.repeat,
                         "ratio_to_list_same_run": med[name] / med["list"], **env})
        print(f"k={k:<3} " + "  ".join(f"{n} {med[n]:8.1f} us ({med[n] / med['list']:.2f}x list)" for n in names))
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
