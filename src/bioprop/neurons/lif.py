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

from .surrogate import heaviside, surrogate_derivative_, surrogate_of

__all__ = [
    "NeuronParams",
    "lif_step",
    "if_step",
    "lif_multistep",
    "lif_multistep_fused",
    "LIF_IMPLS",
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

    Returns ``(spikes[T, B, ...], final_state)``. This is the plain reference loop, differentiated
    by autograd step by step. It iterates over ``currents.unbind(0)``: indexing ``currents[t]``
    instead would make every step's backward fill a zero tensor the size of all ``T`` steps
    (``O(T^2)`` memory traffic); ``unbind``'s backward stacks the ``T`` step gradients once.
    """
    out = []
    for current in currents.unbind(0):
        s, state = lif_step(current, state, params, spike)
        out.append(s)
    assert state is not None
    return torch.stack(out), state


#: implementations of a multistep LIF layer: ``reference`` (:func:`lif_multistep`), ``fused``
#: (:func:`lif_multistep_fused`), ``compiled`` (the fused one with ``torch.compile``d steps)
LIF_IMPLS = ("fused", "reference", "compiled")


def _forward_step(r: Optional[torch.Tensor], current: torch.Tensor, v_out: torch.Tensor, s_out: torch.Tensor,
                  leak: float, threshold: float, subtract: bool) -> torch.Tensor:
    """One LIF step without autograd, writing the membrane ``v`` and the spikes into ``v_out`` and
    ``s_out``; returns the state after reset. Rounds as :func:`lif_step`: ``leak * r + I`` (two
    roundings), ``H(v - theta) = [v >= theta]`` (exact), ``v - theta s`` (``theta s`` exact)."""
    if r is None:
        v_out.copy_(current)
    else:
        torch.mul(r, leak, out=v_out)
        v_out.add_(current)
    torch.ge(v_out, threshold, out=s_out)
    if subtract:
        return torch.sub(v_out, s_out, alpha=threshold)
    return v_out * torch.rsub(s_out, 1)


def _backward_step(v: torch.Tensor, g_s: torch.Tensor, g_r: Optional[torch.Tensor], leak: float, threshold: float,
                   subtract: bool, detach_reset: bool, surrogate: str, alpha: float) -> torch.Tensor:
    """Reverse of one step, overwriting the step's saved membrane ``v`` with ``dL/dv`` (the
    gradient of the step's input current). ``g_s``: gradient of the step's spikes from outside;
    ``g_r``: gradient of the state after reset (``None``: zero). Returns the gradient of the
    previous state, ``leak * dL/dv``::

        dL/ds = g_s + dr/ds g_r            (dr/ds = -theta, or -v for reset to zero; 0 if detached)
        dL/dv = sigma'(v - theta) dL/ds + dr/dv g_r   (dr/dv = 1, or 1 - s)
    """
    direct: Optional[torch.Tensor] = None
    if g_r is None or detach_reset:
        g_tot = g_s
    elif subtract:
        g_tot = torch.sub(g_s, g_r, alpha=threshold)
    else:
        g_tot = torch.addcmul(g_s, v, g_r, value=-1.0)
    if g_r is not None:
        direct = g_r if subtract else g_r * v.lt(threshold)  # v < theta: 1 - s
    if surrogate == "none":
        v.zero_()
    else:
        surrogate_derivative_(surrogate, v.sub_(threshold), alpha)
    v.mul_(g_tot)
    if direct is not None:
        v.add_(direct)
    return v * leak


_COMPILED: dict = {}


def _compiled_steps():
    """``torch.compile``d forward and backward steps (one generated kernel each), built once."""
    if not _COMPILED:
        from .surrogate import surrogate_derivative

        def fwd(r, current, leak: float, threshold: float, subtract: bool):
            v = current if r is None else leak * r + current
            s = (v >= threshold).to(v.dtype)
            r_new = v - threshold * s if subtract else v * (1 - s)
            return v, s, r_new

        def bwd(v, g_s, g_r, leak: float, threshold: float, subtract: bool, detach_reset: bool, surrogate: str,
                alpha: float):
            sg = torch.zeros_like(v) if surrogate == "none" else surrogate_derivative(surrogate, v - threshold, alpha)
            if g_r is None:
                g_v = sg * g_s
            else:
                if detach_reset:
                    g_tot = g_s
                elif subtract:
                    g_tot = g_s - threshold * g_r
                else:
                    g_tot = g_s - v * g_r
                g_v = sg * g_tot + (g_r if subtract else g_r * (v < threshold).to(v.dtype))
            return g_v, g_v * leak

        _COMPILED["fwd"] = torch.compile(fwd, dynamic=False)
        _COMPILED["bwd"] = torch.compile(bwd, dynamic=False)
    return _COMPILED["fwd"], _COMPILED["bwd"]


class _LIFMultistep(torch.autograd.Function):
    """``(currents[T, ...], state0) -> (spikes[T, ...], final state)`` of :func:`lif_multistep`,
    with a hand-written backward that runs the steps in reverse. The forward keeps only the
    membranes ``v[T, ...]`` (the spikes are ``[v >= theta]``, the reset needs nothing else); the
    backward overwrites them step by step with the gradient of the input currents and returns that
    buffer, so a layer holds one ``[T, ...]`` tensor from forward to backward and allocates no other.
    (A second backward through the same graph, ``retain_graph=True``, is therefore refused by
    autograd's in-place check.)"""

    @staticmethod
    def forward(ctx, currents, state, threshold, leak, subtract, detach_reset, surrogate, alpha, compiled):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        v_all = torch.empty(currents.shape, dtype=currents.dtype, device=currents.device)
        spikes = torch.empty_like(v_all)
        r = state
        if compiled:
            fwd = _compiled_steps()[0]
            for t, current in enumerate(currents.unbind(0)):
                v, s, r = fwd(r, current, leak, threshold, subtract)
                v_all[t].copy_(v)
                spikes[t].copy_(s)
        else:
            for t, current in enumerate(currents.unbind(0)):
                r = _forward_step(r, current, v_all[t], spikes[t], leak, threshold, subtract)
        ctx.save_for_backward(v_all)
        ctx.consts = (threshold, leak, subtract, detach_reset, surrogate, alpha, compiled, state is not None)
        return spikes, r

    @staticmethod
    def backward(ctx, g_spikes, g_state):  # type: ignore[override]
        (v_all,) = ctx.saved_tensors
        threshold, leak, subtract, detach_reset, surrogate, alpha, compiled, has_state = ctx.consts
        if g_spikes is None:  # only the final state is used downstream
            g_spikes = torch.zeros_like(v_all)
        g_r = g_state
        if compiled:
            bwd = _compiled_steps()[1]
            for t in range(v_all.shape[0] - 1, -1, -1):
                g_v, g_r = bwd(v_all[t], g_spikes[t], g_r, leak, threshold, subtract, detach_reset, surrogate, alpha)
                v_all[t].copy_(g_v)
        else:
            for t in range(v_all.shape[0] - 1, -1, -1):
                g_r = _backward_step(v_all[t], g_spikes[t], g_r, leak, threshold, subtract, detach_reset, surrogate,
                                     alpha)
        return v_all, (g_r if has_state else None), None, None, None, None, None, None, None


def lif_multistep_fused(
    currents: torch.Tensor,
    params: NeuronParams,
    spike: SpikeFn = heaviside,
    state: Optional[torch.Tensor] = None,
    compiled: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`lif_multistep` as one autograd node (the fast path; same values, gradients equal to
    float rounding, tested).

    Forward: 4 kernels per step (charge, fire, reset) writing into preallocated ``[T, ...]``
    buffers, bitwise equal to the reference's spikes and state. Backward: a reverse loop of about
    7 elementwise kernels per step (the surrogate derivative included), no autograd bookkeeping.
    Memory: only the membranes ``v[T, ...]`` are kept for the backward, which overwrites them with
    the returned gradient (no other ``[T, ...]`` buffer). ``compiled=True`` runs each step through
    ``torch.compile`` (one generated kernel per step forward and backward; the first call compiles).

    ``spike`` must be a :func:`~bioprop.neurons.spike_fn` surrogate or :func:`heaviside`; any
    other callable (e.g. a :func:`~bioprop.neurons.relaxed` smooth step) falls back to the
    reference :func:`lif_multistep`.
    """
    sur = surrogate_of(spike)
    if sur is None:
        return lif_multistep(currents, params, spike, state)
    if currents.dim() < 1 or currents.shape[0] < 1:
        raise ValueError(f"lif_multistep_fused: currents must be [T, ...] with T >= 1, got shape {tuple(currents.shape)}")
    if state is not None and state.shape != currents.shape[1:]:
        raise ValueError(f"lif_multistep_fused: state has shape {tuple(state.shape)}, expected "
                         f"{tuple(currents.shape[1:])} (one step of the currents)")
    return _LIFMultistep.apply(currents, state, float(params.threshold), float(params.leak),
                               params.reset == "subtract", bool(params.detach_reset), sur[0], float(sur[1]),
                               bool(compiled))


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
