"""One reader contract: ``ReadOptions`` gives the same cells from ODIM, NetCDF and GeoTIFF, and
evaluation's loaded series is what it was before it stopped branching on the format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from meteovision.datasets.errors import MissingVariableError, ReaderError
from meteovision.datasets.readers import ReadOptions, open_dataset
from meteovision.pipeline.verification.evaluate import run_evaluation
from meteovision.pipeline.verification.evaluate_config import load_config
from meteovision.pipeline.verification.radar_series import load_series
from tests.conftest import FMI_XML, NcFile, OdimField, OdimFile, OdimGrid, write_geotiff, write_netcdf, write_odim
from tests.test_readers_reliability import _km_grid, _write_km_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NY, NX = 10, 12


def _codes() -> np.ndarray:
    """uint8 reflectivity codes: nodata 255 in one corner block, undetect 0 in another, echoes elsewhere."""
    raw = (np.arange(NY * NX, dtype=np.int64).reshape(NY, NX) * 7 % 180 + 20).astype(np.uint8)
    raw[:2, :2] = 255
    raw[2:4, 2:3] = 255  # half a block missing
    raw[-2:, -2:] = 0
    return raw


def _dbz(raw: np.ndarray) -> np.ndarray:
    """Physical dBZ of the codes: NaN for nodata (undetect 0 is -32 dBZ, DBZH's no-echo value too)."""
    dbz = raw.astype(np.float64) * 0.5 - 32.0
    dbz[raw == 255] = np.nan
    return dbz


def _three_formats(folder: Path) -> list[Path]:
    raw = _codes()
    grid = OdimGrid(projdef="+proj=utm +zone=35 +ellps=GRS80 +units=m", x0=100_000.0, top=7_000_000.0, dx=250.0,
                    dy=250.0, nx=NX, ny=NY)
    odim = write_odim(folder / "r_201609281500.h5",
                      OdimFile(fields=[OdimField("DBZH", raw, gain=0.5, offset=-32.0, nodata=255, undetect=0)],
                               grid=grid, date="20160928", time="150000"))
    tif = write_geotiff(folder / "f.tif", raw, tags={"GDAL_METADATA": FMI_XML.format(time="201609281500")},
                        crs="EPSG:3067", origin=(100_000.0, 7_000_000.0), res=250.0)
    nc = write_netcdf(folder / "f.nc", NcFile(values=np.where(raw == 0, -32.0, _dbz(raw))[None], name="DBZH",
                                              units="dBZ", standard_name=None, epsg=3067, x=grid.x(), y=grid.y(),
                                              times=("2016-09-28T15:00:00",), packed=False))
    return [odim, tif, nc]


def _block_mean_dbz(dbz: np.ndarray, k: int) -> np.ndarray:
    """Hand-written reference: mean of the valid cells of each k x k block in Z, back to dBZ."""
    h, w = dbz.shape[0] // k, dbz.shape[1] // k
    out = np.full((h, w), np.nan)
    for i in range(h):
        for j in range(w):
            block = dbz[i * k : (i + 1) * k, j * k : (j + 1) * k]
            valid = block[~np.isnan(block)]
            if valid.size:
                out[i, j] = 10 * np.log10(np.mean(10 ** (valid / 10)))
    return out


def test_the_same_options_give_the_same_cells_in_every_format(tmp_path: Path) -> None:
    options = ReadOptions(variables=("DBZH",), window=((1, 9), (2, 11)), coarsen=2, include_quality=False)
    expected = _block_mean_dbz(np.where(_codes() == 0, -32.0, _dbz(_codes()))[1:9, 2:10], 2)
    results = [open_dataset(path, options=options) for path in _three_formats(tmp_path)]
    for ds in results:
        assert list(ds.data_vars) == ["DBZH", "crs"], ds.attrs["source_format"]
        np.testing.assert_allclose(ds["DBZH"].to_numpy()[0], expected, rtol=1e-5, equal_nan=True)
        assert ds["DBZH"].attrs["coarsen_method"] == "mean (linear Z)"
        np.testing.assert_allclose(ds["x"], 100_000.0 + 250.0 * np.array([3.0, 5.0, 7.0, 9.0]))
        np.testing.assert_allclose(ds["y"], 7_000_000.0 - 250.0 * np.array([2.0, 4.0, 6.0, 8.0]))
    bounds = ReadOptions(variables=("DBZH",), window=(100_400.0, 6_997_800.0, 102_700.0, 6_999_700.0), coarsen=2)
    for path in _three_formats(tmp_path):  # bounds in metres select the same cells as the pixel window
        np.testing.assert_allclose(open_dataset(path, options=bounds)["DBZH"].to_numpy()[0], expected, rtol=1e-5,
                                   equal_nan=True)


def test_variables_a_file_lacks_are_refused_by_every_reader(tmp_path: Path) -> None:
    for path in _three_formats(tmp_path):
        with pytest.raises(MissingVariableError) as exc:
            open_dataset(path, options=ReadOptions(variables=("RATE",)))
        assert str(path) in str(exc.value)


def test_webcam_crops_a_pixel_window_and_refuses_what_a_photo_cannot_do(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    path = tmp_path / "cam_202401021205.png"
    Image.fromarray(rgb).save(path)
    ds = open_dataset(path, options=ReadOptions(window=((2, 12), (5, 25))))
    np.testing.assert_array_equal(ds["image"].to_numpy()[0], rgb[2:12, 5:25].transpose(2, 0, 1))
    np.testing.assert_array_equal(ds["x"], np.arange(5, 25))
    for options, message in ((ReadOptions(coarsen=2), "coarsen"), (ReadOptions(window=(0.0, 0.0, 5.0, 5.0)), "map"),
                             (ReadOptions(variables=("RATE",)), "image")):
        with pytest.raises(ReaderError, match=message):
            open_dataset(path, options=options)


def test_open_dataset_without_options_is_unchanged(tmp_path: Path) -> None:
    odim = _three_formats(tmp_path)[0]
    a, b = open_dataset(odim), open_dataset(odim, options=ReadOptions())
    assert list(a.data_vars) == list(b.data_vars)
    np.testing.assert_array_equal(a["DBZH"].to_numpy(), b["DBZH"].to_numpy())
    assert a["DBZH"].shape == (1, NY, NX)


# ----------------------------------------------------------------------------- evaluation's series


def _old_coarsen(values: np.ndarray, k: int) -> np.ndarray:
    """The block mean evaluation applied itself before the readers did it (float64 throughout)."""
    t, h, w = values.shape
    blocks = values[:, : h // k * k, : w // k * k].astype(np.float64).reshape(t, h // k, k, w // k, k)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(2, 4))
    count = valid.sum(axis=(2, 4))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def test_evaluation_series_coarsened_by_the_reader_matches_the_old_block_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    field = rng.gamma(0.5, 2.0, size=(3, 9, 11)).astype(np.float32)
    field[:, :3, :3] = np.nan
    x = 1000.0 * np.arange(11) + 500.0
    y = 9000.0 - 1000.0 * np.arange(9) - 500.0
    for i in range(3):
        stamp = f"2024-01-02T12:{5 * i:02d}:00"
        write_netcdf(tmp_path / f"rate_{i}.nc", NcFile(values=field[i : i + 1], times=(stamp,), x=x, y=y, packed=False))
    cfg = {"name": "coarse", "data_root": str(tmp_path), "inputs": "rate_*.nc", "variable": "RATE",
           "coarsen": 2, "past_frames": 1, "max_lead_minutes": 5, "fss_scales_km": [2], "table_fss_scale_km": 2,
           "methods": ["persistence"], "maps": "none", "output_dir": str(tmp_path / "out")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    series = load_series(load_config(tmp_path / "c.yaml"))
    np.testing.assert_allclose(series.rates, _old_coarsen(field, 2), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(series.x, [1000.0, 3000.0, 5000.0, 7000.0, 9000.0])
    assert series.pixel_size_m == 2000.0


#: sha256 of evaluate's loaded rates and x/y, computed by the code before ReadOptions (commit 944ffe7).
GOLDEN = {
    "evaluate_opera": ("1039898ef47ca87d28764bc714aacafa40ce793b2c682ef168b29bcb9c20da6e",
                       "3a073a72efd80e30fa62cdddb6881b563bca3708a947e13dd44cb8a95472f292", (24, 256, 512)),
    "evaluate_fmi": ("c9edc620f7ca3e101ab596fe4f0897f7432567ba27f785c858f534de366fef4f",
                     "218790d6e1ca487cf783fd576756bc69b3239a27671e753e540eb3eb2c1113be", (16, 1280, 800)),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_evaluation_series_on_real_data_is_bit_for_bit_unchanged(shared_data: Path, tmp_path: Path, name: str) -> None:
    series = load_series(load_config(name, data_root=shared_data, output_dir=tmp_path))
    rates_hash, xy_hash, shape = GOLDEN[name]
    assert series.rates.shape == shape
    assert hashlib.sha256(np.ascontiguousarray(series.rates).tobytes()).hexdigest() == rates_hash
    xy = np.ascontiguousarray(series.x).tobytes() + np.ascontiguousarray(series.y).tobytes()
    assert hashlib.sha256(xy).hexdigest() == xy_hash


def test_evaluate_on_a_km_convention_series_scores_like_metres(tmp_path: Path) -> None:
    """765 x 700 KNMI-style frames (ellipsoid in km, xscale 1.0) and the same frames in metres."""
    (tmp_path / "m").mkdir()
    (tmp_path / "km").mkdir()
    grid = _km_grid(nx=700, ny=765)
    yy, xx = np.mgrid[0:765, 0:700].astype(np.float64)
    for i in range(4):
        rain = 20.0 * np.exp(-((yy - 300) ** 2 + (xx - 200 - 15 * i) ** 2) / 3000.0)
        _write_km_pair(tmp_path, f"2024010212{5 * i:02d}", np.round(rain / 0.01).astype(np.uint16), grid)
    results = []
    for sub in ("m", "km"):
        cfg = {"name": sub, "data_root": str(tmp_path / sub), "inputs": "*.h5", "variable": "RATE",
               "time_step_minutes": 5, "past_frames": 3, "max_lead_minutes": 5, "fss_scales_km": [1, 8],
               "table_fss_scale_km": 8, "thresholds": [1.0, 5.0], "fss_threshold": 1.0, "methods": ["persistence"],
               "maps": "none", "output_dir": str(tmp_path / f"out_{sub}")}
        (tmp_path / f"{sub}.yaml").write_text(yaml.safe_dump(cfg))
        results.append(run_evaluation(load_config(tmp_path / f"{sub}.yaml")))
    metres, km = results
    assert km.series.pixel_size_m == pytest.approx(1000.0)
    assert km.series.rates.shape == (4, 765, 700)
    scores_m = {(sc.lead_index, sc.metric): sc.value for sc in metres.accumulators["persistence"].scores()}
    scores_km = {(sc.lead_index, sc.metric): sc.value for sc in km.accumulators["persistence"].scores()}
    assert scores_m.keys() == scores_km.keys() and len(scores_m) > 4
    for key, value in scores_m.items():
        assert scores_km[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
