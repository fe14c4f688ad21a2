"""Training throughput (images/s) of 1 and N processes under torchrun (data parallel, gloo on CPU,
NCCL on GPUs), the same global batch, interleaved rounds.

    python benchmarks/distributed_throughput.py [--nproc 2] [--rounds 2] [--device cpu]

Each launch is ``python -m torch.distributed.run --nproc_per_node=N -m bioprop train ...`` on the
embedded MNIST subset for 2 short epochs (``max_steps_per_epoch``, labelled shortened); the figure
is the last epoch's ``train_images_per_s`` that rank 0 logs (all ranks' images over rank 0's epoch
wall time: start-up and the first epoch's warm-up excluded). One thread per process
(``OMP_NUM_THREADS=1``). Rows go to ``benchmarks/results/distributed.jsonl``. On a GPU machine run
it with ``--device cuda --nproc <GPUs>`` (the NCCL path: untested until then).
Pass ``--note`` to record the machine's load next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, environment, write_lines

import torch

CONFIGS = {
    "mlp_bp": ["model=mlp", "model.hidden=[800,800]", "rule=bp"],
    "spiking_mlp_bptt": ["model=spiking_mlp", "model.hidden=[400]", "model.time_steps=8", "rule=bptt"],
    # global BatchNorm statistics and an all-reduce per adjoint-solver iteration under torchrun
    "f400_ide": ["model=f400", "rule=ide"],
}


def launch(nproc: int, name: str, extra, out: Path, steps: int, batch: int, device: str) -> float:
    run = out / f"{name}-{nproc}"
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
            "-m", "bioprop", "train", *extra, "data=mnist_embedded", f"data.batch_size={batch}",
            "train.epochs=2", f"train.max_steps_per_epoch={steps}", f"train.device={device}",
            f"train.out_dir={out}", f"train.name={name}-{nproc}", "train.progress=false", "train.eval_every=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"launch failed ({' '.join(args)}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return float(rows[-1]["train_images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.jsonl"))
    p.add_argument("--note", default="")
    a = p.parse_args()
    env = environment(torch.device(a.device))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.configs.split(","):
            figs = {1: [], a.nproc: []}
            for rnd in range(a.rounds):  # interleaved: 1, N, 1, N, ...
                for n in (1, a.nproc):
                    figs[n].append(launch(n, name, CONFIGS[name], Path(tmp) / f"r{rnd}", a.steps, a.batch, a.device))
            for n, v in figs.items():
                row = {"benchmark": "distributed_throughput", "config": name, "nproc": n, "device_kind": a.device,
                       "global_batch": a.batch, "steps_per_epoch": a.steps, "shortened": True,
                       "images_per_s": v, "images_per_s_median": statistics.median(v),
                       "threads_per_process": 1, "data": "mnist_embedded", "note": a.note, **env}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("config", "nproc", "images_per_s")}))
    write_lines(a.out, rows)


if __name__ == "__main__":
    main()
