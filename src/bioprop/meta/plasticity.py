"""The inner rule ``plasticity``: online updates ``dW_l = sum_r theta_r F_r`` through feedback B.

Network (Shervani-Tabar & Rosenbaum 2023; REFERENCES.md section 6): a bias-free MLP
``y_l = softplus_beta(W_l y_{l-1})`` for the hidden layers, ``z_L = W_L y_{L-1}`` at the output,
beta = 10. Errors of one sample (batch 1 in the inner loop):

    e_L     = softmax(z_L) - onehot(y)
    e_{l-1} = (e_l B_l) * (1 - exp(-beta y_{l-1}))          for l = L .. 1

(``1 - exp(-beta y)`` is softplus' derivative written in its output; the recursion runs down to
``e_0`` at the input, which the error-Hebb term of the first layer uses.) The update is

    W_l <- W_l + sum_r theta_r F_r(y_{l-1}, y_l, e_{l-1}, e_l, W_l)

out of place, so that the meta-gradient d(query loss)/d(theta) flows through every step.

Feedback ``B``:

- ``fixed``: a random matrix per layer (Xavier uniform, like W), drawn with W at every episode
  and never changed: feedback alignment when only theta_0 is non-zero.
- ``sym``: ``B = W`` at every step (the backprop baseline): with theta = (theta_0, 0, ...) the
  update is exactly ``-theta_0 dCE/dW`` (tested). The reference copies W into B through
  ``.data``, which cuts the meta-gradient through B; here B *is* W, so it does not (this only
  matters when the baseline is meta-trained, which the results do not do).
- ``kp``: B learned by the Kolen-Pollack rule of the Two Routes family (Akrout et al. 2019):
  ``B_l <- (1 - kp_decay) B_l + dW_l`` and ``W_l <- (1 - kp_decay) W_l + dW_l``, so that
  ``B - W`` shrinks by ``(1 - kp_decay)`` each step. No reference code offers this option.

Everything is functional: parameters are a dict ``{"layers.i.weight": W_i}`` applied with
:func:`torch.func.functional_call`; nothing is updated in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .terms import Term, TermInputs, resolve_terms

__all__ = ["PlasticityConfig", "PlasticNet", "Plasticity", "Weights", "error_signals", "angle_deg"]

Weights = Dict[str, torch.Tensor]


@dataclass
class PlasticityConfig:
    """The inner rule. ``hidden``: hidden widths (the paper's 170-130-100-70); ``beta``: softplus
    sharpness; ``terms``: the pool, names or ``F<r>`` (first must be ``pseudo_grad``);
    ``feedback``: ``fixed`` | ``sym`` | ``kp``; ``kp_decay``: the Kolen-Pollack decay per step."""

    hidden: List[int] = field(default_factory=lambda: [170, 130, 100, 70])
    beta: float = 10.0
    terms: List[str] = field(default_factory=lambda: ["pseudo_grad", "error_hebb", "oja"])
    feedback: Literal["fixed", "sym", "kp"] = "fixed"
    kp_decay: float = 0.0


class PlasticNet(nn.Module):
    """The bias-free softplus MLP; ``forward(x) -> (activations (y_0 .. y_{L-1}), logits z_L)``.

    It only gives the structure: its weights are replaced by a dict through ``functional_call``.
    """

    def __init__(self, sizes: Sequence[int], beta: float = 10.0):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"PlasticNet needs at least input and output sizes, got {list(sizes)}")
        self.sizes = tuple(int(s) for s in sizes)
        self.beta = float(beta)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
        acts = [x.flatten(1)]
        for layer in self.layers[:-1]:
            acts.append(F.softplus(layer(acts[-1]), beta=self.beta))
        return tuple(acts), self.layers[-1](acts[-1])

    def keys(self) -> List[str]:
        return [f"layers.{i}.weight" for i in range(len(self.layers))]


def error_signals(acts: Sequence[torch.Tensor], logits: torch.Tensor, y: torch.Tensor,
                  feedback: Sequence[torch.Tensor], beta: float) -> List[torch.Tensor]:
    """``[e_0, e_1, ..., e_L]``: ``e_L = softmax(z_L) - onehot(y)``,
    ``e_{l-1} = (e_l B_l) * (1 - exp(-beta y_{l-1}))`` (``feedback[l-1]`` is ``B_l``)."""
    e = [torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)]
    for a, b in zip(reversed(acts), reversed(feedback)):
        e.insert(0, (e[0] @ b) * (1 - torch.exp(-beta * a)))
    return e


def angle_deg(u: torch.Tensor, v: torch.Tensor) -> float:
    """Angle in degrees between two vectors (flattened); 90 if either is zero."""
    u, v = u.flatten().double(), v.flatten().double()
    nu, nv = u.norm(), v.norm()
    if nu == 0 or nv == 0:
        return 90.0
    c = torch.clamp((u @ v) / (nu * nv), -1.0, 1.0)
    return float(torch.rad2deg(torch.acos(c)))


class Plasticity:
    """The inner plasticity rule on a :class:`PlasticNet` of ``sizes`` (input, hidden..., output).

    >>> rule = Plasticity(PlasticityConfig(hidden=[8]), in_features=4, num_classes=3)
    >>> W, B = rule.init_weights(torch.Generator().manual_seed(0))
    >>> theta = rule.initial_theta(1e-3)
    >>> W, B = rule.step(W, B, torch.rand(1, 4), torch.tensor([2]), theta)
    """

    def __init__(self, config: PlasticityConfig, in_features: int, num_classes: int):
        if config.beta <= 0:
            raise ValueError(f"plasticity.beta must be > 0, got {config.beta}")
        if not 0 <= config.kp_decay < 1:
            raise ValueError(f"plasticity.kp_decay must be in [0, 1), got {config.kp_decay}")
        if config.kp_decay and config.feedback != "kp":
            raise ValueError(f"plasticity.kp_decay={config.kp_decay} only applies to feedback: kp "
                             f"(feedback is {config.feedback!r}); set it to 0 or feedback: kp")
        if any(h < 1 for h in config.hidden):
            raise ValueError(f"plasticity.hidden widths must be >= 1, got {config.hidden}")
        self.config = config
        self.terms: Tuple[Term, ...] = resolve_terms(config.terms)
        self.sizes = (int(in_features), *config.hidden, int(num_classes))
        self.net = PlasticNet(self.sizes, config.beta)
        self.keys = self.net.keys()

    @property
    def term_names(self) -> List[str]:
        return [t.name for t in self.terms]

    def initial_theta(self, theta0: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(theta0, 0, ..., 0)``, one entry a term (the reference's start)."""
        th = torch.zeros(len(self.terms), dtype=dtype)
        th[0] = theta0
        return th

    def init_weights(self, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                     device: Optional[torch.device] = None) -> Tuple[Weights, Weights]:
        """Forward weights W and feedback B (same shapes), Xavier uniform, drawn from ``generator``
        (W first, then B). For ``sym`` B is W (the same tensors)."""
        def xavier(n_out: int, n_in: int) -> torch.Tensor:
            r = math.sqrt(6.0 / (n_in + n_out))
            u = torch.rand(n_out, n_in, generator=generator, dtype=torch.float64)
            return ((2 * u - 1) * r).to(dtype=dtype, device=device)

        shapes = list(zip(self.sizes[1:], self.sizes[:-1]))
        W = {k: xavier(o, i) for k, (o, i) in zip(self.keys, shapes)}
        Bd = {k: xavier(o, i) for k, (o, i) in zip(self.keys, shapes)}
        if self.config.feedback == "sym":
            Bd = dict(W)
        return W, Bd

    def forward(self, W: Weights, x: torch.Tensor) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
        return functional_call(self.net, W, (x,))

    def feedback_of(self, W: Weights, B: Weights) -> List[torch.Tensor]:
        return [W[k] if self.config.feedback == "sym" else B[k] for k in self.keys]

    def errors(self, W: Weights, B: Weights, acts, logits, y) -> List[torch.Tensor]:
        return error_signals(acts, logits, y, self.feedback_of(W, B), self.config.beta)

    def updates(self, W: Weights, B: Weights, x: torch.Tensor, y: torch.Tensor,
                theta: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """``(dW per layer, errors e_0..e_L)`` for the batch ``(x, y)`` (the rule's one step)."""
        acts, logits = self.forward(W, x)
        e = self.errors(W, B, acts, logits, y)
        ys = list(acts) + [torch.softmax(logits, dim=1)]
        dW = []
        for l, k in enumerate(self.keys):
            s = TermInputs(pre=ys[l], post=ys[l + 1], pre_err=e[l], post_err=e[l + 1], weight=W[k])
            d = None
            for r, term in enumerate(self.terms):
                t = theta[r] * term.fn(s)
                d = t if d is None else d + t
            dW.append(d)
        return dW, e

    def step(self, W: Weights, B: Weights, x: torch.Tensor, y: torch.Tensor,
             theta: torch.Tensor) -> Tuple[Weights, Weights]:
        """One online step: new ``(W, B)`` dicts (out of place)."""
        dW, _ = self.updates(W, B, x, y, theta)
        fb = self.config.feedback
        if fb == "kp":
            keep = 1.0 - self.config.kp_decay
            W_new = {k: keep * W[k] + d for k, d in zip(self.keys, dW)}
            B_new = {k: keep * B[k] + d for k, d in zip(self.keys, dW)}
            return W_new, B_new
        W_new = {k: W[k] + d for k, d in zip(self.keys, dW)}
        return W_new, (dict(W_new) if fb == "sym" else B)

    def run(self, W: Weights, B: Weights, xs: torch.Tensor, ys: torch.Tensor, theta: torch.Tensor,
            checkpoint_every: int = 0) -> Tuple[Weights, Weights]:
        """Present ``xs[i], ys[i]`` one at a time (``len(xs)`` inner steps); return the final (W, B).

        ``checkpoint_every = n > 0`` wraps each run of n steps in
        :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): only the weights at segment
        boundaries are kept for the backward pass, and each segment is recomputed there, so the
        memory of the meta-gradient grows with ``len(xs) / n`` weight copies instead of with every
        step's activations and updates. The gradient is the same (tested)."""
        if xs.shape[0] != ys.shape[0]:
            raise ValueError(f"inner loop: {xs.shape[0]} images but {ys.shape[0]} labels")
        n = xs.shape[0]
        if checkpoint_every <= 0 or not torch.is_grad_enabled():
            for i in range(n):
                W, B = self.step(W, B, xs[i:i + 1], ys[i:i + 1], theta)
            return W, B
        from torch.utils.checkpoint import checkpoint

        nW = len(self.keys)
        learned_B = self.config.feedback == "kp"
        for start in range(0, n, checkpoint_every):
            stop = min(n, start + checkpoint_every)

            def segment(th, *flat, _a=start, _b=stop):
                Ws = dict(zip(self.keys, flat[:nW]))
                Bs = dict(zip(self.keys, flat[nW:])) if learned_B else B
                for i in range(_a, _b):
                    Ws, Bs = self.step(Ws, Bs, xs[i:i + 1], ys[i:i + 1], th)
                return tuple(Ws[k] for k in self.keys) + (tuple(Bs[k] for k in self.keys) if learned_B else ())

            flat_in = tuple(W[k] for k in self.keys) + (tuple(B[k] for k in self.keys) if learned_B else ())
            out = checkpoint(segment, theta, *flat_in, use_reentrant=False)
            W = dict(zip(self.keys, out[:nW]))
            if learned_B:
                B = dict(zip(self.keys, out[nW:]))
            elif self.config.feedback == "sym":
                B = dict(W)
        return W, B
