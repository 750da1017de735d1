"""The predict stage: reports and exit codes, inputs, settings, and the analyses (segmentation, regression)
write exactly the model's output with nodata masked.
"""

from __future__ import annotations

import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import rasterio
import torch

from meteovision.datasets.readers import open_dataset
from meteovision.datasets.synthetic.grids import satellite_grid
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf
from meteovision.pipeline.checkpoints.loading import load_inference_model
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
    prepare_model,
)
from meteovision.pipeline.inference.tiling import predict_domain
from tests.predict_helpers import (
    Trained,
    bow,
    checker,
    nowcast,
    only,
    product,
    read_fields,
    sat,
    sigmoid,
    webcam,
    write_rate,
)

__all__ = ["bow", "checker", "nowcast", "sat", "webcam"]  # module-scoped fixtures, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def test_exit_codes_follow_the_outcomes() -> None:
    ok = Outcome("a", Status.WRITTEN)
    skipped = Outcome("b", Status.SKIPPED)
    broken = Outcome("c", Status.FAILED, reason="corrupt", error=OSError("corrupt"))
    refused = Outcome("d", Status.FAILED, reason="units", error=InputMismatchError("d.h5", "units"))
    assert PredictReport().exit_code == ExitCode.NOTHING_TO_DO == 3
    assert PredictReport((ok, skipped)).exit_code == ExitCode.OK == 0
    assert PredictReport((skipped, skipped)).exit_code == ExitCode.NOTHING_TO_DO
    assert PredictReport((ok, broken)).exit_code == ExitCode.PARTIAL_FAILURE == 1
    assert PredictReport((broken,)).exit_code == ExitCode.ALL_FAILED == 5
    assert PredictReport((skipped, broken)).exit_code == ExitCode.PARTIAL_FAILURE
    assert PredictReport((refused, refused)).exit_code == ExitCode.USAGE_ERROR == 2
    assert PredictReport((ok, refused)).exit_code == ExitCode.PARTIAL_FAILURE
    assert PredictReport((refused, broken)).exit_code == ExitCode.ALL_FAILED
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
