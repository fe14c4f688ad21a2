"""Time per training step of ``ekdaa`` against ``bp`` on the same network, interleaved in one run.

    python benchmarks/ekdaa_speed.py [--device cpu] [--threads 1] [--repeat 30] [--nets mlp,cnn]

A step is ``zero_grad; rule.step; optimizer.step`` (SGD, momentum 0.85; EKDAA's step includes
its error kernels' update) on a fixed random batch of 50 (the release's batch size). The two
rules' steps alternate (ekdaa, bp, ekdaa, bp, ...) after a warm-up, so that both see the same
machine load; the figure is the median step time of each and their ratio. Networks: the
Fashion-MNIST MLP 784-512-512-10 (``ekdaa_mlp``) and the release's CIFAR-10 CNN (``ekdaa_cnn``),
tanh. On a shared CPU only the ratio of one run is meaningful. Writes JSON lines to
``benchmarks/results/ekdaa_speed.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common import ROOT, environment, write_lines

from bioprop import create_model, create_rule  # noqa: E402

NETS = {
    "mlp": ("ekdaa_mlp", dict(in_shape=[1, 28, 28], hidden=[512, 512]), (1, 28, 28)),
    "cnn": ("ekdaa_cnn", dict(in_shape=[3, 32, 32]), (3, 32, 32)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(net: str, device: torch.device, batch: int, warmup: int, repeat: int) -> dict:
    name, kw, shape = NETS[net]
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    arms = {}
    for rule_name in ("ekdaa", "bp"):
        torch.manual_seed(0)
        model = create_model(name, **kw).to(device)
        rule = create_rule(rule_name)
        model = rule.prepare(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.85)

        def step(model=model, rule=rule, opt=opt):
            opt.zero_grad(set_to_none=True)
            rule.step(model, x, y, F.cross_entropy)
            opt.step()
        arms[rule_name] = step
    for _ in range(warmup):
        for f in arms.values():
            f()
    times = {k: [] for k in arms}
    for _ in range(repeat):
        for k, f in arms.items():
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[k].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bench": "ekdaa_speed", "net": net, "model": name, "model_kw": kw, "batch": batch, "repeat": repeat,
            "warmup": warmup, "interleaved": True,
            "ekdaa_median_ms": med["ekdaa"], "bp_median_ms": med["bp"],
            "ekdaa_min_ms": min(times["ekdaa"]), "bp_min_ms": min(times["bp"]),
            "ratio_ekdaa_to_bp": med["ekdaa"] / med["bp"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--nets", default="mlp,cnn")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ekdaa_speed.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    env = environment(device)
    rows = []
    for net in a.nets.split(","):
        r = bench(net, device, a.batch, a.warmup, a.repeat)
        r.update(env, threads=a.threads, note="shared machine: only the interleaved ratio is meaningful")
        rows.append(r)
        print(f"{net}: ekdaa {r['ekdaa_median_ms']:.2f} ms, bp {r['bp_median_ms']:.2f} ms, "
              f"ratio {r['ratio_ekdaa_to_bp']:.2f}")
    write_lines(a.out, rows)


if __name__ == "__main__":
    main()
