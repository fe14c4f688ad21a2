"""How fast each rule's backward kernels B align with the forward weights W.

    python examples/alignment_angles.py            # about 30 s on a 2-core CPU
    python examples/alignment_angles.py --quick

Trains an MLP on the embedded MNIST subset with feedback alignment (B fixed), Kolen-Pollack
(dB = dW, B -> W) and symmetric alignment (B learns alpha ||B||^2 - beta <W, B>, B -> W) and prints
the angle between each layer's B and W as training goes (90 degrees: unrelated; 0: aligned)."""

import argparse
import json

import torch
import torch.nn.functional as F

import bioprop
from bioprop.metrics import angle_degrees_tensor
from bioprop.rules.alignment import fb_layers

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--quick", action="store_true")
args = p.parse_args()
steps = 24 if args.quick else 600
data = bioprop.create_dataset("mnist_embedded", batch_size=64, train_limit=steps * 64)

results = {}
for name, extra in (("fa", {}), ("kp", {}), ("sa", {"reg_scale": 10.0})):
    torch.manual_seed(0)
    rule = bioprop.create_rule(name, **extra)
    model = rule.prepare(bioprop.create_model("mlp", hidden=[128]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    curve = []
    for i, (x, y) in enumerate(data.loader("train", "cpu", seed=0, epoch=0)):
        opt.zero_grad()
        rule.step(model, x, y, F.cross_entropy)
        opt.step()
        rule.after_step(model)
        if i % (steps // 4) == 0 or i == steps - 1:
            angles = [round(float(angle_degrees_tensor(layer.weight_b, layer.weight)), 1) for _, layer in fb_layers(model)]
            curve.append({"step": i + 1, "angles": angles})
            print(f"{name:>3} step {i + 1:4d}: B-W angle per layer {angles}")
    results[name] = curve
print(json.dumps(results))
