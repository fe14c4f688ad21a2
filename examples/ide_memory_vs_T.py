"""IDE's memory does not grow with the number of time steps T; BPTT's does.

    python examples/ide_memory_vs_T.py            # about 20 s on a 2-core CPU
    python examples/ide_memory_vs_T.py --quick

Trains one step of the F400 feedback SNN with `ide` and with `bptt` for several T and counts the
bytes autograd saves for the backward pass (a device-independent measure of the training memory
that grows with T: `torch.autograd.graph.saved_tensors_hooks`). IDE saves the same amount at every
T (one application of the equilibrium map); BPTT saves every time step."""

import argparse
import json

import torch
import torch.nn.functional as F

import bioprop

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--quick", action="store_true")
args = p.parse_args()
steps = (5, 10, 20) if args.quick else (5, 10, 30, 100)
x, y = next(iter(bioprop.create_dataset("mnist_embedded", batch_size=64).loader("train")))

results = {}
for rule_name in ("ide", "bptt"):
    results[rule_name] = {}
    for T in steps:
        torch.manual_seed(0)
        model = bioprop.create_model("f400", time_steps=T)
        rule = bioprop.create_rule(rule_name)
        model = rule.prepare(model)
        saved = [0]

        def pack(t: torch.Tensor):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rule.step(model, x, y, F.cross_entropy)
        results[rule_name][T] = saved[0]
        print(f"{rule_name:>4}  T={T:<4} saved for backward: {saved[0] / 2**20:7.2f} MiB")
print(json.dumps(results))
