"""Compare credit-assignment rules on one model: the same MLP, data, optimizer and seed for exact BP,
feedback alignment, Kolen-Pollack, symmetric alignment and predictive coding.

    python examples/compare_rules.py            # about 40 s on a 2-core CPU
    python examples/compare_rules.py --quick    # a few seconds (what the tests run)

For each rule: test accuracy after training, and the angle (degrees) between the rule's update of
the first layer and the BP gradient on the same batch (0: BP's direction)."""

import argparse
import json

import torch
import torch.nn.functional as F

import bioprop

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--quick", action="store_true")
args = p.parse_args()
steps = 15 if args.quick else 400
data = bioprop.create_dataset("mnist_embedded", batch_size=64, train_limit=steps * 64)
test_x, test_y = next(iter(data.loader("test", batch_size=1000)))  # normalised, first 1,000 test images


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).clamp(-1, 1)
    return float(torch.rad2deg(torch.arccos(cos)))


results = {}
for name in ("bp", "fa", "kp", "sa", "pc"):
    torch.manual_seed(0)
    model = bioprop.create_model("mlp", hidden=[128])
    rule = bioprop.create_rule(name)
    model = rule.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in data.loader("train", "cpu", seed=0, epoch=0):
        opt.zero_grad()
        rule.step(model, x, y, F.cross_entropy)
        opt.step()
        rule.after_step(model)
    # the first layer's update on one batch, against the BP gradient of the same weights
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    opt.zero_grad()
    rule.step(model, x, y, F.cross_entropy)
    ours = first.weight.grad.detach().clone()
    for m in model.modules():  # B-carrying layers: ordinary backprop for the reference gradient
        if hasattr(m, "weight_b"):
            m.use_w_backward = True
    (bp,) = torch.autograd.grad(F.cross_entropy(model(x), y), [first.weight])
    with torch.no_grad():
        model.eval()
        acc = float((rule.predict(model, test_x).argmax(1) == test_y).float().mean())
    results[name] = {"test_acc": round(100 * acc, 2), "angle_to_bp_first_layer": round(angle(ours, bp), 1)}
    print(f"{name:>4}: test accuracy {100 * acc:5.2f}%, first-layer update {angle(ours, bp):5.1f} deg from BP")
print(json.dumps(results))
