"""GeoTIFF radar composite reader (rasterio), e.g. the FMI composites.

Gain, offset, nodata and undetect may sit in the GDAL metadata XML (``<Item name="Gain">``),
as plain metadata items, or in rasterio's standard scales/offsets/nodata.

Coarsened reads (``coarsen=k``, see ``coarsen.Selection``) never load the whole frame: rows
are read in strips of whole ``k``-blocks and reduced strip by strip. They do not use the
file's overviews on purpose: overviews are built from the raw codes (averaging nodata,
undetect and echo codes is meaningless) and may be empty: the FMI example files carry
overviews that are all zero. Undetect counts as the no-echo value, nodata is left out.
"""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from meteovision.datasets.conventions import ODIM_QUANTITIES
from meteovision.datasets.errors import CorruptFileError, MissingVariableError, ReaderError, UnitsError
from meteovision.datasets.readers._common import (
    TimeLike,
    WindowSpec,
    build_dataset,
    check_file,
    check_not_empty,
    normalize_units,
    time_from_filename,
    to_datetime64,
    variable_attrs,
)
from meteovision.datasets.readers.attributes import as_float
from meteovision.datasets.readers.coarsen import Selection
from meteovision.datasets.readers.crs_units import check_ellipsoid
from meteovision.datasets.readers.options import CoarsenMethod, ReadOptions, with_overrides
from meteovision.datasets.readers.tiff_check import TIFF_MAGICS, check_tiff

logger = logging.getLogger(__name__)

SOURCE_FORMAT = "geotiff"

try:  # rasterio raises CPLE_* errors from GDAL, not all of them subclass RasterioError
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - layout of rasterio's private module changed
    CPLE_BaseError = RasterioError

_RASTERIO_ERRORS: tuple[type[Exception], ...] = (RasterioError, CPLE_BaseError, OSError)


@dataclass(frozen=True)
class Encoding:
    """How raw codes map to physical values, and what the field is."""

    gain: float
    offset: float
    nodata: float | None
    undetect: float | None
    quantity_text: str | None
    units: str
    observation_time: str | None
    time_format: str | None


def _metadata_items(tags: Mapping[str, str], path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Lower-cased item name -> (text, XML attributes) from GDAL metadata (XML tag or plain items)."""
    items: dict[str, tuple[str, dict[str, str]]] = {
        key.lower(): (value, {}) for key, value in tags.items() if key != "GDAL_METADATA"
    }
    xml_text = tags.get("GDAL_METADATA")
    if xml_text:
        try:
            root = ET.fromstring(xml_text)
        except ET.ParseError as exc:
            raise CorruptFileError(path, f"GDAL_METADATA tag is not valid XML ({exc})") from exc
        for item in root.iter("Item"):
            name = item.get("name")
            if name:
                items[name.lower()] = ((item.text or "").strip(), dict(item.attrib))
    return items


def _number(items: Mapping[str, tuple[str, dict[str, str]]], key: str, path: Path) -> float | None:
    if key not in items or items[key][0] == "":
        return None
    return as_float(items[key][0], path, f"metadata item {key!r}", finite=key not in ("nodata", "undetect"))


def _encoding(src: rasterio.io.DatasetReader, band: int, path: Path) -> Encoding:
    items = _metadata_items({**src.tags(), **src.tags(band)}, path)
    gain = _number(items, "gain", path)
    offset = _number(items, "offset", path)
    nodata = _number(items, "nodata", path)
    undetect = _number(items, "undetect", path)
    quantity = items.get("quantity")
    units = (quantity[1].get("unit") if quantity else None) or src.units[band - 1] or "1"
    obs = items.get("observation time")
    return Encoding(
        gain=gain if gain is not None else float(src.scales[band - 1]),
        offset=offset if offset is not None else float(src.offsets[band - 1]),
        nodata=nodata if nodata is not None else src.nodatavals[band - 1],
        undetect=undetect,
        quantity_text=quantity[0] if quantity else None,
        units=normalize_units(units),
        observation_time=obs[0] if obs else None,
        time_format=obs[1].get("format") if obs else None,
    )


def _variable_name(enc: Encoding) -> str:
    """ODIM-style name: reflectivity in dBZ -> DBZH (TH if uncorrected), rain rate -> RATE."""
    text = (enc.quantity_text or "").strip()
    if text.upper() in ODIM_QUANTITIES:
        return text.upper()
    low = text.lower()
    if "reflectivity" in low and enc.units == "dBZ":
        return "TH" if ("uncorrected" in low or "total" in low) else "DBZH"
    if ("rain" in low or "precipitation" in low) and enc.units == "mm h-1":
        return "RATE"
    if "accumul" in low and enc.units == "mm":
        return "ACRR"
    if text:
        return re.sub(r"\W+", "_", low).strip("_") or "band"
    return "band"


def _time(enc: Encoding, path: Path, tags: Mapping[str, str]) -> np.datetime64:
    """Observation time from the metadata, the TIFF DateTime tag or the file name."""
    if enc.observation_time:
        fmt = (enc.time_format or "YYYYMMDDhhmm").replace("YYYY", "%Y").replace("MM", "%m")
        fmt = fmt.replace("DD", "%d").replace("hh", "%H").replace("mm", "%M").replace("ss", "%S")
        try:
            return np.datetime64(datetime.strptime(enc.observation_time, fmt), "ns")
        except ValueError as exc:
            raise ReaderError(path, f"observation time {enc.observation_time!r} does not match "
                                    f"format {enc.time_format!r}") from exc
    if "TIFFTAG_DATETIME" in tags:
        try:
            return np.datetime64(datetime.strptime(tags["TIFFTAG_DATETIME"], "%Y:%m:%d %H:%M:%S"), "ns")
        except ValueError:
            logger.debug("%s: unparsable TIFFTAG_DATETIME %r", path, tags["TIFFTAG_DATETIME"])
    found = time_from_filename(path)
    if found is None:
        raise MissingVariableError(path, "no observation time in the metadata, TIFF DateTime or file name")
    return found


def _physical(raw: np.ndarray, enc: Encoding, no_echo: float) -> np.ndarray:
    values = (raw.astype(np.float32) * np.float32(enc.gain) + np.float32(enc.offset)).astype(np.float32)
    if enc.nodata is not None:
        values[np.isnan(raw) if np.isnan(enc.nodata) else raw == enc.nodata] = np.nan
    if enc.undetect is not None:
        values[raw == enc.undetect] = no_echo
    if raw.dtype.kind == "f":
        values[np.isnan(raw)] = np.nan
    return values


def read_geotiff(
    path: str | Path,
    *,
    options: ReadOptions | None = None,
    window: WindowSpec | Window | None = None,
    coarsen: int | None = None,
    coarsen_method: CoarsenMethod | None = None,
    band: int = 1,
    variable: str | None = None,
    time: TimeLike | None = None,
    allow_empty: bool | None = None,
) -> xr.Dataset:
    """Read one band of a GeoTIFF composite into the reader contract (see ``conventions``).

    ``options`` (``ReadOptions``) or the keywords that override it: ``window`` reads a sub-grid
    (row/col slices, ``((r0, r1), (c0, c1))``, a rasterio ``Window`` or ``(left, bottom, right,
    top)`` bounds); ``coarsen`` averages ``coarsen x coarsen`` blocks strip by strip;
    ``variables`` must name the band's variable. ``variable`` and ``time`` override what the
    metadata say. An all-nodata frame raises ``EmptyFrameError`` unless ``allow_empty``.
    """
    p = check_file(path)
    if isinstance(window, Window):
        window = window.toslices()
    opts = with_overrides(options, p, window=window, coarsen=coarsen, coarsen_method=coarsen_method,
                          allow_empty=allow_empty)
    with open(p, "rb") as fh:
        if fh.read(4) in TIFF_MAGICS:
            check_tiff(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(p)
    except _RASTERIO_ERRORS as exc:
        raise CorruptFileError(p, f"GDAL cannot open the file as a raster ({exc})") from exc
    try:
        with src:
            return _read(src, p, opts, band=band, variable=variable, time=time)
    except _RASTERIO_ERRORS as exc:
        raise CorruptFileError(p, f"unreadable raster content ({type(exc).__name__}: {exc})") from exc


def _read(
    src: rasterio.io.DatasetReader,
    p: Path,
    opts: ReadOptions,
    *,
    band: int,
    variable: str | None,
    time: TimeLike | None,
) -> xr.Dataset:
    if not 1 <= band <= src.count:
        raise ReaderError(p, f"band {band} does not exist (the file has {src.count})")
    if src.crs is None:
        raise MissingVariableError(p, "the raster has no CRS")
    t = src.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise ReaderError(p, f"only north-up, unrotated rasters are supported (transform {tuple(t)[:6]})")
    # Prefer the EPSG code the file declares: GDAL and pyproj may ship different EPSG database versions,
    # and a WKT round trip between them can lose the identification (EPSG:3067 in the FMI files).
    epsg = src.crs.to_epsg()
    crs = pyproj.CRS.from_epsg(epsg) if epsg else pyproj.CRS.from_wkt(src.crs.to_wkt())
    if crs.axis_info and crs.axis_info[0].unit_conversion_factor != 1.0:
        raise UnitsError(p, f"CRS units are {crs.axis_info[0].unit_name}, expected metres")
    check_ellipsoid(crs, p, "the raster's CRS")
    x_full = t.c + (np.arange(src.width) + 0.5) * t.a
    y_full = t.f + (np.arange(src.height) + 0.5) * t.e
    selection = Selection.of(opts, x_full, y_full, p)

    enc = _encoding(src, band, p)
    name = variable or _variable_name(enc)
    if opts.variables is not None and tuple(opts.variables) != (name,):
        raise MissingVariableError(p, f"variables {list(opts.variables)} asked for, the band holds only {name!r}")
    if name in ODIM_QUANTITIES:
        std, units, long_name, no_echo = ODIM_QUANTITIES[name]
    else:
        std, units, long_name = None, enc.units, enc.quantity_text or name
        no_echo = enc.undetect * enc.gain + enc.offset if enc.undetect is not None else float("nan")
    stamp = to_datetime64(time, p, "time argument") if time is not None else _time(enc, p, src.tags())

    values = selection.read(
        lambda rows, cols: _physical(src.read(band, window=Window.from_slices(rows, cols)), enc, no_echo),
        linear_db=normalize_units(units) == "dBZ",
    )
    x, y = selection.coords(x_full, y_full)

    attrs = variable_attrs(
        units, long_name, standard_name=std, quantity=name if name in ODIM_QUANTITIES else None,
        extra={"gain": enc.gain, "offset": enc.offset},
    )
    attrs.update(selection.attrs(attrs["units"]))
    fields = {name: (values, attrs)}
    check_not_empty(fields, p, opts.allow_empty)
    return build_dataset(fields, x=x, y=y, times=[stamp], crs=crs, path=p, source_format=SOURCE_FORMAT)
