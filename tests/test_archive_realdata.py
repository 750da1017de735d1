"""The quick real-archive config trains end to end on the radar series beside the checkout (slow, realdata)."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from pathlib import Path

import pytest
import torch

from meteovision.pipeline.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.realdata, pytest.mark.usefixtures("one_torch_thread")]


def test_quick_real_config_trains_from_raw_files(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "radar"
    with contextlib.chdir(tmp_path):
        code = main(["fit", "--config", "nowcast_precip_real_quick", f"--data.init_args.root={root}",
                     f"--trainer.default_root_dir={tmp_path}", "--trainer.logger.init_args.save_dir=" + str(tmp_path),
                     "--trainer.logger.class_path=lightning.pytorch.loggers.CSVLogger",
                     # held-out evaluate windows leave few training windows: log every step so the loss shows
                     "--trainer.log_every_n_steps=1"])
    assert code == 0
    metrics = next(tmp_path.rglob("metrics.csv"))
    with open(metrics) as fh:
        rows = list(csv.DictReader(fh))
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert train and val and all(math.isfinite(v) for v in train + val)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    meta = torch.load(ckpt, map_location="cpu", weights_only=False)["meteovision"]
    assert meta["channel_names"] == ["RATE_t-10min", "RATE_t-5min", "RATE_t+0min"]
    assert meta["target_names"] == ["RATE_t+5min", "RATE_t+10min", "RATE_t+15min"]
    assert meta["network"]["nowcast_head"] == "lk_advection"
    assert os.path.getsize(ckpt) > 0
