"""CF-1.10 NetCDF products (DESIGN.md §4), written atomically and deterministically.

Layout of one file:

* ``crs``: grid-mapping variable, ``pyproj.CRS.to_cf()`` plus ``crs_wkt``;
* ``x``, ``y``: projection coordinates (m); ``lat``, ``lon``: 2-D auxiliary coordinates (float32,
  computed and stored in blocks of rows, so a national grid never needs them whole in memory; grids up
  to 2048 x 2048 keep them cached, so a run of many products on one grid projects them once);
* a nowcast has dimension ``leadtime`` (``forecast_period``, minutes) with ``time(leadtime)``
  the valid time and ``forecast_reference_time`` a scalar;
* an analysis has dimension ``time`` of length 1, with ``forecast_reference_time(time)`` and
  ``leadtime(time)`` (= 0) on it, so that a folder of analyses concatenates on ``time``
  with nothing left to guess;
* data variables on ``(leadtime | time, y, x)``: float32 (continuous, probability) or int8
  (masks, classes with ``flag_values``/``flag_meanings``), ``_FillValue`` everywhere,
  zlib level 4 with shuffle, chunks of one time step.

Opening a folder of outputs::

    xr.open_mfdataset("analyses/*.nc", combine="by_coords")
    xr.open_mfdataset("nowcasts/*.nc", combine="nested", concat_dim="forecast_reference_time",
                      data_vars="all", coords="different", compat="equals", join="exact")

Everything but the ``history`` attribute (which carries the creation time) depends only on
the product, so a rerun writes the same content.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np

from meteovision.pipeline.inference.atomic import atomic_write, is_valid_netcdf
from meteovision.pipeline.inference.products import (
    Product,
    ProductGrid,
    ProductVariable,
    WriterError,
    lead_minutes,
    product_filename,
)

__all__ = ["FLOAT_FILL", "INT_FILL", "product_filename", "write_product_netcdf"]

log = logging.getLogger(__name__)

CONVENTIONS = "CF-1.10"
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
CALENDAR = "standard"
FLOAT_FILL = np.float32(-9999.0)
INT_FILL = np.int8(-1)
COMPRESSION: dict[str, Any] = {"zlib": True, "complevel": 4, "shuffle": True}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Side of the square lat/lon chunks; lat/lon are computed one row of chunks at a time. On a 250 m national
#: grid, 512 x 512 chunks compress better than full-width rows or netCDF's default chunks (51, 75, 62 MB).
LATLON_CHUNK = 512
#: lat/lon depend on the grid only: a run writing many products on one grid (an operational tick, a batch,
#: a nowcast series) projects them once. Only grids up to this size are kept (2 x 16 MiB each for 2048 x 2048),
#: so a 250 m national grid still streams its lat/lon block by block; the last few grids are kept.
LATLON_CACHE_MAX_PIXELS = 2048 * 2048
LATLON_CACHE_GRIDS = 2
_latlon_cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_latlon_lock = threading.Lock()


def _meteovision_version() -> str:
    try:
        return importlib.metadata.version("meteovision")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _epoch_seconds(when: datetime) -> int:
    return int((when - _EPOCH).total_seconds())


def encode_variable(var: ProductVariable, path: Path) -> np.ndarray:
    """``[steps, y, x]`` array in the stored dtype, NaN replaced by the fill value."""
    data = var.stacked()
    if var.is_integer:
        if np.issubdtype(data.dtype, np.floating):
            missing = np.isnan(data)
            return np.where(missing, INT_FILL, np.nan_to_num(data)).astype(np.int8)
        return data.astype(np.int8)
    out = data.astype(np.float32)
    if np.any(out == FLOAT_FILL):
        raise WriterError(path, f"variable {var.name!r} holds the fill value {FLOAT_FILL} as data")
    if np.any(np.isinf(out)):
        raise WriterError(path, f"variable {var.name!r} holds infinite values")
    return np.where(np.isnan(out), FLOAT_FILL, out).astype(np.float32)


def _global_attributes(product: Product) -> dict[str, str]:
    prov = product.provenance
    version = _meteovision_version()
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    comment = product.comment or (
        f"{prov.application} product; valid time = forecast_reference_time + leadtime"
    )
    return {
        "Conventions": CONVENTIONS,
        "title": product.title,
        "institution": product.institution,
        "source": f"{prov.model_name} {prov.model_version}",
        "history": f"{created} created by meteovision {version}",
        "references": product.references,
        "comment": comment,
        "meteovision_application": prov.application,
        "meteovision_version": version,
        "meteovision_checkpoint_sha256": prov.checkpoint_sha256 or "none (no checkpoint)",
        "meteovision_config": json.dumps(dict(prov.config), sort_keys=True, default=str),
        "meteovision_package_versions": json.dumps(dict(prov.package_versions), sort_keys=True),
        "meteovision_input_files": json.dumps([Path(p).name for p in prov.input_files]),
    }


def _variable_attributes(var: ProductVariable, coordinates: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"long_name": var.long_name}
    if var.standard_name:
        attrs["standard_name"] = var.standard_name
    if var.is_integer:
        assert var.flag_values is not None and var.flag_meanings is not None  # checked by ProductVariable
        attrs["flag_values"] = np.asarray(var.flag_values, dtype=np.int8)
        attrs["flag_meanings"] = " ".join(var.flag_meanings)
        attrs["valid_range"] = np.asarray([min(var.flag_values), max(var.flag_values)], dtype=np.int8)
    else:
        attrs["units"] = var.units
        if var.valid_range is not None:
            attrs["valid_range"] = np.asarray(var.valid_range, dtype=np.float32)
    attrs["grid_mapping"] = "crs"
    attrs["coordinates"] = coordinates
    attrs["meteovision_kind"] = var.kind
    return attrs


def _write_grid(nc: netCDF4.Dataset, product: Product) -> None:
    grid = product.grid
    crs_var = nc.createVariable("crs", "i4")
    cf = dict(grid.crs.to_cf())
    cf.setdefault("crs_wkt", grid.crs.to_wkt())
    crs_var.setncatts({k: cf[k] for k in sorted(cf)})
    crs_var.assignValue(0)

    for axis, values in (("y", grid.y), ("x", grid.x)):
        var = nc.createVariable(axis, "f8", (axis,))
        var.setncatts({
            "standard_name": f"projection_{axis}_coordinate",
            "long_name": f"{axis} coordinate of projection",
            "units": "m",
            "axis": axis.upper(),
        })
        var[:] = values

    ny, nx = grid.shape
    side = max(2, LATLON_CHUNK)
    rows = min(ny, side)
    lat_var, lon_var = (
        nc.createVariable(name, "f4", ("y", "x"), fill_value=FLOAT_FILL, chunksizes=(rows, min(nx, side)),
                          **COMPRESSION)
        for name in ("lat", "lon")
    )
    for var, std, units in ((lat_var, "latitude", "degrees_north"), (lon_var, "longitude", "degrees_east")):
        var.setncatts({"standard_name": std, "long_name": std, "units": units})
    cached = _cached_lonlat(grid, rows)
    if cached is not None:
        lon_var[:], lat_var[:] = cached
        return
    for start, stop, lon, lat in _lonlat_blocks(grid, rows):
        for var, values in ((lat_var, lat), (lon_var, lon)):
            var[start:stop, :] = _filled(values)


def _filled(values: np.ndarray) -> np.ndarray:
    """float32 with ``FLOAT_FILL`` where the projection has no lat/lon."""
    return np.where(np.isnan(values), FLOAT_FILL, values).astype(np.float32)


def _grid_key(grid: ProductGrid) -> str:
    digest = hashlib.sha256(grid.crs.to_wkt().encode())
    digest.update(grid.x.tobytes())
    digest.update(grid.y.tobytes())
    return digest.hexdigest()


def _cached_lonlat(grid: ProductGrid, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Filled float32 ``(lon, lat)`` of a grid of at most ``LATLON_CACHE_MAX_PIXELS``, projected once per grid."""
    ny, nx = grid.shape
    if ny * nx > LATLON_CACHE_MAX_PIXELS:
        return None
    key = _grid_key(grid)
    with _latlon_lock:
        hit = _latlon_cache.get(key)
        if hit is not None:
            _latlon_cache.move_to_end(key)
            return hit
    lon_all = np.empty((ny, nx), np.float32)
    lat_all = np.empty((ny, nx), np.float32)
    for start, stop, lon, lat in _lonlat_blocks(grid, rows):
        lon_all[start:stop], lat_all[start:stop] = _filled(lon), _filled(lat)
    for values in (lon_all, lat_all):
        values.flags.writeable = False
    with _latlon_lock:
        _latlon_cache[key] = (lon_all, lat_all)
        while len(_latlon_cache) > LATLON_CACHE_GRIDS:
            _latlon_cache.popitem(last=False)
    return lon_all, lat_all


def _lonlat_blocks(grid: ProductGrid, rows: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(start, stop, lon, lat)`` of the grid's rows ``start:stop``, ``rows`` at a time (one row of chunks).

    Each block is :meth:`ProductGrid.lonlat` of the sub-grid of those rows, so the values are the
    whole grid's; but only one block's float64 arrays and temporaries exist at a time (the whole
    grid's took about 1.3 GB on a 7316 x 4963 national composite). A block needs two rows (a
    ``ProductGrid`` does), so a single last row is computed with the row before it.
    """
    ny = grid.shape[0]
    for start in range(0, ny, rows):
        stop = min(start + rows, ny)
        first = min(start, stop - 2)
        lon, lat = ProductGrid(grid.x, grid.y[first:stop], grid.crs).lonlat()
        yield start, stop, lon[start - first :], lat[start - first :]


def _write_times(nc: netCDF4.Dataset, product: Product) -> tuple[str, str]:
    """Create the time coordinates; return the time dimension and the ``coordinates`` attribute."""
    time_attrs = {"units": TIME_UNITS, "calendar": CALENDAR}
    leads = [lead_minutes(lead) for lead in product.leads]
    valid = [_epoch_seconds(t) for t in product.valid_times]
    ref = _epoch_seconds(product.reference_time)
    lead_attrs = {"standard_name": "forecast_period", "long_name": "lead time", "units": "minutes"}
    ref_attrs = {"standard_name": "forecast_reference_time", "long_name": "forecast reference time",
                 **time_attrs}
    valid_attrs = {"standard_name": "time", "long_name": "valid time", **time_attrs}

    if product.is_nowcast:
        dim = "leadtime"
        nc.createDimension(dim, len(leads))
        lead_var = nc.createVariable("leadtime", "i4", (dim,))
        lead_var.setncatts(lead_attrs)
        lead_var[:] = leads
        time_var = nc.createVariable("time", "i8", (dim,))
        time_var.setncatts(valid_attrs)
        time_var[:] = valid
        ref_var = nc.createVariable("forecast_reference_time", "i8")
        ref_var.setncatts(ref_attrs)
        ref_var.assignValue(ref)
        return dim, "time forecast_reference_time lat lon"

    dim = "time"
    nc.createDimension(dim, 1)
    time_var = nc.createVariable("time", "i8", (dim,))
    time_var.setncatts({**valid_attrs, "axis": "T"})
    time_var[:] = valid
    ref_var = nc.createVariable("forecast_reference_time", "i8", (dim,))
    ref_var.setncatts(ref_attrs)
    ref_var[:] = [ref]
    lead_var = nc.createVariable("leadtime", "i4", (dim,))
    lead_var.setncatts(lead_attrs)
    lead_var[:] = leads
    return dim, "forecast_reference_time leadtime lat lon"


def _write(nc: netCDF4.Dataset, product: Product, path: Path) -> None:
    nc.set_auto_mask(False)
    ny, nx = product.grid.shape
    nc.createDimension("y", ny)
    nc.createDimension("x", nx)
    time_dim, coordinates = _write_times(nc, product)
    _write_grid(nc, product)
    for var in product.variables:
        values = encode_variable(var, path)
        dtype, fill = ("i1", INT_FILL) if var.is_integer else ("f4", FLOAT_FILL)
        out = nc.createVariable(var.name, dtype, (time_dim, "y", "x"), fill_value=fill,
                                chunksizes=(1, ny, nx), **COMPRESSION)
        out.setncatts(_variable_attributes(var, coordinates))
        out[:] = values
    nc.setncatts(_global_attributes(product))


def write_product_netcdf(product: Product, path: Path, overwrite: bool = False) -> Path:
    """Write ``product`` to ``path`` (CF-1.10) atomically; return ``path``.

    An existing file that reads and holds the product's variables is kept unless
    ``overwrite``; an unreadable (partial, corrupt) one is replaced.
    """
    path = Path(path)
    names = [v.name for v in product.variables]
    if path.exists():
        if not overwrite and is_valid_netcdf(path, names):
            log.info("keeping existing product %s (overwrite=False)", path)
            return path
        if not overwrite:
            log.warning("existing %s is not a valid product file; rewriting it", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        try:
            with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
                _write(nc, product, path)
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise WriterError(path, f"writing NetCDF failed: {exc}") from exc
    log.info("wrote %s", path)
    return path
