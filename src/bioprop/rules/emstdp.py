r"""EMSTDP: error-modulated STDP (Shrestha, Fang, Wu, Qiu, ICONS 2019; on Loihi, DAC 2021).

A fully connected IF network (reset to zero, :class:`~bioprop.models.protocols.LayeredIFModel`)
is simulated for ``T`` steps on a Bernoulli rate-coded input. Step ``t = 1 .. T-1`` feeds each
layer the previous step's spikes of the layer below:
``v_l <- v_l + W_l s_{l-1}[t-1]``, ``s_l[t] = [v_l >= theta_l]``, reset to 0.

**Phase 1** (``t < P``, ``P = phase1``): the forward network alone.
**Phase 2** (``t >= P``): the error network is on.

- Output error neurons (one per class): ``d_k <- d_k + y_k (1 - s_k[t-1]) - (1 - y_k) s_k[t-1]``;
  a ternary error spike ``e_k[t] = [d_k >= eps] - [d_k <= -eps]`` fires and resets ``d_k`` to 0.
- Hidden error neurons of layer ``l``: ``a_l <- a_l + B_{l+1} e_{src}[t-1]``, ternary spikes at
  ``+-theta^e_l`` with reset to 0, where ``B_{l+1} = W_{l+1}^T`` and ``src = l+1``
  (``symmetric``), a fixed random matrix and ``src = l+1`` (``fa``), or a fixed random matrix
  and ``src`` = the output (``dfa``).
- Gate (default on for symmetric / fa, off for dfa, as the reference): a hidden error spike
  passes only where its forward neuron spiked in steps ``1 .. P-2`` (the reference's
  ``sum(spikes[0:twin]) > 0``, ``twin = P - 1``).
- Error injection: after the spike decision of step ``t``, ``v_l <- v_l + scale theta_l e_l[t-1]``
  in every layer (output included).

**Update** (once per batch, at the end): with counting window ``w`` (default ``P - 1``, the
reference's ``twin``), ``n^{(2)}`` the spike counts of the last ``w`` steps and ``n^{(1)}`` those
of the ``w`` steps before them,

.. math:: g_{l,ji} = \frac{1}{B w}\sum_b n^{(1)}_{l-1,bi}\,\big(n^{(2)}_{l,bj} - n^{(1)}_{l,bj}\big),
   \qquad W_l.\mathrm{grad} = -g_l

(the reference adds ``+ lr g``: ``.grad = -g`` makes any optimizer descend the same way). The
reference's step is RMSprop-like, ``m <- 0.9 m + 0.1 g^2`` (``m`` starts at **1**),
``W <- W + lr g / sqrt(m + 1e-8)``: :class:`EMSTDPRMSprop` is that optimizer exactly.
``torch.optim.RMSprop(alpha=0.9)`` differs in two ways: its ``m`` starts at 0 (its first step is
``~3.2 lr sign(g)``) and its ``eps`` is added outside the square root. The reference's weight
clip to ``[-1, 1]`` is :meth:`EMSTDP.after_step` (``clip``; ``None`` turns it off).

Defaults reproduce the reference's settings (``T = 100``, ``P = 50``, ``w = 49``, ``eps = 3``,
error thresholds from its ``Init_Threshold`` formula, 0.2165 for 784-100-10 symmetric).
Differences from the reference code (``zmeidd/EMSTDP``, ``EMSTDP_algo.py``): we update once per
batch at the end of the window; the reference updates at every step ``t > 2 twin``, which is once
when ``T = 2 twin + 2`` (its setting). Its options ``dropr`` (dropout of hidden neurons), ``evt``
(binary presynaptic events), ``bias``, ``rel != 0`` and ``delt != 5`` (other error generators)
are not offered; its defaults (0, 0, 0, 0, 5) are what we implement.

Diagnostics (``StepOutput.stats``): ``emstdp/spikes_p1/<l>`` and ``emstdp/spikes_p2/<l>`` (spikes
per sample of layer ``l`` in the two counting windows; ``l = 0`` is the input),
``emstdp/err_rate/<l>`` (error spikes per neuron per phase-2 step), and every ``compare_every``
steps ``emstdp/angle/<l>``: the angle (degrees) between ``W_l.grad`` and BP's gradient on the
rate network with the same weights, ``a_l = clip(W_l a_{l-1} / theta_l, 0, 1)``, ``a_0`` the input
rates, loss ``1/2 ||a_L - onehot(y)||^2`` (computed with ``torch.autograd.grad``: no side effect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import angle_degrees_tensor
from ..models.protocols import LayeredIFModel, require
from ..neurons.emstdp import if_zero_step, output_error_current, ternary_step
from .base import RULES, LossFn, Rule, StepOutput

__all__ = ["EMSTDP", "EMSTDPRuleConfig", "EMSTDPRMSprop", "EMSTDPResult", "emstdp_run",
           "reference_error_thresholds"]

Feedback = Literal["symmetric", "fa", "dfa"]


def reference_error_thresholds(sizes: Sequence[int], feedback: str = "symmetric", ratio: float = 0.5) -> List[float]:
    """The reference's error-neuron thresholds of the hidden layers for layer sizes
    ``[n_0, ..., n_L]`` (``EMSTDP_algo.Init_Threshold``, ``init = 0``, ``norm = 0``)."""
    h, out = list(sizes[1:-1]), sizes[-1]
    thr = []
    for i in range(len(h)):
        if i == len(h) - 1:
            n = h[-1] if feedback == "symmetric" else out
            thr.append(out * (math.sqrt(3.0 / n) / 2.0) * ratio / (i + 2))
        elif feedback == "dfa":
            thr.append(out * (math.sqrt(3.0 / out) / 2.0) * ratio / (i + 2))
        else:
            n = h[i] if feedback == "symmetric" else h[i + 1]
            thr.append(h[i + 1] * (math.sqrt(3.0 / n) / 2.0) * ratio / (i + 2))
    return thr


@dataclass
class EMSTDPRuleConfig:
    """``feedback``: ``symmetric`` (``W^T``), ``fa`` (fixed random, layer by layer) or ``dfa``
    (fixed random, straight from the output). ``phase1``: the step at which the error network
    switches on (``None``: ``T // 2``); ``window``: length of the two counting windows (``None``:
    ``phase1 - 1``). ``epsilon``: the output error neurons' threshold; ``error_thresholds``: one
    per hidden layer (``None``: the reference's formula with ``error_ratio``). ``gate``: the
    phase-1 spike gate (``None``: on unless ``dfa``). ``scale``: error injection, in units of the
    layer's threshold. ``clip``: ``after_step`` clamps weights to ``[-clip, clip]`` (``None``:
    off). ``compare_every``: the BP-angle diagnostic every N steps (0: never)."""

    feedback: Feedback = "symmetric"
    phase1: Optional[int] = None
    window: Optional[int] = None
    epsilon: float = 3.0
    error_thresholds: Optional[List[float]] = None
    error_ratio: float = 0.5
    gate: Optional[bool] = None
    scale: float = 1.0
    clip: Optional[float] = 1.0
    compare_every: int = 10


@dataclass
class EMSTDPResult:
    """One simulated batch: per weight layer the forward spikes ``[T, B, n_l]`` (``spikes[0]`` is
    the input), the error spikes ``[T, B, n_l]`` (``errors[l]`` for weight layer ``l``'s output
    neurons), and the updates ``g_l`` (``[out, in]``, the reference's sign: ``W += lr g``)."""

    spikes: List[torch.Tensor]
    errors: List[torch.Tensor]
    updates: List[torch.Tensor]
    window: int
    phase1: int


def emstdp_run(in_spikes: torch.Tensor, weights: Sequence[torch.Tensor], thresholds: Sequence[float],
               target: torch.Tensor, feedback: str, feedback_weights: Sequence[Optional[torch.Tensor]],
               error_thresholds: Sequence[float], epsilon: float, phase1: int, window: int,
               gate: bool, scale: float = 1.0) -> EMSTDPResult:
    """Both phases of EMSTDP on input spikes ``[T, B, n_0]`` with one-hot ``target [B, K]``
    (see the module docstring). ``weights[l]`` is ``[n_{l+1}, n_l]``; ``feedback_weights[l]`` (for
    hidden layer ``l``, ``fa``/``dfa``) is ``[n_src, n_{l+1}]``. Vectorised over the batch."""
    T, B = in_spikes.shape[:2]
    L = len(weights)
    z = lambda n: in_spikes.new_zeros(B, n)  # noqa: E731
    sizes = [w.shape[0] for w in weights]
    v = [z(n) for n in sizes]
    s = [z(n) for n in sizes]
    acc = [z(n) for n in sizes]
    e = [z(n) for n in sizes]
    S: List[List[torch.Tensor]] = [[z(n)] for n in sizes]
    E: List[List[torch.Tensor]] = [[z(n)] for n in sizes]
    gates: Optional[List[torch.Tensor]] = None
    for t in range(1, T):
        below = [in_spikes[t - 1]] + s[:-1]
        old_s = s
        s = [None] * L  # type: ignore[list-item]
        for l in range(L):
            s[l], v[l] = if_zero_step(below[l] @ weights[l].t(), v[l], thresholds[l])
        if t >= phase1:
            if gate and gates is None:
                gates = [(torch.stack(S[l][1:phase1 - 1]).sum(0) > 0).to(v[l].dtype) if phase1 > 2 else z(sizes[l])
                         for l in range(L - 1)]
            new_e: List[torch.Tensor] = [None] * L  # type: ignore[list-item]
            new_e[L - 1], acc[L - 1] = ternary_step(output_error_current(old_s[L - 1], target), acc[L - 1], epsilon)
            for l in range(L - 2, -1, -1):
                if feedback == "symmetric":
                    drive = e[l + 1] @ weights[l + 1]
                elif feedback == "fa":
                    drive = e[l + 1] @ feedback_weights[l]  # type: ignore[operator]
                else:
                    drive = e[L - 1] @ feedback_weights[l]  # type: ignore[operator]
                new_e[l], acc[l] = ternary_step(drive, acc[l], error_thresholds[l])
                if gates is not None:
                    new_e[l] = new_e[l] * gates[l]
            for l in range(L):
                v[l] = v[l] + (scale * thresholds[l]) * e[l]
            e = new_e
        for l in range(L):
            S[l].append(s[l])
            E[l].append(e[l])
    spikes = [in_spikes] + [torch.stack(x) for x in S]
    errors = [torch.stack(x) for x in E]
    w = window
    updates = []
    for l in range(L):
        pre1 = spikes[l][T - 2 * w:T - w].sum(0)
        post1 = spikes[l + 1][T - 2 * w:T - w].sum(0)
        post2 = spikes[l + 1][T - w:T].sum(0)
        updates.append((post2 - post1).t() @ pre1 / float(B * w))
    return EMSTDPResult(spikes, errors, updates, w, phase1)


class EMSTDPRMSprop(torch.optim.Optimizer):
    """The reference's RMSprop-like step, exactly: ``m <- alpha m + (1 - alpha) grad^2`` with
    ``m`` starting at ``init`` (1 in the reference), ``p <- p - lr grad / sqrt(m + eps)``
    (``eps`` inside the square root). With EMSTDP's ``grad = -g`` this is the reference's
    ``W += lr g / sqrt(m + 1e-8)``."""

    def __init__(self, params, lr: float = 1e-4, alpha: float = 0.9, eps: float = 1e-8, init: float = 1.0):
        if not lr >= 0 or not 0 <= alpha < 1 or not eps >= 0:
            raise ValueError(f"EMSTDPRMSprop: need lr >= 0, 0 <= alpha < 1, eps >= 0; got {lr}, {alpha}, {eps}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, init=init))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.full_like(p, group["init"])
                m = st["m"]
                m.mul_(group["alpha"]).addcmul_(p.grad, p.grad, value=1 - group["alpha"])
                p.addcdiv_(p.grad, (m + group["eps"]).sqrt(), value=-group["lr"])
        return loss


class EMSTDP(Rule):
    """EMSTDP (see the module docstring): two spiking phases, ternary error spikes, and the
    local update ``pre(phase 1) x (post(phase 2) - post(phase 1))`` written into ``.grad``."""

    name = "emstdp"
    protocol = LayeredIFModel

    def __init__(self, config: EMSTDPRuleConfig):
        super().__init__(config)
        if not config.epsilon > 0:
            raise ValueError(f"emstdp: epsilon must be > 0 (the output error neurons' threshold), got {config.epsilon}")
        if config.error_thresholds is not None and not all(t > 0 for t in config.error_thresholds):
            raise ValueError(f"emstdp: error_thresholds must all be > 0, got {config.error_thresholds}")
        if config.clip is not None and not config.clip > 0:
            raise ValueError(f"emstdp: clip must be > 0 or null, got {config.clip}")
        self.feedback_weights: List[Optional[torch.Tensor]] = []
        self.error_thresholds: List[float] = []

    def _phases(self, T: int):
        c = self.config
        p1 = T // 2 if c.phase1 is None else int(c.phase1)
        w = p1 - 1 if c.window is None else int(c.window)
        if not 2 <= p1 <= T - 1:
            raise ValueError(f"emstdp: phase1 = {p1} leaves no phase {1 if p1 < 2 else 2} in {T} time steps; "
                             f"need 2 <= phase1 <= time_steps - 1")
        if not 1 <= w or T - 2 * w < 1 or T - w < p1:
            raise ValueError(f"emstdp: window = {w} does not fit: need 1 <= window, 2 window < time_steps ({T}) "
                             f"and the last window inside phase 2 (time_steps - window >= phase1 = {p1})")
        return p1, w

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        c = self.config
        layers = list(model.weight_layers())  # type: ignore[attr-defined]
        for i, lin in enumerate(layers):
            if not isinstance(lin, nn.Linear) or lin.bias is not None:
                raise TypeError(f"emstdp: weight layer {i} must be an nn.Linear without bias, got {lin}")
        if len(layers) < 2:
            raise ValueError("emstdp: the model needs at least one hidden layer")
        if len(model.thresholds) != len(layers):  # type: ignore[attr-defined]
            raise ValueError(f"emstdp: the model has {len(layers)} weight layers but "
                             f"{len(model.thresholds)} thresholds")  # type: ignore[attr-defined]
        self._phases(int(model.time_steps))  # type: ignore[attr-defined]
        sizes = [layers[0].in_features] + [lin.out_features for lin in layers]
        if c.error_thresholds is not None:
            if len(c.error_thresholds) != len(layers) - 1:
                raise ValueError(f"emstdp: error_thresholds needs {len(layers) - 1} values (one per hidden layer), "
                                 f"got {len(c.error_thresholds)}")
            self.error_thresholds = list(map(float, c.error_thresholds))
        else:
            self.error_thresholds = reference_error_thresholds(sizes, c.feedback, c.error_ratio)
        dev = layers[0].weight.device
        self.feedback_weights = []
        for l in range(len(layers) - 1):
            if c.feedback == "symmetric":
                self.feedback_weights.append(None)
                continue
            n_src = sizes[l + 2] if c.feedback == "fa" and l < len(layers) - 2 else sizes[-1]
            bound = math.sqrt(1.0 / n_src)
            b = torch.rand(n_src, sizes[l + 1], generator=self.generator, device=self.generator.device)
            self.feedback_weights.append(((2 * b - 1) * bound).to(dev, layers[0].weight.dtype))
        return model

    def gate_on(self) -> bool:
        return self.config.feedback != "dfa" if self.config.gate is None else bool(self.config.gate)

    def run(self, model: nn.Module, spikes: torch.Tensor, y: torch.Tensor) -> EMSTDPResult:
        """Both phases on input spikes ``[T, B, n_0]`` with labels ``y``: :func:`emstdp_run` with
        the model's weights and thresholds and this rule's settings."""
        if not self.error_thresholds:
            raise RuntimeError("emstdp: call rule.prepare(model) first")
        layers = list(model.weight_layers())  # type: ignore[attr-defined]
        p1, w = self._phases(spikes.shape[0])
        target = F.one_hot(y, layers[-1].out_features).to(spikes.dtype)
        with torch.no_grad():
            return emstdp_run(spikes, [lin.weight for lin in layers], model.thresholds, target,  # type: ignore[attr-defined]
                              self.config.feedback, self.feedback_weights, self.error_thresholds,
                              self.config.epsilon, p1, w, self.gate_on(), self.config.scale)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        spikes = model.encode(x, self.generator)  # type: ignore[attr-defined]
        r = self.run(model, spikes, y)
        layers = list(model.weight_layers())  # type: ignore[attr-defined]
        for lin, g in zip(layers, r.updates):
            p = lin.weight
            p.grad = -g if p.grad is None else p.grad - g
        T, B = spikes.shape[:2]
        w = r.window
        out_counts = r.spikes[-1][:w].sum(0)  # the reference's training prediction: steps 0 .. w-1
        target = F.one_hot(y, layers[-1].out_features).to(spikes.dtype)
        loss = 0.5 * ((out_counts / w - target) ** 2).sum(1).mean()
        stats: Dict[str, Any] = {}
        for l, sp in enumerate(r.spikes):
            stats[f"emstdp/spikes_p1/{l}"] = sp[T - 2 * w:T - w].sum() / B
            stats[f"emstdp/spikes_p2/{l}"] = sp[T - w:].sum() / B
        for l, er in enumerate(r.errors):
            stats[f"emstdp/err_rate/{l + 1}"] = er[r.phase1:].abs().sum() / (B * er.shape[2] * (T - r.phase1))
        self.steps += 1
        c = self.config
        if c.compare_every and self.steps % c.compare_every == 0:
            for l, a in enumerate(self.bp_angles(model, spikes, y)):
                stats[f"emstdp/angle/{l + 1}"] = a
        return StepOutput(loss.detach(), out_counts, stats)

    def bp_angles(self, model: nn.Module, spikes: torch.Tensor, y: torch.Tensor) -> List[torch.Tensor]:
        """Per weight layer the angle (degrees, 0-dim tensors) between ``.grad`` and BP's gradient
        on the rate network with the same weights (see the module docstring)."""
        layers = list(model.weight_layers())  # type: ignore[attr-defined]
        ws = [lin.weight.detach().clone().requires_grad_(True) for lin in layers]
        with torch.enable_grad():
            a = spikes.mean(0)
            for wl, th in zip(ws, model.thresholds):  # type: ignore[attr-defined]
                a = (a @ wl.t() / th).clamp(0.0, 1.0)
            loss = 0.5 * ((a - F.one_hot(y, a.shape[1]).to(a.dtype)) ** 2).sum(1).mean()
            bp = torch.autograd.grad(loss, ws)
        return [angle_degrees_tensor(lin.weight.grad, g) for lin, g in zip(layers, bp)]

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Output spike counts of the forward network over all ``time_steps`` (the reference's
        ``Test``); the rate code draws from the global generator, not the rule's."""
        return model(x)

    def after_step(self, model: nn.Module) -> None:
        if self.config.clip is None:
            return
        with torch.no_grad():
            for lin in model.weight_layers():  # type: ignore[attr-defined]
                lin.weight.clamp_(-self.config.clip, self.config.clip)

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "feedback_weights": self.feedback_weights}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "feedback_weights" in state:
            dev = self.generator.device
            self.feedback_weights = [None if b is None else b.to(dev) for b in state["feedback_weights"]]


@RULES.register("emstdp", EMSTDPRuleConfig,
                "EMSTDP: two-phase spiking error propagation (symmetric / fa / dfa) with an STDP-like local update")
def _emstdp(c: EMSTDPRuleConfig) -> Rule:
    return EMSTDP(c)
