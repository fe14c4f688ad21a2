"""Metrics shared by every rule: accuracy, firing rates, synaptic operations, gradient alignment.

Uses nothing else of bioprop.

- :func:`accuracy`: top-k accuracy of logits.
- :func:`synaptic_operations`: the number of synaptic events (SynOps) a spike tensor causes in the
  linear map that receives it: every active presynaptic spike counted once per synapse it drives,
  borders and strides of convolutions included (the map is applied to the spikes with all
  weights set to one, so the count is exact, not a fan-out estimate).
- :func:`cosine` / :func:`angle_degrees`: alignment of a rule's update with a reference gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["accuracy", "synaptic_operations", "cosine", "angle_degrees", "angle_degrees_tensor"]


@torch.no_grad()
def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list:
    """Fraction of samples whose target is among the ``k`` largest logits, for each ``k``."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred == target[:, None]
    return [float(hit[:, : min(k, maxk)].any(1).float().mean()) for k in topk]


@torch.no_grad()
def synaptic_operations(layer: nn.Module, spikes: torch.Tensor) -> torch.Tensor:
    """SynOps of ``spikes`` (binary, any leading dims, e.g. ``[T, B, ...]``) through ``layer``.

    Supported layers: ``nn.Linear``, ``nn.Conv2d``, ``nn.ConvTranspose2d``. Returns a 0-dim tensor:
    the total over all leading dims (divide by ``B`` for a per-sample figure).
    """
    if isinstance(layer, nn.Linear):
        return spikes.sum() * layer.out_features
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        x = spikes.reshape((-1,) + tuple(spikes.shape[-3:])).sum(1, keepdim=True)  # active inputs per position
        if layer.groups != 1:
            raise NotImplementedError("grouped convolutions are not supported")
        k = layer.kernel_size
        ones = torch.ones((1, 1) + tuple(k), device=x.device, dtype=x.dtype)
        if isinstance(layer, nn.Conv2d):
            if isinstance(layer.padding, str):
                raise NotImplementedError("string padding is not supported")
            reach = F.conv2d(x, ones, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
            out_ch = layer.out_channels
        else:
            reach = F.conv_transpose2d(x, ones, stride=layer.stride, padding=layer.padding,
                                       output_padding=layer.output_padding, dilation=layer.dilation)
            out_ch = layer.out_channels
        return reach.sum() * out_ch
    raise TypeError(f"synaptic_operations: unsupported layer {type(layer).__name__}")


def _cosine_tensor(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    return (a @ b) / (a.norm() * b.norm()).clamp_min(eps)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> float:
    """Cosine similarity of two tensors seen as flat vectors."""
    return float(_cosine_tensor(a, b, eps))


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two tensors seen as flat vectors, in degrees (0 = same direction)."""
    return float(angle_degrees_tensor(a, b))


def angle_degrees_tensor(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """:func:`angle_degrees` as a 0-dim float64 tensor on ``a``'s device: no host synchronisation,
    so a rule can log it every step on a GPU (the trainer averages such tensors over the epoch)."""
    return torch.rad2deg(torch.acos(_cosine_tensor(a, b, eps).clamp(-1.0, 1.0)))
