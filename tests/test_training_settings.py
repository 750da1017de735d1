"""Optimiser, scheduler and loss settings: dataclasses filled from the configs' flat mappings.

Every bad name, key, type or value is refused when the task is made (no data, no network yet), with
a :class:`ConfigError` naming the key; the CLI parser reads the YAML keys into the dataclasses and
writes them back unchanged; the checkpoint keeps plain mappings, so old and new ones load alike.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from meteovision.core.errors import ConfigError
from meteovision.pipeline.training.cli import build_cli
from meteovision.pipeline.training.losses import LossConfigError
from meteovision.pipeline.training.settings import LossSettings, OptimizerSettings, SchedulerSettings
from meteovision.pipeline.training.tasks import NowcastTask, SegmentationTask

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter:UserWarning"),
]

SEG_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny_seg.yaml"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = {"num_filters": 8, "depth": 2}


def seg_task(**settings: Any) -> SegmentationTask:
    return SegmentationTask(application="bow_echo", model="halfunet", model_settings=SMALL, baseline=None, **settings)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"optimizer": {"name": "adamx", "lr": 1e-3}}, "optimizer.name 'adamx' is unknown; known: ['adam', 'adamw'"),
        ({"optimizer": {"name": "adamw", "lrr": 1e-3}}, "optimizer 'adamw': unknown setting(s) ['lrr']; known:"),
        ({"optimizer": {"name": "adamw", "lr": -1.0}}, "optimizer.lr must be a number > 0, got -1.0"),
        ({"optimizer": {"name": "adamw", "lr": 0}}, "optimizer.lr must be a number > 0, got 0"),
        ({"optimizer": {"name": "adamw", "lr": "fast"}}, "optimizer.lr must be a number > 0, got 'fast'"),
        ({"optimizer": {"name": "adamw", "lr": True}}, "optimizer.lr must be a number > 0, got True"),
        ({"optimizer": {"name": "adamw", "lr": float("nan")}}, "optimizer.lr must be a number > 0, got nan"),
        ({"optimizer": {"name": "adamw", "weight_decay": -0.1}}, "optimizer.weight_decay must be a number >= 0"),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": -1.0}}, "optimizer 'sgd': Invalid momentum value"),
        ({"optimizer": {"name": 3}}, "optimizer.name must be a non-empty string"),
        ({"optimizer": "adamw"}, "optimizer must be a mapping {name: ..., ...}, got 'adamw'"),
        ({"loss": {"name": "dicee"}}, "loss.name 'dicee' is unknown; known: ['bce', 'bce_dice'"),
        ({"loss": {"name": "bce_dice", "pos_weigth": 2.0}}, "loss 'bce_dice': unknown setting(s) ['pos_weigth']"),
        ({"loss": {"pos_weight": 2.0}}, "loss.name is missing; known:"),
        ({"loss": {"name": "huber", "delta": -1.0}}, "huber: delta must be a number"),
        ({"scheduler": {"name": "cosinus"}}, "scheduler.name 'cosinus' is unknown; known: ['cosine'"),
        ({"scheduler": {"name": "step", "step_sise": 3}}, "scheduler 'step': unknown setting(s) ['step_sise']"),
        ({"scheduler": {"T_max": 3}}, "scheduler.name is missing; known:"),
        ({"scheduler": {"name": "cosine", "interval": "batch"}}, "scheduler.interval must be one of ['epoch', 'step']"),
    ],
)
def test_a_bad_setting_is_refused_when_the_task_is_made_with_its_key_named(
    settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        seg_task(**settings)
    assert named in str(info.value)


def test_loss_errors_stay_loss_config_errors() -> None:
    for bad in ({"name": "dicee"}, {"pos_weight": 2.0}, {"name": "bce", "pos_weigth": 1.0}):
        with pytest.raises(LossConfigError):
            LossSettings.from_config(bad)


def test_settings_fields_are_checked_when_made_directly() -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.lr must be a number > 0"):
        OptimizerSettings("adam", lr=-3.0)
    with pytest.raises(ConfigError, match=r"optimizer\.options: \['lr'\] are fields of their own"):
        OptimizerSettings("adam", options={"lr": 0.1})
    with pytest.raises(ConfigError, match=r"scheduler\.name 'nope' is unknown"):
        SchedulerSettings("nope")
    with pytest.raises(ConfigError, match=r"loss 'mae': unknown setting\(s\) \['delta'\]"):
        LossSettings("mae", {"delta": 1.0})


def test_the_flat_mapping_round_trips_and_names_are_normalised() -> None:
    opt = OptimizerSettings.from_config({"name": "SGD", "lr": 0.01, "momentum": 0.9, "nesterov": True})
    assert opt == OptimizerSettings("sgd", lr=0.01, options={"momentum": 0.9, "nesterov": True})
    assert opt.to_dict() == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True}
    assert OptimizerSettings.from_config(opt.to_dict()) == opt
    sched = SchedulerSettings.from_config({"name": "plateau", "patience": 2, "monitor": "val/csi"})
    assert sched.to_dict() == {"name": "plateau", "monitor": "val/csi", "interval": "epoch", "patience": 2}
    assert SchedulerSettings.from_config(sched.to_dict()) == sched
    loss = LossSettings.from_config({"name": "bce_dice", "pos_weight": 2})
    assert loss == LossSettings("bce_dice", {"pos_weight": 2})
    assert loss.to_dict() == {"name": "bce_dice", "pos_weight": 2}


def test_task_takes_dataclasses_or_mappings_and_keeps_plain_mappings_in_its_hparams() -> None:
    opt = OptimizerSettings("sgd", lr=0.05, options={"momentum": 0.9})
    by_class = seg_task(optimizer=opt, scheduler=SchedulerSettings("step", options={"step_size": 2}),
                        loss=LossSettings("bce_dice", {"pos_weight": 3.0}))
    by_dict = seg_task(optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                       scheduler={"name": "step", "step_size": 2}, loss={"name": "bce_dice", "pos_weight": 3.0})
    for task in (by_class, by_dict):
        assert task.optimizer_settings == opt
        assert task.hparams["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9}
        assert task.hparams["loss"] == {"name": "bce_dice", "pos_weight": 3.0}
        assert task.hparams["scheduler"] == {"name": "step", "monitor": "val/loss", "interval": "epoch", "step_size": 2}
        assert task.hparams_initial["optimizer"] == task.hparams["optimizer"]  # what the loggers write
    # what a checkpoint stores: safe loading (weights_only) refuses Python objects, so only plain types
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(by_class.hparams)}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)["hyper_parameters"]
    rebuilt = SegmentationTask(**stored)  # as Lightning's load_from_checkpoint does
    assert rebuilt.optimizer_settings == opt and rebuilt.loss_settings == by_class.loss_settings


def test_defaults_and_a_legacy_checkpoints_mapping() -> None:
    task = NowcastTask(application="nowcast_precip", model="halfunet", model_settings=SMALL)
    assert task.loss_settings == LossSettings("mae")
    assert task.optimizer_settings == OptimizerSettings("adamw", lr=1e-3, weight_decay=1e-4)
    assert task.scheduler_settings is None
    # hparams as checkpoints written before the dataclasses hold them
    legacy = seg_task(loss={"name": "bce_dice", "pos_weight": 5.0}, optimizer={"name": "adamw", "lr": 0.002},
                      scheduler={"name": "cosine"})
    assert legacy.optimizer_settings == OptimizerSettings("adamw", lr=0.002)
    net = torch.nn.Linear(2, 1)
    optimizer = legacy.optimizer_settings.build(net.parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 0.002
    assert legacy.scheduler_settings is not None
    scheduler = legacy.scheduler_settings.build(optimizer, max_epochs=7)["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 7


def test_the_cli_parser_reads_the_yaml_keys_into_the_dataclasses_and_writes_them_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "never_generated"
    argv = ["--config", str(SEG_CONFIG), "--data.init_args.data_dir", str(data_dir),
            "--model.init_args.optimizer", "{name: sgd, lr: 0.01, momentum: 0.9}",
            "--model.init_args.scheduler", "{name: step, step_size: 2}"]
    with contextlib.chdir(tmp_path):
        cli = build_cli(argv, run=False)
    init_args = cli.config["model"]["init_args"]
    assert init_args["optimizer"] == OptimizerSettings("sgd", lr=0.01, options={"momentum": 0.9})
    assert init_args["scheduler"] == SchedulerSettings("step", options={"step_size": 2})
    assert init_args["loss"] == LossSettings("bce_dice", {"pos_weight": 5.0})  # from the YAML file
    assert isinstance(cli.model, SegmentationTask)
    assert cli.model.optimizer_settings == init_args["optimizer"]
    dumped = yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))["model"]["init_args"]
    assert dumped["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9}
    assert dumped["loss"] == {"name": "bce_dice", "pos_weight": 5.0}
    assert not data_dir.exists()


@pytest.mark.parametrize("config", ["bow_echo", "nowcast_precip", "radar_cleaning", "sat2precip", "webcam_snow"])
def test_every_kind_of_packaged_config_fills_the_dataclasses(tmp_path: Path, config: str) -> None:
    given = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]["init_args"]
    with contextlib.chdir(tmp_path):
        task = build_cli(["--config", str(CONFIGS / f"{config}.yaml")], run=False).model
    assert isinstance(task.optimizer_settings, OptimizerSettings)
    assert task.optimizer_settings.to_dict() == given["optimizer"]
    assert task.loss_settings.to_dict() == given["loss"]
    assert task.scheduler_settings is not None and task.scheduler_settings.name == given["scheduler"]["name"]
