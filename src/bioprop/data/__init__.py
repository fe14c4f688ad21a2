"""Datasets: standard on-disk formats, a registry, device-resident batches with augmentation.

- Formats (:mod:`.formats`): MNIST-style IDX files (``train-images-idx3-ubyte`` ..., gzipped or
  not; magic ``0x00000803`` images, ``0x00000801`` labels, big-endian dims) and the CIFAR-10 /
  CIFAR-100 python batches (pickled dicts, ``data`` ``(N, 3072)`` uint8 channel-major, ``labels``
  or ``fine_labels``; str or bytes keys). A bad file is a :class:`DataError` naming it.
- Registry (:mod:`.datasets`): ``create_dataset(name, **DataConfig fields)`` for ``mnist``,
  ``fashion_mnist``, ``cifar10``, ``cifar100``, ``mnist_embedded`` (shipped in the package: the
  first 20,000 train / first 2,000 test images of MNIST) and ``nmnist``. Each dataset has its own
  config class: ``nmnist``'s (:class:`NMNISTConfig`) adds the event binning (``time_steps``,
  ``bin_us``, ``start_us``), which the image datasets reject as unknown keys; ``emnist_<split>``
  (:mod:`.emnist`) reads EMNIST's IDX files. Files are searched in
  ``data_dir`` (``--data-dir``), then ``$BIOPROP_DATA``, then (Fashion-MNIST) Debian's
  ``/usr/share/datasets/fashion-mnist``; ``download=True`` fetches with torchvision.
- Loading (:mod:`.loader`): :class:`TensorLoader` serves ``(x float32 normalised, y int64)``
  batches of a split held on the training device as uint8, shuffled and augmented there
  (:func:`augment_batch`: per-sample random crop with zero padding and horizontal flip) with a
  generator seeded by ``(seed, epoch)``.

Example::

    ds = create_dataset("mnist_embedded", batch_size=128, val_fraction=0.1)
    for epoch in range(epochs):
        for x, y in ds.loader("train", device, seed=seed, epoch=epoch):
            ...
"""

from .datasets import DATASETS, EMBEDDED_DIR, DataConfig, Dataset, NMNISTConfig, create_dataset, search_dirs
from .emnist import EMNIST_SPLITS, load_emnist  # registers emnist_<split>
from .formats import DataError, read_cifar, read_cifar_batch, read_idx, write_idx
from .loader import TensorLoader, augment_batch, epoch_generator

__all__ = [
    "DATASETS",
    "EMBEDDED_DIR",
    "DataConfig",
    "NMNISTConfig",
    "Dataset",
    "create_dataset",
    "search_dirs",
    "EMNIST_SPLITS",
    "load_emnist",
    "DataError",
    "read_cifar",
    "read_cifar_batch",
    "read_idx",
    "write_idx",
    "TensorLoader",
    "augment_batch",
    "epoch_generator",
]
