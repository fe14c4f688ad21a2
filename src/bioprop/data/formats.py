"""Readers of the standard on-disk dataset formats, with errors that name the file.

- **IDX** (MNIST, Fashion-MNIST; LeCun's format): a big-endian header ``0x00 0x00 TYPE NDIM``
  (magic ``0x00000803`` for uint8 images of 3 dims, ``0x00000801`` for uint8 labels of 1 dim),
  then ``NDIM`` big-endian uint32 sizes, then the uint8 data. Read gzipped (``.gz``) or plain.
- **CIFAR python batches** (``cifar-10-batches-py/data_batch_1..5, test_batch``;
  ``cifar-100-python/train, test``): pickled dicts with ``data`` of shape ``(N, 3072)`` uint8,
  channel-major (R plane, G plane, B plane of 32x32), and ``labels`` (CIFAR-10) or
  ``fine_labels`` (CIFAR-100). Keys are bytes when the official files are unpickled with
  ``encoding="bytes"`` and str otherwise; both are accepted (the files are read with
  ``pickle.load(f, encoding="latin1")`` and bytes keys decoded). The unpickler accepts only the
  globals that rebuild numpy arrays (:data:`_CIFAR_GLOBALS`): a file that names any other is a
  :class:`DataError`, so reading a dataset never runs code from it.

Whether a file is gzipped is decided by its content (the gzip magic ``1f 8b``), not only by its
name: a ``.gz`` file that a browser already decompressed, or a plain-named file that is still
gzipped, both read correctly. Every failure is a :class:`DataError` (a ``ValueError``) whose
message starts with the file's path and says what was expected and how to fix it.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Tuple, Union

import numpy as np

__all__ = ["DataError", "read_idx", "write_idx", "read_cifar", "read_cifar_batch"]


class DataError(ValueError):
    """A dataset file is missing, truncated or corrupt; the message names the file and the fix."""


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "delete it and download it again (or set data.download=true)"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its content is gzip."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({type(e).__name__}: {e}); the file is corrupt or "
                            f"truncated: {_FIX}") from None
    if path.suffix == ".gz" and not (raw[:2] == b"\x00\x00" and len(raw) > 2 and raw[2] in _IDX_TYPES):
        # a .gz that holds neither gzip nor an (already decompressed) IDX file
        raise DataError(f"{path}: not a valid gzip file (starts with {raw[:4].hex() or 'nothing'}, expected the "
                        f"gzip magic 1f8b); the file is corrupt or was saved from an error page: {_FIX}")
    return raw


_IDX_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_idx(path: Union[str, Path], expect_ndim: int | None = None, expect_uint8: bool = False) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of its stored shape and type.

    ``expect_ndim`` (1 for labels, 3 for images) turns a file of the other kind into a
    :class:`DataError`, as do a bad magic number, a truncated header and a data size that differs
    from the product of the header's dimensions. ``expect_uint8``: a file whose header declares
    another element type (e.g. float32) is a :class:`DataError` that says so (MNIST-format images
    and labels are uint8).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
                        f"00000801 for labels or 00000803 for images): the file is corrupt or of another "
                        f"format: {_FIX}")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        kind = {1: "labels (idx1)", 3: "images (idx3)"}.get(expect_ndim, f"{expect_ndim}-dim data")
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {kind}")
    kind = _IDX_NAMES[raw[2]]
    if expect_uint8 and raw[2] != 0x08:
        raise DataError(f"{path}: IDX file of {kind} values (type byte 0x{raw[2]:02X}); this dataset reads uint8 "
                        "(type 0x08) images and labels: write the pixels as uint8 0..255 (e.g. "
                        "bioprop.data.write_idx(path, (x * 255).round().astype('uint8')))")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, found "
                        f"{len(raw)}; {_FIX}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        what = "truncated" if have < need else "oversized"
        raise DataError(f"{path}: {what} IDX file: header says {'x'.join(map(str, dims))} {kind} values = "
                        f"{need} bytes of data, found {have}; {_FIX}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: Union[str, Path], array: np.ndarray, compresslevel: int = 9) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``, with mtime 0 so
    the bytes are reproducible)."""
    path = Path(path)
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes() + a.tobytes()
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel,
                                                    mtime=0, filename="") as f:
            f.write(data)
    else:
        path.write_bytes(data)


#: the only globals a CIFAR python batch may name: numpy's array rebuilding (numpy 1 and 2 paths)
#: and the bytes decoding of protocol-2 pickles written by Python 3
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR batch holds only numpy arrays, "
                                     "lists and strings)")


def read_cifar(path: Union[str, Path], label_key: str = "labels") -> Tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.

    ``label_key`` is ``"labels"`` for CIFAR-10 and ``"fine_labels"`` (or ``"coarse_labels"``) for
    CIFAR-100. ``data`` rows are channel-major: pixel ``(c, i, j)`` is ``row[c * 1024 + i * 32 + j]``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # truncated or not a pickle
        raise DataError(f"{path}: cannot be unpickled ({type(e).__name__}: {e}); expected a CIFAR python "
                        f"batch (a pickled dict); the file is corrupt or truncated: {_FIX}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict (CIFAR python batch), got {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: CIFAR batch without 'data' and {label_key!r} (keys: {sorted(map(str, d))}); "
                        "is it a CIFAR-10 batch read as CIFAR-100, or the other way round?")
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'data' or {label_key!r} is not numeric ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072) (N images of 3x32x32)")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels


#: the former name of :func:`read_cifar`
read_cifar_batch = read_cifar
