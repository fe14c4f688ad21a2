"""What a model offers each rule family: the explicit contracts between rules and models.

A rule never inspects a model's code, class name or ad-hoc attributes. It names the one
protocol it needs (``Rule.protocol``) and :func:`require` checks it once, in ``rule.prepare``;
a model that lacks a part gets a one-line error naming the missing part and the registered
models that do satisfy the protocol.

| protocol | what the model declares | rules that need it |
| --- | --- | --- |
| :class:`BlockModel` | ``blocks()``: the ordered block sequence ``f_1 .. f_L`` | pc, ekdaa |
| :class:`SpikingModel` | ``time_steps``; ``run(x) -> (logits, SpikeRecord)`` (differentiable) | bptt, emstdp |
| :class:`PSPModel` | TSSL-BP networks: ``simulate(x, neuron)``, ``weight_layers()``, PSP constants | tssl |
| :class:`EquilibriumModel` | ``sample_masks``, ``begin``, ``simulate``, ``equilibrium_map``, ``readout`` | ide |
| :class:`GraphModel` | ``graph()``: the connection graph, feedback edges included | NIR export |
| :class:`LayeredIFModel` | ``weight_layers()``, ``thresholds``, ``time_steps``, ``encode(x, generator)`` | emstdp |

Optional parts of an equilibrium model, used when present: :class:`StatisticsModel`
(``update_statistics(state)`` after the backward pass) and :class:`FeedbackDiagnostics`
(``feedback_stats(state)``, added to the step's stats). The per-batch state shared by the
simulation and the map is one typed :class:`EquilibriumState`; nothing is attached to it at run
time.

A ``torch.nn.Sequential`` is a block model too (its children are its blocks): see
:func:`blocks_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

from .base import MODELS, Edge, SpikeRecord

if TYPE_CHECKING:  # pragma: no cover
    from ..neurons.fastsim import SimOptions

__all__ = [
    "SpikeRecord",
    "Edge",
    "BlockModel",
    "SpikingModel",
    "PSPModel",
    "EquilibriumModel",
    "EquilibriumState",
    "StatisticsModel",
    "FeedbackDiagnostics",
    "GraphModel",
    "LayeredIFModel",
    "ProtocolError",
    "require",
    "satisfies",
    "missing_parts",
    "models_satisfying",
    "blocks_of",
]


class ProtocolError(TypeError):
    """A model lacks a part of the protocol a rule (or tool) needs."""


@runtime_checkable
class BlockModel(Protocol):
    """An ordered block sequence ``f_1 .. f_L`` whose composition ``f_L(...f_1(x))`` *is* the
    model's function (the logits): what predictive coding and EKDAA walk. Each block is an
    ``nn.Module`` applied to the previous block's output. Spiking networks are not block models
    (their blocks alone do not compute their function): they declare :class:`SpikingModel`."""

    def blocks(self) -> List[nn.Module]: ...


@runtime_checkable
class SpikingModel(Protocol):
    """A spiking network simulated for ``time_steps`` steps; ``run(x)`` is the differentiable
    (surrogate-gradient) simulation, returning logits and the per-layer :class:`SpikeRecord`."""

    time_steps: int

    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, SpikeRecord]: ...


@runtime_checkable
class PSPModel(Protocol):
    """A network of LIF neurons with synaptic response that pass PSPs (TSSL-BP's networks):
    ``simulate(x, neuron) -> (output PSPs [T, B, K], SpikeRecord)`` with any neuron function
    ``current[T, B, ...] -> (psp, spikes)`` in every layer, the weight layer of every block, and
    the neuron constants."""

    time_steps: int
    tau_m: float
    tau_s: float
    threshold: float

    def simulate(self, x: torch.Tensor, neuron: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
                 ) -> Tuple[torch.Tensor, SpikeRecord]: ...

    def weight_layers(self) -> List[nn.Module]: ...


@dataclass
class EquilibriumState:
    """Per-batch quantities of an equilibrium model, shared by the simulation, the equilibrium
    map and its Jacobian (computed once per batch by ``begin``; every field declared here).

    ``drive``: the input current of the first population (``F xbar`` after its BatchNorm and
    dropout mask), with its autograd graph; ``weight``: the feedback weight ``W`` (graph kept);
    ``masks``: the dropout masks (``"l<i>"`` multiplies the input current of population ``i``,
    ``"fb"`` the feedback current; ``None``: no dropout); ``drive_seq``: the per-step drive
    ``[T, B, ...]`` of a spike input (detached; ``None`` for a constant input);
    ``input_synops``: synaptic operations of a spike input through the encoder; ``rates``: the
    simulated (weighted) rates of the populations before the last one, detached (set by
    ``simulate``; read by ``update_statistics``)."""

    drive: torch.Tensor
    weight: torch.Tensor
    masks: Optional[Dict[str, torch.Tensor]] = None
    drive_seq: Optional[torch.Tensor] = None
    input_synops: Optional[torch.Tensor] = None
    rates: Optional[List[torch.Tensor]] = field(default=None)


@runtime_checkable
class EquilibriumModel(Protocol):
    """A feedback spiking network whose (weighted) firing rate ``a`` settles to the fixed point of
    an equilibrium map ``a = f(a; theta)`` (the ``ide`` rule):

    - ``sample_masks(batch, generator) -> masks | None``: dropout masks, one draw per batch;
    - ``begin(x, masks) -> EquilibriumState``: per-batch quantities, with autograd; ``x`` is
      ``[B, ...]`` (constant input) or ``[T, B, ...]`` (spike input);
    - ``simulate(state, time_steps=None, fast=None) -> (a_T, SpikeRecord)``: the spiking dynamics
      (called under ``no_grad``); ``fast`` (a :class:`bioprop.neurons.SimOptions`) selects the fast
      path, which must compute the same dynamics;
    - ``equilibrium_map(a, state, detach=False) -> f(a)``: differentiable; ``detach=True`` holds
      the parameters constant (the Jacobian ``df/da`` of the adjoint solve);
    - ``readout(a) -> logits``.
    """

    in_shape: Tuple[int, ...]

    def sample_masks(self, batch: int, generator: Optional[torch.Generator] = None
                     ) -> Optional[Dict[str, torch.Tensor]]: ...

    def begin(self, x: torch.Tensor, masks: Optional[Dict[str, torch.Tensor]] = None) -> EquilibriumState: ...

    def simulate(self, st: EquilibriumState, time_steps: Optional[int] = None,
                 fast: Optional["SimOptions"] = None) -> Tuple[torch.Tensor, SpikeRecord]: ...

    def equilibrium_map(self, a: torch.Tensor, st: EquilibriumState, detach: bool = False) -> torch.Tensor: ...

    def readout(self, a: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StatisticsModel(Protocol):
    """Optional part of an equilibrium model: statistics (BatchNorm) that the map holds fixed,
    updated once per training step after the backward pass."""

    def update_statistics(self, st: EquilibriumState) -> None: ...


@runtime_checkable
class FeedbackDiagnostics(Protocol):
    """Optional part of an equilibrium model: diagnostics of its feedback operator
    (``{name: 0-dim tensor}``, e.g. the clamped gain and the operator norm)."""

    def feedback_stats(self, st: EquilibriumState) -> Dict[str, torch.Tensor]: ...


@runtime_checkable
class GraphModel(Protocol):
    """A spiking model's connection graph (populations and the modules between them, feedback
    edges with their delays), as NIR export writes it."""

    def graph(self) -> List[Edge]: ...


@runtime_checkable
class LayeredIFModel(Protocol):
    """A fully connected network of non-leaky IF neurons with reset to zero and a rate-coded
    input (what EMSTDP trains): ``weight_layers()`` the dense layers in order (``nn.Linear``
    without bias, weight ``[out, in]``), ``thresholds`` one firing threshold per layer,
    ``time_steps`` the steps per sample, and ``encode(x, generator) -> spikes [T, B, n_0]`` the
    input spike trains."""

    time_steps: int
    thresholds: List[float]

    def weight_layers(self) -> List[nn.Module]: ...

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...


_DESCRIPTION = {
    BlockModel: "an ordered block sequence",
    SpikingModel: "a spiking network",
    PSPModel: "a TSSL-BP network of LIF neurons passing PSPs",
    EquilibriumModel: "a feedback spiking network with an equilibrium map",
    StatisticsModel: "statistics updated after the backward pass",
    FeedbackDiagnostics: "feedback-operator diagnostics",
    GraphModel: "a connection graph",
    LayeredIFModel: "a fully connected IF network with rate-coded input",
}


def _members(proto: type) -> List[str]:
    """The names a protocol declares (methods and annotated attributes), in declaration order."""
    names: List[str] = []
    for klass in reversed(proto.__mro__):
        if klass is object or klass is Protocol or not getattr(klass, "_is_protocol", False):
            continue
        for name in list(getattr(klass, "__annotations__", {})) + list(vars(klass)):
            if name.startswith("_") or name in names:
                continue
            names.append(name)
    return names


def missing_parts(obj: Any, proto: type) -> List[str]:
    """The parts of ``proto`` that ``obj`` (a model instance, or a model class) lacks: methods must
    be callable; attributes must exist (on a class: as a class attribute or an annotation)."""
    if proto is BlockModel and (isinstance(obj, nn.Sequential) or (isinstance(obj, type) and issubclass(obj, nn.Sequential))):
        return []
    out = []
    for name in _members(proto):
        declared = getattr(proto, name, None)
        if callable(declared):
            if not callable(getattr(obj, name, None)):
                out.append(f"{name}()")
        elif not hasattr(obj, name):
            if isinstance(obj, type) and any(name in getattr(k, "__annotations__", {}) for k in obj.__mro__):
                continue
            out.append(name)
    return out


def satisfies(obj: Any, proto: type) -> bool:
    """Whether ``obj`` (a model instance or class) declares every part of ``proto``."""
    return not missing_parts(obj, proto)


def models_satisfying(proto: type) -> List[str]:
    """Registered models whose class satisfies ``proto`` (from the class each registration
    declares; no model is built)."""
    return [name for name in MODELS.names() if (cls := MODELS.returns(name)) is not None and satisfies(cls, proto)]


def require(model: Any, proto: type, who: str) -> None:
    """Raise a one-line :class:`ProtocolError` when ``model`` lacks a part of ``proto``: it names
    the missing parts and the registered models that satisfy the protocol. ``who`` names the
    rule or tool (``"rule 'ide'"``)."""
    missing = missing_parts(model, proto)
    if not missing:
        return
    fits = models_satisfying(proto)
    name = getattr(model, "model_name", None) or type(model).__name__
    hint = f"; registered models that do: {', '.join(fits)}" if fits else ""
    article = "an" if proto.__name__[0] in "AEIOU" else "a"
    raise ProtocolError(f"{who} needs {article} {proto.__name__} ({_DESCRIPTION.get(proto, proto.__name__)}): "
                        f"{name} lacks {', '.join(missing)}{hint}")


def blocks_of(model: nn.Module) -> List[nn.Module]:
    """The declared block sequence of ``model`` (``model.blocks()``, or the children of a
    Sequential); a one-line :class:`ProtocolError` if it declares none."""
    if isinstance(model, nn.Sequential):
        return list(model)
    require(model, BlockModel, "this model")
    return list(model.blocks())
