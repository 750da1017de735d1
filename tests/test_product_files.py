"""Product files together (open_mfdataset), names, refusals, and the GeoTIFF writer."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import xarray as xr

from meteovision.datasets.conventions import crs_variable, projection_coords
from meteovision.pipeline.inference.geotiff_writer import write_product_geotiff
from meteovision.pipeline.inference.netcdf_writer import write_product_netcdf
from meteovision.pipeline.inference.products import (
    Product,
    ProductError,
    ProductGrid,
    ProductVariable,
    Provenance,
    WriterError,
    product_filename,
)
from tests.product_helpers import (
    REF,
    TM35FIN,
    bow_echo_mask,
    class_probabilities,
    cloud_fraction,
    dbz_analysis,
    product,
    rain_nowcast,
)


def _write_series(folder: Path, nowcast: bool) -> list[datetime]:
    refs = [REF + timedelta(minutes=5 * i) for i in range(3)]
    for i, ref in enumerate(reversed(refs)):  # written out of order on purpose
        value = np.full((2, 7, 9) if nowcast else (7, 9), float(len(refs) - 1 - i), np.float32)
        prod = product([ProductVariable.rain_rate(value)], leads=[5, 10] if nowcast else None, ref=ref)
        write_product_netcdf(prod, folder / product_filename("nowcast_precip", "deeplabv3plus", ref))
    return refs


@pytest.mark.parametrize("new_defaults", [False, True])
def test_open_mfdataset_combines_analyses_by_time(tmp_path: Path, new_defaults: bool) -> None:
    pytest.importorskip("dask")
    refs = _write_series(tmp_path, nowcast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with xr.set_options(use_new_combine_kwarg_defaults=new_defaults), \
                xr.open_mfdataset(str(tmp_path / "*.nc"), combine="by_coords") as ds:
            assert ds["rain_rate"].dims == ("time", "y", "x")
            np.testing.assert_array_equal(ds["time"].values, np.array(refs, dtype="datetime64[ns]"))
            np.testing.assert_array_equal(ds["forecast_reference_time"].values, ds["time"].values)
            np.testing.assert_array_equal(ds["rain_rate"].values[:, 3, 3], [0.0, 1.0, 2.0])
            assert ds["lat"].dims == ("y", "x")


def test_open_mfdataset_stacks_nowcasts_by_reference_time(tmp_path: Path) -> None:
    pytest.importorskip("dask")
    refs = _write_series(tmp_path, nowcast=True)
    with xr.open_mfdataset(str(tmp_path / "*.nc"), combine="nested", concat_dim="forecast_reference_time",
                           data_vars="all", coords="different", compat="equals", join="exact") as ds:
        assert ds["rain_rate"].dims == ("forecast_reference_time", "leadtime", "y", "x")
        frt = np.array(refs, dtype="datetime64[ns]")
        np.testing.assert_array_equal(np.sort(ds["forecast_reference_time"].values), frt)
        ordered = ds.sortby("forecast_reference_time")
        np.testing.assert_array_equal(ordered["rain_rate"].values[:, :, 3, 3], [[0, 0], [1, 1], [2, 2]])
        np.testing.assert_array_equal(ordered["time"].values[:, 1], frt + np.timedelta64(10, "m"))


def test_combine_by_coords_without_dask(tmp_path: Path) -> None:
    """The same combination open_mfdataset performs, for users without dask."""
    refs = _write_series(tmp_path, nowcast=False)
    parts = [xr.open_dataset(p) for p in sorted(tmp_path.glob("*.nc"))]
    try:
        ds = xr.combine_by_coords(parts, data_vars="minimal", coords="minimal", compat="equals", join="exact")
        assert isinstance(ds, xr.Dataset)
        np.testing.assert_array_equal(ds["time"].values, np.array(refs, dtype="datetime64[ns]"))
        np.testing.assert_array_equal(ds["rain_rate"].values[:, 0, 0], [0.0, 1.0, 2.0])
        assert ds["crs"].dims == ()
    finally:
        for part in parts:
            part.close()


def test_product_filename() -> None:
    assert product_filename("nowcast_precip", "deeplabv3plus", REF) == \
        "meteovision_nowcast_precip_deeplabv3plus_20180824T1800Z.nc"
    eet = timezone(timedelta(hours=3))
    local = datetime(2018, 8, 24, 21, 5, tzinfo=eet)
    assert product_filename("bow_echo", "unet", local, timedelta(minutes=30), suffix=".tif") == \
        "meteovision_bow_echo_unet_20180824T1805Z_lead0030min.tif"
    with pytest.raises(ProductError):
        product_filename("now cast", "unet", REF)


def test_grid_from_reader_dataset() -> None:
    ds = xr.Dataset({"RATE": (("time", "y", "x"), np.zeros((1, 3, 4), np.float32)),
                     "crs": crs_variable(TM35FIN)},
                    coords={**projection_coords(np.arange(4) * 1000.0, 7e6 - np.arange(3) * 1000.0)})
    g = ProductGrid.from_dataset(ds)
    assert g.shape == (3, 4)
    assert g.crs == TM35FIN
    np.testing.assert_array_equal(g.y, [7e6, 7e6 - 1000, 7e6 - 2000])
    with pytest.raises(ProductError, match="lacks"):
        ProductGrid.from_dataset(ds.drop_vars("crs"))


def test_bad_products_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProductError, match="not among flag_values"):
        ProductVariable.mask(np.full((7, 9), 2.0), "m", "mask", ("no", "yes"))
    with pytest.raises(ProductError, match="outside valid_range"):
        ProductVariable.probability(np.full((7, 9), 1.5), "p", "probability")
    with pytest.raises(ProductError, match="spatial shape"):
        product([ProductVariable.rain_rate(np.zeros((6, 9)))])
    with pytest.raises(ProductError, match="time steps"):
        product([ProductVariable.rain_rate(np.zeros((2, 7, 9)))], leads=[5, 10, 15])
    with pytest.raises(ProductError, match="increasing"):
        product([ProductVariable.rain_rate(np.zeros((2, 7, 9)))], leads=[10, 5])
    with pytest.raises(ProductError, match="name"):
        ProductVariable.rain_rate(np.zeros((7, 9)), name="time")
    with pytest.raises(ProductError, match="sha256"):
        Provenance("a", "b", "1", "not-a-hash")
    with pytest.raises(WriterError, match="fill value"):
        write_product_netcdf(product([ProductVariable.rain_rate(np.full((7, 9), -9999.0))]),
                             tmp_path / "f.nc")
    assert os.listdir(tmp_path) == []


# --- GeoTIFF -----------------------------------------------------------------------------------------


def test_geotiff_round_trip(tmp_path: Path) -> None:
    prod = rain_nowcast()
    path = write_product_geotiff(prod, tmp_path / "rain.tif")
    with rasterio.open(path) as src:
        assert src.count == 3
        assert src.crs.to_epsg() == 3067
        # cell centres 300000, 7000000 -> top-left corner 299500, 7000500 with 1 km cells
        assert tuple(src.transform)[:6] == (1000.0, 0.0, 299_500.0, 0.0, -1000.0, 7_000_500.0)
        values = src.read()
        np.testing.assert_array_equal(values, prod.variables[0].data)
        assert np.isnan(src.nodata)
        assert src.tags(2)["valid_time"] == "2018-08-24T18:10:00Z"
        assert src.tags(2)["units"] == "mm h-1"
        assert src.descriptions[2] == "rain_rate 2018-08-24T18:15:00Z +15 min"
        assert src.tags()["reference_time"] == "2018-08-24T18:00:00Z"


def _lonlat(crs: pyproj.CRS, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return np.array(pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(xs, ys))


@pytest.mark.parametrize("make", [dbz_analysis, cloud_fraction], ids=["laea", "geostationary"])
def test_geotiff_projection_matches(make: Callable[[], Product], tmp_path: Path) -> None:
    prod = make()
    with rasterio.open(write_product_geotiff(prod, tmp_path / "p.tif")) as src:
        xs, ys = np.meshgrid(prod.grid.x, prod.grid.y)
        np.testing.assert_allclose(_lonlat(pyproj.CRS.from_wkt(src.crs.to_wkt()), xs, ys),
                                   _lonlat(prod.grid.crs, xs, ys), atol=1e-9)
        cols, rows = np.meshgrid(np.arange(9), np.arange(7))
        centre_x, centre_y = src.xy(rows.ravel(), cols.ravel())
        np.testing.assert_allclose(np.reshape(centre_x, xs.shape), xs)
        np.testing.assert_allclose(np.reshape(centre_y, ys.shape), ys)
        np.testing.assert_array_equal(src.read(1), prod.variables[0].data)


def test_geotiff_masks_and_flipped_grids(tmp_path: Path) -> None:
    mask = bow_echo_mask()
    with rasterio.open(write_product_geotiff(mask, tmp_path / "m.tif")) as src:
        assert src.dtypes[0] == "int8" and src.nodata == -1
        expected = np.where(np.isnan(mask.variables[0].data), -1, mask.variables[0].data)
        np.testing.assert_array_equal(src.read(1), expected)
        assert src.tags(1)["flag_meanings"] == "no_bow_echo bow_echo"
    # A south-up grid (y increasing) is written north-up: row 0 holds the northernmost cells.
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    up = ProductGrid(np.array([0.0, 2000.0, 4000.0]), np.array([0.0, 2000.0]), TM35FIN)
    with rasterio.open(write_product_geotiff(product([ProductVariable.rain_rate(data)], g=up),
                                             tmp_path / "up.tif")) as src:
        np.testing.assert_array_equal(src.read(1), data[::-1])
        assert tuple(src.transform)[:6] == (2000.0, 0.0, -1000.0, 0.0, -2000.0, 3000.0)
    irregular = ProductGrid(np.array([0.0, 1000.0, 3000.0]), np.array([1000.0, 0.0]), TM35FIN)
    with pytest.raises(WriterError, match="regular grid"):
        write_product_geotiff(product([ProductVariable.rain_rate(np.zeros((2, 3)))], g=irregular),
                              tmp_path / "irr.tif")
    assert sorted(os.listdir(tmp_path)) == ["m.tif", "up.tif"]


def test_geotiff_of_several_variables_is_lead_major(tmp_path: Path) -> None:
    prod = class_probabilities()
    with rasterio.open(write_product_geotiff(prod, tmp_path / "p.tif")) as src:
        assert src.count == 6
        for step in range(2):
            for k, var in enumerate(prod.variables):
                band = 1 + step * 3 + k
                np.testing.assert_array_equal(src.read(band), var.data[step])
                assert src.tags(band)["variable"] == var.name
