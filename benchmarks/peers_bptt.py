"""Surrogate-gradient BPTT: bioprop against snnTorch, SpikingJelly and Norse on one network (issue 25).

    OMP_NUM_THREADS=1 python benchmarks/peers_bptt.py [--T 4,16,64] [--batch 128] [--repeat 5]
        [--device cpu|cuda] [--libs bioprop,bioprop-reference,snntorch,spikingjelly,norse]
        [--check-only] [--out benchmarks/results/peers_bptt.jsonl]

The peers are benchmark-only dependencies (``pip install -e .[peers]``; see docs/methods/bptt.md
for installing them beside torch without letting pip replace torch). The library never imports them.

Network: bioprop's ``spiking_convnet`` with ``channels=[32, 32]``: [conv3 32-BN-LIF-pool2] x 2,
FC 256-LIF, linear readout of the time-averaged spikes; LIF leak 0.5, threshold 1, reset by
subtraction, atan surrogate (alpha 2); direct input encoding (the first conv + BN once, its output
fed every step); BatchNorm in training mode over all ``T x B`` maps. Every library gets a deep copy
of the same synapses (conv, BN, pooling, linear layers, same weights) and the same readout; only
the neuron layers differ, each the library's own LIF run over the ``T`` steps layer by layer:

- bioprop: the model itself (``lif_impl=fused``; ``bioprop-reference``: ``lif_impl=reference``,
  the plain autograd loop; ``bioprop-compiled`` on request: ``lif_impl=compiled``).
- SpikingJelly: ``LIFNode(tau=2, decay_input=False, v_reset=None, surrogate_function=ATan(2),
  step_mode='m')``: ``v = v - v/2 + x``, fire at ``v >= 1``, ``v -= s``: exactly our neuron.
- snnTorch: ``Leaky(beta=0.5, threshold=1, spike_grad=atan(2), reset_mechanism='subtract',
  reset_delay=False)`` stepped over ``cur.unbind(0)``. snnTorch subtracts the threshold (not
  ``leak * threshold``) from the leaked membrane, ``m[t] = beta m[t-1] + I[t] - theta [m[t-1] > theta]``;
  with ``reset_delay=False`` its state is our state after reset and the function is ours *except*
  where a neuron's state after reset stays above threshold (drive >= 2 thetas): there snnTorch
  fires on ``v - theta``. It fires at ``v > theta`` (we at ``>=``; equal only on a tie). So
  snnTorch cannot express this neuron exactly; the check reports how far it is.
- Norse: ``LIFBoxCell`` (no synaptic current) with ``dt * tau_mem_inv = 0.5``, ``v_leak = 0``,
  ``reset_method=reset_subtract``, input ``2 I`` (its Euler step is ``v + 0.5 (2 I - v)``): the
  same forward to rounding. Norse has no atan surrogate: the closest it offers, SuperSpike
  (``method='super'``, ``alpha=pi``: ``1/(pi |x| + 1)^2``, same value 1 at the threshold), is
  used, so its gradients differ from the others' by design (reported).

Check (before timing, per T): every library's network in float64 from the same weights on one batch
of 16 embedded MNIST images: max |logit difference| to bioprop and the relative difference of
every parameter's gradient.

Timing: one training step = forward, cross-entropy, backward, Adam, on one batch of ``--batch``
embedded MNIST images; the libraries interleaved in one process (rotated order each round), the
median of ``--repeat`` rounds after one warm-up round. Peak memory, CPU: the growth of the peak
resident set size (``VmHWM`` of /proc/self/status, reset before every step by writing 5 to
/proc/self/clear_refs) over the resident size before the step; the script re-executes itself with
glibc's mmap threshold fixed at 128 KiB so that every freed tensor is returned to the system (else
the heap keeps the previous library's memory and the next step's growth reads low). CUDA:
``torch.cuda.max_memory_allocated`` over the memory allocated before the step. Both count what
the step allocates (activations kept for backward, gradients, temporaries, Adam's state on the
first step only), not the weights.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import math
import os
import re
import statistics
import sys
import time
from typing import Callable, Dict, List

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
if __name__ == "__main__" and os.environ.get(MMAP_ENV) is None:
    os.environ[MMAP_ENV] = "131072"  # fixed: freed tensors go back to the OS (see the docstring)
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from common import ROOT, environment, write_lines  # noqa: E402

from bioprop import create_model, create_rule  # noqa: E402
from bioprop.data import create_dataset  # noqa: E402

LIBS = ("bioprop", "bioprop-reference", "snntorch", "spikingjelly", "norse")
# on request (default with --device cuda): torch.compile'd LIF steps (minutes of compiling on a CPU),
# the bptt rule's CUDA-graph step (GPU only)
EXTRA_LIBS = ("bioprop-compiled", "bioprop-graph")
LEAK, THETA, ALPHA = 0.5, 1.0, 2.0


def versions() -> Dict[str, str]:
    out = {"torch": torch.__version__}
    for p in ("snntorch", "spikingjelly", "norse"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


# ---- the peers' neuron layers: currents [T, B, ...] -> spikes [T, B, ...] ----------------------------

def snntorch_neuron() -> Callable[[torch.Tensor], torch.Tensor]:
    import snntorch as snn
    from snntorch import surrogate

    lif = snn.Leaky(beta=LEAK, threshold=THETA, spike_grad=surrogate.atan(alpha=ALPHA), reset_mechanism="subtract",
                    reset_delay=False)

    def run(cur: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros_like(cur[0])
        out = []
        for c in cur.unbind(0):
            spk, mem = lif(c, mem)
            out.append(spk)
        return torch.stack(out)

    run.module = lif  # type: ignore[attr-defined]  (moved with .to())
    return run


def spikingjelly_neuron() -> Callable[[torch.Tensor], torch.Tensor]:
    from spikingjelly.activation_based import neuron, surrogate

    lif = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=THETA, v_reset=None,
                         surrogate_function=surrogate.ATan(alpha=ALPHA), step_mode="m")

    def run(cur: torch.Tensor) -> torch.Tensor:
        lif.reset()
        return lif(cur)

    run.module = lif  # type: ignore[attr-defined]
    return run


def norse_neuron() -> Callable[[torch.Tensor], torch.Tensor]:
    from norse.torch import LIFBoxCell, LIFBoxParameters
    from norse.torch.functional.reset import reset_subtract

    p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(500.0), v_leak=torch.as_tensor(0.0), v_th=torch.as_tensor(THETA),
                         v_reset=torch.as_tensor(0.0), method="super", alpha=torch.as_tensor(math.pi),
                         reset_method=reset_subtract)
    cell = LIFBoxCell(p, dt=1e-3)  # dt * tau_mem_inv = 0.5

    def run(cur: torch.Tensor) -> torch.Tensor:
        state = None
        out = []
        for c in (2 * cur).unbind(0):
            z, state = cell(c, state)
            out.append(z)
        return torch.stack(out)

    run.module = cell  # type: ignore[attr-defined]
    return run


PEERS = {"snntorch": snntorch_neuron, "spikingjelly": spikingjelly_neuron, "norse": norse_neuron}


class PeerNet(nn.Module):
    """bioprop's network (its synapse blocks, deep-copied: the same weights) with another library's
    neuron layers; the same simulation schedule as ``SpikingFeedforwardNet.run`` (first block once,
    blocks on all T x B maps at once, linear readout of the time-averaged spikes)."""

    def __init__(self, model: nn.Module, lib: str):
        super().__init__()
        self.layers = copy.deepcopy(model.layers)
        self.time_steps = model.time_steps
        self.neurons = [PEERS[lib]() for _ in range(len(self.layers) - 1)]
        self.neuron_modules = nn.ModuleList(n.module for n in self.neurons)

    def _block(self, block: nn.Module, s: torch.Tensor) -> torch.Tensor:
        t, b = s.shape[:2]
        return block(s.flatten(0, 1)).unflatten(0, (t, b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = self.layers[0](x)
        cur = c0.unsqueeze(0).expand((self.time_steps,) + c0.shape)
        for i, neuron in enumerate(self.neurons):
            s = neuron(cur).to(cur.dtype)  # snnTorch returns float32 spikes whatever the input
            if i + 1 < len(self.neurons):
                cur = self._block(self.layers[i + 1], s)
        return self.layers[-1](s.mean(0))


def build(lib: str, T: int, channels: List[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    impl = {"bioprop-reference": "reference", "bioprop-compiled": "compiled"}.get(lib, "fused")
    model = create_model("spiking_convnet", channels=channels, hidden=[256], time_steps=T, leak=LEAK,
                         threshold=THETA, reset="subtract", surrogate="atan", alpha=ALPHA, lif_impl=impl)
    return model if lib.startswith("bioprop") else PeerNet(model, lib)


def batch(n: int, device: torch.device):
    ds = create_dataset("mnist_embedded", batch_size=n)
    x = next(iter(ds.loader("train", device, seed=0, epoch=0)))
    return x[0][:n], x[1][:n]


def check(libs: List[str], T: int, channels: List[int], device: torch.device) -> List[dict]:
    """float64, same weights, one batch of 16: logits and gradients against bioprop's
    (``bioprop-graph`` is the same network as ``bioprop``; its step is tested equal to the eager one
    by tests/test_bptt_linear.py on a GPU)."""
    x, y = batch(16, device)
    x = x.double()
    res = {}
    libs = [l for l in libs if l != "bioprop-graph"]
    for lib in libs:
        net = build(lib, T, channels).to(device).double().train()
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        grads = [p.grad.detach().clone() for p in net.layers.parameters()]
        res[lib] = (logits.detach(), grads)
    ref_logits, ref_grads = res["bioprop"]
    rows = []
    for lib in libs:
        logits, grads = res[lib]
        rel = [float((g - r).norm() / r.norm().clamp_min(1e-300)) for g, r in zip(grads, ref_grads)]
        rows.append({"lib": lib, "T": T, "max_abs_logit_diff": float((logits - ref_logits).abs().max()),
                     "max_rel_grad_diff": max(rel), "min_grad_cosine": min(
                         float((g.flatten() @ r.flatten()) / (g.norm() * r.norm()).clamp_min(1e-300))
                         for g, r in zip(grads, ref_grads))})
    return rows


def _status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def measured_step(step: Callable[[], None], device: torch.device):
    """(seconds, peak MiB grown during the step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    return dt, (_status_kib("VmHWM") - base) / 1024


def timing(libs: List[str], T: int, channels: List[int], batch_size: int, repeat: int, device: torch.device) -> List[dict]:
    x, y = batch(batch_size, device)
    steps = {}
    for lib in libs:
        net = build(lib, T, channels).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        if lib == "bioprop-graph":
            rule = create_rule("bptt", cuda_graph=True)
            net = rule.prepare(net)

            def step(net=net, opt=opt, rule=rule):
                opt.zero_grad(set_to_none=True)
                rule.step(net, x, y, F.cross_entropy)
                opt.step()
        else:
            def step(net=net, opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()

        steps[lib] = step
    times: Dict[str, List[float]] = {lib: [] for lib in libs}
    mems: Dict[str, List[float]] = {lib: [] for lib in libs}
    for r in range(repeat + 1):  # round 0: warm-up (Adam's state, allocator, oneDNN plans)
        order = libs[r % len(libs):] + libs[:r % len(libs)]
        for lib in order:
            dt, mem = measured_step(steps[lib], device)
            if r > 0:
                times[lib].append(dt)
                mems[lib].append(mem)
        print(f"T={T} round {r}: " + ", ".join(f"{k} {1e3 * v[-1]:.0f} ms" for k, v in times.items() if v), flush=True)
    rows = []
    for lib in libs:
        rows.append({"lib": lib, "T": T, "median_ms": 1e3 * statistics.median(times[lib]),
                     "min_ms": 1e3 * min(times[lib]), "max_ms": 1e3 * max(times[lib]), "repeat": repeat,
                     "peak_mib": statistics.median(mems[lib]), "peak_mib_max": max(mems[lib])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", default="4,16,64")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--repeat-long", type=int, default=3, help="rounds at T >= 64 (default 3)")
    ap.add_argument("--channels", default="32,32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--libs", default=None, help=f"default: {','.join(LIBS)} (+ {','.join(EXTRA_LIBS)} on CUDA)")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers_bptt.jsonl"))
    a = ap.parse_args()
    device = torch.device(a.device)
    if a.libs is None:
        a.libs = ",".join(LIBS + (EXTRA_LIBS if device.type == "cuda" else ()))
    libs = [l for l in a.libs.split(",") if l]
    missing = []
    for l in [l for l in libs if l in PEERS]:
        try:
            PEERS[l]()
        except ImportError as e:  # a peer not installed here: measure the others, say so
            print(f"skipping {l}: {e} (pip install -e .[peers], see docs/methods/bptt.md)", flush=True)
            missing.append(l)
    libs = [l for l in libs if l not in missing]
    if "bioprop-graph" in libs and device.type != "cuda":
        raise SystemExit("--libs: bioprop-graph needs --device cuda")
    unknown = [l for l in libs if l not in LIBS + EXTRA_LIBS]
    if unknown:
        raise SystemExit(f"--libs: unknown {unknown}; choose from {list(LIBS + EXTRA_LIBS)}")
    if "bioprop" not in libs:
        libs.insert(0, "bioprop")
    channels = [int(c) for c in a.channels.split(",")]
    env = environment(device)
    env.update({"versions": versions(), "threads": torch.get_num_threads(), "batch": a.batch, "channels": channels,
                "malloc_mmap_threshold": os.environ.get(MMAP_ENV), "load_avg_1min": os.getloadavg()[0],
                "peers_missing": missing})
    for T in [int(t) for t in a.T.split(",")]:
        rows = [dict(env, bench="peers_bptt", kind="check", **r) for r in check(libs, T, channels, device)]
        for r in rows:
            print(f"check T={T} {r['lib']}: max |dlogit| {r['max_abs_logit_diff']:.2e}, "
                  f"max rel dgrad {r['max_rel_grad_diff']:.2e}, min cos {r['min_grad_cosine']:.6f}", flush=True)
        if not a.check_only:
            rep = a.repeat_long if T >= 64 else a.repeat
            trows = timing(libs, T, channels, a.batch, rep, device)
            rows += [dict(env, bench="peers_bptt", kind="timing", load_avg_1min=os.getloadavg()[0], **r) for r in trows]
        write_lines(a.out, rows)


if __name__ == "__main__":
    main()
