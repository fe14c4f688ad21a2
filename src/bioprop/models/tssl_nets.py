"""The spiking networks of TSSL-BP (Zhang & Li, NeurIPS 2020): LIF neurons with a synaptic response.

Neuron (every weight layer, the output layer included), discrete time ``t = 0 .. T-1``:

    u[t]  = (1 - 1/tau_m) r[t-1] + I[t]         membrane (r[-1] = 0); I[t] = W a_prev[t]
    s[t]  = H(u[t] - theta)                      spike, H(x) = 1 for x > 0 (strict, as the reference)
    r[t]  = u[t] (1 - s[t])                      reset to zero
    a[t]  = (1 - 1/tau_s) a[t-1] + s[t] / tau_s   postsynaptic potential (PSP), a[-1] = 0
    du[t] = u[t] - r[t-1]                        the membrane's jump at t (TSSL-BP's 1/du needs it)

so ``a = eps * s`` with the PSP kernel ``eps[k] = (1 - 1/tau_s)^k / tau_s``. Layers pass PSPs: the
next layer's input current is ``W a``. The network input ``x`` is PSP-filtered the same way,
``a_in[t] = (1 - 1/tau_s) a_in[t-1] + x[t] / tau_s``; a static image is repeated over the ``T``
steps, which gives ``a_in[t] = (1 - (1 - 1/tau_s)^(t+1)) x`` (the reference repeats the image and
applies this filter). Defaults: ``tau_m = 5``, ``tau_s = 3``, ``theta = 1``, ``T = 5``.

Pooling ``P<k>`` is sum pooling of the PSPs times ``pool_scale`` (default 1.1, the reference's
pooling weight ``theta``), with no neuron: the pooled PSP feeds the next weight layer directly.
Dropout (``dropout > 0``) multiplies the PSPs entering every weight layer but the first by
``1/(1-p)`` or 0, one mask per sample, shared by all time steps; on a feature map the mask is per
(channel, row) and shared along the row, which is what the reference's ``Dropout3d`` over its
``[B, C*H, W, 1, 1, T]`` view does (PyTorch of 2020); on a vector it is per neuron.

Layers have no bias. Initialisation follows the reference: convolutions PyTorch's default
(``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) times ``conv_weight_scale`` (1 on (Fashion-)MNIST, 5 on
CIFAR-10), linear layers Kaiming-normal (``N(0, 2/fan_in)``).

Architectures are strings, as in the paper: ``15C5-P2-40C5-P2-300`` is a 5x5 convolution to 15
channels, 2x2 sum pooling, a 5x5 convolution to 40 channels, 2x2 pooling and a 300-neuron layer;
the ``num_classes`` output neurons are appended. Spatial sizes follow from the layer arithmetic.

:class:`TSSLNet` simulates with any neuron function ``current[T, B, ...] -> (psp, spikes)``:
:meth:`TSSLNet.run` uses a surrogate-gradient spike (the ``bptt`` rule trains the very same
network by autograd through time), and the ``tssl`` rule passes its TSSL-BP autograd function
(:mod:`bioprop.rules.tssl`). The logits are the time sums of the output PSPs, the reference's
"spike counts" (each spike counts with the PSP mass it leaves inside the window, so between equal
counts the earlier spikes win).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from ..metrics import synaptic_operations
from ..neurons import NeuronParams, spike_fn
from ..neurons.psp import (Neuron, TSSLState, TSSLTrace, lif_psp_multistep, lif_psp_step, psp_filter,  # noqa: F401
                           psp_kernel, strict_heaviside)
from .base import MODELS, Edge, SpikeRecord, check_input, check_time_steps, conv_out

__all__ = [
    "TSSLNet",
    "TSSLNetConfig",
    "TSSLState",
    "TSSLTrace",
    "SumPool2d",
    "PSPDropout",
    "Neuron",
    "lif_psp_step",
    "lif_psp_multistep",
    "psp_filter",
    "psp_kernel",
    "strict_heaviside",
    "build_blocks",
]

class SumPool2d(nn.Module):
    """``scale`` times the sum over each ``kernel x kernel`` window (stride ``kernel``)."""

    def __init__(self, kernel: int, scale: float = 1.1):
        super().__init__()
        self.kernel = int(kernel)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool2d(x, self.kernel, self.kernel, divisor_override=1)
        return self.scale * pooled

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, scale={self.scale}"


class PSPDropout(nn.Module):
    """Dropout of PSPs ``[T, B, ...]``: one mask per sample for all time steps, per (channel, row)
    of a ``[C, H, W]`` map (shared along the row, as the reference) or per neuron of a vector."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return a
        shape = a.shape[1:]
        mask_shape = (shape[0], shape[1], shape[2], 1) if len(shape) == 4 else tuple(shape)
        keep = torch.empty(mask_shape, dtype=a.dtype, device=a.device).bernoulli_(1 - self.p)
        return a * (keep / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


_TOKEN = re.compile(r"^(?:(\d+)C(\d+)|P(\d+)|(\d+))$")


def build_blocks(arch: str, in_shape: Tuple[int, ...], num_classes: int, padding: int = 0,
                 pool_scale: float = 1.1, dropout: float = 0.0) -> Tuple[List[nn.Module], List[Tuple[int, ...]]]:
    """Blocks of architecture ``arch`` (e.g. ``"15C5-P2-40C5-P2-300"``) plus the output layer.

    Block ``i`` is ``[SumPool2d] [PSPDropout] [Flatten] Conv2d|Linear`` and feeds neuron layer
    ``i``. Returns the blocks and the per-sample shape of each neuron layer.
    """
    tokens = [t for t in arch.replace(" ", "").split("-") if t] if arch else []
    if len(in_shape) not in (1, 3):
        raise ValueError(f"in_shape must be (C, H, W) or (N,), got {tuple(in_shape)}")
    shape: Tuple[int, ...] = tuple(int(d) for d in in_shape)
    blocks: List[nn.Module] = []
    shapes: List[Tuple[int, ...]] = []
    pending: List[nn.Module] = []
    for tok in tokens + [str(num_classes)]:
        m = _TOKEN.match(tok)
        if m is None:
            raise ValueError(f"arch {arch!r}: cannot read layer {tok!r}; write <N>C<k> (convolution), "
                             "P<k> (sum pooling) or <N> (fully connected), joined by '-'")
        conv_ch, conv_k, pool_k, width = m.groups()
        if pool_k is not None:
            if not blocks or len(shape) != 3:
                raise ValueError(f"arch {arch!r}: pooling {tok!r} must follow a convolution")
            k = int(pool_k)
            h, w = conv_out(shape[1], k, k), conv_out(shape[2], k, k)
            if h < 1 or w < 1:
                raise ValueError(f"arch {arch!r}: {tok!r} gets a {shape[1]}x{shape[2]} map, smaller than its window")
            pending.append(SumPool2d(k, pool_scale))
            shape = (shape[0], h, w)
            continue
        layers = list(pending)
        pending = []
        if blocks and dropout > 0:
            layers.append(PSPDropout(dropout))
        if conv_ch is not None:
            if len(shape) != 3:
                raise ValueError(f"arch {arch!r}: convolution {tok!r} needs a (C, H, W) input, got {shape}")
            out, k = int(conv_ch), int(conv_k)
            h, w = conv_out(shape[1], k, 1, padding), conv_out(shape[2], k, 1, padding)
            if h < 1 or w < 1:
                raise ValueError(f"arch {arch!r}: {tok!r} gets a {shape[1]}x{shape[2]} map, too small for "
                                 f"a {k}x{k} kernel with padding {padding}")
            layers.append(nn.Conv2d(shape[0], out, k, padding=padding, bias=False))
            shape = (out, h, w)
        else:
            n_in = math.prod(shape)
            if len(shape) != 1:
                layers.append(nn.Flatten())
            layers.append(nn.Linear(n_in, int(width), bias=False))
            shape = (int(width),)
        blocks.append(layers[0] if len(layers) == 1 else nn.Sequential(*layers))
        shapes.append(shape)
    return blocks, shapes


def _weight_layer(block: nn.Module) -> nn.Module:
    return block[-1] if isinstance(block, nn.Sequential) else block


class TSSLNet(nn.Module):
    """Feedforward network of LIF neurons with synaptic response (TSSL-BP's networks).

    Input: static images ``[B, *in_shape]`` (repeated over ``time_steps``) or time-first input
    ``[T, B, *in_shape]``; both are PSP-filtered first. :meth:`simulate` runs the network with a
    given neuron function and returns the output PSPs ``[T, B, num_classes]``.
    """

    in_shape: Tuple[int, ...]
    time_steps: int
    tau_m: float
    tau_s: float
    threshold: float

    def __init__(self, blocks: List[nn.Module], in_shape: Tuple[int, ...], time_steps: int = 5,
                 tau_m: float = 5.0, tau_s: float = 3.0, threshold: float = 1.0,
                 surrogate_width: float = 0.2):
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if not tau_m > 1:
            raise ValueError(f"tau_m must be > 1 (the leak is 1 - 1/tau_m), got {tau_m}")
        if not tau_s >= 1:
            raise ValueError(f"tau_s must be >= 1 (the PSP decays by 1 - 1/tau_s), got {tau_s}")
        if not surrogate_width > 0:
            raise ValueError(f"surrogate_width must be > 0, got {surrogate_width}")
        first = list(blocks[0]) if isinstance(blocks[0], nn.Sequential) else [blocks[0]]
        if not all(isinstance(m, (nn.Flatten, nn.Conv2d, nn.Linear)) for m in first):
            raise ValueError("the first block must be a weight layer (optionally flattened): no pooling or dropout")
        self.in_shape = tuple(in_shape)
        self.layers = nn.ModuleList(blocks)
        self.time_steps = int(time_steps)
        self.tau_m = float(tau_m)
        self.tau_s = float(tau_s)
        self.threshold = float(threshold)
        self.surrogate_width = float(surrogate_width)
        self.neuron = NeuronParams(threshold=threshold, leak=1 - 1 / tau_m, reset="zero")

    def weight_layers(self) -> List[nn.Module]:
        """The Conv2d / Linear layer of every block, in order."""
        return [_weight_layer(b) for b in self.layers]

    def layer_names(self) -> List[str]:
        return [f"lif{i + 1}" for i in range(len(self.layers) - 1)] + ["output"]

    def graph(self) -> List[Edge]:
        names = ["input"] + self.layer_names()
        return [Edge(names[i], names[i + 1], f"layers.{i}") for i in range(len(self.layers))]

    def _apply_block(self, block: nn.Module, a: torch.Tensor) -> torch.Tensor:
        """Block on every time step of ``a[T, B, ...]`` (dropout masks shared over time)."""
        t, b = a.shape[:2]
        for m in (list(block) if isinstance(block, nn.Sequential) else [block]):
            a = m(a) if isinstance(m, PSPDropout) else m(a.flatten(0, 1)).unflatten(0, (t, b))
        return a

    def first_current(self, x: torch.Tensor) -> torch.Tensor:
        """Input current ``W a_in[t]`` of the first layer, ``[T, B, ...]``.

        For a static input ``a_in[t] = (1 - q^(t+1)) x`` with ``q = 1 - 1/tau_s``; the first block
        is linear without bias, so ``W a_in[t] = (1 - q^(t+1)) W x``: one convolution, not T.
        """
        timed = check_input(x, self.in_shape, type(self).__name__, allow_time=True)
        if timed:  # the input's T is what runs: refuse a model.time_steps it would silently ignore
            check_time_steps(type(self).__name__, x.shape[0], self.time_steps)
            return self._apply_block(self.layers[0], psp_filter(x, self.tau_s))
        steps = torch.arange(1, self.time_steps + 1, dtype=x.dtype, device=x.device)
        coef = 1 - (1 - 1 / self.tau_s) ** steps
        c0 = self.layers[0](x)
        return coef.view((-1,) + (1,) * c0.dim()) * c0

    def simulate(self, x: torch.Tensor, neuron: Neuron) -> Tuple[torch.Tensor, SpikeRecord]:
        """Output PSPs ``[T, B, num_classes]`` and the spike record, with ``neuron`` in every layer."""
        cur = self.first_current(x)
        rec = SpikeRecord(time_steps=cur.shape[0], batch=cur.shape[1])
        names = self.layer_names()
        a = cur
        for i, name in enumerate(names):
            if i > 0:
                cur = self._apply_block(self.layers[i], a)
            a, s = neuron(cur)
            rec.add(name, s)
            if i + 1 < len(names):
                rec.synops[f"layers.{i + 1}"] = self._synops(self.layers[i + 1], s.detach())
        return a, rec

    @staticmethod
    def _synops(block: nn.Module, s: torch.Tensor) -> torch.Tensor:
        """Synaptic events of spikes ``s[T, B, ...]`` entering ``block``: each spike reaches its
        pooling window's neuron (sum pooling, no neuron) and from there the weight layer's fan-out."""
        counts = s.flatten(0, 1)
        for m in (list(block) if isinstance(block, nn.Sequential) else [block]):
            if isinstance(m, SumPool2d):
                counts = nn.functional.avg_pool2d(counts, m.kernel, m.kernel, divisor_override=1)
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                if isinstance(m, nn.Linear):
                    counts = counts.flatten(1)
                return synaptic_operations(m, counts)
        raise TypeError(f"block {block} has no weight layer")

    def surrogate_neuron(self, current: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The neuron with a sigmoid surrogate spike, ``dH/dx ~ sigma'(x/w)/w`` (w =
        ``surrogate_width``, TSSL-BP's quiet-neuron surrogate), differentiated by autograd through
        time, the reset included."""
        trace = lif_psp_multistep(current, self.tau_m, self.tau_s, self.threshold,
                                  spike_fn("sigmoid", 1 / self.surrogate_width))
        return trace.a, trace.s

    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, SpikeRecord]:
        """Logits (time sums of the output PSPs) and the spike record, surrogate-gradient path."""
        a, rec = self.simulate(x, self.surrogate_neuron)
        return a.sum(0), rec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


@dataclass
class TSSLNetConfig:
    """A TSSL-BP network: ``arch`` (hidden layers, see the module docstring) then ``num_classes``
    output neurons; convolution ``padding``; neuron constants; PSP ``dropout``; ``pool_scale`` of
    the sum pooling; ``conv_weight_scale`` of the initial convolution weights; ``surrogate_width``
    of the spike surrogate in :meth:`TSSLNet.run` (the ``bptt`` path; ``tssl`` has its own)."""

    arch: str = "400-400"
    in_shape: Tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    padding: int = 0
    time_steps: int = 5
    tau_m: float = 5.0
    tau_s: float = 3.0
    threshold: float = 1.0
    dropout: float = 0.0
    pool_scale: float = 1.1
    conv_weight_scale: float = 1.0
    surrogate_width: float = 0.2


@dataclass
class TSSLMnistCNNConfig(TSSLNetConfig):
    arch: str = "15C5-P2-40C5-P2-300"


@dataclass
class TSSLFmnistCNNConfig(TSSLNetConfig):
    arch: str = "32C5-P2-64C5-P2-1024"
    padding: int = 2


@dataclass
class TSSLCifar10CNNConfig(TSSLNetConfig):
    arch: str = "96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024"
    in_shape: Tuple[int, ...] = (3, 32, 32)
    padding: int = 1
    dropout: float = 0.2
    conv_weight_scale: float = 5.0


@dataclass
class TSSLCifar10LargeConfig(TSSLCifar10CNNConfig):
    arch: str = "128C3-256C3-P2-512C3-P2-1024C3-512C3-1024-512"


def tssl_net(c: TSSLNetConfig) -> TSSLNet:
    """Build and initialise (as the reference) the network of config ``c``."""
    blocks, _ = build_blocks(c.arch, tuple(c.in_shape), c.num_classes, c.padding, c.pool_scale, c.dropout)
    model = TSSLNet(blocks, tuple(c.in_shape), c.time_steps, c.tau_m, c.tau_s, c.threshold, c.surrogate_width)
    with torch.no_grad():
        for layer in model.weight_layers():
            if isinstance(layer, nn.Conv2d):
                layer.weight.mul_(c.conv_weight_scale)  # PyTorch's default conv init, scaled
            else:
                nn.init.kaiming_normal_(layer.weight)
    return model


@MODELS.register("tssl_mnist_cnn", TSSLMnistCNNConfig, "TSSL-BP MNIST net 15C5-P2-40C5-P2-300-10 (LIF + PSP, T=5)", returns=TSSLNet)
def tssl_mnist_cnn(c: TSSLMnistCNNConfig) -> nn.Module:
    return tssl_net(c)


@MODELS.register("tssl_fmnist_mlp", TSSLNetConfig, "TSSL-BP Fashion-MNIST MLP 400-400-10 (LIF + PSP, T=5)", returns=TSSLNet)
def tssl_fmnist_mlp(c: TSSLNetConfig) -> nn.Module:
    return tssl_net(c)


@MODELS.register("tssl_fmnist_cnn", TSSLFmnistCNNConfig, "TSSL-BP Fashion-MNIST net 32C5-P2-64C5-P2-1024-10 (LIF + PSP, T=5)", returns=TSSLNet)
def tssl_fmnist_cnn(c: TSSLFmnistCNNConfig) -> nn.Module:
    return tssl_net(c)


@MODELS.register("tssl_cifar10_cnn", TSSLCifar10CNNConfig,
                 "TSSL-BP CIFAR-10 net 96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024-10 (PSP dropout 0.2)", returns=TSSLNet)
def tssl_cifar10_cnn(c: TSSLCifar10CNNConfig) -> nn.Module:
    return tssl_net(c)


@MODELS.register("tssl_cifar10_large", TSSLCifar10LargeConfig,
                 "TSSL-BP CIFAR-10 net 128C3-256C3-P2-512C3-P2-1024C3-512C3-1024-512-10 (PSP dropout 0.2)", returns=TSSLNet)
def tssl_cifar10_large(c: TSSLCifar10LargeConfig) -> nn.Module:
    return tssl_net(c)
