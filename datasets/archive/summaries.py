"""Per-frame statistics written into the store, so a DataModule's setup needs no whole frame.

Setup wants, for the training frames only, the wet fraction of each window's target frames (dry
sampling) and the mean/variance of the transformed values (normalisation). Both decompose into
per-frame numbers: valid and wet cell counts, and (count, mean, M2) per transform. The store keeps
them (computed by the code below at build/append), and a DataModule merges them in the order and with
the arithmetic of :class:`StatsAccumulator`, so it gets bit-identical results to reading every frame.

A stored transform whose definition has changed since the build (its values on :data:`PROBE` differ)
is not used: the DataModule falls back to reading the frames, never a stale number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meteovision.datasets.archive.conversions import OUTPUT_UNITS
from meteovision.datasets.archive.sources import Conversion
from meteovision.datasets.normalization import TRANSFORMS, StatsAccumulator, apply_transform, transformed_moments

#: Wet thresholds stored per source (training units); another threshold reads the frames instead.
WET_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "mm h-1": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0),
    "dBZ": (-10.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0),
}
#: Values whose transforms fingerprint each transform's definition at build time.
PROBE = np.array([np.nan, -40.0, -1.0, 0.0, 0.05, 0.1, 0.5, 1.0, 7.3, 55.0, 120.0], dtype=np.float64)


def thresholds_for(kind: Conversion) -> tuple[float, ...]:
    return WET_THRESHOLDS[OUTPUT_UNITS[kind]]


def probe(name: str) -> list[float | None]:
    """The transform of :data:`PROBE` (NaN as None, for JSON): a fingerprint of its definition."""
    out = apply_transform(PROBE.copy(), name)
    return [None if not np.isfinite(v) else float(v) for v in out]


@dataclass(frozen=True)
class FrameSummary:
    """One frame's numbers: ``valid`` cells, ``wet`` (per threshold), and per transform count/mean/M2."""

    valid: np.ndarray  # int64 ()
    wet: np.ndarray  # int64 (J,)
    count: np.ndarray  # int64 (K,)
    mean: np.ndarray  # float64 (K,)
    m2: np.ndarray  # float64 (K,)


def summarize(values: np.ndarray, thresholds: tuple[float, ...]) -> FrameSummary:
    """The numbers of one (H, W) frame, computed exactly as the DataModule does from the frame itself."""
    valid = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        wet = [int((valid & (values > thr)).sum()) for thr in thresholds]
    moments = [transformed_moments(values, name) for name in TRANSFORMS]  # as StatsAccumulator.update
    count, mean, m2 = ([m[i] for m in moments] for i in range(3))
    return FrameSummary(np.asarray(int(valid.sum()), dtype=np.int64), np.asarray(wet, dtype=np.int64),
                        np.asarray(count, dtype=np.int64), np.asarray(mean), np.asarray(m2))


def summary_arrays(values: np.ndarray, thresholds: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """:func:`summarize` as a tuple (valid, wet, count, mean, m2), for one dask task per frame."""
    s = summarize(values, thresholds)
    return s.valid, s.wet, s.count, s.mean, s.m2


@dataclass(frozen=True)
class FrameSummaries:
    """The stored numbers of every frame of a source, in the series' (time-sorted) order."""

    thresholds: tuple[float, ...]
    transforms: tuple[str, ...]  # those whose definition still matches the build's
    valid: np.ndarray  # int64 (T,)
    wet: np.ndarray  # int64 (T, J)
    count: np.ndarray  # int64 (T, K)
    mean: np.ndarray  # float64 (T, K)
    m2: np.ndarray  # float64 (T, K)
    stored_transforms: tuple[str, ...] = TRANSFORMS  # column order of count/mean/m2

    def wet_fraction(self, frames: np.ndarray, threshold: float) -> np.ndarray | None:
        """Wet fraction of each row of frame indices; None when ``threshold`` was not stored."""
        matches = [j for j, t in enumerate(self.thresholds) if t == threshold]
        if not matches:
            return None
        wet = self.wet[:, matches[0]][frames].sum(axis=1)
        return wet / np.maximum(self.valid[frames].sum(axis=1), 1)

    def accumulate(self, acc: StatsAccumulator, frames: np.ndarray) -> bool:
        """Merge ``frames`` into the one-channel ``acc`` as its ``update`` would; False if not stored."""
        name = acc.transforms[0]
        if len(acc.transforms) != 1 or name not in self.transforms:
            return False
        k = self.stored_transforms.index(name)
        for f in frames:
            acc.merge(0, int(self.count[f, k]), float(self.mean[f, k]), float(self.m2[f, k]))
        return True
