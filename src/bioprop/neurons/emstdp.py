"""EMSTDP's neurons (Shrestha et al., ICONS 2019), functional over explicit state.

- :func:`if_zero_step`: the forward neuron, non-leaky integrate-and-fire with reset to zero,
  ``v <- v + I``, ``s = [v >= theta]``, ``v <- v (1 - s)``. (The same dynamics as
  :func:`bioprop.neurons.lif_step` with ``leak = 1``, ``reset = "zero"``; written out here so the
  comparison ``v >= theta`` is exactly the reference's.)
- :func:`ternary_step`: the error neuron, a signed accumulator that fires ``+1`` at
  ``a >= theta``, ``-1`` at ``a <= -theta`` and then resets to zero.
- :func:`output_error_current`: the output layer's error drive: the true class gains ``+1`` per
  step it stays silent, every other class ``-1`` per step it fires.
- :func:`bernoulli_code`: the rate code of the input, ``s[t] = [r_t < x]`` with one random number
  per time step shared by every pixel and sample (the reference) or one per pixel.

Uses nothing else of bioprop.
"""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import torch

__all__ = ["if_zero_step", "ternary_step", "output_error_current", "bernoulli_code"]


def if_zero_step(current: torch.Tensor, v: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """One IF step with reset to zero: ``v' = v + current``, ``s = [v' >= threshold]``,
    ``v'' = v' (1 - s)``. Returns ``(s, v'')`` (``s`` in ``v``'s dtype)."""
    v = v + current
    s = (v >= threshold).to(v.dtype)
    return s, v * (1 - s)


def ternary_step(current: torch.Tensor, acc: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """One ternary error-neuron step: ``a' = a + current``; ``e = [a' >= theta] - [a' <= -theta]``;
    the accumulator resets to zero where ``e != 0``. Returns ``(e, a'')``; ``threshold > 0``."""
    acc = acc + current
    pos = acc >= threshold
    neg = acc <= -threshold
    e = pos.to(acc.dtype) - neg.to(acc.dtype)
    return e, acc * (e == 0).to(acc.dtype)


def output_error_current(out_spikes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The output error neurons' drive for one step: ``target (1 - s) - (1 - target) s`` with
    ``target`` the one-hot label: ``+1`` for a silent true class, ``-1`` for a firing wrong one."""
    return target * (1 - out_spikes) - (1 - target) * out_spikes


def bernoulli_code(x: torch.Tensor, time_steps: int, coding: Literal["shared", "independent"] = "shared",
                   generator: Optional[torch.Generator] = None, random: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """Bernoulli rate code of intensities ``x[B, N]`` in [0, 1]: spikes ``[T, B, N]`` with
    ``s[t, b, i] = [r < x[b, i]]``. ``shared``: one ``r_t`` per step for all pixels and samples
    (the reference's ``np.random.random([T, 1, 1])``); ``independent``: one ``r`` per pixel.
    ``random`` supplies the numbers (``[T, 1, 1]`` or ``[T, B, N]``) instead of drawing them."""
    if random is None:
        shape = (time_steps, 1, 1) if coding == "shared" else (time_steps, *x.shape)
        random = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    return (random < x.unsqueeze(0)).to(x.dtype)
