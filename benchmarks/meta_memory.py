"""Memory of the meta-gradient against the inner-loop length, plain and gradient-checkpointed.

Each case runs in a fresh subprocess: one meta-loss and its backward pass on the paper's network
(784-170-130-100-70-20, F0+F2+F9, fixed feedback) over a synthetic pool (random uint8 images; the
memory does not depend on their content); the figure is the process's peak resident memory
(``ru_maxrss``) minus its resident memory just before the episode, on the CPU. Writes
``benchmarks/results/meta_memory.jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/meta_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from common import ROOT, environment, write_lines

CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {src!r})
from bioprop.meta import ClassPool, MetaLearner, load_meta_config
K, every = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
pool = ClassPool([torch.randint(0, 256, (K + 10, 784), generator=g, dtype=torch.uint8) for _ in range(20)],
                 [str(i) for i in range(20)], [15, 16, 17, 18, 19])
cfg = load_meta_config(None, [f"meta.K={{K}}", f"meta.inner_checkpoint={{every}}", "progress=false"])
learner = MetaLearner(cfg, pool=pool)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
before = rss()
loss = learner.meta_loss(learner.theta, "train", 0)[0]
loss.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_mib_above_start": peak - before, "grad": learner.theta.grad.tolist()}}))
"""


def main() -> None:
    rows = []
    for K in (10, 50, 100):
        for every in (0, 25):
            code = CHILD.format(src=str(ROOT / "src"))
            out = subprocess.run([sys.executable, "-c", code, str(K), str(every)], capture_output=True, text=True,
                                 check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            row = {**environment(torch.device("cpu")), "benchmark": "meta_memory", "M": 5, "K": K,
                   "inner_steps": 5 * K, "inner_checkpoint": every, "peak_mib_above_start": res["peak_mib_above_start"],
                   "theta_grad": res["grad"],
                   "note": "peak RSS of a fresh process minus its RSS before the episode; CPU, float32"}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("inner_steps", "inner_checkpoint", "peak_mib_above_start")}), flush=True)
    write_lines(ROOT / "benchmarks" / "results" / "meta_memory.jsonl", rows)


if __name__ == "__main__":
    main()
