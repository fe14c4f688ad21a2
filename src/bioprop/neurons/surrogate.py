"""Spike functions: Heaviside forward, surrogate derivative backward.

A spike is ``s = H(v - theta)`` with ``H(x) = 1 if x >= 0 else 0``. Its derivative is zero almost
everywhere, so surrogate-gradient training replaces ``dH/dx`` in the backward pass by the
derivative of a smooth step ``sigma_alpha(x)`` (Neftci, Mostafa & Zenke 2019):

- ``atan``:          sigma(x) = 1/2 + arctan(pi/2 alpha x) / pi,
                     sigma'(x) = (alpha / 2) / (1 + (pi/2 alpha x)^2)       (SpikingJelly's ATan)
- ``fast_sigmoid``:  sigma(x) = 1/2 + alpha x / (2 (1 + alpha |x|)),
                     sigma'(x) = (alpha / 2) / (1 + alpha |x|)^2            (SuperSpike, Zenke & Ganguli 2018;
                     normalised so that it integrates to 1, like every surrogate here)
- ``sigmoid``:       sigma(x) = 1 / (1 + exp(-alpha x)), sigma'(x) = alpha sigma (1 - sigma)

Each surrogate is an ``autograd.Function``. :func:`relaxed` returns the smooth step itself
(forward *and* backward smooth): a network built with it is an ordinary differentiable function,
which is how the tests check our BPTT unrolling against finite differences.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch

__all__ = ["heaviside", "spike_fn", "relaxed", "SURROGATES", "surrogate_derivative", "surrogate_derivative_",
           "surrogate_of"]


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """H(x) = 1 for x >= 0, else 0, in the dtype of ``x``."""
    return (x >= 0).to(x.dtype)


def _atan(x: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    z = (math.pi / 2) * alpha * x
    return 0.5 + torch.atan(z) / math.pi, (alpha / 2) / (1 + z * z)


def _fast_sigmoid(x: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    d = 1 + alpha * x.abs()
    return 0.5 + alpha * x / (2 * d), (alpha / 2) / (d * d)


def _sigmoid(x: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(alpha * x)
    return s, alpha * s * (1 - s)


# name -> (smooth step and its derivative, default alpha)
SURROGATES: Dict[str, Tuple[Callable[[torch.Tensor, float], Tuple[torch.Tensor, torch.Tensor]], float]] = {
    "atan": (_atan, 2.0),
    "fast_sigmoid": (_fast_sigmoid, 10.0),
    "sigmoid": (_sigmoid, 4.0),
}


def surrogate_derivative(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """sigma_alpha'(x) of surrogate ``name``."""
    return SURROGATES[name][0](x, alpha)[1]


def surrogate_derivative_(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """sigma_alpha'(x) of surrogate ``name`` written over ``x`` in place (returns ``x``): the
    same function as :func:`surrogate_derivative` in fewer passes over memory (``atan``: two,
    ``1 + c^2 x x`` then ``(alpha/2) / .``), so equal to it up to float rounding."""
    if name == "atan":
        c = (math.pi / 2) * alpha
        one = torch.ones((), dtype=x.dtype, device=x.device)
        torch.addcmul(one, x, x, value=c * c, out=x)
        return torch.div(one * (alpha / 2), x, out=x)
    if name == "fast_sigmoid":
        x.abs_().mul_(alpha).add_(1)
        x.mul_(x)
        return x.reciprocal_().mul_(alpha / 2)
    if name == "sigmoid":
        x.mul_(alpha).sigmoid_()
        one_minus = torch.rsub(x, 1)
        return x.mul_(alpha).mul_(one_minus)
    raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")


def surrogate_of(spike: Callable[[torch.Tensor], torch.Tensor]):
    """``(name, alpha)`` of a spike function made by :func:`spike_fn`, ``("none", 0.0)`` for
    :func:`heaviside` (no gradient through the spike), ``None`` for any other callable (e.g. a
    :func:`relaxed` step): fused neuron kernels use it to know which derivative to apply."""
    if spike is heaviside:
        return ("none", 0.0)
    return getattr(spike, "surrogate", None)


def _make_function(name: str) -> type:
    fn = SURROGATES[name][0]

    class _Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
            ctx.save_for_backward(x)
            ctx.alpha = alpha
            return heaviside(x)

        @staticmethod
        def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
            (x,) = ctx.saved_tensors
            return grad * fn(x, ctx.alpha)[1], None

    _Spike.__name__ = _Spike.__qualname__ = f"{name.title().replace('_', '')}Spike"
    return _Spike


_FUNCTIONS = {name: _make_function(name) for name in SURROGATES}


def spike_fn(name: str = "atan", alpha: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Heaviside spike function with surrogate ``name`` in the backward pass.

    ``name`` is one of ``atan``, ``fast_sigmoid``, ``sigmoid``; ``alpha`` its sharpness (default:
    the surrogate's usual value).
    """
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
    a = SURROGATES[name][1] if alpha is None else float(alpha)
    f = _FUNCTIONS[name]

    def spike(x: torch.Tensor) -> torch.Tensor:
        return f.apply(x, a)

    spike.__name__ = f"spike_{name}"
    spike.surrogate = (name, a)  # type: ignore[attr-defined]  (read by surrogate_of)
    return spike


def relaxed(name: str = "atan", alpha: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The smooth step sigma_alpha of surrogate ``name``, differentiable in the ordinary sense.

    Its derivative is exactly the surrogate used by :func:`spike_fn` with the same arguments.
    """
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
    a = SURROGATES[name][1] if alpha is None else float(alpha)
    fn = SURROGATES[name][0]

    def smooth(x: torch.Tensor) -> torch.Tensor:
        return fn(x, a)[0]

    smooth.__name__ = f"relaxed_{name}"
    return smooth
