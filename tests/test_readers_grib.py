"""GRIB2 reader: small files written here with ecCodes, bad files, and one real MRMS frame."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import eccodes
import numpy as np
import pytest

from meteovision.datasets.conventions import crs_of
from meteovision.datasets.errors import CorruptFileError, MissingVariableError
from meteovision.datasets.readers import detect_format, open_dataset
from meteovision.datasets.readers.grib import read_grib

#: 3 rows (lat 50, 49, 48) x 4 columns (lon 5..8), row-major from the north-west corner.
VALUES = np.array([[0.0, 1.5, 2.0, 9999.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]])


def write_grib(
    path: Path, values: np.ndarray = VALUES, *, local: bool = False, west: float = 5.0, bitmap: bool = True
) -> Path:
    """A GRIB2 message on a 1-degree grid from ecCodes' sample; 9999 is the bitmap's missing value."""
    h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
    try:
        nj, ni = values.shape
        settings = {
            "Ni": ni, "Nj": nj,
            "latitudeOfFirstGridPointInDegrees": 50.0, "latitudeOfLastGridPointInDegrees": 50.0 - (nj - 1),
            "longitudeOfFirstGridPointInDegrees": west, "longitudeOfLastGridPointInDegrees": west + ni - 1,
            "iDirectionIncrementInDegrees": 1.0, "jDirectionIncrementInDegrees": 1.0,
            "dataDate": 20240601, "dataTime": 1200, "bitsPerValue": 16,
        }
        if local:
            settings.update({"centre": 161, "discipline": 209, "parameterCategory": 6, "parameterNumber": 1})
        for key, value in settings.items():
            eccodes.codes_set(h, key, value)
        if bitmap:
            eccodes.codes_set(h, "missingValue", 9999.0)
            eccodes.codes_set(h, "bitmapPresent", 1)
        eccodes.codes_set_values(h, values.ravel())
        with open(path, "wb") as fh:
            eccodes.codes_write(h, fh)
    finally:
        eccodes.codes_release(h)
    return path


def test_written_grib_reads_back_with_grid_time_units_and_missing(tmp_path: Path) -> None:
    path = write_grib(tmp_path / "t.grib2")
    assert detect_format(path) == "grib2"
    ds = open_dataset(path)
    t = ds["t"]
    assert t.dims == ("time", "y", "x") and t.attrs["units"] == "K"
    assert t.attrs["standard_name"] == "air_temperature"
    np.testing.assert_allclose(ds["x"].values, [5.0, 6.0, 7.0, 8.0])
    np.testing.assert_allclose(ds["y"].values, [50.0, 49.0, 48.0])
    assert ds["x"].attrs["units"] == "degrees_east"
    assert ds["time"].values[0] == np.datetime64("2024-06-01T12:00", "ns")
    expected = VALUES.copy()
    expected[0, 3] = np.nan  # the bitmap's missing cell
    np.testing.assert_allclose(t.values[0], expected, atol=1e-3)
    assert crs_of(ds).is_geographic
    assert crs_of(ds).ellipsoid.semi_major_metre == 6371229.0  # shapeOfTheEarth 6 of the sample


def test_window_coarsen_and_east_longitudes(tmp_path: Path) -> None:
    path = write_grib(tmp_path / "w.grib2", west=355.0, bitmap=False, values=VALUES[:, :3].copy())
    ds = read_grib(path, window=(slice(0, 2), slice(1, 3)))
    np.testing.assert_allclose(ds["x"].values, [-4.0, -3.0])  # 356, 357 degrees east read as west
    np.testing.assert_allclose(ds["t"].values[0], [[1.5, 2.0], [5.0, 6.0]], atol=1e-3)
    coarse = read_grib(path, window=(slice(0, 2), slice(1, 3)), coarsen=2)
    np.testing.assert_allclose(coarse["t"].values[0], [[(1.5 + 2.0 + 5.0 + 6.0) / 4]], atol=1e-3)
    np.testing.assert_allclose(coarse["x"].values, [-3.5])


def test_local_mrms_parameter_sentinels_become_nan(tmp_path: Path) -> None:
    rates = np.array([[0.0, -3.0, 2.5], [-1.0, 1.0, 0.2]])
    ds = read_grib(write_grib(tmp_path / "m.grib2", rates, local=True, bitmap=False))
    rate = ds["PrecipRate"]
    assert rate.attrs["units"] == "mm h-1" and rate.attrs["quantity"] == "RATE"
    np.testing.assert_allclose(rate.values[0], [[0.0, np.nan, 2.5], [np.nan, 1.0, 0.2]], atol=1e-3)


def test_undocumented_negative_rate_is_refused(tmp_path: Path) -> None:
    rates = np.array([[0.0, -2.0, 2.5], [1.0, 1.0, 0.2]])
    with pytest.raises(CorruptFileError, match="no documented sentinel"):
        read_grib(write_grib(tmp_path / "m.grib2", rates, local=True, bitmap=False))


def test_unknown_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingVariableError, match="not in this GRIB file"):
        read_grib(write_grib(tmp_path / "t.grib2"), variables=["tp"])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty file"),
        (b"GRIB\x00\x00\x00\x02" + b"\x00" * 7 + b"\xff" + b"garbage" * 10, "truncated GRIB file"),
        (b"GRIB", "section 0 incomplete"),
    ],
)
def test_bad_grib_files_raise_named_errors(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.grib2"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=match):
        open_dataset(path, format="grib2")


def test_truncated_and_garbled_real_messages(tmp_path: Path) -> None:
    good = write_grib(tmp_path / "t.grib2").read_bytes()
    cut = tmp_path / "cut.grib2"
    cut.write_bytes(good[: len(good) - 10])
    with pytest.raises(CorruptFileError, match="truncated"):
        open_dataset(cut)
    trailing = tmp_path / "trailing.grib2"
    trailing.write_bytes(good + b"not a grib message")
    with pytest.raises(CorruptFileError, match="no GRIB message at byte"):
        open_dataset(trailing)
    garbled = tmp_path / "garbled.grib2"
    garbled.write_bytes(good[:-4] + b"XXXX")
    with pytest.raises(CorruptFileError, match="7777"):
        open_dataset(garbled)


@pytest.mark.realdata
def test_mrms_frame_window(shared_data: Path) -> None:
    path = shared_data / "radar" / "mrms_20190610" / "PrecipRate_00.00_20190610-000000.grib2"
    ds = open_dataset(path, window=(-100.0, 30.0, -90.0, 40.0))
    rate = ds["PrecipRate"]
    assert rate.shape == (1, 1000, 1000) and rate.attrs["units"] == "mm h-1"
    assert ds["time"].values[0] == np.datetime64("2019-06-10T00:00", "ns")
    np.testing.assert_allclose(ds["x"].values[[0, -1]], [-99.995, -90.005], atol=1e-6)
    np.testing.assert_allclose(ds["y"].values[[0, -1]], [39.995, 30.005], atol=1e-6)
    values = rate.values
    assert np.nanmin(values) == 0.0 and 10.0 < np.nanmax(values) < 300.0


@pytest.mark.realdata
def test_summary_cli_prints_mrms_grid_units_time(shared_data: Path) -> None:
    path = shared_data / "radar" / "mrms_20190610" / "PrecipRate_00.00_20190610-000000.grib2"
    out = subprocess.run(
        [sys.executable, "-m", "meteovision.pipeline.cli", "summary", str(path)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    assert "format: grib2" in out
    assert "3500 x 7000 (y x), dx 0.01 degrees_east" in out
    assert "x -129.995..-60.005 degrees_east, y 20.005..54.995 degrees_north" in out
    assert "time: 2019-06-10T00:00Z" in out
    assert "PrecipRate [mm h-1]" in out


def test_a_grib_grid_over_the_size_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    """The ReadOptions contract: max_cells is honoured by the GRIB reader too, with the named error."""
    from meteovision.datasets.errors import SizeLimitError
    from meteovision.datasets.readers.options import ReadOptions

    path = write_grib(tmp_path / "small.grib2")
    with pytest.raises(SizeLimitError, match="max_cells"):
        read_grib(path, options=ReadOptions(max_cells=10))
