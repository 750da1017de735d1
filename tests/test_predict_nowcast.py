"""The predict stage for nowcasts (lead times, gaps, latest window), CF compliance and open_mfdataset.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from meteovision.pipeline.checkpoints.loading import load_inference_model
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast
from meteovision.pipeline.cli import main
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.inputs import InputMismatchError
from meteovision.pipeline.inference.predict import (
    PredictError,
    PredictSettings,
    predict_files,
    predict_sequence,
    prepare_model,
    run_prediction,
)
from meteovision.pipeline.inference.tiling import predict_domain
from tests.predict_helpers import (
    SAMPLE,
    Trained,
    bow,
    checker,
    nowcast,
    only,
    product,
    read_fields,
    sat,
    webcam,
    write_rate,
)
from tests.product_helpers import run_cf_checker

__all__ = ["bow", "checker", "nowcast", "sat", "webcam"]  # module-scoped fixtures, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _series(trained: Trained, event: int, count: int) -> list[Path]:
    files = trained.inputs("radar")
    per_event = SAMPLE.frames_per_event
    return files[event * per_event : event * per_event + count]


def test_nowcast_has_lead_times_reference_time_and_the_models_values(
    nowcast: Trained, tmp_path: Path
) -> None:
    model = load_inference_model(nowcast.checkpoint)
    frames = []
    for i, path in enumerate(_series(nowcast, 1, 3)):
        time, fields = read_fields(path, ["RATE"])
        rate = fields["RATE"]
        if i == 0:
            rate[0:6, 0:6] = np.nan  # nodata in an earlier frame only: not masked in the output
        if i == 2:
            rate[40:48, 10:20] = np.nan  # nodata in the last frame: masked
        frames.append((time, read_fields(write_rate(tmp_path / "in" / path.name, time, rate), ["RATE"])[1]))
    settings = PredictSettings(tmp_path / "out")
    written = only(predict_sequence(model, sorted((tmp_path / "in").iterdir()), settings))
    ref = frames[-1][0]
    assert written.unit == f"nowcast {ref:%Y-%m-%dT%H:%M}Z"
    assert [p.name for p in written.inputs] == [p.name for p in _series(nowcast, 1, 3)]

    stats = model.meta.normalization
    assert stats.transforms == ("log10_rain",)
    stack = np.stack([f["RATE"] for _, f in frames])
    dbr = np.where(stack >= 0.1, 10 * np.log10(np.maximum(stack, 0.1)), -15.0)
    z = np.where(np.isnan(stack), 0.0, (dbr - stats.mean[0]) / stats.std[0]).astype(np.float32)
    tiling = prepare_model(model, settings)
    if isinstance(model.net, AdvectionNowcast):  # local part tile by tile, one advection over the domain
        fields = torch.from_numpy(predict_domain(model.net.motion_fields, z, tiling))[None]
        with torch.no_grad():
            raw = model.net.advect_fields(fields, model.net.lead_times)[0].numpy()
    else:
        raw = predict_domain(model.net, z, tiling)
    dbr_out = raw * stats.std[0] + stats.mean[0]
    rain = np.where(dbr_out < -10.0, 0.0, 10.0 ** (dbr_out / 10.0))
    last_nodata = np.isnan(stack[-1])
    expected = np.where(last_nodata[None], np.nan, rain)

    ds = product(written.outputs[0])
    assert ds["rain_rate"].dims == ("leadtime", "y", "x")
    assert ds["leadtime"].values.tolist() == [5, 10]
    assert ds["forecast_reference_time"].values == np.datetime64(ref)
    np.testing.assert_array_equal(ds["time"].values, np.datetime64(ref) + np.array([5, 10], "timedelta64[m]"))
    np.testing.assert_allclose(ds["rain_rate"].values, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.isfinite(ds["rain_rate"].values[:, 0:6, 0:6]).all()
    assert ds["rain_rate"].attrs["units"] == "mm h-1"


def test_nowcast_refuses_windows_with_a_gap_and_makes_the_others(nowcast: Trained, tmp_path: Path) -> None:
    event1 = _series(nowcast, 0, 6)
    event2 = _series(nowcast, 1, 4)
    files = [p for i, p in enumerate(event1) if i != 2] + event2  # frame 2 of event 1 is missing
    report = predict_sequence(load_inference_model(nowcast.checkpoint), files, PredictSettings(tmp_path))
    t = [read_fields(p, [])[0] for p in event1]
    failed = {o.unit: o.reason for o in report.failed}
    assert sorted(failed) == [f"nowcast {t[3]:%Y-%m-%dT%H:%M}Z", f"nowcast {t[4]:%Y-%m-%dT%H:%M}Z"]
    assert f"no valid frame at {t[2]:%Y-%m-%dT%H:%M}Z" in failed[f"nowcast {t[3]:%Y-%m-%dT%H:%M}Z"]
    # event 1: only frame 5 has a complete window; event 2 (days later) starts a new segment: frames 2, 3
    assert len(report.written) == 3
    assert report.exit_code == ExitCode.PARTIAL_FAILURE


def test_nowcast_latest_only_and_too_short_series(nowcast: Trained, tmp_path: Path) -> None:
    model = load_inference_model(nowcast.checkpoint)
    files = _series(nowcast, 2, 6)
    latest = only(predict_sequence(model, files, PredictSettings(tmp_path / "a", latest_only=True)))
    assert latest.inputs == tuple(files[-3:])
    short = predict_sequence(model, files[:2], PredictSettings(tmp_path / "b"))
    assert short.outcomes == () and short.exit_code == ExitCode.NOTHING_TO_DO


def test_nowcast_refuses_a_series_coarser_than_its_step(nowcast: Trained, tmp_path: Path) -> None:
    files = _series(nowcast, 0, 6)[::3]  # 15 min apart, the checkpoint steps by 5 min
    with pytest.raises(InputMismatchError, match=r"15 min apart, but the checkpoint's nowcast step is 5 min"):
        predict_sequence(load_inference_model(nowcast.checkpoint), files, PredictSettings(tmp_path))
    code = main(["predict", "--checkpoint", str(nowcast.checkpoint), "--input", *map(str, files),
                 "--output", str(tmp_path / "cli")])
    assert code == ExitCode.USAGE_ERROR


def test_nowcast_checkpoint_is_run_on_series_only(nowcast: Trained, bow: Trained, tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="nowcast"):
        predict_files(load_inference_model(nowcast.checkpoint), [], PredictSettings(tmp_path))
    with pytest.raises(PredictError, match="segmentation"):
        predict_sequence(load_inference_model(bow.checkpoint), [], PredictSettings(tmp_path))


# ----------------------------------------------------------------------------- CF and folders


@pytest.mark.filterwarnings("ignore:The ioos_sos checker:DeprecationWarning")
@pytest.mark.parametrize("app", ["bow_echo", "nowcast_precip", "sat2precip"])
def test_products_pass_the_cf_checker(app: str, request: pytest.FixtureRequest, tmp_path: Path,
                                      checker: Any) -> None:
    trained: Trained = request.getfixturevalue({"bow_echo": "bow", "nowcast_precip": "nowcast",
                                                "sat2precip": "sat"}[app])
    sub = "satellite" if app == "sat2precip" else "radar"
    model = load_inference_model(trained.checkpoint)
    report = run_prediction(model, trained.inputs(sub)[:3], PredictSettings(tmp_path, latest_only=True))
    path = report.written[-1].outputs[0]
    passed, failures, report_doc = run_cf_checker(checker, path)
    assert passed and not failures, json.dumps(report_doc, indent=1)[:20000]
    assert report_doc["high_count"] == 0


def test_open_mfdataset_opens_the_output_folders(bow: Trained, nowcast: Trained, tmp_path: Path) -> None:
    pytest.importorskip("dask")
    model = load_inference_model(bow.checkpoint)
    predict_files(model, bow.inputs("radar")[:3], PredictSettings(tmp_path / "a"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with xr.open_mfdataset(str(tmp_path / "a" / "*.nc"), combine="by_coords") as ds:
            assert ds["bow_echo_probability"].dims == ("time", "y", "x")
            assert ds.sizes["time"] == 3 and ds.sizes["y"] == 48
    predict_sequence(load_inference_model(nowcast.checkpoint), _series(nowcast, 0, 5),
                     PredictSettings(tmp_path / "n"))
    with xr.open_mfdataset(str(tmp_path / "n" / "*.nc"), combine="nested",
                           concat_dim="forecast_reference_time", data_vars="all", coords="different",
                           compat="equals", join="exact") as ds:
        assert ds["rain_rate"].dims == ("forecast_reference_time", "leadtime", "y", "x")
        assert ds.sizes["forecast_reference_time"] == 3 and ds.sizes["leadtime"] == 2
