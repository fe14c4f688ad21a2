"""N-MNIST (Orchard et al. 2015): the standard binary event files, binned into spike frames.

Layout: ``<root>/{Train,Test}/<digit>/<id>.bin`` (also found under ``N-MNIST/`` or ``nmnist/``).
Each event is 40 bits, big-endian: ``x`` (8 bits), ``y`` (8 bits), then one bit of polarity
(1 = ON) and a 23-bit timestamp in microseconds. Events are binned into ``T`` frames of
``bin_us`` microseconds starting at ``start_us`` (the IDE / TSSL-BP references use 1 ms bins from
the start, i.e. the first ``T`` ms): a frame pixel is 1 when at least one event of that polarity
falls into the bin, giving a time-first spike train ``[T, 2, 34, 34]`` per sample (channel 0 = OFF,
1 = ON).

Timestamp overflow events, as the official reader (Orchard's ``Read_Ndataset.m`` and
``eventvision.py``; tonic's ``read_mnist_file`` is the same code): an event whose ``y`` address is
240 is not a spike but a marker; it is dropped, and every event from it on has ``2^13`` us added to
its timestamp (per marker, cumulatively). One reader, ours, does this whether or not tonic is
installed (tonic was used where present, and the results depended on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

from .formats import DataError

__all__ = ["read_nmnist_events", "write_nmnist_events", "bin_events", "read_nmnist_split", "SENSOR",
           "OVERFLOW_Y", "OVERFLOW_US"]

SENSOR = (34, 34)
#: the y address that marks a timestamp overflow, and what each such marker adds to later timestamps
OVERFLOW_Y = 240
OVERFLOW_US = 2 ** 13


def _read_own(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5:
        raise DataError(f"{path}: truncated N-MNIST event file ({raw.size} bytes is not a multiple of 5)")
    ev = raw.reshape(-1, 5).astype(np.uint32)
    x, y = ev[:, 0], ev[:, 1]
    p = ev[:, 2] >> 7
    t = (((ev[:, 2] & 0x7F) << 16) | (ev[:, 3] << 8) | ev[:, 4]).astype(np.int64)
    overflow = y == OVERFLOW_Y
    t = t + OVERFLOW_US * np.cumsum(overflow)  # each marker shifts itself and every later event
    keep = ~overflow
    return np.stack([x[keep], y[keep], p[keep], t[keep]], axis=1).astype(np.int64)


def read_nmnist_events(path: Union[str, Path]) -> np.ndarray:
    """Events of one file as an ``[N, 4]`` int64 array of ``(x, y, polarity, t_us)``, timestamp
    overflow markers removed and applied (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out = _read_own(path)
    if out.size and (out[:, 0].max() >= SENSOR[1] or out[:, 1].max() >= SENSOR[0]):
        raise DataError(f"{path}: event address outside the 34x34 sensor: not an N-MNIST file")
    return out


def write_nmnist_events(path: Union[str, Path], events: np.ndarray) -> None:
    """Write ``(x, y, polarity, t_us)`` events in the N-MNIST binary format (for tests and tools)."""
    e = np.asarray(events, dtype=np.int64)
    t = e[:, 3]
    b = np.stack([e[:, 0], e[:, 1], (e[:, 2] << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF], axis=1)
    Path(path).write_bytes(b.astype(np.uint8).tobytes())


def bin_events(events: np.ndarray, time_steps: int, bin_us: int = 1000, start_us: int = 0) -> np.ndarray:
    """Binary spike frames ``[T, 2, 34, 34]`` (uint8): frame ``k`` holds the events with
    ``start_us + k bin_us <= t < start_us + (k + 1) bin_us``; later events are dropped."""
    frames = np.zeros((time_steps, 2) + SENSOR, dtype=np.uint8)
    if events.size == 0:
        return frames
    k = (events[:, 3] - start_us) // bin_us
    keep = (events[:, 3] >= start_us) & (k < time_steps)
    e, k = events[keep], k[keep]
    frames[k, e[:, 2], e[:, 1], e[:, 0]] = 1
    return frames


def read_nmnist_split(root: Path, split: str, time_steps: int, bin_us: int, start_us: int,
                      limit: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """All samples of ``root/split/<digit>/*.bin`` binned: frames ``[N, T, 2, 34, 34]`` and labels."""
    xs: List[np.ndarray] = []
    ys: List[int] = []
    for digit in range(10):
        d = root / split / str(digit)
        if not d.is_dir():
            raise DataError(f"{d}: missing N-MNIST class folder (expected {root}/{split}/0..9/*.bin)")
        for f in sorted(d.glob("*.bin")):
            xs.append(bin_events(read_nmnist_events(f), time_steps, bin_us, start_us))
            ys.append(digit)
            if limit and len(ys) >= limit:
                break
    if not xs:
        raise DataError(f"{root / split}: no .bin event files found")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
