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

**Model contract**: the rule trains any :class:`~bioprop.models.protocols.EquilibriumModel`
(``sample_masks``, ``begin``, ``simulate``, ``equilibrium_map``, ``readout``; the per-batch state
is an :class:`~bioprop.models.protocols.EquilibriumState`), checked once by ``prepare``. Optional
parts, used when the model declares them: ``update_statistics(state)``
(:class:`~bioprop.models.protocols.StatisticsModel`), called after the backward pass, and
``feedback_stats(state)`` (:class:`~bioprop.models.protocols.FeedbackDiagnostics`), added to the
step's stats. The registered models f400, f64c5, alexnet_f and cifarnet_f are one class,
:class:`bioprop.models.feedback.FeedbackSNN`.

**Data-parallel** (``torchrun``): the model's batch statistics are the global batch's (see
:mod:`bioprop.models.feedback`) and the adjoint solve's residuals are all-reduced, so every rank
stops at the same iteration as one process solving the whole batch; the step then equals the
single-process step on the concatenated batch (tests/test_distributed.py), dropout included:
each rank draws the global batch's masks and keeps its shard's rows.

**Layer rules**: stacked under ``ide`` (``rule: {name: fa, model_rule: ide}``, likewise ``kp``,
``wm``, ...), a layer rule's backward kernels carry the error through every converted layer of the
map, so through the adjoint solve ``(I - J^T) g = dL/da`` too: ``J^T`` uses ``B`` where the map
uses a converted layer. The feedback operator is not converted (its adjoint is ``W^T``).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .. import distributed as D
from ..equilibrium import SolverResult, SolverWarning, implicit, jacobian_vjp
from ..models.protocols import EquilibriumModel, EquilibriumState, FeedbackDiagnostics, SpikeRecord, StatisticsModel
from ..neurons.fastsim import SimOptions
from ..nonfinite import watch_many
from .base import RULES, LossFn, Rule, StepOutput
from .graphs import GraphedStep

__all__ = ["IDE", "IDEConfig"]


@dataclass
class IDEConfig:
    """``solver``: adjoint solver (the reference uses Broyden, 30 iterations); ``max_iter``/``tol``:
    its budget (evaluations of ``g -> J^T g + dL/da``) and tolerance on the relative residual
    ``||(I - J^T) g - dL/da|| / ||dL/da||``; ``memory``: Broyden's / Anderson's history length
    (``None``: 30 / 5); ``strict``: raise :class:`bioprop.equilibrium.SolverError` instead of
    warning when a solve misses ``tol``; ``time_steps``/``eval_time_steps``: override the model's
    T in training / evaluation; ``warn_every``: after the first unconverged solve, warn again
    every N-th one (each step's residual is in the stats regardless).

    Speed (none of these changes the training signal: the map, its Jacobian and the solve stay in
    fp32): ``fast`` (default) simulates with in-place neuron updates and keeps Broyden's history in
    batched buffers; ``fast=False`` is the plain-PyTorch reference path, tested equal (same
    spikes and rates bitwise in fp32, same gradients to rounding). With ``fast``:
    ``precision='bf16'`` runs the simulation's synaptic operators in bfloat16 (membranes and rates
    in fp32; inner BatchNorms folded into the convolutions); ``channels_last`` lays the
    simulation's convolutions out NHWC; ``cuda_graph`` captures the T-step simulation once per
    input shape as a CUDA graph and replays it (a refused capture warns and falls back). See
    :mod:`bioprop.neurons.fastsim`."""

    solver: Literal["broyden", "anderson", "fixed_point"] = "broyden"
    max_iter: int = 30
    tol: float = 1e-4
    memory: Optional[int] = None
    strict: bool = False
    time_steps: Optional[int] = None
    eval_time_steps: Optional[int] = None
    warn_every: int = 100
    fast: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    cuda_graph: bool = False


_NONFINITE_HINT = "check the input data and lower optim.lr"


class IDE(Rule):
    name = "ide"
    protocol = EquilibriumModel

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
        if not config.fast and (config.precision != "fp32" or config.channels_last or config.cuda_graph):
            raise ValueError("ide: precision, channels_last and cuda_graph are options of the fast path; "
                             "set rule.fast=true (or leave them at fp32 / false)")
        self.unconverged = 0
        self.solves = 0
        self._epoch_counts = [0, 0]  # issue 18: [solves, unconverged] of the current epoch
        self._graphs: Dict[tuple, GraphedStep] = {}
        self._graph_failed = False

    def simulate(self, model: nn.Module, st, time_steps: Optional[int]):
        """The T-step simulation (no autograd) on the configured path."""
        c = self.config
        if not c.fast:
            return model.simulate(st, time_steps)
        opts = SimOptions(c.precision, c.channels_last)
        if c.cuda_graph and st.drive.is_cuda and not self._graph_failed:
            try:
                return self._graphed_simulate(model, st, time_steps, opts)
            except RuntimeError as e:  # capture refused: simulate eagerly from now on
                warnings.warn(f"ide: CUDA-graph capture of the simulation failed ({e}); simulating eagerly "
                              "(set rule.cuda_graph=false to skip the attempt)", RuntimeWarning, stacklevel=3)
                self._graph_failed = True
        return model.simulate(st, time_steps, fast=opts)

    def _graphed_simulate(self, model: nn.Module, st: EquilibriumState, time_steps: Optional[int],
                          opts: SimOptions):
        """Replay the simulation as a CUDA graph: the state's tensors (drive, feedback weight,
        masks, ...) are the graph's inputs, the model's parameters and buffers are read in place."""
        fields = {f.name: getattr(st, f.name) for f in dataclasses.fields(st) if f.name != "rates"}
        leaves, spec = tree_flatten(fields)
        where = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        key = (id(model), time_steps, model.training, str(spec), opts)
        if key not in self._graphs:
            def run(*tensors: torch.Tensor):
                vals = list(leaves)
                for i, t in zip(where, tensors):
                    vals[i] = t
                st2 = copy.copy(st)
                for k, v in tree_unflatten(vals, spec).items():
                    setattr(st2, k, v)
                a, rec = model.simulate(st2, time_steps, fast=opts)
                return a, rec, st2.rates

            self._graphs[key] = GraphedStep(run, model)
        a, rec, rates = self._graphs[key](*[leaves[i].detach() for i in where])
        out = SpikeRecord({k: v.clone() for k, v in rec.spikes.items()}, dict(rec.neurons),
                          {k: v.clone() for k, v in rec.synops.items()}, rec.time_steps, rec.batch)
        if rates is not None:
            st.rates = [r.clone() for r in rates]
        return a.clone(), out

    def sample_masks(self, model: nn.Module, batch: int):
        """The step's dropout masks from the rule's generator. Under torchrun (every rank's rule
        generator is seeded alike) the masks of the global batch are drawn, as one process would draw
        them, and this rank keeps the rows of its shard (:func:`bioprop.distributed.shard_range`)."""
        if not D.is_distributed():
            return model.sample_masks(batch, self.generator)
        total = int(D.all_reduce(torch.tensor([batch], dtype=torch.int64)).item())
        a, b = D.shard_range(total)
        if b - a != batch:
            raise RuntimeError(f"ide: this rank holds {batch} samples, but its shard of the global batch of {total} "
                               f"is rows {a}..{b - 1}; shard batches with bioprop.distributed.shard_range")
        masks = model.sample_masks(total, self.generator)
        return None if masks is None else {k: v[a:b] for k, v in masks.items()}

    def _report(self, r: SolverResult) -> None:
        self.solves += 1
        self._epoch_counts[0] += 1  # issue 18: per-epoch count, summarised by epoch_summary()
        if r.converged:
            return
        self.unconverged += 1
        self._epoch_counts[1] += 1  # issue 18
        if self.unconverged == 1 or self.unconverged % max(1, self.config.warn_every) == 0:
            warnings.warn(
                f"ide: adjoint {r.solver} solve did not converge: relative residual {r.residual:.3g} "
                f"(worst sample {r.max_residual:.3g}) after {r.iters} iterations (tol {self.config.tol:g}); "
                f"this is unconverged solve {self.unconverged} of the {self.solves} solves so far (warned "
                f"again every rule.warn_every={self.config.warn_every} failures; each epoch's count is "
                "logged at its end). The best iterate is used; raise "
                "rule.max_iter, change rule.solver, or check that the feedback keeps the map contractive.",
                SolverWarning, stacklevel=3)

    def epoch_summary(self) -> Optional[str]:  # issue 18: called by the trainer at each epoch's end
        """One line on the epoch's unconverged adjoint solves (``None`` if all converged); resets."""
        solves, failed = self._epoch_counts
        self._epoch_counts = [0, 0]
        if not failed:
            return None
        return (f"ide: {failed} of {solves} adjoint solves this epoch missed tol {self.config.tol:g} "
                f"({self.unconverged} of {self.solves} since the start); the best iterates were used")

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        c = self.config
        masks = self.sample_masks(model, x.shape[-len(model.in_shape) - 1])
        st = model.begin(x, masks)
        with torch.no_grad():
            a, rec = self.simulate(model, st, c.time_steps)
        # issue 18: NaN/Inf membranes never spike, so the loss stays finite: flag the membranes'
        # input current and the rates on the device (read back by the trainer's periodic check)
        watch_many([("ide: the membrane drive (encoder output)", st.drive),
                    ("ide: the equilibrium rates", a)], _NONFINITE_HINT)
        # Jacobian graph (parameters constant) in at least fp32 with autocast off, so that the
        # adjoint solve can reach its tolerance under bf16/fp16 autocast too
        a0 = a.detach().to(torch.promote_types(a.dtype, torch.float32)).requires_grad_(True)
        with torch.enable_grad(), torch.autocast(a.device.type, enabled=False):
            fa = model.equilibrium_map(a0, st, detach=True)
        z = model.equilibrium_map(a, st)                      # gradient path into the parameters
        log: List[SolverResult] = []
        # torchrun: the solve's residuals (its stopping decision) are the global batch's
        a_out = implicit(z, a, jacobian_vjp(fa, a0), solver=c.solver, max_iter=c.max_iter, tol=c.tol,
                         strict=c.strict, warn=False, log=log, memory=c.memory, batched=c.fast,
                         reduce=D.all_reduce if D.is_distributed() else None)
        logits = model.readout(a_out)
        loss = loss_fn(logits, y)
        self.backward(loss, scaler)
        if isinstance(model, StatisticsModel):  # BatchNorm statistics that the map held fixed
            model.update_statistics(st)
        stats = dict(rec.stats())
        with torch.no_grad():
            # relative distance, with a floor of 1e-3 RMS rate on the norm (a silent layer would
            # otherwise turn rounding into a huge ratio)
            floor = 1e-3 * a.numel() ** 0.5
            stats["fixed_point/distance"] = (a - fa.detach()).norm() / a.norm().clamp_min(floor)
            if isinstance(model, FeedbackDiagnostics):
                stats.update(model.feedback_stats(st))
        if log:
            r = log[-1]
            self._report(r)
            stats.update({"solver/residual": r.residual, "solver/max_residual": r.max_residual,
                          "solver/iters": float(r.iters), "solver/converged": float(r.converged)})
        return StepOutput(loss.detach(), logits.detach(), stats)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.simulate(model, model.begin(x), self.config.eval_time_steps)
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
