"""Checkpoint metadata: the legacy flat layouts still load, the typed layout round-trips, bad fields are named.

No network is trained here: the metadata are written by hand (the legacy dict exactly as
``checkpoint_metadata`` wrote it before format 2), so each test runs in milliseconds.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.normalization import NormalizationStats
from meteovision.pipeline.checkpoints.loading import load_metadata
from meteovision.pipeline.checkpoints.metadata import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMetadata,
    NetworkMetadata,
)

RATE_STATS = {"version": 1, "channel_names": ["RATE@-5min", "RATE@0min"], "channel_units": ["mm h-1", "mm h-1"],
              "transforms": ["log1p", "log1p"], "mean": [0.25, 0.25], "std": [0.5, 0.5], "fill_value": 0.0,
              "counts": [100, 100]}
TARGET_STATS = {"version": 1, "channel_names": ["RATE"], "channel_units": ["mm h-1"], "transforms": ["log1p"],
                "mean": [0.25], "std": [0.5], "fill_value": 0.0, "counts": [100]}

#: A nowcast's metadata as the code before format 2 wrote it (format_version 1, one flat dict).
LEGACY_V1: dict[str, Any] = {
    "format_version": 1,
    "application": "nowcast_radar",
    "task": "NowcastTask",
    "model_name": "halfunet",
    "model_settings": {"num_filters": 4, "depth": 2},
    "in_channels": 2,
    "out_channels": 3,
    "channel_names": ["RATE@-5min", "RATE@0min"],
    "channel_units": ["mm h-1", "mm h-1"],
    "normalization": RATE_STATS,
    "target_normalization": TARGET_STATS,
    "target_names": ["RATE@+5min", "RATE@+10min", "RATE@+15min"],
    "target_units": ["mm h-1", "mm h-1", "mm h-1"],
    "class_names": None,
    "task_kind": "nowcast",
    "nowcast_head": "lagrangian",
    "variables_per_frame": 1,
    "max_speed": None,
    "input_variables": ["RATE"],
    "num_input_frames": 2,
    "num_output_frames": 3,
    "time_step_minutes": 5.0,
    "grid_spacing_m": 1000.0,
    "patch_size": 32,
    "divisibility": 4,
    "data_description": {"app": "nowcast_radar", "seed": 0},
    "versions": {"torch": "2.5.0", "meteovision": "0.1.0"},
}


def legacy(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(LEGACY_V1)
    out.update(changes)
    return out


# --------------------------------------------------------------------------- legacy layouts


@pytest.mark.parametrize("version", [1, 0])
def test_a_legacy_flat_checkpoint_parses_into_the_typed_metadata(version: int) -> None:
    raw = legacy()
    if version == 0:
        del raw["format_version"]  # the first checkpoints recorded no version at all
    meta = CheckpointMetadata.from_dict(raw, "old.ckpt")
    assert meta.format_version == version
    assert meta.application == "nowcast_radar" and meta.task == "NowcastTask"
    assert meta.task_kind is TaskKind.NOWCAST
    assert meta.network == NetworkMetadata(model_name="halfunet", in_channels=2, out_channels=3,
                                           model_settings={"num_filters": 4, "depth": 2}, nowcast_head="lagrangian",
                                           variables_per_frame=1, max_speed=None, divisibility=4)
    assert meta.input_variables == ("RATE",) and meta.channel_units == ("mm h-1", "mm h-1")
    assert meta.normalization == NormalizationStats(("RATE@-5min", "RATE@0min"), ("mm h-1", "mm h-1"),
                                                    ("log1p", "log1p"), (0.25, 0.25), (0.5, 0.5))
    assert meta.target_normalization is not None and meta.target_normalization.mean == (0.25,)
    assert meta.class_names == () and meta.image_size is None
    assert (meta.num_input_frames, meta.num_output_frames, meta.time_step_minutes) == (2, 3, 5.0)
    assert (meta.grid_spacing_m, meta.patch_size) == (1000.0, 32)
    assert meta.versions == {"torch": "2.5.0", "meteovision": "0.1.0"}
    # derived facts: three 5-minute leads of the one variable RATE
    assert meta.variables_per_step == ("RATE",) and meta.num_lead_times == 3
    assert meta.lead_times == (timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=15))


def test_a_legacy_checkpoint_rewritten_in_format_2_keeps_every_field() -> None:
    old = CheckpointMetadata.from_dict(legacy())
    written = old.to_dict()
    assert written["format_version"] == FORMAT_VERSION == 2
    assert written["network"]["model_name"] == "halfunet" and "model_name" not in written
    again = CheckpointMetadata.from_dict(written)
    assert again == dataclasses.replace(old, format_version=2)
    assert again.data_description == old.data_description


def test_legacy_classifier_image_size_comes_from_the_datamodule_arguments() -> None:
    raw = legacy(task_kind="classification", task="ClassificationTask", in_channels=3, out_channels=2,
                 class_names=["snow", "no_snow"], nowcast_head="direct", time_step_minutes=None)
    ckpt = {CHECKPOINT_KEY: raw, "datamodule_hyper_parameters": {"image_size": 48}}
    meta = CheckpointMetadata.from_checkpoint_dict(ckpt, "cls.ckpt")
    assert meta.image_size == 48 and meta.class_names == ("snow", "no_snow")
    assert meta.variables_per_step == ("RATE@+5min", "RATE@+10min", "RATE@+15min")  # targets, not inputs


# --------------------------------------------------------------------------- the current layout


def _current() -> CheckpointMetadata:
    return CheckpointMetadata(
        application="bow_echo", task_kind=TaskKind.SEGMENTATION, task="SegmentationTask",
        network=NetworkMetadata("unet", 1, 1, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}, divisibility=8),
        input_variables=("RATE",), channel_names=("RATE",), channel_units=("mm h-1",),
        normalization=NormalizationStats(("RATE",), ("mm h-1",), ("log1p",), (0.3,), (0.7,)),
        target_names=("bow_echo_mask",), target_units=("1",), grid_spacing_m=1000.0, time_step_minutes=5.0,
        patch_size=64, data_description={"app": "bow_echo"}, versions={"torch": "2.5.0"},
    )


def test_metadata_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    meta = _current()
    path = tmp_path / "new.ckpt"
    torch.save({CHECKPOINT_KEY: meta.to_dict(), "state_dict": {}}, path)
    loaded = load_metadata(path)  # torch.load(weights_only=True) inside
    assert loaded == meta and loaded.data_description == {"app": "bow_echo"}
    assert loaded.num_lead_times == 1 and loaded.network.divisibility == 8


# --------------------------------------------------------------------------- bad metadata


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"application": None}, r"old\.ckpt: metadata field 'application' is missing"),
        ({"task_kind": "dense"}, r"'task_kind' is 'dense'; known: \['segmentation', 'nowcast', 'regression', "),
        ({"in_channels": 0}, r"'in_channels' must be a positive integer, got 0"),
        ({"out_channels": "3"}, r"'out_channels' must be a positive integer, got '3'"),
        ({"nowcast_head": "warp"}, r"'nowcast_head' is 'warp'; known: \['direct', 'residual', "),
        ({"channel_names": "RATE"}, r"'channel_names' must be a list of strings, got 'RATE'"),
        ({"time_step_minutes": None}, r"old\.ckpt: nowcast metadata records no time_step_minutes"),
        ({"normalization": {"mean": [0.0]}}, r"'normalization' normalisation statistics lack"),
        ({"format_version": 3}, r"metadata format 3 is newer than this code reads \(2\)"),
        ({"step_input": "yes"}, r"old\.ckpt.*'step_input' must be true or false, got 'yes'"),
    ],
)
def test_bad_metadata_is_refused_naming_the_file_and_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        CheckpointMetadata.from_dict(legacy(**changes), "old.ckpt")


def test_a_native_step_network_keeps_its_step_input_and_older_ones_read_as_without() -> None:
    meta = dataclasses.replace(_current(), network=dataclasses.replace(_current().network, step_input=True))
    assert CheckpointMetadata.from_dict(meta.to_dict()).network.step_input is True
    raw = _current().to_dict()
    del raw["network"]["step_input"]  # written before native-step training existed
    assert CheckpointMetadata.from_dict(raw).network.step_input is False


def test_format_2_without_its_network_part_is_refused() -> None:
    raw = _current().to_dict()
    del raw["network"]
    with pytest.raises(CheckpointError, match=r"new\.ckpt: metadata field 'network' is missing"):
        CheckpointMetadata.from_dict(raw, "new.ckpt")


def test_a_checkpoint_without_metadata_is_refused() -> None:
    with pytest.raises(CheckpointError, match=r"x\.ckpt: not a meteovision checkpoint"):
        CheckpointMetadata.from_checkpoint_dict({"state_dict": {}}, "x.ckpt")
