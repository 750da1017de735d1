"""The shape every reader returns, written down once so readers, datasets and writers agree.

A reader returns an ``xarray.Dataset`` with:

* data variables on dims ``("time", "y", "x")`` (``time`` of length 1 for one file;
  webcam images use ``("time", "band", "y", "x")``), float32 in physical units,
  NaN where nothing was measured (nodata) and the product's "no echo" value where
  the instrument looked and saw nothing (undetect: 0 mm h-1, or the minimum dBZ);
* attributes on each variable: ``units``, ``long_name``, ``grid_mapping = "crs"``,
  ``standard_name`` where CF has one, and ``quantity`` (the ODIM quantity name where known);
* coordinates ``x`` and ``y``: projection coordinates of cell centres in metres
  (``y`` decreasing for north-up images), and ``time`` as ``datetime64[ns]`` UTC;
* a scalar variable ``crs`` holding ``pyproj.CRS.to_cf()`` attributes plus ``crs_wkt``;
* dataset attributes ``source_path`` and ``source_format``.
"""

from __future__ import annotations

import numpy as np
import pyproj
import xarray as xr

#: ODIM quantity -> (CF standard_name, units, long_name, undetect value in physical units)
ODIM_QUANTITIES: dict[str, tuple[str | None, str, str, float]] = {
    "RATE": ("rainfall_rate", "mm h-1", "rain rate", 0.0),
    "ACRR": ("lwe_thickness_of_precipitation_amount", "mm", "accumulated precipitation", 0.0),
    "DBZH": ("equivalent_reflectivity_factor", "dBZ", "corrected horizontal reflectivity", -32.0),
    "TH": ("equivalent_reflectivity_factor", "dBZ", "uncorrected horizontal reflectivity", -32.0),
    "QIND": (None, "1", "quality index", 0.0),
}

GRID_MAPPING = "crs"
SPATIAL_DIMS = ("y", "x")


def crs_variable(crs: pyproj.CRS) -> xr.DataArray:
    """CF grid-mapping variable for ``crs``: ``to_cf()`` attributes plus ``crs_wkt``."""
    attrs = dict(crs.to_cf())
    attrs.setdefault("crs_wkt", crs.to_wkt())
    return xr.DataArray(np.int32(0), attrs=attrs)


def crs_of(ds: xr.Dataset) -> pyproj.CRS:
    """The CRS a reader attached to ``ds``."""
    return pyproj.CRS.from_wkt(ds[GRID_MAPPING].attrs["crs_wkt"])


def projection_coords(x: np.ndarray, y: np.ndarray) -> dict[str, xr.DataArray]:
    """CF-annotated x/y coordinate arrays in metres."""
    return {
        "x": xr.DataArray(
            np.asarray(x, dtype=np.float64),
            dims="x",
            attrs={"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"},
        ),
        "y": xr.DataArray(
            np.asarray(y, dtype=np.float64),
            dims="y",
            attrs={"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"},
        ),
    }


def accumulation_to_rate(amount: np.ndarray, period_minutes: float) -> np.ndarray:
    """Mean rain rate (mm h-1) from the amount (mm or kg m-2) fallen over ``period_minutes``; NaN stays NaN.

    The one accumulation conversion: archive training and radar verification both use it.
    """
    if not period_minutes > 0:
        raise ValueError(f"an accumulation period must be > 0 min, got {period_minutes}")
    return (amount * (60.0 / period_minutes)).astype(np.float32)


def dbz_to_rate(dbz: np.ndarray, a: float = 223.0, b: float = 1.53) -> np.ndarray:
    """Rain rate (mm h-1) from reflectivity (dBZ) by Z = a R^b, Z in mm6 m-3; NaN stays NaN.

    The one Z-R conversion: archive training and radar verification both use it.
    """
    z = np.power(10.0, dbz.astype(np.float64) / 10.0)
    return np.power(z / a, 1.0 / b).astype(np.float32)
