"""Model registry and the records models share (spike records, graph edges, shape helpers).

What a model offers each rule is declared by the protocols of :mod:`.protocols`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from ..config import Registry, from_dict, to_dict
from ..neurons import NeuronParams

__all__ = ["MODELS", "create_model", "count_parameters", "SpikeRecord", "Edge", "conv_out"]

MODELS: Registry[nn.Module] = Registry("model")


def create_model(name: str, config: Any = None, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create_model("spiking_convnet", time_steps=4)``.

    Unknown keyword arguments raise :class:`bioprop.config.ConfigError` naming the valid keys.
    """
    cls = MODELS.config_class(name)
    if config is None or kwargs:
        base = to_dict(config) if config is not None else {}
        config = from_dict(cls, {**base, **kwargs}, where=f"model[{name}]")
    model = MODELS.create(name, config)
    model.model_name = name  # type: ignore[attr-defined]
    # the resolved config, so that tools (NIR export) can rebuild the same architecture
    model.model_config = to_dict(config)  # type: ignore[attr-defined]
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution/pooling along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass
class Edge:
    """A connection of the graph: ``src -> dst`` through module ``via``; ``delay`` in time steps."""

    src: str
    dst: str
    via: str
    delay: int = 0
    feedback: bool = False


@dataclass
class SpikeRecord:
    """Per-layer spike statistics of one simulated batch (detached tensors on the model's device).

    ``spikes[name]`` is the total spike count of layer ``name`` over batch and time,
    ``neurons[name]`` its number of neurons per sample, ``time_steps`` and ``batch`` the sizes.
    """

    spikes: Dict[str, torch.Tensor] = field(default_factory=dict)
    neurons: Dict[str, int] = field(default_factory=dict)
    synops: Dict[str, torch.Tensor] = field(default_factory=dict)
    time_steps: int = 0
    batch: int = 0

    def add(self, name: str, s: torch.Tensor) -> None:
        """Record spikes ``s[T, B, ...]`` of layer ``name``."""
        self.spikes[name] = s.detach().sum()
        self.neurons[name] = int(s[0, 0].numel())

    def rates(self) -> Dict[str, torch.Tensor]:
        """Mean firing rate (spikes per neuron per time step) of each layer."""
        return {
            k: v / float(self.neurons[k] * self.time_steps * self.batch) for k, v in self.spikes.items()
        }

    def stats(self) -> Dict[str, torch.Tensor]:
        """Flat diagnostics: ``rate/<layer>``, ``spikes_per_sample/<layer>`` and
        ``synops_per_sample/<synapse>`` (synaptic events driven by spikes, see
        :func:`bioprop.metrics.synaptic_operations`)."""
        out: Dict[str, torch.Tensor] = {}
        for k, r in self.rates().items():
            out[f"rate/{k}"] = r
            out[f"spikes_per_sample/{k}"] = self.spikes[k] / float(self.batch)
        for k, v in self.synops.items():
            out[f"synops_per_sample/{k}"] = v / float(self.batch)
        return out


def neuron_from(kind: str, threshold: float, leak: float, reset: str = "subtract",
                detach_reset: bool = False) -> NeuronParams:
    """NeuronParams for ``kind`` in {'lif', 'if'} (IF ignores ``leak``)."""
    if kind not in ("lif", "if"):
        raise ValueError(f"neuron must be 'lif' or 'if', got {kind!r}")
    return NeuronParams(threshold=threshold, leak=1.0 if kind == "if" else leak, reset=reset,  # type: ignore[arg-type]
                        detach_reset=detach_reset)


def check_input(x: torch.Tensor, shape: Tuple[int, ...], model: str, allow_time: bool = False) -> bool:
    """Check ``x`` is ``[B, *shape]`` (or ``[T, B, *shape]`` when ``allow_time``); return ``True``
    when ``x`` carries a time axis. Raises a ``ValueError`` that names the expected shape."""
    nd = len(shape)
    if x.dim() == nd + 1 and tuple(x.shape[1:]) == tuple(shape):
        return False
    if allow_time and x.dim() == nd + 2 and tuple(x.shape[2:]) == tuple(shape):
        return True
    exp = f"[B, {', '.join(map(str, shape))}]" + (f" or [T, B, {', '.join(map(str, shape))}]" if allow_time else "")
    raise ValueError(f"{model}: input of shape {list(x.shape)} does not match the expected {exp}")


def check_time_steps(model: str, input_steps: int, model_steps: int) -> None:
    """A spike-train input sets T itself: refuse a model whose ``time_steps`` says otherwise (it
    would be silently ignored) with a one-line error that says what to change."""
    if input_steps != model_steps:
        raise ValueError(f"{model}: the spike-train input has T={input_steps} time steps but model.time_steps="
                         f"{model_steps}; set model.time_steps={input_steps} (or re-bin the input to {model_steps} steps)")
