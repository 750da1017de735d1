"""Round trips: files written here with h5py/netCDF4/rasterio/Pillow read back exactly by the readers."""

from __future__ import annotations

import logging
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pyproj
import pytest
from PIL import Image

from meteovision.datasets.conventions import crs_of
from meteovision.datasets.readers import (
    READERS,
    detect_format,
    get_reader,
    open_dataset,
    open_series,
    read_geotiff,
    read_netcdf,
    read_odim,
    read_webcam,
    read_webcam_labels,
)
from meteovision.datasets.readers.netcdf3 import expected_size
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

T0 = np.datetime64("2024-01-02T12:05:00", "ns")

# --------------------------------------------------------------------------- ODIM


def _odim_spec(**kwargs: object) -> OdimFile:
    raw = dbzh_raw()
    rate = np.array([[0, 100, 65535, 250, 1, 0]] * 5, dtype=np.uint16)
    quality = np.linspace(0, 255, 30).astype(np.uint8).reshape(5, 6)
    fields = [
        OdimField("DBZH", raw, gain=0.5, offset=-32.0, nodata=255, undetect=0,
                  quality=[("se.smhi.detector.beamblockage", "QIND", quality, 1 / 255, 0.0),
                           (None, None, quality[::-1].copy(), 1.0, 0.0)],
                  split_levels=True),
        # offset -0.1 so that undetect (0) would give -0.1 by the formula: the reader must give 0 mm/h
        OdimField("RATE", rate, gain=0.01, offset=-0.1, nodata=65535, undetect=0),
    ]
    return OdimFile(fields=fields, **kwargs)  # type: ignore[arg-type]


def test_odim_v22_values_nan_undetect_and_inheritance(tmp_path: Path) -> None:
    path = write_odim(tmp_path / "comp.h5", _odim_spec())
    ds = read_odim(path)
    raw = dbzh_raw()
    expected = raw.astype(np.float32) * 0.5 - 32.0
    expected[raw == 255] = np.nan
    expected[raw == 0] = -32.0
    np.testing.assert_array_equal(ds["DBZH"].values[0], expected)
    assert ds["DBZH"].dtype == np.float32
    assert ds["DBZH"].dims == ("time", "y", "x")
    assert ds["DBZH"].attrs["units"] == "dBZ"
    assert ds["DBZH"].attrs["quantity"] == "DBZH"
    assert ds["DBZH"].attrs["grid_mapping"] == "crs"
    assert ds["DBZH"].attrs["start_time"] == "2024-01-02T12:00:00Z"
    # RATE: raw*0.01-0.1, nodata -> NaN, undetect -> exactly 0 (not -0.1)
    rate = ds["RATE"].values[0, 0]
    np.testing.assert_allclose(rate, [0.0, 0.9, np.nan, 2.4, -0.09, 0.0], rtol=1e-6, atol=1e-7)
    assert rate[0] == 0.0 and rate[5] == 0.0
    assert ds["RATE"].attrs["units"] == "mm h-1"
    assert ds.attrs["source_format"] == "odim_h5"
    assert ds.attrs["source_path"] == str(path)


def test_odim_quality_groups_named_by_task_then_group(tmp_path: Path) -> None:
    ds = read_odim(write_odim(tmp_path / "comp.h5", _odim_spec()))
    quality = np.linspace(0, 255, 30).astype(np.uint8).reshape(5, 6)
    q1 = ds["se.smhi.detector.beamblockage"]
    np.testing.assert_allclose(q1.values[0], quality / 255.0, rtol=1e-6)
    assert q1.attrs["quality_of"] == "DBZH"
    assert q1.attrs["quantity"] == "QIND"
    np.testing.assert_array_equal(ds["quality2"].values[0], quality[::-1].astype(np.float32))
    # without quality groups
    assert set(read_odim(write_odim(tmp_path / "b.h5", _odim_spec()), include_quality=False).data_vars) == {
        "DBZH", "RATE", "crs"}


def test_odim_crs_coordinates_and_time(tmp_path: Path) -> None:
    grid = OdimGrid()
    ds = read_odim(write_odim(tmp_path / "comp.h5", _odim_spec()))
    assert crs_of(ds).equals(pyproj.CRS(grid.projdef))
    np.testing.assert_allclose(ds["x"].values, grid.x(), atol=1e-6)
    np.testing.assert_allclose(ds["y"].values, grid.y(), atol=1e-6)
    assert ds["y"].values[0] > ds["y"].values[-1]
    assert ds.sizes["time"] == 1 and ds["time"].values[0] == T0
    assert ds["time"].dtype == np.dtype("datetime64[ns]")


def test_odim_quantities_selection_and_window(tmp_path: Path) -> None:
    path = write_odim(tmp_path / "comp.h5", _odim_spec())
    full = read_odim(path, quantities=["RATE"])
    assert set(full.data_vars) == {"RATE", "crs"}
    part = read_odim(path, quantities=["DBZH"], window=(slice(1, 4), slice(2, 5)), include_quality=False)
    whole = read_odim(path, quantities=["DBZH"], include_quality=False)
    np.testing.assert_array_equal(part["DBZH"].values, whole["DBZH"].values[:, 1:4, 2:5])
    np.testing.assert_array_equal(part["x"].values, whole["x"].values[2:5])
    # bounds: cells whose centres lie inside
    x, y = whole["x"].values, whole["y"].values
    bounded = read_odim(path, quantities=["DBZH"], window=(x[1] - 1, y[3] - 1, x[2] + 1, y[0] + 1))
    assert bounded.sizes["x"] == 2 and bounded.sizes["y"] == 4


def test_odim_xscale_in_km_is_detected(tmp_path: Path) -> None:
    ds = read_odim(write_odim(tmp_path / "km.h5", _odim_spec(scale_divisor=1000.0)))
    np.testing.assert_allclose(np.diff(ds["x"].values), 2000.0)
    np.testing.assert_allclose(ds["x"].values, OdimGrid().x(), atol=1e-6)


def test_odim_image_object_v20_with_lower_corners_only(tmp_path: Path) -> None:
    spec = _odim_spec(conventions="ODIM_H5/V2_0", obj="IMAGE",
                      drop_where=("UL_lon", "UL_lat", "UR_lon", "UR_lat"))
    ds = read_odim(write_odim(tmp_path / "image.h5", spec))
    np.testing.assert_allclose(ds["y"].values, OdimGrid().y(), atol=1e-6)
    np.testing.assert_allclose(ds["x"].values, OdimGrid().x(), atol=1e-6)


# --------------------------------------------------------------------------- GeoTIFF


def _fmi_like(tmp_path: Path, raw: np.ndarray, name: str = "201609281500_FINUTM.tif") -> Path:
    return write_geotiff(tmp_path / name, raw, tags={"GDAL_METADATA": FMI_XML.format(time="201609281500")},
                         tiled=True)


def _dbz(raw: np.ndarray) -> np.ndarray:
    out = raw.astype(np.float32) * 0.5 - 32.0
    out[raw == 255] = np.nan
    return out


def test_geotiff_gdal_metadata_xml(tmp_path: Path) -> None:
    raw = dbzh_raw(1, (10, 12))
    ds = read_geotiff(_fmi_like(tmp_path, raw))
    np.testing.assert_array_equal(ds["DBZH"].values[0], _dbz(raw))
    assert ds["DBZH"].attrs["units"] == "dBZ"
    assert ds["time"].values[0] == np.datetime64("2016-09-28T15:00", "ns")
    assert crs_of(ds).to_epsg() == 3067
    np.testing.assert_allclose(ds["x"].values, 100_000.0 + 125.0 + 250.0 * np.arange(12))
    np.testing.assert_allclose(ds["y"].values, 7_000_000.0 - 125.0 - 250.0 * np.arange(10))
    assert ds.attrs["source_format"] == "geotiff"


def test_geotiff_plain_metadata_items_and_standard_scales(tmp_path: Path) -> None:
    raw = np.array([[0, 10, 200], [255, 3, 0]], dtype=np.uint8)
    plain = write_geotiff(tmp_path / "plain.tif", raw,
                          tags={"Gain": "0.5", "Offset": "-32", "Nodata": "255", "Undetect": "0",
                                "Quantity": "DBZH", "Observation time": "202001010000"})
    ds = read_geotiff(plain)
    np.testing.assert_array_equal(ds["DBZH"].values[0], [[-32, -27, 68], [np.nan, -30.5, -32]])
    # rasterio scales/offsets/nodata and the time from the file name
    std = write_geotiff(tmp_path / "radar_202001010005.tif", raw, nodata=255, scale_offset=(0.1, 0.0))
    ds2 = read_geotiff(std)
    np.testing.assert_allclose(ds2["band"].values[0], [[0.0, 1.0, 20.0], [np.nan, 0.3, 0.0]], rtol=1e-6)
    assert ds2["time"].values[0] == np.datetime64("2020-01-01T00:05", "ns")


def test_geotiff_window_and_bounds(tmp_path: Path) -> None:
    raw = dbzh_raw(2, (40, 36))
    path = _fmi_like(tmp_path, raw)
    part = read_geotiff(path, window=((5, 21), (3, 30)))
    np.testing.assert_array_equal(part["DBZH"].values[0], _dbz(raw)[5:21, 3:30])
    left, top = 100_000.0 + 3 * 250, 7_000_000.0 - 5 * 250
    by_bounds = read_geotiff(path, window=(left, top - 16 * 250, left + 27 * 250, top))
    np.testing.assert_array_equal(by_bounds["DBZH"].values, part["DBZH"].values)
    np.testing.assert_array_equal(by_bounds["x"].values, part["x"].values)


def _linear_block_mean(dbz: np.ndarray, k: int) -> np.ndarray:
    """Block mean of dBZ in linear Z, ignoring NaN; NaN where a block is all NaN (float64 reference)."""
    h, w = dbz.shape
    z = 10 ** (dbz.astype(np.float64).reshape(h // k, k, w // k, k) / 10)
    valid = ~np.isnan(z)
    total = np.where(valid, z, 0.0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 10 * np.log10(total / count)


def test_geotiff_coarsen_mean_in_linear_z_and_nearest(tmp_path: Path) -> None:
    raw = dbzh_raw(3, (40, 36))
    raw[8:12, 0:4] = 255  # one all-nodata block
    path = _fmi_like(tmp_path, raw)
    ds = read_geotiff(path, coarsen=4)
    np.testing.assert_allclose(ds["DBZH"].values[0], _linear_block_mean(_dbz(raw), 4), rtol=1e-5)
    # hand-computed block: -32 dBZ (undetect, Z=10**-3.2) and 8 dBZ (Z=10**0.8) average to 10*log10(...)
    two = np.array([[0, 80], [0, 80]], dtype=np.uint8)
    small = read_geotiff(_fmi_like(tmp_path, two, name="s_201609281500.tif"), coarsen=2)
    assert small["DBZH"].values[0, 0, 0] == pytest.approx(10 * np.log10((10**-3.2 + 10**0.8) / 2), abs=1e-4)
    assert np.isnan(ds["DBZH"].values[0, 2, 0])
    np.testing.assert_allclose(ds["x"].values, 100_000.0 + 500.0 + 1000.0 * np.arange(9))
    nearest = read_geotiff(path, coarsen=4, coarsen_method="nearest")
    np.testing.assert_array_equal(nearest["DBZH"].values[0], _dbz(raw)[2::4, 2::4])
    # window + coarsen: trailing cells that do not fill a block are dropped
    sub = read_geotiff(path, window=((4, 39), (0, 36)), coarsen=4)
    assert sub.sizes["y"] == 8
    np.testing.assert_allclose(sub["DBZH"].values[0], _linear_block_mean(_dbz(raw)[4:36], 4), rtol=1e-5)


# --------------------------------------------------------------------------- NetCDF


def _field(ntime: int = 1) -> np.ndarray:
    values = np.arange(ntime * 12, dtype=np.float64).reshape(ntime, 3, 4) * 0.25
    values[:, 0, 0] = np.nan
    return values


@pytest.mark.parametrize("fmt", ["NETCDF4", "NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET"])
def test_netcdf_packed_roundtrip(tmp_path: Path, fmt: str) -> None:
    spec = NcFile(values=_field(), fmt=fmt)
    ds = read_netcdf(write_netcdf(tmp_path / "f.nc", spec))
    np.testing.assert_allclose(ds["RATE"].values, spec.values, rtol=1e-6, atol=1e-6)
    assert np.isnan(ds["RATE"].values[0, 0, 0])
    assert ds["RATE"].dtype == np.float32
    assert ds["RATE"].attrs["units"] == "mm h-1"
    assert ds["RATE"].attrs["standard_name"] == "rainfall_rate"
    assert ds["RATE"].attrs["quantity"] == "RATE"
    assert crs_of(ds).equals(pyproj.CRS.from_epsg(3035))
    np.testing.assert_array_equal(ds["x"].values, spec.x)
    np.testing.assert_array_equal(ds["y"].values, spec.y)
    assert ds["time"].values[0] == T0
    assert ds.attrs["source_format"] == "cf_netcdf"


def test_netcdf_multiple_times_unlimited_and_y_increasing(tmp_path: Path) -> None:
    values = _field(3)
    y_up = np.array([10_500.0, 11_500.0, 12_500.0])
    spec = NcFile(values=values, packed=False, y=y_up, unlimited_time=True, fmt="NETCDF3_64BIT_OFFSET",
                  times=("2024-01-02T12:00", "2024-01-02T12:05", "2024-01-02T12:10"))
    ds = read_netcdf(write_netcdf(tmp_path / "f.nc", spec))
    assert ds.sizes["time"] == 3
    # stored south-up: the reader flips to north-up (y decreasing)
    np.testing.assert_array_equal(ds["y"].values, y_up[::-1])
    np.testing.assert_array_equal(ds["RATE"].values, values[:, ::-1, :].astype(np.float32))
    assert np.diff(ds["time"].values).astype("timedelta64[s]").astype(int).tolist() == [300, 300]
    part = read_netcdf(write_netcdf(tmp_path / "g.nc", spec), window=((0, 2), (1, 3)))
    np.testing.assert_array_equal(part["RATE"].values, ds["RATE"].values[:, 0:2, 1:3])


def test_netcdf_gdal_projection_and_global_time(tmp_path: Path) -> None:
    spec = NcFile(values=_field(), with_time=False, with_crs=False,
                  global_attrs={"gdal_projection": "+proj=geos +a=6378137 +b=6356752.3 +lon_0=0 +h=35785863",
                                "nominal_product_time": "2018-06-01T08:00:00Z"})
    ds = read_netcdf(write_netcdf(tmp_path / "sat.nc", spec))
    assert ds["time"].values[0] == np.datetime64("2018-06-01T08:00", "ns")
    assert ds["crs"].attrs["grid_mapping_name"] == "geostationary"
    np.testing.assert_allclose(ds["RATE"].values, spec.values, atol=1e-6)


def test_netcdf3_expected_size_matches_written_file(tmp_path: Path) -> None:
    for fmt in ("NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET", "NETCDF3_64BIT_DATA"):
        path = write_netcdf(tmp_path / f"{fmt}.nc", NcFile(values=_field(2), fmt=fmt, unlimited_time=True,
                                                             times=("2024-01-02T12:00", "2024-01-02T12:05")))
        size = expected_size(path)
        assert size is not None
        # the header-derived size is the end of the data: the file is at most 3 padding bytes longer
        assert 0 <= path.stat().st_size - size <= 3, fmt


# --------------------------------------------------------------------------- webcams


def test_png_roundtrip_exact_with_time_and_camera_from_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    path = tmp_path / "cam-01_202402031015.png"
    Image.fromarray(rgb).save(path)
    ds = read_webcam(path)
    assert ds["image"].dims == ("time", "band", "y", "x")
    assert ds["image"].dtype == np.uint8
    np.testing.assert_array_equal(ds["image"].values[0], rgb.transpose(2, 0, 1))
    assert ds["time"].values[0] == np.datetime64("2024-02-03T10:15", "ns")
    assert ds.attrs["camera"] == "cam-01"
    assert ds.attrs["source_format"] == "webcam_image"
    assert "crs" not in ds
    np.testing.assert_array_equal(ds["x"].values, np.arange(9))


def test_rgba_and_grey_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(grey, mode="L").save(tmp_path / "g_202401010000.png")
    ds = read_webcam(tmp_path / "g_202401010000.png")
    np.testing.assert_array_equal(ds["image"].values[0], np.stack([grey] * 3))
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a_202401010000.png")
    assert read_webcam(tmp_path / "a_202401010000.png")["image"].shape == (1, 3, 4, 5)


def test_jpeg_exif_time_with_offset(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 6), (10, 120, 240))
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2024:03:04 13:30:00"
    sub[0x9011] = "+02:00"
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif, quality=95)
    ds = read_webcam(path)
    assert ds["time"].values[0] == np.datetime64("2024-03-04T11:30", "ns")
    assert abs(int(ds["image"].values[0, 2].mean()) - 240) <= 2
    # an explicit time wins
    assert read_webcam(path, time="2024-01-01T00:00Z")["time"].values[0] == np.datetime64("2024-01-01", "ns")


def test_webcam_labels_table(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("a_202401010000.jpg", "b_202401010010.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,camera,time,snow_class,visibility_m\n"
                   "images/a_202401010000.jpg,a,2024-01-01T00:00:00Z,full,150\n"
                   "images/b_202401010010.jpg,b,2024-01-01T02:10:00+02:00,none,\n")
    table = read_webcam_labels(csv)
    assert table["path"].tolist() == [str((tmp_path / "images" / n).resolve())
                                      for n in ("a_202401010000.jpg", "b_202401010010.jpg")]
    assert table["time"].tolist() == [pd.Timestamp("2024-01-01T00:00"), pd.Timestamp("2024-01-01T00:10")]
    assert table["snow_class"].tolist() == ["full", "none"]
    assert list(table["snow_class"].cat.categories) == ["none", "partial", "full"]
    assert table["visibility_m"].iloc[0] == 150.0 and np.isnan(table["visibility_m"].iloc[1])


# --------------------------------------------------------------------------- registry and series


def test_detection_by_content_not_extension(tmp_path: Path) -> None:
    odim = write_odim(tmp_path / "radar.nc", _odim_spec())  # wrong extension on purpose
    nc4 = write_netcdf(tmp_path / "field.h5", NcFile(values=_field()))
    nc3 = write_netcdf(tmp_path / "field3.dat", NcFile(values=_field(), fmt="NETCDF3_CLASSIC"))
    tif = write_geotiff(tmp_path / "r_202001010000.bin", dbzh_raw(), tags={"Gain": "0.5"})
    png = tmp_path / "cam_202001010000.tif"
    Image.new("RGB", (3, 3)).save(png, format="PNG")
    assert [detect_format(p) for p in (odim, nc4, nc3, tif, png)] == [
        "odim_h5", "cf_netcdf", "cf_netcdf", "geotiff", "webcam_image"]
    assert open_dataset(odim).attrs["source_format"] == "odim_h5"
    assert open_dataset(png)["image"].shape == (1, 3, 3, 3)
    assert open_dataset(nc4, format="netcdf")["RATE"].shape == (1, 3, 4)


def test_get_reader_names_and_aliases() -> None:
    assert get_reader("odim_h5") is read_odim
    assert get_reader("ODIM") is read_odim
    assert get_reader("tiff") is read_geotiff
    assert set(READERS) == {"odim_h5", "cf_netcdf", "geotiff", "webcam_image", "grib2"}


def test_open_series_sorts_reports_gaps_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stamps = ["1200", "1205", "1210", "1225", "1230"]  # a 15-minute gap after 12:10
    paths = [write_odim(tmp_path / f"r{s}.h5", _odim_spec(time=f"{s}00")) for s in stamps]
    with caplog.at_level(logging.WARNING):
        series = open_series(reversed(paths), quantities=["DBZH"], include_quality=False)
    assert series.sizes["time"] == 5
    assert np.all(np.diff(series["time"].values) > np.timedelta64(0))
    assert series.attrs["time_step_seconds"] == 300
    assert series.attrs["gaps"] == [("2024-01-02T12:10:00", "2024-01-02T12:25:00")]
    assert "gap" in caplog.text
    assert series["DBZH"].shape == (5, 5, 6)
    assert "crs" in series and series["crs"].ndim == 0
    assert series.attrs["source_paths"] == [str(p) for p in paths]
    one = read_odim(paths[2], quantities=["DBZH"], include_quality=False)
    np.testing.assert_array_equal(series["DBZH"].values[2], one["DBZH"].values[0])


def test_reader_output_written_by_xarray_reads_back_identically(tmp_path: Path) -> None:
    """The contract Dataset itself is CF: xarray.to_netcdf of an ODIM read gives the same Dataset back."""
    original = read_odim(write_odim(tmp_path / "comp.h5", _odim_spec()))
    out = tmp_path / "contract.nc"
    original.to_netcdf(out)
    again = read_netcdf(out)
    assert set(again.data_vars) == set(original.data_vars)
    for name in original.data_vars:
        if name == "crs":
            continue
        np.testing.assert_array_equal(again[name].values, original[name].values)
        assert again[name].attrs["units"] == original[name].attrs["units"]
    np.testing.assert_array_equal(again["x"].values, original["x"].values)
    np.testing.assert_array_equal(again["y"].values, original["y"].values)
    np.testing.assert_array_equal(again["time"].values, original["time"].values)
    assert crs_of(again).equals(crs_of(original))
    assert again["DBZH"].attrs["quantity"] == "DBZH"


def test_netcdf3_unsigned_bytes_valid_range_and_flags(tmp_path: Path) -> None:
    """NETCDF3 has no unsigned types: ``_Unsigned`` bytes, their fill value and ``valid_max`` apply."""
    path = tmp_path / "u.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as nc:
        nc.nominal_product_time = "2024-05-06T07:08:00Z"
        nc.createDimension("y", 2)
        nc.createDimension("x", 3)
        for axis, values in (("x", [500.0, 1500.0, 2500.0]), ("y", [1500.0, 500.0])):
            v = nc.createVariable(axis, "f8", (axis,))
            v.standard_name, v.units = f"projection_{axis}_coordinate", "km" if axis == "x" else "m"
            v[:] = np.array(values) / (1000.0 if axis == "x" else 1.0)
        crs = nc.createVariable("crs", "i4", ())
        crs.setncatts(pyproj.CRS.from_epsg(3067).to_cf())
        var = nc.createVariable("cloud", "i1", ("y", "x"), fill_value=np.int8(-1))  # -1 = 255 unsigned
        var.setncatts({"_Unsigned": "true", "scale_factor": 0.5, "valid_max": np.int8(-56),  # 200 unsigned
                       "units": "percent", "grid_mapping": "crs"})
        var.set_auto_maskandscale(False)
        var[:] = np.array([[0, 100, -56], [-55, -1, 10]], dtype=np.int8)  # 0, 100, 200, 201, 255, 10
        flags = nc.createVariable("flags", "i2", ("y", "x"))
        flags.setncatts({"flag_values": np.array([1, 2], dtype=np.int16), "flag_meanings": "a b",
                         "valid_range": np.array([1, 2], dtype=np.int16), "grid_mapping": "crs"})
        flags[:] = np.array([[1, 2, 4], [1, 1, 2]], dtype=np.int16)
    ds = read_netcdf(path)
    np.testing.assert_array_equal(ds["cloud"].values[0], [[0.0, 50.0, 100.0], [np.nan, np.nan, 5.0]])
    assert ds["cloud"].attrs["units"] == "%"
    np.testing.assert_array_equal(ds["x"].values, [500.0, 1500.0, 2500.0])  # km -> m
    # flags keep every value (valid_range of bit fields is not trusted) and their flag attributes
    np.testing.assert_array_equal(ds["flags"].values[0], [[1, 2, 4], [1, 1, 2]])
    assert ds["flags"].attrs["flag_meanings"] == "a b"
    assert ds["time"].values[0] == np.datetime64("2024-05-06T07:08", "ns")


def test_every_reader_accepts_allow_empty(tmp_path: Path) -> None:
    """Callers pass ``allow_empty=True`` to open_dataset whatever the format (e.g. the torch datasets)."""
    png = tmp_path / "cam_202401010000.png"
    Image.new("RGB", (2, 2)).save(png)
    assert open_dataset(png, allow_empty=True)["image"].shape == (1, 3, 2, 2)
    tif = write_geotiff(tmp_path / "r_202001010000.tif", np.full((4, 4), 255, np.uint8), tags={"Nodata": "255"})
    assert np.isnan(open_dataset(tif, allow_empty=True)["band"].values).all()
