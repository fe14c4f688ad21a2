"""Overhead of the trainer's NaN/Inf checks (issue 18): step time with the checks off, with the
defaults (``train.check_every=50``: device-side flags, one read per 50 steps;
``train.check_gradients=auto``: every gradient flagged every step on CUDA, through the weights at
each check on the CPU), with every gradient flagged every step (``every50_step``), and with a
read-back every step (``every1_step``: a host synchronisation per step, as the old loss check did).
Arms are interleaved round by round on the same Trainer, so the ratios are valid even on a
loaded machine; the figure that matters is ``overhead`` of ``every50`` (the defaults) against
``off`` (from the median, the minimum and the per-round paired ratios of the step times). On a CPU, where
every call is synchronous, ``monitor_ms_per_step`` also times the monitor's own calls inline
(host time: on a GPU it is the launch cost only, the interleaved ratio is the figure there).

    python benchmarks/nonfinite_overhead.py                       # CPU, small cases
    python benchmarks/nonfinite_overhead.py --device cuda --steps 200 --rounds 7 --cases all

Writes JSON lines to ``benchmarks/results/nonfinite_overhead.jsonl`` (one row per case and arm).
Device-agnostic: ``--device auto`` takes CUDA when present.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from common import ROOT, environment, write_lines  # noqa: F401  (puts src/ on the path)

import torch  # noqa: E402

from bioprop.nonfinite import FiniteMonitor  # noqa: E402
from bioprop.train import RunConfig, Trainer  # noqa: E402
from bioprop.train.trainer import resolve_device  # noqa: E402

CASES = {
    # name: (model, rule, batch): the smallest step is the worst case for a fixed per-step cost
    "mlp_bp": ({"name": "mlp", "hidden": [256, 256]}, {"name": "bp"}, 128),
    "snn_bptt": ({"name": "spiking_convnet", "channels": [12, 32], "hidden": [128], "time_steps": 4}, {"name": "bptt"}, 64),
    "f400_ide": ({"name": "f400", "time_steps": 5}, {"name": "ide"}, 64),
}
ARMS = {"off": (0, "auto"), "every50": (50, "auto"), "every50_step": (50, "step"), "every1_step": (1, "step")}


def run_case(name: str, device: str, steps: int, rounds: int, tmp: str):
    model, rule, batch = CASES[name]
    cfg = RunConfig.from_dict({
        "model": model, "rule": rule,
        "data": {"name": "mnist_embedded", "batch_size": batch, "train_limit": batch * steps},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "schedule": {"name": "none"},
        "train": {"epochs": 10_000, "seed": 0, "device": device, "out_dir": tmp, "name": name,
                  "progress": False, "max_steps_per_epoch": steps},
    })
    t = Trainer(cfg, log=lambda *a: None)
    times = {a: [] for a in ARMS}
    inline = {a: 0.0 for a in ARMS}
    current = ["off"]

    def timed(fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                inline[current[0]] += time.perf_counter() - t0
        return wrapper

    for meth in ("watch_step", "first_bad"):  # watch and watch_tensors go through watch_step
        setattr(FiniteMonitor, meth, timed(getattr(FiniteMonitor, meth)))
    # per-step wall times: the interval between consecutive scheduler steps (one per training step,
    # at its end) is one whole step; their median is robust to the preemptions of a shared machine
    per_step = {a: [] for a in ARMS}
    stamps: list = []
    real_sched_step = t.scheduler.step

    def sched_step(*a, **k):
        if dev_is_cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return real_sched_step(*a, **k)

    dev_is_cuda = t.device.type == "cuda"
    t.scheduler.step = sched_step
    t.config.train.check_every = 0
    t.monitor.enabled = False
    grads_per_step = {}
    t.train_epoch()  # warm-up (allocations, kernels, caches)
    for r in range(rounds):
        order = list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]
        for arm in order:
            current[0] = arm
            t.config.train.check_every, t.config.train.check_gradients = ARMS[arm]
            t.monitor.enabled = ARMS[arm][0] > 0
            grads_per_step[arm] = t.monitor.enabled and t._grads_every_step()
            stamps.clear()
            res = t.train_epoch()
            times[arm].append(1e3 * res["train_time_s"] / steps)
            per_step[arm] += [1e3 * (b - a) for a, b in zip(stamps, stamps[1:])]
            t.epoch += 1
    off, off_min = statistics.median(times["off"]), min(times["off"])
    off_step = statistics.median(per_step["off"])
    rows = []
    for arm, ts in times.items():
        med = statistics.median(ts)
        # paired per-round ratios: robust to the machine's load drifting between rounds
        ratios = [b / a for a, b in zip(times["off"], ts)]
        rows.append({"bench": "nonfinite_overhead", "case": name, "arm": arm, "check_every": ARMS[arm][0],
                     "check_gradients": ARMS[arm][1], "gradients_flagged_every_step": grads_per_step[arm],
                     "model": model["name"], "rule": rule["name"], "batch": batch, "steps": steps, "rounds": rounds,
                     "median_step_ms": med, "min_step_ms": min(ts), "step_ms": ts, "overhead": med / off - 1,
                     "overhead_min": min(ts) / off_min - 1,
                     "monitor_ms_per_step": 1e3 * inline[arm] / (steps * rounds),
                     "overhead_paired_median": statistics.median(ratios) - 1,
                     # the headline figure on a shared machine: median of the per-step wall times
                     "median_per_step_ms": statistics.median(per_step[arm]),
                     "overhead_per_step_median": statistics.median(per_step[arm]) / off_step - 1,
                     "data": "mnist_embedded", "seed": 0})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=40, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per arm")
    p.add_argument("--cases", default="mlp_bp,snn_bptt", help=f"comma list of {','.join(CASES)} or 'all'")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--note", default="", help="said next to every row (e.g. 'shared CPU, 8 agents')")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nonfinite_overhead.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    env = environment(dev)
    cases = list(CASES) if a.cases == "all" else a.cases.split(",")
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases:
            for r in run_case(c, str(dev), a.steps, a.rounds, tmp):
                r.update(env)
                r["threads"] = a.threads
                r["note"] = a.note
                rows.append(r)
                print(f"{c:9s} {r['arm']:12s} {r['median_step_ms']:8.2f} ms/step (min {r['min_step_ms']:.2f})  overhead "
                      f"per-step median {100 * r['overhead_per_step_median']:+.2f}%, "
                      f"median {100 * r['overhead']:+.2f}%, min {100 * r['overhead_min']:+.2f}%, paired "
                      f"{100 * r['overhead_paired_median']:+.2f}%; monitor calls {r['monitor_ms_per_step']:.3f} ms/step "
                      f"({100 * r['monitor_ms_per_step'] / r['median_step_ms']:.2f}%)", flush=True)
    write_lines(a.out, rows)
    print(f"wrote {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    sys.exit(main())
