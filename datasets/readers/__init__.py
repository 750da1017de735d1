"""File readers: ODIM_H5, GeoTIFF, CF NetCDF, GRIB2 and webcam images to one ``xarray.Dataset`` shape.

Pick by content with ``open_dataset``/``open_series``, or by name with ``get_reader``.
The output shape is written down in ``meteovision.datasets.conventions``.
"""

from meteovision.datasets.readers._common import WindowSpec
from meteovision.datasets.readers.geotiff import read_geotiff
from meteovision.datasets.readers.netcdf import read_netcdf
from meteovision.datasets.readers.odim import read_odim
from meteovision.datasets.readers.options import ReadOptions
from meteovision.datasets.readers.registry import (
    READERS,
    detect_format,
    get_reader,
    open_dataset,
    open_series,
)
from meteovision.datasets.readers.series import combine_frames
from meteovision.datasets.readers.webcam import SNOW_CLASSES, read_webcam, read_webcam_labels

__all__ = [
    "READERS",
    "SNOW_CLASSES",
    "ReadOptions",
    "WindowSpec",
    "combine_frames",
    "detect_format",
    "get_reader",
    "open_dataset",
    "open_series",
    "read_geotiff",
    "read_netcdf",
    "read_odim",
    "read_webcam",
    "read_webcam_labels",
]
