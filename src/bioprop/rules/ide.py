"""``ide``: implicit differentiation on the equilibrium state of a feedback SNN.

Xiao, Meng, Zhang, Wang & Lin, "Training Feedback Spiking Neural Networks by Implicit
Differentiation on the Equilibrium State", NeurIPS 2021 (arXiv 2109.14247).

One training step:

1. ``st = model.begin(x, masks)``: drive ``F xbar`` (BatchNorm statistics once per batch),
   feedback weight ``W``, dropout masks (one draw per batch, from the rule's generator);
2. simulate the spiking network for ``T`` steps **without autograd**: rate ``a_T``;
3. one differentiable application ``z = f(a_T; theta)`` of the equilibrium map;
4. the value passed on is ``a_T``; its gradient is implicit: solve ``g = J^T g + dL/da`` with
   ``J = df/da`` at ``a_T`` (only vector-Jacobian products; Broyden, Anderson or fixed-point
   iteration) and back-propagate ``g`` through ``z`` into ``theta``.

Memory does not grow with ``T`` and the spike function is never differentiated. Unlike the
reference code, a solve that misses its tolerance is reported (warning with the residual, or
:class:`bioprop.equilibrium.SolverError` with ``strict=True``) and never silently zeroes the
gradient; per-step diagnostics (solver residual and iterations, the simulated rate's distance
from the equilibrium map ``||a_T - f(a_T)|| / ||a_T||``, firing rates, spike counts) are
returned in the step's stats.

The implicit gradient: with ``L(readout(a*))`` and ``a* = f(a*; theta)``,

    dL/dtheta = (df/dtheta)^T g,    (I - J^T) g = dL/da*,    J = df/da at a*

(implicit function theorem), evaluated at the simulated ``a_T`` in place of ``a*``. For
``f(a) = clamp((W a + F xbar) / Vth, 0, 1)``, ``J = diag(1[0 < W a + F xbar < Vth]) W / Vth``.

**Model interface** (declared by the model, so the rule never inspects its code; single-layer
:class:`bioprop.models.feedback.FeedbackSNN`, multi-layer models extend it):

- ``in_shape``; ``sample_masks(batch, generator) -> masks | None`` (dropout, one draw per batch);
- ``begin(x, masks) -> state``: per-batch quantities shared by the simulation and the map (the
  drive ``F xbar`` with its BatchNorm, the feedback weight, the masks), computed once with autograd;
  ``x`` is ``[B, ...]`` (constant input) or ``[T, B, ...]`` (spike input, time first);
- ``simulate(state, time_steps) -> (a_T, SpikeRecord)``: the spiking dynamics, called under
  ``no_grad`` (a fast path may replace it without changing the rule);
- ``equilibrium_map(a, state, detach) -> f(a)``: differentiable; ``detach=True`` holds the
  parameters constant (the Jacobian ``df/da`` of the adjoint solve);
- ``readout(a) -> logits``; optionally ``update_statistics(state)``, called after the backward
  pass (BatchNorm statistics that the map held fixed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Literal, Optional

import torch
from torch import nn

from ..equilibrium import SolverResult, SolverWarning, implicit, jacobian_vjp
from .base import RULES, LossFn, Rule, StepOutput

__all__ = ["IDE", "IDEConfig"]

_INTERFACE = ("begin", "simulate", "equilibrium_map", "readout", "sample_masks")


@dataclass
class IDEConfig:
    """``solver``: adjoint solver (the reference uses Broyden, 30 iterations); ``max_iter``/``tol``:
    its budget (evaluations of ``g -> J^T g + dL/da``) and tolerance on the relative residual
    ``||(I - J^T) g - dL/da|| / ||dL/da||``; ``memory``: Broyden's / Anderson's history length
    (``None``: 30 / 5); ``strict``: raise :class:`bioprop.equilibrium.SolverError` instead of
    warning when a solve misses ``tol``; ``time_steps``/``eval_time_steps``: override the model's
    T in training / evaluation; ``warn_every``: after the first unconverged solve, warn again
    every N-th one (each step's residual is in the stats regardless)."""

    solver: Literal["broyden", "anderson", "fixed_point"] = "broyden"
    max_iter: int = 30
    tol: float = 1e-4
    memory: Optional[int] = None
    strict: bool = False
    time_steps: Optional[int] = None
    eval_time_steps: Optional[int] = None
    warn_every: int = 100


class IDE(Rule):
    name = "ide"
    requires_spiking = True

    def __init__(self, config: IDEConfig):
        super().__init__(config)
        if config.max_iter < 1:
            raise ValueError(f"ide: max_iter must be >= 1, got {config.max_iter}")
        if not config.tol > 0:
            raise ValueError(f"ide: tol must be > 0, got {config.tol}")
        if config.memory is not None and config.memory < 1:
            raise ValueError(f"ide: memory must be >= 1 (or None), got {config.memory}")
        for k in ("time_steps", "eval_time_steps"):
            v = getattr(config, k)
            if v is not None and v < 1:
                raise ValueError(f"ide: {k} must be >= 1 (or None for the model's own), got {v}")
        self.unconverged = 0
        self.solves = 0

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        missing = [m for m in _INTERFACE if not callable(getattr(model, m, None))]
        if missing:
            raise TypeError(f"rule 'ide' needs a feedback SNN that declares {', '.join(_INTERFACE)}; "
                            f"{type(model).__name__} lacks {', '.join(missing)} (use e.g. f400 or f64c5)")
        return model

    def _report(self, r: SolverResult) -> None:
        self.solves += 1
        if r.converged:
            return
        self.unconverged += 1
        if self.unconverged == 1 or self.unconverged % max(1, self.config.warn_every) == 0:
            warnings.warn(
                f"ide: adjoint {r.solver} solve did not converge: relative residual {r.residual:.3g} "
                f"(worst sample {r.max_residual:.3g}) after {r.iters} iterations (tol {self.config.tol:g}); "
                f"{self.unconverged} of {self.solves} solves so far. The best iterate is used; raise "
                "rule.max_iter, change rule.solver, or check that the feedback keeps the map contractive.",
                SolverWarning, stacklevel=3)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        c = self.config
        masks = model.sample_masks(x.shape[-len(model.in_shape) - 1], self.generator)
        st = model.begin(x, masks)
        with torch.no_grad():
            a, rec = model.simulate(st, c.time_steps)
        # Jacobian graph (parameters constant) in at least fp32 with autocast off, so that the
        # adjoint solve can reach its tolerance under bf16/fp16 autocast too
        a0 = a.detach().to(torch.promote_types(a.dtype, torch.float32)).requires_grad_(True)
        with torch.enable_grad(), torch.autocast(a.device.type, enabled=False):
            fa = model.equilibrium_map(a0, st, detach=True)
        z = model.equilibrium_map(a, st)                      # gradient path into the parameters
        log: List[SolverResult] = []
        a_out = implicit(z, a, jacobian_vjp(fa, a0), solver=c.solver, max_iter=c.max_iter, tol=c.tol,
                         strict=c.strict, warn=False, log=log, memory=c.memory)
        logits = model.readout(a_out)
        loss = loss_fn(logits, y)
        self.backward(loss, scaler)
        if hasattr(model, "update_statistics"):  # BatchNorm statistics that the map held fixed
            model.update_statistics(st)
        stats = dict(rec.stats())
        with torch.no_grad():
            # relative distance, with a floor of 1e-3 RMS rate on the norm (a silent layer would
            # otherwise turn rounding into a huge ratio)
            floor = 1e-3 * a.numel() ** 0.5
            stats["fixed_point/distance"] = (a - fa.detach()).norm() / a.norm().clamp_min(floor)
        if log:
            r = log[-1]
            self._report(r)
            stats.update({"solver/residual": r.residual, "solver/max_residual": r.max_residual,
                          "solver/iters": float(r.iters), "solver/converged": float(r.converged)})
        return StepOutput(loss.detach(), logits.detach(), stats)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        a, _ = model.simulate(model.begin(x), self.config.eval_time_steps)
        return model.readout(a)

    def state_dict(self):
        return {**super().state_dict(), "unconverged": self.unconverged, "solves": self.solves}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.unconverged = state.get("unconverged", 0)
        self.solves = state.get("solves", 0)


@RULES.register("ide", IDEConfig, "implicit differentiation on the equilibrium of a feedback SNN (IDE)")
def _ide(c: IDEConfig) -> Rule:
    return IDE(c)
