"""The two projected grids synthetic data sits on: a 1 km LAEA radar grid over France and a
3 km geostationary (Meteosat 0 degree) grid over Europe, so readers meet both CRS paths."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyproj

RADAR_PROJDEF = "+proj=laea +lat_0=47 +lon_0=2 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"
SATELLITE_PROJDEF = "+proj=geos +h=35785831 +lon_0=0 +sweep=y +x_0=0 +y_0=0 +ellps=WGS84 +units=m"


@dataclass(frozen=True)
class Grid:
    """North-up regular grid: ``x0, y0`` is the outer upper-left corner, cells ``dx`` x ``dy`` metres."""

    projdef: str
    nx: int
    ny: int
    dx: float
    dy: float
    x0: float
    y0: float

    @cached_property
    def crs(self) -> pyproj.CRS:
        return pyproj.CRS.from_proj4(self.projdef)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    def x(self) -> np.ndarray:
        """Cell-centre x (metres), increasing eastward."""
        return self.x0 + self.dx * (np.arange(self.nx, dtype=np.float64) + 0.5)

    def y(self) -> np.ndarray:
        """Cell-centre y (metres), decreasing southward (row 0 is the north edge)."""
        return self.y0 - self.dy * (np.arange(self.ny, dtype=np.float64) + 0.5)

    def corners_lonlat(self) -> dict[str, float]:
        """ODIM ``where`` corner attributes: outer corners of the corner cells, in degrees."""
        to_geo = pyproj.Transformer.from_crs(self.crs, self.crs.geodetic_crs, always_xy=True)
        x1 = self.x0 + self.nx * self.dx
        y1 = self.y0 - self.ny * self.dy
        corners = {"UL": (self.x0, self.y0), "UR": (x1, self.y0), "LL": (self.x0, y1), "LR": (x1, y1)}
        out: dict[str, float] = {}
        for name, (cx, cy) in corners.items():
            lon, lat = to_geo.transform(cx, cy)
            if not (np.isfinite(lon) and np.isfinite(lat)):
                raise ValueError(f"grid corner {name} ({cx}, {cy}) is outside the projection's valid area")
            out[f"{name}_lon"] = float(lon)
            out[f"{name}_lat"] = float(lat)
        return out


def _centred(projdef: str, size: int, cell: float, lon: float, lat: float) -> Grid:
    """Grid of ``size`` x ``size`` cells whose centre is snapped to a multiple of ``cell`` near lon/lat."""
    crs = pyproj.CRS.from_proj4(projdef)
    to_proj = pyproj.Transformer.from_crs(crs.geodetic_crs, crs, always_xy=True)
    cx, cy = to_proj.transform(lon, lat)
    cx = round(cx / cell) * cell
    cy = round(cy / cell) * cell
    half = size * cell / 2.0
    return Grid(projdef=projdef, nx=size, ny=size, dx=cell, dy=cell, x0=cx - half, y0=cy + half)


def radar_grid(size: int) -> Grid:
    """1 km LAEA composite grid centred on France (47N 2E)."""
    return _centred(RADAR_PROJDEF, size, 1000.0, 2.0, 47.0)


def satellite_grid(size: int) -> Grid:
    """3 km Meteosat-like geostationary grid centred on west-central Europe (46N 5E)."""
    return _centred(SATELLITE_PROJDEF, size, 3000.0, 5.0, 46.0)
