"""What a checkpoint must carry for inference, and the checks that refuse a mismatched one.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain
containers are unpickled, so a checkpoint from an untrusted path cannot run code.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meteovision.datasets.normalization import NormalizationStats
from meteovision.pipeline.checkpoints.metadata import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMetadata,
    CheckpointMismatchError,
    NetworkMetadata,
    checkpoint_metadata,
)
from meteovision.pipeline.checkpoints.packaged import PACKAGED_CHECKPOINTS, resolve_checkpoint

__all__ = [
    "CHECKPOINT_KEY", "FORMAT_VERSION", "CheckpointError", "CheckpointMetadata", "CheckpointMismatchError",
    "InferenceModel", "NetworkMetadata", "check_data_matches", "checkpoint_metadata", "file_sha256", "load_checkpoint",
    "load_inference_model", "load_metadata", "resolve_checkpoint",
]

def check_data_matches(meta: CheckpointMetadata, dm: Any) -> None:
    """Refuse to use a checkpoint on data with other channels, units or normalisation."""
    problems: list[str] = []
    names = tuple(getattr(dm, "channel_names", None) or ())
    if meta.channel_names and names and meta.channel_names != names:
        problems.append(f"input channels {list(names)} differ from the checkpoint's {list(meta.channel_names)}")
    units = tuple(getattr(dm, "channel_units", None) or ())
    if meta.channel_units and units and meta.channel_units != units:
        problems.append(f"input units {list(units)} differ from the checkpoint's {list(meta.channel_units)}")
    norm = getattr(dm, "normalization", None)
    if norm is not None and meta.normalization and not _close(norm.to_dict(), meta.normalization.to_dict()):
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
    """Read a meteovision checkpoint safely (weights_only) and check it carries our metadata.

    ``path`` may also name a packaged checkpoint (``nowcast_precip_real``) when no such file exists.

    Every refusal is a :class:`CheckpointError` naming the file and why: missing, empty,
    truncated or not a torch file, a Python object that safe loading does not allow, no metadata.
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (nor the name of a packaged checkpoint: "
                              f"{', '.join(PACKAGED_CHECKPOINTS)})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused, {_unsafe_reason(err)}") from err
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint ({reason})") from err
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt:
        raise CheckpointError(f"{path}: not a meteovision checkpoint (no '{CHECKPOINT_KEY}' metadata)")
    return dict(ckpt)


def _unsafe_reason(err: pickle.UnpicklingError) -> str:
    """The one useful line of torch's weights_only refusal: which global the file wanted to import."""
    for line in str(err).splitlines():
        if "Unsupported global" in line:
            found = line.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip().removeprefix("GLOBAL ")
            return (f"it holds a Python object ({found}) that safe loading (weights_only=True) does not "
                    "allow; loading it could run code, so it is not loaded")
    first = str(err).splitlines()[0] if str(err).strip() else "unreadable pickle data"
    return f"it cannot be loaded safely (weights_only=True): {first}"


def load_metadata(path: str | Path) -> CheckpointMetadata:
    """The checked metadata of checkpoint ``path`` (one safe load)."""
    return CheckpointMetadata.from_checkpoint_dict(load_checkpoint(path), str(path))


def file_sha256(path: str | Path) -> str:
    """The checkpoint's content hash, recorded in every product so a result names its weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InferenceModel:
    """A trained network ready for inference, with what it needs to read and write data."""

    net: torch.nn.Module
    meta: CheckpointMetadata
    sha256: str
    path: Path

    @property
    def application(self) -> str:
        return self.meta.application

    @property
    def model_name(self) -> str:
        return self.meta.model_name

    def input_stats(self) -> NormalizationStats | None:
        return self.meta.normalization

    def target_stats(self) -> NormalizationStats | None:
        return self.meta.target_normalization


def load_inference_model(path: str | Path) -> InferenceModel:
    """Network in eval mode plus metadata, from a checkpoint written by ``meteovision fit``.

    Loads with ``weights_only=True`` (``path`` may name a packaged checkpoint); the network is rebuilt
    from the model registry with the stored name, channel counts and settings, then given the trained
    weights (strict; float16 weights of a packaged checkpoint are read into the float32 network).
    """
    from meteovision.pipeline.checkpoints.networks import build_network

    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    meta = CheckpointMetadata.from_checkpoint_dict(ckpt, str(path))
    net = build_network(meta.network)
    prefix = "net."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(f"{path}: weights do not fit model '{meta.model_name}': {err}") from err
    net.eval()
    return InferenceModel(net=net, meta=meta, sha256=file_sha256(path), path=path)
