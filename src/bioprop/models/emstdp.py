"""The networks EMSTDP trains (Shrestha et al., ICONS 2019; on Loihi, DAC 2021): fully connected
layers of non-leaky IF neurons with reset to zero, fed by a Bernoulli rate code of the input,
optionally behind a frozen convolutional feature extractor (the Loihi setup).

``emstdp_mlp`` declares :class:`bioprop.models.protocols.LayeredIFModel`: its dense weight layers
in order (``nn.Linear`` without bias, weight ``[out, in]``), one firing threshold per layer, the
number of time steps and the input code. Its forward pass (``model(x)``) is the reference's
``Test``: the forward network alone for ``time_steps`` steps, returning the output spike counts
(the logits used for evaluation; argmax = the most active output neuron).

Default thresholds follow the reference code's formula (``EMSTDP_algo.Init_Threshold``, ``init=0``)
from the ratios ``threshold_ratios = (hidden, output)``: layer 1 ``n_0 sqrt(3/n_0)/2 * r_h/(H+1)``,
hidden layer ``i+1`` ``n_i sqrt(3/n_i)/2 * r_h/(H-i)``, output ``n_H sqrt(3/n_H)/2 * r_o`` with
``H`` hidden layers; for 784-100-10 and ``(0.5, 0.1)``: 6.06 and 0.866. Weights are drawn as in the
reference (``init=0``): ``N(0, 3/fan_in)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Sequence, Tuple

import torch
from torch import nn

from ..neurons.emstdp import bernoulli_code, if_zero_step
from .base import MODELS, check_input, conv_out

__all__ = ["EMSTDPNet", "EMSTDPConfig", "reference_thresholds"]


def reference_thresholds(sizes: Sequence[int], hidden_ratio: float = 0.5, output_ratio: float = 0.1) -> List[float]:
    """The reference's forward thresholds for layer sizes ``[n_0, n_1, ..., n_L]`` (one per weight
    layer; ``EMSTDP_algo.Init_Threshold`` with ``init = 0``)."""
    h = list(sizes[1:-1])
    n0 = sizes[0]
    if not h:
        raise ValueError(f"emstdp_mlp needs at least one hidden layer, got sizes {list(sizes)}")
    H = len(h)
    thr = [n0 * math.sqrt(3.0 / n0) / 2.0 * hidden_ratio / float(H + 1)]
    for i in range(H - 1):
        thr.append(h[i] * (math.sqrt(3.0 / h[i]) / 2.0) * hidden_ratio / (H - i))
    thr.append(h[-1] * (math.sqrt(3.0 / h[-1]) / 2.0) * output_ratio)
    return thr


@dataclass
class EMSTDPConfig:
    """``hidden``: hidden widths; ``thresholds``: one per weight layer (``None``: the reference's
    formula with ``threshold_ratios``); ``time_steps``: steps per sample (the reference's ``T``);
    ``coding``: ``shared`` (one random number per step for all pixels and samples, the
    reference) or ``independent``; ``frontend``: ``none`` or ``conv`` (a frozen conv feature
    extractor, ``conv_channels`` 5x5 convs with ReLU and 2x2 max pooling, its weights loaded from
    ``frontend_weights`` (a state dict of ``model.frontend``) or left at their random init; the
    features are divided by their per-sample maximum to give intensities in [0, 1])."""

    in_shape: Tuple[int, ...] = (1, 28, 28)
    hidden: List[int] = field(default_factory=lambda: [100])
    num_classes: int = 10
    thresholds: Optional[List[float]] = None
    threshold_ratios: Tuple[float, float] = (0.5, 0.1)
    time_steps: int = 100
    coding: Literal["shared", "independent"] = "shared"
    frontend: Literal["none", "conv"] = "none"
    conv_channels: List[int] = field(default_factory=lambda: [16, 32])
    frontend_weights: Optional[str] = None


class EMSTDPNet(nn.Module):
    """Fully connected IF network (reset to zero) with a Bernoulli rate-coded input; see the
    module docstring. Declares :class:`~bioprop.models.protocols.LayeredIFModel`."""

    time_steps: int
    thresholds: List[float]

    def __init__(self, c: EMSTDPConfig):
        super().__init__()
        if c.time_steps < 2:
            raise ValueError(f"emstdp_mlp: time_steps must be >= 2, got {c.time_steps}")
        if not c.hidden or any(h < 1 for h in c.hidden):
            raise ValueError(f"emstdp_mlp: hidden must list at least one positive width, got {c.hidden}")
        self.in_shape = tuple(c.in_shape)
        self.time_steps = int(c.time_steps)
        self.coding = c.coding
        self.frontend: Optional[nn.Module] = None
        width = int(math.prod(self.in_shape))
        if c.frontend == "conv":
            if len(self.in_shape) != 3:
                raise ValueError(f"emstdp_mlp: frontend 'conv' needs in_shape (C, H, W), got {self.in_shape}")
            ch, hh, ww = self.in_shape
            layers: List[nn.Module] = []
            for out in c.conv_channels:
                layers += [nn.Conv2d(ch, out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
                ch, hh, ww = out, conv_out(hh, 2, 2), conv_out(ww, 2, 2)
            self.frontend = nn.Sequential(*layers)
            if c.frontend_weights:
                self.frontend.load_state_dict(torch.load(c.frontend_weights, map_location="cpu"))
            for p in self.frontend.parameters():
                p.requires_grad_(False)
            width = ch * hh * ww
        self.sizes = [width, *c.hidden, c.num_classes]
        self.thresholds: List[float] = (list(map(float, c.thresholds)) if c.thresholds is not None
                                        else reference_thresholds(self.sizes, *c.threshold_ratios))
        if len(self.thresholds) != len(self.sizes) - 1 or not all(t > 0 for t in self.thresholds):
            raise ValueError(f"emstdp_mlp: thresholds must be {len(self.sizes) - 1} positive numbers (one per weight "
                             f"layer of {self.sizes}), got {self.thresholds}")
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.normal_(0.0, math.sqrt(3.0 / lin.in_features))

    # -- LayeredIFModel -----------------------------------------------------------------------
    def weight_layers(self) -> List[nn.Module]:
        """The dense weight layers in order (input -> hidden ... -> output)."""
        return list(self.layers)

    def intensities(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` input intensities in [0, 1] (through the frozen front end, if any)."""
        check_input(x, self.in_shape, "emstdp_mlp")
        x = x.to(self.layers[0].weight.dtype)
        if not torch.isfinite(x).all():
            raise ValueError("emstdp_mlp: input has NaN/Inf values")
        if self.frontend is None:
            if x.min() < 0 or x.max() > 1:
                raise ValueError("emstdp_mlp: the rate code needs intensities in [0, 1] (set data.normalize: false); "
                                 f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
            return x.flatten(1)
        with torch.no_grad():
            f = self.frontend(x).flatten(1)
        return f / f.amax(dim=1, keepdim=True).clamp_min(1e-12)

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Input spike trains ``[T, B, N]`` (Bernoulli rate code of :meth:`intensities`)."""
        return bernoulli_code(self.intensities(x), self.time_steps, self.coding, generator)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def simulate(self, spikes: torch.Tensor) -> List[torch.Tensor]:
        """The forward network alone on input spikes ``[T, B, N]`` (the reference's ``Test``):
        per layer the spike trains ``[T, B, n_l]``. Step ``t = 1 .. T-1`` feeds each layer the
        previous step's spikes of the layer below (input ``t - 1``); step 0 is all zeros."""
        T, B = spikes.shape[:2]
        w = [lin.weight for lin in self.layers]
        v = [spikes.new_zeros(B, l.out_features) for l in self.layers]
        s = [spikes.new_zeros(B, l.out_features) for l in self.layers]
        rec = [[torch.zeros_like(si)] for si in s]
        for t in range(1, T):
            below = [spikes[t - 1]] + s[:-1]
            for l in range(len(w)):
                s[l], v[l] = if_zero_step(below[l] @ w[l].t(), v[l], self.thresholds[l])
                rec[l].append(s[l])
        return [torch.stack(r) for r in rec]

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Output spike counts ``[B, K]`` over ``time_steps`` steps (no learning): the logits."""
        return self.simulate(self.encode(x, generator))[-1].sum(0)


@MODELS.register("emstdp_mlp", EMSTDPConfig,
                 "IF network (reset to 0) with Bernoulli rate-coded input for EMSTDP (default 784-100-10; "
                 "option: frozen conv front end)", returns=EMSTDPNet)
def emstdp_mlp(c: EMSTDPConfig) -> nn.Module:
    return EMSTDPNet(c)
