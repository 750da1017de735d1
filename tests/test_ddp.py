"""The same tiny config under DDP: two CPU processes (gloo), launched by ``meteovision`` itself.

Lightning's DDP launcher re-runs the command line for the second process, so the runs go through
``python -m meteovision.pipeline.cli`` in a subprocess (never in the pytest process). The checks
need both processes: the training batches are shared between them, and the validation and test
scores must count every valid pixel of the split once (each process sees only half of it).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from meteovision.datasets.datamodules import datamodule_from_config
from meteovision.datasets.synthetic import SampleSettings, generate_sample_data
from meteovision.pipeline.checkpoints.loading import load_inference_model

CONFIG = Path(__file__).resolve().parent / "configs" / "tiny_seg.yaml"
SAMPLE = SampleSettings(size=32, events=5, frames_per_event=8)
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
TIMEOUT_S = 300


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}"


def run_meteovision(workdir: Path, *argv: str | Path) -> Result:
    """``python -m meteovision.pipeline.cli ARGV`` in ``workdir``, one thread per process, killed on timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "meteovision.pipeline.cli", *(str(a) for a in argv)]
    # a new session: on timeout the whole group (the DDP child included) is killed
    with subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"meteovision {' '.join(cmd[3:])} still running after {TIMEOUT_S} s\n{err[-6000:]}")
    return Result(proc.returncode, out, err)


def valid_pixels(data_dir: Path, split: str) -> int:
    """Valid target pixels of the whole ``split``, from the config's datamodule (one process)."""
    section: dict[str, Any] = yaml.safe_load(CONFIG.read_text())["data"]
    dm = datamodule_from_config(section, data_dir=str(data_dir))
    ds = dm.dataset(split)
    return int(sum(int(ds[i]["mask"].sum()) for i in range(len(ds))))  # type: ignore[arg-type]


def contingency_total(scores: dict[str, Any], prefix: str) -> float:
    return sum(float(scores[f"{prefix}{k}@0.5"]) for k in ("hits", "misses", "false_alarms", "correct_negatives"))


@dataclass(frozen=True)
class DdpFit:
    workdir: Path
    data_dir: Path
    result: Result


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> DdpFit:
    workdir = tmp_path_factory.mktemp("ddp")
    data_dir = workdir / "data" / "bow_echo"
    generate_sample_data("bow_echo", data_dir, seed=0, settings=SAMPLE)
    # every training batch (limit 1.0 = 100 %): 24 samples / batch 4 = 6 batches, 3 per process
    result = run_meteovision(workdir, "fit", "--config", CONFIG, "--data.init_args.data_dir", data_dir, *DDP,
                             "--trainer.limit_train_batches", "1.0")
    return DdpFit(workdir, data_dir, result)


def test_ddp_fit_shares_batches_and_reduces_validation_scores(ddp_fit: DdpFit) -> None:
    assert ddp_fit.result.code == 0, ddp_fit.result.explain()
    run = ddp_fit.workdir / "run"
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    # one process alone would take 6 optimiser steps for the epoch; two share the batches
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 3
    model = load_inference_model(ckpt_path)  # rank 0 wrote the whole checkpoint, metadata included
    assert model.meta.channel_names == ("RATE",) and model.meta.in_channels == 1

    logs = run / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0"]  # the second process created no folder
    saved = yaml.safe_load((logs / "version_0" / "config.yaml").read_text())
    assert saved["trainer"]["strategy"] == "ddp" and str(saved["trainer"]["devices"]) == "2"
    assert list((logs / "version_0").glob("events.out.tfevents.*"))
    with (logs / "version_0" / "metrics.csv").open(newline="") as handle:
        val_rows = [r for r in csv.DictReader(handle) if r.get("val/loss")]
    assert len(val_rows) == 1
    # each process validated 4 of the 8 frames; the logged counts are those of all 8
    assert contingency_total(val_rows[0], "val/cont/") == valid_pixels(ddp_fit.data_dir, "val") == 8 * 32 * 32


def test_ddp_test_scores_the_whole_test_split(ddp_fit: DdpFit) -> None:
    assert ddp_fit.result.code == 0, ddp_fit.result.explain()
    result = run_meteovision(ddp_fit.workdir, "test", "--config", CONFIG, "--data.init_args.data_dir",
                             ddp_fit.data_dir, *DDP, "--ckpt_path", "run/checkpoints/last.ckpt")
    assert result.code == 0, result.explain()
    assert "DistributedSampler" in result.stderr  # Lightning split the test set between the processes
    assert result.stdout.count("### bow_echo: halfunet vs bow_echo_rule") == 1  # printed by rank 0 only
    report = json.loads((ddp_fit.workdir / "run" / "logs" / "version_1" / "test_metrics.json").read_text())
    total = valid_pixels(ddp_fit.data_dir, "test")
    assert total == 8 * 32 * 32
    assert contingency_total(report["model_scores"], "cont/") == total
    assert contingency_total(report["baseline_scores"], "cont/") == total
