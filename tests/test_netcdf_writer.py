"""The product writers: CF-1.10 NetCDF (checked by the IOOS compliance checker), values, CRS, atomicity."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pyproj
import pytest
import xarray as xr

from meteovision.pipeline.inference import netcdf_writer
from meteovision.pipeline.inference.atomic import atomic_write, is_valid_netcdf
from meteovision.pipeline.inference.netcdf_writer import FLOAT_FILL, INT_FILL, write_product_netcdf
from meteovision.pipeline.inference.products import (
    Product,
    ProductGrid,
    ProductVariable,
    WriterError,
    product_filename,
)
from tests.product_helpers import (
    GEOS,
    KINDS,
    LAEA,
    REF,
    SHA,
    TM35FIN,
    checker,
    class_probabilities,
    cloud_fraction,
    dbz_analysis,
    grid,
    product,
    rain_nowcast,
    run_cf_checker,
)

__all__ = ["checker"]  # the module-scoped fixture, shared


@pytest.mark.filterwarnings("ignore:The ioos_sos checker:DeprecationWarning")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cf_compliance_checker_passes(kind: str, tmp_path: Path, checker: Any) -> None:
    path = write_product_netcdf(KINDS[kind](), tmp_path / f"{kind}.nc")
    passed, failures, report = run_cf_checker(checker, path)
    assert passed and not failures, json.dumps(report, indent=1)[:20000]
    assert report["high_count"] == 0


@pytest.mark.filterwarnings("ignore:The ioos_sos checker:DeprecationWarning")
def test_cf_checker_catches_a_broken_file(tmp_path: Path, checker: Any) -> None:
    """The compliance assertion above can fail: the same file without units or grid_mapping_name does."""
    path = write_product_netcdf(rain_nowcast(), tmp_path / "broken.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc["rain_rate"].delncattr("units")
        nc["crs"].delncattr("grid_mapping_name")
    passed, failures, _ = run_cf_checker(checker, path)
    assert not passed
    assert any(prio == "high_priorities" for prio, _, _ in failures)


def test_values_round_trip_exactly(tmp_path: Path) -> None:
    for kind, make in KINDS.items():
        prod = make()
        path = write_product_netcdf(prod, tmp_path / f"{kind}.nc")
        with netCDF4.Dataset(path) as nc:
            nc.set_auto_mask(False)
            for var in prod.variables:
                raw = nc[var.name][:]
                expected = var.stacked()
                assert raw.shape == expected.shape
                if var.is_integer:
                    assert raw.dtype == np.int8
                    want = np.where(np.isnan(expected), INT_FILL, np.nan_to_num(expected)).astype(np.int8)
                    np.testing.assert_array_equal(raw, want)
                    assert nc[var.name]._FillValue == -1
                    flags = np.array(var.flag_values, np.int8)
                    np.testing.assert_array_equal(nc[var.name].flag_values, flags)
                    assert nc[var.name].flag_meanings == " ".join(var.flag_meanings or ())
                else:
                    assert raw.dtype == np.float32
                    np.testing.assert_array_equal(raw, np.where(np.isnan(expected), FLOAT_FILL, expected))
                    assert nc[var.name]._FillValue == np.float32(-9999.0)
        with xr.open_dataset(path) as ds:
            for var in prod.variables:
                # xarray masks the fill value: NaN exactly where the product had NaN, floats bit-exact
                np.testing.assert_array_equal(ds[var.name].values, var.stacked().astype(np.float32))


def test_mask_given_as_integers_stays_exact(tmp_path: Path) -> None:
    data = np.zeros((7, 9), dtype=np.int8)
    data[1, 2] = 1
    prod = product([ProductVariable.mask(data, "artefact_mask", "clutter", ("clean", "artefact"))],
                   application="radar_cleaning")
    with netCDF4.Dataset(write_product_netcdf(prod, tmp_path / "m.nc")) as nc:
        assert nc["artefact_mask"].dtype == np.int8
        np.testing.assert_array_equal(nc["artefact_mask"][:].filled(-1)[0], data)


def test_units_standard_names_and_times(tmp_path: Path) -> None:
    path = write_product_netcdf(rain_nowcast(), tmp_path / "rain.nc")
    with netCDF4.Dataset(path) as nc:
        rain = nc["rain_rate"]
        assert (rain.units, rain.standard_name) == ("mm h-1", "lwe_precipitation_rate")
        assert rain.grid_mapping == "crs"
        assert rain.dimensions == ("leadtime", "y", "x")
        assert set(rain.coordinates.split()) == {"time", "forecast_reference_time", "lat", "lon"}
        assert nc["leadtime"].standard_name == "forecast_period"
        assert nc["leadtime"].units == "minutes"
        assert list(nc["leadtime"][:]) == [5, 10, 15]
        assert nc["time"].dimensions == ("leadtime",)
        assert nc["forecast_reference_time"].dimensions == ()
        # 2018-08-24T18:00Z is 1535133600 s after the epoch (hand-computed)
        assert int(nc["forecast_reference_time"][...]) == 1_535_133_600
        assert list(nc["time"][:]) == [1_535_133_900, 1_535_134_200, 1_535_134_500]
        assert (nc["x"].units, nc["x"].standard_name) == ("m", "projection_x_coordinate")
        assert (nc["lat"].units, nc["lon"].units) == ("degrees_north", "degrees_east")
    with xr.open_dataset(path) as ds:
        assert ds["time"].values[1] == np.datetime64("2018-08-24T18:10:00")
        assert ds["forecast_reference_time"].values == np.datetime64("2018-08-24T18:00:00")

    with netCDF4.Dataset(write_product_netcdf(dbz_analysis(), tmp_path / "dbz.nc")) as nc:
        dbz = nc["reflectivity"]
        assert (dbz.units, dbz.standard_name) == ("dBZ", "equivalent_reflectivity_factor")
        assert dbz.dimensions == ("time", "y", "x")
        assert nc.dimensions["time"].size == 1
        assert list(nc["leadtime"][:]) == [0]
        assert nc["forecast_reference_time"].dimensions == ("time",)
    with netCDF4.Dataset(write_product_netcdf(cloud_fraction(), tmp_path / "cloud.nc")) as nc:
        cloud = nc["cloud_area_fraction"]
        assert (cloud.units, cloud.standard_name) == ("1", "cloud_area_fraction")
        np.testing.assert_array_equal(cloud.valid_range, np.array([0.0, 1.0], np.float32))
    with netCDF4.Dataset(write_product_netcdf(class_probabilities(), tmp_path / "prob.nc")) as nc:
        prob = nc["probability_above_5"]
        assert prob.dtype == np.float32
        assert prob.units == "1"
        np.testing.assert_array_equal(prob.valid_range, np.array([0.0, 1.0], np.float32))


def test_global_attributes_carry_provenance(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    with netCDF4.Dataset(write_product_netcdf(rain_nowcast(), tmp_path / "rain.nc")) as nc:
        attrs = {k: nc.getncattr(k) for k in nc.ncattrs()}
    assert attrs["Conventions"] == "CF-1.10"
    assert attrs["title"] == "meteovision nowcast_precip"
    assert attrs["institution"] == "Test Institute"
    assert attrs["source"] == "deeplabv3plus 1.2.0"
    assert attrs["meteovision_checkpoint_sha256"] == SHA
    assert json.loads(attrs["meteovision_config"]) == {"model": {"name": "deeplabv3plus", "lr": 0.001}}
    assert json.loads(attrs["meteovision_package_versions"]) == {"numpy": "2.0", "torch": "2.14.1"}
    assert json.loads(attrs["meteovision_input_files"]) == ["201808241755.h5", "201808241800.h5"]
    stamp, _, rest = attrs["history"].partition(" ")
    assert rest.startswith("created by meteovision ")
    created = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= created <= datetime.now(UTC)
    assert attrs["references"] and attrs["comment"]


def _crs_attrs(path: Path) -> dict[str, Any]:
    with netCDF4.Dataset(path) as nc:
        return {k: nc["crs"].getncattr(k) for k in nc["crs"].ncattrs()}


@pytest.mark.parametrize("crs", [LAEA, GEOS, TM35FIN], ids=["laea", "geostationary", "epsg3067"])
def test_crs_round_trip(crs: pyproj.CRS, tmp_path: Path) -> None:
    g = grid(crs, x0=-2000.0, y0=3000.0)
    path = write_product_netcdf(product([ProductVariable.rain_rate(np.ones((7, 9)))], g=g), tmp_path / "p.nc")
    attrs = _crs_attrs(path)
    assert pyproj.CRS.from_cf(attrs) == crs
    # A reader that ignores crs_wkt and uses the CF parameters alone lands on the same lon/lat.
    cf_only = pyproj.CRS.from_cf({k: v for k, v in attrs.items() if k != "crs_wkt"})
    xs, ys = np.array([-2000.0, 0.0, 6000.0]), np.array([3000.0, 0.0, -3000.0])
    for c in (crs, cf_only):
        lon, lat = pyproj.Transformer.from_crs(c, c.geodetic_crs, always_xy=True).transform(xs, ys)
        if c is crs:
            expected = (lon, lat)
        else:
            np.testing.assert_allclose((lon, lat), expected, atol=1e-9)
    with netCDF4.Dataset(path) as nc:
        assert nc["rain_rate"].grid_mapping == "crs"
        assert nc["crs"].grid_mapping_name == crs.to_cf()["grid_mapping_name"]


def write_zeros(g: ProductGrid, path: Path) -> Path:
    return write_product_netcdf(product([ProductVariable.rain_rate(np.zeros(g.shape))], g=g), path)


def test_lat_lon_at_known_points(tmp_path: Path) -> None:
    # LAEA: the false origin (x_0, y_0) is (lon_0, lat_0) by definition.
    g = ProductGrid(np.array([1_949_000.0, 1_950_000.0, 1_951_000.0]), np.array([-2_099_000.0, -2_100_000.0]),
                    LAEA)
    path = write_zeros(g, tmp_path / "l.nc")
    with netCDF4.Dataset(path) as nc:
        assert nc["lat"].dtype == np.float32
        assert nc["lat"][1, 1] == pytest.approx(55.0, abs=1e-5)
        assert nc["lon"][1, 1] == pytest.approx(10.0, abs=1e-5)
        # 1 km north of the origin: 1000 m / (pi/180 * ~6.37e6 m) ~ 0.009 degrees
        assert float(nc["lat"][0, 1]) - 55.0 == pytest.approx(0.00899, abs=2e-5)
    # TM35FIN: easting 500 km is the central meridian 27 E; northing 0 is the equator.
    g = ProductGrid(np.array([499_000.0, 500_000.0]), np.array([1000.0, 0.0]), TM35FIN)
    path = write_zeros(g, tmp_path / "t.nc")
    with netCDF4.Dataset(path) as nc:
        assert nc["lon"][1, 1] == pytest.approx(27.0, abs=1e-5)
        assert nc["lat"][1, 1] == pytest.approx(0.0, abs=1e-5)
    # Geostationary: the sub-satellite point is (lon_0, 0); corners of the full disk lie off the globe.
    # the disk reaches ~5.44e6 m from its centre along the axes: (5e6, 0) is on it, (5e6, 5e6) is not
    g = ProductGrid(np.array([-5e6, 0.0, 5e6]), np.array([5e6, 0.0, -5e6]), GEOS)
    path = write_zeros(g, tmp_path / "g.nc")
    with netCDF4.Dataset(path) as nc:
        lat, lon = nc["lat"][:], nc["lon"][:]
        assert lon[1, 1] == pytest.approx(9.5, abs=1e-5)
        assert lat[1, 1] == pytest.approx(0.0, abs=1e-5)
        assert lat.mask[0, 0] and lon.mask[2, 2]
        assert lat.mask.sum() == 4


@pytest.mark.parametrize("crs", [TM35FIN, GEOS], ids=["tm35fin", "geos_off_globe"])
def test_lat_lon_written_in_row_blocks_equal_the_whole_grid(
    crs: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lat/lon are computed in blocks of rows (bounded memory on national grids): the whole grid's values.

    3 x 3 chunks on a 7 x 9 grid: blocks of rows 0-2, 3-5 and a single last row 6, three chunks across.
    """
    monkeypatch.setattr(netcdf_writer, "LATLON_CHUNK", 3)
    monkeypatch.setattr(netcdf_writer, "LATLON_CACHE_MAX_PIXELS", 0)  # the streaming path of national grids
    x0, y0, step = (300_000.0, 7_000_000.0, 1000.0) if crs is TM35FIN else (-5.5e6, 5.5e6, 1.2e6)
    g = ProductGrid(x0 + step * np.arange(9), y0 - step * np.arange(7), crs)
    path = write_zeros(g, tmp_path / "blocks.nc")
    lon, lat = g.lonlat()
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        for name, whole in (("lat", lat), ("lon", lon)):
            assert nc[name].chunking() == [3, 3]
            expected = np.where(np.isnan(whole), netcdf_writer.FLOAT_FILL, whole).astype(np.float32)
            np.testing.assert_array_equal(nc[name][:], expected)
    if crs is TM35FIN:
        assert np.isfinite(lat).all()
    else:  # the disk reaches ~5.4e6 m from its centre: row 0 (y = 5.5e6) and (-5.5e6, -1.7e6) lie off it
        assert np.isnan(lat[0]).all() and np.isnan(lat[6, 0]) and np.isfinite(lat[3, 4])


def test_lat_lon_are_projected_once_per_grid_and_the_cache_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many products on one grid (a tick, a batch) project lat/lon once; other grids get their own."""
    calls: list[tuple[int, int]] = []
    real = ProductGrid.lonlat

    def counting(self: ProductGrid) -> tuple[np.ndarray, np.ndarray]:
        calls.append(self.shape)
        return real(self)

    monkeypatch.setattr(ProductGrid, "lonlat", counting)
    monkeypatch.setattr(netcdf_writer, "_latlon_cache", type(netcdf_writer._latlon_cache)())
    grids = [ProductGrid(300_000.0 + 1000.0 * np.arange(9), 7_000_000.0 - 1000.0 * np.arange(7) - k * 1e5, TM35FIN)
             for k in range(3)]
    written = [write_zeros(grids[0], tmp_path / f"same{i}.nc") for i in range(3)]
    assert len(calls) == 1
    with netCDF4.Dataset(written[0]) as first, netCDF4.Dataset(written[2]) as third:
        np.testing.assert_array_equal(first["lat"][:], third["lat"][:])
    for k in (1, 2):
        with netCDF4.Dataset(write_zeros(grids[k], tmp_path / f"other{k}.nc")) as nc:
            lon, lat = real(grids[k])
            np.testing.assert_allclose(nc["lat"][:], lat, rtol=0, atol=1e-5)
            np.testing.assert_allclose(nc["lon"][:], lon, rtol=0, atol=1e-5)
    assert len(calls) == 3 and len(netcdf_writer._latlon_cache) == netcdf_writer.LATLON_CACHE_GRIDS


def test_chunks_and_compression(tmp_path: Path) -> None:
    path = write_product_netcdf(rain_nowcast(), tmp_path / "rain.nc")
    with netCDF4.Dataset(path) as nc:
        for name in ("rain_rate", "lat"):
            filters = nc[name].filters()
            assert filters["zlib"] and filters["shuffle"] and filters["complevel"] == 4
        assert nc["rain_rate"].chunking() == [1, 7, 9]
        assert nc.file_format == "NETCDF4"


def test_output_is_deterministic_apart_from_history(tmp_path: Path) -> None:
    def dump(path: Path) -> dict[str, Any]:
        with netCDF4.Dataset(path) as nc:
            out: dict[str, Any] = {k: nc.getncattr(k) for k in nc.ncattrs() if k != "history"}
            for name, var in nc.variables.items():
                out[name] = (var.dimensions, var.dtype.str, {k: str(var.getncattr(k)) for k in var.ncattrs()},
                             np.asarray(var[...]).tobytes())
            return out

    a = write_product_netcdf(rain_nowcast(), tmp_path / "a.nc")
    b = write_product_netcdf(rain_nowcast(), tmp_path / "b.nc")
    assert dump(a) == dump(b)
    assert dump(a) != dump(write_product_netcdf(rain_nowcast(seed=5), tmp_path / "c.nc"))


def test_failure_mid_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path] = []
    real_write = netcdf_writer._write

    def failing_write(nc: netCDF4.Dataset, prod: Product, path: Path) -> None:
        real_write(nc, prod, path)
        tmp = Path(nc.filepath())
        assert tmp.exists() and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        assert tmp.parent == path.parent
        seen.append(tmp)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(netcdf_writer, "_write", failing_write)
    target = tmp_path / "rain.nc"
    with pytest.raises(WriterError, match="disk on fire"):
        write_product_netcdf(rain_nowcast(), target)
    assert len(seen) == 1 and not seen[0].exists()
    assert sorted(os.listdir(tmp_path)) == []

    # An existing product survives a failed overwrite untouched.
    monkeypatch.setattr(netcdf_writer, "_write", real_write)
    write_product_netcdf(rain_nowcast(seed=0), target)
    before = target.read_bytes()
    monkeypatch.setattr(netcdf_writer, "_write", failing_write)
    with pytest.raises(WriterError):
        write_product_netcdf(rain_nowcast(seed=1), target, overwrite=True)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["rain.nc"]


def test_atomic_write_cleans_up_on_any_exception(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(WriterError, match="nothing was written"), atomic_write(target):
        pass
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(WriterError, match="folder does not exist"), atomic_write(tmp_path / "no" / "x.nc"):
        pass


def _first_value(path: Path) -> float:
    with netCDF4.Dataset(path) as nc:
        return float(nc["rain_rate"][0, 3, 3])


def test_existing_outputs_skip_overwrite_and_repair(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = rain_nowcast(seed=0), rain_nowcast(seed=1)
    a = float(first.variables[0].data[0, 3, 3])
    b = float(second.variables[0].data[0, 3, 3])
    assert a != b
    target = tmp_path / product_filename("nowcast_precip", "deeplabv3plus", REF)
    write_product_netcdf(first, target)
    mtime = target.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="meteovision.pipeline.inference.netcdf_writer"):
        assert write_product_netcdf(second, target) == target
    assert "keeping existing" in caplog.text
    assert target.stat().st_mtime_ns == mtime
    assert _first_value(target) == pytest.approx(a)

    write_product_netcdf(second, target, overwrite=True)
    assert _first_value(target) == pytest.approx(b)

    # A partial (truncated) file, as left by a writer without atomic rename, is rewritten.
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    assert not is_valid_netcdf(target)
    write_product_netcdf(first, target)
    assert is_valid_netcdf(target, ["rain_rate"])
    assert _first_value(target) == pytest.approx(a)
    target.write_bytes(b"")
    assert not is_valid_netcdf(target)
    write_product_netcdf(first, target)
    assert _first_value(target) == pytest.approx(a)
    # A readable file lacking the product's variables is not taken for it.
    assert not is_valid_netcdf(target, ["reflectivity"])
