"""Device-resident batches with on-device augmentation: no DataLoader workers in the hot path.

A split is moved to the training device once, as uint8; every batch is indexed, converted to
float, augmented and normalised there. Shuffling and augmentation draw from a generator seeded by
``(seed, epoch)``, so an epoch's batches are a pure function of the seed and the epoch number,
which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["TensorLoader", "augment_batch", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """The generator for epoch ``epoch`` of a run seeded with ``seed``, on ``device``.

    Its seed is a fixed function of ``(seed, epoch)`` only, so the shuffle order and augmentation
    draws of an epoch do not depend on what ran before it (resuming at an epoch boundary).
    """
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1))
    return g


def augment_batch(x: torch.Tensor, padding: int = 0, flip: bool = False,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample random crop with zero padding and random horizontal flip of ``x[B, C, H, W]``.

    Crop: ``x`` is zero-padded by ``padding`` on each side and a window of the original size is
    taken at an offset ``(oy, ox)`` drawn uniformly from ``{0..2 padding}^2`` for each sample, in
    one advanced-indexing gather (no loop over samples): ``out[i] = pad(x)[i, :, oy_i:oy_i+H,
    ox_i:ox_i+W]``. Flip: each sample is mirrored left-right (last dim) with probability 1/2.

    Draws, in this order, from ``generator`` (which must live on ``x.device``; None = the global
    RNG): ``oy`` and ``ox`` (``randint``, B each) when ``padding > 0``, then ``rand(B) < 0.5`` (the
    flipped samples) when ``flip``. Any dtype works (the loader augments uint8 before converting).
    """
    if padding <= 0 and not flip:
        return x
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
               rows, cols]
    if flip:
        f = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader:
    """Iterate ``(x float32 normalised [B, C, H, W], y int64)`` batches of a device-resident split.

    ``images`` (uint8 ``[N, C, H, W]``) and ``labels`` (int64 ``[N]``) already live on the device
    (``Dataset.loader`` moves and caches them); each batch is gathered, augmented (uint8), then
    converted to ``(u8 / 255 - mean) / std`` (or ``u8 / 255`` without ``normalize``). ``shuffle``
    draws a permutation from ``generator`` at the start of each iteration; ``len(loader)`` is the
    number of batches, the last one partial unless ``drop_last``. A loader is meant for one epoch:
    iterating it again continues its generator (a new order), while a new loader from
    :func:`epoch_generator` with the same ``(seed, epoch)`` repeats it exactly.
    ``time_first``: samples are ``[N, T, C, H, W]`` spike frames served as ``[T, B, C, H, W]``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], shuffle: bool = False, padding: int = 0,
                 flip: bool = False, generator: Optional[torch.Generator] = None, drop_last: bool = False,
                 normalize: bool = True, time_first: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size = int(batch_size)
        self.shuffle, self.padding, self.flip = shuffle, int(padding), bool(flip)
        self.generator = generator
        self.drop_last = drop_last
        self.time_first = time_first
        if time_first and (padding or flip):
            raise ValueError("augmentation of spike trains is not supported; set data.augment=false")
        dev = images.device
        c = images.shape[2] if time_first else images.shape[1]
        m = torch.tensor(mean if normalize else [0.0] * c, dtype=torch.float32, device=dev)
        s = torch.tensor(std if normalize else [1.0] * c, dtype=torch.float32, device=dev)
        # x = (u8 / 255 - mean) / std  =  u8 * scale + shift; spike frames (time_first) pass as 0/1
        self._scale = (1.0 / (255.0 * s)).view(1, -1, 1, 1) if not time_first else torch.ones((), device=dev)
        self._shift = (-m / s).view(1, -1, 1, 1) if not time_first else torch.zeros((), device=dev)
        #: every batch is finite by construction: integer images (uint8) and a finite normalisation
        #: (the trainer then skips its per-step NaN/Inf flag of the input; float images keep it)
        self.finite_inputs = (not images.is_floating_point() and not images.is_complex()
                              and bool(torch.isfinite(self._scale).all()) and bool(torch.isfinite(self._shift).all()))

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        dev = self.images.device
        order = (torch.randperm(n, device=dev, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=dev))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.time_first:  # [B, T, C, H, W] -> [T, B, C, H, W]
                yield (x.float() * self._scale + self._shift).transpose(0, 1), self.labels[idx]
                continue
            if self.padding or self.flip:
                x = augment_batch(x, self.padding, self.flip, self.generator)
            yield x.float() * self._scale + self._shift, self.labels[idx]
