"""Bad input: every broken file raises an error of this package that names the file.

Nothing may leak a raw h5py/netCDF4/rasterio/Pillow exception, and nothing may return
silently wrong values (a truncated NETCDF3 file is the classic trap).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from meteovision.datasets.errors import (
    CorruptFileError,
    EmptyFrameError,
    GridMismatchError,
    MeteovisionError,
    MissingVariableError,
    ReaderError,
    SeriesError,
    UnknownFormatError,
)
from meteovision.datasets.readers import (
    get_reader,
    open_dataset,
    open_series,
    read_geotiff,
    read_netcdf,
    read_odim,
    read_webcam,
    read_webcam_labels,
)
from tests.conftest import (
    FMI_XML,
    NcFile,
    OdimField,
    OdimFile,
    OdimGrid,
    dbzh_raw,
    write_geotiff,
    write_netcdf,
    write_odim,
)


def _odim(path: Path, raw: np.ndarray | None = None, **kwargs: object) -> Path:
    field = OdimField("DBZH", dbzh_raw() if raw is None else raw, gain=0.5, offset=-32.0)
    return write_odim(path, OdimFile(fields=[field], **kwargs))  # type: ignore[arg-type]


def _nc(path: Path, **kwargs: object) -> Path:
    values = np.arange(12, dtype=np.float64).reshape(1, 3, 4)
    return write_netcdf(path, NcFile(values=values, **kwargs))  # type: ignore[arg-type]


def _tif(path: Path, raw: np.ndarray | None = None, **kwargs: object) -> Path:
    raw = dbzh_raw(0, (64, 64)) if raw is None else raw
    tags = {"GDAL_METADATA": FMI_XML.format(time="201609281500")}
    return write_geotiff(path, raw, tags=tags, **kwargs)  # type: ignore[arg-type]


def _png(path: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _jpeg(path: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")
    return path


MAKERS: dict[str, Callable[[Path], Path]] = {
    "odim": lambda p: _odim(p / "r_202401021205.h5"),
    "netcdf4": lambda p: _nc(p / "f.nc"),
    "netcdf3": lambda p: _nc(p / "f3.nc", fmt="NETCDF3_CLASSIC"),
    "geotiff": lambda p: _tif(p / "r_201609281500.tif"),
    "png": lambda p: _png(p / "cam_202401010000.png"),
    "jpeg": lambda p: _jpeg(p / "cam_202401010000.jpg"),
}
READER_OF = {"odim": read_odim, "netcdf4": read_netcdf, "netcdf3": read_netcdf, "geotiff": read_geotiff,
             "png": read_webcam, "jpeg": read_webcam}


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    out = path.with_name("trunc_" + path.name)
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def _assert_names(exc: pytest.ExceptionInfo[BaseException], *paths: Path) -> None:
    for p in paths:
        assert str(p) in str(exc.value), f"error does not name {p}: {exc.value}"


# --------------------------------------------------------------------------- empty, truncated, corrupt


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_empty_file(tmp_path: Path, kind: str) -> None:
    good = MAKERS[kind](tmp_path)
    empty = good.with_name("empty" + good.suffix)
    empty.write_bytes(b"")
    for reader in (READER_OF[kind], open_dataset):
        with pytest.raises(CorruptFileError) as exc:
            reader(empty)
        _assert_names(exc, empty)
        assert "empty" in str(exc.value)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file(tmp_path: Path, kind: str, keep: float) -> None:
    good = MAKERS[kind](tmp_path)
    READER_OF[kind](good)  # the intact file reads
    bad = _truncate(good, keep)
    for reader in (READER_OF[kind], open_dataset):
        with pytest.raises(CorruptFileError) as exc:
            reader(bad)
        _assert_names(exc, bad)


def test_truncated_netcdf3_by_a_few_bytes_is_caught(tmp_path: Path) -> None:
    """netCDF4 opens it and reads fill values silently: only the header size check catches it."""
    good = _nc(tmp_path / "f3.nc", fmt="NETCDF3_64BIT_OFFSET", packed=False)
    bad = tmp_path / "short.nc"
    bad.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(CorruptFileError, match="truncated NETCDF3") as exc:
        read_netcdf(bad)
    _assert_names(exc, bad)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_corrupt_bytes_after_a_valid_magic(tmp_path: Path, kind: str) -> None:
    good = MAKERS[kind](tmp_path)
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(1)
    start = 8 if kind != "netcdf3" else 4
    data[start:] = rng.integers(0, 256, size=len(data) - start, dtype=np.uint8).tobytes()
    bad = good.with_name("corrupt" + good.suffix)
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as exc:
        open_dataset(bad)
    _assert_names(exc, bad)


def test_corrupt_compressed_chunk_inside_a_valid_hdf5(tmp_path: Path) -> None:
    """The superblock and metadata are fine, only the gzip stream of the data is garbage."""
    path = _odim(tmp_path / "a.h5", raw=dbzh_raw(0, (50, 60)), grid=OdimGrid(nx=60, ny=50))
    with h5py.File(path, "r") as f:
        info = f["dataset1/data1/data"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[info.byte_offset : info.byte_offset + info.size] = b"\xff" * info.size
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="unreadable HDF5") as exc:
        read_odim(path)
    _assert_names(exc, path)


def test_unknown_format(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("this is not a radar file\n")
    with pytest.raises(UnknownFormatError) as exc:
        open_dataset(text)
    _assert_names(exc, text)
    with pytest.raises(ReaderError) as exc2:
        open_dataset(tmp_path / "missing.h5")
    assert "no such file" in str(exc2.value)
    with pytest.raises(MeteovisionError, match="unknown reader"):
        get_reader("bufr")  # GRIB2 is read since issue 15; BUFR is not


def test_plain_hdf5_is_neither_odim_nor_netcdf(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["values"] = np.arange(10)
    with pytest.raises(ReaderError) as exc:
        open_dataset(path)
    _assert_names(exc, path)
    with pytest.raises(UnknownFormatError):
        read_odim(path)


# --------------------------------------------------------------------------- missing attributes / variables


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_where": ("projdef",)}, "projdef"),
        ({"drop_what": ("date",)}, "what/date"),
        ({"drop_where": ("UL_lon", "UL_lat", "UR_lon", "UR_lat", "LR_lon", "LR_lat")}, "corners"),
        ({"drop_where": ("xscale",)}, "xscale"),
    ],
)
def test_odim_missing_attribute(tmp_path: Path, kwargs: dict[str, tuple[str, ...]], message: str) -> None:
    path = _odim(tmp_path / "bad.h5", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(MissingVariableError, match=message) as exc:
        read_odim(path)
    _assert_names(exc, path)


def test_odim_scale_matching_neither_metres_nor_km(tmp_path: Path) -> None:
    path = _odim(tmp_path / "bad.h5", scale_divisor=3.0)
    with pytest.raises(ReaderError, match="neither metres nor km") as exc:
        read_odim(path)
    _assert_names(exc, path)


def test_odim_missing_quantity_and_polar_volume(tmp_path: Path) -> None:
    path = _odim(tmp_path / "a.h5")
    with pytest.raises(MissingVariableError, match="RATE") as exc:
        read_odim(path, quantities=["RATE"])
    _assert_names(exc, path)
    pvol = _odim(tmp_path / "pvol.h5", obj="PVOL")
    with pytest.raises(UnknownFormatError, match="PVOL"):
        open_dataset(pvol)


def test_odim_data_shape_disagrees_with_where(tmp_path: Path) -> None:
    path = _odim(tmp_path / "a.h5", grid=OdimGrid(nx=7))
    with pytest.raises(ReaderError, match="shape") as exc:
        read_odim(path)
    _assert_names(exc, path)


def test_netcdf_without_time_or_crs(tmp_path: Path) -> None:
    no_time = _nc(tmp_path / "no_time.nc", with_time=False)
    with pytest.raises(MissingVariableError, match="time") as exc:
        read_netcdf(no_time)
    _assert_names(exc, no_time)
    no_crs = _nc(tmp_path / "no_crs.nc", with_crs=False)
    with pytest.raises(MissingVariableError, match="grid_mapping") as exc2:
        open_dataset(no_crs)
    _assert_names(exc2, no_crs)
    with pytest.raises(MissingVariableError, match="nope"):
        read_netcdf(_nc(tmp_path / "ok.nc"), variables=["nope"])


def test_geotiff_without_crs_or_time(tmp_path: Path) -> None:
    no_crs = _tif(tmp_path / "r_201609281500.tif", crs=None)
    with pytest.raises(MissingVariableError, match="CRS") as exc:
        read_geotiff(no_crs)
    _assert_names(exc, no_crs)
    no_time = write_geotiff(tmp_path / "radar.tif", dbzh_raw(), tags={"Gain": "0.5"})
    with pytest.raises(MissingVariableError, match="time") as exc2:
        read_geotiff(no_time)
    _assert_names(exc2, no_time)
    with pytest.raises(ReaderError, match="coarsen"):
        read_geotiff(no_crs, coarsen=0)


def test_webcam_without_time(tmp_path: Path) -> None:
    path = _png(tmp_path / "snapshot.png")
    with pytest.raises(MissingVariableError, match="time") as exc:
        read_webcam(path)
    _assert_names(exc, path)


# --------------------------------------------------------------------------- all-nodata frames


def test_all_nodata_frames(tmp_path: Path) -> None:
    odim = _odim(tmp_path / "a.h5", raw=np.full((5, 6), 255, dtype=np.uint8))
    tif = _tif(tmp_path / "r_201609281500.tif", raw=np.full((16, 16), 255, dtype=np.uint8))
    nc = write_netcdf(tmp_path / "n.nc", NcFile(values=np.full((1, 3, 4), np.nan)))
    for path, reader in ((odim, read_odim), (tif, read_geotiff), (nc, read_netcdf)):
        with pytest.raises(EmptyFrameError) as exc:
            reader(path)
        _assert_names(exc, path)
        ds = reader(path, allow_empty=True)
        name = next(n for n in ds.data_vars if n != "crs")
        assert np.isnan(ds[name].values).all()


def test_undetect_only_frame_is_not_empty(tmp_path: Path) -> None:
    ds = read_odim(_odim(tmp_path / "a.h5", raw=np.zeros((5, 6), dtype=np.uint8)))
    assert (ds["DBZH"].values == -32.0).all()


# --------------------------------------------------------------------------- series


def test_series_grid_mismatch_names_both_files(tmp_path: Path) -> None:
    a = _odim(tmp_path / "a.h5", time="120000")
    b = _odim(tmp_path / "b.h5", time="120500", grid=OdimGrid(x0=-98_000.0))
    with pytest.raises(GridMismatchError) as exc:
        open_series([a, b])
    _assert_names(exc, a, b)
    c = _odim(tmp_path / "c.h5", time="120500", grid=OdimGrid(nx=7), raw=dbzh_raw(0, (5, 7)))
    with pytest.raises(GridMismatchError, match="x cells"):
        open_series([a, c])


def test_series_crs_and_variable_mismatch(tmp_path: Path) -> None:
    a = _odim(tmp_path / "a.h5", time="120000")
    other = "+proj=laea +lat_0=52 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"
    b = _odim(tmp_path / "b.h5", time="120500", grid=OdimGrid(projdef=other))
    with pytest.raises(GridMismatchError, match="CRS") as exc:
        open_series([a, b])
    _assert_names(exc, a, b)
    rate = write_odim(tmp_path / "r.h5", OdimFile(fields=[OdimField("RATE", dbzh_raw())], time="121000"))
    with pytest.raises(SeriesError, match="variables") as exc2:
        open_series([a, rate])
    _assert_names(exc2, a, rate)


def test_series_duplicate_times_and_empty_list(tmp_path: Path) -> None:
    a = _odim(tmp_path / "a.h5")
    b = _odim(tmp_path / "b.h5")
    with pytest.raises(SeriesError, match="overlap"):
        open_series([a, b])
    with pytest.raises(SeriesError, match="no files"):
        open_series([])


# --------------------------------------------------------------------------- labels table


def _labels(tmp_path: Path, rows: str, header: str = "path,camera,time,snow_class,visibility_m") -> Path:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text(header + "\n" + rows)
    return csv


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ("a.jpg,a,2024-01-01T00:00Z,full\n", "path,camera,time,snow_class", "visibility_m"),
        ("a.jpg,a,2024-01-01T00:00Z,deep,100\n", None, "unknown snow_class 'deep'"),
        ("a.jpg,a,2024-01-01T00:00Z,full,-5\n", None, "negative visibility_m"),
        ("a.jpg,a,2024-01-01T00:00Z,full,far\n", None, "not a number"),
        ("b.jpg,b,2024-01-01T00:00Z,full,100\n", None, "does not exist"),
        ("a.jpg,a,yesterday,full,100\n", None, "time"),
    ],
)
def test_bad_labels(tmp_path: Path, rows: str, header: str | None, message: str) -> None:
    csv = _labels(tmp_path, rows, header) if header else _labels(tmp_path, rows)
    with pytest.raises(ReaderError, match=message) as exc:
        read_webcam_labels(csv)
    _assert_names(exc, csv)
