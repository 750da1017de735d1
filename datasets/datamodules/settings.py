"""The grouped settings of the DataModules, and the one place old flat config keys are mapped to them.

A DataModule takes ``split``, ``loader``, ``patches`` and ``augment`` (frozen dataclasses that
LightningCLI fills from YAML: ``data.init_args.split: {val_fraction: 0.2}``) instead of two dozen
loose arguments. The flat keys of earlier configs (``batch_size``, ``patch_size``, ``flips``, ...)
still work for one release: :func:`grouped_settings` moves them into their group and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict, TypeVar

from meteovision.datasets.splits import BLOCK_KINDS, SPLIT_MODES
from meteovision.datasets.torch_datasets import AugmentSettings, PatchSettings, SamplingError


@dataclass(frozen=True)
class SplitSettings:
    """Train/val/test split by blocks of time (:func:`meteovision.datasets.splits.split_by_time`)."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_gap_minutes: float = 60.0
    boundary_gap_minutes: float = 60.0
    mode: str = "chronological"
    block: str = "event"

    def __post_init__(self) -> None:
        v, t = self.val_fraction, self.test_fraction
        if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1):
            raise SamplingError(f"split.val_fraction {v} + split.test_fraction {t} must be < 1")
        if self.mode not in SPLIT_MODES:
            raise SamplingError(f"split.mode {self.mode!r} unknown; choose one of {SPLIT_MODES}")
        if self.block not in BLOCK_KINDS:
            raise SamplingError(f"split.block {self.block!r} unknown; choose one of {BLOCK_KINDS}")

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)


@dataclass(frozen=True)
class LoaderSettings:
    """Batches and worker processes of the DataLoaders."""

    batch_size: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SamplingError(f"loader.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise SamplingError(f"loader.num_workers must be >= 0, got {self.num_workers}")


#: Old flat key -> (group, field in the group's dataclass).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "batch_size": ("loader", "batch_size"),
    "num_workers": ("loader", "num_workers"),
    "val_fraction": ("split", "val_fraction"),
    "test_fraction": ("split", "test_fraction"),
    "max_gap_minutes": ("split", "max_gap_minutes"),
    "boundary_gap_minutes": ("split", "boundary_gap_minutes"),
    "split_mode": ("split", "mode"),
    "split_block": ("split", "block"),
    "patch_size": ("patches", "patch_size"),
    "patches_per_frame": ("patches", "patches_per_frame"),
    "min_positive_fraction": ("patches", "min_positive_fraction"),
    "positive_patch_probability": ("patches", "positive_patch_probability"),
    "positive_threshold": ("patches", "positive_threshold"),
    "eval_whole_frames": ("patches", "eval_whole_frames"),
    "flips": ("augment", "flips"),
    "rot90": ("augment", "rot90"),
}



class ClassificationFlatKeys(TypedDict, total=False):
    """The deprecated flat keys a classification module reads (``**flat: Unpack[...]``: LightningCLI sees them)."""

    batch_size: int | None
    num_workers: int | None
    val_fraction: float | None
    test_fraction: float | None
    max_gap_minutes: float | None
    boundary_gap_minutes: float | None
    split_mode: str | None
    split_block: str | None
    flips: bool | None


class GriddedFlatKeys(ClassificationFlatKeys, total=False):
    """The deprecated flat keys a gridded module reads: the classification ones and the patch ones."""

    patch_size: int | None
    patches_per_frame: int | None
    min_positive_fraction: float | None
    positive_patch_probability: float | None
    positive_threshold: float | None
    eval_whole_frames: bool | None
    rot90: bool | None


S = TypeVar("S", SplitSettings, LoaderSettings, PatchSettings, AugmentSettings)


def grouped_settings(group: str, settings: S, flat: Mapping[str, Any], owner: str) -> S:
    """``settings`` with the deprecated flat keys of ``group`` found in ``flat`` (None: not given) applied.

    Each flat key given raises a DeprecationWarning naming its new place; the last release
    that reads them is the next one.
    """
    changes: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        if key not in FLAT_KEYS:
            raise SamplingError(f"{owner}: unknown setting {key!r}")
        where, name = FLAT_KEYS[key]
        if where != group:
            continue
        warnings.warn(
            f"{owner}: the flat key {key!r} is deprecated and will be removed in the next release; "
            f"write it as {where}: {{{name}: {value!r}}}",
            DeprecationWarning,
            stacklevel=4,
        )
        changes[name] = value
    return replace(settings, **changes) if changes else settings


__all__ = [
    "FLAT_KEYS",
    "AugmentSettings",
    "LoaderSettings",
    "PatchSettings",
    "SplitSettings",
    "grouped_settings",
]
