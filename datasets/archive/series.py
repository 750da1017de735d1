"""A source's frames in memory (T, H, W) with their times, from raw files or from a Zarr store.

Both paths give the same arrays (the store holds :func:`converted_frame` of each file), so a
DataModule draws the same samples and the same split from either.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meteovision.datasets.archive.conversions import OUTPUT_UNITS, converted_frame, read_frame
from meteovision.datasets.archive.sources import ArchiveError, SourceSettings

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSeries:
    """Frames of one source in the training quantity (NaN outside coverage), sorted by time."""

    name: str
    times: np.ndarray  # datetime64[ns] (T,)
    values: np.ndarray  # float32 (T, H, W)
    units: str
    spacing_m: float
    crs_wkt: str

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


def sorted_unique(times: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames sorted by time; a time given twice keeps its first frame (logged)."""
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    keep = np.concatenate([[True], np.diff(times) > np.timedelta64(0, "ns")]) if times.size else np.zeros(0, bool)
    if not keep.all():
        LOG.warning("source %s: %d duplicate time(s) dropped", name, int((~keep).sum()))
    return times[keep], values[keep]


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
