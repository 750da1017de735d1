"""GRIB2 reader (ecCodes, from the ``eccodes``/``eccodeslib`` wheels: no system library).

Reads the fields of a GRIB2 file on a regular latitude/longitude grid, such as the NOAA MRMS
composites, into the reader contract (see ``conventions``): ``x`` is longitude and ``y`` latitude in
degrees (north-up, ``x`` in -180..180 when the whole grid lies east of 180), and ``crs`` is the
geographic CRS on the earth shape the message declares.

Values: cells the GRIB bitmap marks missing are NaN. Parameters of a local table (discipline >= 192,
as MRMS uses) have no units nor sentinels in ecCodes, so they are read only when listed in
``LOCAL_PARAMETERS`` with the meaning of every sentinel written down; any other value outside the
valid range raises ``CorruptFileError`` rather than reach a model as a rain rate. An unknown local
parameter raises ``MissingVariableError``: guessing its units would give silently wrong values.

The byte structure (``GRIB`` ... ``7777``, message lengths) is checked before ecCodes sees the file, so
an empty, truncated or garbled file gives ``CorruptFileError`` naming the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eccodes
import numpy as np
import pyproj
import xarray as xr

from meteovision.datasets.errors import CorruptFileError, MissingVariableError, ReaderError, SizeLimitError
from meteovision.datasets.readers._common import (
    WindowSpec,
    build_dataset,
    check_file,
    check_not_empty,
    parse_compact_time,
    resolve_window,
    variable_attrs,
)
from meteovision.datasets.readers.coarsen import reduce_blocks
from meteovision.datasets.readers.options import ReadOptions, with_overrides

logger = logging.getLogger(__name__)

SOURCE_FORMAT = "grib2"
GRIB_MAGIC = b"GRIB"
_END_MARKER = b"7777"
#: First local discipline number of GRIB2 code table 0.0: 192..254 are reserved for local use.
_FIRST_LOCAL_DISCIPLINE = 192
_GRIB_ERRORS: tuple[type[Exception], ...] = (eccodes.CodesInternalError, eccodes.GribInternalError)


@dataclass(frozen=True)
class LocalParameter:
    """A parameter of a centre's local table: what ecCodes cannot tell us, written down once."""

    name: str
    long_name: str
    units: str
    standard_name: str | None
    quantity: str | None
    #: Smallest physical value; a value below it must be one of ``sentinels``.
    valid_min: float
    #: code value -> its meaning; every sentinel cell becomes NaN (nothing valid was measured).
    sentinels: Mapping[float, str] = field(default_factory=dict)


#: (centre, discipline, parameterCategory, parameterNumber) -> parameter. MRMS (NCEP centre 161,
#: NSSL local discipline 209) PrecipRate: mm h-1, -3 = no radar coverage, -1 = missing; 0 means the
#: radars looked and saw no rain (the contract's "undetect" 0 mm h-1), so it stays 0.
LOCAL_PARAMETERS: dict[tuple[int, int, int, int], LocalParameter] = {
    (161, 209, 6, 1): LocalParameter(
        name="PrecipRate",
        long_name="MRMS radar precipitation rate",
        units="mm h-1",
        standard_name="rainfall_rate",
        quantity="RATE",
        valid_min=0.0,
        sentinels={-3.0: "no radar coverage", -1.0: "missing"},
    ),
}

#: GRIB2 code table 3.2 shapeOfTheEarth -> CF ellipsoid attributes (1, 3 and 7 carry their own radii).
_EARTH_SHAPES: dict[int, dict[str, float]] = {
    0: {"earth_radius": 6367470.0},
    2: {"semi_major_axis": 6378160.0, "inverse_flattening": 297.0},  # IAU 1965
    4: {"semi_major_axis": 6378137.0, "inverse_flattening": 298.257222101},  # GRS80
    5: {"semi_major_axis": 6378137.0, "inverse_flattening": 298.257223563},  # WGS84
    6: {"earth_radius": 6371229.0},
    8: {"earth_radius": 6371200.0},
}


def check_structure(path: Path) -> int:
    """Number of GRIB messages, after checking each starts with ``GRIB``, fits and ends with ``7777``."""
    size = path.stat().st_size
    count, offset = 0, 0
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            head = fh.read(16)
            if count and head.strip(b"\x00 \n\r\t") == b"" and fh.read().strip(b"\x00 \n\r\t") == b"":
                break  # padding after the last message
            if not head.startswith(GRIB_MAGIC):
                raise CorruptFileError(path, f"no GRIB message at byte {offset} (found {head[:4]!r})")
            if len(head) < 16:
                raise CorruptFileError(path, f"truncated GRIB message at byte {offset} (section 0 incomplete)")
            edition = head[7]
            if edition == 2:
                length = int.from_bytes(head[8:16], "big")
            elif edition == 1:
                length = int.from_bytes(head[4:7], "big")
            else:
                raise CorruptFileError(path, f"GRIB message at byte {offset} has edition {edition}, expected 1 or 2")
            if length < 16 + len(_END_MARKER):
                raise CorruptFileError(path, f"GRIB message at byte {offset} declares {length} bytes, too short")
            if offset + length > size:
                raise CorruptFileError(
                    path, f"truncated GRIB file: message at byte {offset} needs {length} bytes, "
                          f"only {size - offset} left"
                )
            fh.seek(offset + length - len(_END_MARKER))
            if fh.read(len(_END_MARKER)) != _END_MARKER:
                raise CorruptFileError(path, f"GRIB message at byte {offset} does not end with '7777'")
            count += 1
            offset += length
    if count == 0:
        raise CorruptFileError(path, "no GRIB message in the file")
    return count


def _get(h: Any, key: str, path: Path, ktype: type | None = None) -> Any:
    try:
        return eccodes.codes_get(h, key, ktype=ktype) if ktype else eccodes.codes_get(h, key)
    except _GRIB_ERRORS as exc:
        raise MissingVariableError(path, f"GRIB key {key!r} unreadable ({exc})") from exc


def _earth(h: Any, path: Path) -> dict[str, float]:
    shape = int(_get(h, "shapeOfTheEarth", path, int))
    if shape in _EARTH_SHAPES:
        return _EARTH_SHAPES[shape]
    if shape == 1:
        return {"earth_radius": float(_get(h, "radiusInMetres", path, float))}
    if shape in (3, 7):
        scale = 1000.0 if shape == 3 else 1.0  # shape 3 gives the axes in km
        major = float(_get(h, "earthMajorAxis", path, float)) * scale
        minor = float(_get(h, "earthMinorAxis", path, float)) * scale
        return {"semi_major_axis": major, "semi_minor_axis": minor}
    raise ReaderError(path, f"GRIB shapeOfTheEarth {shape} is not supported")


def _crs(h: Any, path: Path) -> pyproj.CRS:
    shape = int(_get(h, "shapeOfTheEarth", path, int))
    attrs: dict[str, Any] = {
        "grid_mapping_name": "latitude_longitude",
        "geographic_crs_name": f"GRIB2 latitude/longitude, shapeOfTheEarth {shape}",
        **_earth(h, path),
    }
    try:
        return pyproj.CRS.from_cf(attrs)
    except pyproj.exceptions.CRSError as exc:
        raise ReaderError(path, f"cannot build the CRS of {attrs} ({exc})") from exc


@dataclass(frozen=True)
class _Grid:
    lon: np.ndarray  # centres, increasing
    lat: np.ndarray  # centres, decreasing (north-up)
    flip_rows: bool
    flip_cols: bool
    transpose: bool


def _grid(h: Any, path: Path) -> _Grid:
    grid_type = str(_get(h, "gridType", path))
    if grid_type != "regular_ll":
        raise ReaderError(path, f"GRIB grid type {grid_type!r} is not supported (only regular_ll)")
    ni, nj = int(_get(h, "Ni", path, int)), int(_get(h, "Nj", path, int))
    lon0 = float(_get(h, "longitudeOfFirstGridPointInDegrees", path, float))
    lat0 = float(_get(h, "latitudeOfFirstGridPointInDegrees", path, float))
    lon1 = float(_get(h, "longitudeOfLastGridPointInDegrees", path, float))
    lat1 = float(_get(h, "latitudeOfLastGridPointInDegrees", path, float))
    if ni < 1 or nj < 1:
        raise CorruptFileError(path, f"GRIB grid of {nj} x {ni} points")
    # Centres from the first and last points: the increments are rounded to 1e-6 degree in the file.
    westwards = bool(_get(h, "iScansNegatively", path, int))
    span = ((lon0 - lon1) if westwards else (lon1 - lon0)) % 360.0 if ni > 1 else 0.0
    west = lon1 if westwards else lon0
    if west >= 180.0:
        west -= 360.0
    lon = west + np.linspace(0.0, span, ni)
    flip_cols = westwards
    lat = np.linspace(lat0, lat1, nj)
    flip_rows = bool(nj > 1 and lat[1] > lat[0])
    if flip_rows:
        lat = lat[::-1]
    return _Grid(lon=lon, lat=lat, flip_rows=flip_rows, flip_cols=flip_cols,
                 transpose=bool(_get(h, "jPointsAreConsecutive", path, int)))


def _time(h: Any, path: Path, prefix: str) -> np.datetime64:
    date = int(_get(h, f"{prefix}Date", path, int))
    hhmm = int(_get(h, f"{prefix}Time", path, int))
    return parse_compact_time(f"{date:08d}{hhmm:04d}", path, f"GRIB {prefix}Date/{prefix}Time")


def _parameter(h: Any, path: Path) -> tuple[str, dict[str, Any], LocalParameter | None]:
    """(variable name, attrs, local table entry or None) of one message."""
    discipline = int(_get(h, "discipline", path, int))
    category = int(_get(h, "parameterCategory", path, int))
    number = int(_get(h, "parameterNumber", path, int))
    centre = int(_get(h, "centre", path, int))
    key = (centre, discipline, category, number)
    level = {"grib_level_type": str(_get(h, "typeOfLevel", path)), "grib_level": float(_get(h, "level", path, float))}
    ident = {"grib_parameter": f"centre {centre}, discipline {discipline}, category {category}, number {number}"}
    if key in LOCAL_PARAMETERS:
        local = LOCAL_PARAMETERS[key]
        sentinels = "; ".join(f"{v:g}: {m}" for v, m in sorted(local.sentinels.items()))
        attrs = variable_attrs(
            local.units, local.long_name, standard_name=local.standard_name, quantity=local.quantity,
            extra={**ident, **level, "comment": f"GRIB sentinels read as NaN ({sentinels})"},
        )
        return local.name, attrs, local
    short = str(_get(h, "cfVarName", path))
    if discipline >= _FIRST_LOCAL_DISCIPLINE or short in ("unknown", "~", ""):
        raise MissingVariableError(
            path, f"GRIB parameter ({ident['grib_parameter']}) is not in ecCodes' tables nor in "
                  "LOCAL_PARAMETERS: its units and missing-value codes are unknown"
        )
    units = str(_get(h, "units", path)).replace("**", "")
    std = str(_get(h, "cfName", path))
    attrs = variable_attrs(
        units, str(_get(h, "name", path)), standard_name=None if std in ("unknown", "~") else std,
        extra={**ident, **level},
    )
    return short, attrs, None


def _values(h: Any, grid: _Grid, local: LocalParameter | None, path: Path, name: str) -> np.ndarray:
    """Physical values on the north-up grid: bitmap-missing and sentinel cells NaN."""
    ni, nj = grid.lon.size, grid.lat.size
    try:
        flat = np.asarray(eccodes.codes_get_array(h, "values", ktype=float), dtype=np.float64)
        missing = (
            np.asarray(eccodes.codes_get_array(h, "bitmap", ktype=int)) == 0
            if int(eccodes.codes_get(h, "bitmapPresent", ktype=int)) else None
        )
    except _GRIB_ERRORS as exc:
        raise CorruptFileError(path, f"ecCodes cannot decode the values of {name} ({exc})") from exc
    if flat.size != ni * nj:
        raise CorruptFileError(path, f"{name}: {flat.size} values for a grid of {nj} x {ni}")
    values = flat.astype(np.float32)
    del flat
    if missing is not None:
        values[missing] = np.nan
    if local is not None:
        for code in local.sentinels:
            values[values == np.float32(code)] = np.nan
        bad = values < local.valid_min  # NaN compares False
        if bad.any():
            found = np.unique(values[bad])[:5].tolist()
            raise CorruptFileError(
                path, f"{name}: {int(bad.sum())} values below {local.valid_min:g} {local.units} that are no "
                      f"documented sentinel (e.g. {found}); known: {dict(local.sentinels)}"
            )
    grid2d = values.reshape(ni, nj).T if grid.transpose else values.reshape(nj, ni)
    if grid.flip_rows:
        grid2d = grid2d[::-1]
    if grid.flip_cols:
        grid2d = grid2d[:, ::-1]
    return grid2d


def _unique(name: str, attrs: Mapping[str, Any], taken: Iterable[str]) -> str:
    taken = set(taken)
    if name not in taken:
        return name
    level = f"{name}_{attrs['grib_level_type']}_{attrs['grib_level']:g}"
    if level not in taken:
        return level
    n = 2
    while f"{level}_{n}" in taken:
        n += 1
    return f"{level}_{n}"


def read_grib(
    path: str | Path,
    *,
    options: ReadOptions | None = None,
    variables: Iterable[str] | None = None,
    window: WindowSpec | None = None,
    coarsen: int | None = None,
    allow_empty: bool | None = None,
) -> xr.Dataset:
    """Read the fields of a GRIB2 file (regular lat/lon grid, one valid time) into the reader contract.

    ``variables`` selects by name (ecCodes' cfVarName, or the ``LOCAL_PARAMETERS`` name);
    ``window`` is a sub-grid in cells or ``(west, south, east, north)`` bounds in degrees;
    ``coarsen`` averages ``coarsen x coarsen`` blocks of valid cells (dBZ in linear Z). The keywords
    override ``options`` (the ``ReadOptions`` contract every reader honours).
    """
    p = check_file(path)
    opts = with_overrides(options, p, variables=None if variables is None else tuple(variables), window=window,
                          coarsen=coarsen, allow_empty=allow_empty)
    factor = opts.coarsen
    window = opts.window
    check_structure(p)
    wanted = None if opts.variables is None else list(opts.variables)
    fields: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    ref: tuple[np.ndarray, np.ndarray, pyproj.CRS, np.datetime64] | None = None
    with open(p, "rb") as fh:
        while True:
            try:
                h = eccodes.codes_grib_new_from_file(fh)
            except _GRIB_ERRORS as exc:
                raise CorruptFileError(p, f"ecCodes cannot read a GRIB message ({exc})") from exc
            if h is None:
                break
            try:
                edition = int(_get(h, "edition", p, int))
                if edition != 2:
                    raise ReaderError(p, f"GRIB edition {edition} is not supported (only GRIB2)")
                name, attrs, local = _parameter(h, p)
                name = _unique(name, attrs, fields)
                if wanted is not None and name not in wanted:
                    continue
                grid, crs, valid = _grid(h, p), _crs(h, p), _time(h, p, "validity")
                if ref is None:
                    ref = (grid.lon, grid.lat, crs, valid)
                elif not (np.array_equal(ref[0], grid.lon) and np.array_equal(ref[1], grid.lat) and ref[2] == crs):
                    raise ReaderError(p, f"{name} sits on another grid than the first field")
                elif valid != ref[3]:
                    raise ReaderError(p, f"{name} is valid at {valid}, the first field at {ref[3]}: "
                                         "one valid time per file is supported")
                reference = _time(h, p, "data")
                attrs["forecast_reference_time"] = str(reference)
                cells = grid.lon.size * grid.lat.size
                if cells > opts.max_cells:  # decoding allocates the whole field: refuse before it
                    raise SizeLimitError(p, f"{name}: grid of {grid.lat.size} x {grid.lon.size} = {cells:,} cells, "
                                            f"over the limit of {opts.max_cells:,} (ReadOptions.max_cells)")
                fields[name] = (_values(h, grid, local, p, name), attrs)
            finally:
                eccodes.codes_release(h)
    if wanted is not None:
        missing = [n for n in wanted if n not in fields]
        if missing:
            raise MissingVariableError(p, f"variables {missing} are not in this GRIB file")
    if ref is None:
        raise MissingVariableError(p, "no GRIB field read")
    lon, lat, crs, valid = ref
    rows, cols = resolve_window(window, lon, lat, p)
    x, y = lon[cols], lat[rows]
    for name, (values, attrs) in list(fields.items()):
        sub = np.ascontiguousarray(values[rows, cols])
        if factor > 1:
            h_, w_ = sub.shape[0] // factor * factor, sub.shape[1] // factor * factor
            if h_ == 0 or w_ == 0:
                raise ReaderError(p, f"window of {sub.shape[0]} x {sub.shape[1]} cells is smaller than one "
                                     f"coarsen block of {factor}")
            sub = reduce_blocks(sub[:h_, :w_], factor, opts.coarsen_method, attrs["units"] == "dBZ")
            attrs["coarsen"] = factor
        fields[name] = (sub, attrs)
    if factor > 1:
        nx, ny = x.size // factor * factor, y.size // factor * factor
        x = x[:nx].reshape(-1, factor).mean(axis=1)
        y = y[:ny].reshape(-1, factor).mean(axis=1)
    check_not_empty(fields, p, opts.allow_empty)
    ds = build_dataset(fields, x=x, y=y, times=[valid], crs=crs, path=p, source_format=SOURCE_FORMAT)
    ds["x"].attrs = {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"}
    ds["y"].attrs = {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"}
    return ds
