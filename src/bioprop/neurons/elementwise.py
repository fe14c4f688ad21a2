"""Elementwise (rate) activation functions as modules, including non-differentiable ones.

:class:`Elementwise` wraps any function applied element by element (``phi(h)`` at every entry,
no mixing): rules that only ever *evaluate* ``phi`` and never its derivative (EKDAA) can run on
it, whether ``phi`` is smooth (tanh), piecewise linear (relu) or a step (signum, whose derivative
is zero almost everywhere, so backprop cannot train through it). Rules recognise an elementwise
stage by this class or by one of the torch activation classes in :data:`TORCH_ELEMENTWISE`.

Uses nothing else of bioprop.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["Elementwise", "ACTIVATIONS", "activation", "TORCH_ELEMENTWISE", "is_elementwise"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: named activations: ``phi`` for each name a config may give
ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "signum": torch.sign,       # sign(h) in {-1, 0, 1}; derivative 0 almost everywhere
    "sigmoid": torch.sigmoid,
    "identity": _identity,
    "hardtanh": lambda x: x.clamp(-1.0, 1.0),
}


class Elementwise(nn.Module):
    """``phi`` applied element by element; ``name`` is a key of :data:`ACTIVATIONS` or, with
    ``fn``, any label of a user-supplied elementwise function."""

    def __init__(self, name: str = "tanh", fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        if fn is None:
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)} "
                                 "or pass fn= (any elementwise function)")
            fn = ACTIVATIONS[name]
        self.name = name
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def activation(name: str) -> Elementwise:
    """The :class:`Elementwise` module of a named activation."""
    return Elementwise(name)


#: torch activation modules that are elementwise (applied to a target as to an activity)
TORCH_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softsign,
                     nn.Hardtanh, nn.ReLU6, nn.Softplus, nn.Identity)


def is_elementwise(m: nn.Module) -> bool:
    """Whether ``m`` applies a function element by element (so it can be applied to targets)."""
    return isinstance(m, (Elementwise,) + TORCH_ELEMENTWISE)
