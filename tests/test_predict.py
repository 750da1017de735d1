"""The predict stage: values written equal the model's output, nodata masked, CF-compliant, refusals, reruns.

Checkpoints come from one-epoch, two-batch fits of tiny Half-UNets (and a ResNet18 for webcams)
on small synthetic sample data, built once per module: their skill is irrelevant, the tests
check that what ``predict`` writes is exactly what the network computes.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import netCDF4
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import xarray as xr

from meteovision.datasets.datamodules import (
    ClassificationDataModule,
    RegressionDataModule,
    SegmentationDataModule,
    SequenceDataModule,
)
from meteovision.datasets.readers import open_dataset
from meteovision.datasets.synthetic import SampleSettings, generate_sample_data
from meteovision.datasets.synthetic.grids import Grid, radar_grid, satellite_grid
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf, write_odim_composite
from meteovision.datasets.torch_datasets import resize_image
from meteovision.pipeline.checkpoints.loading import CHECKPOINT_KEY, CheckpointMetadata, load_inference_model
from meteovision.pipeline.cli import main
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.inputs import InputMismatchError, expand_inputs
from meteovision.pipeline.inference.predict import (
    PRECISIONS,
    Outcome,
    PredictError,
    PredictReport,
    PredictSettings,
    Status,
    predict_file,
    predict_files,
    predict_sequence,
    prepare_model,
    run_prediction,
)
from meteovision.pipeline.inference.tiling import predict_domain
from meteovision.pipeline.training.tasks import ClassificationTask, NowcastTask, RegressionTask, SegmentationTask
from tests.test_netcdf_writer import run_cf_checker

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = SampleSettings(size=48, events=3, frames_per_event=6)
HALFUNET = {"num_filters": 4, "depth": 2}


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Trained:
    """A sample-data folder and a checkpoint fitted on it."""

    data: Path
    checkpoint: Path

    def inputs(self, sub: str) -> list[Path]:
        return sorted((self.data / sub).iterdir())


def fit_checkpoint(task: L.LightningModule, dm: L.LightningDataModule, path: Path) -> Path:
    """One epoch of two batches on CPU, then ``save_checkpoint`` (what ``meteovision fit`` writes)."""
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on few workers / small datasets
        trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


def bow_checkpoint(root: Path) -> Trained:
    data = root / "bow_echo"
    generate_sample_data("bow_echo", data, seed=1, settings=SAMPLE)
    task = SegmentationTask(application="bow_echo", model="halfunet", model_settings=HALFUNET, baseline=None)
    dm = SegmentationDataModule(data_dir=str(data), patch_size=32, batch_size=4, input_variables=["RATE"],
                                target_variable="bow_echo_mask", transforms={"RATE": "log1p"})
    return Trained(data, fit_checkpoint(task, dm, root / "bow.ckpt"))


def nowcast_checkpoint(root: Path, app: str = "nowcast_precip", variable: str = "RATE",
                       transform: str = "log10_rain", n_in: int = 3, n_out: int = 2) -> Trained:
    data = root / app
    generate_sample_data(app, data, seed=1, settings=SAMPLE)
    task = NowcastTask(application=app, model="halfunet", model_settings=HALFUNET, baseline=None)
    dm = SequenceDataModule(data_dir=str(data), variables=[variable], num_input_frames=n_in,
                            num_output_frames=n_out, patch_size=32, batch_size=4,
                            transforms={variable: transform})
    return Trained(data, fit_checkpoint(task, dm, root / f"{app}.ckpt"))


def sat2precip_checkpoint(root: Path) -> Trained:
    data = root / "sat2precip"
    generate_sample_data("sat2precip", data, seed=1, settings=SAMPLE)
    task = RegressionTask(application="sat2precip", model="halfunet", model_settings=HALFUNET, baseline=None)
    dm = RegressionDataModule(data_dir=str(data), patch_size=32, batch_size=4, transforms={"RATE": "log1p"})
    return Trained(data, fit_checkpoint(task, dm, root / "sat2precip.ckpt"))


def webcam_checkpoint(root: Path) -> Trained:
    data = root / "webcam_snow"
    settings = SampleSettings(events=3, frames_per_event=3, cameras=2, image_height=32, image_width=48)
    generate_sample_data("webcam_snow", data, seed=1, settings=settings)
    task = ClassificationTask(application="webcam_snow", model="resnet18", baseline=None)
    dm = ClassificationDataModule(data_dir=str(data), image_size=32, batch_size=4)
    return Trained(data, fit_checkpoint(task, dm, root / "webcam.ckpt"))


def with_meta(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of checkpoint ``src`` whose meteovision metadata has ``changes`` (weights unchanged)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    raw = ckpt[CHECKPOINT_KEY]
    for key, value in changes.items():  # a network field lives under "network" (format 2)
        (raw["network"] if key in raw["network"] else raw)[key] = value
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def bow(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return bow_checkpoint(tmp_path_factory.mktemp("bow"))


@pytest.fixture(scope="module")
def nowcast(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return nowcast_checkpoint(tmp_path_factory.mktemp("nowcast"))


@pytest.fixture(scope="module")
def sat(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return sat2precip_checkpoint(tmp_path_factory.mktemp("sat"))


@pytest.fixture(scope="module")
def webcam(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return webcam_checkpoint(tmp_path_factory.mktemp("webcam"))


@pytest.fixture(scope="module")
def checker() -> Any:
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    return ComplianceChecker


# ----------------------------------------------------------------------------- helpers


def read_fields(path: Path, names: list[str]) -> tuple[datetime, dict[str, np.ndarray]]:
    """Time (naive UTC) and ``[H, W]`` float32 fields of a reader dataset."""
    with open_dataset(path) as ds:
        t = pd.Timestamp(ds["time"].to_numpy()[0]).to_pydatetime()
        fields = {n: ds[n].to_numpy()[0].astype(np.float32) for n in names}
    return t, fields


def write_rate(path: Path, time: datetime, rate: np.ndarray) -> Path:
    """An ODIM_H5 RATE composite on the synthetic 48 x 48 radar grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_odim_composite(path, time, radar_grid(48), {"RATE": rate})
    return path


def product(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def only(report: PredictReport, status: str = "written") -> Outcome:
    assert [o.status for o in report.outcomes] == [status], report.outcomes
    return report.outcomes[0]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# ----------------------------------------------------------------------------- reports and inputs


def test_exit_codes_follow_the_outcomes() -> None:
    ok = Outcome("a", Status.WRITTEN)
    skipped = Outcome("b", Status.SKIPPED)
    broken = Outcome("c", Status.FAILED, reason="corrupt", error=OSError("corrupt"))
    refused = Outcome("d", Status.FAILED, reason="units", error=InputMismatchError("d.h5", "units"))
    assert PredictReport().exit_code == ExitCode.NOTHING_TO_DO == 3
    assert PredictReport((ok, skipped)).exit_code == ExitCode.OK == 0
    assert PredictReport((skipped, skipped)).exit_code == ExitCode.NOTHING_TO_DO
    assert PredictReport((ok, broken)).exit_code == ExitCode.PARTIAL_FAILURE == 1
    assert PredictReport((broken,)).exit_code == ExitCode.PARTIAL_FAILURE
    assert PredictReport((refused, refused)).exit_code == ExitCode.USAGE_ERROR == 2
    assert PredictReport((ok, refused)).exit_code == ExitCode.PARTIAL_FAILURE
    assert PredictReport((refused, broken)).exit_code == ExitCode.PARTIAL_FAILURE
    with pytest.raises(InputMismatchError, match=r"d\.h5: units"):
        PredictReport((ok, refused)).raise_for_failures()
    assert PredictReport((ok, broken)).summary().startswith("1 written, 0 skipped (output exists), 1 failed")
    assert Outcome("e", "failed").status is Status.FAILED  # a plain value is turned into the enum
    with pytest.raises(ValueError, match="'done' is not a valid Status"):
        Outcome("f", "done")  # type: ignore[arg-type]


def test_expand_inputs_takes_files_folders_and_globs(tmp_path: Path) -> None:
    for name in ("b.h5", "a.h5", "c.nc", ".a.h5.0123.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    files, missing = expand_inputs([tmp_path, str(tmp_path / "*.h5"), tmp_path / "absent.h5",
                                    str(tmp_path / "none*.h5")])
    assert [p.name for p in files] == ["a.h5", "b.h5", "c.nc"]  # folder: visible files; glob adds nothing new
    assert missing == [tmp_path / "absent.h5"]
    files, _ = expand_inputs([str(tmp_path / "*.nc"), tmp_path / "a.h5"])
    assert [p.name for p in files] == ["c.nc", "a.h5"]


def test_settings_refuse_bad_values(tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="format"):
        PredictSettings(tmp_path, format="grib")
    with pytest.raises(PredictError, match="threshold"):
        PredictSettings(tmp_path, threshold=1.0)
    with pytest.raises(PredictError, match="device"):
        PredictSettings(tmp_path, device="tpu")
    with pytest.raises(PredictError, match=r"precision 'fp16' unknown; choose one of auto, 32, bf16"):
        PredictSettings(tmp_path, precision="fp16")  # type: ignore[arg-type]


def test_precision_resolves_per_device(tmp_path: Path) -> None:
    """auto: bf16 autocast on CUDA only; bf16 on any device; 32 never (settings only: no GPU needed)."""
    resolved = {(precision, device): (PredictSettings(tmp_path, device=device, precision=precision).autocast_dtype,
                                      PredictSettings(tmp_path, device=device, precision=precision).precision_used)
                for precision in PRECISIONS for device in ("cpu", "cuda:1")}
    assert resolved == {("auto", "cpu"): (None, "32"), ("auto", "cuda:1"): (torch.bfloat16, "bf16"),
                        ("32", "cpu"): (None, "32"), ("32", "cuda:1"): (None, "32"),
                        ("bf16", "cpu"): (torch.bfloat16, "bf16"), ("bf16", "cuda:1"): (torch.bfloat16, "bf16")}
    assert PredictSettings(tmp_path).precision == "auto"


def test_bad_precision_on_the_command_line_is_a_usage_error(
    bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", str(bow.checkpoint), "--input", str(bow.inputs("radar")[0]),
              "--output", str(tmp_path), "--precision", "fp16"])
    assert exit_info.value.code == ExitCode.USAGE_ERROR
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_writes_the_models_probability_and_mask_with_nodata(
    bow: Trained, tmp_path: Path
) -> None:
    time, fields = read_fields(bow.inputs("radar")[3], ["RATE"])
    rate = fields["RATE"]
    rate[5:12, 20:31] = np.nan  # a hole in the radar coverage
    src = write_rate(tmp_path / "in" / "hole.h5", time, rate)
    rate = read_fields(src, ["RATE"])[1]["RATE"]  # the values as the reader gives them back

    model = load_inference_model(bow.checkpoint)
    settings = PredictSettings(tmp_path / "out")
    written = only(predict_file(model, src, settings))
    assert [p.name for p in written.outputs] == ["meteovision_bow_echo_halfunet_" + f"{time:%Y%m%dT%H%M}Z.nc"]

    # the same forward pass by hand: log1p transform, standardise, NaN -> 0, tiled network, sigmoid
    stats = model.meta.normalization
    z = (np.log1p(np.maximum(rate, 0.0)) - stats.mean[0]) / stats.std[0]
    z = np.where(np.isnan(z), 0.0, z).astype(np.float32)[None]
    raw = predict_domain(model.net, z, prepare_model(model, settings))[0]
    nodata = np.isnan(rate)
    expected = np.where(nodata, np.nan, sigmoid(raw))

    ds = product(written.outputs[0])
    prob = ds["bow_echo_probability"].values[0]
    mask = ds["bow_echo_mask"].values[0]
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-6, equal_nan=True)
    assert np.array_equal(np.isnan(prob), nodata) and nodata.sum() == 7 * 11
    np.testing.assert_array_equal(mask[~nodata], (expected[~nodata] >= 0.5).astype(np.float64))
    assert np.isnan(mask[nodata]).all()
    assert ds["bow_echo_mask"].attrs["flag_meanings"] == "no_bow_echo bow_echo"
    assert ds["bow_echo_probability"].attrs["units"] == "1"
    with netCDF4.Dataset(written.outputs[0]) as nc:
        assert nc["bow_echo_mask"].dtype == np.int8
        assert nc["bow_echo_probability"].dtype == np.float32
        assert list(nc["bow_echo_mask"].flag_values) == [0, 1]
        assert nc.meteovision_checkpoint_sha256 == model.sha256
        assert json.loads(nc.meteovision_input_files) == ["hole.h5"]
        config = json.loads(nc.meteovision_config)
    assert config["threshold"] == 0.5 and config["input_variables"] == ["RATE"]
    assert config["checkpoint"] == "bow.ckpt" and config["input_transforms"] == ["log1p"]
    assert (config["precision"], config["precision_requested"]) == ("32", "auto")  # auto: float32 on the CPU


def test_threshold_moves_the_mask(bow: Trained, tmp_path: Path) -> None:
    model = load_inference_model(bow.checkpoint)
    src = bow.inputs("radar")[0]
    low = only(predict_file(model, src, PredictSettings(tmp_path / "low", threshold=0.05))).outputs[0]
    high = only(predict_file(model, src, PredictSettings(tmp_path / "high", threshold=0.95))).outputs[0]
    a, b = product(low), product(high)
    np.testing.assert_array_equal(a["bow_echo_mask"].values, (a["bow_echo_probability"].values >= 0.05))
    np.testing.assert_array_equal(b["bow_echo_mask"].values, (b["bow_echo_probability"].values >= 0.95))


def test_bf16_on_the_cpu_stays_close_to_float32_and_is_recorded(bow: Trained, tmp_path: Path) -> None:
    """``--precision bf16`` runs bf16 autocast on the CPU: probabilities within 0.05, still float32 on disk."""
    src = bow.inputs("radar")[3]
    assert main(["predict", "--checkpoint", str(bow.checkpoint), "--input", str(src),
                 "--output", str(tmp_path / "bf16"), "--precision", "bf16"]) == ExitCode.OK
    model = load_inference_model(bow.checkpoint)
    f32 = only(predict_file(model, src, PredictSettings(tmp_path / "f32", precision="32"))).outputs[0]
    (bf16,) = (tmp_path / "bf16").glob("*.nc")
    assert bf16.name == f32.name

    p32, p16 = (product(path)["bow_echo_probability"].values for path in (f32, bf16))
    valid = ~np.isnan(p32)
    assert np.array_equal(valid, ~np.isnan(p16)) and valid.sum() > 1000
    diff = np.abs(p32[valid] - p16[valid])
    assert 0 < diff.max() < 0.05  # different arithmetic really ran, and it stays close
    assert diff.mean() < 0.01
    configs = {}
    for name, path in (("32", f32), ("bf16", bf16)):
        with netCDF4.Dataset(path) as nc:
            assert nc["bow_echo_probability"].dtype == np.float32
            assert nc["bow_echo_mask"].dtype == np.int8
            configs[name] = json.loads(nc.meteovision_config)
    assert (configs["bf16"]["precision"], configs["bf16"]["precision_requested"]) == ("bf16", "bf16")
    assert configs["bf16"]["tiling"]["autocast"] == "torch.bfloat16"
    assert (configs["32"]["precision"], configs["32"]["precision_requested"]) == ("32", "32")
    assert configs["32"]["tiling"]["autocast"] == "none"


def test_geotiff_holds_the_same_values_on_the_input_grid(bow: Trained, tmp_path: Path) -> None:
    model = load_inference_model(bow.checkpoint)
    src = bow.inputs("radar")[1]
    nc_path = only(predict_file(model, src, PredictSettings(tmp_path / "nc"))).outputs[0]
    tif = only(predict_file(model, src, PredictSettings(tmp_path / "tif", format="geotiff"))).outputs[0]
    assert tif.suffix == ".tif"
    ds = product(nc_path)
    with rasterio.open(tif) as r, open_dataset(src) as inp:
        assert r.count == 2 and (r.height, r.width) == (48, 48)
        assert r.descriptions[0].startswith("bow_echo_probability")
        np.testing.assert_array_equal(r.read(1), ds["bow_echo_probability"].values[0])
        np.testing.assert_array_equal(r.read(2), ds["bow_echo_mask"].values[0])
        assert r.transform.c == pytest.approx(float(inp.x[0]) - 500.0)
        assert r.crs.to_wkt() and rasterio.crs.CRS.from_wkt(inp["crs"].attrs["crs_wkt"]) == r.crs


def test_quicklooks_are_written_on_request(bow: Trained, tmp_path: Path) -> None:
    model = load_inference_model(bow.checkpoint)
    out = only(predict_file(model, bow.inputs("radar")[2], PredictSettings(tmp_path, quicklook=True))).outputs
    assert sorted(p.suffix for p in out) == [".nc", ".png", ".png"]
    for png in out[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stem.endswith(("_bow_echo_probability", "_bow_echo_mask"))


# ----------------------------------------------------------------------------- regression


def test_regression_writes_the_models_rain_rate_in_mm_per_hour(sat: Trained, tmp_path: Path) -> None:
    names = ["IR_108", "WV_062", "IR_120", "VIS_006"]
    src_file = sat.inputs("satellite")[4]
    time, fields = read_fields(src_file, names)
    fields["VIS_006"][30:40, 2:9] = np.nan  # one channel missing is enough to mask the output
    with open_dataset(src_file) as ds:
        units = {n: ds[n].attrs["units"] for n in names}
        grid = satellite_grid(48)  # the grid the sample data was written on
        np.testing.assert_allclose(ds["x"].to_numpy(), grid.x())
    src = tmp_path / "in" / "sat.nc"
    src.parent.mkdir()
    write_cf_netcdf(src, time, grid, [CfVariable(n, fields[n], units[n], n) for n in names], "test", "test")

    model = load_inference_model(sat.checkpoint)
    settings = PredictSettings(tmp_path / "out")
    written = only(predict_file(model, src, settings))
    z = np.stack([fields[n] for n in names])
    stats = model.meta.normalization
    for c in range(4):
        assert stats.transforms[c] == "none"
        z[c] = (z[c] - stats.mean[c]) / stats.std[c]
    z = np.where(np.isnan(z), 0.0, z).astype(np.float32)
    raw = predict_domain(model.net, z, prepare_model(model, settings))[0]
    target = model.meta.target_normalization
    assert target.transforms == ("log1p",)
    rain = np.maximum(np.expm1(raw * target.std[0] + target.mean[0]), 0.0)
    nodata = np.isnan(fields["VIS_006"])
    ds = product(written.outputs[0])
    got = ds["rain_rate"].values[0]
    np.testing.assert_allclose(got, np.where(nodata, np.nan, rain), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.nanmin(got) >= 0.0 and np.isfinite(got[~nodata]).all()
    assert ds["rain_rate"].attrs["units"] == "mm h-1"
    assert ds["rain_rate"].attrs["standard_name"] == "lwe_precipitation_rate"


# ----------------------------------------------------------------------------- nowcasts


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
    raw = predict_domain(model.net, z, prepare_model(model, settings))
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


# ----------------------------------------------------------------------------- refusals and batches


def _radar_netcdf(path: Path, rate: np.ndarray, time: datetime, units: str = "mm h-1",
                  name: str = "RATE", cell: float = 1000.0) -> Path:
    g = radar_grid(48)
    grid = Grid(projdef=g.projdef, nx=48, ny=48, dx=cell, dy=cell, x0=g.x0, y0=g.y0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cf_netcdf(path, time, grid, [CfVariable(name, rate, units, "test field")], "test", "test")
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("variable",
         r"wrong\.nc: lacks input variable\(s\) \['RATE'\] the checkpoint needs; the file has \['DBZH'\]"),
        ("units", r"wrong\.nc: variable 'RATE' is in 'dBZ', the checkpoint expects 'mm h-1'"),
        ("spacing",
         r"wrong\.nc: grid spacing 2000 x 2000 m differs from the checkpoint's 1000 m by more than 1%"),
    ],
)
def test_mismatched_inputs_are_refused_with_the_file_and_the_problem(
    case: str, message: str, bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    time, fields = read_fields(bow.inputs("radar")[0], ["RATE"])
    cases: dict[str, dict[str, Any]] = {
        "variable": {"name": "DBZH", "units": "dBZ"}, "units": {"units": "dBZ"}, "spacing": {"cell": 2000.0},
    }
    kwargs = cases[case]
    src = _radar_netcdf(tmp_path / "in" / "wrong.nc", fields["RATE"], time, **kwargs)
    ckpt = with_meta(bow.checkpoint, tmp_path / "bow_1km.ckpt", grid_spacing_m=1000.0)
    report = predict_file(load_inference_model(ckpt), src, PredictSettings(tmp_path / "out"))
    with pytest.raises(InputMismatchError, match=message):
        report.raise_for_failures()
    assert report.exit_code == ExitCode.USAGE_ERROR
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    code = main(["predict", "--checkpoint", str(ckpt), "--input", str(src),
                 "--output", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert code == 2
    assert "FAILED wrong.nc:" in out and str(src) in out


def test_grid_spacing_check_can_be_bypassed(bow: Trained, tmp_path: Path) -> None:
    time, fields = read_fields(bow.inputs("radar")[0], ["RATE"])
    src = _radar_netcdf(tmp_path / "in" / "coarse.nc", fields["RATE"], time, cell=2000.0)
    ckpt = with_meta(bow.checkpoint, tmp_path / "bow_1km.ckpt", grid_spacing_m=1000.0)
    report = predict_file(load_inference_model(ckpt), src, PredictSettings(tmp_path / "out",
                                                                          ignore_grid_spacing=True))
    assert only(report).outputs[0].is_file()
    close = _radar_netcdf(tmp_path / "in2" / "close.nc", fields["RATE"], time, cell=1005.0)  # 0.5 %: fine
    assert only(predict_file(load_inference_model(ckpt), close, PredictSettings(tmp_path / "out2")))


def test_a_corrupt_file_is_reported_and_the_others_processed(
    bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for src in bow.inputs("radar")[:2]:
        shutil.copy(src, folder / src.name)
    good = bow.inputs("radar")[2].read_bytes()
    (folder / "broken.h5").write_bytes(good[: len(good) // 3])  # truncated transfer
    code = main(["predict", "--checkpoint", str(bow.checkpoint), "--input", str(folder),
                 "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == ExitCode.PARTIAL_FAILURE
    assert "FAILED broken.h5:" in out and "broken.h5" in out.split("FAILED broken.h5:")[1].splitlines()[0]
    assert "2 written, 0 skipped (output exists), 1 failed" in out
    assert len(list((tmp_path / "out").glob("*.nc"))) == 2
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_rerun_skips_existing_outputs_and_overwrite_replaces_them(bow: Trained, tmp_path: Path) -> None:
    first_as_glob = f"{bow.inputs('radar')[0].with_suffix('')}*"
    args = ["predict", "--checkpoint", str(bow.checkpoint), "--input", first_as_glob,
            str(bow.inputs("radar")[1]), "--output", str(tmp_path)]
    assert main(args) == ExitCode.OK
    outputs = sorted(tmp_path.glob("*.nc"))
    assert len(outputs) == 2
    stamps = [os.stat(p).st_mtime_ns for p in outputs]
    assert main(args) == ExitCode.NOTHING_TO_DO
    assert [os.stat(p).st_mtime_ns for p in outputs] == stamps
    outputs[0].write_bytes(b"partial")  # a broken output is not "existing": it is made again
    assert main(args) == ExitCode.OK
    assert product(outputs[0])["bow_echo_mask"].shape == (1, 48, 48)
    assert main([*args, "--overwrite"]) == ExitCode.OK
    assert os.stat(outputs[1]).st_mtime_ns != stamps[1]


def test_two_inputs_with_the_same_time_do_not_overwrite_each_other(bow: Trained, tmp_path: Path) -> None:
    src = bow.inputs("radar")[0]
    twin = tmp_path / "copy.h5"
    shutil.copy(src, twin)
    report = predict_files(load_inference_model(bow.checkpoint), [src, twin], PredictSettings(tmp_path / "o"))
    assert [o.status for o in report.outcomes] == ["written", "failed"]
    assert "is also that of" in report.failed[0].reason and src.name in report.failed[0].reason


def test_unusable_checkpoint_and_missing_inputs_are_usage_or_input_errors(
    bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["predict", "--checkpoint", str(bad), "--input", str(bow.data / "radar"),
                 "--output", str(tmp_path / "o")]) == ExitCode.USAGE_ERROR
    assert "bad.ckpt" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(bow.checkpoint), "--input", str(tmp_path / "nothing*.h5"),
                 "--output", str(tmp_path / "o")]) == ExitCode.NOTHING_TO_DO
    assert main(["predict", "--checkpoint", str(bow.checkpoint), "--input", str(tmp_path / "gone.h5"),
                 "--output", str(tmp_path / "o")]) == ExitCode.PARTIAL_FAILURE
    assert "FAILED" in capsys.readouterr().out


# ----------------------------------------------------------------------------- classification


def test_webcam_classification_writes_class_probabilities_per_image(
    webcam: Trained, bow: Trained, tmp_path: Path
) -> None:
    from meteovision.pipeline.inference.images import predict_images

    model = load_inference_model(webcam.checkpoint)
    images = webcam.inputs("images")
    report = predict_images(model, [*images, bow.inputs("radar")[0]], PredictSettings(tmp_path))
    assert len(report.written) == len(images) == 18
    assert "not an image" in report.failed[0].reason
    csv_path, json_path = report.written[0].outputs
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert rows[0] == ["file", "camera", "time", "predicted_class", "p_none", "p_partial", "p_full"]
    doc = json.loads(json_path.read_text())
    assert doc["class_names"] == ["none", "partial", "full"] and doc["checkpoint_sha256"] == model.sha256
    assert doc["config"]["image_size"] == 32  # taken from the checkpoint's datamodule arguments
    assert doc["config"]["precision"] == "32"  # float32 on the CPU unless --precision bf16

    first = next(r for r in doc["images"] if r["file"] == images[0].name)
    with open_dataset(images[0]) as ds:
        pixels = resize_image(ds["image"].to_numpy()[0], 32).astype(np.float32)
    stats = model.meta.normalization
    x = np.stack([(pixels[c] - stats.mean[c]) / stats.std[c] for c in range(3)])[None]
    with torch.inference_mode():
        logits = model.net(torch.from_numpy(x.astype(np.float32))).numpy()[0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = np.array([first["probabilities"][c] for c in ("none", "partial", "full")])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert first["predicted_class"] == ["none", "partial", "full"][int(np.argmax(expected))]
    assert first["camera"] == images[0].name.split("_")[0]
    assert len(rows) == len(images) + 1
    again = predict_images(model, images, PredictSettings(tmp_path))
    assert again.exit_code == ExitCode.NOTHING_TO_DO and len(again.skipped) == 18


# ----------------------------------------------------------------------------- output semantics


def _meta(kind: str, variables: list[str], units: list[str], transform: str = "none") -> CheckpointMetadata:
    """Metadata in the flat legacy layout (format 1), parsed as a load would."""
    stats = {"channel_names": variables, "channel_units": units, "transforms": [transform] * len(variables),
             "mean": [0.0] * len(variables), "std": [1.0] * len(variables)}
    return CheckpointMetadata.from_dict({
        "task_kind": kind, "application": "x", "model_name": "halfunet", "in_channels": 2, "out_channels": 2,
        "input_variables": variables, "target_names": variables, "target_units": units,
        "num_output_frames": 2 // len(variables), "time_step_minutes": 15, "target_normalization": stats})


@pytest.mark.parametrize(
    ("kind", "variables", "units", "name", "low", "high"),
    [
        ("nowcast", ["RATE"], ["mm h-1"], "rain_rate", 0.0, 3.0),
        ("nowcast", ["cloud_area_fraction"], ["1"], "cloud_area_fraction", 0.0, 1.0),
        ("nowcast", ["DBZH"], ["dBZ"], "reflectivity", -2.0, 3.0),
        ("regression", ["RATE", "ACRR"], ["mm h-1", "mm"], "rain_rate", 0.0, 3.0),
    ],
)
def test_physical_outputs_keep_physical_bounds(kind: str, variables: list[str], units: list[str], name: str,
                                               low: float, high: float) -> None:
    from meteovision.pipeline.checkpoints.loading import InferenceModel
    from meteovision.pipeline.inference.outputs import physical_outputs, product_variables, variable_names

    model = InferenceModel(torch.nn.Identity(), _meta(kind, variables, units), "0" * 64, Path("x.ckpt"))
    raw = np.array([-2.0, 0.5, 3.0], np.float32).reshape(1, 1, 3).repeat(2, axis=0)  # [2, 1, 3]
    out = physical_outputs(model, raw)
    assert out[0].min() == pytest.approx(low) and out[0].max() == pytest.approx(high)
    assert variable_names(model.meta)[0] == name
    var = product_variables(model.meta, out, 0.5)[0]
    assert var.name == name and var.data.shape == ((2, 1, 3) if kind == "nowcast" else (1, 3))
    if kind == "regression":
        assert variable_names(model.meta) == ["rain_rate", "acrr"]
        assert out[1].min() == 0.0  # every regression target is clamped at 0


def test_multiclass_segmentation_writes_class_probabilities_and_the_most_probable_class() -> None:
    from meteovision.pipeline.checkpoints.loading import InferenceModel
    from meteovision.pipeline.inference.outputs import physical_outputs, product_variables, variable_names

    meta = CheckpointMetadata.from_dict({"task_kind": "segmentation", "application": "echo_type",
                                         "model_name": "halfunet", "in_channels": 1, "out_channels": 3,
                                         "target_names": ["echo_type"], "class_names": ["clear", "rain", "clutter"]})
    model = InferenceModel(torch.nn.Identity(), meta, "0" * 64, Path("x.ckpt"))
    raw = np.zeros((3, 1, 3), np.float32)
    raw[1, 0, 0] = np.log(2.0)  # probabilities (1/4, 1/2, 1/4)
    raw[2, 0, 1] = 5.0
    out = physical_outputs(model, raw)
    np.testing.assert_allclose(out[:, 0, 0], [0.25, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(out[:, 0, 2], [1 / 3] * 3, rtol=1e-6)
    out[:, 0, 2] = np.nan  # nodata
    names = variable_names(meta)
    assert names == ["probability_clear", "probability_rain", "probability_clutter", "echo_type_class"]
    variables = product_variables(meta, out, 0.5)
    classes = variables[-1]
    assert classes.kind == "classes" and classes.flag_meanings == ("clear", "rain", "clutter")
    np.testing.assert_array_equal(classes.data[0], [1.0, 2.0, np.nan])
