"""``predict`` on real operational files (``../shared/data``): whole domains, real nodata, real projections.

The checkpoints are tiny nowcast Half-UNets fitted for two batches on synthetic 1 km, 5-min data;
their skill is not the point, the engine is: reading real files, refusing what does not fit,
running the full grid, and writing products on the input grid with nodata where the input has none.

* OPERA (RATE, LAEA 2 km, 15 min): a copy of the synthetic checkpoint whose metadata declares
  the 2 km spacing (same weights) is still refused on the 15-min series because it steps by
  5 min; a copy that also declares the 15-min step then runs on the full 2200 x 1900 domain.
* FMI (DBZH, EPSG:3067, 250 m): the checkpoint records the 1 km spacing it was trained at,
  so the 250 m frames are refused unless ``ignore_grid_spacing`` (``--ignore-grid-spacing``)
  is given; then the full 4963 x 7316 frame is predicted (about 35 s on one CPU thread: marked slow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from meteovision.datasets.conventions import crs_of
from meteovision.datasets.readers import open_dataset
from meteovision.pipeline.checkpoints.loading import load_inference_model
from meteovision.pipeline.inference.inputs import InputMismatchError
from meteovision.pipeline.inference.predict import PredictSettings, predict_sequence
from tests.predict_helpers import Trained, nowcast_checkpoint, only, with_meta

pytestmark = [pytest.mark.realdata, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def rate_nowcast(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("rate")
    trained = nowcast_checkpoint(root)
    return Trained(trained.data, with_meta(trained.checkpoint, root / "rate_2km.ckpt", grid_spacing_m=2000.0))


@pytest.fixture(scope="module")
def dbz_nowcast(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("dbz")
    trained = nowcast_checkpoint(root, app="nowcast_reflectivity", variable="DBZH", transform="clip_dbz",
                                 n_in=2, n_out=1)
    return Trained(trained.data, with_meta(trained.checkpoint, root / "dbz_1km.ckpt", grid_spacing_m=1000.0))


def _files(shared_data: Path, folder: str) -> list[Path]:
    files = sorted((shared_data / "radar" / folder).iterdir())
    assert files, f"no files in {folder}"
    return files


def _check_on_input_grid(product: xr.Dataset, name: str, last_input: Path, variable: str) -> np.ndarray:
    """Same grid and CRS as the input; NaN exactly where the last input frame is nodata, finite elsewhere."""
    with open_dataset(last_input) as src:
        values = src[variable].to_numpy()[0]
        nodata = np.isnan(values)
        np.testing.assert_array_equal(product["x"].values, src["x"].values)
        np.testing.assert_array_equal(product["y"].values, src["y"].values)
        assert pyproj.CRS.from_wkt(product["crs"].attrs["crs_wkt"]).equals(crs_of(src))
        ref = src["time"].values[0]
    out = product[name].values
    assert out.shape[1:] == values.shape
    assert product["forecast_reference_time"].values == ref
    assert 0 < nodata.sum() < nodata.size  # real composites have coverage edges
    for step in out:
        assert np.array_equal(np.isnan(step), nodata)
        assert np.isfinite(step[~nodata]).all()
    return out


def test_opera_nowcast_refuses_a_checkpoint_of_another_time_step(
    shared_data: Path, rate_nowcast: Trained, tmp_path: Path
) -> None:
    files = _files(shared_data, "opera_20180824")[-3:]
    with pytest.raises(InputMismatchError, match=r"opera_20180824: the frames are 15 min apart, but the "
                                                 r"checkpoint's nowcast step is 5 min"):
        predict_sequence(load_inference_model(rate_nowcast.checkpoint), files, PredictSettings(tmp_path))


def test_opera_nowcast_over_the_full_domain(shared_data: Path, rate_nowcast: Trained, tmp_path: Path) -> None:
    files = _files(shared_data, "opera_20180824")[-6:]  # 90 minutes: the latest window is the last 3
    ckpt = with_meta(rate_nowcast.checkpoint, tmp_path / "rate_15min.ckpt", time_step_minutes=15.0)
    settings = PredictSettings(tmp_path / "out", latest_only=True)
    written = only(predict_sequence(load_inference_model(ckpt), files, settings))
    assert [p.name for p in written.inputs] == [p.name for p in files[-3:]]
    assert written.outputs[0].name == "meteovision_nowcast_precip_halfunet_20180824T2345Z.nc"
    with xr.open_dataset(written.outputs[0]) as ds:
        assert ds["rain_rate"].shape == (2, 2200, 1900)
        assert ds["leadtime"].values.tolist() == [15, 30]
        rain = _check_on_input_grid(ds, "rain_rate", files[-1], "RATE")
        assert ds["rain_rate"].attrs["units"] == "mm h-1"
    assert np.nanmin(rain) >= 0.0


def test_fmi_frames_are_refused_at_another_grid_spacing(
    shared_data: Path, dbz_nowcast: Trained, tmp_path: Path
) -> None:
    files = _files(shared_data, "fmi_geotiff_20160928")[:2]
    report = predict_sequence(load_inference_model(dbz_nowcast.checkpoint), files, PredictSettings(tmp_path))
    assert [o.status for o in report.outcomes] == ["failed", "failed"]
    expected = (r"201609281445_FINUTM\.tif: grid spacing 250\.00\d x 250\.01\d m differs from the "
                r"checkpoint's 1000 m .*--ignore-grid-spacing")
    with pytest.raises(InputMismatchError, match=expected):
        report.raise_for_failures()
    assert int(report.exit_code) == 2


@pytest.mark.slow
def test_fmi_nowcast_over_the_full_frame(shared_data: Path, dbz_nowcast: Trained, tmp_path: Path) -> None:
    files = _files(shared_data, "fmi_geotiff_20160928")[:2]
    settings = PredictSettings(tmp_path, ignore_grid_spacing=True)
    written = only(predict_sequence(load_inference_model(dbz_nowcast.checkpoint), files, settings))
    assert written.outputs[0].name == "meteovision_nowcast_reflectivity_halfunet_20160928T1450Z.nc"
    with xr.open_dataset(written.outputs[0]) as ds:
        assert ds["reflectivity"].shape == (1, 7316, 4963)
        assert ds["leadtime"].values.tolist() == [5]
        assert ds["reflectivity"].attrs["units"] == "dBZ"
        _check_on_input_grid(ds, "reflectivity", files[-1], "DBZH")
        assert pyproj.CRS.from_wkt(ds["crs"].attrs["crs_wkt"]).to_epsg() == 3067
