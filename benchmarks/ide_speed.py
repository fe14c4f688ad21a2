"""IDE training and evaluation images/s and peak memory: the reference path against the fast path.

    python benchmarks/ide_speed.py [--batch 128] [--repeat 10] [--variants reference,fast,...]
        [--configs A.yaml,B.yaml] [--smoke] [--interleave] [--out benchmarks/results/ide_speed.jsonl]

    # the CPU row (F400, T = 5, batch 128; reference and fast timed step by step, interleaved):
    OMP_NUM_THREADS=1 python benchmarks/ide_speed.py --device cpu --configs configs/ide_f400_fmnist_if.yaml \
        --variants reference,fast --repeat 30

For each model of the IDE speed table (F400 / Fashion-MNIST T=5, F64C5 / MNIST T=30, AlexNet-F
and CIFARNet-F / CIFAR-10 T=30, AlexNet-F T=100; models and solver from their configs), every
variant trains on one fixed random batch of the model's input shape, in one process, one variant
after the other (same GPU state):

    reference   rule.fast=false: plain simulation, Broyden's term-by-term history (the baseline)
    fast        in-place neuron updates + batched Broyden history (fp32, bitwise the same spikes)
    cl          fast + channels-last convolutions in the simulation
    bf16        fast + bf16 synaptic operators (+ BN folded), fp32 membranes and rates
    graph       fast + the T-step simulation replayed as a CUDA graph
    all         fast + bf16 + channels-last + CUDA graph

One training step = rule.step (simulation, map, adjoint solve, backward) + SGD with momentum, as
the reference recipe. Evaluation = rule.predict (forward simulation only) in eval mode. Peak
memory is ``torch.cuda.max_memory_allocated`` over the variant's steps. Each line records the
mean solver iterations: throughput depends on them, and a random batch at initialisation is not a
trained network's batch (state this beside the figures).

``--interleave`` (the default on the CPU) builds every variant first and then times them in
rounds, one step of each variant per round, so that the load of a shared machine falls on all of
them alike (the order within a round alternates): the ratio of their medians is then a same-run
ratio. On a shared CPU only that ratio
means anything, not the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, environment, time_ms, training_throughput, write_lines

from bioprop import create_model, create_rule  # noqa: E402
from bioprop.train import load_config  # noqa: E402

CONFIGS = ["configs/ide_f400_fmnist_if.yaml", "configs/ide_f64c5_mnist_if.yaml",
           "configs/ide_alexnet_f_cifar10_t30_lif.yaml", "configs/ide_cifarnet_f_cifar10_t30_lif.yaml",
           "configs/ide_alexnet_f_cifar10_t100_lif.yaml"]
VARIANTS = {
    "reference": {"fast": False},
    "fast": {},
    "cl": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "graph": {"cuda_graph": True},
    "all": {"precision": "bf16", "channels_last": True, "cuda_graph": True},
}
#: smoke runs on the CPU: the same code on tiny shapes
SMOKE_MODEL = {"f400": {"in_shape": [1, 8, 8], "hidden": 16}, "f64c5": {"in_shape": [1, 8, 8], "channels": 4},
               "alexnet_f": {"in_shape": [3, 8, 8], "channels": [4, 4, 4, 4, 4]},
               "cifarnet_f": {"in_shape": [3, 8, 8], "channels": [4, 4, 4, 4, 4]}}


def build(cfg_path: str, variant: str, batch: int, dev: torch.device, smoke: bool):
    """``(train_step, eval_step, solver iterations list, row)`` of one variant of one config."""
    cfg = load_config(ROOT / cfg_path)
    mkw = {k: v for k, v in cfg.model.items() if k != "name"}
    rkw = {k: v for k, v in cfg.rule.items() if k != "name"}
    if smoke:
        mkw.update(SMOKE_MODEL.get(cfg.model["name"], {}))
        mkw["time_steps"] = min(int(mkw.get("time_steps", 5)), 3)
    torch.manual_seed(0)
    model = create_model(cfg.model["name"], **mkw).to(dev)
    rule = create_rule(cfg.rule["name"], **{**rkw, **VARIANTS[variant]})
    model = rule.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch,) + tuple(model.in_shape), generator=g).to(dev)
    y = torch.randint(0, model.classifier.out_features, (batch,), generator=g).to(dev)
    iters = []

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        out = rule.step(model, x, y, F.cross_entropy)
        opt.step()
        iters.append(out.stats.get("solver/iters"))

    def eval_step():
        model.eval()
        rule.predict(model, x)

    row = {"bench": "ide_speed", "config": cfg_path, "model": cfg.model["name"], "T": int(model.time_steps),
           "neuron": mkw.get("neuron", "if"), "variant": variant, "rule_options": VARIANTS[variant], "batch": batch,
           "smoke": smoke, "graph_failed_probe": rule}
    return train_step, eval_step, iters, row


def _finish(row: dict, iters: list) -> dict:
    rule = row.pop("graph_failed_probe")
    its = [float(i) for i in iters if i is not None]
    row["solver_iters_mean"] = sum(its) / len(its) if its else None
    row["graph_failed"] = bool(getattr(rule, "_graph_failed", False))
    return row


def measure(cfg_path: str, variant: str, batch: int, dev: torch.device, repeat: int, smoke: bool) -> dict:
    train_step, eval_step, iters, row = build(cfg_path, variant, batch, dev, smoke)
    try:
        row.update(training_throughput(train_step, dev, batch, warmup=3, repeat=repeat, prefix="train_"))
        e = time_ms(eval_step, dev, warmup=2, repeat=repeat)
        row.update({f"eval_{k}": v for k, v in e.items()})
        row["eval_images_per_s"] = batch / (e["median_ms"] / 1e3)
    except torch.OutOfMemoryError:
        row["out_of_memory"] = True
    return _finish(row, iters)


def measure_interleaved(cfg_path: str, variants: list, batch: int, dev: torch.device, repeat: int,
                        smoke: bool) -> list:
    """Every variant built first, then timed in rounds of one step each (train, then eval)."""
    built = {v: build(cfg_path, v, batch, dev, smoke) for v in variants}
    times = {v: {"train": [], "eval": []} for v in variants}
    for kind, idx, warm in (("train", 0, 3), ("eval", 1, 2)):
        for _ in range(warm):
            for v in variants:
                built[v][idx]()
        for r in range(repeat):
            for v in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order: no position bias
                t0 = time.perf_counter()
                built[v][idx]()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times[v][kind].append(1e3 * (time.perf_counter() - t0))
    rows = []
    for v in variants:
        row = built[v][3]
        for kind in ("train", "eval"):
            t = times[v][kind]
            row.update({f"{kind}_median_ms": statistics.median(t), f"{kind}_min_ms": min(t),
                        f"{kind}_max_ms": max(t), f"{kind}_repeat": repeat})
            row[f"{kind}_images_per_s"] = batch / (row[f"{kind}_median_ms"] / 1e3)
        row["peak_memory_mib"] = None
        row["interleaved"] = True
        rows.append(_finish(row, built[v][2]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--variants", default=None, help="comma-separated (default: all on a GPU; "
                   "reference,fast,cl,bf16 on the CPU, where CUDA graphs do not exist)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny shapes and T <= 3 (CPU check of the script)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="time the variants step by step in rounds (default: on the CPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ide_speed.jsonl"))
    a = p.parse_args()
    dev = torch.device(a.device)
    variants = a.variants.split(",") if a.variants else (
        list(VARIANTS) if dev.type == "cuda" else ["reference", "fast", "cl", "bf16"])
    env = environment(dev)
    if dev.type == "cpu":
        env["note"] = ("CPU shared with other jobs (2 cores, several agents at once): absolute times are "
                       "not comparable; the same-run ratio of interleaved variants is")
    rows = []
    interleave = dev.type == "cpu" if a.interleave is None else a.interleave
    for cfg in a.configs.split(","):
        measured = list(measure_interleaved(cfg, variants, a.batch, dev, a.repeat, a.smoke) if interleave
                        else (measure(cfg, v, a.batch, dev, a.repeat, a.smoke) for v in variants))
        base = next((r for r in measured if r["variant"] == "reference" and "train_median_ms" in r), None)
        for row in measured:
            v = row["variant"]
            if base is not None and "train_median_ms" in row:
                row["train_speedup_vs_reference"] = base["train_median_ms"] / row["train_median_ms"]
                row["eval_speedup_vs_reference"] = base["eval_median_ms"] / row["eval_median_ms"]
            rows.append({**row, **env})
            if row.get("out_of_memory"):
                print(f"{cfg:<48} {v:<9} out of memory")
                continue
            mem = row.get("peak_memory_mib")
            ratio = row.get("train_speedup_vs_reference")
            print(f"{cfg:<48} {v:<9} train {row['train_median_ms']:8.2f} ms {row['train_images_per_s']:9.0f} img/s  "
                  f"eval {row['eval_images_per_s']:9.0f} img/s  peak {mem if mem is None else round(mem)} MiB  "
                  f"iters {row['solver_iters_mean']}  x reference (same run) {'-' if ratio is None else f'{ratio:.3f}'}")
    write_lines(Path(a.out), rows)


if __name__ == "__main__":
    main()
