"""Learning that is real: a short CPU training run must beat each application's classic baseline.

One run per application family, on its synthetic data, scored on the held-out test split
(the latest events, never seen in training) with the same metric objects for model and
baseline. These are the slow tests: each trains for about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meteovision.pipeline.training.cli import build_cli

pytestmark = pytest.mark.slow


def _fit_and_test(
    app: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str
) -> dict[str, dict[str, float]]:
    monkeypatch.chdir(tmp_path)
    common = ["--config", app, "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    build_cli(["fit", *common, *overrides])
    ckpt = tmp_path / "runs" / app / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    build_cli(["test", *common, "--ckpt_path", str(ckpt)])
    reports = sorted((tmp_path / "runs" / app / "logs").glob("version_*/test_metrics.json"))
    assert reports, "meteovision test wrote no test_metrics.json"
    report = json.loads(reports[-1].read_text())
    assert report["model_scores"] and report["baseline_scores"]
    return {"model": report["model_scores"], "baseline": report["baseline_scores"]}


def test_bow_echo_unet_beats_threshold_and_shape_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _fit_and_test("bow_echo", tmp_path, monkeypatch, "--trainer.max_epochs", "30")
    model, rule = scores["model"]["cont/csi@0.5"], scores["baseline"]["cont/csi@0.5"]
    assert model > rule, f"U-Net CSI {model:.3f} does not beat the threshold-and-shape rule's {rule:.3f}"


def test_sat2precip_halfunet_beats_gpi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _fit_and_test("sat2precip", tmp_path, monkeypatch, "--trainer.max_epochs", "4")
    m, b = scores["model"], scores["baseline"]
    assert m["reg/rmse"] < b["reg/rmse"], f"RMSE {m['reg/rmse']:.3f} not below GPI's {b['reg/rmse']:.3f}"
    assert m["cont/csi@1"] > b["cont/csi@1"], f"CSI@1 {m['cont/csi@1']:.3f} not above GPI's {b['cont/csi@1']:.3f}"


def test_radar_cleaning_unet_beats_texture_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _fit_and_test("radar_cleaning", tmp_path, monkeypatch, "--trainer.max_epochs", "6")
    m, b = scores["model"], scores["baseline"]
    assert m["cont/csi@0.5"] > b["cont/csi@0.5"], f"artefact CSI {m['cont/csi@0.5']:.3f} vs {b['cont/csi@0.5']:.3f}"
    assert 0.0 <= m["rain/rain_kept"] <= 1.0 and 0.0 <= b["rain/rain_kept"] <= 1.0


def test_webcam_snow_vgg11_beats_brightness_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _fit_and_test("webcam_snow", tmp_path, monkeypatch, "--trainer.max_epochs", "8")
    m, b = scores["model"]["cls/f1_macro"], scores["baseline"]["cls/f1_macro"]
    assert m > b, f"VGG11 macro-F1 {m:.3f} does not beat the brightness rule's {b:.3f}"


def test_nowcast_precip_beats_persistence_at_30_min(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _fit_and_test("nowcast_precip", tmp_path, monkeypatch, "--trainer.max_epochs", "8")
    m, b = scores["model"]["lead030_cont/csi@1"], scores["baseline"]["lead030_cont/csi@1"]
    assert m > b, f"+30 min CSI@1 {m:.3f} does not beat persistence's {b:.3f}"
    m, b = scores["model"]["lead030_reg/mae"], scores["baseline"]["lead030_reg/mae"]
    assert m < b, f"+30 min MAE {m:.3f} is not below persistence's {b:.3f}"
