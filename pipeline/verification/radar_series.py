"""A radar series for evaluation: files read once through the readers, cropped, coarsened, in mm h-1."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import numpy as np
import pyproj

from meteovision.datasets.archive.sources import INPUT_UNITS, Conversion
from meteovision.datasets.conventions import accumulation_to_rate, crs_of, dbz_to_rate
from meteovision.datasets.readers import ReadOptions, WindowSpec, open_series
from meteovision.pipeline.verification.evaluate_config import EvaluationConfig, EvaluationError

logger = logging.getLogger(__name__)

#: The methods every evaluation knows; ``network`` needs a checkpoint.
KNOWN_METHODS = ("network", "persistence", "lk", "sprog")
#: Order of the methods in tables and maps.
_ORDER = {name: i for i, name in enumerate(KNOWN_METHODS)}


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class RadarSeries:
    """Rain rate frames (T, H, W) in mm h-1 (NaN = no data) on a north-up grid, with their times."""

    rates: np.ndarray
    times: np.ndarray  # datetime64[ns]
    x: np.ndarray
    y: np.ndarray
    pixel_size_m: float
    time_step_minutes: float
    files: tuple[Path, ...]
    crs_name: str
    crs_wkt: str = ""  # empty when the files carry no CRS: maps then keep plain axes


def _input_files(cfg: EvaluationConfig) -> list[Path]:
    root = cfg.data_root
    if not root.is_dir():
        raise EvaluationError(f"{cfg.name}: data root {root} is not a folder (set data_root or --data-root)")
    files = sorted(p for p in root.glob(cfg.inputs) if p.is_file())
    if not files:
        raise EvaluationError(f"{cfg.name}: no file matches {cfg.inputs!r} under {root}")
    return files


def read_options(cfg: EvaluationConfig) -> ReadOptions:
    """The one read request of an evaluation, the same for every file format."""
    window: WindowSpec | None = None
    if cfg.crop_bounds_m is not None:
        window = tuple(cfg.crop_bounds_m)  # type: ignore[assignment]
    elif cfg.crop_pixels is not None:
        window = tuple(tuple(p) for p in cfg.crop_pixels)  # type: ignore[assignment]
    return ReadOptions(variables=(cfg.variable,), window=window, coarsen=cfg.coarsen, coarsen_method="mean",
                       include_quality=False)


def _crs_label(crs: pyproj.CRS) -> str:
    """The CRS's name, or its projection method where the name is "unknown" (ODIM projdefs)."""
    if crs.name and crs.name.lower() != "unknown":
        return str(crs.name)
    operation = crs.coordinate_operation
    return str(operation.method_name) if operation is not None else crs.to_proj4()


def _to_rate(values: np.ndarray, cfg: EvaluationConfig, step_minutes: float) -> np.ndarray:
    """The variable in mm h-1; an accumulation is over ``period_minutes``, by default the series' step."""
    kind = Conversion(cfg.conversion)
    if kind == Conversion.DBZ_TO_RATE:
        return dbz_to_rate(values, cfg.zr_a, cfg.zr_b)
    if kind == Conversion.ACCUMULATION:
        return accumulation_to_rate(values, cfg.period_minutes or step_minutes)
    return values


def load_series(cfg: EvaluationConfig) -> RadarSeries:
    """Read, crop, coarsen and convert the whole series once (see the module docstring)."""
    files = _input_files(cfg)
    logger.info("%s: reading %d files from %s", cfg.name, len(files), cfg.data_root)
    ds = open_series(files, options=read_options(cfg))
    if cfg.variable not in ds:
        names = sorted(str(v) for v in ds.data_vars if v != "crs")
        raise EvaluationError(f"{files[0]}: no variable {cfg.variable!r} (it has {names})")
    units = str(ds[cfg.variable].attrs.get("units", ""))
    wanted = INPUT_UNITS[Conversion(cfg.conversion)]
    if units not in wanted:
        raise EvaluationError(f"{files[0]}: {cfg.variable} is in {units!r}, but conversion "
                              f"{Conversion(cfg.conversion).value!r} needs one of {list(wanted)}")
    values = ds[cfg.variable].to_numpy().astype(np.float32)
    if values.ndim != 3:
        raise EvaluationError(f"{files[0]}: {cfg.variable} has dims {ds[cfg.variable].dims}, expected (time, y, x)")
    x, y = ds["x"].to_numpy(), ds["y"].to_numpy()
    if "crs" in ds and crs_of(ds).is_geographic:
        raise EvaluationError(f"{files[0]}: the grid is in degrees of latitude and longitude "
                              f"({_crs_label(crs_of(ds))}); the methods' motion and the FSS scales need square "
                              "cells in metres: reproject the series to a projected grid first")
    if x.size < 2 or y.size < 2:
        raise EvaluationError(f"{files[0]}: the cropped grid is {y.size} x {x.size} cells; too small")
    dx, dy = float(np.median(np.abs(np.diff(x)))), float(np.median(np.abs(np.diff(y))))
    if abs(dx - dy) > 0.01 * dx:
        raise EvaluationError(f"{files[0]}: cells of {dx:g} x {dy:g} m are not square; the methods need square cells")
    if x[1] < x[0] or y[1] > y[0]:
        raise EvaluationError(f"{files[0]}: the grid is not north-up (x increasing, y decreasing)")
    step_s = float(ds.attrs.get("time_step_seconds", 0))
    if step_s <= 0:
        raise EvaluationError(f"{files[0]}: the series has no time step (one frame?)")
    step_min = step_s / 60.0
    if cfg.time_step_minutes is not None and not math.isclose(step_min, cfg.time_step_minutes):
        raise EvaluationError(f"{files[0]}: the frames are {step_min:g} min apart, the config says "
                              f"{cfg.time_step_minutes:g} min")
    values = _to_rate(values, cfg, step_min)
    crs_name = _crs_label(crs_of(ds)) if "crs" in ds else "unknown CRS"
    logger.info("%s: %d frames of %d x %d cells at %.0f m, every %g min", cfg.name, values.shape[0],
                values.shape[1], values.shape[2], dx, step_min)
    return RadarSeries(rates=values, times=ds["time"].to_numpy().astype("datetime64[ns]"), x=x, y=y,
                       pixel_size_m=0.5 * (dx + dy), time_step_minutes=step_min, files=tuple(files),
                       crs_name=crs_name, crs_wkt=crs_of(ds).to_wkt() if "crs" in ds else "")


def n_leads_of(cfg: EvaluationConfig, step_minutes: float) -> int:
    """Number of lead steps up to ``max_lead_minutes``, which must be a whole number of steps."""
    n = cfg.max_lead_minutes / step_minutes
    if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise EvaluationError(f"{cfg.name}: max_lead_minutes {cfg.max_lead_minutes:g} is not a whole number of "
                              f"{step_minutes:g}-min steps")
    return round(n)


def window_mask(cfg: EvaluationConfig, times: np.ndarray) -> np.ndarray:
    """Boolean (T,): the frames of the test window."""
    if cfg.last_frames is not None:
        if cfg.last_frames > times.size:
            raise EvaluationError(f"{cfg.name}: last_frames {cfg.last_frames} but the series has {times.size}")
        inside = np.zeros(times.size, dtype=bool)
        inside[-cfg.last_frames :] = True
        return inside
    if cfg.test_from is not None:
        start = cfg.test_from
        if start.tzinfo is not None:
            start = start.astimezone(UTC).replace(tzinfo=None)
        return times >= np.datetime64(start, "ns")
    logger.warning("%s: no test_from or last_frames: the whole series is the test window", cfg.name)
    return np.ones(times.size, dtype=bool)


def analysis_indices(times: np.ndarray, inside: np.ndarray, step_minutes: float, past: int, n_leads: int) -> list[int]:
    """Indices t0 whose past frames t0-(past-1)..t0 and future frames t0+1..t0+n_leads are all inside the
    window and exactly one step apart (a gap in the series excludes the times around it)."""
    step = np.timedelta64(round(step_minutes * 60e9), "ns")
    out = []
    for i in range(past - 1, times.size - n_leads):
        span = slice(i - past + 1, i + n_leads + 1)
        if not inside[span].all():
            continue
        if np.all(np.diff(times[span]) == step):
            out.append(i)
    return out


# ---------------------------------------------------------------------------- running
def iso_time(t: np.datetime64) -> str:
    return str(np.datetime_as_string(t.astype("datetime64[s]"), unit="m")) + "Z"


def lead_minutes_of(k: int, step: float) -> float:
    return float(round((k + 1) * step, 6))


