"""Webcam images as torch samples: labels to class indices, resized images in an LRU, the dataset.

Class names and visibility bins come from the application table (:mod:`meteovision.core.applications`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from meteovision.core.applications import VISIBILITY_BINS_M
from meteovision.datasets.catalog import ImageRecords
from meteovision.datasets.errors import MissingVariableError
from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.sampling import Sample, SampleKey, SamplingError, seconds_since_epoch, split_key

LOG = logging.getLogger(__name__)


def visibility_classes(visibility_m: np.ndarray, bins: Sequence[float] = VISIBILITY_BINS_M) -> np.ndarray:
    """Visibility (m) -> class index (0: below the first bin edge ...); -1 where unknown."""
    v = np.asarray(visibility_m, dtype=np.float64)
    out = np.digitize(v, np.asarray(bins, dtype=np.float64), right=False).astype(np.int64)
    out[~np.isfinite(v)] = -1
    return out


def class_indices(values: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Class names -> indices; -1 where empty or unknown."""
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup.get(v, -1) for v in values], dtype=np.int64)


def read_image(path: Path) -> np.ndarray:
    """uint8 [3, H, W] RGB of a webcam image, via the readers."""
    from meteovision.datasets.readers import open_dataset

    with open_dataset(path) as ds:
        for var in ds.data_vars.values():
            if var.dims[-3:] == ("band", "y", "x"):
                arr = np.asarray(var.values)
                return arr[0] if arr.ndim == 4 else arr
    raise MissingVariableError(path, "no (band, y, x) image variable")


def resize_image(raw: np.ndarray, size: int, path: Path | None = None) -> np.ndarray:
    """uint8 [3, H, W] -> uint8 [3, size, size] (bilinear, antialiased)."""
    if raw.ndim != 3 or raw.shape[0] != 3:
        raise MissingVariableError(path or Path("?"), f"expected an RGB image [3, H, W], not {raw.shape}")
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None]
    resized = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8).numpy()


class ImageStore:
    """Webcam images of :class:`ImageRecords`, resized to ``image_size`` squared (bilinear, antialiased)
    once and kept as uint8 in an LRU of ``cache_images`` (per worker; the cache is not pickled)."""

    def __init__(
        self,
        records: ImageRecords,
        image_size: int = 128,
        cache_images: int = 1024,
        image_reader: Callable[[Path], np.ndarray] | None = None,
    ) -> None:
        if image_size < 8:
            raise SamplingError(f"image_size must be >= 8, got {image_size}")
        self.records = records
        self.image_size = image_size
        self.cache_images = max(int(cache_images), 1)
        self.image_reader = image_reader or read_image
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def image(self, record: int) -> np.ndarray:
        """uint8 [3, S, S] image of record ``record``."""
        cached = self._cache.get(record)
        if cached is not None:
            self._cache.move_to_end(record)
            return cached
        path = self.records.paths[record]
        img = resize_image(np.asarray(self.image_reader(path)), self.image_size, path)
        self._cache[record] = img
        if len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return img


class ClassificationDataset(Dataset[Sample]):
    """Webcam image -> class index (snow class, visibility class); records without a label are left out.

    Training flips images left-right only (a scene has its sky on top).
    """

    def __init__(
        self,
        store: ImageStore,
        indices: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        normalization: NormalizationStats,
        *,
        train: bool = False,
        flips: bool = False,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.records = store.records
        idx = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(self.records),):
            raise SamplingError(f"{labels.shape[0]} labels for {len(self.records)} records")
        keep = labels[idx] >= 0
        if (~keep).any():
            LOG.warning("%s: %d image(s) without a usable label left out", self.records.csv_path, int((~keep).sum()))
        self.indices = idx[keep]
        self.labels = labels
        self.normalization = normalization
        self.train = train
        self.flips = flips
        self.seed = seed

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, key: SampleKey) -> Sample:
        epoch, idx = split_key(key)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range (0..{len(self) - 1})")
        record = int(self.indices[idx])
        x = self.normalization.normalize(self.store.image(record).astype(np.float32), channel_axis=0)
        if self.train and self.flips and np.random.default_rng([self.seed, epoch, idx]).random() < 0.5:
            x = np.ascontiguousarray(x[..., ::-1])
        return {
            "inputs": torch.from_numpy(x),
            "target": torch.tensor(int(self.labels[record]), dtype=torch.int64),
            "time": torch.tensor(seconds_since_epoch(self.records.times[record]), dtype=torch.float64),
        }
