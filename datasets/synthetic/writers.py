"""Writers for the formats the readers consume: ODIM_H5 V2.2 composites, CF-1.10 NetCDF,
JPEG webcam images with a labels CSV, and the manifest.

Every write goes to a temporary file in the target folder and is renamed into place, so
a consumer never sees a partial file. Nothing time-of-day dependent is written: the same
inputs give byte-identical files.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from meteovision.core.applications import LABEL_COLUMNS, Flags
from meteovision.datasets.conventions import ODIM_QUANTITIES
from meteovision.datasets.synthetic.common import SampleDataError
from meteovision.datasets.synthetic.grids import Grid

EPOCH = datetime(1970, 1, 1)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- ODIM_H5


@dataclass(frozen=True)
class OdimEncoding:
    """Packing of one quantity: physical = raw * gain + offset; ``nodata``/``undetect`` are raw codes."""

    dtype: type[np.unsignedinteger]
    gain: float
    offset: float
    nodata: int
    undetect: int


ODIM_ENCODINGS: dict[str, OdimEncoding] = {
    "RATE": OdimEncoding(np.uint16, 0.01, 0.0, 65535, 0),
    "DBZH": OdimEncoding(np.uint8, 0.5, -32.0, 255, 0),
    "TH": OdimEncoding(np.uint8, 0.5, -32.0, 255, 0),
    "QIND": OdimEncoding(np.uint8, 0.004, 0.0, 255, 0),
}


def odim_encode(quantity: str, values: np.ndarray) -> np.ndarray:
    """Pack physical values: NaN -> nodata; at or below the quantity's no-echo value -> undetect.

    The no-echo value is the reader's undetect value (``conventions.ODIM_QUANTITIES``): 0 mm h-1
    for RATE, -32 dBZ for DBZH/TH, 0 for QIND; so decode(encode(x)) == x to within gain / 2.
    """
    enc = ODIM_ENCODINGS[quantity]
    no_echo = ODIM_QUANTITIES[quantity][3]
    v = np.asarray(values, dtype=np.float64)
    top = enc.nodata - 1
    raw = np.clip(np.rint((np.nan_to_num(v, nan=no_echo) - enc.offset) / enc.gain), 1, top)
    raw = np.where(v <= no_echo, enc.undetect, raw)
    raw = np.where(np.isnan(v), enc.nodata, raw)
    return raw.astype(enc.dtype)


def odim_decode(quantity: str, raw: np.ndarray) -> np.ndarray:
    """Inverse of ``odim_encode`` (NaN for nodata, the no-echo value for undetect); for tests."""
    enc = ODIM_ENCODINGS[quantity]
    out = raw.astype(np.float64) * enc.gain + enc.offset
    out[raw == enc.undetect] = ODIM_QUANTITIES[quantity][3]
    out[raw == enc.nodata] = np.nan
    return out


def _s(text: str) -> np.bytes_:
    """ODIM strings are fixed-length, null-terminated ASCII."""
    return np.bytes_(text.encode("ascii"))


def write_odim_composite(
    target: Path,
    time: datetime,
    grid: Grid,
    fields: Mapping[str, np.ndarray],
    quality: Mapping[str, np.ndarray] | None = None,
    step_minutes: int = 5,
    source: str = "CMT:meteovision synthetic",
) -> None:
    """One ODIM_H5 V2.2 COMP file: ``dataset1/dataN`` per quantity, ``dataset1/qualityN`` for QIND.

    ``fields`` maps ODIM quantity -> 2-D physical array (row 0 north), NaN = nodata.
    """
    import h5py

    end = time + timedelta(minutes=step_minutes)
    date_s, time_s = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    times = {
        "startdate": _s(date_s),
        "starttime": _s(time_s),
        "enddate": _s(end.strftime("%Y%m%d")),
        "endtime": _s(end.strftime("%H%M%S")),
    }

    def put_data(group: h5py.Group, quantity: str, values: np.ndarray) -> None:
        if values.shape != grid.shape:
            raise SampleDataError(f"{target}: {quantity} has shape {values.shape}, grid is {grid.shape}")
        enc = ODIM_ENCODINGS[quantity]
        ds = group.create_dataset(
            "data", data=odim_encode(quantity, values), compression="gzip", compression_opts=6, chunks=True
        )
        ds.attrs["CLASS"] = _s("IMAGE")
        ds.attrs["IMAGE_VERSION"] = _s("1.2")
        what = group.create_group("what")
        what.attrs["quantity"] = _s(quantity)
        what.attrs["gain"] = np.float64(enc.gain)
        what.attrs["offset"] = np.float64(enc.offset)
        what.attrs["nodata"] = np.float64(enc.nodata)
        what.attrs["undetect"] = np.float64(enc.undetect)
        for key, value in times.items():
            what.attrs[key] = value

    with atomic_path(target) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["Conventions"] = _s("ODIM_H5/V2_2")
        what = h5.create_group("what")
        what.attrs["object"] = _s("COMP")
        what.attrs["version"] = _s("H5rad 2.2")
        what.attrs["date"] = _s(date_s)
        what.attrs["time"] = _s(time_s)
        what.attrs["source"] = _s(source)
        where = h5.create_group("where")
        where.attrs["projdef"] = _s(grid.projdef)
        where.attrs["xsize"] = np.int64(grid.nx)
        where.attrs["ysize"] = np.int64(grid.ny)
        where.attrs["xscale"] = np.float64(grid.dx)
        where.attrs["yscale"] = np.float64(grid.dy)
        for key, degrees in grid.corners_lonlat().items():
            where.attrs[key] = np.float64(degrees)
        how = h5.create_group("how")
        how.attrs["simulated"] = _s("True")
        how.attrs["software"] = _s("meteovision")
        dataset = h5.create_group("dataset1")
        dwhat = dataset.create_group("what")
        dwhat.attrs["product"] = _s("COMP")
        for key, value in times.items():
            dwhat.attrs[key] = value
        for i, (quantity, values) in enumerate(fields.items(), start=1):
            put_data(dataset.create_group(f"data{i}"), quantity, values)
        # no how/task on quality groups: readers name them by task first, by what/quantity otherwise
        for i, (quantity, values) in enumerate((quality or {}).items(), start=1):
            put_data(dataset.create_group(f"quality{i}"), quantity, values)


# ----------------------------------------------------------------------------- CF NetCDF


@dataclass(frozen=True)
class CfVariable:
    """One 2-D (y, x) field for a CF NetCDF file; ``flags`` (the application table's) makes it an int8 mask."""

    name: str
    data: np.ndarray
    units: str
    long_name: str
    standard_name: str | None = None
    flags: Flags | None = None
    valid_range: tuple[float, float] | None = None


def write_cf_netcdf(
    target: Path,
    time: datetime,
    grid: Grid,
    variables: Sequence[CfVariable],
    title: str,
    source: str,
) -> None:
    """CF-1.10 NetCDF4 file: dims (time=1, y, x), ``crs`` grid mapping, zlib, NaN fill for floats."""
    import netCDF4

    crs_attrs = dict(grid.crs.to_cf())
    crs_attrs.setdefault("crs_wkt", grid.crs.to_wkt())
    with atomic_path(target) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.setncatts(
            {
                "Conventions": "CF-1.10",
                "title": title,
                "institution": "meteovision (synthetic data, not observations)",
                "source": source,
                "history": "written by meteovision sample-data",
                "comment": "Synthetic fields for tests and demonstrations; see meteovision.datasets.synthetic.",
            }
        )
        nc.createDimension("time", 1)
        nc.createDimension("y", grid.ny)
        nc.createDimension("x", grid.nx)
        tvar = nc.createVariable("time", "f8", ("time",))
        tvar.setncatts(
            {
                "standard_name": "time",
                "long_name": "time",
                "units": "seconds since 1970-01-01 00:00:00",
                "calendar": "standard",
                "axis": "T",
            }
        )
        tvar[:] = np.array([(time - EPOCH).total_seconds()])
        for name, values, std in (
            ("y", grid.y(), "projection_y_coordinate"),
            ("x", grid.x(), "projection_x_coordinate"),
        ):
            var = nc.createVariable(name, "f8", (name,))
            var.setncatts(
                {
                    "standard_name": std,
                    "long_name": f"{name} coordinate of projection",
                    "units": "m",
                    "axis": name.upper(),
                }
            )
            var[:] = values
        crs_var = nc.createVariable("crs", "i4", ())
        crs_var.setncatts(crs_attrs)
        crs_var.assignValue(0)
        for v in variables:
            if v.data.shape != grid.shape:
                raise SampleDataError(f"{target}: {v.name} has shape {v.data.shape}, grid is {grid.shape}")
            is_mask = v.flags is not None
            dtype, fill = ("i1", np.int8(-1)) if is_mask else ("f4", np.float32(np.nan))
            var = nc.createVariable(
                v.name,
                dtype,
                ("time", "y", "x"),
                zlib=True,
                complevel=4,
                shuffle=True,
                chunksizes=(1, grid.ny, grid.nx),
                fill_value=fill,
            )
            attrs: dict[str, object] = {"long_name": v.long_name, "units": v.units, "grid_mapping": "crs"}
            if v.standard_name:
                attrs["standard_name"] = v.standard_name
            if v.flags is not None:
                attrs["flag_values"] = np.array(v.flags.values, dtype=np.int8)
                attrs["flag_meanings"] = v.flags.meanings_attribute
            if v.valid_range is not None:
                attrs["valid_range"] = np.array(v.valid_range, dtype=np.float32)
            var.setncatts(attrs)
            var[0, :, :] = v.data.astype(np.int8 if is_mask else np.float32)


# ----------------------------------------------------------------------------- webcams


def write_jpeg(target: Path, rgb: np.ndarray, time: datetime, camera: str, quality: int = 90) -> None:
    """RGB uint8 [H, W, 3] as a JPEG carrying its acquisition time in EXIF DateTime."""
    from PIL import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SampleDataError(f"{target}: expected an RGB uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
    image = Image.fromarray(rgb)
    stamp = time.strftime("%Y:%m:%d %H:%M:%S")
    exif = Image.Exif()
    exif[0x0132] = stamp  # DateTime
    exif[0x0110] = f"meteovision synthetic camera {camera}"  # Model
    sub = exif.get_ifd(0x8769)  # Exif IFD
    sub[0x9003] = stamp  # DateTimeOriginal
    sub[0x9011] = "+00:00"  # OffsetTimeOriginal: times are UTC
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=quality, exif=exif.tobytes())


def write_labels_csv(target: Path, rows: Sequence[Mapping[str, str]]) -> None:
    with atomic_path(target) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LABEL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in LABEL_COLUMNS})
