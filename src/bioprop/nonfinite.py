"""Catch NaN/Inf in a run without a host synchronisation per step.

A :class:`FiniteMonitor` keeps, for every watched tensor of every step, a 0-dim reduction *on the
tensor's device* that is finite iff the tensor is (its sum); nothing is read back until
:meth:`FiniteMonitor.check`,
which the trainer calls every ``train.check_every`` steps, at the end of every epoch and before
every checkpoint. ``check`` concatenates the pending flags, reads them back once (the only
synchronisation) and raises :class:`NonFiniteError` naming the first offender: the step, the
tensor and, for per-parameter watches, the parameter (layer). On a GPU the per-step cost is
one small kernel per watch (a sum, or one multi-tensor L2 norm for a list of tensors) and no
synchronisation; ``benchmarks/nonfinite_overhead.py``
measures it. (A sum is used rather than ``isfinite().all()``, which is ~100x slower on a CPU.)

Any code that runs inside the trainer's step (a rule, a model) can report a tensor of its own with
the module-level :func:`watch`, which is a no-op when no monitor is active (the rule used on its
own, outside a trainer)::

    from bioprop.nonfinite import watch
    watch("ide: rates", a, hint="lower optim.lr")

A reduction that overflows also counts as non-finite: a sum beyond ~3e38, or for the list watches
(:meth:`FiniteMonitor.watch_tensors`) an L2 norm beyond it, i.e. fp32 entries beyond ~1e19:
weights or gradients that large are broken as well.

This module uses nothing else of bioprop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["NonFiniteError", "FiniteMonitor", "watch", "active_monitor"]


class NonFiniteError(FloatingPointError):
    """A watched tensor (input, loss, gradient, weight, a rule's state) holds NaN or Inf."""


@dataclass
class _Entry:
    where: str                      # "epoch 2, step 17"
    name: str                       # "input", "gradient", "ide: rates", ...
    values: List[torch.Tensor]      # 0-dim reductions, one per item (finite iff the tensor is)
    items: Optional[Sequence[str]]  # names of the watched tensors of a list watch
    hint: str


_ACTIVE: List["FiniteMonitor"] = []


def active_monitor() -> Optional["FiniteMonitor"]:
    """The monitor of the innermost :meth:`FiniteMonitor.active` block, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


def watch(name: str, tensor: torch.Tensor, hint: str = "") -> None:
    """Report ``tensor`` to the active monitor (no-op without one). Never synchronises."""
    m = active_monitor()
    if m is not None:
        m.watch(name, tensor, hint)


def _sum(t: torch.Tensor) -> torch.Tensor:
    """A reduction that is finite iff every entry of ``t`` is (NaN and +-Inf propagate)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32)
    return t.sum()


class FiniteMonitor:
    """Device-side NaN/Inf flags of named tensors, read back only by :meth:`check`.

    ``where`` is the label of the current step (set by the trainer, e.g. ``"epoch 1, step 3"``).
    ``enabled=False`` makes every method a no-op (the overhead benchmark's baseline).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.where = ""
        self._pending: List[_Entry] = []

    def __len__(self) -> int:
        return len(self._pending)

    @contextlib.contextmanager
    def active(self) -> Iterator["FiniteMonitor"]:
        """Make this the monitor that :func:`watch` reports to, within the block."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.remove(self)

    def watch(self, name: str, tensor: torch.Tensor, hint: str = "") -> None:
        """Flag whether ``tensor`` holds a NaN or Inf (one reduction on its device)."""
        if not self.enabled or not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            return
        if not (tensor.is_floating_point() or tensor.is_complex()):
            return
        # a new tensor even for a 0-dim input (the loss may live in a buffer that is reused)
        self._pending.append(_Entry(self.where, name, [_sum(tensor.detach())], None, hint))

    def watch_tensors(self, name: str, named: Sequence[Tuple[str, torch.Tensor]], hint: str = "") -> None:
        """Flag each of the ``(name, tensor)`` pairs (e.g. every parameter's gradient) with one
        multi-tensor norm (``torch._foreach_norm``): a flag per tensor, so that :meth:`check`
        names the layer."""
        if not self.enabled:
            return
        named = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.numel() > 0]
        if not named:
            return
        by_dev: dict = {}
        for n, t in named:
            if t.is_floating_point() or t.is_complex():
                by_dev.setdefault((t.device, t.dtype), []).append((n, t.detach()))
        for (dev, dtype), group in by_dev.items():
            ts = [t for _, t in group]
            if dtype in (torch.float32, torch.float64):
                sums = torch._foreach_norm(ts)  # one multi-tensor kernel (one call on a CPU)
            else:  # half precision: accumulate in fp32 (an fp16 norm overflows at 65504)
                sums = [torch.linalg.vector_norm(t, dtype=torch.float32) for t in ts]
            self._pending.append(_Entry(self.where, name, list(sums), [n for n, _ in group], hint))

    def clear(self) -> None:
        self._pending.clear()

    def first_bad(self) -> Optional[Tuple[str, str, Optional[str], str]]:
        """``(where, name, item, hint)`` of the first non-finite entry, or ``None``; clears the
        pending flags. One device-to-host read for all of them."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        by_dev: dict = {}
        for i, e in enumerate(pending):
            for j, v in enumerate(e.values):
                by_dev.setdefault(v.device, []).append((i, j, v))
        bad_entries = []
        for dev, vals in by_dev.items():
            bad = ~torch.isfinite(torch.stack([v for _, _, v in vals]))
            if not bool(bad.any()):
                continue
            first = int(bad.nonzero()[0, 0])
            bad_entries.append(vals[first][:2])
        if not bad_entries:
            return None
        i, j = min(bad_entries)
        e = pending[i]
        return e.where, e.name, (e.items[j] if e.items is not None else None), e.hint

    def check(self) -> None:
        """Raise :class:`NonFiniteError` if any pending flag is set (then clear them)."""
        bad = self.first_bad()
        if bad is None:
            return
        where, name, item, hint = bad
        what = f"{name} {item!r}" if item else name
        raise NonFiniteError(f"non-finite values (NaN or Inf) in {what} at {where}"
                             + (f": {hint}" if hint else ""))
