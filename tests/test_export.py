"""``meteovision export``: ONNX and TorchScript files reproduce PyTorch; the sidecar says how to feed them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meteovision.models import build_model
from meteovision.pipeline.checkpoints.loading import (
    CheckpointMetadata,
    InferenceModel,
    file_sha256,
    load_inference_model,
)
from meteovision.pipeline.cli import main
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.export import ExportError, export_model, sidecar_path
from tests.predict_helpers import Trained, bow_checkpoint, nowcast_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bow(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return bow_checkpoint(tmp_path_factory.mktemp("bow_export"))


@pytest.fixture(scope="module")
def nowcast(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return nowcast_checkpoint(tmp_path_factory.mktemp("nowcast_export"))


def _torch_output(ckpt: Path, x: np.ndarray) -> np.ndarray:
    model = load_inference_model(ckpt)
    with torch.inference_mode():
        return model.net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("which", ["bow", "nowcast"])
def test_onnx_export_matches_torch_on_a_new_non_square_shape(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    trained: Trained = request.getfixturevalue(which)
    path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(trained.checkpoint), "--format", "onnx",
                 "--output", str(path)]) == ExitCode.OK
    model = load_inference_model(trained.checkpoint)
    c = model.meta.in_channels
    x = np.random.default_rng(3).normal(size=(2, c, 45, 70)).astype(np.float32)  # odd, non-square, unseen
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"inputs": x})[0]
    expected = _torch_output(trained.checkpoint, x)
    assert got.shape == expected.shape == (2, model.meta.out_channels, 45, 70)
    assert float(np.abs(got - expected).max()) < 1e-4

    side = json.loads(sidecar_path(path).read_text())
    assert sidecar_path(path).name == "model.onnx.json"
    assert side["sha256"] == file_sha256(path) and side["checkpoint_sha256"] == model.sha256
    assert side["input"]["channel_names"] == list(model.meta.channel_names)
    assert side["input"]["channel_units"] == list(model.meta.channel_units)
    assert model.meta.normalization is not None
    assert side["input"]["normalization"] == model.meta.normalization.to_dict()
    assert side["input"]["dynamic_axes"] == {"0": "batch", "2": "height", "3": "width"}
    target = model.meta.target_normalization
    assert side["output"]["target_normalization"] == (target.to_dict() if target is not None else None)
    assert side["opset"] == 17 and side["parity"]["max_abs_diff"] < 1e-4
    assert side["parity"]["input_shape"][2] != side["parity"]["input_shape"][3]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_torch_on_a_new_non_square_shape(bow: Trained, tmp_path: Path) -> None:
    path = tmp_path / "bow.pt"
    result = export_model(load_inference_model(bow.checkpoint), "torchscript", path)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    loaded = torch.jit.load(str(path))
    x = np.random.default_rng(4).normal(size=(1, 1, 37, 81)).astype(np.float32)
    with torch.inference_mode():
        got = loaded(torch.from_numpy(x)).numpy()
    expected = _torch_output(bow.checkpoint, x)
    assert got.shape == expected.shape == (1, 1, 37, 81)
    assert float(np.abs(got - expected).max()) < 1e-4
    side = json.loads(sidecar_path(path).read_text())
    assert side["format"] == "torchscript" and side["opset"] is None
    assert side["output"]["meaning"] == "logit of the positive class: probability = sigmoid(output)"
    assert side["application"] == "bow_echo" and side["input"]["input_variables"] == ["RATE"]


def test_a_model_whose_spec_forbids_onnx_is_refused(tmp_path: Path) -> None:
    net = build_model("vgg11", 3, 3, hidden_features=32).eval()
    meta = CheckpointMetadata.from_dict({"application": "webcam_snow", "model_name": "vgg11",
                                         "model_settings": {"hidden_features": 32}, "in_channels": 3,
                                         "out_channels": 3, "task_kind": "classification", "divisibility": None})
    model = InferenceModel(net, meta, "0" * 64, tmp_path / "vgg.ckpt")
    with pytest.raises(ExportError, match=r"'vgg11' cannot be exported to ONNX .* use --format torchscript"):
        export_model(model, "onnx", tmp_path / "vgg.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ExportError, match="format 'tflite' unknown"):
        export_model(model, "tflite", tmp_path / "vgg.tflite")


def test_export_cli_reports_a_bad_checkpoint_as_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 10)
    code = main(["export", "--checkpoint", str(bad), "--format", "onnx",
                 "--output", str(tmp_path / "m.onnx")])
    assert code == ExitCode.USAGE_ERROR
    assert "bad.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
