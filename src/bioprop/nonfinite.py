"""Catch NaN/Inf in a run without a host synchronisation per step.

A :class:`FiniteMonitor` keeps, for every watch of every step, a small vector on the watched
tensors' device with one reduction per tensor, finite iff the tensor is; nothing is read back until
:meth:`FiniteMonitor.check`, which the trainer calls every ``train.check_every`` steps, at the end
of every epoch and before every checkpoint. ``check`` concatenates the pending vectors, reads them
back once (the only synchronisation) and raises :class:`NonFiniteError` naming the first offender:
the step, the tensor and, for per-parameter watches, the parameter (layer).

The trainer watches a whole step with one :meth:`FiniteMonitor.watch_step` call: the input batch,
the loss and every gradient cost one multi-tensor L2 norm (``torch._foreach_norm``), one stack and
no synchronisation, whatever the number of layers (the per-call cost, not the arithmetic,
dominates on small models: on a CPU a separate reduction per tensor costs ~3x as much). A lone
CPU scalar (the loss on a CPU) is read at once into a host float: no synchronisation to avoid
there, and fewer calls than a stack.
``benchmarks/nonfinite_overhead.py`` measures it. (``isfinite().all()`` would be ~100x slower on
a CPU.)

Any code that runs inside the trainer's step (a rule, a model) can report a tensor of its own with
the module-level :func:`watch`, which is a no-op when no monitor is active (the rule used on its
own, outside a trainer)::

    from bioprop.nonfinite import watch
    watch("ide: rates", a, hint="lower optim.lr")

(:func:`watch_many` reports several tensors with one set of kernels: cheaper than one
:func:`watch` each, since on small models the per-call cost dominates.)

A reduction that overflows also counts as non-finite: an L2 norm beyond ~3e38, i.e. fp32 entries
beyond ~1e19 (weights or gradients that large are broken as well). Half-precision tensors are
reduced in fp32 (an fp16 norm overflows at 65504).

This module uses nothing else of bioprop.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["NonFiniteError", "FiniteMonitor", "watch", "watch_many", "active_monitor"]


class NonFiniteError(FloatingPointError):
    """A watched tensor (input, loss, gradient, weight, a rule's state) holds NaN or Inf."""


@dataclass
class _Entry:
    where: str                                 # "epoch 2, step 17"
    values: Union[torch.Tensor, List[float]]   # one reduction per tensor, finite iff it is: a 1-d
    #                                            tensor on the device, or host floats (CPU scalars)
    items: Sequence[Tuple[str, Optional[str], str]]  # per item: (name, parameter or None, hint)
    lo: int = 0                                # this entry's items are values[lo:lo + len(items)]

    @property
    def device(self) -> torch.device:
        return self.values.device if isinstance(self.values, torch.Tensor) else torch.device("cpu")

    def flags(self) -> torch.Tensor:
        if isinstance(self.values, torch.Tensor):
            return self.values[self.lo:self.lo + len(self.items)]
        return torch.tensor(self.values[self.lo:self.lo + len(self.items)], dtype=torch.float64)


_ACTIVE: List["FiniteMonitor"] = []


def active_monitor() -> Optional["FiniteMonitor"]:
    """The monitor of the innermost :meth:`FiniteMonitor.active` block, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


def watch(name: str, tensor: torch.Tensor, hint: str = "") -> None:
    """Report ``tensor`` to the active monitor (no-op without one). Never synchronises."""
    m = active_monitor()
    if m is not None:
        m.watch(name, tensor, hint)


_FAST = (torch.float32, torch.float64)


def _reductions(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One value per tensor, finite iff the tensor is, stacked into a 1-d tensor (same device).

    0-dim fp32/fp64 tensors are taken as they are (the stack copies them), other fp32/fp64 tensors
    share one multi-tensor norm, half precision and complex tensors get their own fp32 norm."""
    vals: List[Optional[torch.Tensor]] = [None] * len(tensors)
    many = []
    with torch.no_grad():
        for i, t in enumerate(tensors):
            t = t.detach()
            if t.dtype in _FAST:
                if t.dim() == 0:
                    vals[i] = t
                else:
                    many.append(i)
            else:  # fp16/bf16 (an fp16 norm overflows at 65504), complex
                vals[i] = torch.linalg.vector_norm(t.abs() if t.is_complex() else t, dtype=torch.float32)
        if many:
            for i, v in zip(many, torch._foreach_norm([tensors[i].detach() for i in many])):
                vals[i] = v
        return torch.stack(vals)


def watch_many(named: Sequence[Tuple[str, torch.Tensor]], hint: str = "") -> None:
    """Report several ``(name, tensor)`` pairs with one set of kernels (no-op without a monitor)."""
    m = active_monitor()
    if m is not None:
        m.watch_step([(name, None, t, hint) for name, t in named])


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
        self.watch_step([(name, None, tensor, hint)])

    def watch_tensors(self, name: str, named: Sequence[Tuple[str, torch.Tensor]], hint: str = "") -> None:
        """Flag each of the ``(name, tensor)`` pairs (e.g. every parameter's gradient) so that
        :meth:`check` names the layer: one multi-tensor norm for all of them."""
        self.watch_step([(name, n, t, hint) for n, t in named])

    def watch_step(self, items, at: Optional[int] = None, head: int = 0) -> None:
        """Flag many tensors with one set of kernels: ``items`` are
        ``(name, parameter_or_None, tensor, hint)``; an error names ``name`` (and the parameter).

        The first ``head`` items are placed at position ``at`` of the pending flags, the others
        at the end. What :meth:`check` reports is the earliest bad flag in that order: the trainer
        watches a step's input, loss and gradients in one call after the step, and puts the
        input before what the rule watched during the step and the loss and gradients after it."""
        if not self.enabled:
            return
        t = items[0][2] if len(items) == 1 else None
        if isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype in _FAST and t.device.type == "cpu":
            # the common case on a CPU, every step: the loss alone. Its value is read now (there is
            # no synchronisation to avoid on a CPU, and it is one call instead of the ~3 of a stack;
            # reading it now also keeps the value if the tensor's buffer is reused later)
            name, item, _, hint = items[0]
            e = _Entry(self.where, [float(t)], [(name, item, hint)])
            if at is not None and head:
                self._pending.insert(at, e)
            else:
                self._pending.append(e)
            return
        by_dev: dict = {}
        for k, (name, item, t, hint) in enumerate(items):
            if isinstance(t, torch.Tensor) and t.numel() > 0 and (t.is_floating_point() or t.is_complex()):
                group = by_dev.setdefault(t.device, ([], [], []))
                group[0].append(t)
                group[1].append((name, item, hint))
                group[2].append(k < head)
        for tensors, labels, front in by_dev.values():
            vals = _reductions(tensors)
            n = sum(front)  # the head items come first in their device's group
            if n and at is not None:
                self._pending.insert(at, _Entry(self.where, vals, labels[:n]))
                at += 1
            elif n:
                self._pending.append(_Entry(self.where, vals, labels[:n]))
            if n < len(labels):
                self._pending.append(_Entry(self.where, vals, labels[n:], lo=n))

    def clear(self) -> None:
        self._pending.clear()

    def first_bad(self) -> Optional[Tuple[str, str, Optional[str], str]]:
        """``(where, name, parameter, hint)`` of the first non-finite entry, or ``None``; clears the
        pending flags. One device-to-host read per device for all of them."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        by_dev: dict = {}
        found = []
        for i, e in enumerate(pending):
            if isinstance(e.values, list):  # host floats: checked here, no tensor made
                bad_j = [j for j, v in enumerate(e.values[e.lo:e.lo + len(e.items)]) if not math.isfinite(v)]
                if bad_j:
                    found.append((i, bad_j[0]))
            else:
                by_dev.setdefault(e.device, []).append(i)
        for idx in by_dev.values():
            vals = [pending[i].flags() for i in idx]
            bad = ~torch.isfinite(torch.cat([v.double() for v in vals]))
            if not bool(bad.any()):
                continue
            flat = int(bad.nonzero()[0, 0])
            for i, v in zip(idx, vals):  # map the flat position back to (entry, item)
                if flat < v.numel():
                    found.append((i, flat))
                    break
                flat -= v.numel()
        if not found:
            return None
        i, j = min(found)
        name, item, hint = pending[i].items[j]
        return pending[i].where, name, item, hint

    def check(self) -> None:
        """Raise :class:`NonFiniteError` if any pending flag is set (then clear them)."""
        bad = self.first_bad()
        if bad is None:
            return
        where, name, item, hint = bad
        what = f"{name} {item!r}" if item else name
        raise NonFiniteError(f"non-finite values (NaN or Inf) in {what} at {where}"
                             + (f": {hint}" if hint else ""))
