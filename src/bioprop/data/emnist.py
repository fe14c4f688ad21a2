"""EMNIST (Cohen et al. 2017) from its standard gzipped IDX files, registered as ``emnist_<split>``.

The NIST distribution (``gzip.zip``) unpacks to ``emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte.gz``
for the splits below. Put those files in ``data_dir`` (or ``data_dir/emnist``, ``data_dir/EMNIST/raw``,
``data_dir/gzip``). Nothing is downloaded: torchvision's EMNIST download fetches the same zip
when a network is there (``torchvision.datasets.EMNIST(root, split, download=True)``), then point
``data_dir`` at its ``EMNIST/raw``.

=============  =========  ==============================================
name           classes    labels
=============  =========  ==============================================
emnist_balanced   47      0-46 (the reference's meta-learning data, test split)
emnist_bymerge    47      0-46
emnist_byclass    62      0-61
emnist_digits     10      0-9
emnist_letters    26      stored 1-26, shifted here to 0-25
emnist_mnist      10      0-9
=============  =========  ==============================================

EMNIST images are stored transposed (column-major) relative to MNIST; the reader transposes them
back so that characters stand upright like MNIST's. ``mean`` / ``std`` are computed from the
training images at load time (there are no published per-split values to copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

from .datasets import DATASETS, DataConfig, Dataset, _augmentation, _carve, _find
from .formats import DataError, read_idx

__all__ = ["EMNIST_SPLITS", "emnist_files", "load_emnist"]

#: split -> (number of classes, label offset subtracted from the stored labels)
EMNIST_SPLITS: Dict[str, Tuple[int, int]] = {
    "balanced": (47, 0), "bymerge": (47, 0), "byclass": (62, 0), "digits": (10, 0), "letters": (26, 1),
    "mnist": (10, 0),
}


def emnist_files(split: str):
    return [f"emnist-{split}-train-images-idx3-ubyte", f"emnist-{split}-train-labels-idx1-ubyte",
            f"emnist-{split}-test-images-idx3-ubyte", f"emnist-{split}-test-labels-idx1-ubyte"]


def load_emnist(split: str, c: DataConfig) -> Dataset:
    """The EMNIST ``split`` found in ``c.data_dir`` / ``$BIOPROP_DATA`` (see the module docstring)."""
    if split not in EMNIST_SPLITS:
        raise DataError(f"unknown EMNIST split {split!r}; one of {', '.join(EMNIST_SPLITS)}")
    name = f"emnist_{split}"
    if c.download:
        raise DataError(f"{name}: data.download is not supported for EMNIST (the NIST server's zip is 536 MB); "
                        "download gzip.zip from https://www.nist.gov/itl/products-and-services/emnist-dataset "
                        "(or with torchvision.datasets.EMNIST) and pass --data-dir")
    files = _find(c, emnist_files(split), ["emnist", "EMNIST/raw", "gzip", "EMNIST"], name,
                  how=" (the gzipped IDX files of NIST's EMNIST gzip.zip)")
    classes, offset = EMNIST_SPLITS[split]
    arrays = [read_idx(f, expect_ndim=3 if "images" in f.name else 1) for f in files]
    out = []
    for (x, y), (fx, fy) in zip(((arrays[0], arrays[1]), (arrays[2], arrays[3])), ((files[0], files[1]), (files[2], files[3]))):
        if len(x) != len(y):
            raise DataError(f"{fx}: {len(x)} images but {len(y)} labels in {fy.name}: the files do not belong together")
        y = y.astype(np.int64) - offset
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{fy}: labels outside {offset}..{classes - 1 + offset}: not a label file of EMNIST {split}")
        out.append((torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).unsqueeze(1), torch.from_numpy(y)))
    (trx, try_), (tex, tey) = out
    xf = trx.double() / 255.0
    mean, std = float(xf.mean()) if xf.numel() else 0.0, float(xf.std()) if xf.numel() > 1 else 1.0
    pad, flip = _augmentation(name, c, 0, False, default_on=False)
    ds = Dataset(name, trx, try_, tex, tey, classes, (mean,), (std or 1.0,), c, crop_padding=pad, flip=flip)
    return _carve(ds, c)


def _register(split: str) -> None:
    classes = EMNIST_SPLITS[split][0]

    @DATASETS.register(f"emnist_{split}", DataConfig,
                       f"EMNIST {split} (NIST's gzipped IDX files, {classes} classes, 1x28x28; not downloaded)")
    def _build(c: DataConfig) -> Dataset:
        return load_emnist(split, c)


for _s in EMNIST_SPLITS:
    _register(_s)
