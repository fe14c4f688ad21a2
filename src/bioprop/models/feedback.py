"""Feedback spiking networks of IDE (Xiao et al., NeurIPS 2021): F400 and F64C5.

One hidden population of (L)IF neurons receives a constant or spiking input through an encoder
``F`` (linear or convolution, bias, BatchNorm) and its own spikes through a feedback operator
``W`` with one step of delay (spectrally normalised, :mod:`.spectral`):

    u[t+1] = leak * (u[t] - Vth s[t]) + W s[t] + F x[t+1],   s[t] = H(u[t] - Vth)

(``leak = 1``: IF). The (leak-weighted) average firing rate ``a`` converges to (IF) or
approximates (LIF) the fixed point of the equilibrium map

    a = f(a) = clamp((W a + F xbar) / Vth, 0, 1),

with ``xbar`` the input's (leak-weighted) time average. The logits are a linear readout of ``a``.

The model declares what the ``ide`` rule needs and nothing more:

- :meth:`begin` computes the per-batch quantities once, with autograd: the drive ``F xbar``
  (BatchNorm statistics taken once, from ``F xbar``; the same statistics normalise every time
  step of a spike input), the feedback weight ``W`` (one power-iteration step in training), and
  applies the dropout masks (one mask for all time steps, the simulation and the map);
- :meth:`simulate` runs the T-step spiking dynamics (no autograd needed) and returns the rate;
- :meth:`equilibrium_map` applies ``f`` (differentiably, or with parameters detached for the
  Jacobian); :meth:`readout` maps rates to logits.

Dropout (rate ``dropout``) multiplies ``F x`` and ``W s`` by fixed masks, as the reference's
variational dropout does. Parameter counts equal the reference's (F400: 478,811; F64C5 MNIST:
229,643; F64C5 on 2x34x34 N-MNIST input: 290,763).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..neurons import FusedRatePopulation, NeuronParams, RatePopulation, heaviside, rate_init, rate_update, rate_value, spike_fn
from ..metrics import synaptic_operations
from .base import MODELS, Edge, SpikeRecord, check_input, conv_out, neuron_from
from .fastsim import SimOptions
from .spectral import SpectralNormOperator

__all__ = ["FeedbackSNN", "FeedbackState", "FeedbackSNNConfig", "F400Config", "F64C5Config"]


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


@dataclass
class FeedbackState:
    """Per-batch quantities shared by the simulation, the equilibrium map and its Jacobian."""

    drive: torch.Tensor                     # F xbar after BN and dropout mask, with autograd graph
    weight: torch.Tensor                    # feedback weight W, with autograd graph
    mask_s: Optional[torch.Tensor]          # dropout mask on W s (None: no dropout)
    drive_seq: Optional[torch.Tensor] = None  # [T, B, ...] per-step drive of a spike input (detached)
    input_synops: Optional[torch.Tensor] = None  # synaptic operations of a spike input through F


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


class FeedbackSNN(nn.Module):
    """One feedback population: encoder ``F`` + BN, feedback ``W`` (delay 1), linear readout."""

    in_shape: Tuple[int, ...]
    time_steps: int

    def __init__(self, encoder: nn.Module, feedback: SpectralNormOperator, num_classes: int,
                 in_shape: Tuple[int, ...], neuron: NeuronParams, time_steps: int, dropout: float):
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_shape = tuple(in_shape)
        self.encoder = encoder
        self.hidden_shape = feedback.in_shape
        self.bn = nn.BatchNorm2d(self.hidden_shape[0]) if len(self.hidden_shape) == 3 else nn.BatchNorm1d(self.hidden_shape[0])
        self.feedback = feedback
        n = 1
        for d in self.hidden_shape:
            n *= d
        self.classifier = nn.Linear(n, num_classes)
        self.neuron = neuron
        self.time_steps = int(time_steps)
        self.dropout = float(dropout)
        self.surrogate = "atan"

    # -- declared structure -----------------------------------------------------------------
    def graph(self) -> List[Edge]:
        return [Edge("input", "lif1", "encoder"), Edge("lif1", "lif1", "feedback", delay=1, feedback=True),
                Edge("lif1", "output", "classifier")]

    @property
    def threshold(self) -> float:
        return self.neuron.threshold

    # -- per-batch state --------------------------------------------------------------------
    def sample_masks(self, batch: int, generator: Optional[torch.Generator] = None) -> Optional[Dict[str, torch.Tensor]]:
        """Dropout masks (values 0 or 1/(1-p)) for ``F x`` and ``W s``: one draw per batch."""
        if not self.training or self.dropout == 0:
            return None
        dev = self.classifier.weight.device
        keep = 1 - self.dropout
        shape = (batch,) + self.hidden_shape
        return {k: torch.bernoulli(torch.full(shape, keep, device=dev), generator=generator) / keep
                for k in ("x", "s")}

    def input_average(self, x: torch.Tensor) -> torch.Tensor:
        """Time average (IF) or leak-weighted average (LIF) of a spike input ``x[T, B, ...]``:
        ``sum_t leak^(T-1-t) x[t] / sum_k leak^k``, the input's counterpart of the rate."""
        acc = rate_init(x[0])
        for t in range(x.shape[0]):
            acc = rate_update(acc, x[t], self.neuron.leak)
        return rate_value(acc)

    def begin(self, x: torch.Tensor, masks: Optional[Dict[str, torch.Tensor]] = None) -> FeedbackState:
        """Drive, feedback weight and masks for input ``x`` (``[B, ...]`` constant, ``[T, B, ...]`` spikes)."""
        timed = check_input(x, self.in_shape, type(self).__name__, allow_time=True)
        xbar = self.input_average(x) if timed else x
        z = self.encoder(xbar)
        bn = self.bn
        if self.training:
            dims = [0] + list(range(2, z.dim()))
            mean, var = z.mean(dims), z.var(dims, unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        # one BatchNorm application (and one running-statistics update) per batch
        drive = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, self.training, bn.momentum, bn.eps)
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
        mask_s = None
        if masks is not None:
            drive = drive * masks["x"]
            mask_s = masks["s"]
            if drive_seq is not None:
                drive_seq = drive_seq * masks["x"]
        return FeedbackState(drive, weight, mask_s, drive_seq, input_synops)

    # -- dynamics ---------------------------------------------------------------------------
    def feedback_current(self, s: torch.Tensor, st: FeedbackState, detach: bool = True) -> torch.Tensor:
        w = st.weight.detach() if detach else st.weight
        out = self.feedback(s, w)
        return out * st.mask_s if st.mask_s is not None else out

    @torch.no_grad()
    def simulate(self, st: FeedbackState, time_steps: Optional[int] = None,
                 fast: Optional[SimOptions] = None) -> Tuple[torch.Tensor, SpikeRecord]:
        """Run the spiking dynamics for T steps; return the (weighted) firing rate and spike record.

        ``fast=None``: the plain-PyTorch reference path (:class:`bioprop.neurons.RatePopulation`);
        ``fast=SimOptions(...)``: the fast path (in-place neuron updates, optional bf16 synapses
        and channels-last convolutions; equal to the reference in fp32, see :mod:`.fastsim`).
        """
        return self._simulate(st, time_steps, heaviside, detach=True, fast=fast)

    def _simulate(self, st: FeedbackState, time_steps: Optional[int], spike, detach: bool,
                  fast: Optional[SimOptions] = None):
        T = st.drive_seq.shape[0] if st.drive_seq is not None else (time_steps or self.time_steps)
        drive = st.drive.detach() if detach else st.drive
        dt = torch.promote_types(drive.dtype, torch.float32)  # membrane in fp32 under autocast too
        if fast is None:
            pop = RatePopulation(self.neuron, spike)
            feedback = lambda s: self.feedback_current(s, st, detach=detach)  # noqa: E731
        else:
            pop = FusedRatePopulation(self.neuron, fast.spike_dtype())
            feedback = fast.operator(self.feedback, st.weight.detach(), st.mask_s)
        for t in range(T):
            cur = drive if st.drive_seq is None else st.drive_seq[t]
            if pop.s is not None:
                cur = cur + feedback(pop.s)
            pop.step(cur.to(dt))
        smap = pop.spike_map()
        rec = SpikeRecord(time_steps=T, batch=drive.shape[0])
        rec.spikes["lif1"] = smap.sum()
        rec.neurons["lif1"] = int(drive[0].numel())
        # synaptic events: the spikes of steps 0..T-2 reach the next step through W; the readout
        # integrates every spike; a spike input drives the encoder
        rec.synops["feedback"] = self.feedback.synops((smap - pop.s.detach().sum(0).to(smap.dtype))[None])
        rec.synops["classifier"] = smap.sum() * self.classifier.out_features
        if st.input_synops is not None:
            rec.synops["encoder"] = st.input_synops
        return pop.rate(), rec

    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, SpikeRecord]:
        """Differentiable simulation for BPTT: surrogate spikes (``surrogate``), autograd through
        all T steps; logits from the readout of the (weighted) rate. (The spike input's per-step
        drive is computed without autograd, so BPTT with spike input trains the layers after it.)"""
        st = self.begin(x, self.sample_masks(x.shape[-len(self.in_shape) - 1]))
        a, rec = self._simulate(st, None, spike_fn(self.surrogate), detach=False)
        return self.readout(a), rec

    def equilibrium_map(self, a: torch.Tensor, st: FeedbackState, detach: bool = False) -> torch.Tensor:
        """``f(a) = clamp((W a + F xbar) / Vth, 0, 1)`` (with the dropout masks); ``detach``: the
        parameters are constants (for the Jacobian ``df/da``)."""
        drive = st.drive.detach() if detach else st.drive
        return torch.clamp((self.feedback_current(a, st, detach=detach) + drive) / self.threshold, 0, 1)

    def readout(self, a: torch.Tensor) -> torch.Tensor:
        return self.classifier(a.flatten(1))

    @torch.no_grad()
    def feedback_stats(self, st: FeedbackState) -> Dict[str, torch.Tensor]:
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


def _with_surrogate(model: nn.Module, c) -> nn.Module:
    model.surrogate = c.surrogate
    return model


@MODELS.register("f400", F400Config, "IDE F400: FC 784->400 +BN, feedback FC 400->400 (spectral norm), readout", returns=FeedbackSNN)
def f400(c: F400Config) -> nn.Module:
    if c.sigma_of != "operator":
        raise ValueError(f"f400: sigma_of={c.sigma_of!r} applies to convolutional feedback; F400's feedback is "
                         "linear (its kernel is its operator, and its sigma is the power iteration's on that "
                         "matrix): leave sigma_of unset")
    n_in = 1
    for d in c.in_shape:
        n_in *= d
    enc = nn.Sequential(nn.Flatten(), nn.Linear(n_in, c.hidden))
    _reference_init(enc[1])
    fb = nn.Linear(c.hidden, c.hidden, bias=False)
    _reference_init(fb)
    op = SpectralNormOperator(fb, (c.hidden,), g_init=c.fb_gain_init, norm_range=c.fb_norm_range,
                              power_iters=c.power_iters)
    return _with_surrogate(FeedbackSNN(enc, op, c.num_classes, c.in_shape, _neuron(c), c.time_steps, c.dropout), c)


@MODELS.register("f64c5", F64C5Config,
                 "IDE F64C5: conv 64 k5 s2 +BN, feedback conv 64->64 k5 (spectral norm of the operator), readout", returns=FeedbackSNN)
def f64c5(c: F64C5Config) -> nn.Module:
    ch, h, w = c.in_shape
    enc = nn.Conv2d(ch, c.channels, c.kernel, stride=c.stride, padding=c.padding)
    _reference_init(enc)
    ho, wo = conv_out(h, c.kernel, c.stride, c.padding), conv_out(w, c.kernel, c.stride, c.padding)
    fb = nn.Conv2d(c.channels, c.channels, c.kernel, padding=c.kernel // 2, bias=False)
    _reference_init(fb)
    op = SpectralNormOperator(fb, (c.channels, ho, wo), g_init=c.fb_gain_init, norm_range=c.fb_norm_range,
                              power_iters=c.power_iters, sigma_of=c.sigma_of)
    return _with_surrogate(FeedbackSNN(enc, op, c.num_classes, c.in_shape, _neuron(c), c.time_steps, c.dropout), c)


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


class MultiLayerFeedbackSNN(nn.Module):
    """Five (L)IF populations; layer 1 gets ``BN(F x) + W_fb s_5[t-1]``, layer ``l+1`` gets
    ``BN_l(F_l s_l[t])`` in the same step. Equilibrium map on the last layer:

        a_1 = clamp((W_fb a_5 + F xbar) / Vth),  a_{l+1} = clamp(BN_l(F_l a_l) / Vth),  f(a_5) = a_5.

    BatchNorm of the input layer uses the batch statistics once per step (as in :class:`FeedbackSNN`);
    the inner layers' BatchNorms use their running statistics in the simulation and the batch
    statistics of the map's own intermediate rates in the map, its Jacobian and the implicit
    backward (``inner_bn='batch'``; see :class:`MultiLayerFeedbackConfig`), and
    :meth:`update_statistics` moves the running statistics towards the batch statistics of the
    simulated rates after each step (the reference updates them from the map's train-mode pass).
    """

    in_shape: Tuple[int, ...]
    time_steps: int

    def __init__(self, c: MultiLayerFeedbackConfig):
        super().__init__()
        ch, h, w = c.in_shape
        C = list(c.channels)
        self.in_shape = tuple(c.in_shape)
        self.encoder = nn.Conv2d(ch, C[0], 3, 2, 1)
        self.bn = nn.BatchNorm2d(C[0])
        h1, w1 = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        strides = [1, 2, 1, 1]
        self.convs = nn.ModuleList([nn.Conv2d(C[i], C[i + 1], 3, strides[i], 1) for i in range(4)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(C[i + 1]) for i in range(4)])
        shapes = [(C[0], h1, w1)]
        for i in range(4):
            hh, ww = shapes[-1][1:]
            shapes.append((C[i + 1], conv_out(hh, 3, strides[i], 1), conv_out(ww, 3, strides[i], 1)))
        self.shapes = shapes
        for m in [self.encoder, *self.convs]:
            _reference_init(m)
        fb = nn.ConvTranspose2d(C[4], C[0], 3, 2, 1, output_padding=1, bias=False)
        _reference_init(fb)
        self.feedback = SpectralNormOperator(fb, shapes[4], g_init=c.fb_gain_init, norm_range=c.fb_norm_range,
                                             power_iters=c.power_iters, sigma_of=c.sigma_of)
        if self.feedback.out_shape != shapes[0]:
            raise ValueError(f"feedback output {self.feedback.out_shape} does not match layer 1 {shapes[0]}")
        self.classifier = nn.Linear(C[4] * shapes[4][1] * shapes[4][2], c.num_classes)
        self.neuron = _neuron(c)
        self.time_steps = int(c.time_steps)
        self.dropout = float(c.dropout)
        self.hidden_shape = shapes[4]
        self.surrogate = c.surrogate
        self.inner_bn = c.inner_bn

    def graph(self) -> List[Edge]:
        e = [Edge("input", "lif1", "encoder")]
        e += [Edge(f"lif{i + 1}", f"lif{i + 2}", f"convs.{i}") for i in range(4)]
        return e + [Edge("lif5", "lif1", "feedback", delay=1, feedback=True), Edge("lif5", "output", "classifier")]

    @property
    def threshold(self) -> float:
        return self.neuron.threshold

    input_average = FeedbackSNN.input_average
    feedback_stats = FeedbackSNN.feedback_stats

    def sample_masks(self, batch: int, generator: Optional[torch.Generator] = None):
        if not self.training or self.dropout == 0:
            return None
        dev = self.classifier.weight.device
        keep = 1 - self.dropout
        return {f"l{i}": torch.bernoulli(torch.full((batch,) + s, keep, device=dev), generator=generator) / keep
                for i, s in enumerate(self.shapes)}

    def begin(self, x: torch.Tensor, masks=None) -> FeedbackState:
        st = FeedbackSNN.begin(self, x, None)
        st.masks = masks  # type: ignore[attr-defined]
        if masks is not None:
            st.drive = st.drive * masks["l0"]
            if st.drive_seq is not None:
                st.drive_seq = st.drive_seq * masks["l0"]
        return st

    def _layer(self, i: int, a: torch.Tensor, st, detach: bool, batch_stats: bool = False) -> torch.Tensor:
        """Input current of layer ``i + 2`` from layer ``i + 1``'s output: BN with the running
        statistics, or with the batch statistics of ``a`` (``batch_stats``: the map under
        ``inner_bn='batch'``, its Jacobian included)."""
        conv, bn = self.convs[i], self.bns[i]
        w, b = (conv.weight.detach(), conv.bias.detach()) if detach else (conv.weight, conv.bias)
        gw, gb = (bn.weight.detach(), bn.bias.detach()) if detach else (bn.weight, bn.bias)
        z = F.conv2d(a, w, b, conv.stride, conv.padding)
        if batch_stats:
            z = F.batch_norm(z, None, None, gw, gb, True, 0.0, bn.eps)
        else:
            z = F.batch_norm(z, bn.running_mean, bn.running_var, gw, gb, False, 0.0, bn.eps)
        masks = getattr(st, "masks", None)
        return z * masks[f"l{i + 1}"] if masks is not None else z

    def _feedback(self, s: torch.Tensor, st, detach: bool) -> torch.Tensor:
        return self.feedback(s, st.weight.detach() if detach else st.weight)

    @torch.no_grad()
    def simulate(self, st, time_steps: Optional[int] = None, fast: Optional[SimOptions] = None):
        """The T-step dynamics (``fast``: see :meth:`FeedbackSNN.simulate`)."""
        return self._simulate(st, time_steps, heaviside, detach=True, fast=fast)

    def _simulate(self, st, time_steps: Optional[int], spike, detach: bool, fast: Optional[SimOptions] = None):
        T = st.drive_seq.shape[0] if st.drive_seq is not None else (time_steps or self.time_steps)
        drive = st.drive.detach() if detach else st.drive
        dt = torch.promote_types(drive.dtype, torch.float32)  # membrane in fp32 under autocast too
        masks = getattr(st, "masks", None)
        if fast is None:
            pops = [RatePopulation(self.neuron, spike) for _ in range(5)]
            feedback = lambda s: self._feedback(s, st, detach)  # noqa: E731
            layers = [lambda s, i=i: self._layer(i, s, st, detach) for i in range(4)]
        else:
            pops = [FusedRatePopulation(self.neuron, fast.spike_dtype()) for _ in range(5)]
            feedback = fast.operator(self.feedback, st.weight.detach(), None)
            layers = [fast.conv_bn(conv, bn, masks[f"l{i + 1}"] if masks is not None else None,
                                   reference=lambda s, i=i: self._layer(i, s, st, True))
                      for i, (conv, bn) in enumerate(zip(self.convs, self.bns))]
        for t in range(T):
            cur = drive if st.drive_seq is None else st.drive_seq[t]
            if pops[4].s is not None:
                cur = cur + feedback(pops[4].s)
            for l in range(5):
                if l > 0:
                    cur = layers[l - 1](pops[l - 1].s)
                pops[l].step(cur.to(dt))
        smaps = [p.spike_map() for p in pops]
        rec = SpikeRecord(time_steps=T, batch=drive.shape[0])
        for l in range(5):
            rec.spikes[f"lif{l + 1}"] = smaps[l].sum()
            rec.neurons[f"lif{l + 1}"] = int(math.prod(self.shapes[l]))
            if l < 4:  # synaptic events of layer l's spikes into layer l+1 (same step)
                rec.synops[f"convs.{l}"] = synaptic_operations(self.convs[l], smaps[l][None])
        s_last = pops[4].s
        rec.synops["feedback"] = self.feedback.synops((smaps[4] - s_last.detach().sum(0).to(smaps[4].dtype))[None])
        rec.synops["classifier"] = smaps[4].sum() * self.classifier.out_features
        if getattr(st, "input_synops", None) is not None:
            rec.synops["encoder"] = st.input_synops
        st.rates = [p.rate().detach() for p in pops]  # type: ignore[attr-defined]
        return pops[4].rate(), rec

    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, SpikeRecord]:
        """Differentiable simulation for BPTT (surrogate spikes, autograd through all T steps),
        feedback kept: the comparison the IDE paper makes."""
        st = self.begin(x, self.sample_masks(x.shape[-len(self.in_shape) - 1]))
        a, rec = self._simulate(st, None, spike_fn(self.surrogate), detach=False)
        if self.training:
            self.update_statistics(st)
        return self.readout(a), rec

    def equilibrium_map(self, a: torch.Tensor, st, detach: bool = False) -> torch.Tensor:
        drive = st.drive.detach() if detach else st.drive
        h = torch.clamp((self._feedback(a, st, detach) + drive) / self.threshold, 0, 1)
        batch_stats = self.inner_bn == "batch" and self.training
        for i in range(4):
            h = torch.clamp(self._layer(i, h, st, detach, batch_stats) / self.threshold, 0, 1)
        return h

    @torch.no_grad()
    def update_statistics(self, st) -> None:
        """Move the inner BatchNorms' running statistics towards the batch statistics of
        ``F_l a_l`` at the simulated rates (once per training step)."""
        rates = getattr(st, "rates", None)
        if not self.training or rates is None:
            return
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            z = conv(rates[i])
            F.batch_norm(z, bn.running_mean, bn.running_var, None, None, True, bn.momentum, bn.eps)
            bn.num_batches_tracked.add_(1)

    def readout(self, a: torch.Tensor) -> torch.Tensor:
        return self.classifier(a.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.simulate(self.begin(x))
        return self.readout(a)


@MODELS.register("alexnet_f", MultiLayerFeedbackConfig,
                 "IDE AlexNet-F: conv 96 s2 + 4 conv layers (BN), transposed-conv feedback 256->96 (delay 1)", returns=MultiLayerFeedbackSNN)
def alexnet_f(c: MultiLayerFeedbackConfig) -> nn.Module:
    return MultiLayerFeedbackSNN(c)


@dataclass
class CIFARNetFConfig(MultiLayerFeedbackConfig):
    channels: Tuple[int, int, int, int, int] = (128, 256, 512, 1024, 512)


@MODELS.register("cifarnet_f", CIFARNetFConfig, "IDE CIFARNet-F: AlexNet-F topology with 128/256/512/1024/512 channels", returns=MultiLayerFeedbackSNN)
def cifarnet_f(c: CIFARNetFConfig) -> nn.Module:
    return MultiLayerFeedbackSNN(c)
