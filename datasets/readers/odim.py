"""ODIM_H5 composite reader (objects COMP and IMAGE, versions V2_0 to V2_4).

Follows the OPERA ODIM_H5 information model: ``what``/``where``/``how`` groups at the root,
``datasetN`` and ``datasetN/dataN`` levels, a lower level overriding a higher one; each
``dataN``/``qualityN`` holds a ``data`` array to scale with ``gain`` and ``offset``.
Quality groups become variables too, so a model can use them as inputs or masks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyproj
import xarray as xr

from meteovision.datasets.conventions import ODIM_QUANTITIES
from meteovision.datasets.errors import (
    CorruptFileError,
    MissingVariableError,
    ReaderError,
    UnknownFormatError,
)
from meteovision.datasets.readers._common import (
    WindowSpec,
    build_dataset,
    check_file,
    check_not_empty,
    normalize_units,
    parse_compact_time,
    variable_attrs,
)
from meteovision.datasets.readers.attributes import as_float, as_int
from meteovision.datasets.readers.coarsen import Selection
from meteovision.datasets.readers.crs_units import metre_crs_from_projdef
from meteovision.datasets.readers.options import ReadOptions, with_overrides

logger = logging.getLogger(__name__)

SOURCE_FORMAT = "odim_h5"
SUPPORTED_OBJECTS = ("COMP", "IMAGE")

#: ODIM quantities outside ``conventions.ODIM_QUANTITIES``: (standard_name, units, long_name).
#: Their undetect value has no physical "no echo" equivalent, so it becomes NaN.
_OTHER_QUANTITIES: dict[str, tuple[str | None, str, str]] = {
    "VRADH": ("radial_velocity_of_scatterers_away_from_instrument", "m s-1", "radial velocity"),
    "ZDR": (None, "dB", "differential reflectivity"),
    "RHOHV": (None, "1", "co-polar correlation coefficient"),
    "KDP": (None, "degrees km-1", "specific differential phase"),
    "HGHT": (None, "km", "height above sea level"),
    "CLASS": (None, "1", "classification"),
}

#: Relative tolerance when checking the grid extent against the projected corners.
_EXTENT_RTOL = 0.01

_Attrs = dict[str, Any]


def _decode(value: Any) -> Any:
    """HDF5 attribute as a plain Python value (bytes -> str, numpy scalar -> int/float)."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", errors="replace").strip("\x00").strip()
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return _decode(value.reshape(-1)[0])
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _group_attrs(parent: h5py.Group, name: str) -> _Attrs:
    """Attributes of ``parent/name`` (a what/where/how group), empty when the group is absent."""
    if name not in parent:
        return {}
    return {key: _decode(val) for key, val in parent[name].attrs.items()}


def _numbered(group: h5py.Group, prefix: str) -> list[str]:
    """Children named ``prefixN`` in numeric order (dataset1, dataset2, ..., dataset10)."""
    pattern = re.compile(rf"^{prefix}(\d+)$")
    found = [(int(m.group(1)), key) for key in group if (m := pattern.match(key))]
    return [key for _, key in sorted(found)]


def _merge(*levels: Mapping[str, Any]) -> _Attrs:
    """ODIM inheritance: later (lower) levels override earlier (higher) ones."""
    out: _Attrs = {}
    for level in levels:
        out.update(level)
    return out


def _require(attrs: Mapping[str, Any], key: str, where: str, path: Path) -> Any:
    if key not in attrs:
        raise MissingVariableError(path, f"ODIM attribute {where}/{key} is missing")
    return attrs[key]


def _parse_crs(projdef: str, path: Path) -> pyproj.CRS:
    """The grid CRS from ``where/projdef``, forced to metres so x/y come out in metres."""
    try:
        crs = pyproj.CRS.from_user_input(projdef)
    except pyproj.exceptions.CRSError as exc:
        raise ReaderError(path, f"where/projdef {projdef!r} is not a valid PROJ definition ({exc})") from exc
    if not crs.is_projected:
        raise ReaderError(path, f"where/projdef {projdef!r} is not a projected CRS")
    return metre_crs_from_projdef(projdef, crs, path)


def _scale_factor(extent: float, cells: int, scale: float) -> float | None:
    """1 if ``cells * scale`` matches the projected extent in metres, 1000 if scale is in km."""
    for factor in (1.0, 1000.0):
        expected = cells * scale * factor
        if expected > 0 and abs(extent - expected) <= _EXTENT_RTOL * expected:
            return factor
    return None


def _grid(where: Mapping[str, Any], crs: pyproj.CRS, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre x/y (metres) of the full grid from the corners, checking xscale/yscale units.

    ODIM corner coordinates are the outer corners of the corner pixels. The scale units are
    never assumed: the projected corner distance must equal ``xsize * xscale`` (metres) or
    ``xsize * xscale * 1000`` (kilometres), or the file is rejected.
    """
    xsize = as_int(_require(where, "xsize", "where", path), path, "where/xsize")
    ysize = as_int(_require(where, "ysize", "where", path), path, "where/ysize")
    xscale = as_float(_require(where, "xscale", "where", path), path, "where/xscale")
    yscale = as_float(_require(where, "yscale", "where", path), path, "where/yscale")
    if xsize <= 0 or ysize <= 0 or xscale <= 0 or yscale <= 0:
        raise ReaderError(path, f"where/xsize,ysize,xscale,yscale must be positive, got "
                                f"{xsize}, {ysize}, {xscale}, {yscale}")
    to_xy = pyproj.Transformer.from_crs(crs.geodetic_crs, crs, always_xy=True)
    corners: dict[str, tuple[float, float]] = {}
    for name in ("UL", "UR", "LL", "LR"):
        lon, lat = where.get(f"{name}_lon"), where.get(f"{name}_lat")
        if lon is None or lat is None:
            continue
        cx, cy = to_xy.transform(as_float(lon, path, f"where/{name}_lon"), as_float(lat, path, f"where/{name}_lat"))
        if not (np.isfinite(cx) and np.isfinite(cy)):
            raise ReaderError(path, f"where/{name}_lon,{name}_lat ({lon}, {lat}) cannot be projected")
        corners[name] = (float(cx), float(cy))

    factors: list[tuple[str, float | None]] = []
    for left, right in (("UL", "UR"), ("LL", "LR")):
        if left in corners and right in corners:
            extent = abs(corners[right][0] - corners[left][0])
            factors.append((f"x extent {left}-{right} = {extent:.1f} m vs xsize*xscale = {xsize * xscale}",
                            _scale_factor(extent, xsize, xscale)))
            break
    for upper, lower in (("UL", "LL"), ("UR", "LR")):
        if upper in corners and lower in corners:
            extent = abs(corners[upper][1] - corners[lower][1])
            factors.append((f"y extent {upper}-{lower} = {extent:.1f} m vs ysize*yscale = {ysize * yscale}",
                            _scale_factor(extent, ysize, yscale)))
            break
    if not factors:
        raise MissingVariableError(
            path, "where needs two corners (UL with UR or LL, or LL with LR) to check the units of "
            "xscale/yscale",
        )
    for description, factor in factors:
        if factor is None:
            raise ReaderError(path, f"grid does not match its corners, neither metres nor km: {description}")
    units = {factor for _, factor in factors}
    if len(units) != 1:
        details = "; ".join(d for d, _ in factors)
        raise ReaderError(path, f"xscale and yscale disagree on their units: {details}")
    factor = units.pop() or 1.0
    if factor != 1.0:
        logger.info("%s: xscale/yscale are in km, converting to metres", path)
    dx, dy = xscale * factor, yscale * factor

    x0: float
    top: float
    if "UL" in corners:
        x0, top = corners["UL"]
    elif "LL" in corners:
        x0, top = corners["LL"][0], corners["LL"][1] + ysize * dy
    else:
        raise MissingVariableError(path, "where/UL_lon,UL_lat or LL_lon,LL_lat is needed for the grid origin")
    # Corners come as lon/lat with ~1e-9 degree precision: snap the origin to the millimetre.
    x0, top = round(x0, 3), round(top, 3)
    _check_corners(corners, x0, top, xsize * dx, ysize * dy, 0.5 * min(dx, dy), path)
    x = x0 + (np.arange(xsize) + 0.5) * dx
    y = top - (np.arange(ysize) + 0.5) * dy
    return x, y


def _check_corners(
    corners: Mapping[str, tuple[float, float]], x0: float, top: float, width: float, height: float, tol: float,
    path: Path,
) -> None:
    """Every corner the file gives lies within half a cell of the grid's own corner (so lon/lat round-trip)."""
    grid = {"UL": (x0, top), "UR": (x0 + width, top), "LL": (x0, top - height), "LR": (x0 + width, top - height)}
    for name, (cx, cy) in corners.items():
        off = max(abs(cx - grid[name][0]), abs(cy - grid[name][1]))
        if off > tol:
            raise ReaderError(path, f"where/{name}_lon,{name}_lat lie {off:.0f} m from the grid's {name} corner "
                                    "(xsize * xscale from the other corners): the corners disagree")


def _physical(
    raw: np.ndarray, what: Mapping[str, Any], undetect_value: float, path: Path, label: str
) -> np.ndarray:
    """raw * gain + offset as float32; nodata -> NaN, undetect -> the no-echo value.

    Every attribute is a number here (numeric text converted, anything else refused), so a
    nodata stored as ``b"-9999000.0"`` masks its pixels instead of never comparing equal.
    """
    gain = as_float(what.get("gain", 1.0), path, f"{label}/what/gain")
    offset = as_float(what.get("offset", 0.0), path, f"{label}/what/offset")
    values = (raw.astype(np.float64) * gain + offset).astype(np.float32)
    for key, replacement in (("nodata", np.nan), ("undetect", undetect_value)):
        if key in what:
            code = as_float(what[key], path, f"{label}/what/{key}", finite=False)
            values[np.isnan(raw) if np.isnan(code) else raw == code] = replacement
    if raw.dtype.kind == "f":
        values[np.isnan(raw)] = np.nan
    return values


def _quantity_info(quantity: str) -> tuple[str | None, str, str, float]:
    """(standard_name, units, long_name, undetect value) of an ODIM quantity."""
    if quantity in ODIM_QUANTITIES:
        return ODIM_QUANTITIES[quantity]
    if quantity in _OTHER_QUANTITIES:
        std, units, long_name = _OTHER_QUANTITIES[quantity]
        return std, units, long_name, float("nan")
    logger.warning("ODIM quantity %s is not known: units '1', undetect -> NaN", quantity)
    return None, "1", quantity, float("nan")


def _time_attrs(what: Mapping[str, Any], path: Path) -> dict[str, str]:
    """Start/end of the measurement (dataset-level what), kept as ISO attributes only."""
    out: dict[str, str] = {}
    for label in ("start", "end"):
        date, clock = what.get(f"{label}date"), what.get(f"{label}time")
        if date and clock:
            stamp = parse_compact_time(f"{date}{clock}", path, f"what/{label}date+{label}time")
            out[f"{label}_time"] = str(stamp.astype("datetime64[s]")) + "Z"
    return out


def _unique_name(name: str, taken: Iterable[str], group: str) -> str:
    taken = set(taken)
    if name not in taken:
        return name
    candidate = f"{name}_{group.replace('/', '_')}"
    logger.debug("variable %s already taken, naming it %s", name, candidate)
    return candidate


def _read_group(
    f: h5py.File,
    path: Path,
    options: ReadOptions,
) -> xr.Dataset:
    quantities = None if options.variables is None else set(options.variables)
    include_quality = options.include_quality
    root_what = _group_attrs(f, "what")
    root_where = _group_attrs(f, "where")
    root_how = _group_attrs(f, "how")
    obj = str(root_what.get("object", "")).upper()
    if obj not in SUPPORTED_OBJECTS:
        raise UnknownFormatError(
            path, f"ODIM object {obj or '(none)'} is not supported: only {', '.join(SUPPORTED_OBJECTS)}"
        )
    date = _require(root_what, "date", "what", path)
    clock = _require(root_what, "time", "what", path)
    nominal = parse_compact_time(f"{date}{clock}", path, "what/date+time")

    datasets = _numbered(f, "dataset")
    if not datasets:
        raise MissingVariableError(path, "no datasetN group")

    fields: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    quality: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    grid_where: dict[str, Any] | None = None
    selection: Selection | None = None
    crs: pyproj.CRS | None = None
    x = y = np.empty(0)

    def ensure_grid(where: dict[str, Any]) -> None:
        nonlocal grid_where, crs, x, y, selection
        if grid_where is None:
            projdef = where.get("projdef")
            if not projdef:
                raise MissingVariableError(path, "where/projdef is missing: the projection is unknown")
            crs = _parse_crs(str(projdef), path)
            x, y = _grid(where, crs, path)
            selection = Selection.of(options, x, y, path)
            grid_where = where
            return
        keys = ("projdef", "xsize", "ysize", "xscale", "yscale", "UL_lon", "UL_lat", "LL_lon", "LL_lat")
        if any(repr(where.get(k)) != repr(grid_where.get(k)) for k in keys):
            raise ReaderError(path, "datasets of this file sit on different grids (where differs)")

    def read_field(group: h5py.Group, label: str, what: Mapping[str, Any], no_echo: float, units: str) -> np.ndarray:
        """Physical values of ``label/data`` on the selection (strip reads when coarsened)."""
        if "data" not in group:
            raise MissingVariableError(path, f"{label}/data is missing")
        ds = group["data"]
        if ds.ndim != 2 or ds.shape != (len(y), len(x)):
            raise ReaderError(path, f"{label}/data has shape {ds.shape}, where says {(len(y), len(x))}")
        assert selection is not None  # set by ensure_grid, called first
        return selection.read(
            lambda rows, cols: _physical(np.asarray(ds[rows, cols]), what, no_echo, path, label),
            linear_db=normalize_units(units) == "dBZ",
        )

    def add_quality(group: h5py.Group, label: str, parent_what: Mapping[str, Any]) -> None:
        q_what = _group_attrs(group, "what")
        q_how = _group_attrs(group, "how")
        name = str(q_how.get("task") or q_what.get("quantity") or label.rsplit("/", 1)[-1])
        q_quantity = str(q_what.get("quantity", ""))
        if q_quantity:
            std, units, long_name, no_echo = _quantity_info(q_quantity)
        else:
            std, units, long_name, no_echo = None, "1", name, float("nan")
        values = read_field(group, label, q_what, no_echo, units)
        extra = {"odim_group": label, "quality_of": str(parent_what.get("quantity", ""))}
        attrs = variable_attrs(
            units, f"quality: {long_name}", standard_name=std, quantity=q_quantity or None, extra=extra
        )
        if q_how.get("task"):
            attrs["task"] = str(q_how["task"])
        taken = list(fields) + list(quality)
        quality[_unique_name(name, taken, label)] = (values, attrs)

    for ds_name in datasets:
        dgroup = f[ds_name]
        ds_what = _group_attrs(dgroup, "what")
        ds_where = _merge(root_where, _group_attrs(dgroup, "where"))
        ds_how = _merge(root_how, _group_attrs(dgroup, "how"))
        selected = False
        for data_name in _numbered(dgroup, "data"):
            label = f"{ds_name}/{data_name}"
            group = dgroup[data_name]
            what = _merge(root_what, ds_what, _group_attrs(group, "what"))
            where = _merge(ds_where, _group_attrs(group, "where"))
            quantity = str(_require(what, "quantity", f"{label}/what", path))
            if quantities is not None and quantity not in quantities:
                continue
            ensure_grid(where)
            selected = True
            std, units, long_name, no_echo = _quantity_info(quantity)
            values = read_field(group, label, what, no_echo, units)
            info: dict[str, Any] = {"odim_group": label, **_time_attrs(what, path)}
            if "product" in what:
                info["product"] = str(what["product"])
            how = _merge(ds_how, _group_attrs(group, "how"))
            if "task" in how:
                info["task"] = str(how["task"])
            name = _unique_name(quantity, list(fields) + list(quality), ds_name)
            fields[name] = (
                values, variable_attrs(units, long_name, standard_name=std, quantity=quantity, extra=info)
            )
            if include_quality:
                for q_name in _numbered(group, "quality"):
                    add_quality(group[q_name], f"{label}/{q_name}", what)
        if include_quality and selected:
            for q_name in _numbered(dgroup, "quality"):
                add_quality(dgroup[q_name], f"{ds_name}/{q_name}", ds_what)

    if quantities is not None:
        missing = sorted(quantities - {attrs["quantity"] for _, attrs in fields.values()})
        if missing:
            raise MissingVariableError(path, f"quantities {missing} not in the file")
    if not fields or crs is None:
        raise MissingVariableError(path, "no dataN group with data")
    check_not_empty(fields, path, options.allow_empty)
    if selection is not None and selection.factor > 1:
        for _, attrs in (*fields.values(), *quality.values()):
            attrs.update(selection.attrs(attrs["units"]))

    ds_attrs = {"odim_object": obj, "odim_conventions": str(_decode(f.attrs.get("Conventions", b"")))}
    if "source" in root_what:
        ds_attrs["odim_source"] = str(root_what["source"])
    assert selection is not None  # a field was read
    x_out, y_out = selection.coords(x, y)
    return build_dataset(
        {**fields, **quality}, x=x_out, y=y_out, times=[nominal], crs=crs, path=path,
        source_format=SOURCE_FORMAT, attrs=ds_attrs,
    )


def is_odim(f: h5py.File) -> bool:
    """True for an HDF5 file following ODIM_H5 (Conventions attribute, or a root what/object)."""
    conventions = str(_decode(f.attrs.get("Conventions", b"")))
    if conventions.upper().startswith("ODIM_H5"):
        return True
    return "what" in f and "object" in f["what"].attrs


def read_odim(
    path: str | Path,
    *,
    options: ReadOptions | None = None,
    quantities: Iterable[str] | None = None,
    window: WindowSpec | None = None,
    include_quality: bool | None = None,
    allow_empty: bool | None = None,
) -> xr.Dataset:
    """Read an ODIM_H5 composite into the reader contract (see ``conventions``).

    ``options`` (``ReadOptions``): ``variables`` selects ODIM quantities (e.g. ``["RATE"]``);
    ``window`` reads a sub-grid (only the HDF5 chunks it touches are decompressed); ``coarsen``
    averages blocks strip by strip; ``include_quality`` adds the ``qualityN`` groups as variables
    named by ``how/task``, ``what/quantity`` or ``qualityN``. The keywords override ``options``
    (``quantities`` is ``variables``). An all-nodata frame raises ``EmptyFrameError`` unless
    ``allow_empty``.
    """
    p = check_file(path)
    opts = with_overrides(options, p, variables=quantities, window=window, include_quality=include_quality,
                          allow_empty=allow_empty)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise CorruptFileError(p, f"not a readable HDF5 file ({exc})") from exc
    try:
        with f:
            if not is_odim(f):
                raise UnknownFormatError(p, "HDF5 file without an ODIM_H5 Conventions attribute")
            return _read_group(f, p, opts)
    except (OSError, KeyError, RuntimeError) as exc:
        raise CorruptFileError(p, f"unreadable HDF5 content ({type(exc).__name__}: {exc})") from exc
