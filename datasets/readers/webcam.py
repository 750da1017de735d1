"""Webcam photos (JPEG/PNG, Pillow) and their label table.

A webcam image has no map projection: its Dataset has no ``crs`` variable and its x/y
coordinates are pixel indices (x to the right, y downwards), unlike the gridded readers.
Times are UTC: from the caller (e.g. the labels table), the file name
(``<camera>_YYYYmmddHHMM.jpg``) or the EXIF DateTimeOriginal (with its offset when given).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image, UnidentifiedImageError

from meteovision.core.applications import LABEL_COLUMNS, SNOW_CLASSES
from meteovision.datasets.errors import CorruptFileError, MissingVariableError, ReaderError, SizeLimitError
from meteovision.datasets.readers._common import (
    TimeLike,
    check_file,
    resolve_window,
    time_from_filename,
    to_datetime64,
)
from meteovision.datasets.readers.options import ReadOptions, with_overrides

logger = logging.getLogger(__name__)

SOURCE_FORMAT = "webcam_image"

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_DATETIME = 0x0132
#: Errors Pillow raises on broken files (SyntaxError for some malformed PNG chunks).
_PIL_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _exif_time(image: Image.Image, path: Path) -> np.datetime64 | None:
    """EXIF DateTimeOriginal (or DateTime) as UTC; without an offset tag it is taken as UTC."""
    exif = image.getexif()
    sub = exif.get_ifd(_EXIF_IFD)
    text = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if not text:
        return None
    offset = sub.get(_OFFSET_TIME_ORIGINAL)
    iso = re.sub(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", str(text).strip())
    if offset:
        iso += str(offset).strip()
    else:
        logger.warning("%s: EXIF time %s has no offset, assuming UTC", path, text)
    return to_datetime64(iso, path, "EXIF DateTimeOriginal")


def _camera_from_name(path: Path) -> str | None:
    match = re.match(r"^(.*?)_\d{12,14}$", path.stem)
    return match.group(1) if match else None


def _pixel_window(options: ReadOptions, width: int, height: int, path: Path) -> tuple[slice, slice]:
    """Rows/cols of ``options.window``; refuses what a photo cannot honour (bounds, coarsen, variables)."""
    if options.variables is not None and tuple(options.variables) != ("image",):
        raise MissingVariableError(path, f"variables {list(options.variables)} asked for; a webcam photo holds "
                                         "only 'image'")
    if options.coarsen != 1:
        raise ReaderError(path, f"coarsen={options.coarsen}: webcam photos are not block-averaged (resize them)")
    if options.window is not None and len(options.window) == 4:
        raise ReaderError(path, f"window {options.window} is in map coordinates; a webcam photo has none "
                                "(give pixel rows and columns)")
    cells = 3 * width * height
    if cells > options.max_cells:
        raise SizeLimitError(path, f"image of {width} x {height} pixels: {cells:,} values, over the limit of "
                                   f"{options.max_cells:,} (ReadOptions.max_cells)")
    return resolve_window(options.window, np.arange(width), np.arange(height), path)


def read_webcam(
    path: str | Path,
    *,
    options: ReadOptions | None = None,
    time: TimeLike | None = None,
    camera: str | None = None,
    allow_empty: bool | None = None,
) -> xr.Dataset:
    """Read a webcam image as ``image`` on ``(time, band, y, x)`` uint8 RGB (no CRS, pixel coordinates).

    ``time`` (e.g. from the labels table) wins over the file name, which wins over EXIF.
    ``options``: a pixel ``window`` crops; map bounds, ``coarsen`` and other variables are refused.
    ``allow_empty`` is accepted for a uniform reader signature: a photo has no nodata pixels.
    """
    p = check_file(path)
    opts = with_overrides(options, p, allow_empty=allow_empty)
    try:
        with Image.open(p) as im:
            rows, cols = _pixel_window(opts, im.width, im.height, p)
            im.load()
            exif_time = _exif_time(im, p) if time is None and time_from_filename(p) is None else None
            rgb = im.convert("RGB") if im.mode != "RGB" else im.copy()
    except _PIL_ERRORS as exc:
        raise CorruptFileError(p, f"Pillow cannot decode the image ({type(exc).__name__}: {exc})") from exc
    if time is not None:
        stamp = to_datetime64(time, p, "time argument")
    else:
        found = time_from_filename(p) or exif_time
        if found is None:
            raise MissingVariableError(p, "no time: pass time=, name it <camera>_YYYYmmddHHMM or set EXIF")
        stamp = found
    pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)[np.newaxis, :, rows, cols]
    height, width = pixels.shape[2:]
    ds = xr.Dataset(
        {"image": (("time", "band", "y", "x"), pixels, {"long_name": "webcam image", "units": "1"})},
        coords={
            "time": ("time", np.array([stamp], dtype="datetime64[ns]"), {"standard_name": "time"}),
            "band": ("band", ["R", "G", "B"]),
            "y": ("y", rows.start + np.arange(height), {"long_name": "pixel row (downwards)", "units": "1"}),
            "x": ("x", cols.start + np.arange(width), {"long_name": "pixel column", "units": "1"}),
        },
    )
    ds.attrs["source_path"] = str(p)
    ds.attrs["source_format"] = SOURCE_FORMAT
    name = camera or _camera_from_name(p)
    if name:
        ds.attrs["camera"] = name
    return ds


def read_webcam_labels(csv_path: str | Path, *, check_images: bool = True) -> pd.DataFrame:
    """The labels table ``path,camera,time,snow_class,visibility_m``, validated, with absolute paths.

    Relative image paths are taken relative to the CSV's folder. An empty ``snow_class`` or
    ``visibility_m`` cell means "not labelled" (None / NaN); any other value must be a known
    snow class or a non-negative number. ``time`` becomes naive UTC ``datetime64[ns]``.
    """
    p = check_file(csv_path)
    try:
        table = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(p, f"not a readable CSV table ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise MissingVariableError(p, f"labels table lacks columns {missing} (has {list(table.columns)})")
    if table.empty:
        raise CorruptFileError(p, "labels table has no rows")
    table = table.apply(lambda col: col.str.strip())

    def line(i: int) -> str:
        return f"line {i + 2}"  # header is line 1

    snow = table["snow_class"].str.lower()
    bad_snow = ~snow.isin([*SNOW_CLASSES, ""])
    if bad_snow.any():
        i = int(np.flatnonzero(bad_snow.to_numpy())[0])
        raise ReaderError(p, f"{line(i)}: unknown snow_class {table['snow_class'].iloc[i]!r} "
                             f"(expected one of {SNOW_CLASSES})")
    visibility = pd.to_numeric(table["visibility_m"].replace("", np.nan), errors="coerce")
    bad_vis = visibility.isna() & (table["visibility_m"] != "")
    if bad_vis.any():
        i = int(np.flatnonzero(bad_vis.to_numpy())[0])
        raise ReaderError(p, f"{line(i)}: visibility_m {table['visibility_m'].iloc[i]!r} is not a number")
    negative = visibility < 0
    if negative.any():
        i = int(np.flatnonzero(negative.to_numpy())[0])
        raise ReaderError(p, f"{line(i)}: negative visibility_m {visibility.iloc[i]}")

    times = [to_datetime64(text, p, f"{line(i)} time") for i, text in enumerate(table["time"])]
    paths: list[str] = []
    for i, text in enumerate(table["path"]):
        if not text:
            raise ReaderError(p, f"{line(i)}: empty image path")
        image = Path(text)
        image = (image if image.is_absolute() else p.parent / image).resolve()
        if check_images and not image.is_file():
            raise ReaderError(p, f"{line(i)}: image file {image} does not exist")
        paths.append(str(image))
    if (table["camera"] == "").any():
        i = int(np.flatnonzero((table["camera"] == "").to_numpy())[0])
        raise ReaderError(p, f"{line(i)}: empty camera")

    return pd.DataFrame(
        {
            "path": paths,
            "camera": table["camera"].to_numpy(),
            "time": np.array(times, dtype="datetime64[ns]"),
            "snow_class": pd.Categorical(snow.replace("", np.nan), categories=list(SNOW_CLASSES)),
            "visibility_m": visibility.astype(np.float64).to_numpy(),
        }
    )
