"""CF NetCDF reader (NETCDF3 classic/64-bit/CDF-5 and NETCDF4/HDF5) for gridded radar or satellite fields.

Reads with netCDF4 and unpacks by hand (``_FillValue``, ``missing_value``, ``valid_*``,
``scale_factor``/``add_offset``, ``_Unsigned``) so the output is float32 physical with NaN,
whatever xarray's decoding defaults. Handles files with a CF ``grid_mapping`` variable
(our own products) and NWC SAF files that only carry a ``gdal_projection`` global attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pyproj
import xarray as xr

from meteovision.datasets.conventions import GRID_MAPPING, ODIM_QUANTITIES
from meteovision.datasets.errors import (
    AttributeValueError,
    CorruptFileError,
    MissingVariableError,
    ReaderError,
    UnknownFormatError,
)
from meteovision.datasets.readers import netcdf3
from meteovision.datasets.readers._common import (
    WindowSpec,
    build_dataset,
    check_file,
    check_not_empty,
    normalize_units,
    to_datetime64,
    variable_attrs,
)
from meteovision.datasets.readers.attributes import as_float, as_numbers
from meteovision.datasets.readers.coarsen import Selection
from meteovision.datasets.readers.crs_units import check_ellipsoid
from meteovision.datasets.readers.options import ReadOptions, with_overrides

logger = logging.getLogger(__name__)

SOURCE_FORMAT = "cf_netcdf"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

_X_NAMES = ("projection_x_coordinate", "projection_x_angular_coordinate")
_Y_NAMES = ("projection_y_coordinate", "projection_y_angular_coordinate")
_LENGTH_UNITS = {"m": 1.0, "metre": 1.0, "meter": 1.0, "metres": 1.0, "meters": 1.0, "km": 1000.0}
_ANGLE_UNITS = ("rad", "radian", "radians")
#: Global attributes holding a CRS when no grid_mapping variable exists (GDAL/NWC SAF style).
_GLOBAL_CRS_ATTRS = ("crs_wkt", "spatial_ref", "gdal_projection", "proj4", "proj4_string", "proj4text")
#: Global attributes holding the nominal time when there is no time variable, best first.
_GLOBAL_TIME_ATTRS = ("nominal_product_time", "time_coverage_start", "date_time", "time")
_KEPT_GLOBALS = ("title", "institution", "source", "product_name")
_DROPPED_VAR_ATTRS = {
    "_FillValue", "missing_value", "valid_range", "valid_min", "valid_max", "scale_factor", "add_offset",
    "_Unsigned", "grid_mapping", "coordinates", "units", "long_name", "standard_name", "ancillary_variables",
}


def _py(value: Any) -> Any:
    """Attribute value as plain Python (numpy scalars to numbers, bytes to str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(-1)[0].item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs(var: Any) -> dict[str, Any]:
    return {key: var.getncattr(key) for key in var.ncattrs()}


def _is_flag(attrs: Mapping[str, Any]) -> bool:
    return any(k in attrs for k in ("flag_values", "flag_masks", "flag_meanings"))


def _unpack(raw: np.ndarray, attrs: Mapping[str, Any], apply_valid: bool, path: Path, name: str) -> np.ndarray:
    """CF unpacking to float32: masks fill/missing/out-of-valid-range values as NaN, then scales.

    Every attribute goes through ``attributes`` (numeric text accepted, anything else refused).
    """
    raw = np.asarray(raw)
    signed_dtype = raw.dtype
    if str(attrs.get("_Unsigned", "")).lower() == "true" and raw.dtype.kind == "i":
        raw = raw.view(raw.dtype.str.replace("i", "u"))

    def as_raw(key: str) -> np.ndarray:
        arr = as_numbers(attrs[key], path, f"{name}:{key}")
        if raw.dtype != signed_dtype and arr.dtype.kind == "i":
            return arr.astype(signed_dtype).view(raw.dtype)
        return arr

    mask = np.zeros(raw.shape, dtype=bool)
    fills = [as_raw(k) for k in ("_FillValue", "missing_value") if k in attrs]
    if "_FillValue" not in attrs and raw.dtype.kind == "f":
        fills.append(np.atleast_1d(netCDF4.default_fillvals[raw.dtype.str[1:]]))
    for fill in fills:
        for value in fill:
            mask |= np.isnan(raw) if np.isnan(value) else raw == value
    if apply_valid:
        if "valid_range" in attrs:
            bounds = as_raw("valid_range")
            if bounds.size != 2:
                raise AttributeValueError(path, f"attribute {name}:valid_range = {attrs['valid_range']!r} "
                                                "needs two numbers")
            mask |= (raw < bounds[0]) | (raw > bounds[1])
        if "valid_min" in attrs:
            mask |= raw < as_raw("valid_min")[0]
        if "valid_max" in attrs:
            mask |= raw > as_raw("valid_max")[0]
    scale = as_float(attrs.get("scale_factor", 1.0), path, f"{name}:scale_factor")
    offset = as_float(attrs.get("add_offset", 0.0), path, f"{name}:add_offset")
    values = raw.astype(np.float64)
    if scale != 1.0 or offset != 0.0:
        values = values * scale + offset
    out = values.astype(np.float32)
    out[mask] = np.nan
    return out


def _find_axis(nc: netCDF4.Dataset, standard_names: tuple[str, ...], axis: str, name: str) -> str | None:
    """Name of the 1-D coordinate variable for one spatial axis."""
    one_d = {k: v for k, v in nc.variables.items() if v.ndim == 1}
    for key, var in one_d.items():
        if str(getattr(var, "standard_name", "")) in standard_names:
            return key
    for key, var in one_d.items():
        if str(getattr(var, "axis", "")).upper() == axis and "degree" not in str(getattr(var, "units", "")):
            return key
    return name if name in one_d else None


def _crs(nc: netCDF4.Dataset, data_vars: Iterable[Any], path: Path) -> pyproj.CRS:
    """CRS from the data variables' grid_mapping variable, else from GDAL-style global attributes."""
    for var in data_vars:
        mapping = str(getattr(var, "grid_mapping", "")).strip()
        if not mapping:
            continue
        name = mapping.split(":")[0].split()[0]
        if name not in nc.variables:
            raise MissingVariableError(path, f"grid_mapping variable {name!r} of {var.name} is missing")
        attrs = {k: _py(v) for k, v in _attrs(nc.variables[name]).items()}
        try:
            crs = pyproj.CRS.from_cf(attrs)
        except pyproj.exceptions.CRSError as exc:
            raise ReaderError(path, f"grid_mapping variable {name!r} is not a valid CF CRS ({exc})") from exc
        check_ellipsoid(crs, path, f"grid_mapping variable {name!r}")
        return crs
    for key in _GLOBAL_CRS_ATTRS:
        if key in nc.ncattrs():
            text = str(_py(nc.getncattr(key))).strip()
            try:
                crs = pyproj.CRS.from_user_input(text)
            except pyproj.exceptions.CRSError as exc:
                raise ReaderError(path, f"global attribute {key}={text!r} is not a CRS ({exc})") from exc
            check_ellipsoid(crs, path, f"global attribute {key}")
            return crs
    raise MissingVariableError(path, "no grid_mapping variable and no CRS global attribute (gdal_projection)")


def _coordinate(var: Any, crs: pyproj.CRS, path: Path) -> np.ndarray:
    """1-D projection coordinate in metres (angular geostationary coordinates times the height)."""
    attrs = _attrs(var)
    scale = as_float(attrs.get("scale_factor", 1.0), path, f"{var.name}:scale_factor")
    offset = as_float(attrs.get("add_offset", 0.0), path, f"{var.name}:add_offset")
    values = np.asarray(var[:], dtype=np.float64) * scale + offset
    units = str(attrs.get("units", "m")).strip().lower()
    if units in _LENGTH_UNITS:
        values = values * _LENGTH_UNITS[units]
    elif units in _ANGLE_UNITS:
        height = crs.to_cf().get("perspective_point_height")
        if height is None:
            raise ReaderError(path, f"coordinate {var.name} is in {units} but the CRS is not geostationary")
        values = values * as_float(height, path, "grid mapping perspective_point_height")
    else:
        raise ReaderError(path, f"coordinate {var.name} has units {units!r}, expected metres")
    if not np.isfinite(values).all():
        raise CorruptFileError(path, f"coordinate {var.name} has missing values")
    if values.size > 1 and not (np.all(np.diff(values) > 0) or np.all(np.diff(values) < 0)):
        raise ReaderError(path, f"coordinate {var.name} is not monotonic")
    return values


def _times(nc: netCDF4.Dataset, path: Path) -> tuple[str | None, list[np.datetime64]]:
    """(time dimension or None, times): from a time variable, else from global attributes."""
    for key, var in nc.variables.items():
        is_time = key == "time" or str(getattr(var, "standard_name", "")) == "time"
        units = str(getattr(var, "units", ""))
        if not is_time or "since" not in units or var.ndim > 1:
            continue
        calendar = str(getattr(var, "calendar", "standard"))
        try:
            dates = netCDF4.num2date(
                np.atleast_1d(np.asarray(var[:], dtype=np.float64)), units, calendar=calendar,
                only_use_cftime_datetimes=False, only_use_python_datetimes=True,
            )
        except (ValueError, TypeError) as exc:
            raise ReaderError(path, f"time variable {key!r} ({units}, {calendar}): {exc}") from exc
        times = [to_datetime64(d, path, f"variable {key}") for d in np.ravel(np.asarray(dates, dtype=object))]
        return (var.dimensions[0] if var.ndim == 1 else None), times
    for key in _GLOBAL_TIME_ATTRS:
        if key in nc.ncattrs():
            return None, [to_datetime64(str(_py(nc.getncattr(key))).strip(), path, f"global attribute {key}")]
    raise MissingVariableError(
        path, "no time variable and no nominal_product_time/time_coverage_start global attribute"
    )


def _read(
    nc: netCDF4.Dataset,
    path: Path,
    opts: ReadOptions,
) -> xr.Dataset:
    nc.set_auto_maskandscale(False)
    wanted = None if opts.variables is None else list(opts.variables)
    x_name = _find_axis(nc, _X_NAMES, "X", "x")
    y_name = _find_axis(nc, _Y_NAMES, "Y", "y")
    if x_name is None or y_name is None:
        raise MissingVariableError(path, "no 1-D projection_x/y_coordinate variables")
    xdim, ydim = nc.variables[x_name].dimensions[0], nc.variables[y_name].dimensions[0]
    tdim, times = _times(nc, path)

    auxiliary: set[str] = {x_name, y_name}
    for var in nc.variables.values():
        for key in ("coordinates", "grid_mapping", "bounds"):
            text = str(getattr(var, key, ""))
            auxiliary.update(tok.rstrip(":") for tok in text.split())
    candidates: dict[str, Any] = {}
    for key, var in nc.variables.items():
        dims = set(var.dimensions)
        spatial = {ydim, xdim} <= dims
        extra = dims - {ydim, xdim}
        if not spatial or key in auxiliary or var.dtype.kind not in "iuf":
            continue
        if str(getattr(var, "standard_name", "")) in ("latitude", "longitude"):
            continue
        if extra and extra != {tdim}:
            logger.debug("%s: skipping %s with extra dimensions %s", path, key, sorted(extra))
            continue
        if not extra and len(times) > 1:
            logger.debug("%s: skipping static field %s in a file with %d times", path, key, len(times))
            continue
        candidates[key] = var
    if wanted is not None:
        missing = [name for name in wanted if name not in candidates]
        if missing:
            raise MissingVariableError(path, f"variables {missing} are not 2-D fields of this file "
                                             f"(found {sorted(candidates)})")
        candidates = {name: candidates[name] for name in wanted}
    if not candidates:
        raise MissingVariableError(path, f"no 2-D field on ({ydim}, {xdim})")

    crs = _crs(nc, candidates.values(), path)
    x = _coordinate(nc.variables[x_name], crs, path)
    y = _coordinate(nc.variables[y_name], crs, path)
    flip_x, flip_y = bool(x.size > 1 and x[1] < x[0]), bool(y.size > 1 and y[1] > y[0])
    x, y = (x[::-1] if flip_x else x), (y[::-1] if flip_y else y)
    selection = Selection.of(opts, x, y, path, n_times=len(times))

    def read_rows(var: Any, attrs: Mapping[str, Any], rows: slice, cols: slice) -> np.ndarray:
        """Physical values of output rows/cols (north-up), whatever the file's axis order."""
        file_rows = slice(len(y) - rows.stop, len(y) - rows.start) if flip_y else rows
        file_cols = slice(len(x) - cols.stop, len(x) - cols.start) if flip_x else cols
        index = {ydim: file_rows, xdim: file_cols, tdim: slice(None)}
        raw = np.asarray(var[tuple(index[d] for d in var.dimensions)])
        order = [var.dimensions.index(d) for d in (tdim, ydim, xdim) if d in var.dimensions]
        values = _unpack(np.transpose(raw, order), attrs, not _is_flag(attrs), path, var.name)
        if flip_y:
            values = values[..., ::-1, :]
        if flip_x:
            values = values[..., ::-1]
        return values

    fields: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for key, var in candidates.items():
        attrs = _attrs(var)
        units = str(_py(attrs.get("units", "1")))
        values = selection.read(partial(read_rows, var, attrs), linear_db=normalize_units(units) == "dBZ")
        quantity = _py(attrs.get("quantity")) or (key if key in ODIM_QUANTITIES else None)
        extra_attrs = {
            k: _py(v) for k, v in attrs.items()
            if k not in _DROPPED_VAR_ATTRS and not (isinstance(v, str) and not v.strip())
        }
        standard_name = str(_py(attrs.get("standard_name", ""))).strip() or None
        var_attrs = variable_attrs(
            units, str(_py(attrs.get("long_name", key))), standard_name=standard_name, quantity=quantity,
            extra=extra_attrs,
        )
        var_attrs.update(selection.attrs(var_attrs["units"]))
        fields[key] = (np.ascontiguousarray(values), var_attrs)
    check_not_empty(fields, path, opts.allow_empty)
    globals_ = {k: str(_py(nc.getncattr(k))) for k in _KEPT_GLOBALS if k in nc.ncattrs()}
    if "Conventions" in nc.ncattrs():
        globals_["source_conventions"] = str(_py(nc.getncattr("Conventions")))
    globals_["netcdf_format"] = str(nc.data_model)
    if GRID_MAPPING in fields:
        raise ReaderError(path, f"a data variable is named {GRID_MAPPING!r}, reserved for the grid mapping")
    x_out, y_out = selection.coords(x, y)
    return build_dataset(
        fields, x=x_out, y=y_out, times=times, crs=crs, path=path, source_format=SOURCE_FORMAT,
        attrs=globals_,
    )


def read_netcdf(
    path: str | Path,
    *,
    options: ReadOptions | None = None,
    variables: Iterable[str] | None = None,
    window: WindowSpec | None = None,
    allow_empty: bool | None = None,
) -> xr.Dataset:
    """Read the 2-D fields of a CF NetCDF file into the reader contract (see ``conventions``).

    Keeps every numeric field on the (y, x) grid, optionally with the time dimension, and skips
    palettes, coordinates and grid-mapping variables. ``options`` (``ReadOptions``, overridden by
    the keywords): ``variables`` selects by name, ``window``/``coarsen`` as for every reader. A NETCDF3
    file shorter than its header says raises ``CorruptFileError`` (the library would read fill
    values silently). An all-NaN frame raises ``EmptyFrameError`` unless ``allow_empty``.
    """
    p = check_file(path)
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if magic[:4] in netcdf3.MAGICS:
        netcdf3.check_size(p)
    elif not magic.startswith(HDF5_MAGIC):
        raise UnknownFormatError(p, f"not a NetCDF file (starts with {magic[:4]!r})")
    try:
        nc = netCDF4.Dataset(p, "r")
    except OSError as exc:
        raise CorruptFileError(p, f"netCDF4 cannot open the file ({exc})") from exc
    opts = with_overrides(options, p, variables=None if variables is None else tuple(variables), window=window,
                          allow_empty=allow_empty)
    try:
        with nc:
            return _read(nc, p, opts)
    except (OSError, RuntimeError, IndexError) as exc:
        raise CorruptFileError(p, f"unreadable NetCDF content ({type(exc).__name__}: {exc})") from exc
