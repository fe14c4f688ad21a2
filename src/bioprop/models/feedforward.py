"""Feedforward MLPs and convnets, as ANNs (ReLU) and as spiking networks (LIF/IF).

The ANN and the spiking version of each architecture share one block sequence: block ``i`` is
the synapse (pooling, convolution or linear map, BatchNorm) that feeds neuron layer ``i``; the
last block is the linear readout. In the ANN the neuron layer is a ReLU; in the spiking network
it is an (L)IF population simulated for ``time_steps`` steps.

Spiking simulation is layer by layer over the whole time axis (SpikingJelly's multi-step
mode): block ``i`` is applied to all ``T x B`` spike maps in one call, then the neurons run their
T steps. With a static (analog) input the first block is computed once and fed as a constant
current every step (direct encoding); a time-first input ``[T, B, ...]`` is fed step by step. The
logits are the time average of the readout's current, which for a linear readout is the
readout of the average last-layer spike train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Sequence, Tuple

import torch
from torch import nn

from ..metrics import synaptic_operations
from ..neurons import LIF_IMPLS, NeuronParams, lif_multistep, lif_multistep_fused, spike_fn
from .base import MODELS, Edge, SpikeRecord, check_input, check_time_steps, conv_out, neuron_from

__all__ = ["FeedforwardNet", "SpikingFeedforwardNet", "MLPConfig", "ConvNetConfig",
           "SpikingMLPConfig", "SpikingConvNetConfig"]


@dataclass
class MLPConfig:
    in_shape: Tuple[int, ...] = (1, 28, 28)
    hidden: List[int] = field(default_factory=lambda: [800, 800])
    num_classes: int = 10
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class SpikingMLPConfig(MLPConfig):
    time_steps: int = 8
    neuron: Literal["lif", "if"] = "lif"
    threshold: float = 1.0
    leak: float = 0.9
    reset: Literal["subtract", "zero"] = "subtract"
    detach_reset: bool = False
    surrogate: str = "atan"
    alpha: Optional[float] = None
    # how the neurons are simulated: ``fused`` (one autograd node per layer, hand-written reverse
    # loop), ``reference`` (plain autograd through every step), ``compiled`` (fused, torch.compile'd steps)
    lif_impl: Literal["fused", "reference", "compiled"] = "fused"


@dataclass
class ConvNetConfig:
    in_shape: Tuple[int, ...] = (1, 28, 28)
    channels: List[int] = field(default_factory=lambda: [32, 64])
    kernel: int = 3
    pool: Literal["max", "avg"] = "max"
    hidden: List[int] = field(default_factory=lambda: [256])
    num_classes: int = 10
    dropout: float = 0.0
    batch_norm: bool = True


@dataclass
class SpikingConvNetConfig(ConvNetConfig):
    time_steps: int = 4
    neuron: Literal["lif", "if"] = "lif"
    threshold: float = 1.0
    leak: float = 0.5
    reset: Literal["subtract", "zero"] = "subtract"
    detach_reset: bool = False
    surrogate: str = "atan"
    alpha: Optional[float] = None
    # how the neurons are simulated: ``fused`` (one autograd node per layer, hand-written reverse
    # loop), ``reference`` (plain autograd through every step), ``compiled`` (fused, torch.compile'd steps)
    lif_impl: Literal["fused", "reference", "compiled"] = "fused"


def _mlp_blocks(c: MLPConfig) -> List[nn.Module]:
    width = 1
    for d in c.in_shape:
        width *= d
    blocks: List[nn.Module] = []
    for i, h in enumerate(c.hidden):
        layers: List[nn.Module] = [nn.Flatten()] if i == 0 else []
        if i > 0 and c.dropout > 0:
            layers.append(nn.Dropout(c.dropout))
        layers.append(nn.Linear(width, h))
        if c.batch_norm:
            layers.append(nn.BatchNorm1d(h))
        blocks.append(nn.Sequential(*layers))
        width = h
    head: List[nn.Module] = [nn.Flatten()] if not c.hidden else []
    if c.hidden and c.dropout > 0:
        head.append(nn.Dropout(c.dropout))
    head.append(nn.Linear(width, c.num_classes))
    blocks.append(nn.Sequential(*head))
    return blocks


def _convnet_blocks(c: ConvNetConfig) -> List[nn.Module]:
    """conv(k, same padding) [+BN] -> neuron -> pool2, per entry of ``channels``; then the
    hidden linear layers and the readout. Spatial sizes follow from the layer arithmetic."""
    if len(c.in_shape) != 3:
        raise ValueError(f"convnet needs in_shape (C, H, W), got {c.in_shape}")
    ch, h, w = c.in_shape
    blocks: List[nn.Module] = []
    pool_cls = nn.MaxPool2d if c.pool == "max" else nn.AvgPool2d
    for i, out in enumerate(c.channels):
        layers: List[nn.Module] = []
        if i > 0:
            layers.append(pool_cls(2))
            h, w = conv_out(h, 2, 2), conv_out(w, 2, 2)
        layers.append(nn.Conv2d(ch, out, c.kernel, padding=c.kernel // 2, bias=not c.batch_norm))
        h, w = conv_out(h, c.kernel, 1, c.kernel // 2), conv_out(w, c.kernel, 1, c.kernel // 2)
        if c.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        blocks.append(nn.Sequential(*layers))
        ch = out
    h, w = conv_out(h, 2, 2), conv_out(w, 2, 2)
    width = ch * h * w
    first = [pool_cls(2), nn.Flatten()]
    for hid in c.hidden:
        layers = list(first) + ([nn.Dropout(c.dropout)] if c.dropout > 0 else [])
        layers.append(nn.Linear(width, hid))
        blocks.append(nn.Sequential(*layers))
        first, width = [], hid
    head = list(first) + ([nn.Dropout(c.dropout)] if c.dropout > 0 else [])
    head.append(nn.Linear(width, c.num_classes))
    blocks.append(nn.Sequential(*head))
    return blocks


class FeedforwardNet(nn.Module):
    """ANN: ``block_1 -> ReLU -> ... -> block_L`` (the last block is the readout)."""


    def __init__(self, blocks: Sequence[nn.Module], in_shape: Tuple[int, ...]):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.layers = nn.ModuleList(blocks)
        self.act = nn.ReLU()

    def blocks(self) -> List[nn.Module]:
        """Ordered blocks ``f_l``: ``f_l = ReLU . block_l`` except the last (the readout)."""
        out: List[nn.Module] = [nn.Sequential(b, nn.ReLU()) for b in self.layers[:-1]]
        return out + [self.layers[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_shape, type(self).__name__)
        for b in self.layers[:-1]:
            x = self.act(b(x))
        return self.layers[-1](x)


class SpikingFeedforwardNet(nn.Module):
    """Feedforward SNN: ``block_l -> (L)IF`` for each hidden layer, then a linear readout.

    Input: static ``[B, *in_shape]`` (direct encoding: the same current every step) or a spike
    train ``[T, B, *in_shape]``. Output: logits ``[B, classes]`` = time average of the readout.
    Dropout, where configured, uses one mask for all time steps.

    ``lif_impl`` chooses how each neuron layer's ``T`` steps are simulated and differentiated:
    ``fused`` (default, :func:`~bioprop.neurons.lif_multistep_fused`), ``reference`` (the plain
    autograd loop :func:`~bioprop.neurons.lif_multistep`) or ``compiled`` (fused with
    ``torch.compile``d steps). All three compute the same spikes; gradients agree to float rounding.
    A spike function other than a :func:`~bioprop.neurons.spike_fn` surrogate (e.g. a
    :func:`~bioprop.neurons.relaxed` step) always takes the reference loop.
    """

    in_shape: Tuple[int, ...]
    time_steps: int

    def __init__(self, blocks: Sequence[nn.Module], in_shape: Tuple[int, ...], time_steps: int,
                 neuron: NeuronParams, surrogate: str = "atan", alpha: Optional[float] = None,
                 lif_impl: str = "fused"):
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if lif_impl not in LIF_IMPLS:
            raise ValueError(f"lif_impl must be one of {list(LIF_IMPLS)}, got {lif_impl!r}")
        self.lif_impl = lif_impl
        self.in_shape = tuple(in_shape)
        self.layers = nn.ModuleList(blocks)
        self.time_steps = int(time_steps)
        self.neuron = neuron
        self.surrogate = surrogate
        self.alpha = alpha
        self.spike = spike_fn(surrogate, alpha)

    def layer_names(self) -> List[str]:
        return [f"lif{i + 1}" for i in range(len(self.layers) - 1)]

    def graph(self) -> List[Edge]:
        names = ["input"] + self.layer_names() + ["output"]
        return [Edge(names[i], names[i + 1], f"layers.{i}") for i in range(len(self.layers))]

    def _apply_block(self, block: nn.Module, s: torch.Tensor, rec: Optional[SpikeRecord] = None,
                     name: str = "") -> torch.Tensor:
        """Apply ``block`` to every time step of ``s[T, B, ...]`` at once (one dropout mask for all T).

        With ``rec``, the synaptic operations of the block's weight layer are recorded under ``name``
        (``s`` must then be spikes; with a time-averaged input pass ``rec=None``)."""
        t, b = s.shape[:2]
        mods = list(block) if isinstance(block, nn.Sequential) else [block]
        flat = s.flatten(0, 1)
        for m in mods:
            if rec is not None and isinstance(m, (nn.Linear, nn.Conv2d)):
                rec.synops[name] = synaptic_operations(m, _active_inputs(flat, t))
            if isinstance(m, nn.Dropout):
                if m.training and m.p > 0:
                    mask = torch.empty((b,) + flat.shape[1:], device=s.device, dtype=s.dtype).bernoulli_(1 - m.p)
                    flat = (flat.unflatten(0, (t, b)) * (mask / (1 - m.p))).flatten(0, 1)
            else:
                flat = m(flat)
        return flat.unflatten(0, (t, b))

    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, SpikeRecord]:
        """Simulate ``time_steps`` steps; return logits and the per-layer spike record."""
        timed = check_input(x, self.in_shape, type(self).__name__, allow_time=True)
        if timed:  # the input's T is what runs: refuse a model.time_steps it would silently ignore
            check_time_steps(type(self).__name__, x.shape[0], self.time_steps)
        T = x.shape[0] if timed else self.time_steps
        rec = SpikeRecord(time_steps=T, batch=x.shape[1] if timed else x.shape[0])
        if timed:
            cur = self._apply_block(self.layers[0], x)
        else:
            c0 = self._apply_block(self.layers[0], x.unsqueeze(0))
            cur = c0.expand((T,) + c0.shape[1:])
        for i, name in enumerate(self.layer_names()):
            s = self._neurons(cur)[0]  # not the final state: it would stay alive through the next layer
            rec.add(name, s)
            if i + 1 < len(self.layers) - 1:
                cur = self._apply_block(self.layers[i + 1], s, rec, f"layers.{i + 1}")
            else:
                head = self.layers[-1]
                if _is_linear(head):  # readout of the time-averaged spikes = time average of the readout
                    out = self._apply_block(head, s.mean(0, keepdim=True))[0]
                    self._count_head(head, s, rec)
                    return out, rec
                return self._apply_block(head, s, rec, f"layers.{len(self.layers) - 1}").mean(0), rec
        # no hidden layer: the readout integrates the input directly
        return cur.mean(0), rec

    def _neurons(self, cur: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One neuron layer over all steps of ``cur[T, B, ...]``: ``(spikes, final state)``."""
        if self.lif_impl == "reference":
            return lif_multistep(cur, self.neuron, self.spike)
        return lif_multistep_fused(cur, self.neuron, self.spike, compiled=self.lif_impl == "compiled")

    def _count_head(self, head: nn.Module, s: torch.Tensor, rec: SpikeRecord) -> None:
        """SynOps of a linear readout applied to the average rate (not simulated per step)."""
        mods = list(head) if isinstance(head, nn.Sequential) else [head]
        x = s.detach().flatten(0, 1)
        for m in mods:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                rec.synops[f"layers.{len(self.layers) - 1}"] = synaptic_operations(m, x)
                return
            if not isinstance(m, nn.Dropout):
                x = m(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


def _active_inputs(flat: torch.Tensor, steps: int) -> torch.Tensor:
    """The number of non-zero inputs per position of ``flat[T*B, C, ...]`` (summed over channels,
    ``[T*B, 1, ...]``): what :func:`~bioprop.metrics.synaptic_operations` counts, computed one time
    step at a time so that no ``[T, B, C, ...]`` temporary is allocated."""
    return torch.cat([(c != 0).sum(1, keepdim=True, dtype=c.dtype) for c in flat.detach().chunk(steps)])


_LINEAR = (nn.Linear, nn.Conv2d, nn.Flatten, nn.Dropout, nn.AvgPool2d, nn.Identity)


def _is_linear(block: nn.Module) -> bool:
    mods = list(block) if isinstance(block, nn.Sequential) else [block]
    return all(isinstance(m, _LINEAR) for m in mods)


def _spiking(blocks: List[nn.Module], c) -> SpikingFeedforwardNet:
    return SpikingFeedforwardNet(
        blocks, c.in_shape, c.time_steps, neuron_from(c.neuron, c.threshold, c.leak, c.reset, c.detach_reset),
        c.surrogate, c.alpha, c.lif_impl,
    )


@MODELS.register("mlp", MLPConfig, "MLP with ReLU (default 784-800-800-10)", returns=FeedforwardNet)
def mlp(c: MLPConfig) -> nn.Module:
    return FeedforwardNet(_mlp_blocks(c), c.in_shape)


@MODELS.register("convnet", ConvNetConfig, "convnet with ReLU: [conv3-BN-ReLU-pool2] x 2, FC 256, readout", returns=FeedforwardNet)
def convnet(c: ConvNetConfig) -> nn.Module:
    return FeedforwardNet(_convnet_blocks(c), c.in_shape)


@MODELS.register("spiking_mlp", SpikingMLPConfig, "MLP of LIF/IF neurons (direct input encoding)", returns=SpikingFeedforwardNet)
def spiking_mlp(c: SpikingMLPConfig) -> nn.Module:
    return _spiking(_mlp_blocks(c), c)


@MODELS.register("spiking_convnet", SpikingConvNetConfig, "convnet of LIF/IF neurons: [conv3-BN-LIF-pool2] x 2, FC 256-LIF, readout", returns=SpikingFeedforwardNet)
def spiking_convnet(c: SpikingConvNetConfig) -> nn.Module:
    return _spiking(_convnet_blocks(c), c)


@dataclass
class PCCNNConfig:
    in_shape: Tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10


class BlockSequence(nn.Sequential):
    """An ``nn.Sequential`` whose children are the declared blocks, with an input-shape check."""


    def __init__(self, blocks: Sequence[nn.Module], in_shape: Tuple[int, ...]):
        super().__init__(*blocks)
        self.in_shape = tuple(in_shape)

    def blocks(self) -> List[nn.Module]:
        return list(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_shape, type(self).__name__)
        return super().forward(x)


@MODELS.register("pc_cnn", PCCNNConfig,
                 "Rosenbaum's 5-block MNIST CNN: conv3 10-ReLU-pool2 | conv3 5-ReLU | FC 50 | FC 30 | FC 10", returns=BlockSequence)
def pc_cnn(c: PCCNNConfig) -> nn.Module:
    ch, h, w = c.in_shape
    h1, w1 = conv_out(h, 3) // 2, conv_out(w, 3) // 2
    h2, w2 = conv_out(h1, 3), conv_out(w1, 3)
    blocks = [
        nn.Sequential(nn.Conv2d(ch, 10, 3), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(10, 5, 3), nn.ReLU(), nn.Flatten()),
        nn.Sequential(nn.Linear(5 * h2 * w2, 50), nn.ReLU()),
        nn.Sequential(nn.Linear(50, 30), nn.ReLU()),
        nn.Linear(30, c.num_classes),
    ]
    return BlockSequence(blocks, c.in_shape)
