"""Checkpoints fitted on sample data, their fixtures and small helpers shared by the predict tests.

Checkpoints come from one-epoch, two-batch fits of tiny Half-UNets (and a ResNet18 for webcams)
on small synthetic sample data, built once per module: their skill is irrelevant, the tests
check that what ``predict`` writes is exactly what the network computes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from meteovision.datasets.datamodules import (
    ClassificationDataModule,
    RegressionDataModule,
    SegmentationDataModule,
    SequenceDataModule,
)
from meteovision.datasets.datamodules.gridded import REGRESSION_PATCHES, SEGMENTATION_PATCHES, SEQUENCE_PATCHES
from meteovision.datasets.datamodules.settings import LoaderSettings
from meteovision.datasets.readers import open_dataset
from meteovision.datasets.synthetic import SampleSettings, generate_sample_data
from meteovision.datasets.synthetic.grids import radar_grid
from meteovision.datasets.synthetic.writers import write_odim_composite
from meteovision.pipeline.checkpoints.loading import CHECKPOINT_KEY
from meteovision.pipeline.inference.predict import (
    Outcome,
    PredictReport,
)
from meteovision.pipeline.training.tasks import ClassificationTask, NowcastTask, RegressionTask, SegmentationTask

__all__ = [
    "Trained", "bow", "bow_checkpoint", "checker", "nowcast", "nowcast_checkpoint", "sat", "webcam",
    "webcam_checkpoint", "with_meta", "write_rate",
]


SAMPLE = SampleSettings(size=48, events=3, frames_per_event=6)
BATCH_4 = LoaderSettings(batch_size=4)
HALFUNET = {"num_filters": 4, "depth": 2}


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Trained:
    """A sample-data folder and a checkpoint fitted on it."""

    data: Path
    checkpoint: Path

    def inputs(self, sub: str) -> list[Path]:
        return sorted((self.data / sub).iterdir())


def fit_checkpoint(task: L.LightningModule, dm: L.LightningDataModule, path: Path) -> Path:
    """One epoch of two batches on CPU, then ``save_checkpoint`` (what ``meteovision fit`` writes)."""
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on few workers / small datasets
        trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


def bow_checkpoint(root: Path) -> Trained:
    data = root / "bow_echo"
    generate_sample_data("bow_echo", data, seed=1, settings=SAMPLE)
    task = SegmentationTask(application="bow_echo", model="halfunet", model_settings=HALFUNET, baseline=None)
    dm = SegmentationDataModule(data_dir=str(data), patches=replace(SEGMENTATION_PATCHES, patch_size=32),
                                loader=BATCH_4, input_variables=["RATE"], target_variable="bow_echo_mask",
                                transforms={"RATE": "log1p"})
    return Trained(data, fit_checkpoint(task, dm, root / "bow.ckpt"))


def nowcast_checkpoint(root: Path, app: str = "nowcast_precip", variable: str = "RATE",
                       transform: str = "log10_rain", n_in: int = 3, n_out: int = 2) -> Trained:
    data = root / app
    generate_sample_data(app, data, seed=1, settings=SAMPLE)
    task = NowcastTask(application=app, model="halfunet", model_settings=HALFUNET, baseline=None)
    dm = SequenceDataModule(data_dir=str(data), variables=[variable], num_input_frames=n_in,
                            num_output_frames=n_out, patches=replace(SEQUENCE_PATCHES, patch_size=32), loader=BATCH_4,
                            transforms={variable: transform})
    return Trained(data, fit_checkpoint(task, dm, root / f"{app}.ckpt"))


def sat2precip_checkpoint(root: Path) -> Trained:
    data = root / "sat2precip"
    generate_sample_data("sat2precip", data, seed=1, settings=SAMPLE)
    task = RegressionTask(application="sat2precip", model="halfunet", model_settings=HALFUNET, baseline=None)
    dm = RegressionDataModule(data_dir=str(data), patches=replace(REGRESSION_PATCHES, patch_size=32), loader=BATCH_4,
                              transforms={"RATE": "log1p"})
    return Trained(data, fit_checkpoint(task, dm, root / "sat2precip.ckpt"))


def webcam_checkpoint(root: Path) -> Trained:
    data = root / "webcam_snow"
    settings = SampleSettings(events=3, frames_per_event=3, cameras=2, image_height=32, image_width=48)
    generate_sample_data("webcam_snow", data, seed=1, settings=settings)
    task = ClassificationTask(application="webcam_snow", model="resnet18", baseline=None)
    dm = ClassificationDataModule(data_dir=str(data), image_size=32, loader=BATCH_4)
    return Trained(data, fit_checkpoint(task, dm, root / "webcam.ckpt"))


def with_meta(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of checkpoint ``src`` whose meteovision metadata has ``changes`` (weights unchanged)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    raw = ckpt[CHECKPOINT_KEY]
    for key, value in changes.items():  # a network field lives under "network" (format 2)
        (raw["network"] if key in raw["network"] else raw)[key] = value
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def bow(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return bow_checkpoint(tmp_path_factory.mktemp("bow"))


@pytest.fixture(scope="module")
def nowcast(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return nowcast_checkpoint(tmp_path_factory.mktemp("nowcast"))


@pytest.fixture(scope="module")
def sat(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return sat2precip_checkpoint(tmp_path_factory.mktemp("sat"))


@pytest.fixture(scope="module")
def webcam(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return webcam_checkpoint(tmp_path_factory.mktemp("webcam"))


@pytest.fixture(scope="module")
def checker() -> Any:
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    return ComplianceChecker


# ----------------------------------------------------------------------------- helpers


def read_fields(path: Path, names: list[str]) -> tuple[datetime, dict[str, np.ndarray]]:
    """Time (naive UTC) and ``[H, W]`` float32 fields of a reader dataset."""
    with open_dataset(path) as ds:
        t = pd.Timestamp(ds["time"].to_numpy()[0]).to_pydatetime()
        fields = {n: ds[n].to_numpy()[0].astype(np.float32) for n in names}
    return t, fields


def write_rate(path: Path, time: datetime, rate: np.ndarray) -> Path:
    """An ODIM_H5 RATE composite on the synthetic 48 x 48 radar grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_odim_composite(path, time, radar_grid(48), {"RATE": rate})
    return path


def product(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def only(report: PredictReport, status: str = "written") -> Outcome:
    assert [o.status for o in report.outcomes] == [status], report.outcomes
    return report.outcomes[0]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
