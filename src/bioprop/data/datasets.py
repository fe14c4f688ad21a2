"""Dataset registry: ``create_dataset(name, **config)``.

=================  ===========================================================  ==================
name               files (each IDX file plain or ``.gz``)                        found in subfolder
=================  ===========================================================  ==================
``mnist``          ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,     ``mnist/``,
                   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``        ``MNIST/raw/``
``fashion_mnist``  the same four IDX names                                       ``fashion-mnist/``,
                                                                                 ``fashion_mnist/``,
                                                                                 ``FashionMNIST/raw/``
``cifar10``        ``data_batch_1`` .. ``data_batch_5``, ``test_batch``          ``cifar-10-batches-py/``
``cifar100``       ``train``, ``test`` (``fine_labels``)                         ``cifar-100-python/``
``mnist_embedded`` shipped inside the package (see below)                        --
``nmnist``         ``Train/``, ``Test/`` event folders (:mod:`.events`)          ``N-MNIST/``, ``nmnist/``
=================  ===========================================================  ==================

Search order: ``data_dir`` (``--data-dir``), then ``$BIOPROP_DATA``, then for Fashion-MNIST
Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``). In each
directory the files are looked for directly and in the subfolders above (torchvision's layout
included); the first directory that holds all of a dataset's files wins. Nothing is downloaded
unless ``download=True``, which uses torchvision (when installed) into ``data_dir`` (else
``$BIOPROP_DATA``). A dataset that is not found is a :class:`DataError` that lists every
directory looked in and these ways to provide it.

``mnist_embedded`` is shipped inside the package: the **first 20,000 training images and the
first 2,000 test images of MNIST** (in file order, not class-balanced by construction, though all
ten classes are present), in the standard gzipped IDX format under ``bioprop/data/embedded/``,
written by ``tools/make_embedded_mnist.py`` and read by the same :func:`.read_idx`. It needs no
data directory (``data_dir`` and ``download`` are ignored) and is the default of the main job and
of the tests.

Per-channel ``mean`` / ``std`` are the usual published values: MNIST 0.1307 / 0.3081,
Fashion-MNIST 0.2860 / 0.3530, CIFAR-10 (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616),
CIFAR-100 (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import ConfigError, Registry, from_dict, to_dict
from .formats import DataError, read_cifar, read_idx
from .loader import TensorLoader, epoch_generator

__all__ = ["DATASETS", "DataConfig", "NMNISTConfig", "Dataset", "create_dataset", "EMBEDDED_DIR", "search_dirs"]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class DataConfig:
    """Where the data is and how it is served.

    ``augment``: ``None`` = the dataset's standard (random crop 4 + flip for CIFAR, none for the
    MNIST family), ``False`` = none, ``True`` = the standard (for the MNIST family, which has none,
    an error unless ``crop_padding`` / ``flip`` say what to do); ``crop_padding`` / ``flip``
    override its parts. Augmentation applies to the training split only. ``val_fraction`` carves a
    validation split from the training set (a fixed permutation seeded by ``split_seed``) so that
    a figure need not be selected on the test set. ``train_limit`` keeps the first N training
    samples (smoke runs).
    """

    data_dir: Optional[str] = None
    download: bool = False
    batch_size: int = 128
    eval_batch_size: int = 1000
    val_fraction: float = 0.0
    split_seed: int = 0
    augment: Optional[bool] = None
    crop_padding: Optional[int] = None
    flip: Optional[bool] = None
    train_limit: Optional[int] = None
    normalize: bool = True
    drop_last: bool = False

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size"):
            v = getattr(self, key)
            if not v >= 1:
                raise ConfigError(f"data.{key} must be >= 1, got {v}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.train_limit is not None and not self.train_limit >= 1:
            raise ConfigError(f"data.train_limit must be >= 1 (or null for all), got {self.train_limit}")
        if self.crop_padding is not None and not self.crop_padding >= 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {self.crop_padding}")


@dataclass
class NMNISTConfig(DataConfig):
    """:class:`DataConfig` plus the binning of the event files: ``time_steps`` frames of ``bin_us``
    microseconds from ``start_us`` (the IDE / TSSL-BP references: 30 frames of 1 ms from 0). Only
    ``nmnist`` accepts these keys; every other dataset rejects them."""

    time_steps: int = 30
    bin_us: int = 1000
    start_us: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("time_steps", "bin_us"):
            if not getattr(self, key) >= 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.start_us < 0:
            raise ConfigError(f"data.start_us must be >= 0, got {self.start_us}")


@dataclass
class Dataset:
    """A small dataset held as uint8 tensors ``[N, C, H, W]`` (CPU) with int64 labels ``[N]``.

    ``mean`` / ``std`` are per channel, on the [0, 1] scale; ``in_shape`` is ``(C, H, W)``;
    ``crop_padding`` / ``flip`` are the training augmentation that :meth:`loader` applies;
    ``val_x`` / ``val_y`` exist when ``config.val_fraction > 0``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    config: DataConfig = field(default_factory=DataConfig)
    val_x: Optional[torch.Tensor] = None
    val_y: Optional[torch.Tensor] = None
    crop_padding: int = 0
    flip: bool = False
    #: samples are time-first spike trains [N, T, C, H, W]; batches come out as [T, B, C, H, W]
    timed: bool = False
    _cache: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def in_shape(self) -> Tuple[int, ...]:
        return tuple(self.train_x.shape[2:] if self.timed else self.train_x.shape[1:])

    def describe(self) -> str:
        """One line, e.g. ``mnist_embedded: 20000 train / 2000 test, 1x28x28, 10 classes``."""
        val = f" / {len(self.val_y)} val" if self.val_y is not None else ""
        aug = []
        if self.crop_padding:
            aug.append(f"crop {self.crop_padding}")
        if self.flip:
            aug.append("flip")
        steps = f"T={self.train_x.shape[1]} x " if self.timed else ""
        return (f"{self.name}: {len(self.train_y)} train{val} / {len(self.test_y)} test, "
                f"{steps}{'x'.join(map(str, self.in_shape))}, {self.num_classes} classes"
                f"{', augment: ' + ' + '.join(aug) if aug else ''}")

    def split(self, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and int64 labels of ``"train"``, ``"val"`` or ``"test"`` (on the CPU)."""
        if split == "train":
            return self.train_x, self.train_y
        if split == "test":
            return self.test_x, self.test_y
        if split == "val":
            if self.val_x is None or self.val_y is None:
                raise ValueError(f"{self.name}: no validation split; set data.val_fraction > 0")
            return self.val_x, self.val_y
        raise ValueError(f"unknown split {split!r}; choose train, val or test")

    def loader(self, split: str, device: Union[str, torch.device] = "cpu", batch_size: Optional[int] = None,
               shuffle: Optional[bool] = None, seed: int = 0, epoch: int = 0,
               generator: Optional[torch.Generator] = None, drop_last: Optional[bool] = None) -> TensorLoader:
        """Batches of ``split`` on ``device``: ``(x float32 normalised [B, C, H, W], y int64)``.

        The split is copied to ``device`` once (as uint8) and cached on this object, so a loader per
        epoch costs no copy. Training batches are shuffled and augmented with a generator on
        ``device`` seeded by ``(seed, epoch)`` (:func:`.epoch_generator`): the batches of an epoch
        are a function of ``seed`` and ``epoch`` only, so a run resumed at an epoch boundary sees
        exactly the batches it would have seen. Evaluation splits (``val``, ``test``) are neither
        shuffled nor augmented. ``batch_size`` defaults to the config's ``batch_size`` (train) or
        ``eval_batch_size``; ``drop_last`` to the config's (train) or False.
        """
        device = torch.device(device)
        key = (split, str(device))
        if key not in self._cache:
            x, y = self.split(split)
            self._cache[key] = (x.to(device), y.to(device))
        x, y = self._cache[key]
        train = split == "train"
        shuffle = train if shuffle is None else shuffle
        if generator is None and (shuffle or train):
            generator = epoch_generator(seed, epoch, device)
        bs = batch_size or (self.config.batch_size if train else self.config.eval_batch_size)
        if drop_last is None:
            drop_last = self.config.drop_last if train else False
        return TensorLoader(x, y, bs, self.mean, self.std, shuffle=shuffle,
                            padding=self.crop_padding if train else 0, flip=self.flip if train else False,
                            generator=generator, drop_last=drop_last,
                            normalize=self.config.normalize and not self.timed, time_first=self.timed)


DATASETS: Registry[Dataset] = Registry("dataset")


def create_dataset(name: str, /, config: Optional[DataConfig] = None, **kwargs: Any) -> Dataset:
    """Load a registered dataset: ``create_dataset("cifar10", data_dir="~/data", batch_size=128)``.

    ``kwargs`` are :class:`DataConfig` fields (an unknown key is a :class:`~bioprop.config.ConfigError`
    naming the valid ones); ``config`` is a ready config, which ``kwargs`` then override.
    """
    cls = DATASETS.config_class(name)  # an unknown name is a ConfigError listing the available ones
    where = f"{DATASETS.kind}[{name}]"
    if config is None:
        config = from_dict(cls, kwargs, where=where)
    elif kwargs:
        config = from_dict(cls, {**to_dict(config), **kwargs}, where=where)
    return DATASETS.create(name, config)


def search_dirs(c: DataConfig, extra: Sequence[Path] = ()) -> List[Path]:
    """The directories searched, in order: ``c.data_dir``, ``$BIOPROP_DATA``, then ``extra``."""
    dirs: List[Path] = []
    if c.data_dir:
        dirs.append(Path(c.data_dir).expanduser())
    env = os.environ.get("BIOPROP_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.extend(extra)
    return dirs


def _find(c: DataConfig, names: Sequence[str], subdirs: Sequence[str], what: str,
          extra: Sequence[Path] = (), how: str = "") -> List[Path]:
    """Find the directory holding all ``names`` (each possibly ``.gz``); return their paths."""
    dirs = search_dirs(c, extra)
    tried = []
    for d in dirs:
        for sub in ("",) + tuple(subdirs):
            base = d / sub if sub else d
            tried.append(base)
            found = []
            for n in names:
                for cand in (base / n, base / f"{n}.gz"):
                    if cand.is_file():
                        found.append(cand)
                        break
            if len(found) == len(names):
                return found
    if c.data_dir and not Path(c.data_dir).expanduser().is_dir():
        raise DataError(f"{what}: data.data_dir (--data-dir) {c.data_dir} does not exist; pass the directory "
                        "that holds the dataset")
    where = ", ".join(str(t) + ("" if t.is_dir() else " (does not exist)") for t in tried) if tried else \
        "nowhere (no data_dir, $BIOPROP_DATA unset)"
    raise DataError(
        f"{what}: files {', '.join(names)} (or .gz) not found; looked in {where}. Put them in a directory "
        f"and pass --data-dir DIR (or data.data_dir=DIR, or set BIOPROP_DATA=DIR){how}, or set "
        "data.download=true to fetch them with torchvision.")


def _download(name: str, c: DataConfig) -> None:
    """Fetch ``name`` with torchvision into ``data_dir`` (else ``$BIOPROP_DATA``), in its layout."""
    target = c.data_dir or os.environ.get("BIOPROP_DATA")
    if not target:
        raise DataError(f"{name}: data.download=true needs a directory to put the files in: pass --data-dir DIR "
                        "(data.data_dir=DIR) or set BIOPROP_DATA=DIR")
    root = Path(target).expanduser()
    try:
        import torchvision.datasets as tvd  # type: ignore
    except ImportError:
        raise DataError(f"{name}: data.download=true needs torchvision: install torchvision "
                        f"(pip install torchvision) or place the files in {root} yourself") from None
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except DataError:
        raise
    except Exception as e:  # network errors, checksum mismatches, a read-only directory
        raise DataError(f"{name}: download with torchvision into {root} failed ({type(e).__name__}: {e}); "
                        f"place the files in {root} yourself") from None


def _carve(ds: Dataset, c: DataConfig) -> Dataset:
    """Apply ``train_limit`` (first N) and carve ``val_fraction`` of the training set into a validation
    split with a permutation seeded by ``split_seed`` (both splits keep their file order)."""
    if c.train_limit is not None:
        if c.train_limit < 1:
            raise ValueError(f"data.train_limit must be >= 1, got {c.train_limit}")
        ds.train_x, ds.train_y = ds.train_x[: c.train_limit], ds.train_y[: c.train_limit]
    if c.val_fraction:
        if not 0 < c.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {c.val_fraction}")
        n = len(ds.train_y)
        n_val = max(1, int(round(n * c.val_fraction)))
        if n_val >= n:
            raise ValueError(f"data.val_fraction={c.val_fraction} of {n} training samples leaves none to train on")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(c.split_seed))
        val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
        ds.val_x, ds.val_y = ds.train_x[val], ds.train_y[val]
        ds.train_x, ds.train_y = ds.train_x[train], ds.train_y[train]
    return ds


def _augmentation(name: str, c: DataConfig, standard_pad: int, standard_flip: bool,
                  default_on: bool) -> Tuple[int, bool]:
    """``(crop_padding, flip)`` of the training loader.

    ``augment=None`` takes the dataset's standard (``default_on``); ``augment=True`` asks for the
    standard crop/flip (an error for a dataset that has none, unless ``crop_padding`` or ``flip``
    says what to do); ``augment=False`` turns it off. ``crop_padding`` and ``flip`` override.
    """
    on = default_on if c.augment is None else c.augment
    if c.augment and not (standard_pad or standard_flip) and c.crop_padding is None and c.flip is None:
        raise ConfigError(f"dataset[{name}]: augment=true, but {name} has no standard augmentation; say which: "
                          "crop_padding=N (e.g. 2) and/or flip=true")
    pad = (standard_pad if on else 0) if c.crop_padding is None else c.crop_padding
    flip = (standard_flip if on else False) if c.flip is None else c.flip
    if pad < 0:
        raise ConfigError(f"dataset[{name}]: crop_padding must be >= 0, got {pad}")
    return int(pad), bool(flip)


def _idx_dataset(name: str, files: Sequence[Path], c: DataConfig, mean: float, std: float,
                 classes: int = 10) -> Dataset:
    arrays = []
    for f in files:
        arrays.append(read_idx(f, expect_ndim=3 if "images" in f.name else 1, expect_uint8=True))
    (trx, try_, tex, tey) = arrays
    for xs, ys, fx, fy in ((trx, try_, files[0], files[1]), (tex, tey, files[2], files[3])):
        if len(xs) != len(ys):
            raise DataError(f"{fx}: {len(xs)} images but {len(ys)} labels in {fy.name}: the two files do not "
                            "belong together; download both again")
        if len(ys) and int(ys.max()) >= classes:
            raise DataError(f"{fy}: labels outside 0..{classes - 1} (max {int(ys.max())}): not a label file of "
                            f"a {classes}-class dataset")
    pad, flip = _augmentation(name, c, 0, False, default_on=False)
    ds = Dataset(name, torch.from_numpy(trx.copy()).unsqueeze(1), torch.from_numpy(try_.astype(np.int64)),
                 torch.from_numpy(tex.copy()).unsqueeze(1), torch.from_numpy(tey.astype(np.int64)),
                 classes, (mean,), (std,), c, crop_padding=pad, flip=flip)
    return _carve(ds, c)


_IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"]


def _mnist_like(name: str, c: DataConfig, subdirs: Sequence[str], mean: float, std: float,
                extra: Sequence[Path] = (), how: str = "") -> Dataset:
    try:
        files = _find(c, _IDX_NAMES, subdirs, name, extra, how)
    except DataError:
        if not c.download:
            raise
        _download(name, c)
        files = _find(c, _IDX_NAMES, subdirs, name, extra, how)
    return _idx_dataset(name, files, c, mean, std)


@DATASETS.register("mnist", DataConfig, "MNIST (IDX files, 60,000 / 10,000, 1x28x28)")
def _mnist(c: DataConfig) -> Dataset:
    return _mnist_like("mnist", c, ["mnist", "MNIST/raw", "MNIST"], 0.1307, 0.3081)


@DATASETS.register("fashion_mnist", DataConfig,
                   "Fashion-MNIST (IDX files; also found in /usr/share/datasets/fashion-mnist)")
def _fashion(c: DataConfig) -> Dataset:
    return _mnist_like("fashion_mnist", c, ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"],
                       0.2860, 0.3530, extra=[DEBIAN_FASHION_MNIST],
                       how=" or install Debian's dataset-fashion-mnist")


@DATASETS.register("mnist_embedded", DataConfig,
                   "MNIST subset shipped in the package: first 20,000 train / first 2,000 test images")
def _embedded(c: DataConfig) -> Dataset:
    # shipped inside the package: data_dir / $BIOPROP_DATA / download do not apply (and are ignored, so
    # that a global --data-dir does not break the default config)
    files = [EMBEDDED_DIR / f"{n}.gz" for n in _IDX_NAMES]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: the embedded MNIST subset is missing from the installed package; "
                            "reinstall bioprop (or run tools/make_embedded_mnist.py in a source checkout)")
    return _idx_dataset("mnist_embedded", files, c, 0.1307, 0.3081)


def _cifar(name: str, c: DataConfig, folder: str, train_files: Sequence[str], test_file: str,
           label_key: str, classes: int, mean, std) -> Dataset:
    names = list(train_files) + [test_file]
    try:
        files = _find(c, names, [folder], name)
    except DataError:
        if not c.download:
            raise
        _download(name, c)
        files = _find(c, names, [folder], name)
    parts = [read_cifar(f, label_key) for f in files]
    trx = np.concatenate([p[0] for p in parts[:-1]])
    try_ = np.concatenate([p[1] for p in parts[:-1]])
    tex, tey = parts[-1]
    for f, (_, y) in zip(files, parts):
        if y.min() < 0 or y.max() >= classes:
            raise DataError(f"{f}: labels outside 0..{classes - 1}")
    pad, flip = _augmentation(name, c, 4, True, default_on=True)
    ds = Dataset(name, torch.from_numpy(trx), torch.from_numpy(try_), torch.from_numpy(tex),
                 torch.from_numpy(tey), classes, tuple(mean), tuple(std), c, crop_padding=pad, flip=flip)
    return _carve(ds, c)


@DATASETS.register("cifar10", DataConfig, "CIFAR-10 (python batches, 50,000 / 10,000, 3x32x32; crop 4 + flip)")
def _cifar10(c: DataConfig) -> Dataset:
    return _cifar("cifar10", c, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                  "labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100", DataConfig, "CIFAR-100 (python batches, fine labels; crop 4 + flip)")
def _cifar100(c: DataConfig) -> Dataset:
    return _cifar("cifar100", c, "cifar-100-python", ["train"], "test", "fine_labels", 100,
                  (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@DATASETS.register("nmnist", NMNISTConfig,
                   "N-MNIST event files binned into T spike frames [T, 2, 34, 34] (time_steps, bin_us, start_us)")
def _nmnist(c: NMNISTConfig) -> Dataset:
    from .events import read_nmnist_split

    roots = []
    for d in search_dirs(c):
        roots += [d, d / "N-MNIST", d / "nmnist", d / "NMNIST"]
    root = next((r for r in roots if (r / "Train").is_dir() and (r / "Test").is_dir()), None)
    if root is None:
        tried = ", ".join(str(r) for r in roots) or "nowhere (no data_dir, $BIOPROP_DATA unset)"
        raise DataError(f"nmnist: no Train/ and Test/ folders of N-MNIST event files found; looked in {tried}. "
                        "Pass --data-dir DIR (or set BIOPROP_DATA) pointing at the unpacked N-MNIST.")
    if c.time_steps < 1 or c.bin_us < 1:
        raise ValueError(f"nmnist: time_steps and bin_us must be >= 1, got {c.time_steps}, {c.bin_us}")
    trx, try_ = read_nmnist_split(root, "Train", c.time_steps, c.bin_us, c.start_us, c.train_limit or 0)
    tex, tey = read_nmnist_split(root, "Test", c.time_steps, c.bin_us, c.start_us)
    ds = Dataset("nmnist", torch.from_numpy(trx), torch.from_numpy(try_), torch.from_numpy(tex),
                 torch.from_numpy(tey), 10, (0.0, 0.0), (1.0, 1.0), c, timed=True)
    return _carve(ds, dataclasses.replace(c, train_limit=None))
