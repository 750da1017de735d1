"""One file -> one frame of the training quantity: read (with the crop), coarsen by block mean, convert.

The same function serves training from raw files and ``meteovision store build``, so a store holds
exactly what raw-file training sees. Coarsening averages the valid cells of each block (linear Z for
dBZ); a block without a valid cell is NaN (outside coverage, masked in the loss and the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meteovision.datasets.archive.sources import INPUT_UNITS, ArchiveError, Conversion, SourceSettings
from meteovision.datasets.readers import detect_format, open_dataset

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


def block_mean(values: np.ndarray, factor: int, linear_db: bool) -> np.ndarray:
    """Mean of the valid cells of ``factor`` x ``factor`` blocks of (H, W); trailing cells dropped."""
    if factor == 1:
        return values.astype(np.float32)
    h2, w2 = values.shape[0] // factor, values.shape[1] // factor
    blocks = values[: h2 * factor, : w2 * factor].astype(np.float64).reshape(h2, factor, w2, factor)
    if linear_db:
        blocks = np.power(10.0, blocks / 10.0)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    mean = np.full(total.shape, np.nan)
    np.divide(total, count, out=mean, where=count > 0)
    if linear_db:
        with np.errstate(divide="ignore"):
            mean = 10.0 * np.log10(mean)
    return mean.astype(np.float32)


def _centres(coords: np.ndarray, factor: int) -> np.ndarray:
    n = coords.size // factor
    return coords[: n * factor].reshape(n, factor).mean(axis=1)


def _options(fmt: str, src: SourceSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"allow_empty": True}
    if src.crop_bounds_m is not None:
        options["window"] = tuple(src.crop_bounds_m)
    if fmt == "odim_h5":
        options.update(quantities=[src.variable], include_quality=False)
    elif fmt == "cf_netcdf":
        options["variables"] = [src.variable]
    elif fmt == "geotiff" and src.coarsen > 1:
        options.update(coarsen=src.coarsen, coarsen_method="mean")
    return options


def read_frame(path: Path, src: SourceSettings) -> Frame:
    """Read, crop and coarsen one file of ``src`` (units checked against the conversion)."""
    fmt = detect_format(path)
    ds = open_dataset(path, **_options(fmt, src))
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
    if src.coarsen > 1 and fmt != "geotiff":
        values = block_mean(values, src.coarsen, linear_db=units == "dBZ")
        x, y = _centres(x, src.coarsen), _centres(y, src.coarsen)
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
        return (values * (60.0 / period)).astype(np.float32)
    z = np.power(10.0, values.astype(np.float64) / 10.0)
    return np.power(z / src.zr_a, 1.0 / src.zr_b).astype(np.float32)


def converted_frame(path: Path, src: SourceSettings) -> tuple[np.datetime64, np.ndarray]:
    """Time and values of one file in the training quantity: what training and the store both use."""
    frame = read_frame(path, src)
    return frame.time, convert(frame.values, src, None)
