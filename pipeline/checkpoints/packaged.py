"""Checkpoints shipped inside the package, so `predict`, `evaluate` and the demo can name one with no training.

A name (``nowcast_precip_real``) resolves to ``meteovision/pretrained/<name>.ckpt`` only when no file of
that name exists, so a user's own file always wins. :func:`write_packaged_checkpoint` makes the shipped
file from a training checkpoint: the network's weights in float16 (read back into float32 at load)
and the meteovision metadata, without the optimiser's state, and refuses a result above
:data:`MAX_PACKAGED_BYTES` so the repository's history stays small.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from meteovision.pipeline.checkpoints.metadata import CHECKPOINT_KEY, RUN_KEY, CheckpointError

log = logging.getLogger(__name__)

PACKAGE = "meteovision.pretrained"
#: The checkpoints the package ships, by name; each has a model card ``<name>.md`` beside it.
PACKAGED_CHECKPOINTS: tuple[str, ...] = ("nowcast_precip_real",)
MAX_PACKAGED_BYTES = 20_000_000
#: Training-checkpoint keys a shipped file keeps besides the weights (provenance, not resumable state).
_KEPT_KEYS = (CHECKPOINT_KEY, "epoch", "global_step", "pytorch-lightning_version", RUN_KEY)


def packaged_checkpoint_path(name: str) -> Path:
    """Where the packaged checkpoint ``name`` lies in this installation (it may be absent)."""
    if name not in PACKAGED_CHECKPOINTS:
        raise CheckpointError(f"{name}: not a packaged checkpoint; packaged: {list(PACKAGED_CHECKPOINTS)}")
    return Path(str(resources.files(PACKAGE).joinpath(f"{name}.ckpt")))


def model_card_path(name: str) -> Path:
    """The model card (Markdown) of packaged checkpoint ``name``."""
    return packaged_checkpoint_path(name).with_suffix(".md")


def resolve_checkpoint(value: str | Path) -> Path:
    """A checkpoint path as given, or the packaged checkpoint of that name when no such file exists."""
    path = Path(value)
    if path.exists() or str(value) not in PACKAGED_CHECKPOINTS:
        return path
    packaged = packaged_checkpoint_path(str(value))
    if not packaged.is_file():
        raise CheckpointError(f"{value}: packaged checkpoint missing from this installation ({packaged}); "
                              "reinstall meteovision")
    return packaged


def slim_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The network's weights (floating tensors as float16) and provenance of a training checkpoint."""
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()
               if k.startswith("net.")}
    return {"state_dict": weights, **{k: ckpt[k] for k in _KEPT_KEYS if k in ckpt}}


def write_packaged_checkpoint(ckpt: dict[str, Any], target: str | Path, source: str = "checkpoint") -> Path:
    """Write the slim float16 copy of loaded checkpoint ``ckpt`` (read from ``source``) to ``target``.

    A result above the size limit is refused. Written to a temporary file and renamed, so a refused
    or failed write leaves nothing behind.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(slim_checkpoint(ckpt), tmp)
    size = tmp.stat().st_size
    if size > MAX_PACKAGED_BYTES:
        tmp.unlink()
        raise CheckpointError(f"{source}: its float16 weights take {size / 1e6:.1f} MB, above the "
                              f"{MAX_PACKAGED_BYTES / 1e6:.0f} MB a packaged checkpoint may take")
    os.replace(tmp, target)
    log.info("packaged %s -> %s (%.1f MB)", source, target, size / 1e6)
    return target
