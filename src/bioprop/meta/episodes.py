"""Class pools and episodes for meta-learning: M classes x K training images + Q query images.

A :class:`ClassPool` concatenates the classes of one or more registered datasets (labels offset
so that they do not collide: MNIST 0-9, Fashion-MNIST 10-19 in the default pool) and splits them
into meta-train and held-out classes. An episode is a pure function of ``(seed, phase, index)``:
its classes, its images and the network's initial weights are drawn from a generator seeded by
those three numbers, so a resumed run sees the same episodes and every method (FA, the learned
rule, BP) is meta-tested on the very same held-out episodes and initial weights.

Images are scaled to [0, 1] and not normalised (as the reference's ``ToTensor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["ClassPool", "Episode", "episode_generator", "PHASES"]

#: phase numbers that seed episode generators (meta-train, meta-test on held-out, meta-test on train classes)
PHASES = {"train": 0, "heldout": 1, "train_classes": 2}


def episode_generator(seed: int, phase: str, index: int) -> torch.Generator:
    """The CPU generator of episode ``index`` of ``phase`` in a run of ``seed``."""
    return torch.Generator().manual_seed(((int(seed) * 1_000_003 + PHASES[phase]) * 1_000_033 + int(index)) % 2**63)


@dataclass
class Episode:
    """``x_train [M*K, D]`` in presentation order, ``y_train``, ``x_query [M*Q, D]``, ``y_query``,
    ``classes`` (pool labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    classes: List[int]


class ClassPool:
    """Images grouped by pool class: ``images[c]`` uint8 ``[N_c, D]``.

    ``heldout``: pool labels kept out of meta-training (the meta-test classes).
    """

    def __init__(self, images: Sequence[torch.Tensor], names: Sequence[str], heldout: Sequence[int]):
        self.images = [im.reshape(im.shape[0], -1) for im in images]
        self.names = list(names)
        n = len(self.images)
        bad = [c for c in heldout if not 0 <= c < n]
        if bad:
            raise ValueError(f"meta.heldout classes {bad} are outside the pool's 0..{n - 1} ({n} classes)")
        self.heldout = sorted(set(int(c) for c in heldout))
        self.train_classes = [c for c in range(n) if c not in self.heldout]
        if not self.train_classes:
            raise ValueError("meta.heldout lists every class of the pool: nothing is left to meta-train on")
        dims = {im.shape[1] for im in self.images}
        if len(dims) != 1:
            raise ValueError(f"the class pool mixes image sizes {sorted(dims)}: pool datasets of one image size")
        self.in_features = dims.pop()

    @property
    def num_classes(self) -> int:
        return len(self.images)

    @classmethod
    def from_datasets(cls, datasets: Sequence[str], split: str, heldout: Sequence[int],
                      data_dir: Optional[str] = None) -> "ClassPool":
        """Classes of the registered ``datasets`` (their ``split``), labels offset in list order."""
        from ..data import create_dataset

        images: List[torch.Tensor] = []
        names: List[str] = []
        for name in datasets:
            ds = create_dataset(name, data_dir=data_dir)
            x, y = ds.split(split)
            if ds.timed or x.dtype != torch.uint8:
                raise ValueError(f"meta: dataset {name!r} does not hold uint8 images ({x.dtype}"
                                 f"{', spike trains' if ds.timed else ''}); the class pool needs image datasets")
            for c in range(ds.num_classes):
                sel = x[y == c]
                if len(sel):
                    images.append(sel.reshape(len(sel), -1))
                    names.append(f"{name}:{c}")
        return cls(images, names, heldout)

    def classes_of(self, phase: str) -> List[int]:
        return self.heldout if phase == "heldout" else self.train_classes

    def episode(self, generator: torch.Generator, phase: str, M: int, K: int, Q: int,
                dtype: torch.dtype = torch.float32) -> Episode:
        """M distinct classes of ``phase``'s classes, K + Q distinct images of each, training images
        shuffled into one presentation order."""
        pool = self.classes_of(phase)
        if M > len(pool):
            raise ValueError(f"meta.M={M} classes per episode, but the {phase} split of the pool has only "
                             f"{len(pool)} classes ({pool}); lower M or change meta.heldout")
        pick = torch.randperm(len(pool), generator=generator)[:M]
        classes = [pool[int(i)] for i in pick]
        xt, yt, xq, yq = [], [], [], []
        for c in classes:
            imgs = self.images[c]
            if imgs.shape[0] < K + Q:
                raise ValueError(f"class {self.names[c]} has {imgs.shape[0]} images, fewer than K+Q={K + Q}")
            idx = torch.randperm(imgs.shape[0], generator=generator)[:K + Q]
            xt.append(imgs[idx[:K]])
            xq.append(imgs[idx[K:]])
            yt.append(torch.full((K,), c, dtype=torch.long))
            yq.append(torch.full((Q,), c, dtype=torch.long))
        x_train, y_train = torch.cat(xt), torch.cat(yt)
        order = torch.randperm(x_train.shape[0], generator=generator)
        scale = 1.0 / 255.0
        return Episode(x_train[order].to(dtype) * scale, y_train[order], torch.cat(xq).to(dtype) * scale,
                       torch.cat(yq), classes)
