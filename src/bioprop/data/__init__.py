"""Datasets: standard on-disk formats, a registry, device-resident batches with augmentation.

See :mod:`.datasets` for the search order and the embedded MNIST subset, :mod:`.formats` for the
file formats, :mod:`.loader` for batching and augmentation on the training device.
"""

from .datasets import DATASETS, EMBEDDED_DIR, DataConfig, Dataset, create_dataset, search_dirs
from .formats import DataError, read_cifar_batch, read_idx, write_idx
from .loader import TensorLoader, augment_batch, epoch_generator

__all__ = [
    "DATASETS",
    "EMBEDDED_DIR",
    "DataConfig",
    "Dataset",
    "create_dataset",
    "search_dirs",
    "DataError",
    "read_cifar_batch",
    "read_idx",
    "write_idx",
    "TensorLoader",
    "augment_batch",
    "epoch_generator",
]
