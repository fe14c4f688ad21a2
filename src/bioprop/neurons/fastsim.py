"""Options of the fast simulation path of the feedback SNNs (the ``ide`` rule's ``fast`` mode).

The reference path of ``FeedbackSNN.simulate`` (:mod:`bioprop.models.feedback`) updates every population out of place
(:class:`bioprop.neurons.RatePopulation`) and applies each synaptic operator in the parameters'
dtype. The fast path (``simulate(..., fast=SimOptions(...))``) changes only how the same dynamics
are computed:

- the neurons update their state in place (:class:`bioprop.neurons.FusedRatePopulation`): about
  half the kernels, no allocations; bitwise equal to the reference (tested);
- ``precision='bf16'``: the synaptic operators run in bfloat16. Spikes are exactly 0/1 in any
  format, so only the weights and the summed currents round (relative error about 4e-3); the
  membranes and rates stay in fp32. The feedback weight is cast once per batch, and each inner
  convolution's inference BatchNorm is folded into its weight and bias once per batch (one kernel
  per layer and step instead of two). A neuron whose membrane lands within the rounding of its
  threshold may fire one step earlier or later, so rates differ slightly from fp32 (tested within a
  bound); the implicit backward (map, Jacobian, solver) stays in fp32.
- ``channels_last``: convolutions in NHWC memory layout (faster cuDNN kernels, mostly with bf16).

The equilibrium map and its gradient never use these options: they define the training signal.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SimOptions"]

Current = Callable[[torch.Tensor], torch.Tensor]


def _plain_conv(m: nn.Module) -> bool:
    """Whether ``m``'s forward is exactly ``F.conv2d(x, m.weight, m.bias, ...)``."""
    return type(m) is nn.Conv2d or (isinstance(m, nn.Conv2d) and getattr(type(m), "plain_forward", False))


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@dataclass(frozen=True)
class SimOptions:
    """``precision``: dtype of the synaptic operators (``fp32`` or ``bf16``); ``channels_last``:
    NHWC convolutions."""

    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")

    @property
    def exact(self) -> bool:
        """True when the operators compute exactly what the reference path computes."""
        return self.precision == "fp32" and not self.channels_last

    def spike_dtype(self) -> Optional[torch.dtype]:
        return torch.bfloat16 if self.precision == "bf16" else None

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach()
        if self.precision == "bf16":
            w = w.to(torch.bfloat16)
        return _layout(w, self.channels_last)

    def operator(self, op: nn.Module, weight: torch.Tensor, mask: Optional[torch.Tensor]) -> Current:
        """``s -> op(s, weight) * mask`` of a linear operator with ``apply_op(x, weight)``
        (e.g. :class:`~bioprop.models.spectral.SpectralNormOperator`)
        (weight cast and laid out once)."""
        w = self._weight(weight)
        cl = self.channels_last

        def current(s: torch.Tensor) -> torch.Tensor:
            out = op.apply_op(_layout(s, cl), w)
            return out * mask if mask is not None else out

        return current

    def conv_bn(self, conv: nn.Module, bn: nn.Module, mask: Optional[torch.Tensor],
                reference: Current) -> Current:
        """``s -> BN(conv(s)) * mask`` with BN's running statistics (inference form); ``reference``
        (the model's own function, which applies ``conv`` as its module) when the options change
        nothing.

        The simulation is forward-only, so a layer rule's module whose forward is exactly
        ``nn.Conv2d``'s (it declares ``plain_forward = True``, as the B-carrying convolutions do:
        only their backward differs) is computed from its weight here like a plain one; any other
        module, and a layer that is not a 2-d convolution, runs through ``reference`` with a
        warning, never silently as something else."""
        if self.exact:
            return reference
        if not _plain_conv(conv) or not isinstance(bn, nn.BatchNorm2d):
            warnings.warn(f"fast simulation: {type(conv).__name__} is not a plain Conv2d forward (no "
                          "plain_forward); it runs as its own module, without the precision / channels_last "
                          "options", RuntimeWarning, stacklevel=2)
            return reference
        cl = self.channels_last
        if self.precision == "fp32":
            w = _layout(conv.weight.detach(), cl)

            def current(s: torch.Tensor) -> torch.Tensor:
                z = F.conv2d(_layout(s, cl), w, conv.bias.detach() if conv.bias is not None else None,
                             conv.stride, conv.padding)
                z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(),
                                 False, 0.0, bn.eps)
                return z * mask if mask is not None else z

            return current
        # bf16: BN folded into the convolution (computed in fp32, cast once)
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            w16 = self._weight(conv.weight * scale.view(-1, 1, 1, 1))
            b16 = ((bias - bn.running_mean) * scale + bn.bias).to(torch.bfloat16)

        def current16(s: torch.Tensor) -> torch.Tensor:
            z = F.conv2d(_layout(s.to(torch.bfloat16), cl), w16, b16, conv.stride, conv.padding)
            return z * mask if mask is not None else z

        return current16
