"""Block models of the EKDAA paper (Zee, Ororbia, Mali & Nwogu, TMLR 2023): an MLP and the
release's CIFAR-10 CNN, with any elementwise activation (tanh, relu, signum, ...).

Both are :class:`~bioprop.models.feedforward.BlockSequence` s of ``Linear`` / ``Conv2d`` /
``MaxPool2d`` / ``Flatten`` and :class:`~bioprop.neurons.elementwise.Elementwise` stages, the
blocks the ``ekdaa`` rule walks (any other rule trains them too: ``bp``, ``fa``, ...). Weights are
Glorot-uniform (the release's init); no bias by default (the release's recipe).

- ``ekdaa_mlp``: ``Flatten -> [Linear -> phi] x len(hidden) -> Linear`` (logits).
- ``ekdaa_cnn``: ``features`` is a VGG-style list (an int = 3x3 conv, same padding, stride 1,
  then ``phi``; ``"P"`` = 2x2 max-pool, stride 2); then ``Flatten -> [Linear -> phi] x
  len(hidden) -> Linear``. The default is the release's ``eg_model.py``: convs 64-64-P-64-128-P-
  128-128-P, FC 128, FC 10, tanh.

``conv_activation`` sets the convolutions' ``phi`` apart from the dense layers' (``None``: the
same). ``conv_activation: identity`` gives the forward function of the release's code, whose
conv layers pass their pre-activation ``h`` on (``conv(h_prev)``, not ``conv(phi(h_prev))``): its
conv stack is linear between the max-pools (docs/methods/ekdaa.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from ..neurons.elementwise import ACTIVATIONS, Elementwise
from .base import MODELS, conv_out
from .feedforward import BlockSequence

__all__ = ["EKDAAMLPConfig", "EKDAACNNConfig", "ekdaa_mlp", "ekdaa_cnn", "glorot_uniform_"]


def glorot_uniform_(w: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Glorot (Xavier) uniform init in place: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), fans
    counting the receptive field of a convolution (Keras' and PyTorch's convention)."""
    rf = w[0][0].numel() if w.dim() > 2 else 1
    fan_out, fan_in = w.shape[0] * rf, w.shape[1] * rf
    a = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return w.copy_((torch.rand(w.shape, generator=generator, dtype=w.dtype, device=w.device) * 2 - 1) * a)


def _check_act(name: str, what: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"{what}: unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def _init(blocks: List[nn.Module]) -> None:
    for b in blocks:
        for m in b.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                glorot_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


@dataclass
class EKDAAMLPConfig:
    """``activation``: the hidden layers' ``phi`` (tanh, relu, signum, sigmoid, identity, hardtanh)."""

    in_shape: Tuple[int, ...] = (1, 28, 28)
    hidden: List[int] = field(default_factory=lambda: [512, 512])
    num_classes: int = 10
    activation: str = "tanh"
    bias: bool = False


@dataclass
class EKDAACNNConfig:
    """``features``: ints (3x3 conv channels) and ``"P"`` (2x2 max-pool); ``hidden``: dense widths
    after the flatten; ``activation`` / ``conv_activation``: ``phi`` of the dense / conv layers."""

    in_shape: Tuple[int, ...] = (3, 32, 32)
    features: List[Union[int, str]] = field(default_factory=lambda: [64, 64, "P", 64, 128, "P", 128, 128, "P"])
    hidden: List[int] = field(default_factory=lambda: [128])
    num_classes: int = 10
    kernel: int = 3
    activation: str = "tanh"
    conv_activation: Optional[str] = None
    bias: bool = False


@MODELS.register("ekdaa_mlp", EKDAAMLPConfig,
                 "EKDAA paper MLP: [Linear-phi] x hidden, readout; phi any elementwise (tanh, relu, signum); Glorot, no bias",
                 returns=BlockSequence)
def ekdaa_mlp(c: EKDAAMLPConfig) -> nn.Module:
    _check_act(c.activation, "ekdaa_mlp")
    width = 1
    for d in c.in_shape:
        width *= d
    blocks: List[nn.Module] = []
    for i, h in enumerate(c.hidden):
        layers: List[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width, h, bias=c.bias), Elementwise(c.activation)]
        blocks.append(nn.Sequential(*layers))
        width = h
    head: List[nn.Module] = [] if c.hidden else [nn.Flatten()]
    blocks.append(nn.Sequential(*head, nn.Linear(width, c.num_classes, bias=c.bias)))
    _init(blocks)
    return BlockSequence(blocks, c.in_shape)


@MODELS.register("ekdaa_cnn", EKDAACNNConfig,
                 "EKDAA release CIFAR-10 CNN: conv3 64-64-P-64-128-P-128-128-P, FC 128, FC 10, tanh, Glorot, no bias",
                 returns=BlockSequence)
def ekdaa_cnn(c: EKDAACNNConfig) -> nn.Module:
    _check_act(c.activation, "ekdaa_cnn")
    conv_act = c.activation if c.conv_activation is None else c.conv_activation
    _check_act(conv_act, "ekdaa_cnn conv_activation")
    if len(c.in_shape) != 3:
        raise ValueError(f"ekdaa_cnn needs in_shape (C, H, W), got {c.in_shape}")
    ch, h, w = c.in_shape
    blocks: List[nn.Module] = []
    pad = c.kernel // 2
    for f in c.features:
        if f == "P":
            if not blocks:
                raise ValueError("ekdaa_cnn: features must start with a convolution, not 'P'")
            blocks[-1].append(nn.MaxPool2d(2, 2))
            h, w = conv_out(h, 2, 2), conv_out(w, 2, 2)
        elif isinstance(f, int) and f > 0:
            blocks.append(nn.Sequential(nn.Conv2d(ch, f, c.kernel, padding=pad, bias=c.bias), Elementwise(conv_act)))
            h, w = conv_out(h, c.kernel, 1, pad), conv_out(w, c.kernel, 1, pad)
            ch = f
        else:
            raise ValueError(f"ekdaa_cnn: features entries are positive ints or 'P', got {f!r}")
    width = ch * h * w
    first: List[nn.Module] = [nn.Flatten()]
    for hid in c.hidden:
        blocks.append(nn.Sequential(*first, nn.Linear(width, hid, bias=c.bias), Elementwise(c.activation)))
        first, width = [], hid
    blocks.append(nn.Sequential(*first, nn.Linear(width, c.num_classes, bias=c.bias)))
    _init(blocks)
    return BlockSequence(blocks, c.in_shape)
