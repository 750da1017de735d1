"""Checkpoints of ``meteovision fit``: safe to load, self-describing, refused on the wrong data.

One tiny U-Net (resnet18 encoder, depth 3) is trained for one epoch through the CLI on small
synthetic bow-echo data; its ``last.ckpt`` is then read back, rebuilt for inference, and offered
to data it was not trained on and to files that are not meteovision checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import numpy as np
import pytest
import torch
import yaml

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.datamodules import SegmentationDataModule, datamodule_from_config
from meteovision.datasets.readers import open_series
from meteovision.datasets.synthetic import SampleSettings, generate_sample_data
from meteovision.models import build_model
from meteovision.pipeline.checkpoints.loading import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMetadata,
    CheckpointMismatchError,
    check_data_matches,
    load_checkpoint,
    load_inference_model,
    load_metadata,
)
from meteovision.pipeline.cli import main
from meteovision.pipeline.training.cli import RUN_KEY, MeteoCLI, build_cli
from meteovision.pipeline.training.tasks import SegmentationTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = Path(__file__).resolve().parent / "configs" / "tiny_seg.yaml"
SAMPLE = SampleSettings(size=32, events=5, frames_per_event=8)
UNET_SETTINGS: dict[str, Any] = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}


@dataclass(frozen=True)
class Trained:
    workdir: Path
    data_dir: Path
    cli: MeteoCLI

    @property
    def ckpt(self) -> Path:
        return self.workdir / "run" / "checkpoints" / "last.ckpt"

    @property
    def task(self) -> SegmentationTask:
        assert isinstance(self.cli.model, SegmentationTask)
        return self.cli.model


def data_config(data_dir: Path, **changes: Any) -> dict[str, Any]:
    """The ``data:`` section of the tiny config on ``data_dir``, with ``changes`` to its init_args."""
    section = yaml.safe_load(CONFIG.read_text())["data"]
    section["init_args"].update(data_dir=str(data_dir), **changes)
    return dict(section)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    workdir = tmp_path_factory.mktemp("ckpt")
    data_dir = workdir / "data" / "bow_echo"
    generate_sample_data("bow_echo", data_dir, seed=0, settings=SAMPLE)
    argv = ["fit", "--config", str(CONFIG), "--data.init_args.data_dir", str(data_dir),
            "--model.init_args.model", "unet", "--model.init_args.model_settings", json.dumps(UNET_SETTINGS)]
    with contextlib.chdir(workdir):
        cli = build_cli(argv)
    return Trained(workdir, data_dir, cli)


@dataclass
class NotATensor:
    """Any class: weights_only unpickling refuses to build it (it could run code)."""

    payload: str = "x"


# --------------------------------------------------------------------------- content


def test_checkpoint_loads_weights_only_and_describes_the_run(trained: Trained) -> None:
    ckpt = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    raw = ckpt[CHECKPOINT_KEY]
    assert raw["format_version"] == FORMAT_VERSION == 2 and raw["network"]["model_name"] == "unet"
    meta = CheckpointMetadata.from_checkpoint_dict(ckpt)
    assert meta.format_version == 2
    assert meta.application == "bow_echo"
    assert meta.task == "SegmentationTask" and meta.task_kind is TaskKind.SEGMENTATION
    assert meta.model_name == "unet"
    assert meta.network.model_settings == UNET_SETTINGS
    assert (meta.in_channels, meta.out_channels) == (1, 1)
    assert meta.network.divisibility == 8  # three encoder levels
    assert meta.channel_names == ("RATE",) and meta.channel_units == ("mm h-1",)
    assert meta.input_variables == ("RATE",)
    assert meta.target_names == ("bow_echo_mask",) and meta.target_units == ("1",)
    assert meta.class_names == () and meta.target_normalization is None
    assert meta.patch_size == 32 and meta.image_size is None
    assert meta.num_lead_times == 1
    versions = meta.versions
    assert versions["torch"] == metadata.version("torch") and versions["lightning"] == lightning.__version__
    assert versions["meteovision"] not in ("", "not installed")
    assert ckpt[RUN_KEY] == {"log_version": 0}
    # the datamodule's own state carries the same statistics
    assert meta.normalization is not None
    assert ckpt["SegmentationDataModule"]["normalization"] == meta.normalization.to_dict()


def test_metadata_round_trips_through_its_disk_layout(trained: Trained) -> None:
    meta = load_metadata(trained.ckpt)
    again = CheckpointMetadata.from_dict(meta.to_dict())
    assert again == meta and again.data_description == meta.data_description


def test_checkpoint_normalisation_is_that_of_the_training_frames(trained: Trained) -> None:
    """log1p(RATE) mean and std over the 24 training frames, recomputed from the radar files."""
    meta = load_metadata(trained.ckpt)
    assert meta.normalization is not None
    norm = meta.normalization.to_dict()
    assert norm["channel_names"] == ["RATE"] and norm["channel_units"] == ["mm h-1"]
    assert norm["transforms"] == ["log1p"]
    train = meta.data_description["splits"]["train"]
    series = open_series(sorted((trained.data_dir / "radar").glob("*.h5")))
    rate = series["RATE"].sel(time=slice(train["start"].rstrip("Z"), train["end"].rstrip("Z"))).values
    assert rate.shape == (24, 32, 32) and not np.isnan(rate).any()
    z = np.log1p(np.maximum(rate.astype(np.float64), 0.0))
    assert norm["counts"] == [z.size]
    assert norm["mean"][0] == pytest.approx(z.mean(), rel=1e-9)
    assert norm["std"][0] == pytest.approx(z.std(), rel=1e-9)


def test_checkpoint_data_description_has_the_split_time_ranges(trained: Trained) -> None:
    described = load_metadata(trained.ckpt).data_description
    manifest = json.loads((trained.data_dir / "manifest.json").read_text())
    events = manifest["events"]  # 5 events; chronological split by event: 3 train, 1 val, 1 test
    assert described["app"] == "bow_echo" and described["data_dir"] == str(trained.data_dir)
    assert described["seed"] == manifest["seed"] == 0
    assert described["time_step_minutes"] == 5
    splits = described["splits"]
    assert (splits["train"]["start"], splits["train"]["end"]) == (events[0][0] + "Z", events[2][1] + "Z")
    assert (splits["val"]["start"], splits["val"]["end"]) == (events[3][0] + "Z", events[3][1] + "Z")
    assert (splits["test"]["start"], splits["test"]["end"]) == (events[4][0] + "Z", events[4][1] + "Z")
    assert [splits[s]["frames"] for s in ("train", "val", "test")] == [24, 8, 8]


# --------------------------------------------------------------------------- inference


def test_load_inference_model_gives_the_trained_networks_outputs(trained: Trained) -> None:
    model = load_inference_model(trained.ckpt)
    assert model.application == "bow_echo" and model.model_name == "unet"
    assert model.sha256 == hashlib.sha256(trained.ckpt.read_bytes()).hexdigest()
    assert not model.net.training
    stats = model.input_stats()
    assert stats is not None and stats == model.meta.normalization
    assert model.target_stats() is None

    dm = trained.cli.datamodule
    test_set = dm.dataset("test")
    inputs = torch.stack([test_set[i]["inputs"] for i in range(3)])  # type: ignore[index]
    assert inputs.shape == (3, 1, 32, 32)
    net = trained.task.net
    assert net is not None
    net.eval()
    with torch.no_grad():
        expected = net(inputs)
        got = model.net(inputs)
        torch.manual_seed(123)
        untrained = build_model("unet", 1, 1, **UNET_SETTINGS).eval()(inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, untrained, atol=1e-3)  # the comparison can tell weights apart


def test_weights_that_do_not_fit_the_recorded_model_are_refused(trained: Trained, tmp_path: Path) -> None:
    ckpt = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    ckpt[CHECKPOINT_KEY]["network"]["model_settings"] = {**UNET_SETTINGS, "decoder_channels": [32, 16, 8]}
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointMismatchError, match=r"edited\.ckpt: weights do not fit model 'unet'"):
        load_inference_model(path)


# --------------------------------------------------------------------------- wrong data


def test_same_data_is_accepted(trained: Trained) -> None:
    meta = load_metadata(trained.ckpt)
    check_data_matches(meta, datamodule_from_config(data_config(trained.data_dir)))


def test_other_normalisation_is_refused(trained: Trained) -> None:
    meta = load_metadata(trained.ckpt)
    other = datamodule_from_config(data_config(trained.data_dir, transforms={"RATE": "none"}))
    assert isinstance(other, SegmentationDataModule)
    with pytest.raises(CheckpointMismatchError, match="normalisation statistics differ"):
        check_data_matches(meta, other)


def test_other_channels_and_units_are_refused_and_named(trained: Trained) -> None:
    meta = load_metadata(trained.ckpt)
    radar_dbz = SimpleNamespace(channel_names=["DBZH"], channel_units=["dBZ"], normalization=None)
    with pytest.raises(CheckpointMismatchError) as info:
        check_data_matches(meta, radar_dbz)
    message = str(info.value)
    assert "input channels ['DBZH'] differ from the checkpoint's ['RATE']" in message
    assert "input units ['dBZ'] differ from the checkpoint's ['mm h-1']" in message
    same_names_other_units = SimpleNamespace(channel_names=["RATE"], channel_units=["mm/h"], normalization=None)
    with pytest.raises(CheckpointMismatchError, match="input units") as info:
        check_data_matches(meta, same_names_other_units)
    assert "input channels" not in str(info.value)


def test_cli_test_refuses_a_checkpoint_on_other_normalisation(
    trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    with contextlib.chdir(trained.workdir):
        code = main(["test", "--config", str(CONFIG), "--data.init_args.data_dir", str(trained.data_dir),
                     "--model.init_args.model", "unet",
                     "--model.init_args.model_settings", json.dumps(UNET_SETTINGS),
                     "--data.init_args.transforms", "{RATE: none}", "--ckpt_path", str(trained.ckpt)])
    assert code == 2
    err = capsys.readouterr().err
    assert "meteovision test: error: checkpoint does not match the data" in err
    assert "normalisation statistics differ" in err


# --------------------------------------------------------------------------- not our checkpoints


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.ckpt: no such checkpoint file"):
        load_inference_model(tmp_path / "nothere.ckpt")


def test_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "epoch": 0}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.ckpt: not a meteovision checkpoint"):
        load_inference_model(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_is_refused(trained: Trained, tmp_path: Path, damage: str) -> None:
    path = tmp_path / f"{damage}.ckpt"
    good = trained.ckpt.read_bytes()
    path.write_bytes(b"this is no checkpoint" * 10 if damage == "garbage" else good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=rf"{damage}\.ckpt: truncated or not a torch checkpoint \(."):
        load_checkpoint(path)


def test_pickled_objects_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "objects.ckpt"
    torch.save({CHECKPOINT_KEY: {"application": "bow_echo"}, "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"objects\.ckpt: refused, it holds a Python object "
                       r"\(tests\.test_checkpoints\.NotATensor\) that safe loading \(weights_only=True\)"):
        load_checkpoint(path)


def test_cli_test_refuses_a_foreign_checkpoint(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "foreign.ckpt"
    ckpt = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    del ckpt[CHECKPOINT_KEY]
    torch.save(ckpt, path)
    with contextlib.chdir(trained.workdir):
        code = main(["test", "--config", str(CONFIG), "--data.init_args.data_dir", str(trained.data_dir),
                     "--model.init_args.model", "unet",
                     "--model.init_args.model_settings", json.dumps(UNET_SETTINGS), "--ckpt_path", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"meteovision test: error: {path}: not a meteovision checkpoint (no 'meteovision' metadata)" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- bad files, every command alike


def bad_checkpoint(trained: Trained, folder: Path, damage: str) -> tuple[Path, str]:
    """A damaged copy of the trained checkpoint, and the refusal every command must print for it."""
    path = folder / f"{damage}.ckpt"
    good = trained.ckpt.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
        return path, f"{path}: empty file (0 bytes), not a checkpoint"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
        return path, f"{path}: truncated or not a torch checkpoint ("
    ckpt = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    torch.save({**ckpt, "extra": NotATensor()}, path)  # a pickle payload: unpickling it would run code
    return path, f"{path}: refused, it holds a Python object (tests.test_checkpoints.NotATensor)"


DAMAGES = ["empty", "truncated", "pickle_payload"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_raises_a_named_error(trained: Trained, tmp_path: Path, damage: str) -> None:
    path, message = bad_checkpoint(trained, tmp_path, damage)
    with pytest.raises(CheckpointError) as info:
        load_inference_model(path)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("command", ["predict", "fit", "test"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_every_command_refuses_a_damaged_checkpoint_alike(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, damage: str
) -> None:
    path, message = bad_checkpoint(trained, tmp_path, damage)
    if command == "predict":
        radar = sorted((trained.data_dir / "radar").glob("*.h5"))[0]
        argv = ["predict", "--checkpoint", str(path), "--input", str(radar), "--output", str(tmp_path / "out")]
    else:
        argv = [command, "--config", str(CONFIG), "--data.init_args.data_dir", str(trained.data_dir),
                "--model.init_args.model", "unet", "--model.init_args.model_settings", json.dumps(UNET_SETTINGS),
                "--ckpt_path", str(path)]
    with contextlib.chdir(tmp_path):
        code = main(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert f"meteovision {command}: error: {message}" in err
    assert "Traceback" not in err and "UnpicklingError" not in err
    assert not (tmp_path / "run").exists()  # refused before any run folder was made
