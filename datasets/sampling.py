"""What every torch dataset of this package shares: the sample type, its error, and epoch-keyed sampling.

Training patches are drawn from ``(seed, epoch, index)``: the same epoch gives the same patches
whatever the number of workers, because :class:`EpochSampler` hands each dataset its epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from meteovision.datasets.errors import MeteovisionError

Sample = dict[str, torch.Tensor]
SampleKey = int | tuple[int, int]


class SamplingError(MeteovisionError):
    """Patches or windows that cannot be drawn with the requested settings."""


def seconds_since_epoch(t: np.datetime64) -> float:
    """Seconds since 1970 of ``t`` (the ``time`` entry of a sample)."""
    return float(np.asarray(t).astype("datetime64[ns]").astype(np.int64)) / 1e9


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` so random patches are reproducible per epoch in any worker.

    The order is shuffled from ``(seed, epoch)`` when ``shuffle``. Lightning calls
    :meth:`set_epoch` before each epoch; without it the epoch advances on each iteration.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.length)
            if self.shuffle
            else np.arange(self.length)
        )
        for i in order:
            yield epoch, int(i)


def split_loader(
    ds: Dataset[Sample], split: str, *, batch_size: int, num_workers: int, seed: int
) -> DataLoader[Sample]:
    """The loader of one split: epoch-keyed shuffled sampling for "train", the fixed order otherwise."""
    workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    if split == "train":
        sampler = EpochSampler(len(ds), shuffle=True, seed=seed)  # type: ignore[arg-type]
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, **workers)  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=batch_size, shuffle=False, **workers)  # type: ignore[arg-type]


def split_key(key: SampleKey) -> tuple[int, int]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)
