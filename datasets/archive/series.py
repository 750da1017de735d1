"""A source's frames (T, H, W) with their times: in memory from raw files, or read lazily from a Zarr store.

Both paths give the same arrays (the store holds :func:`converted_frame` of each file), so a
DataModule draws the same samples and the same split from either. A store also gives each frame's
precomputed statistics (``summaries``), which spare setup from reading whole frames.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meteovision.datasets.archive.conversions import OUTPUT_UNITS, converted_frame, read_frame
from meteovision.datasets.archive.frames import StoredFrames
from meteovision.datasets.archive.sources import ArchiveError, SourceSettings
from meteovision.datasets.archive.summaries import FrameSummaries

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSeries:
    """Frames of one source in the training quantity (NaN outside coverage), sorted by time."""

    name: str
    times: np.ndarray  # datetime64[ns] (T,)
    values: np.ndarray | StoredFrames  # float32 (T, H, W)
    units: str
    spacing_m: float
    crs_wkt: str
    summaries: FrameSummaries | None = None  # per-frame statistics (stores only)

    @property
    def step_minutes(self) -> float | None:
        if self.times.size < 2:
            return None
        return float(np.median(np.diff(self.times)) / np.timedelta64(1, "m"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spacing_of(x: np.ndarray, y: np.ndarray, where: str) -> float:
    if x.size < 2 or y.size < 2:
        raise ArchiveError(f"{where}: the cropped grid is {y.size} x {x.size} cells; too small")
    dx, dy = float(np.median(np.abs(np.diff(x)))), float(np.median(np.abs(np.diff(y))))
    if abs(dx - dy) > 0.01 * dx:
        raise ArchiveError(f"{where}: cells of {dx:g} x {dy:g} m are not square")
    return 0.5 * (dx + dy)


def unique_order(times: np.ndarray, name: str) -> np.ndarray:
    """Indices that sort ``times``; a time given twice keeps its first frame (logged)."""
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    keep = np.concatenate([[True], np.diff(ordered) > np.timedelta64(0, "ns")]) if times.size else np.zeros(0, bool)
    if not keep.all():
        LOG.warning("source %s: %d duplicate time(s) dropped", name, int((~keep).sum()))
    return np.asarray(order[keep], dtype=np.int64)


def sorted_unique(times: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames sorted by time; a time given twice keeps its first frame (logged)."""
    order = unique_order(times, name)
    return times[order], values[order]


def load_raw(src: SourceSettings, root: Path) -> SourceSeries:
    """Read every file of ``src`` (crop, coarsen, convert) into memory."""
    files = src.files(root)
    first = read_frame(files[0], src)
    spacing = spacing_of(first.x, first.y, f"{files[0]} (source {src.name!r})")
    times, frames = [], []
    for path in files:
        t, v = converted_frame(path, src)
        if v.shape != first.values.shape:
            raise ArchiveError(f"{path}: grid {v.shape} differs from {first.values.shape} of {files[0]}")
        times.append(t)
        frames.append(v)
    t_arr, v_arr = sorted_unique(np.asarray(times, dtype="datetime64[ns]"), np.stack(frames), src.name)
    LOG.info("source %s: %d frames of %d x %d at %.0f m from %s", src.name, t_arr.size, v_arr.shape[1],
             v_arr.shape[2], spacing, root)
    return SourceSeries(src.name, t_arr, v_arr, OUTPUT_UNITS[src.kind], spacing, first.crs_wkt)
