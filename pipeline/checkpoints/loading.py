"""What a checkpoint must carry for inference, and the checks that refuse a mismatched one.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain
containers are unpickled, so a checkpoint from an untrusted path cannot run code.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.normalization import NormalizationStats
from meteovision.pipeline.versions import package_versions

CHECKPOINT_KEY = "meteovision"
FORMAT_VERSION = 1


class CheckpointMismatchError(MeteovisionError):
    """The checkpoint was trained on data other than what it is given now."""


def _plain(value: Any) -> Any:
    """Tensors, numpy scalars and tuples -> JSON-like values that weights_only loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def checkpoint_metadata(task: Any, dm: Any) -> dict[str, Any]:
    """Everything inference needs, taken from the task and its datamodule."""
    norm = getattr(dm, "normalization", None)
    target_norm = getattr(dm, "target_transform", None)
    describe = getattr(dm, "data_description", None)
    hp = task.hparams
    return _plain(
        {
            "format_version": FORMAT_VERSION,
            "application": task.application,
            "task": type(task).__name__,
            "model_name": task.model_name,
            "model_settings": task.model_settings,
            "in_channels": hp.get("in_channels"),
            "out_channels": hp.get("out_channels"),
            "channel_names": list(getattr(dm, "channel_names", []) or []),
            "channel_units": list(getattr(dm, "channel_units", []) or []),
            "normalization": norm.to_dict() if norm is not None else None,
            "target_normalization": target_norm.to_dict() if target_norm is not None else None,
            "target_names": list(getattr(dm, "target_names", []) or []),
            "target_units": list(getattr(dm, "target_units", []) or []),
            "class_names": getattr(dm, "class_names", None),
            "task_kind": getattr(task, "task_kind", "dense"),
            "nowcast_head": str(getattr(task, "nowcast_head", "direct")),
            "variables_per_frame": hp.get("variables_per_frame"),
            "max_speed": getattr(task, "max_speed", None),
            "input_variables": list(getattr(dm, "input_variables", []) or []),
            "num_input_frames": getattr(dm, "num_input_frames", 1),
            "num_output_frames": getattr(dm, "num_output_frames", None),
            "time_step_minutes": _safe(dm, "time_step_minutes"),
            "grid_spacing_m": _safe(dm, "grid_spacing_m"),
            "patch_size": getattr(dm, "patch", None) and getattr(dm.patch, "patch_size", None),
            "divisibility": _divisibility(task),
            "data_description": describe() if callable(describe) else {},
            "versions": package_versions(),
        }
    )


def _safe(obj: Any, name: str) -> Any:
    """An optional datamodule property that may raise when the data cannot tell (few frames)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # a property of user data; absence is recorded as None
        return None


def _divisibility(task: Any) -> int | None:
    from meteovision.models import get_model_spec

    try:
        return int(get_model_spec(task.model_name, **task.model_settings).divisibility)
    except Exception:  # classifiers or unknown specs have no spatial constraint to record
        return None


def check_data_matches(meta: dict[str, Any], dm: Any) -> None:
    """Refuse to use a checkpoint on data with other channels, units or normalisation."""
    problems: list[str] = []
    names = list(getattr(dm, "channel_names", []) or [])
    if meta.get("channel_names") and names and meta["channel_names"] != names:
        problems.append(f"input channels {names} differ from the checkpoint's {meta['channel_names']}")
    units = list(getattr(dm, "channel_units", []) or [])
    if meta.get("channel_units") and units and meta["channel_units"] != units:
        problems.append(f"input units {units} differ from the checkpoint's {meta['channel_units']}")
    norm = getattr(dm, "normalization", None)
    if norm is not None and meta.get("normalization") and not _close(norm.to_dict(), meta["normalization"]):
        problems.append("the normalisation statistics differ from the checkpoint's")
    if problems:
        raise CheckpointMismatchError("checkpoint does not match the data: " + "; ".join(problems))


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a meteovision checkpoint safely (weights_only) and check it carries our metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise CheckpointMismatchError(f"{path}: cannot be loaded safely (weights_only=True): {err}") from err
    if CHECKPOINT_KEY not in ckpt:
        raise CheckpointMismatchError(f"{path}: not a meteovision checkpoint (no '{CHECKPOINT_KEY}' metadata)")
    return dict(ckpt)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InferenceModel:
    """A trained network ready for inference, with what it needs to read and write data."""

    net: torch.nn.Module
    meta: dict[str, Any]
    sha256: str
    path: Path

    @property
    def application(self) -> str:
        return str(self.meta["application"])

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    def input_stats(self) -> NormalizationStats | None:
        data = self.meta.get("normalization")
        return NormalizationStats.from_dict(data) if data else None

    def target_stats(self) -> NormalizationStats | None:
        data = self.meta.get("target_normalization")
        return NormalizationStats.from_dict(data) if data else None


def load_inference_model(path: str | Path) -> InferenceModel:
    """Network in eval mode plus metadata, from a checkpoint written by ``meteovision fit``.

    Loads with ``weights_only=True``; the network is rebuilt from the model registry with the
    stored name, channel counts and settings, then given the trained weights (strict).
    """
    from meteovision.pipeline.checkpoints.networks import build_network

    path = Path(path)
    ckpt = load_checkpoint(path)
    meta = dict(ckpt[CHECKPOINT_KEY])
    net = build_network(meta)
    prefix = "net."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(f"{path}: weights do not fit model '{meta['model_name']}': {err}") from err
    net.eval()
    return InferenceModel(net=net, meta=meta, sha256=file_sha256(path), path=path)
