"""One file -> one frame of the training quantity: read (the reader crops and coarsens), convert.

The same function serves training from raw files and ``meteovision store build``, so a store holds
exactly what raw-file training sees. The readers' coarsening averages the valid cells of each block
(linear Z for dBZ); a block without a valid cell is NaN (outside coverage, masked in the loss and the
metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meteovision.datasets.archive.sources import INPUT_UNITS, ArchiveError, Conversion, SourceSettings
from meteovision.datasets.conventions import accumulation_to_rate, dbz_to_rate
from meteovision.datasets.readers import ReadOptions, open_dataset

#: Units of the training quantity per conversion.
OUTPUT_UNITS: dict[Conversion, str] = {
    Conversion.RATE: "mm h-1",
    Conversion.ACCUMULATION: "mm h-1",
    Conversion.DBZ_TO_RATE: "mm h-1",
    Conversion.DBZ: "dBZ",
}


@dataclass(frozen=True)
class Frame:
    """One frame in the source's units, cropped and coarsened (NaN = no data)."""

    time: np.datetime64
    values: np.ndarray  # float32 (H, W)
    x: np.ndarray
    y: np.ndarray
    units: str
    crs_wkt: str


def read_options(src: SourceSettings) -> ReadOptions:
    """The one read request of a source, the same for every file format (the readers crop and coarsen)."""
    return ReadOptions(variables=(src.variable,), window=src.crop_bounds_m, coarsen=src.coarsen,
                       coarsen_method="mean", include_quality=False, allow_empty=True)


def read_frame(path: Path, src: SourceSettings) -> Frame:
    """Read, crop and coarsen one file of ``src`` (units checked against the conversion)."""
    ds = open_dataset(path, options=read_options(src))
    if src.variable not in ds:
        names = sorted(str(v) for v in ds.data_vars if v != "crs")
        raise ArchiveError(f"{path}: source {src.name!r} variable {src.variable!r} not in the file (it has {names})")
    da = ds[src.variable]
    units = str(da.attrs.get("units", ""))
    if units not in INPUT_UNITS[src.kind]:
        raise ArchiveError(f"{path}: {src.variable} is in {units!r}; conversion {src.kind.value!r} of source "
                           f"{src.name!r} needs {list(INPUT_UNITS[src.kind])}")
    if "time" not in da.dims or da.sizes["time"] != 1:
        raise ArchiveError(f"{path}: expected one time in the file, got dims {da.dims}")
    values = da.isel(time=0).to_numpy()
    x, y = ds["x"].to_numpy(), ds["y"].to_numpy()
    crs_wkt = str(ds["crs"].attrs.get("crs_wkt", "")) if "crs" in ds else ""
    return Frame(time=np.datetime64(ds["time"].to_numpy()[0], "ns"), values=values.astype(np.float32),
                 x=x, y=y, units=units, crs_wkt=crs_wkt)


def convert(values: np.ndarray, src: SourceSettings, period_minutes: float | None) -> np.ndarray:
    """Source units -> the training quantity (mm h-1, or dBZ kept); NaN stays NaN."""
    if src.kind in (Conversion.RATE, Conversion.DBZ):
        return values.astype(np.float32)
    if src.kind == Conversion.ACCUMULATION:
        period = src.period_minutes or period_minutes
        if not period:
            raise ArchiveError(f"source {src.name!r}: an accumulation needs period_minutes (the file's period)")
        return accumulation_to_rate(values, period)
    return dbz_to_rate(values, src.zr_a, src.zr_b)


def converted_frame(path: Path, src: SourceSettings) -> tuple[np.datetime64, np.ndarray]:
    """Time and values of one file in the training quantity: what training and the store both use."""
    frame = read_frame(path, src)
    return frame.time, convert(frame.values, src, None)
