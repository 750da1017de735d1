"""The readers on real operational files (../shared/data): known CRS, grids, units, values and time axes.

Expected values are computed here directly with h5py / rasterio / netCDF4 and the encodings
documented in ../shared/data/SOURCES.md, never with the readers under test.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pyproj
import pytest
import rasterio
import xarray as xr

from meteovision.datasets.conventions import crs_of
from meteovision.datasets.readers import open_dataset, open_series, read_geotiff, read_netcdf, read_odim

pytestmark = pytest.mark.realdata

OPERA_FRAME = "T_PAAH21_C_EUOC_20180824230000.hdf"
FMI_FRAME = "201609281500_FINUTM.tif"
CRR_FRAME = "S_NWC_CRR_MSG4_Europe-VISIR_20180601T080000Z.nc"


def _ns(text: str) -> np.datetime64:
    return np.datetime64(text, "ns")


# --------------------------------------------------------------------------- OPERA ODIM_H5


@pytest.fixture(scope="module")
def opera_dir(shared_data: Path) -> Path:
    return shared_data / "radar" / "opera_20180824"


@pytest.fixture(scope="module")
def opera(opera_dir: Path) -> xr.Dataset:
    return read_odim(opera_dir / OPERA_FRAME)


def test_opera_crs_grid_units(opera: xr.Dataset) -> None:
    cf = opera["crs"].attrs
    assert cf["grid_mapping_name"] == "lambert_azimuthal_equal_area"
    assert cf["latitude_of_projection_origin"] == 55.0
    assert cf["longitude_of_projection_origin"] == 10.0
    assert opera["RATE"].shape == (1, 2200, 1900)
    assert np.all(np.diff(opera["x"].values) == 2000.0)
    assert np.all(np.diff(opera["y"].values) == -2000.0)
    assert opera["RATE"].attrs["units"] == "mm h-1"
    assert opera["RATE"].dtype == np.float32
    assert opera["QIND"].attrs["quantity"] == "QIND"
    assert opera.sizes["time"] == 1 and opera["time"].values[0] == _ns("2018-08-24T23:00")
    assert opera["RATE"].attrs["start_time"] == "2018-08-24T22:50:00Z"
    assert opera["RATE"].attrs["end_time"] == "2018-08-24T23:05:00Z"
    assert opera.attrs["odim_conventions"] == "ODIM_H5/V2_0"


def test_opera_values_against_raw_h5py(opera_dir: Path, opera: xr.Dataset) -> None:
    with h5py.File(opera_dir / OPERA_FRAME, "r") as f:
        raw = f["dataset1/data1/data"][:]
        what = dict(f["dataset1/what"].attrs)
        raw_q = f["dataset2/data1/data"][:]
    nodata, undetect, gain, offset = what["nodata"], what["undetect"], what["gain"], what["offset"]
    measured = (raw != nodata) & (raw != undetect)
    expected_max = float((raw[measured] * gain + offset).max())
    rate = opera["RATE"].values[0]
    assert float(np.nanmax(rate)) == pytest.approx(expected_max, rel=1e-6)
    assert expected_max == pytest.approx(143.09, abs=1e-6)
    assert float(np.isnan(rate).mean()) == float((raw == nodata).mean())
    assert 0.45 < float((raw == nodata).mean()) < 0.55
    zero_expected = int(((raw == undetect) | (measured & (raw * gain + offset == 0))).sum())
    assert int((rate == 0).sum()) == zero_expected
    qind = opera["QIND"].values[0]
    np.testing.assert_array_equal(np.isnan(qind), raw_q == nodata)
    assert float(np.nanmin(qind)) >= 0.0 and float(np.nanmax(qind)) <= 1.0


def test_opera_geolocation(opera_dir: Path, opera: xr.Dataset) -> None:
    with h5py.File(opera_dir / OPERA_FRAME, "r") as f:
        where = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["where"].attrs.items()}
    raw_crs = pyproj.CRS(where["projdef"])
    to_lonlat = pyproj.Transformer.from_crs(raw_crs, raw_crs.geodetic_crs, always_xy=True)
    geod = pyproj.Geod(ellps="WGS84")
    x, y = opera["x"].values, opera["y"].values
    # outer corners of the reader's grid land on the corners the file states
    for name, cx, cy in (("UL", x[0] - 1000, y[0] + 1000), ("LR", x[-1] + 1000, y[-1] - 1000),
                         ("UR", x[-1] + 1000, y[0] + 1000), ("LL", x[0] - 1000, y[-1] - 1000)):
        lon, lat = to_lonlat.transform(cx, cy)
        _, _, dist = geod.inv(lon, lat, where[f"{name}_lon"], where[f"{name}_lat"])
        assert dist < 1.0, name
    # the cell containing Paris projects back to within 2 km of Paris
    px, py = pyproj.Transformer.from_crs("EPSG:4326", crs_of(opera), always_xy=True).transform(2.35, 48.85)
    i, j = int(np.argmin(np.abs(x - px))), int(np.argmin(np.abs(y - py)))
    assert abs(x[i] - px) <= 1000 and abs(y[j] - py) <= 1000
    lon, lat = to_lonlat.transform(x[i], y[j])
    _, _, dist = geod.inv(lon, lat, 2.35, 48.85)
    assert dist < 2000.0


def test_opera_series_time_axis(opera_dir: Path) -> None:
    files = sorted(opera_dir.glob("*.hdf"))
    assert len(files) == 24
    series = open_series(files[::-1], quantities=["RATE"], include_quality=False,
                         window=(slice(1000, 1064), slice(900, 964)))
    assert series.sizes == {"time": 24, "y": 64, "x": 64}
    assert series["time"].values[0] == _ns("2018-08-24T18:00")
    assert series["time"].values[-1] == _ns("2018-08-24T23:45")
    assert series.attrs["time_step_seconds"] == 900
    assert series.attrs["gaps"] == []


# --------------------------------------------------------------------------- FMI GeoTIFF


@pytest.fixture(scope="module")
def fmi_dir(shared_data: Path) -> Path:
    return shared_data / "radar" / "fmi_geotiff_20160928"


@pytest.fixture(scope="module")
def fmi_raw(fmi_dir: Path) -> np.ndarray:
    """The raw uint8 codes, read once for the module straight from rasterio."""
    with rasterio.open(fmi_dir / FMI_FRAME) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def fmi(fmi_dir: Path) -> xr.Dataset:
    """The whole frame through the reader, read once for the module (145 MB float32)."""
    return read_geotiff(fmi_dir / FMI_FRAME)


# Encoding documented in SOURCES.md (and in the files' GDAL metadata).
FMI_GAIN, FMI_OFFSET, FMI_NODATA, FMI_UNDETECT = 0.5, -32.0, 255, 0


def test_fmi_crs_grid_units_time(fmi: xr.Dataset) -> None:
    assert crs_of(fmi).to_epsg() == 3067
    assert fmi["DBZH"].shape == (1, 7316, 4963)
    np.testing.assert_allclose(np.diff(fmi["x"].values), 250.0, atol=0.01)
    np.testing.assert_allclose(np.diff(fmi["y"].values), -250.0, atol=0.02)
    assert fmi["DBZH"].attrs["units"] == "dBZ"
    assert fmi["time"].values[0] == _ns("2016-09-28T15:00")


def test_fmi_values_against_raw_rasterio(fmi: xr.Dataset, fmi_raw: np.ndarray) -> None:
    dbzh = fmi["DBZH"].values[0]
    echo = (fmi_raw != FMI_NODATA) & (fmi_raw != FMI_UNDETECT)
    expected_max = float(fmi_raw[echo].max()) * FMI_GAIN + FMI_OFFSET
    assert float(np.nanmax(dbzh)) == expected_max
    assert float(np.isnan(dbzh).mean()) == float((fmi_raw == FMI_NODATA).mean())
    assert int((dbzh == -32.0).sum()) == int((fmi_raw == FMI_UNDETECT).sum())
    rows, cols = np.nonzero(echo[::97, ::89])
    r, c = rows[0] * 97, cols[0] * 89
    assert dbzh[r, c] == fmi_raw[r, c] * FMI_GAIN + FMI_OFFSET


def test_fmi_window_and_bounds_match_full_read(fmi_dir: Path, fmi: xr.Dataset) -> None:
    part = read_geotiff(fmi_dir / FMI_FRAME, window=((3000, 3512), (2000, 2300)))
    np.testing.assert_array_equal(part["DBZH"].values[0], fmi["DBZH"].values[0, 3000:3512, 2000:2300])
    x, y = fmi["x"].values, fmi["y"].values
    bounds = (x[2000] - 1, y[3511] - 1, x[2299] + 1, y[3000] + 1)
    by_bounds = read_geotiff(fmi_dir / FMI_FRAME, window=bounds)
    np.testing.assert_array_equal(by_bounds["DBZH"].values, part["DBZH"].values)


def test_fmi_coarsened_read_bounded_memory_and_exact(fmi_dir: Path, fmi_raw: np.ndarray) -> None:
    frame_bytes = fmi_raw.nbytes  # 36 MB of uint8; the float32 frame is 4x that
    tracemalloc.start()
    try:
        coarse = read_geotiff(fmi_dir / FMI_FRAME, coarsen=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert coarse["DBZH"].shape == (1, 7316 // 4, 4963 // 4)
    assert peak < frame_bytes * 0.7, f"peak {peak / 1e6:.1f} MB for a {frame_bytes / 1e6:.1f} MB frame"
    # exact linear-Z block mean, checked on 1000 full-resolution rows
    dbz = fmi_raw[2000:3000, : 4963 // 4 * 4].astype(np.float64) * FMI_GAIN + FMI_OFFSET
    dbz[fmi_raw[2000:3000, : 4963 // 4 * 4] == FMI_NODATA] = np.nan
    z = 10 ** (dbz.reshape(250, 4, -1, 4) / 10)
    valid = ~np.isnan(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = 10 * np.log10(np.where(valid, z, 0).sum(axis=(1, 3)) / valid.sum(axis=(1, 3)))
    np.testing.assert_allclose(coarse["DBZH"].values[0, 500:750], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.diff(coarse["x"].values), 4 * 250.004, atol=0.01)


def test_fmi_overviews_are_blank_so_the_reader_does_not_use_them(fmi_dir: Path, fmi_raw: np.ndarray) -> None:
    """Why coarsening reads full resolution: these files' internal overviews are all zero."""
    with rasterio.open(fmi_dir / FMI_FRAME) as src:
        assert src.overviews(1) == [2, 4, 8, 16, 32]
        decimated = src.read(1, out_shape=(7316 // 8, 4963 // 8))
    assert not decimated.any()
    assert (fmi_raw > FMI_UNDETECT).any()


def test_fmi_series_time_axis(fmi_dir: Path) -> None:
    files = sorted(fmi_dir.glob("*.tif"))
    assert len(files) == 16
    series = open_series(files, window=((3000, 3032), (2000, 2032)), allow_empty=True)
    assert series.sizes == {"time": 16, "y": 32, "x": 32}
    assert series["time"].values[0] == _ns("2016-09-28T14:45")
    assert series["time"].values[-1] == _ns("2016-09-28T16:00")
    assert series.attrs["time_step_seconds"] == 300
    assert series.attrs["gaps"] == []


# --------------------------------------------------------------------------- NWC SAF CRR NetCDF


@pytest.fixture(scope="module")
def crr_dir(shared_data: Path) -> Path:
    return shared_data / "satellite" / "nwcsaf_crr_20180601"


@pytest.fixture(scope="module")
def crr(crr_dir: Path) -> xr.Dataset:
    return read_netcdf(crr_dir / CRR_FRAME)


def test_crr_crs_grid_units_time(crr: xr.Dataset) -> None:
    cf = crr["crs"].attrs
    assert cf["grid_mapping_name"] == "geostationary"
    assert cf["perspective_point_height"] == 35785863.0
    assert cf["longitude_of_projection_origin"] == 0.0
    assert crr["crr_intensity"].shape == (1, 1019, 2200)
    assert np.all(np.diff(crr["x"].values) == 3000.0)
    assert np.all(np.diff(crr["y"].values) == -3000.0)
    assert crr["x"].values[0] == -3_300_000.0 and crr["y"].values[0] == 5_568_000.0
    assert crr["crr_intensity"].attrs["units"] == "mm h-1"
    assert crr["time"].values[0] == _ns("2018-06-01T08:00")
    assert "crr_pal" not in crr and "crr_intensity_pal" not in crr


def test_crr_values_against_raw_netcdf4(crr_dir: Path, crr: xr.Dataset) -> None:
    with netCDF4.Dataset(crr_dir / CRR_FRAME) as nc:
        var = nc["crr_intensity"]
        var.set_auto_maskandscale(False)
        raw = var[:]
        fill, scale, (low, high) = var._FillValue, var.scale_factor, var.valid_range
    missing = (raw == fill) | (raw < low) | (raw > high)
    rate = crr["crr_intensity"].values[0]
    assert float(np.nanmax(rate)) == pytest.approx(float(raw[~missing].max()) * scale, rel=1e-6)
    assert float(np.isnan(rate).mean()) == float(missing.mean())
    assert 0.1 < float(missing.mean()) < 0.3


def test_crr_series_time_axis(crr_dir: Path) -> None:
    series = open_series(sorted(crr_dir.glob("*.nc")), variables=["crr_intensity"],
                         window=((500, 520), (1000, 1020)), allow_empty=True)
    assert series.sizes == {"time": 8, "y": 20, "x": 20}
    assert series["time"].values[0] == _ns("2018-06-01T07:00")
    assert series["time"].values[-1] == _ns("2018-06-01T08:45")
    assert series.attrs["time_step_seconds"] == 900
    assert series.attrs["gaps"] == []


def test_open_dataset_detects_each_real_format(opera_dir: Path, fmi_dir: Path, crr_dir: Path) -> None:
    kwargs = {"window": ((0, 8), (0, 8)), "allow_empty": True}
    assert open_dataset(opera_dir / OPERA_FRAME, **kwargs).attrs["source_format"] == "odim_h5"
    assert open_dataset(fmi_dir / FMI_FRAME, **kwargs).attrs["source_format"] == "geotiff"
    assert open_dataset(crr_dir / CRR_FRAME, **kwargs).attrs["source_format"] == "cf_netcdf"
