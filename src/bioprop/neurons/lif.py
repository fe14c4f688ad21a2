"""Leaky and non-leaky integrate-and-fire neurons as pure step functions over explicit state.

Discrete-time dynamics (the convention of IDE, Xiao et al. 2021, and of SpikingJelly):

    v[t]  = leak * r[t-1] + I[t]              (charge; leak = 1 gives IF)
    s[t]  = H(v[t] - theta)                   (fire)
    r[t]  = v[t] - theta s[t]                 (reset by subtraction), or
    r[t]  = v[t] (1 - s[t])                   (reset to zero)

so the leak acts on the membrane *after* the reset, as IDE's LIF requires:
u[t+1] = leak (u[t] - theta s[t]) + I[t+1]. The state carried between steps is the membrane
after reset ``r``; a step returns the spikes and the new state. Nothing is stored in modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Optional, Tuple

import torch

from .surrogate import heaviside

__all__ = [
    "NeuronParams",
    "lif_step",
    "if_step",
    "lif_multistep",
    "RateState",
    "rate_init",
    "rate_update",
    "rate_value",
    "RatePopulation",
    "FusedRatePopulation",
]

SpikeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NeuronParams:
    """Parameters of an (L)IF neuron. ``leak = 1`` is the non-leaky IF neuron.

    ``detach_reset`` stops the gradient through the reset term (a common BPTT option).
    """

    threshold: float = 1.0
    leak: float = 1.0
    reset: Literal["subtract", "zero"] = "subtract"
    detach_reset: bool = False

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0 < self.leak <= 1:
            raise ValueError(f"leak must be in (0, 1], got {self.leak}")
        if self.reset not in ("subtract", "zero"):
            raise ValueError(f"reset must be 'subtract' or 'zero', got {self.reset!r}")


def lif_step(
    current: torch.Tensor,
    state: Optional[torch.Tensor],
    params: NeuronParams,
    spike: SpikeFn = heaviside,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LIF step: ``v = leak * state + current``, ``s = spike(v - theta)``, reset.

    ``state`` is the membrane after the previous reset (``None`` means zeros). Returns
    ``(s, new_state)``.
    """
    v = current if state is None else params.leak * state + current
    s = spike(v - params.threshold)
    sr = s.detach() if params.detach_reset else s
    if params.reset == "subtract":
        r = v - params.threshold * sr
    else:
        r = v * (1 - sr)
    return s, r


def if_step(
    current: torch.Tensor,
    state: Optional[torch.Tensor],
    threshold: float = 1.0,
    spike: SpikeFn = heaviside,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One non-leaky IF step with reset by subtraction (``lif_step`` with ``leak = 1``)."""
    return lif_step(current, state, NeuronParams(threshold=threshold, leak=1.0), spike)


def lif_multistep(
    currents: torch.Tensor,
    params: NeuronParams,
    spike: SpikeFn = heaviside,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run :func:`lif_step` over a time-first input ``currents[T, B, ...]``.

    Returns ``(spikes[T, B, ...], final_state)``. This is the plain reference loop.
    """
    out = []
    for t in range(currents.shape[0]):
        s, state = lif_step(currents[t], state, params, spike)
        out.append(s)
    assert state is not None
    return torch.stack(out), state


class RateState(NamedTuple):
    """Leak-weighted spike accumulator: ``total = sum_t leak^(T-t) s[t]``, ``norm = sum_{k<T} leak^k``."""

    total: torch.Tensor
    norm: float


def rate_init(like: torch.Tensor) -> RateState:
    return RateState(torch.zeros_like(like), 0.0)


def rate_update(acc: RateState, s: torch.Tensor, leak: float = 1.0) -> RateState:
    """Add one time step: ``total <- leak * total + s``, ``norm <- leak * norm + 1``.

    With ``leak = 1`` this is the plain spike count (IF average rate after division); with
    ``leak < 1`` it is IDE's weighted LIF rate ``a = sum_t leak^(T-t) s[t] / sum_{k<T} leak^k``.
    """
    return RateState(leak * acc.total + s, leak * acc.norm + 1.0)


def rate_value(acc: RateState) -> torch.Tensor:
    """The (weighted) average firing rate in [0, 1]."""
    if acc.norm == 0:
        raise ValueError("no time step accumulated")
    return acc.total / acc.norm


class RatePopulation:
    """A population simulated step by step, keeping what rate-based training needs: the membrane,
    the (leak-weighted) rate accumulator and the spike count per neuron summed over the batch.

    The plain reference: :func:`lif_step` and :func:`rate_update` out of place (differentiable
    with a surrogate ``spike``), the batch sum of the spikes taken at every step.
    """

    def __init__(self, params: NeuronParams, spike: SpikeFn = heaviside):
        self.params = params
        self.spike = spike
        self.v: Optional[torch.Tensor] = None
        self.acc: Optional[RateState] = None
        self.smap: Optional[torch.Tensor] = None
        self.s: Optional[torch.Tensor] = None

    def step(self, current: torch.Tensor) -> torch.Tensor:
        s, self.v = lif_step(current, self.v, self.params, self.spike)
        self.acc = rate_update(self.acc if self.acc is not None else rate_init(s), s, self.params.leak)
        counts = s.detach().sum(0)
        self.smap = counts if self.smap is None else self.smap + counts
        self.s = s
        return s

    def rate(self) -> torch.Tensor:
        """The (weighted) average firing rate ``[B, ...]``."""
        assert self.acc is not None, "no time step simulated"
        return rate_value(self.acc)

    def spike_map(self) -> torch.Tensor:
        """Spikes per neuron over all steps, summed over the batch (``[...]``)."""
        assert self.smap is not None, "no time step simulated"
        return self.smap


class FusedRatePopulation(RatePopulation):
    """The same dynamics with the state updated in place (no autograd; the fast path).

    Per step: ``v <- leak v + I`` (two in-place ops, or one for IF), ``s = [v >= theta]``, reset
    in place, ``total <- leak total + s`` and a per-sample spike count ``+= s``, summed over the
    batch once at the end: about half the kernels of :class:`RatePopulation` and no allocation
    but the spikes. Every operation rounds as the reference's does (``H(v - theta) = [v >= theta]``
    in IEEE arithmetic; ``theta s`` is exact), so spikes and rates are bitwise equal to it.
    ``spike_dtype``: the dtype of the returned spikes (e.g. bf16 for low-precision synapses;
    0 and 1 are exact in any format); the state stays in the current's dtype (at least fp32).
    """

    def __init__(self, params: NeuronParams, spike_dtype: Optional[torch.dtype] = None):
        super().__init__(params, heaviside)
        self.spike_dtype = spike_dtype
        self.total: Optional[torch.Tensor] = None
        self.norm = 0.0
        self.count: Optional[torch.Tensor] = None

    @torch.no_grad()
    def step(self, current: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.v is None:
            self.v = current.to(torch.promote_types(current.dtype, torch.float32), copy=True)
        else:
            if p.leak != 1.0:
                self.v.mul_(p.leak)
            self.v.add_(current)
        v = self.v
        s = v.ge(p.threshold).to(self.spike_dtype or v.dtype)
        if p.reset == "subtract":
            v.sub_(s, alpha=p.threshold)
        else:
            v.mul_(1 - s)
        if self.total is None:
            self.total = s.to(v.dtype, copy=True)
            self.count = s.to(v.dtype, copy=True)
        else:
            if p.leak != 1.0:
                self.total.mul_(p.leak)
            self.total.add_(s)
            self.count.add_(s)
        self.norm = p.leak * self.norm + 1.0
        self.s = s
        return s

    def rate(self) -> torch.Tensor:
        assert self.total is not None, "no time step simulated"
        return self.total / self.norm

    def spike_map(self) -> torch.Tensor:
        assert self.count is not None, "no time step simulated"
        return self.count.sum(0)
