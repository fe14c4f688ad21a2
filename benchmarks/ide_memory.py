"""Training images/s and peak memory of ``ide`` and ``bptt`` on the same feedback network.

    python benchmarks/ide_memory.py [--model alexnet_f] [--batch 128] [--steps 5,10,30,100]
        [--device cuda] [--repeat 10] [--out benchmarks/results/ide_memory.jsonl]

The IDE paper's central claim: implicit differentiation's memory does not grow with the number of
time steps T, BPTT's does. Each (rule, T) trains the model (LIF, leak 0.99) on a fixed random
CIFAR-sized batch; one step = rule.step + SGD step. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps (CPU runs record none). A configuration
that runs out of memory is recorded as such. For scale (from the issue): SpikingJelly 2.0's BPTT
of the AlexNet-F conv stack without feedback needs 4.0 GiB at T=5 and 20.1 GiB at T=30 on an H100.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, environment, parse_model_kw, training_throughput, write_lines

from bioprop import create_model, create_rule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet_f")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", default="5,10,30,100")
    p.add_argument("--rules", default="ide,bptt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--model-kw", default="", help="extra model config as k=v;k=v, values in YAML "
                   "(smoke runs: 'channels=[8,8,8,8,8]')")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ide_memory.jsonl"))
    a = p.parse_args()
    dev = torch.device(a.device)
    extra = parse_model_kw(a.model_kw)
    env = environment(dev)
    rows = []
    for T in [int(t) for t in a.steps.split(",")]:
        for rule_name in a.rules.split(","):
            torch.manual_seed(0)
            model = create_model(a.model, neuron="lif", leak=0.99, time_steps=T, **extra).to(dev)
            rule = create_rule(rule_name)
            model = rule.prepare(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn((a.batch,) + tuple(model.in_shape), device=dev)
            y = torch.randint(0, 10, (a.batch,), device=dev)

            def step():
                opt.zero_grad(set_to_none=True)
                rule.step(model, x, y, F.cross_entropy)
                opt.step()

            row = {"bench": "ide_memory", "model": a.model, "model_kw": extra, "rule": rule_name, "T": T,
                   "batch": a.batch, **env}
            try:
                row.update(training_throughput(step, dev, a.batch, warmup=2, repeat=a.repeat))
            except torch.OutOfMemoryError:
                row["out_of_memory"] = True
            rows.append(row)
            mem = row.get("peak_memory_mib")
            print(f"{rule_name:<5} T={T:<4} " + ("out of memory" if row.get("out_of_memory") else
                  f"{row['train_images_per_s']:9.0f} img/s  peak {mem if mem is None else round(mem)} MiB"))
            del model, rule, opt
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
