"""Silently wrong reads and raw crashes (issue 12): each test builds the bad input itself.

Classes: attributes of the wrong type (numeric text, garbage text, arrays), declared sizes
that cannot fit, units traps (an ellipsoid in km), bit flips in deflate tiles, irregular
series. Real files from ``../shared/data`` are rewritten where present; synthetic otherwise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.transform import Affine

from meteovision.datasets.errors import (
    AttributeValueError,
    CorruptFileError,
    SizeLimitError,
    UnitsError,
)
from meteovision.datasets.readers import ReadOptions, open_series, read_geotiff, read_netcdf, read_odim
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

KM_PROJDEF = "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +a=6378.137 +b=6356.752 +x_0=0 y_0=0"
M_PROJDEF = "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +a=6378137 +b=6356752 +x_0=0 +y_0=0"


def _odim(path: Path, raw: np.ndarray | None = None, grid: OdimGrid | None = None) -> Path:
    field = OdimField("DBZH", dbzh_raw() if raw is None else raw, gain=0.5, offset=-32.0)
    return write_odim(path, OdimFile(fields=[field], grid=grid or OdimGrid()))


def _set(path: Path, group: str, key: str, value: object) -> None:
    with h5py.File(path, "r+") as f:
        f[group].attrs[key] = value


# ----------------------------------------------------------------------------- attribute types


@pytest.mark.parametrize("key", ["nodata", "undetect"])
def test_odim_nodata_and_undetect_as_numeric_text_still_mask(tmp_path: Path, key: str) -> None:
    raw = dbzh_raw()  # nodata 255 at [0, :2], undetect 0 at [-1, -2:]
    path = _odim(tmp_path / "r_202401021205.h5", raw)
    code = {"nodata": 255.0, "undetect": 0.0}[key]
    _set(path, "dataset1/data1/what", key, np.bytes_(f"{code}"))
    _set(path, "dataset1/data1/what", "gain", np.bytes_(b"0.5"))
    values = read_odim(path)["DBZH"].to_numpy()[0]
    if key == "nodata":
        assert np.isnan(values[0, :2]).all()
        assert np.isnan(values).sum() == 2
    else:
        np.testing.assert_array_equal(values[-1, -2:], [-32.0, -32.0])  # DBZH undetect: the no-echo value
    np.testing.assert_allclose(values[1, 1], raw[1, 1] * 0.5 - 32.0)


@pytest.mark.realdata
def test_opera_nodata_as_text_reads_out_of_coverage_as_nan(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "radar/opera_20180824/T_PAAH21_C_EUOC_20180824230000.hdf"
    path = Path(shutil.copy(src, tmp_path / src.name))
    _set(path, "dataset1/what", "nodata", np.bytes_(b"-9999000.0"))
    _set(path, "dataset1/what", "undetect", np.bytes_(b"-8888000.0"))
    rate = read_odim(path, quantities=["RATE"], include_quality=False)["RATE"].to_numpy()
    assert int(np.isnan(rate).sum()) == 2_085_878  # the out-of-coverage pixels
    assert float(np.nanmin(rate)) == 0.0  # undetect -> no rain, never -8888000 mm/h


@pytest.mark.parametrize(
    ("group", "key", "value", "shown"),
    [
        ("dataset1/data1/what", "gain", np.bytes_(b"abc"), "gain"),
        ("dataset1/data1/what", "gain", np.array([0.5, 0.5]), "gain"),
        ("dataset1/data1/what", "offset", np.bytes_(b"-32 dBZ"), "offset"),
        ("dataset1/data1/what", "nodata", np.bytes_(b"none"), "nodata"),
        ("where", "xsize", np.bytes_(b"1900 px"), "xsize"),
        ("where", "xscale", np.bytes_(b"2 km"), "xscale"),
        ("where", "ysize", 5.5, "ysize"),
        ("where", "UL_lon", np.bytes_(b"west"), "UL_lon"),
    ],
)
def test_odim_attribute_of_the_wrong_type_is_named(
    tmp_path: Path, group: str, key: str, value: object, shown: str
) -> None:
    path = _odim(tmp_path / "r_202401021205.h5")
    _set(path, group, key, value)
    with pytest.raises(AttributeValueError, match=shown) as exc:
        read_odim(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("scale_factor", "abc"), ("add_offset", "1 mm"), ("_FillValue_text", "missing"), ("valid_min", "low")],
)
def test_netcdf_attribute_of_the_wrong_type_is_named(tmp_path: Path, key: str, value: str) -> None:
    path = write_netcdf(tmp_path / "f.nc", NcFile(values=np.ones((1, 3, 4))))
    with netCDF4.Dataset(path, "r+") as nc:
        var = nc.variables["RATE"]
        name = "missing_value" if key == "_FillValue_text" else key
        var.setncattr(name, value)
    with pytest.raises(AttributeValueError, match=name) as exc:
        read_netcdf(path)
    assert str(path) in str(exc.value)


def test_netcdf_scale_factor_as_numeric_text_is_used(tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "f.nc", NcFile(values=np.full((1, 3, 4), 2.0)))
    with netCDF4.Dataset(path, "r+") as nc:
        nc.variables["RATE"].setncattr("scale_factor", "0.02")  # twice the packing scale
    np.testing.assert_allclose(read_netcdf(path)["RATE"].to_numpy(), 4.0, rtol=1e-6)


def test_geotiff_metadata_gain_as_garbage_is_named(tmp_path: Path) -> None:
    tags = {"GDAL_METADATA": FMI_XML.format(time="201609281500").replace("0.500000", "half")}
    path = write_geotiff(tmp_path / "f.tif", dbzh_raw(0, (32, 32)), tags=tags)
    with pytest.raises(AttributeValueError, match="gain") as exc:
        read_geotiff(path)
    assert str(path) in str(exc.value)


# ----------------------------------------------------------------------------- huge sizes


def test_odim_declaring_60000_squared_is_refused_before_allocating(tmp_path: Path) -> None:
    grid = OdimGrid(nx=60000, ny=60000, dx=10.0, dy=10.0, x0=-300_000.0, top=300_000.0)
    path = _odim(tmp_path / "r_202401021205.h5", np.zeros((2, 2), np.uint8), grid=grid)
    with h5py.File(path, "r+") as f:
        del f["dataset1/data1/data"]
        f["dataset1/data1"].create_dataset("data", shape=(60000, 60000), dtype=np.uint8, chunks=(1000, 1000))
    with pytest.raises(SizeLimitError, match="60000 x 60000") as exc:
        read_odim(path)
    assert str(path) in str(exc.value) and "max_cells" in str(exc.value)
    # the limit is configurable, and a window of the same file reads
    small = read_odim(path, options=ReadOptions(window=((0, 10), (0, 20))))
    assert small["DBZH"].shape == (1, 10, 20)


def test_geotiff_declaring_100000_squared_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    profile = {"driver": "GTiff", "width": 100_000, "height": 100_000, "count": 1, "dtype": "uint8",
               "crs": "EPSG:3067", "transform": Affine(250.0, 0, 0, 0, -250.0, 8_000_000.0), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "SPARSE_OK": "TRUE"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(GDAL_METADATA=FMI_XML.format(time="201609281500"))
    with pytest.raises(SizeLimitError, match="100000 x 100000") as exc:
        read_geotiff(path)
    assert str(path) in str(exc.value)
    with pytest.raises(SizeLimitError):
        read_geotiff(path, options=ReadOptions(window=((0, 100), (0, 100)), max_cells=1000))


def test_netcdf_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "f.nc", NcFile(values=np.ones((1, 3, 4))))
    with pytest.raises(SizeLimitError, match="12 cells"):
        read_netcdf(path, options=ReadOptions(max_cells=11))


# ----------------------------------------------------------------------------- units traps


def _km_grid(nx: int = 70, ny: int = 76) -> OdimGrid:
    return OdimGrid(projdef=M_PROJDEF, x0=0.0, top=-3_650_000.0, dx=1000.0, dy=1000.0, nx=nx, ny=ny)


def _write_km_pair(folder: Path, stamp: str, raw: np.ndarray, grid: OdimGrid) -> tuple[Path, Path]:
    """The same frame written in metres and in the KNMI km convention (km ellipsoid, xscale 1.0)."""
    field = OdimField("RATE", raw, gain=0.01, offset=0.0, nodata=65535, undetect=0)
    date, clock = stamp[:8], stamp[8:] + "00"
    metres = write_odim(folder / "m" / f"r_{stamp}.h5", OdimFile(fields=[field], grid=grid, date=date, time=clock))
    km = write_odim(folder / "km" / f"r_{stamp}.h5",
                    OdimFile(fields=[field], grid=grid, date=date, time=clock, scale_divisor=1000.0))
    with h5py.File(km, "r+") as f:
        f["where"].attrs["projdef"] = np.bytes_(KM_PROJDEF)  # corners stay the true lon/lat
    return metres, km


def test_odim_ellipsoid_in_km_is_read_in_metres_with_its_corners(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "km").mkdir()
    grid = _km_grid()
    raw = np.arange(grid.nx * grid.ny, dtype=np.uint16).reshape(grid.ny, grid.nx) % 500
    metres, km = _write_km_pair(tmp_path, "202401021205", raw, grid)
    a, b = read_odim(metres), read_odim(km)
    np.testing.assert_allclose(b["x"], a["x"], atol=1e-3)
    np.testing.assert_allclose(b["y"], a["y"], atol=1e-3)
    assert b["x"].attrs["units"] == "m"
    np.testing.assert_allclose(np.diff(b["x"].to_numpy()), 1000.0)
    np.testing.assert_array_equal(b["RATE"].to_numpy(), a["RATE"].to_numpy())
    # the outer corners of the grid, back to lon/lat, are the file's corner attributes
    crs = pyproj.CRS.from_wkt(b["crs"].attrs["crs_wkt"])
    to_lonlat = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    x, y = b["x"].to_numpy(), b["y"].to_numpy()
    corners = {"UL": (x[0] - 500, y[0] + 500), "UR": (x[-1] + 500, y[0] + 500),
               "LL": (x[0] - 500, y[-1] - 500), "LR": (x[-1] + 500, y[-1] - 500)}
    with h5py.File(km) as f:
        where = dict(f["where"].attrs)
    for name, (cx, cy) in corners.items():
        lon, lat = to_lonlat.transform(cx, cy)
        np.testing.assert_allclose([lon, lat], [where[f"{name}_lon"], where[f"{name}_lat"]], atol=1e-6)


def test_ellipsoid_that_is_no_earth_is_refused(tmp_path: Path) -> None:
    path = _odim(tmp_path / "r_202401021205.h5")
    _set(path, "where", "projdef", np.bytes_("+proj=laea +lat_0=55 +lon_0=10 +a=637813.7 +b=635675.2"))
    with pytest.raises(UnitsError, match="not the Earth"):
        read_odim(path)


def test_netcdf_grid_mapping_with_km_ellipsoid_is_refused(tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "f.nc", NcFile(values=np.ones((1, 3, 4))))
    with netCDF4.Dataset(path, "r+") as nc:
        crs = nc.variables["crs"]
        for key in ("crs_wkt", "spatial_ref", "reference_ellipsoid_name", "semi_minor_axis", "geographic_crs_name",
                    "horizontal_datum_name", "projected_crs_name"):
            if key in crs.ncattrs():
                crs.delncattr(key)
        crs.semi_major_axis = 6378.137
        crs.inverse_flattening = 298.257222101
    with pytest.raises(UnitsError, match="km"):
        read_netcdf(path)


# ----------------------------------------------------------------------------- bit flips


def _flip_bit_in_largest_tile(path: Path) -> tuple[int, int]:
    """Flip one bit in the middle of the largest of 16 tiles around the centre (a tile with data)."""
    with rasterio.open(path) as src:
        rows, cols = -(-src.height // src.block_shapes[0][0]), -(-src.width // src.block_shapes[0][1])
        blocks = [(int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0),
                   int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1) or 0), r, c)
                  for r in range(max(0, rows // 2 - 2), min(rows, rows // 2 + 2))
                  for c in range(max(0, cols // 2 - 2), min(cols, cols // 2 + 2))]
    size, offset, row, col = max(blocks)
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return row, col


def test_geotiff_bit_flip_in_a_deflate_tile_is_caught(tmp_path: Path) -> None:
    tags = {"GDAL_METADATA": FMI_XML.format(time="201609281500")}
    path = write_geotiff(tmp_path / "f.tif", dbzh_raw(0, (64, 64)), tags=tags, tiled=True)
    read_geotiff(path)  # intact
    _flip_bit_in_largest_tile(path)
    with pytest.raises(CorruptFileError, match="zlib") as exc:
        read_geotiff(path)
    assert str(path) in str(exc.value)


@pytest.mark.realdata
def test_fmi_frame_with_a_flipped_bit_is_refused(shared_data: Path, tmp_path: Path) -> None:
    src = sorted((shared_data / "radar/fmi_geotiff_20160928").glob("*.tif"))[0]
    path = Path(shutil.copy(src, tmp_path / src.name))
    _flip_bit_in_largest_tile(path)
    with pytest.raises(CorruptFileError, match="zlib"):
        read_geotiff(path, window=((0, 16), (0, 16)))  # even a read of another tile: the file is corrupt


# ----------------------------------------------------------------------------- series faults


def test_irregular_step_is_reported_not_hidden(tmp_path: Path) -> None:
    paths = []
    for stamp in ("18:00", "18:30", "19:00", "19:15"):
        paths.append(write_netcdf(tmp_path / f"f_{stamp.replace(':', '')}.nc",
                                  NcFile(values=np.ones((1, 3, 4)), times=(f"2024-01-02T{stamp}:00",))))
    series = open_series(paths)
    assert series.attrs["time_step_seconds"] == 1800
    assert series.attrs["gaps"] == []
    assert series.attrs["irregular_steps"] == [("2024-01-02T19:00:00", "2024-01-02T19:15:00")]
