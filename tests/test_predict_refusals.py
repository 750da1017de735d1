"""The predict stage's refusals and reruns, webcam classification, and the physical meaning of outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from meteovision.datasets.readers import open_dataset
from meteovision.datasets.synthetic.grids import Grid, radar_grid
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf
from meteovision.datasets.torch_datasets import resize_image
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, load_inference_model
from meteovision.pipeline.cli import main
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.inputs import InputMismatchError
from meteovision.pipeline.inference.predict import (
    PredictSettings,
    predict_file,
    predict_files,
)
from tests.predict_helpers import (
    Trained,
    bow,
    checker,
    nowcast,
    only,
    product,
    read_fields,
    sat,
    webcam,
    with_meta,
)

__all__ = ["bow", "checker", "nowcast", "sat", "webcam"]  # module-scoped fixtures, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
                 "--output", str(tmp_path / "o")]) == ExitCode.ALL_FAILED
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
