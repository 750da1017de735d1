"""Time series of frames: sort by time, check they fit together, concatenate on ``time``.

Frames of an operational archive come from different product versions; a grid or CRS
change in the middle of a series would silently shift every pixel, so it is an error.
Missing time steps are normal (outages) and are reported, not filled.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from meteovision.datasets.conventions import GRID_MAPPING, crs_of
from meteovision.datasets.errors import GridMismatchError, SeriesError

logger = logging.getLogger(__name__)


def _data_names(ds: xr.Dataset) -> set[str]:
    return {str(name) for name in ds.data_vars if name != GRID_MAPPING}


def _check_fits(ref_path: Path, ref: xr.Dataset, path: Path, ds: xr.Dataset) -> None:
    """Raise when ``ds`` does not share the variables, units, grid and CRS of ``ref``."""
    if _data_names(ds) != _data_names(ref):
        raise SeriesError(
            f"{path} has variables {sorted(_data_names(ds))} but {ref_path} has {sorted(_data_names(ref))}"
        )
    for name in _data_names(ref):
        if ref[name].attrs.get("units") != ds[name].attrs.get("units"):
            raise SeriesError(f"{path} has {name} in {ds[name].attrs.get('units')!r} "
                              f"but {ref_path} in {ref[name].attrs.get('units')!r}")
    for axis in ("x", "y"):
        a, b = ref[axis].to_numpy(), ds[axis].to_numpy()
        if a.shape != b.shape:
            raise GridMismatchError(f"{path} has {b.size} {axis} cells but {ref_path} has {a.size}")
        spacing = float(np.abs(np.diff(a)).min()) if a.size > 1 else 1.0
        if not np.allclose(a, b, rtol=0.0, atol=1e-6 * spacing):
            worst = float(np.abs(a - b).max())
            raise GridMismatchError(f"{path} and {ref_path}: {axis} coordinates differ by up to {worst:g} m")
    has_a, has_b = GRID_MAPPING in ref, GRID_MAPPING in ds
    if has_a != has_b:
        raise GridMismatchError(f"{path} and {ref_path}: only one of them has a CRS")
    if has_a and not crs_of(ref).equals(crs_of(ds)):
        raise GridMismatchError(
            f"{path} and {ref_path}: different CRSs ({crs_of(ds).srs!r} vs {crs_of(ref).srs!r})"
        )


def time_steps(times: np.ndarray) -> tuple[int, list[tuple[str, str]], list[tuple[str, str]]]:
    """(modal step in seconds, gaps, irregular steps), both as (before, after) ISO pairs.

    A gap is a whole number of modal steps (frames missing); an irregular step is any other
    (18:00, 18:30, 19:00, 19:15: the 15-min step is irregular, not a 30-min series without gaps).
    """
    if times.size < 2:
        return 0, [], []
    steps = np.diff(times).astype("timedelta64[s]").astype(np.int64)
    counts = Counter(int(s) for s in steps)
    modal = min(step for step, n in counts.items() if n == max(counts.values()))
    iso = np.datetime_as_string(times.astype("datetime64[s]"), unit="s")
    whole = steps % modal == 0
    gaps = [(str(iso[i]), str(iso[i + 1])) for i in np.flatnonzero(whole & (steps > modal))]
    irregular = [(str(iso[i]), str(iso[i + 1])) for i in np.flatnonzero(~whole)]
    return modal, gaps, irregular


def combine_frames(frames: Sequence[tuple[Path, xr.Dataset]]) -> xr.Dataset:
    """Sort ``(path, dataset)`` frames by time and concatenate them on ``time``.

    Raises ``SeriesError`` for no frames, duplicate times or different variables, and
    ``GridMismatchError`` (naming both files) for different grids or CRSs. The result has
    attrs ``time_step_seconds`` (the modal step, 0 for one frame), ``gaps`` (ISO pairs around
    each step that is a whole number of modal steps longer), ``irregular_steps`` (ISO pairs around
    each step that is not a whole number of modal steps) and ``source_paths``; both log a warning.
    """
    if not frames:
        raise SeriesError("no frames to combine")
    frames = list(frames)
    frames.sort(key=lambda item: item[1]["time"].to_numpy()[0])
    ref_path, ref = frames[0]
    for (prev_path, prev), (path, ds) in itertools.pairwise(frames):
        _check_fits(ref_path, ref, path, ds)
        if ds["time"].to_numpy()[0] <= prev["time"].to_numpy()[-1]:
            raise SeriesError(f"{path} and {prev_path} overlap in time ({ds['time'].to_numpy()[0]})")
    parts = [ds.drop_vars(GRID_MAPPING, errors="ignore") for _, ds in frames]
    combined = xr.concat(
        parts, dim="time", data_vars="minimal", coords="minimal", compat="override", join="override",
        combine_attrs="drop_conflicts",
    )
    if GRID_MAPPING in ref:
        combined[GRID_MAPPING] = ref[GRID_MAPPING]
    step, gaps, irregular = time_steps(combined["time"].to_numpy())
    if gaps:
        logger.warning("series from %s: %d gap(s) longer than the %d s step: %s", ref_path.parent, len(gaps),
                       step, gaps)
    if irregular:
        logger.warning("series from %s: %d step(s) not a whole number of the %d s step: %s", ref_path.parent,
                       len(irregular), step, irregular)
    combined.attrs.pop("source_path", None)
    combined.attrs["source_format"] = ref.attrs.get("source_format", "")
    combined.attrs["source_paths"] = [str(p) for p, _ in frames]
    combined.attrs["time_step_seconds"] = step
    combined.attrs["gaps"] = gaps
    combined.attrs["irregular_steps"] = irregular
    return combined
