"""Data-parallel training across processes (``torch.distributed``, launched by ``torchrun``).

Every rule leaves its update in ``p.grad``; data parallelism is then one operation: after
``rule.step`` on each rank's shard of the batch, the gradients are combined across ranks,

    g = sum_r (b_r / B) g_r,        B = sum_r b_r,

where ``g_r`` is rank ``r``'s gradient of its mean loss over its ``b_r`` samples. For a loss that is
a mean over samples (and per-sample computations: no BatchNorm batch statistics, see below) ``g``
is the gradient of the mean loss over the whole batch, i.e. what one process computes on the
concatenated batch. The trainer does this once per step for every parameter, whatever wrote the
gradient (autograd, an implicit backward, or a rule that fills ``.grad`` itself such as pc, tssl
or an alignment rule's ``B`` update): :func:`all_reduce_grads` is the one shared call. A rule that
writes gradients *outside* ``rule.step`` (e.g. in ``after_step``) calls it itself, once.

DDP's wrapper is not used: rules call a model's protocol methods (``blocks()``, ``begin()``,
``simulate()``, ...), which a ``DistributedDataParallel`` wrapper hides, and an implicit backward
does not run the autograd hooks DDP relies on. One bucketed all-reduce after the backward is what
DDP does too, minus the overlap of communication with the backward pass.

BatchNorm: with per-rank batch statistics (the default, as DDP without SyncBatchNorm) the result
is the average of per-shard gradients, not the concatenated batch's. ``train.sync_bn`` converts
``nn.BatchNorm*d`` modules to ``nn.SyncBatchNorm`` (CUDA only in PyTorch). A model that applies
its BatchNorms functionally (IDE's feedback SNNs) calls :func:`batch_norm` / :func:`batch_moments`:
the global batch's statistics on any backend, with gradients weighted for the reduction above
(:class:`_SumOverRanks`), and exactly ``F.batch_norm`` in a single process. A computation whose
control flow depends on the whole batch (a fixed-point solver's batch residual) reduces it with
:func:`all_reduce`, so that every rank decides alike.

Uses nothing of bioprop (a bottom-floor module).
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "local_rank",
    "is_main",
    "launched_by_torchrun",
    "init_from_env",
    "shard_range",
    "all_reduce_grads",
    "all_reduce_sum",
    "all_reduce",
    "batch_moments",
    "batch_norm",
    "broadcast_object",
    "gather_objects",
    "barrier",
    "broadcast_parameters",
]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or not distributed): the process that writes checkpoints, metrics and progress."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """``torchrun`` (or ``torch.distributed.run``) set ``WORLD_SIZE`` > 1 for this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto", timeout_s: float = 600.0) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), once: NCCL when the run's device is CUDA,
    gloo on CPU. Returns this rank's device (``cuda:LOCAL_RANK`` on GPUs). Without torchrun's
    variables it does nothing and returns the device ``device`` names."""
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and device in ("auto", "cuda"):
        dev = torch.device("cuda", local_rank() if launched_by_torchrun() else 0)
    elif want_cuda:
        dev = torch.device(device)
    else:
        dev = torch.device("cpu")
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return dev
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    # leave the group before the interpreter tears down: a group still alive at exit can abort the
    # process from the backend's threads ("terminate called without an active exception")
    atexit.register(_leave_group)
    return dev


def _leave_group() -> None:
    """At exit: wait for the other ranks (a rank that tears its group down while a peer still
    talks to it aborts the peer), then destroy the group. A peer that died is not waited for
    longer than a minute."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer gone: nothing to wait for
        pass
    dist.destroy_process_group()


def shard_range(n: int, r: Optional[int] = None, world: Optional[int] = None) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of a batch of ``n`` that rank ``r`` of ``world`` takes: contiguous,
    sizes differing by at most one (the first ``n % world`` ranks get one more); their union, in
    rank order, is the batch."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], weight: Optional[float] = None) -> None:
    """Combine ``.grad`` of ``params`` across ranks, in place: ``g <- sum_r w_r g_r`` with this
    rank's weight ``w_r = weight`` (default ``1 / world_size``: the mean). Give the weight
    ``b_r / B`` when the shards' sizes differ. One all-reduce of a flat buffer per dtype and
    device; parameters whose ``.grad`` is ``None`` on every rank stay ``None`` (a rank whose
    ``.grad`` is ``None`` where another's is not contributes zeros). No-op when not distributed."""
    params = [p for p in params if p.requires_grad]
    if not is_distributed() or not params:
        return
    w = 1.0 / world_size() if weight is None else float(weight)
    # which parameters have a gradient anywhere (ranks must agree on the buffer layout)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=_comm_device(params))
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    chosen = [p for p, h in zip(params, has.tolist()) if h]
    groups: dict = {}
    for p in chosen:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, device), ps in groups.items():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps])
        flat.mul_(w)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        i = 0
        for p in ps:
            n = p.numel()
            g = flat[i:i + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            i += n


def _comm_device(params: Sequence[torch.Tensor]) -> torch.device:
    if dist.get_backend() == "nccl":
        return params[0].device
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Sum each tensor of ``values`` over ranks (new tensors, detached; copies when not distributed).
    Through :func:`all_reduce`, so host tensors are moved for NCCL as there."""
    if not is_distributed():
        return [v.detach().clone() for v in values]
    return [all_reduce(v) for v in values]


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A new tensor: ``t`` summed (``op='sum'``) or its elementwise maximum (``'max'``) over ranks;
    ``t`` itself when not distributed (no copy: a single process computes exactly what it did
    without this call). No gradient."""
    if not is_distributed():
        return t
    if op not in ("sum", "max"):
        raise ValueError(f"all_reduce: op must be 'sum' or 'max', got {op!r}")
    out = t.detach().clone()
    nccl_host = dist.get_backend() == "nccl" and out.device.type != "cuda"  # NCCL reduces CUDA tensors only
    if nccl_host:
        out = out.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out.to(t.device) if nccl_host else out


class _SumOverRanks(torch.autograd.Function):
    """``s = sum_r x_r`` over ranks, with the backward that data-parallel training needs.

    The trainer combines ``g = sum_r w_r g_r`` (``w_r = b_r / B``, ``g_r`` the gradient of rank
    ``r``'s mean loss ``L_r``): the gradient of ``L = sum_r w_r L_r``. A statistic shared by all
    ranks receives ``dL/ds = sum_q w_q dL_q/ds``; rank ``r``'s parameter gradient, later scaled by
    ``w_r``, must carry ``dL/ds * ds_r/dtheta``, so the backward on rank ``r`` returns
    ``(sum_q w_q dL_q/ds) / w_r`` (with equal shards: the plain sum, as
    ``torch.distributed.nn.all_reduce``; with unequal ones the plain sum would be wrong)."""

    @staticmethod
    def forward(ctx, x, w):  # type: ignore[override]
        ctx.w = float(w)
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        g = (g * ctx.w).contiguous()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return (g / ctx.w if ctx.w > 0 else torch.zeros_like(g)), None


def _moments(z: torch.Tensor, dims: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Mean, biased variance (two passes: ``mean((z - mean)^2)``) and element count over ``dims``
    of the batches of all ranks, differentiable (gradients as :class:`_SumOverRanks`)."""
    count = 1
    for d in dims:
        count *= z.shape[d]
    total = float(all_reduce(torch.tensor([float(count)], dtype=torch.float64)).item())
    w = count / total
    mean = _SumOverRanks.apply(z.sum(dims), w) / total
    shape = [1] * z.dim()
    keep = [d for d in range(z.dim()) if d not in {d % z.dim() for d in dims}]
    for d in keep:
        shape[d] = z.shape[d]
    c = z - mean.reshape(shape)
    var = _SumOverRanks.apply((c * c).sum(dims), w) / total
    return mean, var, total


def batch_moments(z: torch.Tensor, dims: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of ``z`` over ``dims`` and over the batches of all ranks, with
    gradients (what a model that computes BatchNorm statistics itself calls for synchronised
    BatchNorm). The gradients assume the trainer's reduction: each rank's loss is the mean over
    its shard and the ranks' gradients are combined with weights ``b_r / B`` (see
    :class:`_SumOverRanks`). Not distributed: ``z.mean(dims)``, ``z.var(dims, unbiased=False)``."""
    if not is_distributed():
        return z.mean(dims), z.var(dims, unbiased=False)
    mean, var, _ = _moments(z, dims)
    return mean, var


def batch_norm(z: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.batch_norm`` with the batch statistics of all ranks (synchronised
    BatchNorm on any device and backend, gloo included): in training, normalise with the global
    batch's mean and biased variance (:func:`batch_moments`, with gradients) and move the running
    statistics towards the global mean and unbiased variance, as ``F.batch_norm`` does for one
    process. Not distributed, or not training: exactly ``F.batch_norm`` (the same call)."""
    if not (training and is_distributed()):
        return torch.nn.functional.batch_norm(z, running_mean, running_var, weight, bias, training, momentum, eps)
    if z.dtype in (torch.float16, torch.bfloat16):  # as autocast runs batch_norm: in fp32
        z = z.float()
    dims = [0] + list(range(2, z.dim()))
    mean, var, n = _moments(z, dims)
    if running_mean is not None and running_var is not None:
        if momentum is None:
            raise ValueError("batch_norm: momentum=None (cumulative averages) is not supported across ranks")
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * (n / max(n - 1.0, 1.0))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    shape = [1, -1] + [1] * (z.dim() - 2)
    out = (z - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (identical starting points)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        if dist.get_backend() == "nccl" or t.device.type == "cpu":
            dist.broadcast(t.data, src=src)
        else:
            tmp = t.data.cpu()
            dist.broadcast(tmp, src=src)
            t.data.copy_(tmp)
