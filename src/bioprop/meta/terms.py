"""The pool of plasticity terms ``F_r`` of a meta-learned rule ``dW_l = sum_r theta_r F_r``.

Shervani-Tabar & Rosenbaum, "Meta-learning biologically plausible plasticity rules with random
feedback pathways", Nature Communications 14, 1805 (2023), arXiv 2210.16414; their pool has
R = 10 terms (Fig. 4d).

Each term is a small function of one layer's local quantities (a :class:`TermInputs`) that
returns a matrix of the layer's weight shape ``[n_l, n_{l-1}]``. Notation, for the layer
``W_l`` (``y_l = softplus(W_l y_{l-1})``, rows = postsynaptic units):

- ``y_{l-1}`` (``pre``) the presynaptic activity (``y_0`` = the input image);
- ``y_l`` (``post``) the postsynaptic activity; for the output layer the reference code uses
  ``softmax(z_L)`` here, and so do we;
- ``e_l`` (``post_err``) and ``e_{l-1}`` (``pre_err``) the errors of the recursion
  ``e_L = softmax(z_L) - onehot(y)``, ``e_{l-1} = (e_l B_l) * (1 - exp(-beta y_{l-1}))``,
  down to ``e_0`` at the input;
- ``W`` (``weight``) the layer's current weight.

Tensors carry a leading batch dimension (1 in the online inner loop); every outer product
``a b^T`` is summed over it (``a.T @ b``), as in the reference code.

Which terms are checked: F0 (pseudo-gradient), F2 (error-based Hebbian) and F9 (Oja) were read
from the reference code (``optim.py``, ``plasticity_rule``: the release keeps exactly these
three) and REFERENCES.md section 6, and each is held against a hand computation by the tests.
The other seven terms (F1, F3-F8) could NOT be checked against the paper's table (the paper
was not available here); they are the remaining local products of the same signals (pre/post
activity, pre/post error, constant and weight), each marked ``UNCHECKED`` in its docstring.
Their index in the pool therefore need not match the paper's numbering.

Register a new term with ``@TERMS.register("name", index=r)``; ``create_terms`` accepts names
or ``"F<r>"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

__all__ = ["TermInputs", "TERMS", "Term", "TermRegistry", "resolve_terms", "CHECKED_TERMS"]


@dataclass(frozen=True)
class TermInputs:
    """One layer's local signals (each ``[batch, n]``) and its weight ``[n_l, n_{l-1}]``."""

    pre: torch.Tensor
    post: torch.Tensor
    pre_err: torch.Tensor
    post_err: torch.Tensor
    weight: torch.Tensor


TermFn = Callable[[TermInputs], torch.Tensor]


@dataclass(frozen=True)
class Term:
    name: str
    index: int
    fn: TermFn
    checked: bool

    @property
    def equation(self) -> str:
        doc = (self.fn.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


class TermRegistry:
    """Name -> :class:`Term`; ``"F<r>"`` aliases the term of index ``r``."""

    def __init__(self) -> None:
        self._by_name: Dict[str, Term] = {}

    def register(self, name: str, index: int, checked: bool = False) -> Callable[[TermFn], TermFn]:
        def deco(fn: TermFn) -> TermFn:
            if name in self._by_name or any(t.index == index for t in self._by_name.values()):
                raise ValueError(f"plasticity term {name!r} / F{index} is registered twice")
            self._by_name[name] = Term(name, index, fn, checked)
            return fn

        return deco

    def names(self) -> List[str]:
        return [t.name for t in sorted(self._by_name.values(), key=lambda t: t.index)]

    def get(self, key: str) -> Term:
        if key in self._by_name:
            return self._by_name[key]
        if key[:1] in ("F", "f") and key[1:].isdigit():
            for t in self._by_name.values():
                if t.index == int(key[1:]):
                    return t
        valid = ", ".join(f"{t.name} (F{t.index})" for t in sorted(self._by_name.values(), key=lambda t: t.index))
        raise ValueError(f"unknown plasticity term {key!r}; available: {valid}")

    def __contains__(self, key: str) -> bool:
        try:
            self.get(key)
            return True
        except ValueError:
            return False


TERMS = TermRegistry()


def resolve_terms(keys: Sequence[str]) -> Tuple[Term, ...]:
    """The terms named by ``keys`` (names or ``F<r>``), in the given order; duplicates refused."""
    terms = tuple(TERMS.get(k) for k in keys)
    if not terms:
        raise ValueError("plasticity rule has no terms: list at least one, e.g. terms: [pseudo_grad]")
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"plasticity terms listed twice: {names}")
    if terms[0].name != "pseudo_grad":
        raise ValueError(f"the first plasticity term must be pseudo_grad (F0; its theta_0 is the learning rate "
                         f"the rule starts from), got {names[0]!r}")
    return terms


@TERMS.register("pseudo_grad", 0, checked=True)
def pseudo_grad(s: TermInputs) -> torch.Tensor:
    """F0 = -e_l y_{l-1}^T (pseudo-gradient; with B = W it is minus the gradient of the CE)."""
    return -(s.post_err.T @ s.pre)


@TERMS.register("post_act_pre_err", 1)
def post_act_pre_err(s: TermInputs) -> torch.Tensor:
    """F1 = -y_l e_{l-1}^T (UNCHECKED against the paper's table)."""
    return -(s.post.T @ s.pre_err)


@TERMS.register("error_hebb", 2, checked=True)
def error_hebb(s: TermInputs) -> torch.Tensor:
    """F2 = -e_l e_{l-1}^T (error-based Hebbian)."""
    return -(s.post_err.T @ s.pre_err)


@TERMS.register("hebb", 3)
def hebb(s: TermInputs) -> torch.Tensor:
    """F3 = y_l y_{l-1}^T (plain Hebbian; UNCHECKED against the paper's table)."""
    return s.post.T @ s.pre


@TERMS.register("post_err", 4)
def post_err(s: TermInputs) -> torch.Tensor:
    """F4 = -e_l 1^T (postsynaptic error alone; UNCHECKED against the paper's table)."""
    return -(s.post_err.sum(0)[:, None].expand_as(s.weight))


@TERMS.register("pre_err", 5)
def pre_err(s: TermInputs) -> torch.Tensor:
    """F5 = -1 e_{l-1}^T (presynaptic error alone; UNCHECKED against the paper's table)."""
    return -(s.pre_err.sum(0)[None, :].expand_as(s.weight))


@TERMS.register("post_act", 6)
def post_act(s: TermInputs) -> torch.Tensor:
    """F6 = y_l 1^T (postsynaptic activity alone; UNCHECKED against the paper's table)."""
    return s.post.sum(0)[:, None].expand_as(s.weight)


@TERMS.register("pre_act", 7)
def pre_act(s: TermInputs) -> torch.Tensor:
    """F7 = 1 y_{l-1}^T (presynaptic activity alone; UNCHECKED against the paper's table)."""
    return s.pre.sum(0)[None, :].expand_as(s.weight)


@TERMS.register("decay", 8)
def decay(s: TermInputs) -> torch.Tensor:
    """F8 = -W (weight decay; UNCHECKED against the paper's table)."""
    return -s.weight


@TERMS.register("oja", 9, checked=True)
def oja(s: TermInputs) -> torch.Tensor:
    """F9 = y_l y_{l-1}^T - y_l y_l^T W (Oja), computed as y_l (y_{l-1} - W^T y_l)^T."""
    # y^T (pre - post W) equals post^T pre - (post^T post) W summed over the batch, without the
    # n_l x n_l matrix (170 x 170 x 784 multiply-adds a step for the first layer).
    return s.post.T @ (s.pre - s.post @ s.weight)


CHECKED_TERMS = tuple(n for n in TERMS.names() if TERMS.get(n).checked)
