"""LIF neurons with a synaptic response (TSSL-BP, Zhang & Li, NeurIPS 2020), as step functions
over explicit state.

Discrete time ``t = 0 .. T-1``:

    u[t]  = (1 - 1/tau_m) r[t-1] + I[t]         membrane (r[-1] = 0)
    s[t]  = H(u[t] - theta)                      spike, H(x) = 1 for x > 0 (strict, as the reference)
    r[t]  = u[t] (1 - s[t])                      reset to zero
    a[t]  = (1 - 1/tau_s) a[t-1] + s[t] / tau_s   postsynaptic potential (PSP), a[-1] = 0
    du[t] = u[t] - r[t-1]                        the membrane's jump at t (TSSL-BP's 1/du needs it)

so ``a = eps * s`` with the PSP kernel ``eps[k] = (1 - 1/tau_s)^k / tau_s``. Uses nothing else of
bioprop.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch

__all__ = [
    "Neuron",
    "TSSLState",
    "TSSLTrace",
    "lif_psp_step",
    "lif_psp_multistep",
    "psp_filter",
    "psp_kernel",
    "strict_heaviside",
]

SpikeFn = Callable[[torch.Tensor], torch.Tensor]
#: a neuron layer: input currents ``[T, B, ...]`` -> (PSPs, spikes), both ``[T, B, ...]``
Neuron = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def strict_heaviside(x: torch.Tensor) -> torch.Tensor:
    """H(x) = 1 for x > 0, else 0 (the reference fires when ``u > theta``, not at equality)."""
    return (x > 0).to(x.dtype)


class TSSLState(NamedTuple):
    """State carried between steps: membrane after reset ``r`` and PSP ``a``."""

    r: torch.Tensor
    a: torch.Tensor


class TSSLTrace(NamedTuple):
    """A simulated layer, all ``[T, ...]``: membrane before reset ``u``, its jump ``du``, spikes
    ``s`` and PSPs ``a``."""

    u: torch.Tensor
    du: torch.Tensor
    s: torch.Tensor
    a: torch.Tensor


def lif_psp_step(current: torch.Tensor, state: Optional[TSSLState], tau_m: float, tau_s: float,
                 threshold: float = 1.0, spike: SpikeFn = strict_heaviside
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, TSSLState]:
    """One step of the LIF neuron with synaptic response (equations in the module docstring).

    ``state`` is ``None`` at ``t = 0`` (zeros). Returns ``(s, u, du, new_state)`` with ``u`` the
    membrane before the reset and ``du = u - r_prev`` its jump.
    """
    if state is None:
        du = current
        u = current
        a_prev: Optional[torch.Tensor] = None
    else:
        du = current - state.r / tau_m
        u = state.r + du
        a_prev = state.a
    s = spike(u - threshold)
    r = u * (1 - s)
    a = s / tau_s if a_prev is None else (1 - 1 / tau_s) * a_prev + s / tau_s
    return s, u, du, TSSLState(r, a)


def lif_psp_multistep(current: torch.Tensor, tau_m: float, tau_s: float, threshold: float = 1.0,
                      spike: SpikeFn = strict_heaviside) -> TSSLTrace:
    """Run :func:`lif_psp_step` over ``current[T, ...]``; return the stacked :class:`TSSLTrace`.

    Iterates over ``current.unbind(0)`` (linear in ``T`` under autograd: indexing ``current[t]``
    would make each step's backward fill a zero tensor of all ``T`` steps)."""
    us, dus, ss, as_ = [], [], [], []
    state: Optional[TSSLState] = None
    for cur in current.unbind(0):
        s, u, du, state = lif_psp_step(cur, state, tau_m, tau_s, threshold, spike)
        us.append(u)
        dus.append(du)
        ss.append(s)
        as_.append(state.a)
    return TSSLTrace(torch.stack(us), torch.stack(dus), torch.stack(ss), torch.stack(as_))


def psp_kernel(steps: int, tau_s: float, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> torch.Tensor:
    """``eps[k] = (1 - 1/tau_s)^k / tau_s`` for ``k = 0 .. steps-1``: the PSP of one spike at k = 0."""
    k = torch.arange(steps, dtype=dtype, device=device)
    return (1 - 1 / tau_s) ** k / tau_s


def psp_filter(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """``a[t] = (1 - 1/tau_s) a[t-1] + x[t] / tau_s`` along the time axis 0 of ``x[T, ...]``,
    i.e. ``a[t] = sum_{k<=t} eps[t-k] x[k]`` (a lower-triangular Toeplitz product)."""
    T = x.shape[0]
    eps = psp_kernel(T, tau_s, x.dtype, x.device)
    lag = torch.arange(T, device=x.device)
    d = lag[:, None] - lag[None, :]
    kmat = torch.where(d >= 0, eps[d.clamp(min=0)], torch.zeros((), dtype=x.dtype, device=x.device))
    return (kmat @ x.reshape(T, -1)).reshape(x.shape)
