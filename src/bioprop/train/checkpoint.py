"""Atomic checkpoints: weights in safetensors, the rest of the training state beside them.

A checkpoint is a directory ``epoch_NNNN/`` holding

- ``model.safetensors``: every tensor of ``model.state_dict()`` (parameters and buffers);
- ``state.pt``: optimizer, LR scheduler, grad scaler, the rule's state (its generator), the
  RNG states (torch CPU/CUDA, numpy, random), epoch, global step, metric history and config.

It is written into ``epoch_NNNN.tmp-PID/`` with every file fsync'ed, then renamed into place,
and only then is the ``latest`` pointer file replaced (write + fsync + ``os.replace``). A run
killed at any moment leaves either the previous or the new checkpoint, never a torn one (and a
``*.tmp-PID`` leftover, removed by :func:`remove_partial` when the run starts again).

``state.pt`` holds plain data only (tensors, numbers, strings, lists, dicts: the numpy RNG state
is stored as a tensor) and is read with ``torch.load(weights_only=True)``, which refuses any
pickled Python object: opening a checkpoint never runs code from it. (Checkpoints of earlier
versions, which stored the numpy RNG state as a numpy array, are read with exactly the numpy
array constructors allowed, nothing else.) A checkpoint whose weights hold NaN/Inf is never
written: :func:`save_checkpoint` refuses it.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..nonfinite import NonFiniteError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "CheckpointError", "NoCheckpointError", "load_weights", "complete_checkpoints", "remove_partial"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, refused or does not match the model."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """``--resume`` or ``eval`` found no checkpoint at all where it looked."""


def rng_state() -> Dict[str, Any]:
    """Every RNG state as plain data (the numpy MT19937 keys as an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy()
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), pos, has_gauss, cached))
    r = state["random"]
    random.setstate((r[0], tuple(r[1]), r[2]))
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
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"refusing to write checkpoint {final}: the model's {', '.join(bad[:3])}"
                             f"{' ...' if len(bad) > 3 else ''} hold NaN/Inf; the previous checkpoint is kept")
    tmp = ckpt_dir / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
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


def complete_checkpoints(ckpt_dir: Union[str, Path]) -> List[Path]:
    """The complete ``epoch_NNNN`` checkpoints of ``ckpt_dir`` (both files present), oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("epoch_*") if ".tmp" not in p.name and (p / "model.safetensors").is_file()
                  and (p / "state.pt").is_file())


def remove_partial(ckpt_dir: Union[str, Path]) -> List[Path]:
    """Remove the ``*.tmp-PID`` leftovers of checkpoint writes killed midway (whose process is
    gone); return what was removed."""
    d = Path(ckpt_dir)
    removed = []
    if not d.is_dir():
        return removed
    for p in d.glob("*.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _good_hint(d: Path, bad: Optional[Path] = None) -> str:
    good = [c for c in complete_checkpoints(d) if c != bad]
    if not good:
        return "no earlier complete checkpoint is left: start the run again without --resume"
    return f"the newest intact checkpoint is {good[-1]}: resume from it with --resume {good[-1]}"


def latest_checkpoint(path: Union[str, Path]) -> Optional[Path]:
    """Resolve a run directory, a checkpoints directory or a checkpoint to the newest checkpoint.

    A ``latest`` pointer at a missing or incomplete checkpoint is a :class:`CheckpointError` that
    names the newest complete one (and how to resume from it)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    for d in (p / "checkpoints", p):
        pointer = d / "latest"
        if pointer.is_file():
            try:
                name = pointer.read_text().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{pointer} cannot be read ({e}); {_good_hint(d)}") from None
            c = d / name
            if name and "/" not in name and (c / "model.safetensors").is_file() and (c / "state.pt").is_file():
                return c
            raise CheckpointError(f"{pointer} points at {c}, which is missing or incomplete; {_good_hint(d, c)}")
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
    try:
        if model is not None:
            load_weights(model, ckpt)
        return _load_state(f)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {_good_hint(ckpt.parent, ckpt)}") from None


#: globals of the numpy arrays that checkpoints before weights_only loading stored (the RNG state)
_LEGACY_NUMPY = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype", "numpy.dtypes.UInt32DType", "torch.torch_version.TorchVersion"}


def _load_state(f: Path) -> Dict[str, Any]:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(f)
        if unsafe and set(unsafe) <= _LEGACY_NUMPY:
            return _load_legacy(f, unsafe)
        if unsafe or "weights_only" in str(e).lower() or "weights only" in str(e).lower():
            what = ", ".join(unsafe) if unsafe else "a Python object"
            raise CheckpointError(
                f"{f}: refused: it holds pickled Python objects ({what}), not plain data; bioprop loads "
                "checkpoints with torch.load(weights_only=True) so that opening one never runs code. Use a "
                "checkpoint written by bioprop") from None
        raise CheckpointError(f"{f}: cannot be read ({e}); the file is corrupt or truncated") from None
    except Exception as e:
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                              "truncated") from None


def _unsafe_globals(f: Path) -> List[str]:
    fn = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if fn is None:  # torch < 2.5
        return []
    try:
        return list(fn(str(f)))
    except Exception:
        return []


def _load_legacy(f: Path, names: List[str]) -> Dict[str, Any]:
    import importlib

    objs = []
    for n in sorted(_LEGACY_NUMPY):  # the listed ones and what they build (e.g. numpy's dtype classes)
        mod, _, attr = n.rpartition(".")
        try:
            objs.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            if n in names:
                raise CheckpointError(f"{f}: written by an older bioprop with numpy arrays this numpy cannot "
                                      f"rebuild ({n})") from None
    try:
        with torch.serialization.safe_globals(objs):
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                              "truncated") from None
