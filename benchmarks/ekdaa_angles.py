"""Angle of each layer's EKDAA update to BP's gradient at initialisation, on one real batch.

    python benchmarks/ekdaa_angles.py [--data-dir /work/data] [--batch 50]

Networks (seed 0, Glorot init, tanh): the Fashion-MNIST MLP 784-512-512-10 (``ekdaa_mlp``) and
the release's CIFAR-10 CNN (``ekdaa_cnn``) on the first ``batch`` training images (Fashion-MNIST;
CIFAR-10 (JPEG q75 copy)), normalised as the training runs. For ``e_init`` transpose / random,
``pool_target`` upsample (the release's) / argmax, and beta in {0.9 (float32), 0.01 (float64: the errors scale as beta^(L-l), below float32's
resolution in the lower layers)}: the angle (degrees)
and norm ratio of each layer's update to BP's gradient (the rule's ``compare_every`` diagnostic).
Writes JSON lines to ``benchmarks/results/ekdaa_angles.jsonl``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import ROOT, environment, write_lines

from bioprop import create_dataset, create_model, create_rule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/work/data")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ekdaa_angles.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(1)
    env = environment(torch.device("cpu"))
    rows = []
    for data, model, kw in (("fashion_mnist", "ekdaa_mlp", dict(in_shape=[1, 28, 28], hidden=[512, 512])),
                            ("cifar10", "ekdaa_cnn", dict(in_shape=[3, 32, 32]))):
        ds = create_dataset(data, data_dir=a.data_dir, batch_size=a.batch, augment=False)
        x, y = next(iter(ds.loader("train", torch.device("cpu"), seed=0, epoch=0)))
        pools = ("upsample", "argmax") if model == "ekdaa_cnn" else ("upsample",)
        for e_init in ("transpose", "random"):
            for pool in pools:
                for beta in (0.9, 0.01):
                    torch.manual_seed(0)
                    dtype = torch.float64 if beta < 0.1 else torch.float32  # e_l ~ beta^(L-l): float32 underflows
                    m = create_model(model, **kw).to(dtype)
                    rule = create_rule("ekdaa", e_init=e_init, pool_target=pool, beta=beta, compare_every=1)
                    rule.seed(1)
                    m = rule.prepare(m)
                    st = rule.step(m, x.to(dtype), y, F.cross_entropy).stats
                    L = sum(1 for k in st if k.startswith("ekdaa/angle/"))
                    row = {"bench": "ekdaa_angles", "data": data, "model": model, "model_kw": kw, "batch": a.batch,
                           "seed": 0, "dtype": str(dtype).replace("torch.", ""), "e_init": e_init, "pool_target": pool, "beta": beta,
                           "angle_deg": [float(st[f"ekdaa/angle/{l + 1}"]) for l in range(L)],
                           "norm_ratio": [float(st[f"ekdaa/norm_ratio/{l + 1}"]) for l in range(L)], **env}
                    rows.append(row)
                    print(data, e_init, pool, beta, [round(v, 1) for v in row["angle_deg"]])
    write_lines(a.out, rows)


if __name__ == "__main__":
    main()
