"""``ekdaa``: error-kernel driven activation alignment (Zee, Ororbia, Mali & Nwogu, "A Robust
Backpropagation-Free Framework for Images", TMLR 2023; code: tzee/EKDAA-Release).

The model is a block sequence of weight layers ``W_1 .. W_L`` (``nn.Linear``, ``nn.Conv2d``),
each followed by elementwise activations ``phi`` and structural stages (``nn.MaxPool2d``,
``nn.Flatten``); the last layer is a ``Linear`` readout whose output is the logits. With
``h_l = W_l u_l`` (pre-activation) and ``u_{l+1} = g_l(h_l)`` (its activations, pools, flatten),
the error travels down through learned error kernels ``E_l`` (shape of ``W_l^T``) instead of
``W_l^T``, and only ``phi`` is ever evaluated, never ``phi'``:

    e_L       = softmax(h_L) - onehot(y)                      (= B dL/dh_L for the mean cross-entropy)
    s_{l}     = ghat_l(h_l) - beta E_{l+1} e_{l+1}            (target of the next layer's input;
                                                              E e: e E^T for a Linear, the
                                                              transposed convolution for a Conv2d)
    h~_l      = ghat_l^{-1}(s_l)                              (back through flatten and pools)
    e_l       = phi_l(h_l) - phi_l(h~_l)
    dW_l      = (d h_l / d W_l)^T e_l   / B                   (dense: e_l^T u_l; conv: the filter gradient)
    db_l      = sum_batch e_l            / B
    dE_l      = gamma dW_l^T

``ghat_l`` is ``g_l`` with its activations left out (the pre-activation path: the release's
targets live in pre-activation space, so a pool's target is the pooled pre-activation minus the
projected error). Back through a max-pool the target is the bilinear 2x upsampling of the pooled
target (``pool_target: upsample``, the release's: pre-pool errors are non-zero even where the
error above is zero, and stay non-zero as beta -> 0) or argmax routing (``argmax``: ``h~ = h -
route(d)``, the pooling's adjoint; with it and ``E = W^T``, ``e_l / beta^{L-l}`` tends to the BP
delta as beta -> 0). Every update is written into ``.grad``; the model's optimizer steps ``W``,
``b`` and ``E`` together (``E`` is a parameter ``weight_e`` that ``prepare`` registers on each
weight layer but the first, whose kernel no error passes through, so it is checkpointed with
the model).

Options (defaults first; the release's behaviour in brackets): ``beta`` 0.9, ``gamma`` 0.1;
``e_init`` transpose (``E_0 = W_0^T``, the release; under SGD ``E_t = (1 - gamma) W_0^T + gamma
W_t^T`` exactly) | random (Glorot-uniform, independent of ``W``: the claim the method is about);
``reduction`` mean (updates are batch means, the output layer's update is exactly BP's for the
mean cross-entropy) [sum]; ``conv_normalize`` False [True: the projection ``E e`` of a conv is
divided by its max when that exceeds 1, the filter update likewise, then by in- and out-channel
counts]; ``conv_kernel`` adjoint [reference: the release applies its kernel with the spatial axes
swapped, a side effect of ``tf.transpose`` on a 4-d kernel]; ``target_activation`` None (each
layer's own ``phi``) [the release applies its first layer's activation to every target];
``update_top_kernel`` True [False: in dense-only models the release never updates the top
kernel]. ``compare_every``: every N steps also compute BP on the same batch and log per layer
the angle of the update to BP's gradient, its norm ratio, and the angle and norm ratio of ``E``
to ``W^T`` (no side effect on training: no RNG, no state, ``.grad`` untouched).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import angle_degrees_tensor
from ..models.protocols import BlockModel, ProtocolError, blocks_of
from ..neurons.elementwise import ACTIVATIONS, is_elementwise
from .base import RULES, LossFn, Rule, StepOutput

__all__ = ["EKDAA", "EKDAAConfig", "EKDAAPlan", "EKDAAResult", "ekdaa_plan", "ekdaa_errors", "project",
           "local_update"]


@dataclass
class EKDAAConfig:
    """See the module docstring. ``decay_e``: whether the optimizer's weight decay also applies to
    ``E`` (default no: it would pull ``E`` towards ``gamma W^T``)."""

    beta: float = 0.9
    gamma: float = 0.1
    e_init: Literal["transpose", "random"] = "transpose"
    pool_target: Literal["upsample", "argmax"] = "upsample"
    reduction: Literal["mean", "sum"] = "mean"
    conv_normalize: bool = False
    conv_kernel: Literal["adjoint", "reference"] = "adjoint"
    target_activation: Optional[str] = None
    update_top_kernel: bool = True
    decay_e: bool = False
    compare_every: int = 0


# -- the model as a sequence of weight layers ---------------------------------------------------
@dataclass
class EKDAAPlan:
    """``pre``: stages before the first weight layer; ``layers[l]``: the ``l``-th weight layer;
    ``post[l]``: the stages between it and the next weight layer (elementwise / pool / flatten)."""

    pre: List[nn.Module]
    layers: List[nn.Module]
    post: List[List[nn.Module]]


_SUPPORTED = "Linear, Conv2d (zero padding given as numbers, groups 1), MaxPool2d, Flatten and elementwise activations"


def _primitives(block: nn.Module, index: int, out: List[Tuple[int, nn.Module]]) -> None:
    if isinstance(block, nn.Sequential):
        for m in block:
            _primitives(m, index, out)
        return
    out.append((index, block))


def _refuse(index: int, m: nn.Module, why: str) -> ProtocolError:
    return ProtocolError(f"rule 'ekdaa' cannot handle block {index + 1} ({type(m).__name__}): {why}")


def ekdaa_plan(model: nn.Module) -> EKDAAPlan:
    """Split ``model``'s block sequence into weight layers and the stages between them; a one-line
    :class:`~bioprop.models.protocols.ProtocolError` naming the block it cannot handle."""
    prims: List[Tuple[int, nn.Module]] = []
    for i, b in enumerate(blocks_of(model)):
        _primitives(b, i, prims)
    pre: List[nn.Module] = []
    layers: List[nn.Module] = []
    post: List[List[nn.Module]] = []
    for i, m in prims:
        if isinstance(m, nn.Linear):
            pass
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise _refuse(i, m, "only groups=1 and zero padding given as numbers are supported "
                                    "(write padding=k//2 for 'same')")
        elif isinstance(m, nn.MaxPool2d):
            if m.ceil_mode:
                raise _refuse(i, m, "ceil_mode=True is not supported")
        elif isinstance(m, nn.Flatten) or is_elementwise(m):
            pass
        else:
            raise _refuse(i, m, f"EKDAA walks only {_SUPPORTED}"
                          + (" (EKDAA has no dropout: remove it)" if isinstance(m, nn.Dropout) else ""))
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            layers.append(m)
            post.append([])
        elif isinstance(m, nn.Identity):
            continue
        elif layers:
            post[-1].append(m)
        else:
            pre.append(m)
    if not layers:
        raise ProtocolError("rule 'ekdaa' needs at least one Linear or Conv2d block; the model has none")
    if not isinstance(layers[-1], nn.Linear) or post[-1]:
        last = prims[-1]
        raise _refuse(last[0], last[1], "the model must end in a Linear readout whose output is the logits")
    return plan_check(EKDAAPlan(pre, layers, post))


def plan_check(plan: EKDAAPlan) -> EKDAAPlan:
    for post in plan.post:
        for m in post:
            if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
                raise ProtocolError("rule 'ekdaa' supports only Flatten(start_dim=1, end_dim=-1)")
    return plan


# -- the local operations ---------------------------------------------------------------------
def _max_norm(t: torch.Tensor) -> torch.Tensor:
    """The release's normalisation: ``t / max(t)`` when ``max(t) > 1`` (no host synchronisation)."""
    m = t.max()
    return torch.where(m > 1, t / m, t)


def _conv_kernel(E: torch.Tensor, mode: str) -> torch.Tensor:
    """The kernel (W's layout ``[out, in, kh, kw]``) the transposed convolution uses: ``E^T``;
    ``reference``: with its spatial axes swapped, as the release's ``tf.transpose`` leaves it."""
    k = E.transpose(0, 1)
    return k.transpose(2, 3) if mode == "reference" else k


def project(layer: nn.Module, E: torch.Tensor, e: torch.Tensor, in_shape: torch.Size, conv_kernel: str = "adjoint",
            conv_normalize: bool = False) -> torch.Tensor:
    """``E e`` into the layer's input space: ``e E^T`` for a Linear (``E``: ``[in, out]``), the
    transposed convolution with kernel ``E^T`` for a Conv2d (``E``: ``[in, out, kh, kw]``), which
    with ``E = W^T`` is the adjoint of the forward convolution for any stride and padding."""
    if isinstance(layer, nn.Linear):
        return e @ E.t().to(e.dtype)
    out = torch.nn.grad.conv2d_input(list(in_shape), _conv_kernel(E, conv_kernel).to(e.dtype), e, layer.stride,
                                     layer.padding, layer.dilation, layer.groups)
    return _max_norm(out) if conv_normalize else out


def local_update(layer: nn.Module, u: torch.Tensor, e: torch.Tensor, conv_normalize: bool = False
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(dW, db)`` summed over the batch: ``e^T u`` (Linear), the filter gradient of ``e`` against
    ``u`` (Conv2d; ``conv_normalize``: the release's max- and channel-count normalisation)."""
    if isinstance(layer, nn.Linear):
        dw = e.t() @ u.to(e.dtype)
        db = e.sum(0) if layer.bias is not None else None
        return dw, db
    dw = torch.nn.grad.conv2d_weight(u.to(e.dtype), list(layer.weight.shape), e, layer.stride, layer.padding,
                                     layer.dilation, layer.groups)
    if conv_normalize:
        dw = _max_norm(dw) / (dw.shape[0] * dw.shape[1])
    db = e.sum((0, 2, 3)) if layer.bias is not None else None
    return dw, db


@dataclass
class EKDAAResult:
    """One batch of EKDAA, per weight layer ``l`` (index 0 = the first): its input ``inputs[l]``,
    pre-activation ``pre[l]``, target ``targets[l]`` (``h~_l``; ``None`` for the readout), error
    ``errors[l]`` (``e_l``, per sample), the projection ``beta E e`` it sends to its input
    (``None`` for the first layer), and the batch-summed updates ``dW``, ``db``, ``dE`` (``dE``
    ``None`` where the layer has no kernel or it is not updated); plus the loss and the logits."""

    inputs: List[torch.Tensor]
    pre: List[torch.Tensor]
    targets: List[Optional[torch.Tensor]]
    errors: List[torch.Tensor]
    projections: List[Optional[torch.Tensor]]
    dW: List[torch.Tensor]
    db: List[Optional[torch.Tensor]]
    dE: List[Optional[torch.Tensor]]
    loss: torch.Tensor
    logits: torch.Tensor


def _phi(post: List[nn.Module], override: Optional[str]):
    if override is not None:
        return ACTIVATIONS[override]
    acts = [m for m in post if is_elementwise(m)]

    def phi(t: torch.Tensor) -> torch.Tensor:
        for m in acts:
            t = m(t)
        return t
    return phi


@torch.no_grad()
def ekdaa_errors(plan: EKDAAPlan, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, beta: float = 0.9,
                 gamma: float = 0.1, pool_target: str = "upsample", conv_kernel: str = "adjoint",
                 conv_normalize: bool = False, target_activation: Optional[str] = None,
                 update_top_kernel: bool = True, kernels: Optional[List[Optional[torch.Tensor]]] = None,
                 update_scale: float = 1.0) -> EKDAAResult:
    """Forward pass, targets, errors and batch-summed updates of one batch (module docstring),
    the updates multiplied by ``update_scale`` (``1 / B``: batch means; folded into the errors
    before the products, so it costs nothing). ``kernels[l]``: ``E_l`` (default: each layer's
    ``weight_e``; ``None`` for the first layer).
    ``loss_fn`` must be a batch mean: ``e_L = B dL/dh_L`` (softmax - onehot for cross-entropy)."""
    L = len(plan.layers)
    if kernels is None:
        kernels = [getattr(m, "weight_e", None) for m in plan.layers]
    a = x
    for m in plan.pre:
        a = m(a)
    inputs, pre, hat_in, hat_shapes = [], [], [], []
    for l, layer in enumerate(plan.layers):
        inputs.append(a)
        h = layer(a)
        pre.append(h)
        a, p = h, h                       # p: the pre-activation path ghat(h)
        seen: List[Tuple[nn.Module, torch.Tensor]] = []
        for m in plan.post[l]:
            if is_elementwise(m):
                a = m(a)
                continue
            seen.append((m, p))           # the stage and its input on the pre-activation path
            a, p = m(a), m(p)
        hat_in.append(seen)
        hat_shapes.append(p)
    logits = pre[-1]
    leaf = logits.detach()
    leaf = (leaf.float() if leaf.dtype in (torch.float16, torch.bfloat16) else leaf.clone()).requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(leaf, y)
        (g,) = torch.autograd.grad(loss, leaf)
    B = x.shape[0]
    e = (g * B).to(logits.dtype)
    targets: List[Optional[torch.Tensor]] = [None] * L
    errors: List[torch.Tensor] = [torch.empty(0)] * L
    projections: List[Optional[torch.Tensor]] = [None] * L
    dW: List[torch.Tensor] = [torch.empty(0)] * L
    db: List[Optional[torch.Tensor]] = [None] * L
    dE: List[Optional[torch.Tensor]] = [None] * L
    errors[L - 1] = e
    for l in range(L - 1, -1, -1):
        layer = plan.layers[l]
        e = errors[l]
        if update_scale != 1.0 and not (conv_normalize and isinstance(layer, nn.Conv2d)):
            dW[l], db[l] = local_update(layer, inputs[l], e * update_scale, conv_normalize)
        else:  # the release's max-normalisation acts on the batch sum
            dW[l], db[l] = local_update(layer, inputs[l], e, conv_normalize)
            if update_scale != 1.0:
                dW[l] = dW[l] * update_scale
                db[l] = db[l] * update_scale if db[l] is not None else None
        if l > 0 and (l < L - 1 or update_top_kernel):
            dE[l] = (gamma * dW[l].transpose(0, 1)).contiguous()
        if l == 0:
            break
        E = kernels[l]
        if E is None:
            raise ValueError(f"ekdaa: weight layer {l + 1} has no error kernel E: call rule.prepare(model) first")
        d = beta * project(layer, E, e, inputs[l].shape, conv_kernel, conv_normalize)
        projections[l] = d
        t = hat_shapes[l - 1] - d         # target of ghat_{l-1}(h_{l-1})
        for m, p_in in reversed(hat_in[l - 1]):
            if isinstance(m, nn.Flatten):
                t = t.reshape(p_in.shape)
            elif pool_target == "upsample":
                t = F.interpolate(t, size=p_in.shape[-2:], mode="bilinear", align_corners=False)
            else:                         # argmax routing: h~ = h - (adjoint of the pool) (pool(h) - t)
                _, idx = F.max_pool2d(p_in, m.kernel_size, m.stride, m.padding, m.dilation, return_indices=True)
                diff = m(p_in) - t
                t = p_in - torch.ops.aten.max_pool2d_with_indices_backward(
                    diff, p_in, _pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation), False, idx)
        targets[l - 1] = t
        phi = _phi(plan.post[l - 1], target_activation)
        errors[l - 1] = phi(pre[l - 1]) - phi(t)
    return EKDAAResult(inputs, pre, targets, errors, projections, dW, db, dE, loss.detach(), logits.detach())


def _pair(v) -> List[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


# -- the rule -----------------------------------------------------------------------------------
def _glorot(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    rf = 1
    for s in shape[2:]:
        rf *= s
    a = (6.0 / ((shape[0] + shape[1]) * rf)) ** 0.5
    return (torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) * 2 - 1) * a


class EKDAA(Rule):
    """EKDAA (module docstring): local updates through learned error kernels, no ``phi'``."""

    name = "ekdaa"
    protocol = BlockModel

    def __init__(self, config: EKDAAConfig):
        super().__init__(config)
        c = config
        if not c.beta > 0 or c.gamma < 0:
            raise ValueError(f"ekdaa: need beta > 0 and gamma >= 0, got beta={c.beta}, gamma={c.gamma}")
        if c.target_activation is not None and c.target_activation not in ACTIVATIONS:
            raise ValueError(f"ekdaa: unknown target_activation {c.target_activation!r}; choose one of "
                             f"{', '.join(ACTIVATIONS)} (or leave it None: each layer's own)")
        if c.compare_every < 0:
            raise ValueError(f"ekdaa: compare_every must be >= 0, got {c.compare_every}")
        for key, allowed in (("e_init", ("transpose", "random")), ("pool_target", ("upsample", "argmax")),
                             ("reduction", ("mean", "sum")), ("conv_kernel", ("adjoint", "reference"))):
            if getattr(c, key) not in allowed:
                raise ValueError(f"ekdaa: {key} must be one of {', '.join(allowed)}, got {getattr(c, key)!r}")
        self._plans: "weakref.WeakKeyDictionary[nn.Module, EKDAAPlan]" = weakref.WeakKeyDictionary()

    def plan(self, model: nn.Module) -> EKDAAPlan:
        """The model's weight layers and stages (:func:`ekdaa_plan`), computed once per model."""
        if model not in self._plans:
            self._plans[model] = ekdaa_plan(model)
        return self._plans[model]

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        plan = self.plan(model)
        c = self.config
        if (c.pool_target == "upsample" and not c.conv_normalize and any(isinstance(m, nn.Conv2d) for m in plan.layers)
                and any(isinstance(m, nn.MaxPool2d) for b in blocks_of(model) for m in b.modules())):
            warnings.warn("rule 'ekdaa': bilinear pool targets (pool_target=upsample, the release's) with full-size "
                          "conv updates (conv_normalize=false) leave the conv layers' updates ~90 deg from BP's, and "
                          "the release's CIFAR-10 CNN then stays near chance; set rule.pool_target=argmax or "
                          "rule.conv_normalize=true (docs/methods/ekdaa.md, Findings)", RuntimeWarning, stacklevel=2)
        for l, layer in enumerate(plan.layers):
            if l == 0 or hasattr(layer, "weight_e"):
                continue                     # no error passes through E_1; a prepared model keeps its E
            if isinstance(layer, nn.Conv2d) and self.config.conv_kernel == "reference" \
                    and layer.kernel_size[0] != layer.kernel_size[1]:
                raise ProtocolError(f"rule 'ekdaa': conv_kernel=reference swaps the kernel's spatial axes and "
                                    f"needs a square kernel, layer {l + 1} has {tuple(layer.kernel_size)}")
            w = layer.weight.detach()
            E = w.transpose(0, 1).clone() if self.config.e_init == "transpose" else \
                _glorot(w.transpose(0, 1).shape, self.generator, w)
            layer.register_parameter("weight_e", nn.Parameter(E.contiguous()))
        return model

    def kernels(self, model: nn.Module) -> List[nn.Parameter]:
        """The error kernels ``E`` of ``model`` (registered by ``prepare``)."""
        return [m.weight_e for m in self.plan(model).layers if hasattr(m, "weight_e")]

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        return [] if self.config.decay_e else self.kernels(model)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = x
        for b in blocks_of(model):
            h = b(h)
        return h

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, scaler=None) -> StepOutput:
        c = self.config
        plan = self.plan(model)
        scale = (1.0 / x.shape[0]) if c.reduction == "mean" else 1.0
        if scaler is not None:
            scale = scale * float(scaler.get_scale())
        r = ekdaa_errors(plan, x, y, loss_fn, c.beta, c.gamma, c.pool_target, c.conv_kernel, c.conv_normalize,
                         c.target_activation, c.update_top_kernel, update_scale=scale)
        for l, layer in enumerate(plan.layers):
            for p, g in ((layer.weight, r.dW[l]), (layer.bias, r.db[l]), (getattr(layer, "weight_e", None), r.dE[l])):
                if p is None or g is None or not p.requires_grad:
                    continue
                g = g.to(p.dtype)
                p.grad = g if p.grad is None else p.grad + g
        stats: Dict[str, Any] = {f"ekdaa/err_norm/{l + 1}": e.detach().norm() for l, e in enumerate(r.errors)}
        self.steps += 1
        if c.compare_every and self.steps % c.compare_every == 0:
            stats.update(self.compare(model, x, y, loss_fn, r, float(scaler.get_scale()) if scaler is not None else 1.0))
        return StepOutput(r.loss, r.logits, stats)

    def compare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                r: EKDAAResult, loss_scale: float = 1.0) -> Dict[str, torch.Tensor]:
        """Per weight layer: angle (degrees) and norm ratio of the update against BP's gradient on
        the same batch, and of ``E`` against ``W^T``. Uses no RNG and changes no state or ``.grad``."""
        plan = self.plan(model)
        weights = [m.weight for m in plan.layers]
        with torch.enable_grad():
            loss = loss_fn(self.forward(model, x), y)
            bp = torch.autograd.grad(loss, weights, allow_unused=True)
        stats: Dict[str, torch.Tensor] = {}
        for l, (layer, g) in enumerate(zip(plan.layers, bp)):
            if g is None:
                continue
            ours = r.dW[l] / loss_scale if loss_scale != 1.0 else r.dW[l]
            stats[f"ekdaa/angle/{l + 1}"] = angle_degrees_tensor(ours, g)
            stats[f"ekdaa/norm_ratio/{l + 1}"] = ours.norm() / g.norm().clamp_min(1e-30)
            E = getattr(layer, "weight_e", None)
            if E is not None:
                wt = layer.weight.detach().transpose(0, 1)
                stats[f"ekdaa/E_W_angle/{l + 1}"] = angle_degrees_tensor(E, wt)
                stats[f"ekdaa/E_W_norm_ratio/{l + 1}"] = E.detach().norm() / wt.norm().clamp_min(1e-30)
        return stats



@RULES.register("ekdaa", EKDAAConfig,
                "EKDAA: errors through learned error kernels E, local updates, no phi' (signum nets train; Zee et al. 2023)")
def _ekdaa(c: EKDAAConfig) -> Rule:
    return EKDAA(c)
