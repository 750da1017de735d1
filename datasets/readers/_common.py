"""Pieces every reader shares: file checks, windows, units, times and the output Dataset.

Kept in one place so that the four readers return exactly the shape written down in
``meteovision.datasets.conventions`` and report bad input the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from meteovision.datasets.conventions import GRID_MAPPING, crs_variable, projection_coords
from meteovision.datasets.errors import CorruptFileError, EmptyFrameError, ReaderError

logger = logging.getLogger(__name__)

#: A sub-grid to read: ``(row_slice, col_slice)``, ``((row0, row1), (col0, col1))`` in cells of the
#: north-up output grid, or ``(left, bottom, right, top)`` bounds in the file's CRS units (metres):
#: the cells whose centres fall inside the bounds.
WindowSpec: TypeAlias = (
    tuple[slice, slice] | tuple[tuple[int, int], tuple[int, int]] | tuple[float, float, float, float]
)

TimeLike: TypeAlias = str | datetime | np.datetime64 | pd.Timestamp

_UNIT_ALIASES = {
    "mm/h": "mm h-1",
    "mm/hr": "mm h-1",
    "mm h^-1": "mm h-1",
    "mm.h-1": "mm h-1",
    "mm/hour": "mm h-1",
    "dbz": "dBZ",
    "unitless": "1",
    "": "1",
    "none": "1",
    "percent": "%",
    "kelvin": "K",
}


def check_file(path: str | Path) -> Path:
    """The path, after checking it names a non-empty regular file (so libraries never see an empty one)."""
    p = Path(path)
    if not p.exists():
        raise ReaderError(p, "no such file")
    if not p.is_file():
        raise ReaderError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise CorruptFileError(p, "empty file (0 bytes)")
    return p


def normalize_units(units: str | None) -> str:
    """CF/UDUNITS spelling of a unit string found in a product ("mm/h" -> "mm h-1")."""
    if units is None:
        return "1"
    text = str(units).strip()
    return _UNIT_ALIASES.get(text.lower(), text)


def to_datetime64(value: TimeLike, path: Path, what: str) -> np.datetime64:
    """A time as naive UTC ``datetime64[ns]``; aware times are converted to UTC first."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ReaderError(path, f"cannot parse {what} {value!r} as a time ({exc})") from exc
    if ts is pd.NaT:
        raise ReaderError(path, f"{what} {value!r} is not a time")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "ns")


def parse_compact_time(text: str, path: Path, what: str) -> np.datetime64:
    """Parse ``YYYYmmdd[HHMM[SS]]`` digits (ODIM date+time, FMI observation time, file names)."""
    digits = re.sub(r"\D", "", text)
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    fmt = formats.get(len(digits))
    if fmt is None:
        raise ReaderError(path, f"cannot parse {what} {text!r} as YYYYmmdd[HHMM[SS]]")
    try:
        return np.datetime64(datetime.strptime(digits, fmt), "ns")
    except ValueError as exc:
        raise ReaderError(path, f"cannot parse {what} {text!r} ({exc})") from exc


def time_from_filename(path: Path) -> np.datetime64 | None:
    """The last 12- or 14-digit ``YYYYmmddHHMM[SS]`` run in a file name, if it is a valid time."""
    candidates = re.findall(r"(?<!\d)(\d{14}|\d{12})(?!\d)", path.stem)
    for digits in reversed(candidates):
        fmt = "%Y%m%d%H%M%S" if len(digits) == 14 else "%Y%m%d%H%M"
        try:
            return np.datetime64(datetime.strptime(digits, fmt), "ns")
        except ValueError:
            continue
    return None


def resolve_window(
    window: WindowSpec | None, x: np.ndarray, y: np.ndarray, path: Path
) -> tuple[slice, slice]:
    """Row and column slices (on the north-up grid with centres ``x``, ``y``) for a window spec."""
    ny, nx = len(y), len(x)
    if window is None:
        return slice(0, ny), slice(0, nx)
    if len(window) == 4:
        left, bottom, right, top = (float(v) for v in window)  # type: ignore[arg-type]
        if not (left < right and bottom < top):
            raise ReaderError(path, f"window bounds {window} need left < right and bottom < top")
        cols = np.flatnonzero((x >= left) & (x <= right))
        rows = np.flatnonzero((y >= bottom) & (y <= top))
        if cols.size == 0 or rows.size == 0:
            raise ReaderError(path, f"window bounds {window} do not intersect the grid")
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    if len(window) != 2:
        raise ReaderError(path, f"window must be (rows, cols) or (left, bottom, right, top), got {window!r}")
    out: list[slice] = []
    for spec, size, name in ((window[0], ny, "rows"), (window[1], nx, "cols")):
        if isinstance(spec, slice):
            if spec.step not in (None, 1):
                raise ReaderError(path, f"window {name} slice must have step 1 (use coarsen=), got {spec}")
            start, stop, _ = spec.indices(size)
        elif isinstance(spec, Sequence) and len(spec) == 2:
            start, stop = int(spec[0]), int(spec[1])
        else:
            raise ReaderError(path, f"window {name} must be a slice or (start, stop), got {spec!r}")
        if not (0 <= start < stop <= size):
            raise ReaderError(path, f"window {name} {start}:{stop} outside the grid of {size} cells")
        out.append(slice(start, stop))
    return out[0], out[1]


def variable_attrs(
    units: str,
    long_name: str,
    *,
    standard_name: str | None = None,
    quantity: str | None = None,
    grid_mapping: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The attributes every data variable carries (see ``conventions``)."""
    attrs: dict[str, Any] = {"units": normalize_units(units), "long_name": long_name}
    if standard_name:
        attrs["standard_name"] = standard_name
    if quantity:
        attrs["quantity"] = quantity
    if grid_mapping:
        attrs["grid_mapping"] = GRID_MAPPING
    if extra:
        attrs.update(extra)
    return attrs


def build_dataset(
    fields: Mapping[str, tuple[np.ndarray, dict[str, Any]]],
    *,
    x: np.ndarray,
    y: np.ndarray,
    times: Sequence[np.datetime64],
    crs: pyproj.CRS,
    path: Path,
    source_format: str,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble the reader output: ``(time, y, x)`` float32 fields, x/y/time coords and ``crs``."""
    data_vars: dict[str, xr.DataArray] = {}
    for name, (values, var_attrs) in fields.items():
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        data_vars[name] = xr.DataArray(arr, dims=("time", "y", "x"), attrs=dict(var_attrs))
    data_vars[GRID_MAPPING] = crs_variable(crs)
    coords: dict[str, Any] = dict(projection_coords(x, y))
    coords["time"] = xr.DataArray(
        np.asarray(times, dtype="datetime64[ns]"),
        dims="time",
        attrs={"standard_name": "time", "axis": "T"},
    )
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(attrs or {})
    ds.attrs["source_path"] = str(path)
    ds.attrs["source_format"] = source_format
    return ds


def check_not_empty(fields: Mapping[str, tuple[np.ndarray, Any]], path: Path, allow_empty: bool) -> None:
    """Raise ``EmptyFrameError`` when every value of every field is NaN (nothing was measured)."""
    if allow_empty or not fields:
        return
    if all(bool(np.isnan(values).all()) for values, _ in fields.values()):
        raise EmptyFrameError(path, f"every pixel of {', '.join(fields)} is nodata (pass allow_empty=True)")
