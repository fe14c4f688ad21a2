"""The trainer's data-parallel parts (``torchrun --nproc_per_node=N -m bioprop train ...``).

- Every rank builds the same run (same seed: same initial weights, broadcast from rank 0 for
  safety) and iterates the same seeded epoch order over the device-resident dataset; of each
  global batch of ``B`` it takes its contiguous shard of ``b_r`` rows
  (:func:`bioprop.distributed.shard_range`): the shards of every step, in rank order, are the
  single-process batch, so the union over ranks is exactly the single-process epoch.
- After ``rule.step`` the gradients are combined with weights ``b_r / B``
  (:func:`bioprop.distributed.all_reduce_grads`): the mean-loss gradient of the global batch.
- Rank 0 alone writes the run directory, metrics, checkpoints and the progress bar; the others
  log nothing. Stochastic parts (dropout masks drawn from the global generator) draw from a
  per-rank stream; every rank's generator state is stored in the checkpoint, so a run resumes
  bit-identically under the same number of processes (and refuses another number).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import distributed as D
from ..config import ConfigError

__all__ = ["setup_device", "shard_batch", "reduce_step_grads", "epoch_totals", "prepare_model",
           "rank_rng_states", "restore_rank_rng", "seed_rank"]


def setup_device(device: str, resolve) -> torch.device:
    """This process's device: joins torchrun's process group (gloo on CPU, NCCL on CUDA) when
    launched by torchrun; else ``resolve(device)``."""
    if D.launched_by_torchrun():
        return D.init_from_env(device)
    return resolve(device)


def seed_rank(seed: int) -> None:
    """Give ranks > 0 their own global-generator stream (dropout masks), after the model is built."""
    r = D.rank()
    if r > 0:
        torch.manual_seed((int(seed) * 1_000_003 + 7919 * r) % (2**63 - 1))


def prepare_model(model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
    """Identical parameters on every rank; ``sync_bn``: BatchNorm layers synchronised across ranks."""
    if sync_bn and D.is_distributed():
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: PyTorch's SyncBatchNorm runs on CUDA only; on CPU leave it off "
                              "(each rank normalises with its shard's statistics)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    D.broadcast_parameters(model)
    return model


def shard_batch(x: torch.Tensor, y: torch.Tensor, time_first: bool = False) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """This rank's rows of a global batch: ``(x_r, y_r, b_r, B)`` (the batch axis of ``x`` is 1
    for time-first spike trains ``[T, B, ...]``, else 0)."""
    B = y.shape[0]
    if not D.is_distributed():
        return x, y, B, B
    a, b = D.shard_range(B)
    xs = x[:, a:b] if time_first else x[a:b]
    return xs, y[a:b], b - a, B


def reduce_step_grads(params, b_local: int, b_global: int, reduction: str = "mean") -> None:
    """``g <- sum_r (b_r / B) g_r`` over every parameter's ``.grad`` (any rule's) for a gradient of
    the mean loss (``reduction='mean'``); ``g <- sum_r g_r`` for a gradient of the batch-summed
    loss (``'sum'``, e.g. tssl: :attr:`bioprop.rules.base.Rule.grad_reduction`)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"grad_reduction must be 'mean' or 'sum', got {reduction!r}")
    if D.is_distributed():
        D.all_reduce_grads(params, weight=b_local / b_global if reduction == "mean" else 1.0)


def global_loss(loss: torch.Tensor, b_local: int, b_global: int) -> torch.Tensor:
    """The global batch's mean loss (every rank sees the same value: a non-finite loss on any rank
    stops every rank, not one)."""
    if not D.is_distributed():
        return loss
    (s,) = D.all_reduce_sum([loss.detach().float() * (b_local / b_global)])
    return s


def epoch_totals(seen: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Sum the epoch's sample count, loss sum and correct count over ranks."""
    if not D.is_distributed():
        return seen, loss_sum, correct
    dev = loss_sum.device
    n, ls, c = D.all_reduce_sum([torch.tensor(float(seen), device=dev), loss_sum.float(), correct.to(dev).float()])
    return int(n.item()), ls, c.long()


def rank_rng_states(state_fn) -> Optional[List[Dict[str, Any]]]:
    """Every rank's generator states (collective: call on every rank); ``None`` when not distributed."""
    if not D.is_distributed():
        return None
    return D.gather_objects(state_fn())


def restore_rank_rng(state: Dict[str, Any], set_fn) -> None:
    """Set this rank's generators from a checkpoint; refuse a different number of processes."""
    ranks = state.get("rng_ranks")
    n = len(ranks) if ranks else 1
    if n != D.world_size():
        raise ConfigError(f"this checkpoint was written by {n} process(es); resume it with the same number "
                          f"(torchrun --nproc_per_node={n}), not {D.world_size()}")
    set_fn(ranks[D.rank()] if ranks else state["rng"])
