"""Time split within each source, events from gaps, and sequence windows at the common time step.

Per source: the latest block is test (from ``test_from``, the evaluate config's window, else the last
``test_fraction`` of frames), the block before it validation (``val_fraction`` of what is left), the
rest training, with ``guard_minutes`` dropped before each boundary. Frames inside an ``exclude``
window are never train nor validation. Windows are N + M frames exactly one common step apart,
all of one split: a 5-min series at a 15-min step gives windows of every third frame, at each phase.
At native steps (:func:`lead_windows`) a window is N past frames one native step apart and the future
frames at that step up to the network's last lead; those outside the split are missing (-1), not cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meteovision.datasets.archive.sources import SourceSettings

SPLITS: tuple[str, ...] = ("train", "val", "test")
NONE = ""


def _minutes(m: float) -> np.timedelta64:
    return np.timedelta64(round(m * 60e9), "ns")


def events_from_gaps(times: np.ndarray, max_gap_minutes: float) -> np.ndarray:
    """Event id per frame: a new event starts after a gap longer than ``max_gap_minutes``."""
    t = np.asarray(times).astype("datetime64[ns]")
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(t) > _minutes(max_gap_minutes))]).astype(np.int64)


def split_labels(times: np.ndarray, src: SourceSettings, *, val_fraction: float, test_fraction: float,
                 guard_minutes: float) -> np.ndarray:
    """Split name per frame ("train", "val", "test" or "" for guard gaps and excluded frames)."""
    t = np.asarray(times).astype("datetime64[ns]")
    n = t.size
    labels = np.full(n, NONE, dtype=object)
    start = src.test_start()
    if start is not None:
        test = t >= start
    else:
        test = np.zeros(n, dtype=bool)
        k = math.ceil(test_fraction * n) if test_fraction > 0 else 0
        if k:
            test[n - k :] = True
    labels[test] = "test"
    excluded = np.zeros(n, dtype=bool)
    for window in src.exclude:
        excluded |= window.contains(t)
    guard = _minutes(guard_minutes)
    free = ~test & ~excluded
    if test.any():
        free &= t < t[test].min() - guard
    idx = np.flatnonzero(free)
    k = math.ceil(val_fraction * idx.size) if val_fraction > 0 and idx.size else 0
    if k:
        val = idx[idx.size - k :]
        labels[val] = "val"
        train = idx[: idx.size - k]
        train = train[t[train] < t[val].min() - guard]
    else:
        train = idx
    labels[train] = "train"
    return labels


def sequence_windows(times: np.ndarray, labels: np.ndarray, split: str, length: int,
                     step_minutes: float) -> np.ndarray:
    """int64 ``[n, length]`` frame indices of windows ``length`` frames exactly one step apart, all in ``split``."""
    t = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
    step = int(_minutes(step_minutes).astype(np.int64))
    where = {int(v): i for i, v in enumerate(t) if labels[i] == split}
    out = []
    for i, v in enumerate(t):
        if labels[i] != split:
            continue
        chain = [where.get(int(v) + k * step) for k in range(length)]
        if all(c is not None for c in chain):
            out.append(chain)
    return np.asarray(out, dtype=np.int64).reshape(-1, length)


#: Marks a future frame of a :func:`lead_windows` row that lies outside the split (its leads are masked).
MISSING = -1


def lead_windows(times: np.ndarray, labels: np.ndarray, split: str, num_past: int, num_future: int,
                 step_minutes: float, min_future: int) -> np.ndarray:
    """int64 ``[n, num_past + num_future]``: N past frames one step apart, then the future ones (:data:`MISSING`
    where a frame is absent or in another split); kept when at least ``min_future`` of the first future frames
    are present, so short blocks still teach the early leads and long ones every lead."""
    if not 1 <= min_future <= num_future:
        raise ValueError(f"min_future must be in 1..{num_future}, got {min_future}")
    t = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
    step = int(_minutes(step_minutes).astype(np.int64))
    where = {int(v): i for i, v in enumerate(t) if labels[i] == split}
    out = []
    for i, v in enumerate(t):
        if labels[i] != split:
            continue
        chain = [where.get(int(v) + k * step) for k in range(num_past + num_future)]
        if all(c is not None for c in chain[: num_past + min_future]):
            out.append([MISSING if c is None else c for c in chain])
    return np.asarray(out, dtype=np.int64).reshape(-1, num_past + num_future)


@dataclass(frozen=True)
class DrySampling:
    """Keep every window whose wet fraction is >= ``min_wet_fraction``, and ``dry_share`` of the others."""

    min_wet_fraction: float = 0.01
    dry_share: float = 0.25
    wet_threshold: float = 0.1


def keep_windows(wet: np.ndarray, sampling: DrySampling, seed: int) -> np.ndarray:
    """Boolean mask of the windows kept (all wet ones, a seeded ``dry_share`` of the dry ones)."""
    wet_ok = wet >= sampling.min_wet_fraction
    rng = np.random.default_rng(seed)
    return wet_ok | (rng.random(wet.size) < sampling.dry_share)
