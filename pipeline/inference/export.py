"""Export a trained network to ONNX or TorchScript, with a JSON sidecar saying how to feed it.

The exported graph is the registry's network exactly as trained: dense models sit inside
``PadToMultiple``, whose pad amounts stay symbolic under tracing, so the graph takes any
height and width and returns the input's. It maps *normalised* inputs to *raw* outputs
(logits, or values in the target space); the sidecar ``<file>.json`` carries what a
consumer needs on either side: channel names and units, the normalisation statistics and
transforms, the output's meaning and its inverse transform, the checkpoint's sha256.

* ONNX: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter; the dynamo
  one needs onnxscript), opset 17, dynamic batch, and dynamic height and width where the
  model's spec allows (``get_model_spec(name).onnx_supported``); a model whose spec says it
  cannot be exported (VGG11: adaptive pooling) is refused with :class:`ExportError`.
* TorchScript: ``torch.jit.trace`` (its shape arithmetic stays symbolic, so any size works).

Before the file is moved into place (written atomically) it is run on a random input of a
non-square shape it was not traced with and compared with PyTorch: the largest absolute
difference must stay below :data:`PARITY_TOLERANCE`, and is recorded in the sidecar. The
ONNX check needs onnxruntime (the ``export`` extra); without it the export is written
unverified, with a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.loading import InferenceModel, file_sha256
from meteovision.pipeline.checkpoints.metadata import MOTION_INPUT_HEADS
from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.versions import package_versions

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
OPSET = 17
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
_MIN_SIDE = 16


class ExportError(MeteovisionError):
    """The network cannot be exported in the asked format, or the export does not reproduce PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely it reproduces PyTorch."""

    path: Path
    sidecar: Path
    format: str
    dynamic_spatial: bool
    max_abs_diff: float | None
    check_shape: tuple[int, int, int, int]


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (ONNX and TorchScript exports can share a folder)."""
    return path.with_name(path.name + ".json")


def _spec(model: InferenceModel) -> Any:
    from meteovision.models import get_model_spec

    return get_model_spec(model.model_name, **dict(model.meta.network.model_settings))


def shapes(model: InferenceModel) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(trace shape, check shape): non-square, the check one off the model's spatial multiple."""
    c = model.meta.in_channels
    d = max(model.meta.network.divisibility, _MIN_SIDE)
    return (1, c, 2 * d, 3 * d), (2, c, 2 * d + 7, 3 * d - 5)


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Hide the tracer's notes on shape arithmetic (intended: they keep the pad symbolic) and the
    deprecation notes of the TorchScript tools, chosen on purpose (the dynamo exporter needs onnxscript)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for category in (DeprecationWarning, FutureWarning):
            for message in (r".*torch\.jit\..* is deprecated", r"The feature will be removed",
                            r"You are using the legacy TorchScript-based ONNX"):
                warnings.filterwarnings("ignore", message=message, category=category)
        yield


def _reference(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return net(x).numpy()


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path, dense: bool, dynamic: bool) -> None:
    spatial = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    out_axes = spatial if dense else {0: "batch"}
    try:
        with _quiet_tracing():
            torch.onnx.export(
                net, (example,), str(path), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: spatial, OUTPUT_NAME: out_axes},
            )
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:
        raise ExportError(f"{path}: ONNX export failed: {err}") from err


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray | None:
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: %s is written without a parity check "
                    "(install meteovision[export])", path.name)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {INPUT_NAME: x})[0])


def _export_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        with _quiet_tracing():
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except RuntimeError as err:
        raise ExportError(f"{path}: TorchScript trace failed: {err}") from err


def _run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    with _quiet_tracing():
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return np.asarray(loaded(torch.from_numpy(x)).numpy())


def _output_meaning(model: InferenceModel) -> str:
    kind = model.meta.task_kind
    if kind is TaskKind.SEGMENTATION:
        if model.meta.out_channels == 1:
            return "logit of the positive class: probability = sigmoid(output)"
        return "class logits: probabilities = softmax over the channel axis"
    if kind is TaskKind.CLASSIFICATION:
        return "class logits: probabilities = softmax over the channel axis (class_names order)"
    clamp = "; then clamp at 0" if kind is TaskKind.REGRESSION else ""
    return ("values in the target space: physical = inverse transform of (output * std + mean) with "
            f"target_normalization{clamp}")


def export_metadata(model: InferenceModel, fmt: str, path: Path, dynamic: bool,
                    check_shape: tuple[int, ...], max_abs_diff: float | None) -> dict[str, Any]:
    """The sidecar document: how to feed the exported network and read its output."""
    meta = model.meta
    axes = {"0": "batch", "2": "height", "3": "width"} if dynamic else {"0": "batch"}
    return {
        "format": fmt,
        "file": path.name,
        "sha256": file_sha256(path),
        "opset": OPSET if fmt == "onnx" else None,
        "application": model.application,
        "task_kind": meta.task_kind.value,
        "model_name": model.model_name,
        "model_settings": dict(meta.network.model_settings),
        "checkpoint": model.path.name,
        "checkpoint_sha256": model.sha256,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": meta.in_channels,
            "channel_names": list(meta.channel_names),
            "channel_units": list(meta.channel_units),
            "input_variables": list(meta.input_variables),
            "num_input_frames": meta.num_input_frames,
            "time_step_minutes": meta.time_step_minutes,
            "grid_spacing_m": meta.grid_spacing_m,
            "dynamic_axes": axes,
            "normalization": meta.normalization.to_dict() if meta.normalization else None,
            "preprocessing": ("per channel: transform, then (x - mean) / std with the normalization "
                              "statistics "
                              "(stacked time steps repeat them, frame-major); NaN (nodata) -> fill_value"),
        },
        "output": {
            "name": OUTPUT_NAME,
            "channels": meta.out_channels,
            "names": list(meta.target_names),
            "units": list(meta.target_units),
            "class_names": list(meta.class_names) or None,
            "meaning": _output_meaning(model),
            "target_normalization": meta.target_normalization.to_dict() if meta.target_normalization else None,
            "num_output_frames": meta.num_output_frames,
        },
        "parity": {"input_shape": list(check_shape), "max_abs_diff": max_abs_diff,
                   "tolerance": PARITY_TOLERANCE},
        "versions": package_versions(),
        "training_versions": dict(meta.versions),
    }


def export_model(model: InferenceModel, fmt: str, output: str | Path) -> ExportResult:
    """Export ``model``'s network to ``output`` as ``fmt`` ("onnx" or "torchscript") plus its JSON sidecar."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"export format {fmt!r} unknown; choose one of {EXPORT_FORMATS}")
    path = Path(output)
    if not path.parent.is_dir():
        raise ExportError(f"{path}: the output folder does not exist")
    head = model.meta.network.nowcast_head
    if head in MOTION_INPUT_HEADS:
        raise ExportError(f"{model.path.name}: its '{head}' head takes the Lucas-Kanade motion of its frames as "
                          "input, which pysteps computes outside the network; it is not exported yet "
                          "(run it with meteovision predict)")
    spec = _spec(model)
    if fmt == "onnx" and not spec.onnx_supported:
        raise ExportError(f"model {model.model_name!r} cannot be exported to ONNX (its spec says "
                          "onnx_supported=False); use --format torchscript")
    dynamic = bool(spec.onnx_supported) if fmt == "onnx" else True
    net = model.net.to("cpu").float().eval()
    net.to(memory_format=torch.contiguous_format)
    trace_shape, check_shape = shapes(model)
    if not dynamic:
        check_shape = trace_shape
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(*trace_shape, generator=generator)
    check = torch.randn(*check_shape, generator=generator)
    expected = _reference(net, check)
    diff: float | None = None
    with atomic_write(path) as tmp:
        if fmt == "onnx":
            _export_onnx(net, example, tmp, spec.is_dense, dynamic)
            got = _run_onnx(tmp, check.numpy())
        else:
            _export_torchscript(net, example, tmp)
            got = _run_torchscript(tmp, check.numpy())
        if got is not None:
            if got.shape != expected.shape:
                raise ExportError(f"{path}: the export gives shape {got.shape} for input {check_shape}, "
                                  f"PyTorch {expected.shape}")
            diff = float(np.abs(got - expected).max())
            if not diff < PARITY_TOLERANCE:
                raise ExportError(f"{path}: the export differs from PyTorch by {diff:.3g} (tolerance "
                                  f"{PARITY_TOLERANCE:g}) on input {check_shape}")
    sidecar = sidecar_path(path)
    doc = export_metadata(model, fmt, path, dynamic, check_shape, diff)
    with atomic_write(sidecar) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    log.info("exported %s (%s, max abs diff %s) with sidecar %s", path, fmt, diff, sidecar.name)
    return ExportResult(path, sidecar, fmt, dynamic, diff, check_shape)
