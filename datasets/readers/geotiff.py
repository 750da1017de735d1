"""GeoTIFF radar composite reader (rasterio), e.g. the FMI composites.

Gain, offset, nodata and undetect may sit in the GDAL metadata XML (``<Item name="Gain">``),
as plain metadata items, or in rasterio's standard scales/offsets/nodata.

Coarsened reads (``coarsen=k``) never load the whole frame: rows are read in strips of
whole ``k``-blocks and reduced strip by strip, so memory stays at one strip plus the output.
They do not use the file's overviews on purpose: overviews are built from the raw codes
(averaging nodata, undetect and echo codes is meaningless) and may be empty: the FMI
example files carry overviews that are all zero. ``coarsen_method="mean"`` averages valid
cells in linear units (Z in mm6 m-3 for dBZ, the value itself otherwise; undetect counts as
the no-echo value, nodata is left out, an all-nodata block is NaN); ``"nearest"`` keeps the
cell at offset ``k // 2`` of each block (its centre, or just below-right of it for even ``k``).
Trailing rows/columns that do not fill a block are dropped; coordinates are the block centres.
"""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyproj
import rasterio
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from meteovision.datasets.conventions import ODIM_QUANTITIES
from meteovision.datasets.errors import CorruptFileError, MissingVariableError, ReaderError
from meteovision.datasets.readers._common import (
    TimeLike,
    WindowSpec,
    build_dataset,
    check_file,
    check_not_empty,
    normalize_units,
    resolve_window,
    time_from_filename,
    to_datetime64,
    variable_attrs,
)
from meteovision.datasets.readers.tiff_check import TIFF_MAGICS, check_tiff

logger = logging.getLogger(__name__)

SOURCE_FORMAT = "geotiff"
CoarsenMethod = Literal["mean", "nearest"]
#: Rows per strip in a coarsened read (rounded to whole blocks): bounds memory to a few MB.
_STRIP_ROWS = 128

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
    try:
        return float(items[key][0])
    except ValueError as exc:
        raise CorruptFileError(path, f"metadata item {key!r}={items[key][0]!r} is not a number") from exc


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


def _strips(rows: slice, factor: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges covering whole ``factor`` blocks of ``rows``."""
    step = max(1, _STRIP_ROWS // factor) * factor
    stop = rows.start + (rows.stop - rows.start) // factor * factor
    for start in range(rows.start, stop, step):
        yield start, min(start + step, stop)


def _block_reduce(values: np.ndarray, factor: int, method: CoarsenMethod, linear_db: bool) -> np.ndarray:
    """Reduce a (h, w) strip, h and w multiples of ``factor``, to (h/factor, w/factor)."""
    h, w = values.shape
    if method == "nearest":
        return values[factor // 2 :: factor, factor // 2 :: factor].copy()
    blocks = values.reshape(h // factor, factor, w // factor, factor)
    if linear_db:
        blocks = np.power(np.float32(10.0), blocks / np.float32(10.0))
    valid = ~np.isnan(blocks)
    count = valid.sum(axis=(1, 3))
    blocks[~valid] = 0.0  # in place: ``values`` is a fresh array owned by this strip
    total = blocks.sum(axis=(1, 3), dtype=np.float64)
    mean = np.full(total.shape, np.nan, dtype=np.float64)
    np.divide(total, count, out=mean, where=count > 0)
    if linear_db:
        with np.errstate(divide="ignore"):
            mean = 10.0 * np.log10(mean)
    return mean.astype(np.float32)


def read_geotiff(
    path: str | Path,
    *,
    window: WindowSpec | Window | None = None,
    coarsen: int = 1,
    coarsen_method: CoarsenMethod = "mean",
    band: int = 1,
    variable: str | None = None,
    time: TimeLike | None = None,
    allow_empty: bool = False,
) -> xr.Dataset:
    """Read one band of a GeoTIFF composite into the reader contract (see ``conventions``).

    ``window`` reads a sub-grid (row/col slices, ``((r0, r1), (c0, c1))``, a rasterio ``Window``
    or ``(left, bottom, right, top)`` bounds); ``coarsen`` averages ``coarsen x coarsen`` blocks
    strip by strip (see the module docstring). ``variable`` and ``time`` override what the
    metadata say. An all-nodata frame raises ``EmptyFrameError`` unless ``allow_empty``.
    """
    p = check_file(path)
    if int(coarsen) != coarsen or coarsen < 1:
        raise ReaderError(p, f"coarsen must be a positive integer, got {coarsen!r}")
    if coarsen_method not in ("mean", "nearest"):
        raise ReaderError(p, f"coarsen_method must be 'mean' or 'nearest', got {coarsen_method!r}")
    factor = int(coarsen)
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
            return _read(
                src, p, window=window, factor=factor, method=coarsen_method, band=band, variable=variable,
                time=time, allow_empty=allow_empty,
            )
    except _RASTERIO_ERRORS as exc:
        raise CorruptFileError(p, f"unreadable raster content ({type(exc).__name__}: {exc})") from exc


def _read(
    src: rasterio.io.DatasetReader,
    p: Path,
    *,
    window: WindowSpec | Window | None,
    factor: int,
    method: CoarsenMethod,
    band: int,
    variable: str | None,
    time: TimeLike | None,
    allow_empty: bool,
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
        raise ReaderError(p, f"CRS units are {crs.axis_info[0].unit_name}, expected metres")
    x_full = t.c + (np.arange(src.width) + 0.5) * t.a
    y_full = t.f + (np.arange(src.height) + 0.5) * t.e
    if isinstance(window, Window):
        window = window.toslices()
    rows, cols = resolve_window(window, x_full, y_full, p)  # type: ignore[arg-type]

    enc = _encoding(src, band, p)
    name = variable or _variable_name(enc)
    if name in ODIM_QUANTITIES:
        std, units, long_name, no_echo = ODIM_QUANTITIES[name]
    else:
        std, units, long_name = None, enc.units, enc.quantity_text or name
        no_echo = enc.undetect * enc.gain + enc.offset if enc.undetect is not None else float("nan")
    stamp = to_datetime64(time, p, "time argument") if time is not None else _time(enc, p, src.tags())

    if factor == 1:
        raw = src.read(band, window=Window.from_slices(rows, cols))
        values = _physical(raw, enc, no_echo)
        x, y = x_full[cols], y_full[rows]
    else:
        ncols = (cols.stop - cols.start) // factor * factor
        nrows = (rows.stop - rows.start) // factor * factor
        if ncols == 0 or nrows == 0:
            raise ReaderError(p, f"window of {rows.stop - rows.start} x {cols.stop - cols.start} cells is "
                                 f"smaller than one coarsen block of {factor}")
        col_slice = slice(cols.start, cols.start + ncols)
        values = np.empty((nrows // factor, ncols // factor), dtype=np.float32)
        for r0, r1 in _strips(rows, factor):
            raw = src.read(band, window=Window.from_slices((r0, r1), col_slice))
            out0 = (r0 - rows.start) // factor
            values[out0 : out0 + (r1 - r0) // factor] = _block_reduce(
                _physical(raw, enc, no_echo), factor, method, units == "dBZ"
            )
        x = x_full[col_slice].reshape(-1, factor).mean(axis=1)
        y = y_full[rows.start : rows.start + nrows].reshape(-1, factor).mean(axis=1)

    attrs = variable_attrs(
        units, long_name, standard_name=std, quantity=name if name in ODIM_QUANTITIES else None,
        extra={"gain": enc.gain, "offset": enc.offset},
    )
    if factor > 1:
        attrs["coarsen"] = factor
        attrs["coarsen_method"] = method + (" (linear Z)" if method == "mean" and units == "dBZ" else "")
    fields = {name: (values, attrs)}
    check_not_empty(fields, p, allow_empty)
    return build_dataset(fields, x=x, y=y, times=[stamp], crs=crs, path=p, source_format=SOURCE_FORMAT)
