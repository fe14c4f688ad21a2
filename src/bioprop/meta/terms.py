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

Which terms are checked, and against what: the paper's table of its ten terms could not be
read here, so every term is checked against the reference code (NeuralDynamicsAndComputing/
MetaLearning-Plasticity, ``optim.py``, ``generic_rule``; the history of that repository keeps
the whole pool). Its "learning rule template" (commit 476ae40, 2022-02-19) holds exactly our
F0-F8: the pseudo-gradient ``lr``, ``-y_l e_{l-1}^T`` (``tre``, vec '1'), ``-y_l y_{l-1}^T``
('2'), ``-e_l e_{l-1}^T`` ('3'), ``-y_l 1^T`` ('4'), ``-1 y_{l-1}^T`` ('5'), ``-e_l 1^T`` ('6'),
``-1 e_{l-1}^T`` ('7') and the decay ``W <- (1 - exp(dr)) W`` (``dr``); Oja (F9) was added in
commit e441d68 (vec '12') and its sign fixed to plus in 9ae134f; the release (v1.0.0,
``plasticity_rule``) keeps F0, F2, F9 under the paper's numbers. Like the reference, every term
but Oja's enters with a minus sign (``p.update -= theta * X``). The order F0..F9 is ours: the
reference code numbers them differently (its vec '3' is the paper's F2, '12' the paper's F9),
and only F0, F2 and F9 are known to carry the paper's numbers. Each term is also held against an
element-by-element hand computation by the tests (``tests/test_meta.py``).

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
    """F0 = -e_l y_{l-1}^T (pseudo-gradient; with B = W it is minus the gradient of the CE).

    Checked against the reference code (release ``optim.py:plasticity_rule``)."""
    return -(s.post_err.T @ s.pre)


@TERMS.register("post_act_pre_err", 1, checked=True)
def post_act_pre_err(s: TermInputs) -> torch.Tensor:
    """F1 = -y_l e_{l-1}^T (postsynaptic activity x presynaptic error).

    Checked against the reference code (``optim.py:generic_rule``, vec '1', ``tre``, commits
    476ae40-f27a297): ``p.update -= tre * activation[i + 1].T @ e[i]``."""
    return -(s.post.T @ s.pre_err)


@TERMS.register("error_hebb", 2, checked=True)
def error_hebb(s: TermInputs) -> torch.Tensor:
    """F2 = -e_l e_{l-1}^T (error-based Hebbian).

    Checked against the reference code (release ``optim.py:plasticity_rule``, vec '2'; vec '3'
    in the older ``generic_rule``)."""
    return -(s.post_err.T @ s.pre_err)


@TERMS.register("hebb", 3, checked=True)
def hebb(s: TermInputs) -> torch.Tensor:
    """F3 = -y_l y_{l-1}^T (plain Hebbian, with the reference's minus sign).

    Checked against the reference code (``optim.py:generic_rule`` at commit 476ae40, vec '2',
    ``fur``): ``p.update -= fur * activation[i + 1].T @ activation[i]``. (Until this check the
    term was ``+y_l y_{l-1}^T``; the sign only flips the sign of the learned theta_3.)"""
    return -(s.post.T @ s.pre)


@TERMS.register("post_err", 4, checked=True)
def post_err(s: TermInputs) -> torch.Tensor:
    """F4 = -e_l 1^T (postsynaptic error alone).

    Checked against the reference code (``optim.py:generic_rule``, vec '6', ``eit``, commits
    476ae40-f27a297): ``p.update -= eit * e[i + 1].T.repeat(1, p.shape[1])``."""
    return -(s.post_err.sum(0)[:, None].expand_as(s.weight))


@TERMS.register("pre_err", 5, checked=True)
def pre_err(s: TermInputs) -> torch.Tensor:
    """F5 = -1 e_{l-1}^T (presynaptic error alone).

    Checked against the reference code (``optim.py:generic_rule``, vec '7', ``nin``, commits
    476ae40-f27a297): ``p.update -= nin * e[i].repeat(p.shape[0], 1)``."""
    return -(s.pre_err.sum(0)[None, :].expand_as(s.weight))


@TERMS.register("post_act", 6, checked=True)
def post_act(s: TermInputs) -> torch.Tensor:
    """F6 = -y_l 1^T (postsynaptic activity alone, with the reference's minus sign).

    Checked against the reference code (``optim.py:generic_rule`` at commit 476ae40, vec '4',
    ``six``): ``p.update -= six * activation[i + 1].T.repeat(1, p.shape[1])``. (Was ``+y_l 1^T``.)"""
    return -(s.post.sum(0)[:, None].expand_as(s.weight))


@TERMS.register("pre_act", 7, checked=True)
def pre_act(s: TermInputs) -> torch.Tensor:
    """F7 = -1 y_{l-1}^T (presynaptic activity alone, with the reference's minus sign).

    Checked against the reference code (``optim.py:generic_rule`` at commit 476ae40, vec '5',
    ``svn``): ``p.update -= svn * activation[i].repeat(p.shape[0], 1)``. (Was ``+1 y_{l-1}^T``.)"""
    return -(s.pre.sum(0)[None, :].expand_as(s.weight))


@TERMS.register("decay", 8, checked=True)
def decay(s: TermInputs) -> torch.Tensor:
    """F8 = -W (weight decay).

    Checked against the reference code (``optim.py:generic_rule``, commits 476ae40-f27a297):
    ``params[k] = (1 - torch.exp(dr)) * p + p.update``, i.e. the same term with the coefficient
    parametrised as ``theta_8 = exp(dr) > 0`` (started at 5e-5 there). Here theta_8 is a plain
    coefficient like the others (it starts at 0 and may change sign); this difference is kept on
    purpose so that every term is meta-learned the same way."""
    return -s.weight


@TERMS.register("oja", 9, checked=True)
def oja(s: TermInputs) -> torch.Tensor:
    """F9 = y_l y_{l-1}^T - y_l y_l^T W (Oja), computed as y_l (y_{l-1} - W^T y_l)^T.

    Checked against the reference code (release ``optim.py:plasticity_rule``, vec '9', with the
    plus sign of commit 9ae134f)."""
    # y^T (pre - post W) equals post^T pre - (post^T post) W summed over the batch, without the
    # n_l x n_l matrix (170 x 170 x 784 multiply-adds a step for the first layer).
    return s.post.T @ (s.pre - s.post @ s.weight)


CHECKED_TERMS = tuple(n for n in TERMS.names() if TERMS.get(n).checked)
