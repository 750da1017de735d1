"""One entry point for every reader, pysteps style: pick by content or by name.

``open_dataset`` looks at the file's magic bytes, not its extension (radar archives are full
of ``.hdf`` files that are NetCDF4, or ``.dat`` files that are TIFFs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import xarray as xr

from meteovision.datasets.errors import (
    CorruptFileError,
    MeteovisionError,
    SeriesError,
    UnknownFormatError,
)
from meteovision.datasets.readers import netcdf3
from meteovision.datasets.readers._common import check_file
from meteovision.datasets.readers.geotiff import read_geotiff
from meteovision.datasets.readers.grib import GRIB_MAGIC, read_grib
from meteovision.datasets.readers.netcdf import HDF5_MAGIC, read_netcdf
from meteovision.datasets.readers.odim import is_odim, read_odim
from meteovision.datasets.readers.series import combine_frames
from meteovision.datasets.readers.tiff_check import TIFF_MAGICS
from meteovision.datasets.readers.webcam import read_webcam

logger = logging.getLogger(__name__)

Reader = Callable[..., xr.Dataset]

#: source_format -> reader function
READERS: dict[str, Reader] = {
    "odim_h5": read_odim,
    "cf_netcdf": read_netcdf,
    "geotiff": read_geotiff,
    "webcam_image": read_webcam,
    "grib2": read_grib,
}

_ALIASES = {
    "odim": "odim_h5",
    "hdf5": "odim_h5",
    "netcdf": "cf_netcdf",
    "nc": "cf_netcdf",
    "tiff": "geotiff",
    "gtiff": "geotiff",
    "webcam": "webcam_image",
    "jpeg": "webcam_image",
    "png": "webcam_image",
    "grib": "grib2",
}

_IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
#: HDF5 allows a user block before the superblock, at 0, 512, 1024, 2048... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)
_EXTENSIONS = {
    "odim_h5": {".h5", ".hdf", ".hdf5"},
    "cf_netcdf": {".nc", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf"},
    "geotiff": {".tif", ".tiff", ".gtif"},
    "webcam_image": {".jpg", ".jpeg", ".png"},
    "grib2": {".grib2", ".grb2", ".grib", ".grb"},
}


def get_reader(name: str) -> Reader:
    """The reader registered under ``name`` (a source_format such as "odim_h5", or an alias)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in READERS:
        known = sorted(READERS) + sorted(_ALIASES)
        raise MeteovisionError(f"unknown reader {name!r}; known names: {known}")
    return READERS[key]


def _has_hdf5_signature(path: Path) -> bool:
    with open(path, "rb") as fh:
        for offset in _HDF5_OFFSETS:
            fh.seek(offset)
            if fh.read(8) == HDF5_MAGIC:
                return True
    return False


def detect_format(path: str | Path) -> str:
    """The source_format of a file from its first bytes (and, for HDF5, its root attributes)."""
    p = check_file(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head[:4] in netcdf3.MAGICS:
        found = "cf_netcdf"
    elif head[:4] in TIFF_MAGICS:
        found = "geotiff"
    elif head.startswith(_IMAGE_MAGICS):
        found = "webcam_image"
    elif head.startswith(GRIB_MAGIC):
        found = "grib2"
    elif _has_hdf5_signature(p):
        try:
            with h5py.File(p, "r") as f:
                found = "odim_h5" if is_odim(f) else "cf_netcdf"
        except (OSError, KeyError, RuntimeError) as exc:
            raise CorruptFileError(p, f"HDF5 signature but h5py cannot open it ({exc})") from exc
    else:
        raise UnknownFormatError(
            p, f"content matches no reader (first bytes {head!r}); known: ODIM_H5, NetCDF, GeoTIFF, JPEG, PNG, GRIB2"
        )
    if p.suffix.lower() not in _EXTENSIONS[found]:
        logger.debug("%s: extension %r but the content is %s", p, p.suffix, found)
    return found


def open_dataset(path: str | Path, *, format: str | None = None, **kwargs: Any) -> xr.Dataset:
    """Read any supported file; the reader comes from ``format`` if given, else from the content.

    Keyword arguments go to the reader: ``options=ReadOptions(...)``, honoured by every reader,
    or a reader's own keywords (``quantities=`` for ODIM, ``band=`` for GeoTIFF).
    """
    reader = get_reader(format) if format is not None else READERS[detect_format(path)]
    return reader(path, **kwargs)


def open_series(paths: Iterable[str | Path], *, format: str | None = None, **kwargs: Any) -> xr.Dataset:
    """Read frames (each with ``open_dataset``), sort by time, check grids, concatenate on ``time``.

    See ``series.combine_frames`` for the checks and the ``time_step_seconds``/``gaps``/``irregular_steps`` attrs.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise SeriesError("open_series: no files given")
    return combine_frames([(p, open_dataset(p, format=format, **kwargs)) for p in files])
