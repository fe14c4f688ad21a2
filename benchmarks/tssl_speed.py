"""Training images/s and peak memory of ``tssl`` against ``bptt`` on the same TSSL-BP network and T.

    python benchmarks/tssl_speed.py [--models tssl_mnist_cnn,tssl_fmnist_cnn,...] [--batch 50]
        [--steps 5] [--device cuda] [--repeat 20] [--out benchmarks/results/tssl_speed.jsonl]

One training step = the rule's step (simulation, loss, backward) + gradient-norm clip 1 + AdamW +
the weight clamp, on a fixed random batch of the model's input shape (the reference recipe's batch
of 50 by default). ``tssl`` back-propagates with TSSL-BP's spike-timing backward (one autograd
Function per layer, the O(T^2) sum as one matrix product); ``bptt`` differentiates the very same
network through time with the sigmoid surrogate (autograd through every step and reset). Both in
the same process, on the same device; the ratio ``tssl / bptt`` is written with each tssl line.
On a GPU a third variant, ``tssl+graph``, replays the step as a CUDA graph (``rule.cuda_graph``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, environment, parse_model_kw, training_throughput, write_lines

from bioprop import create_model, create_rule  # noqa: E402

MODELS = "tssl_mnist_cnn,tssl_fmnist_mlp,tssl_fmnist_cnn,tssl_cifar10_cnn,tssl_cifar10_large"


def measure(model_name: str, variant: str, T: int, batch: int, dev: torch.device, repeat: int,
            extra: dict) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name, time_steps=T, **extra).to(dev)
    rule_name = variant.split("+")[0]
    rule = create_rule(rule_name, **({"cuda_graph": True} if variant.endswith("+graph") else {}))
    model = rule.prepare(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    x = torch.randn((batch,) + tuple(model.in_shape), device=dev).abs()
    y = torch.randint(0, model.weight_layers()[-1].out_features, (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        rule.step(model, x, y, F.cross_entropy)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for layer in model.weight_layers():
                layer.weight.clamp_(-4, 4)

    row = {"bench": "tssl_speed", "model": model_name, "model_kw": extra, "rule": rule_name, "variant": variant,
           "T": T, "batch": batch}
    try:
        row.update(training_throughput(step, dev, batch, warmup=3, repeat=repeat))
        if getattr(rule, "_graph_failed", False):
            row["graph_failed"] = True
    except torch.OutOfMemoryError:
        row["out_of_memory"] = True
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--model-kw", default="", help="extra model config as k=v;k=v, values in YAML "
                   "(smoke runs: 'arch=4C5-P2-32;in_shape=[1,12,12]')")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tssl_speed.jsonl"))
    a = p.parse_args()
    dev = torch.device(a.device)
    extra = parse_model_kw(a.model_kw)
    env = environment(dev)
    rows = []
    for name in a.models.split(","):
        variants = ["bptt", "tssl"] + (["tssl+graph"] if dev.type == "cuda" else [])
        pair = {v: measure(name, v, a.steps, a.batch, dev, a.repeat, extra) for v in variants}
        b = pair["bptt"]
        for v in variants[1:]:
            if "median_ms" in b and "median_ms" in pair[v]:
                pair[v]["speedup_vs_bptt"] = b["median_ms"] / pair[v]["median_ms"]
        for r, row in pair.items():
            rows.append({**row, **env})
            mem = row.get("peak_memory_mib")
            print(f"{name:<20} {r:<10} " + ("out of memory" if row.get("out_of_memory") else
                  f"{row['train_images_per_s']:9.0f} img/s  {row['median_ms']:8.2f} ms  "
                  f"peak {mem if mem is None else round(mem)} MiB"))
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
