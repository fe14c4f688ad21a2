"""TSSL-BP: temporal spike sequence learning via backpropagation (Zhang & Li, NeurIPS 2020).

The forward is the LIF neuron with synaptic response of :mod:`bioprop.models.tssl_nets`
(time ``t = 0 .. T-1``, ``theta_m = 1/tau_m``, threshold ``theta``):

    u[t] = (1 - theta_m) r[t-1] + I[t],  s[t] = H(u[t] - theta),  r[t] = u[t] (1 - s[t]),
    a[t] = (1 - 1/tau_s) a[t-1] + s[t] / tau_s,   du[t] = u[t] - r[t-1],

so ``a = eps * s`` with ``eps[k] = (1 - 1/tau_s)^k / tau_s``. Layers pass PSPs: ``I = W a_prev``.

Backward of one layer: given ``g[t] = dE/da[t]`` it returns ``delta[t] = dE/dI[t]`` (= dE/du[t]).
With the inter-neuron term (the PSP this spike leaves at ``t .. T-1``)

    inter[t] = sum_{k=0}^{T-1-t} eps[k] g[t+k]                       (one [T, T] Toeplitz product)
    c[t]     = s[t] min(1/du[t], c_max)       (0 where du < 0; c_max = 8)

and the intra-neuron term (the dependence of the next spike on this one, through the reset),
the reference's recursion, backwards from ``G[T] = 0``:

    G[t] = c[t] (inter[t] + theta_m u[t] G[t+1])    where s[t] = 1
    G[t] = (1 - theta_m) G[t+1]                       where s[t] = 0 (the leak carries it back)

The gradient is ``delta[t] = G[t]``, except for a quiet neuron, whose PSP is below
``q / tau_s`` (``q = 1/4``): there the spike-timing gradient is replaced by a sigmoid surrogate of
width ``w = 0.2``,

    delta[t] = inter[t] sigma'(x) / w,   x = clamp((theta - u[t]) / w, -8, 8),
    sigma'(x) = e^x / (1 + e^x)^2.

(The recursion uses ``G``, never the surrogate value, as the reference's ``theta`` does.) The
reference runs this as a double loop over ``t`` and ``k`` in Python; here ``inter`` is one matrix
product over time and the recursion an O(T) scan of elementwise ops, for any layer shape (Linear,
Conv2d, and the sum pooling between them, whose backward autograd does).

Losses of the output PSPs ``a_out[T, B, K]`` (gradients summed over the batch, as the reference):

- ``kernel``: ``E = 1/2 sum_{b,k,t} (a_out[t] - (eps^{*m} * d)[t])^2`` with the desired spike
  train ``d`` (tiled to ``T``) for the label neuron and ``d = 0`` for the others, filtered ``m``
  times (``target_filters``) by the PSP kernel. Default ``m = 1``, ``d = [0, 1, 1, 1, 1]``: the
  paper's definition (the target is the PSP of the desired spike train, the same filter the output
  spikes pass through) with the desired train of the reference code since 2020-10-01; this is
  exactly stonezwr/TSSL-BP at commits 1d46185 .. cc9f56b (2020-10-01 .. 2020-10-06). The other
  versions of the reference, each selectable:

  | version | ``desired_train`` | ``target_filters`` |
  | NeurIPS submission (d0a06b7, 2020-06-02) and the paper | ``[0, 1, 0, 1, 1]`` | 1 |
  | 1d46185 .. cc9f56b (2020-10) (our default) | ``[0, 1, 1, 1, 1]`` | 1 |
  | 87a678f (2020-10-29) .. HEAD | ``[0, 1, 1, 1, 1]`` | 2 |

  At HEAD the target is filtered once in ``main.py``'s ``train()`` and again inside
  ``loss_kernel``, whose first line (``out_psp = psp(outputs)``, commented out) shows that the
  filter belongs to the spike-train comparison: we read the second filter as a bug (the target
  then lags and is smaller than any output PSP the desired train can produce).
- ``count``: ``n = sum_t a_out[t]``, ``delta = (n - n_target) / T`` with ``n_target`` =
  ``desired_count`` for the label and ``undesired_count`` otherwise, ``delta = 0`` where the label
  neuron has ``n >= desired_count`` or another neuron ``n <= undesired_count``;
  ``E = T/2 sum delta^2`` (so ``dE/da_out[t] = delta``, the reference's gradient).

After each optimizer step the weights are clamped to ``[-4, 4]``. The rule ignores the trainer's
``loss_fn``; the logits it returns (and predicts) are ``sum_t a_out[t]``, the reference's
spike-count readout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..models.protocols import PSPModel
from ..neurons.psp import Neuron, lif_psp_multistep, psp_filter, psp_kernel
from .base import RULES, LossFn, Rule, StepOutput
from .graphs import GraphedStep

__all__ = ["TSSLConfig", "TSSLBP", "TSSLFunction", "tssl_backward", "tssl_neuron", "desired_psp",
           "kernel_loss", "count_loss"]


@dataclass
class TSSLConfig:
    """Settings of TSSL-BP (defaults: the reference code's).

    ``loss``: ``kernel`` (desired spike train ``desired_train``, tiled to ``T``, filtered
    ``target_filters`` times by the PSP kernel: see the module docstring for which version of the
    reference each choice reproduces; the default, ``[0, 1, 1, 1, 1]`` filtered once, is the paper's
    definition with the reference code's desired train; ``[0, 1, 0, 1, 1]`` is the paper's train;
    ``target_filters: 2`` is the reference at HEAD; for ``T >= 10`` the reference code switches to
    ``[0, 1] * 5``, which here is ``desired_train: [0, 1]``) or ``count`` (``desired_count`` /
    ``undesired_count`` for the label / other output neurons). ``weight_clamp``: weights clamped
    to ``[-c, c]`` after each step (``None``: no clamp). ``surrogate_width``: ``w`` of the
    quiet-neuron sigmoid surrogate; ``quiet_factor``: a neuron is quiet where its PSP is below
    ``quiet_factor / tau_s``; ``inv_du_cap``: the cap on ``1/du``. The time constants are the
    model's (the backward must use the forward's). ``cuda_graph``: on a GPU, capture the whole
    gradient computation (simulation, loss, TSSL-BP backward) once per batch shape as a CUDA graph
    and replay it (:class:`bioprop.rules.graphs.GraphedStep`): at T = 5 a step is hundreds of small
    kernels. Off by default until ``test_cuda_graph_step_equals_eager_step`` has passed on a GPU;
    a refused capture warns and falls back to the eager step.
    """

    loss: Literal["kernel", "count"] = "kernel"
    desired_train: List[int] = field(default_factory=lambda: [0, 1, 1, 1, 1])
    target_filters: int = 1
    desired_count: float = 4.0
    undesired_count: float = 1.0
    weight_clamp: Optional[float] = 4.0
    surrogate_width: float = 0.2
    quiet_factor: float = 0.25
    inv_du_cap: float = 8.0
    cuda_graph: bool = False


def tssl_backward(grad_a: torch.Tensor, u: torch.Tensor, du: torch.Tensor, s: torch.Tensor,
                  quiet: torch.Tensor, tau_m: float, tau_s: float, threshold: float = 1.0,
                  surrogate_width: float = 0.2, inv_du_cap: float = 8.0) -> torch.Tensor:
    """``dE/dI[T, ...]`` of one layer from ``grad_a = dE/da`` (equations in the module docstring).

    ``u``, ``du``: membrane before reset and its jump; ``s``, ``quiet``: boolean spikes and
    quiet-neuron mask; all ``[T, ...]`` of one dtype.
    """
    T = grad_a.shape[0]
    shape = grad_a.shape
    g = grad_a.reshape(T, -1)
    u, du, s, quiet = (v.reshape(T, -1) for v in (u, du, s, quiet))
    eps = psp_kernel(T, tau_s, g.dtype, g.device)
    lag = torch.arange(T, device=g.device)
    ahead = lag[None, :] - lag[:, None]  # t' - t
    kmat = torch.where(ahead >= 0, eps[ahead.clamp(min=0)], torch.zeros((), dtype=g.dtype, device=g.device))
    inter = kmat @ g  # inter[t] = sum_{t' >= t} eps[t' - t] g[t']
    zero = torch.zeros((), dtype=g.dtype, device=g.device)
    c = torch.where(s, du.reciprocal().clamp(0, inv_du_cap), zero)
    theta_m = 1.0 / tau_m
    decay = torch.where(s, theta_m * u * c, torch.full((), 1 - theta_m, dtype=g.dtype, device=g.device))
    drive = c * inter
    spike_grad = torch.empty_like(inter)
    acc = torch.zeros_like(inter[0])
    for t in range(T - 1, -1, -1):
        acc = torch.addcmul(drive[t], decay[t], acc)
        spike_grad[t] = acc
    e = ((threshold - u) / surrogate_width).clamp(-8, 8).exp()
    surrogate = inter * (e / ((1 + e) ** 2 * surrogate_width))
    return torch.where(quiet, surrogate, spike_grad).reshape(shape)


class TSSLFunction(torch.autograd.Function):
    """``current[T, ...] -> (psp, spikes)``: the LIF-with-synapse forward, TSSL-BP's backward.

    The state is simulated in float32 at least (bf16/fp16 currents under autocast included); the
    gradient is returned in the current's dtype. The spikes are not differentiable.
    """

    @staticmethod
    def forward(ctx, current: torch.Tensor, tau_m: float, tau_s: float, threshold: float,
                surrogate_width: float, inv_du_cap: float, quiet_factor: float
                ) -> Tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        dtype = torch.promote_types(current.dtype, torch.float32)
        tr = lif_psp_multistep(current.to(dtype), tau_m, tau_s, threshold)
        ctx.save_for_backward(tr.u, tr.du, tr.s > 0, tr.a < quiet_factor / tau_s)
        ctx.consts = (tau_m, tau_s, threshold, surrogate_width, inv_du_cap)
        ctx.in_dtype = current.dtype
        ctx.mark_non_differentiable(tr.s)
        return tr.a, tr.s

    @staticmethod
    def backward(ctx, grad_a: torch.Tensor, grad_s: torch.Tensor):  # type: ignore[override]
        u, du, s, quiet = ctx.saved_tensors
        g = tssl_backward(grad_a.to(u.dtype), u, du, s, quiet, *ctx.consts)
        return g.to(ctx.in_dtype), None, None, None, None, None, None


def tssl_neuron(model: PSPModel, c: TSSLConfig) -> Neuron:
    """The neuron function of ``model`` (its time constants and threshold) with TSSL-BP's backward."""

    def neuron(current: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return TSSLFunction.apply(current, model.tau_m, model.tau_s, model.threshold,
                                  c.surrogate_width, c.inv_du_cap, c.quiet_factor)

    return neuron


def desired_psp(train: List[int], steps: int, tau_s: float, dtype: torch.dtype = torch.float32,
                device: Optional[torch.device] = None, filters: int = 1) -> torch.Tensor:
    """``(eps * ... * eps * d)[t]`` (``filters`` PSP filters) of the desired spike train ``train``
    tiled to ``steps``, shape ``[steps]``; ``filters = 0`` returns ``d`` itself."""
    if steps % len(train) != 0:
        raise ValueError(f"tssl: desired_train {train} (length {len(train)}) does not tile T = {steps} "
                         f"steps; give a desired_train whose length divides {steps}")
    if filters < 0:
        raise ValueError(f"tssl: target_filters must be >= 0, got {filters}")
    d = torch.tensor(list(train) * (steps // len(train)), dtype=dtype, device=device)
    for _ in range(filters):
        d = psp_filter(d, tau_s)
    return d


def kernel_loss(out: torch.Tensor, y: torch.Tensor, train: List[int], tau_s: float,
                filters: int = 1) -> torch.Tensor:
    """``1/2 sum_{b,k,t} (out[t, b, k] - target[t, b, k])^2``, target the desired spike train
    filtered ``filters`` times for ``k = y_b`` and 0 otherwise; ``out`` the output PSPs ``[T, B, K]``."""
    want = desired_psp(train, out.shape[0], tau_s, out.dtype, out.device, filters)
    label = F.one_hot(y, out.shape[2]).to(out.dtype)  # [B, K]
    return 0.5 * ((out - want[:, None, None] * label) ** 2).sum()


def count_loss(out: torch.Tensor, y: torch.Tensor, desired: float, undesired: float) -> torch.Tensor:
    """``T/2 sum_{b,k} delta^2`` with ``delta = (sum_t out - target) / T``, zero where the label
    neuron reaches ``desired`` or another neuron stays at or below ``undesired``."""
    T = out.shape[0]
    is_label = F.one_hot(y, out.shape[2]).bool()
    target = torch.where(is_label, torch.full((), desired, dtype=out.dtype, device=out.device),
                         torch.full((), undesired, dtype=out.dtype, device=out.device))
    delta = (out.sum(0) - target) / T
    satisfied = torch.where(is_label, delta >= 0, delta <= 0)
    delta = torch.where(satisfied, torch.zeros((), dtype=out.dtype, device=out.device), delta)
    return 0.5 * T * (delta ** 2).sum()


class TSSLBP(Rule):
    """TSSL-BP on a :class:`~bioprop.models.protocols.PSPModel` (models ``tssl_*``)."""

    name = "tssl"
    protocol = PSPModel
    grad_reduction = "sum"  # the gradient of the batch-summed loss (as the reference)

    def __init__(self, config: TSSLConfig):
        super().__init__(config)
        c = config
        if not c.desired_train or any(v not in (0, 1) for v in c.desired_train):
            raise ValueError(f"tssl: desired_train must be a non-empty list of 0/1 spikes, got {c.desired_train}")
        if c.target_filters not in (0, 1, 2):
            raise ValueError(f"tssl: target_filters must be 1 (the paper), 2 (the reference code at HEAD) "
                             f"or 0 (the raw spike train), got {c.target_filters}")
        if c.desired_count == c.undesired_count:
            raise ValueError(f"tssl: desired_count and undesired_count must differ, both are {c.desired_count}")
        if c.weight_clamp is not None and not c.weight_clamp > 0:
            raise ValueError(f"tssl: weight_clamp must be > 0 (or null for none), got {c.weight_clamp}")
        for key in ("surrogate_width", "inv_du_cap"):
            if not getattr(c, key) > 0:
                raise ValueError(f"tssl: {key} must be > 0, got {getattr(c, key)}")
        if not c.quiet_factor >= 0:
            raise ValueError(f"tssl: quiet_factor must be >= 0, got {c.quiet_factor}")
        self._graphed: Optional[GraphedStep] = None
        self._graph_failed = False

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        if self.config.loss == "kernel":
            desired_psp(self.config.desired_train, model.time_steps, model.tau_s)  # tiling check
        return model

    def loss(self, model: PSPModel, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured loss of the output PSPs ``out[T, B, K]``, summed over the batch."""
        c = self.config
        if c.loss == "kernel":
            return kernel_loss(out, y, c.desired_train, model.tau_s, c.target_filters)
        return count_loss(out, y, c.desired_count, c.undesired_count)

    def _compute(self, model: PSPModel, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0):
        """``(loss per sample, logits, stats, grads)``, all tensors (graph-capturable)."""
        out, rec = model.simulate(x, tssl_neuron(model, self.config))
        loss = self.loss(model, out, y)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, params, allow_unused=True)
        return loss.detach() / y.shape[0], out.detach().sum(0), rec.stats(), list(grads)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        """Simulate, back-propagate the TSSL loss (``loss_fn`` is not used). The returned loss is
        per sample (the batch sum divided by ``B``); the gradient is of the batch sum."""
        graphed = None
        if self.config.cuda_graph and x.is_cuda and scaler is None and not self._graph_failed:
            if self._graphed is None or self._graphed.model is not model:
                self._graphed = GraphedStep(lambda xs, ys: self._compute(model, xs, ys), model)
            try:
                graphed = self._graphed(x, y)
            except RuntimeError as e:  # capture refused: run eagerly from now on
                warnings.warn(f"tssl: CUDA-graph capture failed ({e}); running the step eagerly "
                              "(set rule.cuda_graph=false to skip the attempt)", RuntimeWarning, stacklevel=2)
                self._graph_failed = True
        if graphed is None:
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            graphed = self._compute(model, x, y, scale)
        loss, logits, stats, grads = graphed
        for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
            if g is not None:  # g may be a graph's static output: copy it out
                p.grad = g.clone() if p.grad is None else p.grad + g
        return StepOutput(loss.clone(), logits.clone(), {k: v.clone() for k, v in stats.items()})

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``sum_t a_out[t]``: the output neurons' PSP-weighted spike counts ``[B, K]``."""
        return model.simulate(x, tssl_neuron(model, self.config))[0].sum(0)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """Clamp every weight to ``[-weight_clamp, weight_clamp]``."""
        if self.config.weight_clamp is None:
            return
        for layer in model.weight_layers():
            layer.weight.clamp_(-self.config.weight_clamp, self.config.weight_clamp)


@RULES.register("tssl", TSSLConfig, "TSSL-BP: spike-timing backprop through PSPs with reset dependence (Zhang & Li 2020)")
def _tssl(c: TSSLConfig) -> Rule:
    return TSSLBP(c)
