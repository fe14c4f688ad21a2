"""Exact backpropagation (``bp``) and surrogate-gradient BPTT (``bptt``): the baselines.

``bp``: ``loss = L(model(x), y)``; ``loss.backward()`` fills ``.grad`` with the exact gradient.

``bptt``: the spiking model is simulated for ``T`` steps with autograd recording every step;
``loss.backward()`` back-propagates through the unrolled simulation, the Heaviside spike's
derivative replaced by the model's surrogate (Neftci, Mostafa & Zenke 2019). Memory grows
linearly with ``T``: this is the baseline that IDE's implicit differentiation avoids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..models.protocols import SpikingModel
from .base import RULES, LossFn, Rule, StepOutput

__all__ = ["Backprop", "BPTT", "BPConfig", "BPTTConfig"]


@dataclass
class BPConfig:
    """Exact backprop has no settings."""


@dataclass
class BPTTConfig:
    """``time_steps`` overrides the model's number of simulation steps in training steps only
    (``None``: the model's own); evaluation (``predict``) keeps the model's ``time_steps``. A
    spike-train input ``[T, B, ...]`` brings its own ``T``, which both use."""

    time_steps: Optional[int] = None


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

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        T = self.config.time_steps
        if T is None or T == model.time_steps:
            logits, record = model.run(x)
        else:  # training only: the model's own T is restored for evaluation
            own = model.time_steps
            model.time_steps = T
            try:
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
