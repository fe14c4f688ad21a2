"""``pc``: predictive coding on any sequence of blocks (Rosenbaum, PLOS ONE 2022; Whittington &
Bogacz 2017; Millidge, Tschantz & Buckley 2022).

The model is an ordered block sequence ``f_1 .. f_L`` (``model.blocks()`` or an
``nn.Sequential``): ``vhat_0 = x``, ``vhat_l = f_l(vhat_{l-1})``, loss ``L(vhat_L, y)``. Beliefs
``v_l`` (l = 1 .. L-1) and prediction errors ``eps_l`` relax for ``n`` sweeps with step ``eta``;
the output error is ``eps_L = dL/dvhat_L``. Each block's update is the local vector-Jacobian
product of its own error: ``dtheta_l = (df_l / dtheta_l)^T eps_l``, written into ``.grad``.

Variants:

- ``fixed_pred`` (FixedPred): predictions and Jacobians stay at the feed-forward values ``vhat``.
  A sweep updates every belief with the errors of the previous sweep,
  ``v_l <- v_l + eta (eps_l - J_{l+1}(vhat_l)^T eps_{l+1})``, ``eps_l = vhat_l - v_l``; the
  parameter update uses the errors of the last sweep (computed before its own belief update, as
  the reference does). With ``eta = 1`` the error descends one block per sweep, and with
  ``n >= L`` (the default ``n = L``) every ``eps_l`` equals the back-propagated error ``dL/dvhat_l``:
  the update **is exact backprop**. With ``eta < 1`` the error to BP falls geometrically with ``n``.
- ``strict`` (Strict): errors ``eps_l = f_l(v_{l-1}) - v_l`` and Jacobians at the beliefs,
  gradient descent on the energy ``F = sum_l 1/2 ||eps_l||^2 + L(f_L(v_{L-1}), y)``; an
  approximation of BP that approaches it as the output error shrinks. A sweep is one Jacobi step
  ``v_l <- v_l + eta (eps_l - J_{l+1}(v_l)^T eps_{l+1})`` (all errors at the sweep's start).
  The parameter update (``strict_errors``): ``final`` (default) takes the errors at the final
  beliefs ``v^(n)`` (and ``eps_L = dL/dy`` there), i.e. ``dtheta_l = dF/dtheta_l`` at the point
  inference stopped; ``torch2pc`` reproduces Torch2PC exactly: the errors of the ``n``-th sweep,
  computed at ``v^(n-1)`` before its belief update (one step stale), with the Jacobians
  ``df_l/dtheta_l`` taken at the final beliefs ``v^(n)``, the convention issue 24 measured on the
  Torch2PC it ran. We keep ``final`` as the default because it is the gradient of the energy that
  inference minimised; the two agree as inference converges. The Torch2PC reachable here
  (``TorchSeq2PC.py`` at 85b5944, ``benchmarks/fidelity_pc_strict.py``) differs from both in its
  belief update: it adds ``+eta J_L^T dL/dy`` at the top hidden layer (its hidden errors are
  ``v - f(v)``), i.e. its beliefs ascend the loss term; our sweep with that one sign flipped
  reproduces its beliefs and errors exactly (checked), and its errors match ours only to first
  order in ``eta`` (7e-4 after 5 sweeps of 0.1 on a small tanh MLP). That version also takes the
  parameter Jacobians at the feed-forward values (the pre-2022 bug in REFERENCES.md).
- ``exact``: ``eps_l = dL/dvhat_l`` directly (back-propagated errors, local updates): BP.

Implementation notes. The errors are carried as tensors, never formed as differences of nearly
equal beliefs: ``eps_l <- (1 - eta) eps_l + eta J^T eps_{l+1}`` is the same update as the belief
rule above, without the cancellation that costs the reference ~5e-3 relative error in float32.
FixedPred skips the VJPs of errors that are still zero below the descending front and reuses a
VJP whose input error has not changed (with ``eta = 1`` each error settles once), so
FixedPred(1, L) needs about L VJPs instead of L^2/2. Inference is vectorised over the batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
from torch import nn

from ..metrics import angle_degrees
from ..models.protocols import BlockModel, blocks_of
from .base import RULES, LossFn, Rule, StepOutput, diagnostic_pass, rng_state
from .graphs import GraphedStep

__all__ = ["PredictiveCoding", "PCConfig", "pc_errors", "pc_chain_grads", "PCResult"]


@dataclass
class PCConfig:
    """``variant``: fixed_pred | strict | exact; ``eta``: inference step; ``n``: sweeps
    (``None`` = number of blocks, which with ``eta = 1`` makes ``fixed_pred`` exact BP);
    ``compare_every``: every N training steps also compute BP on the same batch and log the
    per-block relative error and angle of the PC update (0 = never; it costs a BP pass);
    ``fast``: ``fixed_pred`` with ``eta = 1`` takes one VJP per block for both the error below and
    the block's update (:func:`pc_chain_grads`); ``False`` runs the general sweep loop
    (:func:`pc_errors`) and a second pass for the updates: the reference path, equal to it;
    ``cuda_graph``: on a GPU, capture the step (inference and updates) as a CUDA graph per batch
    shape and replay it (:class:`bioprop.rules.graphs.GraphedStep`); inference is hundreds of small
    kernels, so this removes most of its cost. Steps that compare with BP, and fp16 runs with a
    gradient scaler, run eagerly. ``strict_errors`` (strict only): ``final`` (default) or
    ``torch2pc`` (the reference's one-step-stale errors; see the module docstring)."""

    variant: Literal["fixed_pred", "strict", "exact"] = "fixed_pred"
    eta: float = 1.0
    n: Optional[int] = None
    compare_every: int = 0
    fast: bool = True
    cuda_graph: bool = True
    strict_errors: Literal["final", "torch2pc"] = "final"


@dataclass
class PCResult:
    """Final errors ``eps[l]`` of blocks 1..L (index 0 = block 1), the block inputs at which the
    parameter VJPs are taken, the outputs built from them (autograd graphs), the loss, the
    energy after inference, the energy trace (strict) and the number of input VJPs used. Energies
    are detached 0-dim tensors on the device (no host synchronisation inside inference)."""

    eps: List[torch.Tensor]
    outputs: List[torch.Tensor]
    loss: torch.Tensor
    logits: torch.Tensor
    energy: torch.Tensor
    energies: List[torch.Tensor]
    vjps: int


def _local(block: nn.Module, inp: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(input leaf, block output)`` with a graph local to the block."""
    leaf = inp.detach().requires_grad_(True)
    return leaf, block(leaf)


def _vjp_input(out: torch.Tensor, leaf: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(out, leaf, e, retain_graph=True)
    return g


def _feedforward(blocks: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
    """Feed-forward pass with block-local graphs: ``(leaves, outputs, loss, dL/doutput)``."""
    leaves, outs = [], []
    h = x
    for b in blocks:
        leaf, out = _local(b, h)
        leaves.append(leaf)
        outs.append(out)
        h = out.detach()
    loss = loss_fn(outs[-1], y)
    (e_top,) = torch.autograd.grad(loss, outs[-1], retain_graph=True)
    return leaves, outs, loss, e_top


def _settled(eps: List[Optional[torch.Tensor]], outs: List[torch.Tensor], loss: torch.Tensor):
    """Errors with the still-zero ones materialised, and the energy they give."""
    final = [e if e is not None else torch.zeros_like(o) for e, o in zip(eps, outs)]
    return final, 0.5 * sum((e.detach() ** 2).sum() for e in final[:-1]) + loss.detach()


def pc_errors(blocks: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
              variant: str = "fixed_pred", eta: float = 1.0, n: Optional[int] = None,
              vinit: Optional[Sequence[torch.Tensor]] = None, strict_errors: str = "final") -> PCResult:
    """Run predictive-coding inference; return the errors that define the parameter update.

    ``vinit`` (strict only): initial beliefs ``v_1 .. v_{L-1}`` (default: the feed-forward values);
    ``strict_errors`` (strict only): ``final`` or ``torch2pc`` (module docstring).
    """
    L = len(blocks)
    if L < 1:
        raise ValueError("pc: the model has no blocks")
    n = L if n is None else int(n)
    if n < 1 or not eta > 0:
        raise ValueError(f"pc: need n >= 1 and eta > 0, got n={n}, eta={eta}")
    if variant not in ("fixed_pred", "strict", "exact"):
        raise ValueError(f"pc: unknown variant {variant!r}; choose fixed_pred, strict or exact")

    if strict_errors not in ("final", "torch2pc"):
        raise ValueError(f"pc: unknown strict_errors {strict_errors!r}; choose final or torch2pc")
    if variant == "strict":
        return _strict(blocks, x, y, loss_fn, eta, n, vinit, strict_errors == "torch2pc")

    leaves, outs, loss, e_top = _feedforward(blocks, x, y, loss_fn)
    eps: List[Optional[torch.Tensor]] = [None] * (L - 1) + [e_top]  # None = still zero
    vjps = 0
    if variant == "exact":
        for l in range(L - 2, -1, -1):
            eps[l] = _vjp_input(outs[l + 1], leaves[l + 1], eps[l + 1])
            vjps += 1
    else:
        # version[l] changes whenever eps[l] gets a new value (0: still zero); a VJP is reused
        # while its input error keeps the version it was computed from
        version = [0] * (L - 1) + [1]
        source = [-1] * L                      # version of eps[l+1] that eps[l] was computed from
        cache: Dict[int, Tuple[int, torch.Tensor]] = {}
        for _ in range(n - 1):  # the n-th sweep's belief update is not used by the parameter update
            backs: List[Optional[Tuple[int, torch.Tensor]]] = []
            for l in range(L - 1):            # Jacobi sweep: all VJPs use the previous errors
                up = l + 1
                if version[up] == 0:
                    backs.append(None)        # J^T 0 = 0: skipped below the descending front
                    continue
                if up not in cache or cache[up][0] != version[up]:
                    cache[up] = (version[up], _vjp_input(outs[up], leaves[up], eps[up]))
                    vjps += 1
                backs.append(cache[up])
            for l, b in enumerate(backs):
                if eta == 1.0:               # eps_l <- J^T eps_{l+1}
                    if b is None or source[l] == b[0]:
                        continue
                    eps[l], source[l] = b[1], b[0]
                elif b is None and eps[l] is None:
                    continue
                else:                        # eps_l <- (1 - eta) eps_l + eta J^T eps_{l+1}
                    cur = (1 - eta) * eps[l] if eps[l] is not None else None
                    add = eta * b[1] if b is not None else None
                    eps[l] = add if cur is None else (cur if add is None else cur + add)
                version[l] += 1
    final, energy = _settled(eps, outs, loss)
    return PCResult(final, outs, loss.detach(), outs[-1].detach(), energy, [], vjps)


def _strict(blocks, x, y, loss_fn, eta, n, vinit, stale: bool = False) -> PCResult:
    L = len(blocks)
    with torch.no_grad():
        v = []
        h = x
        for b in blocks[:-1]:
            h = b(h)
            v.append(h.clone())
    if vinit is not None:
        if len(vinit) != L - 1:
            raise ValueError(f"pc: vinit needs {L - 1} beliefs, got {len(vinit)}")
        v = [t.detach().clone() for t in vinit]
    energies: List[torch.Tensor] = []
    vjps = 0

    def errors(v):
        """eps_l = f_l(v_{l-1}) - v_l with graphs local to each block; eps_L = dL/doutput."""
        leaves, outs, eps = [], [], []
        inp = [x] + v
        for l, b in enumerate(blocks):
            leaf, out = _local(b, inp[l])
            leaves.append(leaf)
            outs.append(out)
        loss = loss_fn(outs[-1], y)
        (e_top,) = torch.autograd.grad(loss, outs[-1], retain_graph=True)
        eps = [outs[l].detach() - v[l] for l in range(L - 1)] + [e_top]
        energy = 0.5 * sum((e ** 2).sum() for e in eps[:-1]) + loss.detach()
        return leaves, outs, eps, loss, energy

    for _ in range(n):
        leaves, outs, eps, loss, energy = errors(v)
        energies.append(energy)
        for l in range(L - 1):  # dF/dv_l = -eps_l + J_{l+1}(v_l)^T eps_{l+1}
            back = _vjp_input(outs[l + 1], leaves[l + 1], eps[l + 1])
            vjps += 1
            v[l] = v[l] + eta * (eps[l] - back)
    stale_eps = eps
    leaves, outs, eps, loss, energy = errors(v)
    energies.append(energy)
    if stale:  # Torch2PC: the n-th sweep's errors (at v^(n-1)), Jacobians at the final beliefs
        eps = stale_eps
    return PCResult(eps, outs, loss.detach(), outs[-1].detach(), energy, energies, vjps)


def pc_chain_grads(blocks: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                   depth: int) -> Tuple[PCResult, Dict[nn.Parameter, torch.Tensor]]:
    """The fast path of ``fixed_pred`` with ``eta = 1`` (``depth = n``) and of ``exact``
    (``depth = L``): the same errors as :func:`pc_errors`, and the parameter updates with them.

    With ``eta = 1`` the error front descends one block per sweep and each error, once set, is
    final: ``eps_{l-1} = J_l^T eps_l``. So one vector-Jacobian product per block, taken with respect
    to the block's input *and* its parameters, gives both the error below and the block's update
    ``(df_l/dtheta_l)^T eps_l`` (the general path takes the input VJPs during inference and the
    parameter VJPs in a second pass). Blocks below the front (``l < L - depth``) have zero error:
    no VJP, a zero update. Returns the :class:`PCResult` (``outputs`` empty: no second pass needed) and
    the gradient of each trainable parameter that got one."""
    L = len(blocks)
    leaves, outs, loss, e_top = _feedforward(blocks, x, y, loss_fn)
    eps: List[Optional[torch.Tensor]] = [None] * (L - 1) + [e_top]
    grads: Dict[nn.Parameter, torch.Tensor] = {}
    lowest = max(0, L - depth)
    vjps = 0
    for l in range(L - 1, lowest - 1, -1):
        params = [p for p in blocks[l].parameters() if p.requires_grad]
        wanted = ([leaves[l]] if l > lowest else []) + params
        if not wanted:
            continue
        gs = torch.autograd.grad(outs[l], wanted, eps[l], allow_unused=True)
        if l > lowest:
            eps[l - 1], gs = gs[0], gs[1:]
            vjps += 1
        for p, g in zip(params, gs):
            if g is not None:
                grads[p] = g if p not in grads else grads[p] + g
    for b in blocks[:lowest]:  # below the front: zero error, so a zero update (as the general path)
        for p in b.parameters():
            if p.requires_grad and p not in grads:
                grads[p] = torch.zeros_like(p)
    final, energy = _settled(eps, outs, loss)
    return PCResult(final, [], loss.detach(), outs[-1].detach(), energy, [], vjps), grads


class PredictiveCoding(Rule):
    """Predictive coding (see the module docstring): ``fixed_pred`` with ``eta = 1``, ``n = L`` is BP."""

    name = "pc"
    protocol = BlockModel

    def __init__(self, config: PCConfig):
        super().__init__(config)
        if config.n is not None and config.n < 1 or not config.eta > 0:
            raise ValueError(f"pc: need n >= 1 (or None) and eta > 0, got n={config.n}, eta={config.eta}")
        self._graphed: Optional[GraphedStep] = None
        self._graph_failed = False
        self._vjps = 0

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = x
        for b in blocks_of(model):
            h = b(h)
        return h

    def _compute(self, blocks, params, x, y, loss_fn, scale: float = 1.0):
        """Inference and updates: ``(loss, logits, stats, grads)``, all tensors (graph-capturable)."""
        c = self.config
        if c.variant == "exact" or (c.variant == "fixed_pred" and c.eta == 1.0 and c.fast):
            depth = len(blocks) if c.variant == "exact" or c.n is None else int(c.n)
            r, by_param = pc_chain_grads(blocks, x, y, loss_fn, depth)
            grads = [by_param.get(p) for p in params]
            if scale != 1.0:
                grads = [g * scale if g is not None else None for g in grads]
        else:
            r = pc_errors(blocks, x, y, loss_fn, c.variant, c.eta, c.n, strict_errors=c.strict_errors)
            grads = list(torch.autograd.grad(r.outputs, params, [e * scale for e in r.eps], allow_unused=True))
        stats: Dict[str, Any] = {"pc/energy": r.energy}
        for l, e in enumerate(r.eps):
            stats[f"pc/err_norm/{l + 1}"] = e.detach().norm()
        self._vjps = r.vjps
        return r.loss, r.logits, stats, grads

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler=None) -> StepOutput:
        c = self.config
        blocks = blocks_of(model)
        params = [p for p in model.parameters() if p.requires_grad]
        compare = bool(c.compare_every) and (self.steps + 1) % c.compare_every == 0
        start = rng_state(model) if compare else None
        graphed = None
        if c.cuda_graph and x.is_cuda and scaler is None and not compare and torch.is_grad_enabled() \
                and not self._graph_failed:
            if self._graphed is None or self._graphed.model is not model:
                self._graphed = GraphedStep(lambda xs, ys: self._compute(blocks, params, xs, ys, loss_fn), model)
            try:
                graphed = self._graphed(x, y)
            except RuntimeError as e:  # capture refused (e.g. an op that syncs): run eagerly from now on
                warnings.warn(f"pc: CUDA-graph capture failed ({e}); running the step eagerly "
                              "(set rule.cuda_graph=false to skip the attempt)", RuntimeWarning, stacklevel=2)
                self._graph_failed = True
        if graphed is not None:
            loss, logits, stats, grads = graphed
            stats = dict(stats)
        else:
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            loss, logits, stats, grads = self._compute(blocks, params, x, y, loss_fn, scale)
        for p, g in zip(params, grads):
            if g is None:
                continue
            p.grad = g.clone() if p.grad is None else p.grad + g  # g may be a graph's static output
        stats["pc/vjps"] = float(self._vjps)
        self.steps += 1
        if compare:
            stats.update(self.compare(model, x, y, loss_fn, grads, params, start))
        return StepOutput(loss, logits, stats)

    def compare(self, model, x, y, loss_fn, grads, params, replay=None) -> Dict[str, float]:
        """Per-block relative error and angle (degrees) of the PC update against BP's gradient.

        The BP pass has no effect on training (:func:`~bioprop.rules.base.diagnostic_pass`) and,
        given ``replay`` (the random state before the step), uses the step's dropout masks."""
        with diagnostic_pass(model, replay):
            out = self.forward(model, x)
            bp = torch.autograd.grad(loss_fn(out, y), params, allow_unused=True)
        index = {id(p): i for i, p in enumerate(params)}
        stats: Dict[str, float] = {}
        for l, b in enumerate(blocks_of(model)):
            ids = [index[id(p)] for p in b.parameters() if id(p) in index]
            pc = [grads[i] for i in ids if grads[i] is not None]
            ref = [bp[i] for i in ids if bp[i] is not None]
            if not pc or not ref:
                continue
            a = torch.cat([g.flatten() for g in pc])
            r = torch.cat([g.flatten() for g in ref])
            stats[f"pc/relerr/{l + 1}"] = float((a - r).norm() / r.norm().clamp_min(1e-30))
            stats[f"pc/angle/{l + 1}"] = angle_degrees(a, r)
        return stats



@RULES.register("pc", PCConfig, "predictive coding (fixed_pred / strict / exact); fixed_pred eta=1, n=L is exact BP")
def _pc(c: PCConfig) -> Rule:
    return PredictiveCoding(c)
