"""DataModules by application name or from a LightningCLI-style mapping (sample-data summaries, benchmarks).

Each application's DataModule family and default settings; the variables come from the manifest.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from meteovision.core.applications import APPLICATION_NAMES
from meteovision.datasets.catalog import CatalogError
from meteovision.datasets.datamodules.base import _BaseDataModule
from meteovision.datasets.datamodules.classification import ClassificationDataModule
from meteovision.datasets.datamodules.gridded import (
    REGRESSION_PATCHES,
    SEGMENTATION_PATCHES,
    RegressionDataModule,
    SegmentationDataModule,
    SequenceDataModule,
)
from meteovision.datasets.datamodules.settings import AugmentSettings

#: Names of the settings groups a DataModule takes.
GROUPS: tuple[str, ...] = ("split", "loader", "patches", "augment")

#: Data module class and default arguments of each application (variables come from the manifest).
APP_DATAMODULES: dict[str, tuple[type[_BaseDataModule], dict[str, Any]]] = {
    "bow_echo": (
        SegmentationDataModule,
        {
            "transforms": {"RATE": "log1p"},
            "patches": replace(SEGMENTATION_PATCHES, min_positive_fraction=0.005, positive_patch_probability=0.5),
        },
    ),
    "radar_cleaning": (
        SegmentationDataModule,
        {
            "transforms": {"TH": "clip_dbz"},
            "target_variable": "artefact_mask",
            "patches": replace(SEGMENTATION_PATCHES, positive_patch_probability=0.5),
        },
    ),
    "nowcast_precip": (SequenceDataModule, {"transforms": {"RATE": "log10_rain"}}),
    "nowcast_reflectivity": (SequenceDataModule, {"transforms": {"DBZH": "clip_dbz"}}),
    "nowcast_cloudiness": (SequenceDataModule, {"augment": AugmentSettings(flips=False, rot90=False)}),
    "sat2precip": (
        RegressionDataModule,
        {
            "transforms": {"RATE": "log1p"},
            "patches": replace(REGRESSION_PATCHES, positive_patch_probability=0.5, positive_threshold=0.1),
        },
    ),
    "webcam_snow": (ClassificationDataModule, {"label": "snow_class"}),
    "webcam_visibility": (ClassificationDataModule, {"label": "visibility"}),
}


def _with_groups(cls: type[_BaseDataModule], base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; a group given as a mapping (``{"batch_size": 4}``, as in YAML)
    updates only the fields it names, on ``base``'s group or else the class's default group."""
    params = inspect.signature(cls.__init__).parameters
    args = dict(base)
    for key, given in overrides.items():
        value = given
        if key in GROUPS and isinstance(given, Mapping):
            start = args.get(key, params[key].default if key in params else None)
            if start is None or start is inspect.Parameter.empty:
                raise CatalogError(".", f"{cls.__name__} has no settings group {key!r}")
            try:
                value = replace(start, **given)
            except TypeError as err:
                raise CatalogError(".", f"{cls.__name__}: bad {key} settings {dict(given)}: {err}") from err
        args[key] = value
    return args


def datamodule_for_app(app: str, data_dir: str, **overrides: Any) -> _BaseDataModule:
    """The data module of ``app`` on ``data_dir`` with the app's defaults, updated by ``overrides``
    (a group as a mapping updates only the fields it names: ``loader={"batch_size": 4}``)."""
    if app not in APP_DATAMODULES:
        raise CatalogError(data_dir, f"unknown application {app!r}; known: {', '.join(APPLICATION_NAMES)}")
    cls, defaults = APP_DATAMODULES[app]
    return cls(data_dir=data_dir, **_with_groups(cls, defaults, overrides))


def datamodule_from_config(config: dict[str, Any], data_dir: str | None = None) -> _BaseDataModule:
    """Build from a LightningCLI-style ``{"class_path": ..., "init_args": {...}}`` mapping."""
    class_path = str(config.get("class_path", ""))
    name = class_path.rsplit(".", 1)[-1]
    classes: dict[str, type[_BaseDataModule]] = {
        c.__name__: c
        for c in (SegmentationDataModule, RegressionDataModule, SequenceDataModule, ClassificationDataModule)
    }
    if name not in classes:
        raise CatalogError(data_dir or ".", f"unknown data module {class_path!r}; known: {sorted(classes)}")
    args = _with_groups(classes[name], {}, config.get("init_args") or {})
    if data_dir is not None:
        args["data_dir"] = data_dir
    return classes[name](**args)


if set(APP_DATAMODULES) != set(APPLICATION_NAMES):  # pragma: no cover - a new application needs its row here
    raise RuntimeError(f"APP_DATAMODULES {sorted(APP_DATAMODULES)} differs from the applications {APPLICATION_NAMES}")
