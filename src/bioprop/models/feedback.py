"""Feedback spiking networks of IDE (Xiao et al., NeurIPS 2021): F400, F64C5, AlexNet-F, CIFARNet-F.

One class, :class:`FeedbackSNN`, over a list of ``N`` populations of (L)IF neurons (``N = 1`` for
F400 and F64C5, ``N = 5`` for AlexNet-F and CIFARNet-F). Population 1 receives a constant or
spiking input through an encoder ``F`` (linear or convolution, bias, BatchNorm) and the spikes of
the last population through a feedback operator ``W`` with one step of delay (spectrally
normalised, :mod:`.spectral`); population ``l + 1`` receives ``BN_l(F_l s_l[t])`` from population
``l`` in the same step:

    u_1[t+1]     = leak (u_1[t] - Vth s_1[t]) + W s_N[t] + BN(F x[t+1])
    u_{l+1}[t+1] = leak (u_{l+1}[t] - Vth s_{l+1}[t]) + BN_l(F_l s_l[t+1]),   s = H(u - Vth)

(``leak = 1``: IF). The (leak-weighted) average firing rates approximate (LIF) or converge to (IF)
the fixed point of the equilibrium map on the last population's rate ``a = a_N``:

    a_1 = clamp((W a + F xbar) / Vth, 0, 1),  a_{l+1} = clamp(BN_l(F_l a_l) / Vth, 0, 1),  f(a) = a_N

with ``xbar`` the input's (leak-weighted) time average (for ``N = 1``: ``f(a) = clamp((W a + F xbar)
/ Vth, 0, 1)``). The logits are a linear readout of ``a``.

The model declares the :class:`~bioprop.models.protocols.EquilibriumModel` protocol (what the
``ide`` rule needs) and :class:`~bioprop.models.protocols.SpikingModel` (``run``: the unrolled,
surrogate-gradient simulation that ``bptt`` trains):

- :meth:`begin` computes the per-batch quantities once, with autograd: the drive ``F xbar``
  (BatchNorm statistics taken once, from ``F xbar``; the same statistics normalise every time step
  of a spike input), the feedback weight ``W`` (one power-iteration step in training), and applies
  the dropout masks (one mask for all time steps, the simulation and the map);
- :meth:`simulate` runs the T-step spiking dynamics (no autograd needed) and returns the rate;
- :meth:`equilibrium_map` applies ``f`` (differentiably, or with parameters held constant for the
  Jacobian); :meth:`readout` maps rates to logits.

**Every weight layer is applied as its module** (the encoder, the inner layers, the readout;
:func:`apply_layer` holds a layer's parameters constant through the module's own forward), so a
layer rule stacked under ``ide`` or ``bptt`` (``rule: {name: fa, model_rule: ide}``) sends the error
through its backward kernels in every layer, in the map, its Jacobian (the adjoint solve) and the
unrolled simulation. The feedback operator is a :class:`SpectralNormOperator`, which layer rules do
not convert: its adjoint in the implicit backward is ``W^T`` (the rules say so when they stack).

Inner BatchNorms (``N > 1``): the running statistics in the simulation; in the map, its Jacobian
and the implicit backward the batch statistics of the map's own rates during training
(``inner_bn='batch'``, default) or the running statistics (``'running'``, ablations); see
:class:`MultiLayerFeedbackConfig`. :meth:`update_statistics` moves the running statistics towards
the batch statistics of the simulated rates after each training step.
Under ``torchrun`` every batch statistic (the input BatchNorm's, the inner ones in the map and
their running-statistics updates) is taken over the global batch, all ranks' shards together
(:func:`bioprop.distributed.batch_norm`, with gradients), so a data-parallel step equals one
process's step on the concatenated batch; a single process computes exactly what it did before.

Dropout (rate ``dropout``): one mask per population on its input current and, where the model
has ``feedback_dropout`` (F400, F64C5: the reference's variational dropout on ``W s``), one on the
feedback current. Parameter counts equal the reference's (F400: 478,811; F64C5 MNIST: 229,643;
F64C5 on 2x34x34 N-MNIST input: 290,763; AlexNet-F C10: 3,709,515; CIFARNet-F C10: 11,840,011),
and so do the state-dict keys of the two classes this one replaced.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from ..metrics import synaptic_operations
from ..neurons import FusedRatePopulation, NeuronParams, RatePopulation, heaviside, rate_init, rate_update, rate_value, spike_fn
from ..neurons.fastsim import SimOptions
from .base import MODELS, Edge, SpikeRecord, check_input, check_time_steps, conv_out, neuron_from
from .protocols import EquilibriumState
from .spectral import SpectralNormOperator

__all__ = ["FeedbackSNN", "FeedbackSNNConfig", "F400Config", "F64C5Config", "MultiLayerFeedbackConfig",
           "CIFARNetFConfig", "EquilibriumState", "FeedbackState", "apply_layer"]

#: the per-batch state (the name of earlier releases)
FeedbackState = EquilibriumState


@dataclass
class FeedbackSNNConfig:
    """Fields shared by the feedback SNNs: neurons (IF/LIF, leak, threshold Vth), T, dropout
    (one mask for all steps), and the feedback weight's spectral norm: gain ``g`` starts at
    ``fb_gain_init`` and is clamped to ``fb_norm_range`` (``||W|| <= r``: the reference's 1; any
    ``r`` below the threshold keeps the equilibrium map contractive: exactly under
    ``sigma_of='fourier'`` (convolutional feedback), up to the lag of the power iteration
    otherwise; ``r >= Vth`` warns)."""

    in_shape: Tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    neuron: Literal["lif", "if"] = "lif"
    leak: float = 0.95
    threshold: float = 2.0
    time_steps: int = 30
    dropout: float = 0.2
    fb_gain_init: float = 0.9
    fb_norm_range: float = 1.0
    power_iters: int = 1
    #: how sigma(V) is taken for a convolutional feedback (a linear one: power iteration on its matrix):
    #: 'operator': of the convolution operator, by power iteration (default); 'fourier': the exact
    #: upper bound from the kernel's Fourier symbol (never exceeded, no power-iteration lag);
    #: 'kernel': of the reshaped kernel, as the reference does (for ablations; does not bound W)
    sigma_of: Literal["operator", "kernel", "fourier"] = "operator"
    #: surrogate spike derivative used when the network is trained by ``bptt`` instead of ``ide``
    surrogate: str = "atan"


@dataclass
class F400Config(FeedbackSNNConfig):
    hidden: int = 400
    time_steps: int = 5


@dataclass
class F64C5Config(FeedbackSNNConfig):
    channels: int = 64
    kernel: int = 5
    stride: int = 2
    padding: int = 2


def _reference_init(layer: nn.Module) -> None:
    """The reference's init: uniform(-1, 1), each output unit's weights scaled to unit norm, zero bias."""
    with torch.no_grad():
        w = layer.weight
        w.uniform_(-1, 1)
        dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        norms = w.transpose(0, dim).reshape(w.shape[dim], -1).norm(dim=1)
        shape = [1] * w.dim()
        shape[dim] = -1
        w.div_(norms.view(shape))
        if layer.bias is not None:
            layer.bias.zero_()


def apply_layer(layer: nn.Module, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
    """``layer(x)`` through the module's own forward; ``detach``: its parameters held constant
    (no graph into them), as the Jacobian ``df/da`` of the equilibrium map needs. A layer rule's
    module (e.g. a B-carrying convolution) keeps its own backward for the input either way."""
    if not detach or not torch.is_grad_enabled():
        return layer(x)
    params = {k: p.detach() for k, p in layer.named_parameters()}
    return torch.func.functional_call(layer, params, (x,))


def _batchnorm_for(shape: Tuple[int, ...]) -> nn.Module:
    return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])


class FeedbackSNN(nn.Module):
    """``N`` feedback-coupled (L)IF populations (see the module docstring): encoder ``F`` + BN into
    population 1, inner layers ``F_l`` + BN from population ``l`` to ``l + 1`` (``layers``), feedback
    ``W`` from population ``N`` to population 1 with one step of delay, linear readout of
    population ``N``'s rate."""

    in_shape: Tuple[int, ...]
    time_steps: int

    def __init__(self, encoder: nn.Module, feedback: SpectralNormOperator, num_classes: int,
                 in_shape: Tuple[int, ...], neuron: NeuronParams, time_steps: int, dropout: float,
                 layers: Sequence[nn.Module] = (), feedback_dropout: bool = True,
                 inner_bn: Literal["running", "batch"] = "batch", surrogate: str = "atan"):
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if inner_bn not in ("running", "batch"):
            raise ValueError(f"inner_bn must be 'running' or 'batch', got {inner_bn!r}")
        self.in_shape = tuple(in_shape)
        self.encoder = encoder
        with torch.no_grad():  # population shapes, from the layers' own arithmetic
            z = encoder(torch.zeros((1,) + self.in_shape))
            shapes = [tuple(z.shape[1:])]
            for layer in layers:
                z = layer(z)
                shapes.append(tuple(z.shape[1:]))
        self.shapes: List[Tuple[int, ...]] = shapes
        self.bn = _batchnorm_for(shapes[0])
        self.convs = nn.ModuleList(layers)
        self.bns = nn.ModuleList([_batchnorm_for(s) for s in shapes[1:]])
        if tuple(feedback.in_shape) != shapes[-1] or tuple(feedback.out_shape) != shapes[0]:
            raise ValueError(f"the feedback maps {tuple(feedback.in_shape)} -> {tuple(feedback.out_shape)}; it must map "
                             f"the last population {shapes[-1]} to the first {shapes[0]}")
        self.feedback = feedback
        self.classifier = nn.Linear(math.prod(shapes[-1]), num_classes)
        self.neuron = neuron
        self.time_steps = int(time_steps)
        self.dropout = float(dropout)
        self.feedback_dropout = bool(feedback_dropout)
        self.inner_bn = inner_bn
        self.surrogate = surrogate

    # -- declared structure -----------------------------------------------------------------
    @property
    def populations(self) -> int:
        """The number of populations ``N``."""
        return len(self.shapes)

    @property
    def hidden_shape(self) -> Tuple[int, ...]:
        """Per-sample shape of the last population (the fixed-point variable)."""
        return self.shapes[-1]

    @property
    def threshold(self) -> float:
        return self.neuron.threshold

    def graph(self) -> List[Edge]:
        n = self.populations
        edges = [Edge("input", "lif1", "encoder")]
        edges += [Edge(f"lif{i + 1}", f"lif{i + 2}", f"convs.{i}") for i in range(n - 1)]
        return edges + [Edge(f"lif{n}", "lif1", "feedback", delay=1, feedback=True),
                        Edge(f"lif{n}", "output", "classifier")]

    # -- per-batch state --------------------------------------------------------------------
    def sample_masks(self, batch: int, generator: Optional[torch.Generator] = None) -> Optional[Dict[str, torch.Tensor]]:
        """Dropout masks (values 0 or 1/(1-p)), one draw per batch: ``"l<i>"`` for the input current
        of population ``i``, and ``"fb"`` for the feedback current where the model has
        ``feedback_dropout``."""
        if not self.training or self.dropout == 0:
            return None
        dev = self.classifier.weight.device
        keep = 1 - self.dropout
        shapes = {f"l{i}": s for i, s in enumerate(self.shapes)}
        if self.feedback_dropout:
            shapes["fb"] = self.shapes[0]
        return {k: torch.bernoulli(torch.full((batch,) + s, keep, device=dev), generator=generator) / keep
                for k, s in shapes.items()}

    def input_average(self, x: torch.Tensor) -> torch.Tensor:
        """Time average (IF) or leak-weighted average (LIF) of a spike input ``x[T, B, ...]``:
        ``sum_t leak^(T-1-t) x[t] / sum_k leak^k``, the input's counterpart of the rate."""
        acc = rate_init(x[0])
        for xt in x.unbind(0):
            acc = rate_update(acc, xt, self.neuron.leak)
        return rate_value(acc)

    def begin(self, x: torch.Tensor, masks: Optional[Dict[str, torch.Tensor]] = None) -> EquilibriumState:
        """Drive, feedback weight and masks for input ``x`` (``[B, ...]`` constant, ``[T, B, ...]`` spikes)."""
        timed = check_input(x, self.in_shape, type(self).__name__, allow_time=True)
        if timed:
            check_time_steps(type(self).__name__, x.shape[0], self.time_steps)
        xbar = self.input_average(x) if timed else x
        z = self.encoder(xbar)
        bn = self.bn
        if self.training:
            dims = [0] + list(range(2, z.dim()))
            # under torchrun: the statistics of all ranks' shards, i.e. of the global batch
            mean, var = D.batch_moments(z.detach() if D.is_distributed() else z, dims)
        else:
            mean, var = bn.running_mean, bn.running_var
        # one BatchNorm application (and one running-statistics update) per batch; under torchrun
        # with the global batch's statistics (D.batch_norm: F.batch_norm itself in one process)
        drive = D.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, self.training, bn.momentum, bn.eps)
        if self.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        drive_seq = input_synops = None
        if timed:
            with torch.no_grad():
                shape = [1, -1] + [1] * (z.dim() - 2)
                scale = (bn.weight / torch.sqrt(var + bn.eps)).view(shape)
                shift = (bn.bias - mean * bn.weight / torch.sqrt(var + bn.eps)).view(shape)
                zs = self.encoder(x.flatten(0, 1)) * scale + shift
                drive_seq = zs.unflatten(0, x.shape[:2])
                enc = next(m for m in self.encoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
                input_synops = synaptic_operations(enc, (x != 0).to(x.dtype))
        weight = self.feedback.weight(update=self.training)
        if masks is not None:
            drive = drive * masks["l0"]
            if drive_seq is not None:
                drive_seq = drive_seq * masks["l0"]
        return EquilibriumState(drive, weight, masks, drive_seq, input_synops)

    # -- the synaptic currents --------------------------------------------------------------
    def feedback_current(self, s: torch.Tensor, st: EquilibriumState, detach: bool = True) -> torch.Tensor:
        """``W s`` (times the feedback mask); ``detach``: ``W`` held constant."""
        w = st.weight.detach() if detach else st.weight
        out = self.feedback(s, w)
        mask = st.masks.get("fb") if st.masks is not None else None
        return out * mask if mask is not None else out

    def layer_current(self, i: int, a: torch.Tensor, st: EquilibriumState, detach: bool,
                      batch_stats: bool = False) -> torch.Tensor:
        """Input current ``BN_i(F_i a)`` (times its mask) of population ``i + 2`` from population
        ``i + 1``'s output ``a``: BN with the running statistics, or with the batch statistics of
        ``a``'s currents (``batch_stats``: the map under ``inner_bn='batch'``, its Jacobian
        included). ``F_i`` is applied as its module (:func:`apply_layer`)."""
        bn = self.bns[i]
        z = apply_layer(self.convs[i], a, detach)
        gw, gb = (bn.weight.detach(), bn.bias.detach()) if detach else (bn.weight, bn.bias)
        if batch_stats:
            z = D.batch_norm(z, None, None, gw, gb, True, 0.0, bn.eps)  # torchrun: the global batch's
        else:
            z = F.batch_norm(z, bn.running_mean, bn.running_var, gw, gb, False, 0.0, bn.eps)
        mask = st.masks.get(f"l{i + 1}") if st.masks is not None else None
        return z * mask if mask is not None else z

    # -- dynamics ---------------------------------------------------------------------------
    @torch.no_grad()
    def simulate(self, st: EquilibriumState, time_steps: Optional[int] = None,
                 fast: Optional[SimOptions] = None) -> Tuple[torch.Tensor, SpikeRecord]:
        """Run the spiking dynamics for T steps; return the last population's (weighted) firing
        rate and the spike record (the other populations' rates go to ``st.rates``).

        ``fast=None``: the plain-PyTorch reference path (:class:`bioprop.neurons.RatePopulation`);
        ``fast=SimOptions(...)``: the fast path (in-place neuron updates, optional bf16 synapses
        and channels-last convolutions; equal to the reference in fp32, see
        :mod:`bioprop.neurons.fastsim`).
        """
        return self._simulate(st, time_steps, heaviside, detach=True, fast=fast)

    def _simulate(self, st: EquilibriumState, time_steps: Optional[int], spike, detach: bool,
                  fast: Optional[SimOptions] = None) -> Tuple[torch.Tensor, SpikeRecord]:
        if st.drive_seq is not None and time_steps is not None and time_steps != st.drive_seq.shape[0]:
            raise ValueError(f"{type(self).__name__}: time_steps={time_steps} was asked for a spike-train input of "
                             f"T={st.drive_seq.shape[0]} steps; a spike input sets T itself (leave rule.time_steps / "
                             "eval_time_steps unset)")
        T = st.drive_seq.shape[0] if st.drive_seq is not None else (time_steps or self.time_steps)
        drive = st.drive.detach() if detach else st.drive
        dt = torch.promote_types(drive.dtype, torch.float32)  # membrane in fp32 under autocast too
        n = self.populations
        if fast is None:
            pops = [RatePopulation(self.neuron, spike) for _ in range(n)]
            feedback = lambda s: self.feedback_current(s, st, detach=detach)  # noqa: E731
            layers = [lambda s, i=i: self.layer_current(i, s, st, detach) for i in range(n - 1)]
        else:
            masks = st.masks if st.masks is not None else {}
            pops = [FusedRatePopulation(self.neuron, fast.spike_dtype()) for _ in range(n)]
            feedback = fast.operator(self.feedback, st.weight.detach(), masks.get("fb"))
            layers = [fast.conv_bn(conv, bn, masks.get(f"l{i + 1}"),
                                   reference=lambda s, i=i: self.layer_current(i, s, st, True))
                      for i, (conv, bn) in enumerate(zip(self.convs, self.bns))]
        steps = st.drive_seq.unbind(0) if st.drive_seq is not None else None  # no per-step index: linear in T
        for t in range(T):
            cur = drive if steps is None else steps[t]
            if pops[-1].s is not None:
                cur = cur + feedback(pops[-1].s)
            for l in range(n):
                if l > 0:
                    cur = layers[l - 1](pops[l - 1].s)
                pops[l].step(cur.to(dt))
        smaps = [p.spike_map() for p in pops]
        rec = SpikeRecord(time_steps=T, batch=drive.shape[0])
        for l in range(n):
            rec.spikes[f"lif{l + 1}"] = smaps[l].sum()
            rec.neurons[f"lif{l + 1}"] = math.prod(self.shapes[l])
            if l < n - 1:  # synaptic events of population l's spikes into population l + 1 (same step)
                rec.synops[f"convs.{l}"] = synaptic_operations(self.convs[l], smaps[l][None])
        # the spikes of steps 0..T-2 reach the next step through W; the readout integrates every
        # spike; a spike input drives the encoder
        last = smaps[-1] - pops[-1].s.detach().sum(0).to(smaps[-1].dtype)
        rec.synops["feedback"] = self.feedback.synops(last[None])
        rec.synops["classifier"] = smaps[-1].sum() * self.classifier.out_features
        if st.input_synops is not None:
            rec.synops["encoder"] = st.input_synops
        st.rates = [p.rate().detach() for p in pops[:-1]]
        return pops[-1].rate(), rec

    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, SpikeRecord]:
        """Differentiable simulation for BPTT (surrogate spikes ``surrogate``, autograd through all
        T steps, feedback kept: the comparison the IDE paper makes); logits from the readout of the
        (weighted) rate. (A spike input's per-step drive is computed without autograd, so BPTT with
        spike input trains the layers after it.)"""
        st = self.begin(x, self.sample_masks(x.shape[-len(self.in_shape) - 1]))
        a, rec = self._simulate(st, None, spike_fn(self.surrogate), detach=False)
        if self.training:
            self.update_statistics(st)
        return self.readout(a), rec

    def equilibrium_map(self, a: torch.Tensor, st: EquilibriumState, detach: bool = False) -> torch.Tensor:
        """``f(a)``: ``a_1 = clamp((W a + F xbar) / Vth, 0, 1)``, ``a_{l+1} = clamp(BN_l(F_l a_l) / Vth,
        0, 1)``, ``f(a) = a_N`` (with the dropout masks); ``detach``: the parameters are constants
        (for the Jacobian ``df/da``)."""
        drive = st.drive.detach() if detach else st.drive
        h = torch.clamp((self.feedback_current(a, st, detach=detach) + drive) / self.threshold, 0, 1)
        batch_stats = self.inner_bn == "batch" and self.training
        for i in range(self.populations - 1):
            h = torch.clamp(self.layer_current(i, h, st, detach, batch_stats) / self.threshold, 0, 1)
        return h

    @torch.no_grad()
    def update_statistics(self, st: EquilibriumState) -> None:
        """Move the inner BatchNorms' running statistics towards the batch statistics of
        ``F_l a_l`` at the simulated rates (once per training step; nothing for ``N = 1``)."""
        if not self.training or not st.rates:
            return
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            z = conv(st.rates[i])
            D.batch_norm(z, bn.running_mean, bn.running_var, None, None, True, bn.momentum, bn.eps)  # torchrun: global
            bn.num_batches_tracked.add_(1)

    def readout(self, a: torch.Tensor) -> torch.Tensor:
        return self.classifier(a.flatten(1))

    @torch.no_grad()
    def feedback_stats(self, st: EquilibriumState) -> Dict[str, torch.Tensor]:
        """``feedback/gain``: the clamped gain ``g`` (at ``fb_norm_range`` it gets no gradient:
        training wants stronger feedback than the bound allows); under ``sigma_of='kernel'`` also
        ``feedback/norm``, the true operator norm of ``W``, which that normalisation does not
        bound (:meth:`SpectralNormOperator.operator_norm_estimate`; the map is contractive while it
        is below Vth)."""
        out = {"feedback/gain": self.feedback.gain()}
        if self.feedback.sigma_of == "kernel":
            out["feedback/norm"] = self.feedback.operator_norm_estimate(st.weight)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the simulated network (no gradient through the spikes; train with ``ide``)."""
        a, _ = self.simulate(self.begin(x))
        return self.readout(a)


def _neuron(c) -> NeuronParams:
    """The neuron parameters of config ``c``; also checks its feedback bound against Vth."""
    if c.fb_norm_range >= c.threshold:
        warnings.warn(f"fb_norm_range {c.fb_norm_range:g} >= threshold {c.threshold:g}: the feedback may leave the "
                      "equilibrium map non-contractive (the rates' convergence to a unique fixed point is no longer "
                      "guaranteed); watch the solver residuals in the logs", RuntimeWarning,
                      stacklevel=3)
    return neuron_from(c.neuron, c.threshold, c.leak)


@MODELS.register("f400", F400Config, "IDE F400: FC 784->400 +BN, feedback FC 400->400 (spectral norm), readout",
                 returns=FeedbackSNN)
def f400(c: F400Config) -> FeedbackSNN:
    if c.sigma_of != "operator":
        raise ValueError(f"f400: sigma_of={c.sigma_of!r} applies to convolutional feedback; F400's feedback is "
                         "linear (its kernel is its operator, and its sigma is the power iteration's on that "
                         "matrix): leave sigma_of unset")
    enc = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(c.in_shape), c.hidden))
    _reference_init(enc[1])
    fb = nn.Linear(c.hidden, c.hidden, bias=False)
    _reference_init(fb)
    op = SpectralNormOperator(fb, (c.hidden,), g_init=c.fb_gain_init, norm_range=c.fb_norm_range,
                              power_iters=c.power_iters)
    return FeedbackSNN(enc, op, c.num_classes, c.in_shape, _neuron(c), c.time_steps, c.dropout,
                       surrogate=c.surrogate)


@MODELS.register("f64c5", F64C5Config,
                 "IDE F64C5: conv 64 k5 s2 +BN, feedback conv 64->64 k5 (spectral norm of the operator), readout",
                 returns=FeedbackSNN)
def f64c5(c: F64C5Config) -> FeedbackSNN:
    ch, h, w = c.in_shape
    enc = nn.Conv2d(ch, c.channels, c.kernel, stride=c.stride, padding=c.padding)
    _reference_init(enc)
    ho, wo = conv_out(h, c.kernel, c.stride, c.padding), conv_out(w, c.kernel, c.stride, c.padding)
    fb = nn.Conv2d(c.channels, c.channels, c.kernel, padding=c.kernel // 2, bias=False)
    _reference_init(fb)
    op = SpectralNormOperator(fb, (c.channels, ho, wo), g_init=c.fb_gain_init, norm_range=c.fb_norm_range,
                              power_iters=c.power_iters, sigma_of=c.sigma_of)
    return FeedbackSNN(enc, op, c.num_classes, c.in_shape, _neuron(c), c.time_steps, c.dropout,
                       surrogate=c.surrogate)


@dataclass
class MultiLayerFeedbackConfig(FeedbackSNNConfig):
    """AlexNet-F / CIFARNet-F: input conv (stride 2) + four conv layers, feedback from the last
    layer to the first through a stride-2 transposed convolution with one step of delay.

    ``inner_bn``: statistics of the inner BatchNorms in the differentiable map during training.
    ``batch`` (default): the batch statistics of the rates the map is applied to, with gradients
    through them, in the map, its Jacobian and the implicit backward alike (as the reference's
    train-mode map); the simulation, and BPTT's unrolled one, keep the running statistics.
    ``running``: the running statistics, as in the simulation (one consistent function) -- but
    then the gradient ignores the normalisation (it has a radial part along each inner conv's
    weights and a bias part), weights and means drift faster than the running statistics follow,
    the simulated rates leave the map's fixed point, and once the map's last layer is closed at
    the simulated rates (every clamp at 0) no gradient passes the readout: AlexNet-F / CIFAR-10
    at lr 0.05 died in its first epoch (10% test accuracy). Kept for ablations only."""

    in_shape: Tuple[int, ...] = (3, 32, 32)
    channels: Tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
    leak: float = 0.99
    inner_bn: Literal["running", "batch"] = "batch"


def multilayer_feedback_snn(c: MultiLayerFeedbackConfig) -> FeedbackSNN:
    """AlexNet-F / CIFARNet-F: five populations, input conv 3x3 s2, inner convs 3x3 with strides
    1, 2, 1, 1, transposed-conv feedback (3x3 s2, output padding 1) from the last to the first."""
    ch, h, w = c.in_shape
    C = list(c.channels)
    encoder = nn.Conv2d(ch, C[0], 3, 2, 1)
    strides = [1, 2, 1, 1]
    convs = [nn.Conv2d(C[i], C[i + 1], 3, strides[i], 1) for i in range(4)]
    size = (conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1))
    for s in strides:
        size = (conv_out(size[0], 3, s, 1), conv_out(size[1], 3, s, 1))
    for m in [encoder, *convs]:
        _reference_init(m)
    fb = nn.ConvTranspose2d(C[4], C[0], 3, 2, 1, output_padding=1, bias=False)
    _reference_init(fb)
    op = SpectralNormOperator(fb, (C[4],) + size, g_init=c.fb_gain_init, norm_range=c.fb_norm_range,
                              power_iters=c.power_iters, sigma_of=c.sigma_of)
    return FeedbackSNN(encoder, op, c.num_classes, c.in_shape, _neuron(c), c.time_steps, c.dropout,
                       layers=convs, feedback_dropout=False, inner_bn=c.inner_bn, surrogate=c.surrogate)


@MODELS.register("alexnet_f", MultiLayerFeedbackConfig,
                 "IDE AlexNet-F: conv 96 s2 + 4 conv layers (BN), transposed-conv feedback 256->96 (delay 1)",
                 returns=FeedbackSNN)
def alexnet_f(c: MultiLayerFeedbackConfig) -> FeedbackSNN:
    return multilayer_feedback_snn(c)


@dataclass
class CIFARNetFConfig(MultiLayerFeedbackConfig):
    channels: Tuple[int, int, int, int, int] = (128, 256, 512, 1024, 512)


@MODELS.register("cifarnet_f", CIFARNetFConfig, "IDE CIFARNet-F: AlexNet-F topology with 128/256/512/1024/512 channels",
                 returns=FeedbackSNN)
def cifarnet_f(c: CIFARNetFConfig) -> FeedbackSNN:
    return multilayer_feedback_snn(c)
