"""Spectral-norm reparameterisation of a linear operator's weight, for feedback connections.

``W = clamp(g, -r, r) V / sigma(V)`` (Miyato et al. 2018; IDE, Xiao et al. 2021, sec. 4.3), with
``sigma(V)`` the largest singular value of the *operator* ``x -> A_V x`` the layer applies:
for a linear layer the matrix ``V``; for a (transposed) convolution the convolution itself on
its input size, estimated by power iteration through the convolution and its adjoint (the
transposed convolution), with a persistent input-space vector. The IDE reference takes sigma of
the kernel reshaped to ``[out, in*k*k]``, which is not the norm of the convolution, so its bound
``||W|| <= 1`` does not hold for convolutional feedback; this module bounds the true operator.

The persistent power iteration (one step per training step, as in Miyato et al.) lags behind a
fast-changing weight: on F64C5 at lr 0.05 its sigma was 7% below the true norm after 3 epochs,
so ``||W||`` exceeded ``|g|`` by that much (``benchmarks/feedback_norm.py`` measures it on
checkpoints). ``sigma_of='fourier'`` (convolutions) divides instead by :func:`fourier_bound`, an
exact upper bound of the convolution's norm from its kernel's Fourier symbol: ``||W|| <= |g|``
always, at the price of a few per cent of slack.

``g`` is a learnable scalar, initialised *inside* ``(-r, r)`` (``g_init``, default 0.9) so that
it receives gradient from the first step; the reference initialises it to ``sigma(V) > 1``,
saturated at the clamp, where it gets no gradient.
"""

from __future__ import annotations

import copy
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import synaptic_operations

__all__ = ["SpectralNormOperator", "fourier_bound", "operator_norm", "power_norm"]


class SpectralNormOperator(nn.Module):
    """A Linear / Conv2d / ConvTranspose2d map (no bias) with a spectrally normalised weight.

    ``in_shape`` is the operator's input shape without the batch axis (``(C, H, W)`` for
    convolutions, ``(features,)`` for linear maps).
    """

    def __init__(self, layer: nn.Module, in_shape: Tuple[int, ...], g_init: float = 0.9,
                 norm_range: float = 1.0, power_iters: int = 1, init_iters: int = 50,
                 sigma_of: str = "operator"):
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"SpectralNormOperator: unsupported layer {type(layer).__name__}")
        if getattr(layer, "bias", None) is not None:
            raise ValueError("SpectralNormOperator: the layer must have no bias (a feedback operator is linear)")
        if not norm_range > 0:
            raise ValueError(f"norm_range (a model's fb_norm_range) must be > 0, got {norm_range}")
        if not -norm_range < g_init < norm_range:
            raise ValueError(f"g_init must lie inside (-{norm_range}, {norm_range}) to receive gradient, got {g_init}")
        if sigma_of not in ("operator", "kernel", "fourier"):
            raise ValueError(f"sigma_of must be 'operator', 'kernel' or 'fourier', got {sigma_of!r}")
        self.kind = type(layer).__name__
        # 'kernel' reproduces the reference: sigma of the weight reshaped to [dim0, rest], which
        # for a convolution is not its operator norm (kept for ablations against the reference)
        self.sigma_of = "operator" if self.kind == "Linear" else sigma_of
        self.opts = {}
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            self.opts = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            if isinstance(layer, nn.ConvTranspose2d):
                self.opts["output_padding"] = layer.output_padding
        if self.sigma_of == "fourier" and (tuple(self.opts.get("dilation", (1, 1))) != (1, 1) or self.opts.get("groups", 1) != 1):
            raise ValueError("sigma_of='fourier' supports convolutions without dilation or groups; use 'operator'")
        # the layer's geometry without its weights (for synaptic-operation counts); kept in a list
        # so that it is neither a submodule nor part of the state dict
        self._geometry = [copy.deepcopy(layer).to("meta")]
        self.weight_v = nn.Parameter(layer.weight.detach().clone())
        self.g = nn.Parameter(torch.tensor(float(g_init)))
        self.norm_range = float(norm_range)
        self.power_iters = int(power_iters)
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(self.apply_op(torch.zeros((1,) + self.in_shape, dtype=self.weight_v.dtype),
                                             self.weight_v.detach()).shape[1:])
        v_shape = (1, self.weight_v[0].numel()) if self.sigma_of == "kernel" else (1,) + self.in_shape
        v = torch.randn(v_shape, generator=torch.Generator().manual_seed(0)).to(self.weight_v.dtype)
        self.register_buffer("v", v / v.norm())  # (unused under 'fourier')
        if self.sigma_of == "fourier":
            sizes = [max(a, b) for a, b in zip(self.in_shape[1:], self.out_shape[1:])]
            self._grid = tuple(n + k - 1 for n, k in zip(sizes, self.weight_v.shape[2:]))
        self.power_iteration(init_iters)
        # 'kernel' mode: a second persistent vector follows the true operator norm of W, which the
        # kernel's sigma does not bound (diagnostics only; not saved, re-converges after a resume)
        if self.sigma_of == "kernel":
            w0 = torch.randn((1,) + self.in_shape, generator=torch.Generator().manual_seed(1)).to(self.weight_v.dtype)
            self.register_buffer("v_op", w0 / w0.norm(), persistent=False)

    # the operator A_V and its adjoint A_V^T
    def apply_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "Linear":
            return F.linear(x, w)
        if self.kind == "Conv2d":
            return F.conv2d(x, w, **self.opts)
        return F.conv_transpose2d(x, w, **self.opts)

    def apply_adjoint(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "Linear":
            return F.linear(y, w.t())
        o = {k: v for k, v in self.opts.items() if k != "output_padding"}
        if self.kind == "Conv2d":
            # output_padding restores the input size lost to the stride's rounding
            ref = F.conv_transpose2d(y, w, **o)
            pad = [s - r for s, r in zip(self.in_shape[1:], ref.shape[2:])]
            return F.conv_transpose2d(y, w, output_padding=tuple(pad), **o)
        return F.conv2d(y, w, **o)

    def _fwd(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.apply_op(v, w) if self.sigma_of == "operator" else v @ w.reshape(w.shape[0], -1).t()

    def _adj(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.apply_adjoint(u, w) if self.sigma_of == "operator" else u @ w.reshape(w.shape[0], -1)

    @torch.no_grad()
    def power_iteration(self, n: int) -> None:
        """``n`` steps of ``v <- A^T A v / ||A^T A v||`` on the persistent vector ``v`` (none under
        ``'fourier'``, whose sigma is computed exactly)."""
        if self.sigma_of == "fourier":
            return
        w = self.weight_v.detach()
        self.v.copy_(_power_steps(lambda x: self._fwd(x, w), lambda y: self._adj(y, w), self.v, n))

    def sigma(self) -> torch.Tensor:
        """Estimate of the largest singular value ``||A_V v||`` (differentiable in ``V``); under
        ``'fourier'`` the exact upper bound :func:`fourier_bound`."""
        if self.sigma_of == "fourier":
            return fourier_bound(self.weight_v, self._grid)
        return self._fwd(self.v, self.weight_v).norm()

    def weight(self, update: bool = False) -> torch.Tensor:
        """``clamp(g) V / sigma(V)``; with ``update``, first advance the power iteration."""
        if update and self.power_iters > 0:
            self.power_iteration(self.power_iters)
        g = self.g.clamp(-self.norm_range, self.norm_range)
        return g * self.weight_v / self.sigma()

    def gain(self) -> torch.Tensor:
        """The clamped gain ``clamp(g, -r, r)`` (detached); at ``+-r`` it receives no gradient."""
        return self.g.detach().clamp(-self.norm_range, self.norm_range)

    @torch.no_grad()
    def operator_norm_estimate(self, weight: torch.Tensor, iters: int = 1) -> torch.Tensor:
        """Estimate of the true operator norm ``||x -> op(x, weight)||``, for ``sigma_of='kernel'``
        (whose kernel sigma does not bound the convolution): ``iters`` steps of a persistent power
        iteration on the operator per call, a lower bound that converges over calls while the
        weight changes slowly. (Under ``sigma_of='operator'`` the bound is ``|clamp(g)|`` up to the
        lag of the normalisation's own power iteration: :func:`power_norm` from a fresh start, as
        ``benchmarks/feedback_norm.py`` does on checkpoints, measures what it really is.)"""
        if self.sigma_of != "kernel":
            raise ValueError("operator_norm_estimate tracks the operator of a sigma_of='kernel' weight; under "
                             "'operator' the bound is the clamped gain (see power_norm for the measured norm)")
        norm, v = power_norm(self, weight.detach(), self.v_op, max(1, iters))
        self.v_op.copy_(v)
        return norm

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.apply_op(x, weight)

    def synops(self, spikes: torch.Tensor) -> torch.Tensor:
        """Synaptic operations of binary ``spikes`` (or spike counts, any leading dims) sent
        through the operator (:func:`bioprop.metrics.synaptic_operations`)."""
        return synaptic_operations(self._geometry[0], spikes)

    def extra_repr(self) -> str:
        return f"{self.kind}, in_shape={self.in_shape}, norm_range={self.norm_range}, sigma_of={self.sigma_of}"


def fourier_bound(w: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``max_w ||K(w)||_2`` over the ``grid`` DFT frequencies of the kernel ``w[d0, d1, kh, kw]``
    (``K(w) = sum_pq w[:, :, p, q] exp(-i (w_h p + w_w q))``, a ``d0 x d1`` matrix per frequency);
    differentiable in ``w``.

    Any zero-padded convolution of an ``H x W`` input (any padding, any stride), and its transposed
    convolution, is a restriction of the circular convolution by ``w`` on a grid of at least
    ``(H + kh - 1) x (W + kw - 1)``, whose singular values are those of the ``K(w)``: so this is an
    upper bound of the operator norm, exact and with no power-iteration lag (for a stride-1 conv
    with 'same' padding it exceeds the true norm by a few per cent: 3.5% on a trained F64C5
    feedback). Real kernels have ``K(-w) = conj(K(w))``: half the spectrum suffices (rfft)."""
    k = torch.fft.rfft2(w, s=grid)                     # [d0, d1, gh, gw // 2 + 1]
    return torch.linalg.matrix_norm(k.permute(2, 3, 0, 1), ord=2).max()


@torch.no_grad()
def power_norm(op: SpectralNormOperator, weight: torch.Tensor, v: torch.Tensor, iters: int):
    """``iters`` power-iteration steps ``v <- A^T A v / ||A^T A v||`` on the operator
    ``A = x -> op(x, weight)`` from the input-space vector ``v``; returns ``(||A v||, v)``, a lower
    bound of ``||A||_2`` that converges to it."""
    v = _power_steps(lambda x: op.apply_op(x, weight), lambda y: op.apply_adjoint(y, weight),
                     v.to(weight.dtype), iters)
    return op.apply_op(v, weight).norm(), v


def _power_steps(fwd, adj, v: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` steps of ``v <- A^T A v / ||A^T A v||`` with ``A = fwd``, ``A^T = adj`` (the one loop of
    the normalisation's persistent iteration and of :func:`power_norm`)."""
    for _ in range(n):
        u = fwd(v)
        v = adj(u / u.norm().clamp_min(1e-12))
        v = v / v.norm().clamp_min(1e-12)
    return v


def operator_norm(op: SpectralNormOperator, weight: torch.Tensor) -> float:
    """The exact largest singular value of ``x -> op(x, weight)``, from its dense matrix (small ops only)."""
    n = 1
    for d in op.in_shape:
        n *= d
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device).reshape((n,) + op.in_shape)
    with torch.no_grad():
        mat = op.apply_op(eye, weight).reshape(n, -1).t()
    return float(torch.linalg.matrix_norm(mat, ord=2))
