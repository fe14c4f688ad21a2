"""Exact backpropagation (``bp``) and surrogate-gradient BPTT (``bptt``): the baselines.

``bp``: ``loss = L(model(x), y)``; ``loss.backward()`` fills ``.grad`` with the exact gradient.

``bptt``: the spiking model is simulated for ``T`` steps with autograd recording every step;
``loss.backward()`` back-propagates through the unrolled simulation, the Heaviside spike's
derivative replaced by the model's surrogate (Neftci, Mostafa & Zenke 2019). Memory grows
linearly with ``T``: this is the baseline that IDE's implicit differentiation avoids. Time grows
linearly with ``T`` too: the models' neuron layers are one autograd node each
(:func:`bioprop.neurons.lif_multistep_fused`) whose backward runs the steps in reverse. On a GPU,
``cuda_graph: true`` captures the whole gradient computation (simulation, loss, backward) once per
batch shape and replays it (:class:`bioprop.rules.graphs.GraphedStep`); a refused capture warns and
falls back to the eager step.
"""

from __future__ import annotations

from dataclasses import dataclass
import warnings
from typing import Optional

import torch
from torch import nn

from ..models.protocols import SpikingModel
from .base import RULES, LossFn, Rule, StepOutput
from .graphs import GraphedStep

__all__ = ["Backprop", "BPTT", "BPConfig", "BPTTConfig"]


@dataclass
class BPConfig:
    """Exact backprop has no settings."""


@dataclass
class BPTTConfig:
    """``time_steps`` overrides the model's number of simulation steps in training steps only
    (``None``: the model's own); evaluation (``predict``) keeps the model's ``time_steps``. A
    spike-train input ``[T, B, ...]`` brings its own ``T``: the model refuses one whose ``T``
    differs from its ``time_steps``, and this rule one whose ``T`` differs from ``time_steps``.
    ``cuda_graph``: on a GPU, run the step as a captured CUDA graph (the model's neuron layers and
    loss must be capturable: no host synchronisation). Off by default until ``test_bptt_cuda_graph_step_equals_eager_step`` has
    passed on a GPU."""

    time_steps: Optional[int] = None
    cuda_graph: bool = False


class Backprop(Rule):
    """Exact backpropagation through ``model(x)``."""

    name = "bp"

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        logits = self.forward(model, x)
        loss = loss_fn(logits, y)
        self.backward(loss, scaler)
        return StepOutput(loss.detach(), logits.detach(), {})


class BPTT(Rule):
    """Surrogate-gradient backpropagation through time of a spiking model's ``run``."""

    name = "bptt"
    protocol = SpikingModel

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        if self.config.time_steps is not None and self.config.time_steps < 1:
            raise ValueError(f"bptt: time_steps must be >= 1, got {self.config.time_steps}")
        return model

    def __init__(self, config: Optional[BPTTConfig] = None):
        super().__init__(config if config is not None else BPTTConfig())
        self._graphed: Optional[GraphedStep] = None
        self._graphed_loss: Optional[LossFn] = None
        self._graph_failed = False

    @staticmethod
    def _compute(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
        """``(loss, logits, stats, grads)``, all tensors (graph-capturable)."""
        logits, record = model.run(x)
        loss = loss_fn(logits, y)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), logits.detach(), record.stats(), list(grads)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        T = self.config.time_steps
        own = model.time_steps
        in_shape = getattr(model, "in_shape", None)
        if T is not None and in_shape is not None and x.dim() == len(in_shape) + 2 and x.shape[0] != T:
            raise ValueError(f"bptt: rule.time_steps={T}, but the spike-train input has T={x.shape[0]} time steps, "
                             f"which set T themselves: leave rule.time_steps unset (or re-bin the input to {T} steps)")
        if T is not None:  # training only: the model's own T is restored for evaluation
            model.time_steps = T
        try:
            if self.config.cuda_graph and x.is_cuda and scaler is None and not self._graph_failed:
                if self._graphed is None or self._graphed.model is not model or self._graphed_loss is not loss_fn:
                    self._graphed = GraphedStep(lambda xs, ys: self._compute(model, xs, ys, loss_fn), model)
                    self._graphed_loss = loss_fn
                try:
                    loss, logits, stats, grads = self._graphed(x, y)
                except RuntimeError as e:  # capture refused: run eagerly from now on
                    warnings.warn(f"bptt: CUDA-graph capture failed ({e}); running the step eagerly "
                                  "(set rule.cuda_graph=false to skip the attempt)", RuntimeWarning, stacklevel=2)
                    self._graph_failed = True
                else:
                    for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
                        if g is not None:  # a graph's static output: copy it out
                            p.grad = g.clone() if p.grad is None else p.grad + g
                    return StepOutput(loss.clone(), logits.clone(), {k: v.clone() for k, v in stats.items()})
            logits, record = model.run(x)
        finally:
            model.time_steps = own
        loss = loss_fn(logits, y)
        self.backward(loss, scaler)
        return StepOutput(loss.detach(), logits.detach(), record.stats())


@RULES.register("bp", BPConfig, "exact backpropagation (baseline)")
def _bp(c: BPConfig) -> Rule:
    return Backprop(c)


@RULES.register("bptt", BPTTConfig, "surrogate-gradient BPTT through the unrolled T-step simulation (baseline)")
def _bptt(c: BPTTConfig) -> Rule:
    return BPTT(c)
