"""Data modules from YAML, statistics from the training split only, state round trips; catalog; summary."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from meteovision.datasets.catalog import (
    CatalogError,
    Manifest,
    frame_index,
    index_folder,
    time_from_filename,
)
from meteovision.datasets.datamodules import (
    ClassificationDataModule,
    RegressionDataModule,
    SegmentationDataModule,
    SequenceDataModule,
    datamodule_for_app,
)
from meteovision.datasets.datamodules.settings import AugmentSettings, LoaderSettings, PatchSettings, SplitSettings
from meteovision.datasets.summary import add_arguments, run, summarize_files
from meteovision.datasets.synthetic import APPS, SampleSettings, generate_sample_data
from meteovision.datasets.torch_datasets import SamplingError
from meteovision.pipeline.cli import main
from tests.test_torch_datasets import (
    T0,
    bow_arrays,
    event_times,
    write_radar_folder,
    write_satellite_folder,
    write_webcam_folder,
)

EPOCH = datetime(1970, 1, 1)


def _bow_folder(root: Path, n_events: int = 6, frames: int = 5) -> Path:
    times = event_times(n_events, frames)
    rate, mask = bow_arrays(len(times), seed=3)
    return write_radar_folder(root, times, {"RATE": rate}, {"bow_echo_mask": mask})


@pytest.fixture(scope="module")
def bow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bow_folder(tmp_path_factory.mktemp("bowdm"))


SPLIT_20 = SplitSettings(val_fraction=0.2, test_fraction=0.2)


def _seg(data_dir: Path, **kw: Any) -> SegmentationDataModule:
    args: dict[str, Any] = {
        "patches": PatchSettings(patch_size=16, patches_per_frame=4, positive_patch_probability=0.5),
        "loader": LoaderSettings(batch_size=4),
        "transforms": {"RATE": "log1p"},
        "split": SPLIT_20,
    }
    args.update(kw)
    return SegmentationDataModule(str(data_dir), **args)


# ----------------------------------------------------------------------------------------- from YAML
def test_datamodule_from_yaml_config_returns_batches(bow_dir: Path) -> None:
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = f"""
data:
  class_path: meteovision.datasets.datamodules.SegmentationDataModule
  init_args:
    data_dir: {bow_dir}
    input_variables: [RATE]
    target_variable: bow_echo_mask
    transforms: {{RATE: log1p}}
    split: {{val_fraction: 0.2, test_fraction: 0.2}}
    loader: {{batch_size: 4}}
    patches: {{patch_size: 16, patches_per_frame: 2, min_positive_fraction: 0.03}}
"""
    dm = parser.instantiate(parser.parse_string(config)).data
    assert isinstance(dm, SegmentationDataModule)
    # a group replaces only the fields it names: the rest keep the segmentation defaults
    assert dm.patch == PatchSettings(patch_size=16, patches_per_frame=2, min_positive_fraction=0.03,
                                     positive_patch_probability=0.5, positive_threshold=0.5)
    assert dm.split_settings == SPLIT_20 and dm.loader == LoaderSettings(batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 1, 16, 16) and batch["inputs"].dtype == torch.float32
    assert batch["target"].shape == (4, 1, 16, 16) and batch["mask"].dtype == torch.bool
    assert batch["time"].dtype == torch.float64
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        b = next(iter(loader))
        assert b["inputs"].shape[1:] == (1, 16, 16)
    # 6 events of 5 frames, 60/20/20 % -> 4 / 1 / 1 whole events
    assert dm.split.counts() == {"train": 20, "val": 5, "test": 5, "dropped": 0}
    assert len(dm.dataset("train")) == 20 * 2  # type: ignore[arg-type]
    assert len(dm.dataset("val")) == 5 * 4  # 4 tiles of 16 on a 24x24 frame  # type: ignore[arg-type]


def test_contract_attributes_and_description(bow_dir: Path) -> None:
    dm = _seg(bow_dir)
    # readable before setup (a task may build its model first)
    assert dm.channel_names == ["RATE"] and dm.channel_units == ["mm h-1"]
    assert dm.target_names == ["bow_echo_mask"] and dm.target_units == ["1"]
    assert dm.class_names is None and dm.target_transform is None
    assert dm.normalization.transforms == ("log1p",)
    desc = dm.data_description()
    assert desc["app"] == "bow_echo" and desc["seed"] == 7 and desc["data_dir"] == str(bow_dir)
    splits = desc["splits"]
    assert [splits[s]["frames"] for s in ("train", "val", "test")] == [20, 5, 5]
    assert splits["train"]["end"] < splits["val"]["start"] < splits["test"]["start"]
    assert splits["test"]["end"] == (T0 + timedelta(days=5, minutes=20)).isoformat() + "Z"
    assert splits["val"]["samples"] == splits["val"]["frames"] * 4


def test_stats_come_from_the_training_split_only(tmp_path: Path) -> None:
    root = _bow_folder(tmp_path)
    dm = _seg(root)
    dm.setup("fit")
    stats = dm.normalization
    test_idx = dm.split.indices("test")
    train_idx = dm.split.indices("train")
    # rewrite every test frame with very different rain: the statistics must not move
    index = frame_index(Manifest.load(root))
    times = [datetime.fromisoformat(str(index.times[i].astype("datetime64[s]"))) for i in test_idx]
    _, mask = bow_arrays(len(times), seed=9)
    write_radar_folder(
        tmp_path / "other", times, {"RATE": np.full((len(times), 24, 24), 150.0)}, {"bow_echo_mask": mask}
    )
    for t in times:
        name = t.strftime("%Y%m%d%H%M")
        (tmp_path / "other" / "radar" / f"{name}.h5").replace(root / "radar" / f"{name}.h5")
    again = _seg(root)
    again.setup("fit")
    assert again.normalization == stats
    # the same change on one training frame does move them (the test above can fail)
    t = datetime.fromisoformat(str(index.times[train_idx[0]].astype("datetime64[s]")))
    write_radar_folder(tmp_path / "other2", [t], {"RATE": np.full((1, 24, 24), 150.0)}, {"bow_echo_mask": mask[:1]})
    name = t.strftime("%Y%m%d%H%M")
    (tmp_path / "other2" / "radar" / f"{name}.h5").replace(root / "radar" / f"{name}.h5")
    third = _seg(root)
    third.setup("fit")
    assert third.normalization.mean[0] > stats.mean[0]


def test_state_dict_travels_and_test_setup_does_not_refit(
    bow_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = _seg(bow_dir)
    dm.setup("fit")
    state = dm.state_dict()
    fresh = _seg(bow_dir)
    monkeypatch.setattr(fresh, "_fit_stats", lambda: pytest.fail("refitted statistics at test time"))
    fresh.load_state_dict(state)
    fresh.setup("test")
    assert fresh.normalization == dm.normalization
    b1 = next(iter(dm.test_dataloader()))
    b2 = next(iter(fresh.test_dataloader()))
    torch.testing.assert_close(b1, b2)
    # or from a JSON file
    path = dm.save_normalization(tmp_path / "norm.json")
    from_file = _seg(bow_dir, normalization_path=str(path))
    monkeypatch.setattr(from_file, "_fit_stats", lambda: pytest.fail("refitted statistics"))
    from_file.setup("test")
    assert from_file.normalization == dm.normalization


class _TinyTask(LightningModule):
    """One convolution: enough for Lightning to run fit/test and write a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.conv(batch["inputs"])
        return torch.nn.functional.binary_cross_entropy_with_logits(out[batch["mask"]], batch["target"][batch["mask"]])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("n", float(batch["inputs"].shape[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_statistics_travel_in_a_lightning_checkpoint(
    bow_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    dm = _seg(bow_dir)
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, **kw)
    trainer.fit(_TinyTask(), datamodule=dm)
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = _seg(bow_dir)
    monkeypatch.setattr(fresh, "_fit_stats", lambda: pytest.fail("refitted statistics at test time"))
    Trainer(limit_test_batches=1, **kw).test(_TinyTask(), datamodule=fresh, ckpt_path=str(ckpt), weights_only=True)
    assert fresh.normalization == dm.normalization


def test_loader_workers_give_the_same_batches(bow_dir: Path) -> None:
    both = AugmentSettings(flips=True, rot90=True)
    one = _seg(bow_dir, loader=LoaderSettings(batch_size=4, num_workers=0), augment=both, seed=3)
    two = _seg(bow_dir, loader=LoaderSettings(batch_size=4, num_workers=2), augment=both, seed=3)
    one.setup("fit")
    two.load_state_dict(one.state_dict())
    two.setup("fit")
    for _ in range(2):  # two epochs: the sampler advances the epoch in both
        for b1, b2 in zip(one.train_dataloader(), two.train_dataloader(), strict=True):
            torch.testing.assert_close(b1, b2)


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"no manifest\.json"):
        _ = _seg(tmp_path / "absent").channel_names
    with pytest.raises(SamplingError, match=r"split\.mode 'random' unknown"):
        _seg(tmp_path, split=SplitSettings(mode="random"))
    with pytest.raises(SamplingError, match=r"split\.val_fraction 0\.5 \+ split\.test_fraction 0\.5 must be < 1"):
        _seg(tmp_path, split=SplitSettings(val_fraction=0.5, test_fraction=0.5))
    with pytest.raises(SamplingError, match=r"loader\.batch_size must be >= 1, got 0"):
        _seg(tmp_path, loader=LoaderSettings(batch_size=0))
    with pytest.raises(SamplingError, match=r"augment\.rot90"):
        ClassificationDataModule(str(tmp_path), augment=AugmentSettings(flips=True, rot90=True))


def test_old_flat_keys_still_work_with_a_deprecation_warning(bow_dir: Path) -> None:
    """Flat keys of earlier configs are read for one more release, mapped into their group."""
    with pytest.warns(DeprecationWarning, match=r"'batch_size' is deprecated.*loader: \{batch_size: 3\}"):
        dm = SegmentationDataModule(str(bow_dir), batch_size=3, split=SPLIT_20)
    assert dm.loader == LoaderSettings(batch_size=3, num_workers=0)
    with (pytest.warns(DeprecationWarning, match="'split_mode' is deprecated"),
          pytest.raises(SamplingError, match=r"split\.mode 'random' unknown")):
        _seg(bow_dir, split_mode="random")
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = f"""
data:
  class_path: meteovision.datasets.datamodules.SegmentationDataModule
  init_args: {{data_dir: {bow_dir}, patch_size: 24, flips: false}}
"""
    with pytest.warns(DeprecationWarning, match="'patch_size' is deprecated"):
        old = parser.instantiate(parser.parse_string(config)).data
    assert old.patch.patch_size == 24 and old.patch.patches_per_frame == 4 and old.augment.flips is False
    assert old.hparams["patches"]["patch_size"] == 24 and "patch_size" not in old.hparams


# ----------------------------------------------------------------------------------------- other modules
def test_sequence_datamodule(tmp_path: Path) -> None:
    times = event_times(5, 8)
    rain = np.random.default_rng(1).gamma(0.6, 3.0, (len(times), 16, 16)).round(2)
    root = write_radar_folder(tmp_path, times, {"RATE": rain}, app="nowcast_precip")
    dm = SequenceDataModule(
        str(root),
        num_input_frames=3,
        num_output_frames=2,
        patches=PatchSettings(patch_size=8, patches_per_frame=2),
        loader=LoaderSettings(batch_size=2),
        transforms={"RATE": "log10_rain"},
        split=SPLIT_20,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (2, 3, 8, 8) and batch["target"].shape == (2, 2, 8, 8)
    assert dm.channel_names == ["RATE_t-10min", "RATE_t-5min", "RATE_t+0min"]
    assert dm.target_names == ["RATE_t+5min", "RATE_t+10min"]
    assert dm.channel_units == ["mm h-1"] * 3
    assert dm.target_transform == dm.normalization and dm.normalization.transforms == ("log10_rain",)
    # 4 windows of 5 frames per 8-frame event: 3 train events, 1 val, 1 test
    assert [dm.dataset(s).num_windows for s in ("train", "val", "test")] == [12, 4, 4]  # type: ignore[attr-defined]


def test_regression_datamodule(tmp_path: Path) -> None:
    times = event_times(5, 3, step_minutes=15)
    rng = np.random.default_rng(5)
    chans = {c: rng.uniform(200, 290, (len(times), 16, 16)) for c in ("IR_108", "WV_062")}
    rate = rng.gamma(0.5, 2.0, (len(times), 16, 16))
    rate[:, :2] = np.nan
    root = write_satellite_folder(tmp_path, times, chans, rate)
    dm = RegressionDataModule(
        str(root), patches=PatchSettings(patch_size=None), loader=LoaderSettings(batch_size=3),
        transforms={"RATE": "log1p"}, split=SPLIT_20,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (3, 2, 16, 16) and batch["target"].shape == (3, 1, 16, 16)
    assert not batch["mask"][:, :, :2].any() and batch["mask"][:, :, 2:].all()
    assert dm.target_transform.channel_names == ("RATE",) and dm.target_transform.transforms == ("log1p",)
    assert dm.target_units == ["mm h-1"] and dm.channel_units == ["K", "K"]
    train_rate = rate[dm.split.indices("train")]
    assert dm.target_transform.mean[0] == pytest.approx(np.nanmean(np.log1p(train_rate)), rel=1e-5)


def test_classification_datamodule(tmp_path: Path) -> None:
    root = write_webcam_folder(tmp_path, event_times(5, 2, step_minutes=60), cameras=2)
    dm = ClassificationDataModule(str(root), image_size=16, loader=LoaderSettings(batch_size=4), split=SPLIT_20)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 3, 16, 16) and batch["target"].dtype == torch.int64
    assert "mask" not in batch
    assert dm.class_names == ["none", "partial", "full"] and dm.channel_names == ["red", "green", "blue"]
    assert dm.split.counts() == {"train": 12, "val": 4, "test": 4, "dropped": 0}
    vis = ClassificationDataModule(str(root), label="visibility", image_size=16, split=SPLIT_20)
    assert vis.class_names == ["<200 m", "200-1000 m", "1-5 km", ">5 km"]
    np.testing.assert_array_equal(vis.labels[:4], [0, 1, 1, 2])  # 150, 700 | 700, 3000 m


def test_app_defaults() -> None:
    dm = datamodule_for_app("nowcast_cloudiness", "unused")
    assert isinstance(dm, SequenceDataModule) and dm.augment.flips is False
    with pytest.raises(CatalogError, match="unknown application"):
        datamodule_for_app("hail", "unused")


# ----------------------------------------------------------------------------------------- real generators
SMALL = SampleSettings(size=32, events=5, frames_per_event=8, cameras=2, image_height=32, image_width=48)


@pytest.mark.parametrize("app", APPS)
def test_every_app_from_the_generator(app: str, tmp_path: Path) -> None:
    generate_sample_data(app, tmp_path / app, seed=0, settings=SMALL)
    over: dict[str, Any] = {"loader": {"batch_size": 4}}
    if app.startswith("webcam"):
        over["image_size"] = 32
    else:
        over["patches"] = {"patch_size": 32}  # only the patch size: the app's other patch defaults stay
    if app.startswith("nowcast"):
        over.update(num_input_frames=3, num_output_frames=2)
    dm = datamodule_for_app(app, str(tmp_path / app), **over)
    dm.setup("fit")
    assert dm.split.counts()["test"] > 0 and dm.split.counts()["val"] > 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["inputs"].dtype == torch.float32 and batch["time"].dtype == torch.float64
        assert batch["inputs"].shape[1] == len(dm.channel_names) == len(dm.channel_units)
        assert torch.isfinite(batch["inputs"]).all()
        if dm.class_names:
            assert batch["target"].shape == (4,) and int(batch["target"].max()) < len(dm.class_names)
        else:
            assert batch["target"].shape[1] == len(dm.target_names) == len(dm.target_units)
            assert batch["mask"].shape == batch["target"].shape and batch["mask"].dtype == torch.bool
    desc = dm.data_description()
    assert desc["app"] == app and desc["seed"] == 0


def test_generate_if_missing_then_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "fresh"
    dm = SequenceDataModule(str(data), num_input_frames=2, num_output_frames=2, generate_if_missing="nowcast_precip")
    dm.prepare_data()
    assert (data / "manifest.json").is_file() and dm.manifest.app == "nowcast_precip"
    assert main(["summary", str(data), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "SequenceDataModule" in out and "RATE [mm h-1] log10_rain" in out
    assert "train: inputs float32 [2, 4, 64, 64]" in out and "target float32 [2, 6, 64, 64]" in out


# ----------------------------------------------------------------------------------------- catalog
def test_time_from_filename() -> None:
    assert time_from_filename("T_PAAH21_C_EUOC_20180824230000.hdf") == np.datetime64("2018-08-24T23:00", "ns")
    assert time_from_filename("201609281445_FINUTM.tif") == np.datetime64("2016-09-28T14:45", "ns")
    assert time_from_filename("S_NWC_CRR_MSG4_Europe-VISIR_20180601T084500Z.nc") == np.datetime64(
        "2018-06-01T08:45", "ns"
    )
    assert time_from_filename("cam3_202405011230.jpg") == np.datetime64("2024-05-01T12:30", "ns")
    assert time_from_filename("composite_latest.h5") is None
    assert time_from_filename("x_20241399.h5") is None


def test_index_folder_groups_events(bow_dir: Path) -> None:
    cat = index_folder(bow_dir / "radar")
    assert len(cat) == 30 and cat.time_step == np.timedelta64(5, "m")
    np.testing.assert_array_equal(np.unique(cat.events), np.arange(6))
    assert len(cat.gaps()) == 5


@pytest.mark.realdata
def test_index_real_opera_folder(shared_data: Path) -> None:
    cat = index_folder(shared_data / "radar" / "opera_20180824")
    assert len(cat) == 24 and cat.time_step == np.timedelta64(15, "m")
    assert cat.times[0] == np.datetime64("2018-08-24T18:00", "ns") and set(cat.events) == {0}


# ----------------------------------------------------------------------------------------- summary
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_summary_of_a_sample_folder(bow_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the app's default 64-pixel patches do not fit the 24x24 test grid: a clear error, then a config
    assert run(_args(str(bow_dir))) == 2
    assert "patch_size 64 larger than the grid 24 x 24" in capsys.readouterr().err
    config = tmp_path / "bow.yaml"
    config.write_text(
        "data:\n  class_path: meteovision.datasets.datamodules.SegmentationDataModule\n"
        "  init_args: {data_dir: elsewhere, patch_size: 16, transforms: {RATE: log1p},"
        " val_fraction: 0.2, test_fraction: 0.2}\n"
    )
    assert run(_args(str(bow_dir), "--config", str(config), "--batch-size", "2")) == 0
    out = capsys.readouterr().out
    assert "app bow_echo" in out and "SegmentationDataModule" in out
    assert "RATE [mm h-1] log1p" in out
    assert "train     20 frames      80 samples" in out
    assert "train: inputs float32 [2, 1, 16, 16]" in out and "mask bool [2, 1, 16, 16]" in out


def test_summary_of_files(bow_dir: Path) -> None:
    files = sorted((bow_dir / "radar").glob("*.h5"))[:3]
    text = summarize_files(files)
    assert "files: 3" in text and "odim_h5" in text and "RATE [mm h-1]" in text
    assert "24 x 24 (y x), dx 1000 m" in text and "Lambert" in text
    assert "step 300 s" in text


def test_summary_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(str(tmp_path / "nothing.h5"))) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.realdata
def test_summary_of_real_opera_files(shared_data: Path) -> None:
    files = sorted((shared_data / "radar" / "opera_20180824").glob("*.hdf"))[:2]
    text = summarize_files(files)
    assert "RATE [mm h-1]" in text and "2200 x 1900 (y x), dx 2000 m" in text and "step 900 s" in text
