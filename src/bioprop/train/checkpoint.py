"""Atomic checkpoints: weights in safetensors, the rest of the training state beside them.

A checkpoint is a directory ``epoch_NNNN/`` holding

- ``model.safetensors``: every tensor of ``model.state_dict()`` (parameters and buffers);
- ``state.pt``: optimizer, LR scheduler, grad scaler, the rule's state (its generator), the
  RNG states (torch CPU/CUDA, numpy, random), epoch, global step, metric history and config.

It is written into ``epoch_NNNN.tmp-PID/`` with every file fsync'ed, then renamed into place,
and only then is the ``latest`` pointer file replaced (write + fsync + ``os.replace``). A run
killed at any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "CheckpointError", "load_weights"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model."""


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir: Union[str, Path], epoch: int, model: torch.nn.Module,
                    state: Dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``ckpt_dir/epoch_{epoch:04d}`` atomically and point ``latest`` at it.

    ``state`` is any torch-serialisable mapping (optimizer state, RNG, history...). Older
    checkpoints beyond the newest ``keep`` are removed.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"epoch_{epoch:04d}"
    tmp = ckpt_dir / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    pointer_tmp = ckpt_dir / f"latest.tmp-{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, ckpt_dir / "latest")
    _fsync_dir(ckpt_dir)
    if keep > 0:
        done = sorted(p for p in ckpt_dir.glob("epoch_*") if p.is_dir() and ".tmp" not in p.name)
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(path: Union[str, Path]) -> Optional[Path]:
    """Resolve a run directory, a checkpoints directory or a checkpoint to the newest checkpoint."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    for d in (p / "checkpoints", p):
        pointer = d / "latest"
        if pointer.is_file():
            c = d / pointer.read_text().strip()
            if (c / "model.safetensors").is_file() and (c / "state.pt").is_file():
                return c
            raise CheckpointError(f"{pointer} points at {c}, which is missing or incomplete")
    return None


def load_weights(model: torch.nn.Module, ckpt: Union[str, Path]) -> None:
    """Load ``model.safetensors`` of checkpoint ``ckpt`` into ``model`` (strict)."""
    f = Path(ckpt) / "model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f} not found: not a bioprop checkpoint directory")
    try:
        tensors = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{f}: cannot be read ({e}); the file is corrupt or truncated") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{f} does not match the model: {e}") from None


def load_checkpoint(ckpt: Union[str, Path], model: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """Load ``state.pt`` (and the weights into ``model`` when given)."""
    ckpt = Path(ckpt)
    f = ckpt / "state.pt"
    if not f.is_file():
        raise CheckpointError(f"{f} not found: not a bioprop checkpoint directory")
    if model is not None:
        load_weights(model, ckpt)
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{f}: cannot be read ({e}); the file is corrupt or truncated") from None
