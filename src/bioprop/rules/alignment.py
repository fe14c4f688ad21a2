"""Credit assignment without weight symmetry: the "Two Routes" family (Kunin et al., ICML 2020).

Every ``nn.Linear`` / ``nn.Conv2d`` of a model is converted (``rule.prepare``) into a layer that
holds a forward kernel ``W`` and a backward kernel ``B`` **of the same shape** (``weight`` and
``weight_b``). The forward pass uses ``W``; the error travels back through ``B``
(``dx = dy B`` for a linear layer, the transposed convolution with ``B`` for a convolution);
``dW`` is the ordinary local gradient. ``B = W`` is exact backprop. BatchNorm, pooling and
residual additions keep ordinary backprop.

``B`` learns by minimising a layer-local regulariser built from these primitives (``E`` = batch
mean over the layer input ``x``; ``A_W x`` = the layer's linear map with kernel ``W``, ``A_B^T``
= the backward map with ``B``; ``W`` is held constant inside ``R``):

    decay  = ||B||^2                       (the ||W||^2 half is constant in B)
    sparse = E ||A_B x||^2                 (+ E||A_W x||^2, constant)
    amp    = -E <A_W x, A_B x>
    null   = E ||A_B^T A_W x||^2           (the forward reconstruction term of the reference code)
    self   = -<W, B>_F

Rules (defaults of the reference code; fixed points for a Linear layer, in this module's
convention where ``B`` has ``W``'s shape):

| rule | R | x | fixed point |
| fa | - (B fixed random) | | |
| sign_symmetry | B = sign(W) * scale (uSF: scale = Xavier std sqrt(2 / (fan_in + fan_out)), as biotorch; brSF / frSF magnitudes) | | |
| kp | dB = dW, weight decay on both (the optimizer's) | | B - W -> 0 |
| wm | alpha decay + beta amp (1e-3, 1e-3) | N(0, sigma^2) | B = beta sigma^2 / (2 alpha) W |
| ia | alpha amp + beta null + gamma decay (2e-3, 1e-3, 1e-3) | noise | B = (alpha / 2 beta)(W W^T + gamma / (beta sigma^2) I)^-1 W |
| sa | alpha decay + beta self (1e-3, 2e-3) | - | B = beta / (2 alpha) W |
| aa | alpha sparse + beta amp (1e-3, 2e-3) | data | B = beta / (2 alpha) W on the data's span |

For convolutions ``E`` also averages over output positions (``position_mean``; the reference code
sums over them), and with zero padding the optimum is not a multiple of ``W`` (each kernel tap sees
a different number of positions). The gradient of ``R`` is added to ``B.grad`` each step (scaled by
``reg_scale``, and by the loss scale under fp16 AMP so that unscaling restores it). By default the
model's optimizer trains ``B`` beside ``W``; ``b_optimizer`` gives ``B`` an optimizer of its own
(the reference code's ``alignment_optimizer``), which the rule steps in ``after_step``.

The reference code's regularisers (neuroailab/Neural-Alignment, TF1) are reproduced by
``position_mean=False`` (sum over positions), ``reg_bias=True`` (its ``use_bias_forward`` /
``use_bias_backward``, on by default there) and ``batch_center`` as its
``batch_center_backward_input`` (the centred input feeds only ``A_B``) and
``noise_padding=reference``: for the convolutions the reference pads explicitly (its strided
convolutions: ``tf.pad``, then ``'VALID'``), its WM/IA noise has the padded input's shape, so noise
fills the padding ring and IA's reconstruction term ``A_B^T A_W x`` also reconstructs the ring. By
default (``noise_padding=zeros``) ours draws noise of the layer's (unpadded) input and convolves
with zero padding, so the ring is zero, as it is for the real activations the layer sees.
``benchmarks/fidelity_two_routes.py`` runs the reference beside the rule's step with these options
(values and gradients agree to 1e-15 in float64).
Sign symmetry follows biotorch (``sign_init``: the Xavier std by default).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import angle_degrees_tensor
from .base import RULES, LossFn, Rule, StepOutput, diagnostic_pass, rng_state

__all__ = ["FBLinear", "FBConv2d", "convert_layers", "fb_layers", "AlignmentRule", "AlignmentConfig",
           "regularizer", "regularizer_grad", "sign_scale"]


class _LinearFB(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, wb):  # type: ignore[override]
        ctx.save_for_backward(x, wb)
        ctx.has_bias = b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, wb = ctx.saved_tensors
        dx = dy @ wb.to(dy.dtype) if ctx.needs_input_grad[0] else None
        dw = dy.reshape(-1, dy.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(dy.dtype)
        db = dy.reshape(-1, dy.shape[-1]).sum(0) if ctx.has_bias else None
        return dx, dw, db, None


class _Conv2dFB(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, wb, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(x, wb)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = b is not None
        ctx.w_shape = w.shape
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        # one fused convolution backward (as BP's), with B in place of W: dx uses the kernel it is
        # given, dW and db do not depend on it; dx is skipped where the input needs no gradient
        x, wb = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        dx, dw, db = torch.ops.aten.convolution_backward(
            dy, x.to(dy.dtype), wb.to(dy.dtype), [ctx.w_shape[0]] if ctx.has_bias else None, list(stride),
            list(padding), list(dilation), False, [0, 0], groups, [need_x, need_w, need_b])
        return dx, dw, db if need_b else None, None, None, None, None, None


class FBLinear(nn.Linear):
    """``nn.Linear`` whose error travels back through ``weight_b`` (same shape as ``weight``)."""

    #: the forward is exactly ``nn.Linear``'s (only the backward differs): forward-only fast
    #: paths may compute it from ``weight`` and ``bias``
    plain_forward = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "use_w_backward", False):
            return F.linear(x, self.weight, self.bias)
        return _LinearFB.apply(x, self.weight, self.bias, self.weight_b)

    def forward_b(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return F.linear(x, kernel)

    def backward_map(self, y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return y @ kernel


class FBConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose error travels back through the transposed convolution with ``weight_b``."""

    #: the forward is exactly ``nn.Conv2d``'s (only the backward differs): forward-only fast
    #: paths may compute it from ``weight`` and ``bias``
    plain_forward = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "use_w_backward", False):
            return super().forward(x)
        return _Conv2dFB.apply(x, self.weight, self.bias, self.weight_b, self.stride, self.padding,
                               self.dilation, self.groups)

    def forward_b(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, None, self.stride, self.padding, self.dilation, self.groups)

    def backward_map(self, y: torch.Tensor, kernel: torch.Tensor, in_shape=None) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(in_shape, kernel, y, self.stride, self.padding, self.dilation,
                                          self.groups)


def fb_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if isinstance(m, (FBLinear, FBConv2d)):
            yield name, m


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _exact_transport_layers(model: nn.Module) -> List[str]:
    """Modules with weights of their own that the conversion leaves alone (e.g. a feedback SNN's
    spectrally normalised feedback operator, a transposed convolution): their backward keeps
    using their own weights. Normalisation layers are meant to keep backprop and are not listed."""
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
            and not isinstance(m, (FBLinear, FBConv2d) + _NORMS)]


def _b_params(model: nn.Module) -> List[nn.Parameter]:
    """The backward kernels B of every converted layer."""
    return [layer.weight_b for _, layer in fb_layers(model)]


def _init_like(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent draw from PyTorch's default init of ``w`` (kaiming uniform, a = sqrt(5))."""
    fan_in = w[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype) * 2 - 1) * bound


def sign_scale(w: torch.Tensor, init: str = "xavier") -> float:
    """The uSF scale of a layer with weight ``w``: the std of an initialisation, computed from the
    fans (``torch.nn.init._calculate_fan_in_and_fan_out``), not measured from a draw.

    ``xavier``: ``sqrt(2 / (fan_in + fan_out))`` (biotorch's default, ``init: xavier``);
    ``default``: ``1 / sqrt(3 fan_in)``, the std of PyTorch's default init (biotorch's ``kaiming``)."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
    if init == "xavier":
        return math.sqrt(2.0 / float(fan_in + fan_out))
    if init == "default":
        return 1.0 / math.sqrt(3.0 * fan_in)
    raise ValueError(f"sign_symmetry: unknown sign_init {init!r}; choose xavier or default")


def _sign_magnitudes(w: torch.Tensor, init: str, generator: torch.Generator) -> torch.Tensor:
    """``|u|``, ``u`` uniform with the std :func:`sign_scale` (bound ``sqrt(3) std``): the magnitudes
    of brSF / frSF (biotorch: ``|xavier_uniform_|`` or ``|kaiming_uniform_(a = sqrt 5)|``)."""
    bound = math.sqrt(3.0) * sign_scale(w, init)
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
    return ((u * 2 - 1) * bound).abs()


def convert_layers(model: nn.Module, generator: torch.Generator) -> int:
    """Swap every ``nn.Linear`` / ``nn.Conv2d`` for its B-carrying twin, in place; ``B`` drawn
    independently of ``W``. The forward output is unchanged. Returns the number converted.

    ``B`` is drawn from a stream of its own, seeded by one draw from ``generator``: drawn from
    ``generator`` directly, a rule seeded like the model's initialisation (``torch.manual_seed(0)``
    and a rule seeded 0, both defaults) reproduced the model's own draws, so that ``B = W`` exactly
    in every layer without a bias (all of ResNet-20): feedback alignment was exact backprop."""
    count = 0
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    generator = torch.Generator(device=generator.device)
    generator.manual_seed(seed)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                new = FBLinear.__new__(FBLinear)
            elif type(child) is nn.Conv2d:
                if child.padding_mode != "zeros" or isinstance(child.padding, str):
                    raise NotImplementedError(f"{name}: only zero padding given as numbers is supported")
                new = FBConv2d.__new__(FBConv2d)
            else:
                continue
            new.__dict__ = child.__dict__.copy()
            new._parameters = dict(child._parameters)
            new._buffers = dict(child._buffers)
            new._modules = dict(child._modules)
            new.weight_b = nn.Parameter(_init_like(child.weight.detach(), generator))
            setattr(parent, name, new)
            count += 1
    return count


@dataclass
class AlignmentConfig:
    """Metaparameters of the Two Routes regularisers (reference defaults per rule when ``None``).

    ``sigma``: std of the noise input (wm, ia); ``reg_scale``: factor on dR/dB added to B.grad;
    ``sign_mode``: sign_symmetry's magnitudes ('usf': one scale per layer; 'brsf': random
    magnitudes redrawn after every optimizer step; 'frsf': random magnitudes fixed at init);
    ``sign_init``: the initialisation whose std gives uSF's scale and whose uniform draws give
    brSF / frSF magnitudes: ``xavier`` (default, biotorch's: ``sqrt(2 / (fan_in + fan_out))``) or
    ``default`` (PyTorch's default init: ``1 / sqrt(3 fan_in)``), computed from the layer's fans
    (deterministic). biotorch redraws brSF's magnitudes at every forward call; we redraw them once
    per optimizer step (in ``after_step``), so B is a function of the step, not of how many forward
    passes (diagnostics, evaluation) ran: the same as biotorch's when a step has one forward. ``noisy_updates``: std of the noise ``lr * xi`` added to every
    trainable variable after each optimizer step (the robustness study; 0: off);
    ``angle_every``: every N steps log the angle between each layer's B and W^T (0: never; kept
    on the device, so it costs a few small kernels and no synchronisation);
    ``compare_every``: every N steps log the angle of each layer's update to the BP gradient
    (one extra BP forward/backward on the same batch; 0: never).
    ``position_mean``: in a convolution, ``E`` in the data terms (sparse, amp, null) is the mean
    over samples and output positions (default; the fixed points then have the Linear layer's
    scale, and the curvature of R in B does not grow with the feature map); ``False`` sums over
    positions as the reference code does (its WM fixed point grows with the feature map's size,
    which made WM diverge on a CIFAR ResNet-20 at lr 0.1).
    ``decay_b``: whether the optimizer's weight decay also applies to B. Default (``None``): yes
    for ``kp`` (its fixed point B = W needs the decays matched), no for ``wm``, ``ia``, ``sa``
    and ``aa``, whose regulariser decays B itself: an extra decay would move the fixed point
    (SA: B = beta / (2 alpha + wd) W, a gain below 1 that compounds through depth).
    ``model_rule`` (+ ``model_rule_config``): the model rule this layer rule stacks under, e.g.
    ``bptt`` to train a spiking model without weight transport (default ``bp``).
    ``batch_center``: subtract the batch mean from the input of the backward projection ``A_B``
    inside R, as the reference code's ``batch_center_backward_input`` does (``A_W`` and IA's
    reconstruction ``A_B^T A_W x`` keep the raw input). For the terms bilinear in the two
    projections (amp) centring one side equals centring both, so for ``wm`` and ``aa`` this is R on
    centred inputs; for ``ia`` only the amp term sees the centred input. For ``aa`` R then measures
    B against W on the inputs' fluctuations: the fixed point is B = W on the span of the centred data, and R's curvature in B
    is ``2 alpha Cov(x)`` instead of ``2 alpha E[x x^T]``, whose largest eigenvalue (along the
    mean of post-ReLU inputs, about fan-in x mean square) limits B's stable learning rate.
    ``reg_bias``: add the layer's bias to both projections inside R, as the reference code does by
    default (``use_bias_forward`` / ``use_bias_backward``); off by default here: the bias is not part
    of the alignment of B with W, and with it AA's sparse term pulls ``A_B x`` towards ``-b``.
    ``noise_padding`` (wm, ia): ``zeros`` (default) draws noise of the layer's input and convolves
    with the layer's zero padding, so the padding ring is zero as for real activations;
    ``reference``: for strided zero-padded convolutions, which the reference pads explicitly
    (``tf.pad``, then ``'VALID'``), the noise covers the padded input, ring included, and R uses the
    convolution without padding, so IA's reconstruction term also reconstructs the ring.
    ``position_mean=False, reg_bias=True, noise_padding=reference`` give the reference's
    regularisers.
    ``b_optimizer``: ``model`` (default) trains B with the model's optimizer and schedule;
    ``sgd`` or ``adam`` give B an optimizer of its own (the reference code's
    ``alignment_optimizer``) with a constant learning rate ``b_lr`` (the reference's
    ``alignment_constant_lr``), momentum ``b_momentum`` (sgd) and weight decay ``b_weight_decay``,
    stepped by the rule after the model's step. Under SGD B's speed along an input direction
    of variance ``lambda`` is ``lr * 2 alpha * lambda`` (aa), which differs by orders of magnitude
    between a conv layer and the classifier; under ``adam`` each entry moves by at most about
    ``b_lr`` per step whatever the inputs' scale (it rescales coordinates, so it does not undo the
    spread of ``lambda`` across directions). Only for the rules whose B learns from a regulariser
    (wm, ia, sa, aa); the model's gradient clipping leaves B out.
    """

    alpha: Optional[float] = None
    beta: Optional[float] = None
    gamma: Optional[float] = None
    sigma: float = 1.0
    reg_scale: float = 1.0
    sign_mode: Literal["usf", "brsf", "frsf"] = "usf"
    sign_init: Literal["xavier", "default"] = "xavier"
    noisy_updates: float = 0.0
    angle_every: int = 10
    compare_every: int = 0
    position_mean: bool = True
    decay_b: Optional[bool] = None
    model_rule: str = "bp"
    model_rule_config: Dict[str, Any] = field(default_factory=dict)
    batch_center: bool = False
    reg_bias: bool = False
    noise_padding: Literal["zeros", "reference"] = "zeros"
    b_optimizer: Literal["model", "sgd", "adam"] = "model"
    b_lr: float = 1e-3
    b_momentum: float = 0.9
    b_weight_decay: float = 0.0


DEFAULTS = {"wm": (1e-3, 1e-3, 0.0), "ia": (2e-3, 1e-3, 1e-3), "sa": (1e-3, 2e-3, 0.0), "aa": (1e-3, 2e-3, 0.0)}


def _positions(layer: nn.Module, y: torch.Tensor) -> int:
    """Output positions per sample of ``layer`` (1 for a Linear layer on [n, in])."""
    return y[0].numel() // layer.weight.shape[0]


def _padding_ring(layer: nn.Module) -> Optional[Tuple[int, int]]:
    """The padding the reference applies explicitly (``tf.pad``, then a ``'VALID'`` convolution):
    that of a strided, zero-padded convolution; ``None`` for any other layer (the reference's
    stride-1 convolutions pad implicitly, ``'SAME'``, as ours do)."""
    if isinstance(layer, FBConv2d) and max(layer.stride) > 1 and max(layer.padding) > 0:
        return int(layer.padding[0]), int(layer.padding[1])
    return None


def _weight_grad(layer: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """d<grad_out, A_K inp>/dK: the ordinary weight gradient of the layer's linear map."""
    if isinstance(layer, FBLinear):
        return grad_out.reshape(-1, grad_out.shape[-1]).t() @ inp.reshape(-1, inp.shape[-1])
    return torch.nn.grad.conv2d_weight(inp, layer.weight.shape, grad_out, layer.stride, layer.padding,
                                       layer.dilation, layer.groups)


def _backward_map(layer: nn.Module, y: torch.Tensor, kernel: torch.Tensor, in_shape) -> torch.Tensor:
    return layer.backward_map(y, kernel) if isinstance(layer, FBLinear) else layer.backward_map(y, kernel, in_shape)


def _projections(layer: nn.Module, x: torch.Tensor, xb: torch.Tensor, W: torch.Tensor, B: torch.Tensor,
                 bias: bool):
    """``A_W x (+ b)`` and ``A_B xb (+ b)``: the forward and backward projections of R."""
    yw = layer.forward_b(x, W)
    yb = layer.forward_b(xb, B)
    if bias and layer.bias is not None:
        shape = (-1,) + (1,) * (yw.dim() - 2)
        b = layer.bias.detach().reshape(shape)
        yw, yb = yw + b, yb + b
    return yw, yb


def regularizer(rule: str, layer: nn.Module, x: torch.Tensor, alpha: float, beta: float, gamma: float,
                position_mean: bool = True, x_backward: Optional[torch.Tensor] = None,
                bias: bool = False) -> torch.Tensor:
    """R(B) of ``rule`` for ``layer`` on inputs ``x`` (W constant), differentiable in ``weight_b``.

    The plain reference path (autograd gives dR/dB); the rule uses :func:`regularizer_grad`, the
    same gradient in closed form, held equal to this one by the tests. ``E`` is the mean over the
    samples and, with ``position_mean``, over a convolution's output positions too (the reference
    code sums over positions, which scales the data terms by the feature map's size).
    ``x_backward``: the input of the backward projection ``A_B`` (default ``x``; the reference's
    ``batch_center_backward_input`` passes the batch-centred ``x`` here and ``x`` itself to ``A_W``);
    ``bias``: add the layer's bias to both projections (the reference's ``use_bias_forward`` /
    ``use_bias_backward``, on by default there)."""
    W, B = layer.weight.detach(), layer.weight_b
    if rule == "sa":
        return alpha * (B * B).sum() - beta * (W * B).sum()
    xb = x if x_backward is None else x_backward
    yw, yb = _projections(layer, x, xb, W, B, bias)
    norm = x.shape[0] * (_positions(layer, yw) if position_mean else 1)
    amp = -(yw * yb).sum() / norm
    if rule == "wm":
        return alpha * (B * B).sum() + beta * amp
    if rule == "aa":
        return alpha * (yb * yb).sum() / norm + beta * amp
    if rule == "ia":
        back = _backward_map(layer, yw, B, x.shape)
        return alpha * amp + beta * (back * back).sum() / norm + gamma * (B * B).sum()
    raise ValueError(f"no regulariser for rule {rule!r}")


@torch.no_grad()
def regularizer_grad(rule: str, layer: nn.Module, x: Optional[torch.Tensor], alpha: float, beta: float,
                     gamma: float, position_mean: bool = True, x_backward: Optional[torch.Tensor] = None,
                     bias: bool = False) -> torch.Tensor:
    """dR/dB of :func:`regularizer` in closed form (no autograd graph; one forward map with W, one
    weight-gradient map, and for ``ia`` one backward map with B, for ``aa`` one forward map with B):

        sa: 2 alpha B - beta W
        wm: 2 alpha B - beta / N  G(x_B, A_W x)
        aa: 1 / N  G(x_B, 2 alpha A_B x_B - beta A_W x)
        ia: 1 / N  G(-alpha x_B + 2 beta A_B^T A_W x, A_W x) + 2 gamma B

    where ``G(u, v)`` is the weight gradient of the layer for input ``u`` and output gradient ``v``,
    ``x_B`` the backward projection's input (``x_backward``, default ``x``), ``N`` the number of
    samples (times the output positions, with ``position_mean``); with ``bias`` the layer's bias is
    added to ``A_W x`` and ``A_B x_B``."""
    W, B = layer.weight.detach(), layer.weight_b.detach()
    if rule == "sa":
        return B.mul(2 * alpha).sub_(W, alpha=beta)
    xb = x if x_backward is None else x_backward
    yw = layer.forward_b(x, W)
    if bias and layer.bias is not None:
        yw = yw + layer.bias.detach().reshape((-1,) + (1,) * (yw.dim() - 2))
    norm = x.shape[0] * (_positions(layer, yw) if position_mean else 1)
    if rule == "wm":
        return B.mul(2 * alpha).sub_(_weight_grad(layer, xb, yw), alpha=beta / norm)
    if rule == "aa":
        _, yb = _projections(layer, x, xb, W, B, bias)
        v = yb.mul_(2 * alpha).sub_(yw, alpha=beta)
        return _weight_grad(layer, xb, v).div_(norm)
    if rule == "ia":
        u = _backward_map(layer, yw, B, x.shape).mul_(2 * beta).sub_(xb, alpha=alpha)
        return _weight_grad(layer, u, yw).div_(norm).add_(B, alpha=2 * gamma)
    raise ValueError(f"no regulariser for rule {rule!r}")


@torch.no_grad()
def regularizer_curvature(rule: str, layer: nn.Module, x: Optional[torch.Tensor], alpha: float, beta: float,
                          gamma: float, position_mean: bool = True, iters: int = 20) -> float:
    """Largest eigenvalue of the Hessian of the regulariser with respect to B, by power iteration.

    R is quadratic in B, so ``H V = dR/dB(V) - dR/dB(0)`` (W and the inputs ``x`` held). ``sa``
    and ``wm``: ``2 alpha``; ``aa``: ``2 alpha lambda_max(E[p p^T])`` over the layer's input patches
    ``p``, so it grows with the activations. Under SGD with heavy-ball momentum ``mu`` and learning
    rate ``lr``, B's own update diverges once ``lr * curvature > 2 (1 + mu)``
    (``benchmarks/alignment_dynamics.py`` logs that number during training)."""
    saved = layer.weight_b.detach().clone()

    def grad_at(v: torch.Tensor) -> torch.Tensor:
        layer.weight_b.copy_(v)
        return regularizer_grad(rule, layer, x, alpha, beta, gamma, position_mean)

    try:
        g0 = grad_at(torch.zeros_like(saved))
        v = torch.randn(saved.shape, generator=torch.Generator().manual_seed(0), dtype=saved.dtype).to(saved.device)
        lam = 0.0
        for _ in range(iters):
            v = v / v.norm().clamp_min(1e-30)
            hv = grad_at(v) - g0
            lam = float(hv.norm())
            v = hv
    finally:
        layer.weight_b.copy_(saved)
    return lam


class AlignmentRule(Rule):
    """A layer rule: converts Linear/Conv2d layers, then trains like BP with B in the backward pass."""

    def __init__(self, name: str, config: AlignmentConfig):
        super().__init__(config)
        self.name = name
        a, b, g = DEFAULTS.get(name, (0.0, 0.0, 0.0))
        self.alpha = a if config.alpha is None else config.alpha
        self.beta = b if config.beta is None else config.beta
        self.gamma = g if config.gamma is None else config.gamma
        self._inputs: Dict[str, torch.Tensor] = {}
        if config.model_rule in _LAYER_RULES:
            raise ValueError(f"{name}: model_rule must be a model rule (bp, bptt, ide, ...), not {config.model_rule!r}")
        self.inner = RULES.create(config.model_rule, **config.model_rule_config)
        if config.b_optimizer != "model" and name not in DEFAULTS:
            raise ValueError(
                f"{name}: b_optimizer={config.b_optimizer!r} is for the rules whose B learns from a "
                f"regulariser ({', '.join(DEFAULTS)}); {name}'s B is "
                + ("fixed" if name in ("fa", "sign_symmetry") else "updated with dW and needs the model's optimizer")
                + ": leave b_optimizer=model")
        if config.noise_padding not in ("zeros", "reference"):
            raise ValueError(f"{name}: unknown noise_padding {config.noise_padding!r}; choose zeros or reference")
        if config.sign_init not in ("xavier", "default"):
            raise ValueError(f"{name}: unknown sign_init {config.sign_init!r}; choose xavier or default")
        if config.b_lr <= 0 or config.b_weight_decay < 0 or not 0 <= config.b_momentum < 1:
            raise ValueError(f"{name}: need b_lr > 0, b_weight_decay >= 0 and 0 <= b_momentum < 1, got "
                             f"{config.b_lr}, {config.b_weight_decay}, {config.b_momentum}")
        self.b_opt: Optional[torch.optim.Optimizer] = None

    def seed(self, seed: int) -> None:
        super().seed(seed)
        self.inner.seed(seed + 7919)

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(model, x)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        model = self.inner.prepare(model)
        if not any(True for _ in fb_layers(model)):
            if convert_layers(model, self.generator) == 0:
                raise TypeError(f"rule {self.name!r}: the model has no nn.Linear or nn.Conv2d layer to convert")
        kept = _exact_transport_layers(model)
        if kept:
            warnings.warn(f"{self.name}: exact weight transport kept in {', '.join(kept)}: not a Linear / Conv2d "
                          "layer, so its backward uses its own weights", RuntimeWarning, stacklevel=2)
        for _, layer in fb_layers(model):
            if self.name in ("fa", "sign_symmetry"):
                layer.weight_b.requires_grad_(False)
            if self.name == "sign_symmetry":
                layer.sign_scale = sign_scale(layer.weight, self.config.sign_init)
                if self.config.sign_mode == "frsf":
                    layer.sign_mag = _sign_magnitudes(layer.weight.detach(), self.config.sign_init, self.generator)
        if self.name == "sign_symmetry":
            self._resign(model)
        if self.name in ("wm", "ia", "aa"):
            for name, layer in fb_layers(model):
                layer.register_forward_pre_hook(self._grab(name))
        c = self.config
        if c.b_optimizer == "sgd":
            self.b_opt = torch.optim.SGD(_b_params(model), lr=c.b_lr, momentum=c.b_momentum,
                                         weight_decay=c.b_weight_decay)
        elif c.b_optimizer == "adam":
            self.b_opt = torch.optim.Adam(_b_params(model), lr=c.b_lr, weight_decay=c.b_weight_decay)
        return model

    @property
    def grad_reduction(self) -> str:  # type: ignore[override]
        """The model rule's (its loss gradient sets the batch reduction)."""
        return self.inner.grad_reduction

    def own_parameters(self, model: nn.Module) -> List[nn.Parameter]:
        own = _b_params(model) if self.config.b_optimizer != "model" else []
        return own + list(self.inner.own_parameters(model))

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        decay = self.config.decay_b if self.config.decay_b is not None else self.name not in DEFAULTS
        own = [] if decay else _b_params(model)
        return own + list(self.inner.no_weight_decay(model))

    def _grab(self, name: str):
        """Record the layer's input shape (wm, ia: noise of that shape) or the input itself (aa)."""
        def hook(module, args):
            if module.training:
                module.input_shape = tuple(args[0].shape)
                if self.name == "aa":
                    self._inputs[name] = args[0].detach()
        return hook

    @torch.no_grad()
    def _resign(self, model: nn.Module) -> None:
        for _, layer in fb_layers(model):
            s = torch.sign(layer.weight)
            if self.config.sign_mode == "usf":
                layer.weight_b.copy_(s * layer.sign_scale)
            elif self.config.sign_mode == "frsf":
                layer.weight_b.copy_(s * layer.sign_mag)
            else:
                layer.weight_b.copy_(s * _sign_magnitudes(layer.weight, self.config.sign_init, self.generator))

    def layer_regularizer(self, layer: nn.Module, inp: Optional[torch.Tensor], grad: bool = True) -> torch.Tensor:
        """dR/dB (``grad``, what :meth:`step` adds to ``B.grad`` before ``reg_scale``) or the value of
        R (differentiable in ``B``) of this rule for ``layer`` on ``inp``: the noise (wm, ia; with
        ``noise_padding=reference`` of the padded input's shape on a strided, zero-padded
        convolution), the layer's input (aa) or ``None`` (sa), with the config's ``position_mean``,
        ``batch_center`` and ``reg_bias``."""
        c = self.config
        back_in = inp - inp.mean(0, keepdim=True) if c.batch_center and inp is not None else None
        padding = layer.padding if isinstance(layer, FBConv2d) else None
        if self.name in ("wm", "ia") and c.noise_padding == "reference" and _padding_ring(layer) is not None:
            layer.padding = (0, 0)  # the noise covers the padded input: convolve 'VALID'
        try:
            fn = regularizer_grad if grad else regularizer
            return fn(self.name, layer, inp, self.alpha, self.beta, self.gamma, c.position_mean, back_in, c.reg_bias)
        finally:
            if padding is not None:
                layer.padding = padding

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, scaler=None) -> StepOutput:
        c = self.config
        compare = bool(c.compare_every) and (self.steps + 1) % c.compare_every == 0
        start = rng_state(model) if compare else None
        inner = self.inner.step(model, x, y, loss_fn, scaler)  # forward + backward through the B kernels
        loss, logits = inner.loss, inner.logits
        stats: Dict[str, Any] = dict(inner.stats)
        if self.name == "kp":
            for _, layer in fb_layers(model):
                if layer.weight.grad is not None:
                    g = layer.weight.grad.detach()
                    layer.weight_b.grad = g.clone() if layer.weight_b.grad is None else layer.weight_b.grad + g
        elif self.name in DEFAULTS:
            for name, layer in fb_layers(model):
                if self.name == "aa":
                    inp = self._inputs.pop(name, None)
                    if inp is None:
                        continue
                elif self.name in ("wm", "ia"):
                    shape = getattr(layer, "input_shape", None)
                    if shape is None:
                        continue
                    ring = _padding_ring(layer) if self.config.noise_padding == "reference" else None
                    if ring is not None:  # noise over the explicitly padded input, convolved 'VALID'
                        shape = tuple(shape[:-2]) + (shape[-2] + 2 * ring[0], shape[-1] + 2 * ring[1])
                    inp = torch.randn(shape, generator=self.generator, device=layer.weight.device,
                                      dtype=layer.weight.dtype) * self.config.sigma
                else:
                    inp = None
                g = self.layer_regularizer(layer, inp)
                if self.config.reg_scale != 1.0:
                    g = g * self.config.reg_scale
                if scaler is not None and self.b_opt is None:
                    g = scaler.scale(g)  # the trainer unscales the model optimizer's gradients
                layer.weight_b.grad = g if layer.weight_b.grad is None else layer.weight_b.grad + g
        self.steps += 1
        if self.config.angle_every and self.steps % self.config.angle_every == 0:
            for name, layer in fb_layers(model):
                stats[f"align/B_W_angle/{name}"] = angle_degrees_tensor(layer.weight_b, layer.weight)
        if compare:
            stats.update(self.compare(model, x, y, loss_fn, start))
        return StepOutput(loss, logits, stats)

    def compare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                replay=None) -> Dict[str, float]:
        """Angle (degrees) between each layer's weight gradient under this rule and under BP.

        The BP pass has no effect on training (:func:`~bioprop.rules.base.diagnostic_pass`: BatchNorm
        statistics and the random state are restored) and, given ``replay`` (the random state before
        the step's forward), uses the step's dropout masks."""
        layers = list(fb_layers(model))
        ours = {n: l.weight.grad.detach().clone() for n, l in layers if l.weight.grad is not None}
        for _, l in layers:
            l.use_w_backward = True
        try:
            params = [l.weight for _, l in layers]
            with diagnostic_pass(model, replay):
                grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
        finally:
            for _, l in layers:
                l.use_w_backward = False
        return {f"align/update_angle/{n}": angle_degrees_tensor(ours[n], g)
                for (n, _), g in zip(layers, grads) if g is not None and n in ours}

    @torch.no_grad()
    def _after_step(self, model: nn.Module) -> None:
        if self.b_opt is not None:
            self.b_opt.step()
            self.b_opt.zero_grad(set_to_none=True)
        if self.config.noisy_updates > 0:
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                           * self.config.noisy_updates)
        if self.name == "sign_symmetry":
            self._resign(model)

    def after_step(self, model: nn.Module) -> None:
        self._after_step(model)
        self.inner.after_step(model)

    def state_dict(self):
        state = {**super().state_dict(), "inner": self.inner.state_dict()}
        if self.b_opt is not None:
            state["b_optimizer"] = self.b_opt.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if "inner" in state:
            self.inner.load_state_dict(state["inner"])
        if self.b_opt is not None:
            if "b_optimizer" not in state:
                raise ValueError(f"{self.name}: the checkpoint has no state of B's own optimizer "
                                 f"(b_optimizer={self.config.b_optimizer!r}); resume with the b_optimizer "
                                 "it was trained with")
            self.b_opt.load_state_dict(state["b_optimizer"])




def _register(name: str, help: str) -> None:
    @RULES.register(name, AlignmentConfig, help)
    def _make(c: AlignmentConfig) -> Rule:
        return AlignmentRule(name, c)


_LAYER_RULE_HELP = {
    "fa": "feedback alignment: errors through a fixed random B (Lillicrap et al. 2016)",
    "sign_symmetry": "sign symmetry: B = sign(W) x scale (uSF; brSF, frSF options)",
    "kp": "Kolen-Pollack: dB = dW with matched weight decay, B -> W",
    "wm": "weight mirror: B learns alpha decay + beta amp on noise (Two Routes)",
    "ia": "information alignment: alpha amp + beta null + gamma decay on noise (Two Routes)",
    "sa": "symmetric alignment: alpha decay + beta self, B -> W (Two Routes, non-local)",
    "aa": "activation alignment: alpha sparse + beta amp on real inputs (Two Routes, non-local)",
}
_LAYER_RULES = tuple(_LAYER_RULE_HELP)
for _name, _help in _LAYER_RULE_HELP.items():
    _register(_name, _help)
