"""The packaged real-radar nowcast checkpoint: found by name, small, described by its card, loaded exactly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from meteovision.pipeline.checkpoints.loading import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_inference_model,
)
from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata
from meteovision.pipeline.checkpoints.packaged import (
    MAX_PACKAGED_BYTES,
    PACKAGED_CHECKPOINTS,
    model_card_path,
    packaged_checkpoint_path,
    resolve_checkpoint,
    write_packaged_checkpoint,
)
from meteovision.pipeline.demo import write_report
from meteovision.pipeline.demo_real_nowcast import run_real_nowcast

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAME = "nowcast_precip_real"
ROOT = Path(__file__).resolve().parent.parent


def test_every_packaged_checkpoint_ships_small_with_its_card() -> None:
    for name in PACKAGED_CHECKPOINTS:
        path = packaged_checkpoint_path(name)
        assert path.is_file(), path
        assert path.stat().st_size <= MAX_PACKAGED_BYTES
        card = model_card_path(name).read_text(encoding="utf-8")
        # the card describes THIS file: its sha256 is written in it
        assert re.search(rf"sha256[^0-9a-f]*{file_sha256(path)}", card), f"{name}: card names another file"
        for producer in ("RMI", "MeteoSwiss"):
            assert producer in card  # the rights of the training data


def test_a_name_resolves_to_the_package_and_a_file_of_that_name_wins(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(NAME) == packaged_checkpoint_path(NAME)
    (tmp_path / NAME).write_bytes(b"mine")
    assert resolve_checkpoint(NAME) == Path(NAME)
    assert resolve_checkpoint("other.ckpt") == Path("other.ckpt")


def test_an_unknown_name_is_refused_naming_the_packaged_ones(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"no such checkpoint file.*{NAME}"):
        load_checkpoint(tmp_path / "nowcast_precip_rea")


def test_the_packaged_network_loads_by_name_as_a_5_min_2_km_lk_nowcast() -> None:
    model = load_inference_model(NAME)
    meta = model.meta
    assert (meta.application, meta.network.nowcast_head) == ("nowcast_precip", "lk_advection")
    assert meta.time_step_minutes == pytest.approx(5.0)
    assert meta.grid_spacing_m == pytest.approx(2000.0)
    assert meta.network.long_lead_smoothing == pytest.approx(0.25)  # chosen on the pre-test windows
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    raw = load_checkpoint(NAME)
    assert "optimizer_states" not in raw
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())


def test_slimming_keeps_the_weights_to_float16_and_drops_the_training_state(tmp_path: Path) -> None:
    packaged = load_checkpoint(NAME)
    training = dict(packaged, optimizer_states=[{"state": {}}], lr_schedulers=[{}])
    training["state_dict"] = {k: (v.float() if v.is_floating_point() else v) for k, v in packaged["state_dict"].items()}
    out = write_packaged_checkpoint(training, tmp_path / "slim.ckpt", "training.ckpt")
    again = load_checkpoint(out)
    assert set(again) == set(packaged)
    for key, value in packaged["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key
    x = torch.rand(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_inference_model(out).net(x), load_inference_model(NAME).net(x))


def test_the_packaging_tool_records_a_long_lead_smoothing_and_refuses_a_negative_one() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("package_checkpoint", ROOT / "tools" / "package_checkpoint.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    packaged = load_checkpoint(NAME)
    for sigma, recorded in ((0.6, 0.6), (0.0, None)):
        updated = tool.with_long_lead_smoothing(packaged, sigma, "x.ckpt")
        assert CheckpointMetadata.from_checkpoint_dict(updated).network.long_lead_smoothing == recorded
        assert updated["state_dict"] is packaged["state_dict"]
    with pytest.raises(CheckpointError, match=r"x\.ckpt: --long-lead-smoothing must be >= 0"):
        tool.with_long_lead_smoothing(packaged, -1.0, "x.ckpt")


def test_a_checkpoint_above_the_limit_is_refused_and_leaves_no_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meteovision.pipeline.checkpoints.packaged.MAX_PACKAGED_BYTES", 1000)
    with pytest.raises(CheckpointError, match=r"training\.ckpt: its float16 weights take .* MB, above"):
        write_packaged_checkpoint(load_checkpoint(NAME), tmp_path / "big.ckpt", "training.ckpt")
    assert list(tmp_path.iterdir()) == []


def _runner(code: int, written: Path | None = None, fit_code: int = 0):  # type: ignore[no-untyped-def]
    def run(cmd: list[str], cwd: Path, log: Path) -> subprocess.CompletedProcess[str]:
        if "fit" in cmd:
            return subprocess.CompletedProcess(cmd, fit_code, "", "")
        assert "quick=" + str(cwd / "runs/nowcast_precip_real_quick/checkpoints/last.ckpt") in cmd
        if written is not None:
            written.mkdir(parents=True)
            (written / "scores.md").write_text("| lead | method |\n")
            (written / "skill_vs_lead_mae.png").write_bytes(b"\x89PNG")
        return subprocess.CompletedProcess(cmd, code, "", "")
    return run


def test_the_demo_skips_the_real_nowcast_without_real_frames_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    result = run_real_nowcast(tmp_path / "demo", tmp_path / "no_shared", _runner(0))
    assert "no real frames at" in result.skipped and not result.error
    report = write_report([], tmp_path / "demo", result).read_text()
    assert "skipped: no real frames" in report


def test_the_demo_reports_the_real_nowcast_or_its_failure(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "radar" / "opera_cirrus_20241126").mkdir(parents=True)
    out = tmp_path / "demo"
    assert run_real_nowcast(out, data, _runner(0, fit_code=1)).error.startswith(
        "fit nowcast_precip_real_quick failed (exit 1)")
    failed = run_real_nowcast(out, data, _runner(2))
    assert failed.error.startswith("evaluate failed (exit 2)")
    done = run_real_nowcast(out, data, _runner(0, out / "evaluation" / "opera_cirrus"))
    assert done.table.startswith("| lead | method |")
    assert [p.name for p in done.outputs] == ["skill_vs_lead_mae.png"]
    report = write_report([], out, done).read_text()
    assert "packaged network on real OPERA CIRRUS frames" in report and "skill_vs_lead_mae.png" in report


@pytest.mark.realdata
def test_the_packaged_network_nowcasts_real_cirrus_frames_by_name_better_than_persistence(shared_data: Path) -> None:
    """OPERA CIRRUS: a series no training or validation read (the demo's real-radar step, +15 min)."""
    pytest.importorskip("pysteps")
    from meteovision.pipeline.verification.evaluate import run_evaluation
    from meteovision.pipeline.verification.evaluate_config import load_config

    # one analysis time (the last 7 frames: 4 past, 3 leads), to keep the suite short
    cfg = load_config("evaluate_opera_cirrus", data_root=shared_data, max_lead_minutes=15,
                      methods=("persistence",), maps="none").model_copy(update={"test_from": None, "last_frames": 7})
    result = run_evaluation(cfg, {"packaged": Path(NAME)})
    assert len(result.analysis_times) == 1
    assert result.checkpoint == packaged_checkpoint_path(NAME)
    last = result.n_leads - 1
    assert result.value("packaged", last, "mae") < 0.8 * result.value("persistence", last, "mae")
    assert result.value("packaged", last, "csi@1") > result.value("persistence", last, "csi@1") + 0.05


def test_evaluate_refuses_a_network_needing_more_past_frames_before_reading_any(tmp_path: Path) -> None:
    from meteovision.pipeline.verification.evaluate import check_networks_fit, run_evaluation
    from meteovision.pipeline.verification.evaluate_config import EvaluationError, load_config

    cfg = load_config("evaluate_rmi", data_root=tmp_path).model_copy(update={"past_frames": 2})
    with pytest.raises(EvaluationError, match=r"checkpoint real .* needs 3 past frames, the config gives 2"):
        check_networks_fit(cfg, {"real": Path(NAME)})
    with pytest.raises(EvaluationError, match=r"needs 3 past frames"):  # before the (absent) frames are read
        run_evaluation(cfg, {"real": Path(NAME)})


@pytest.mark.realdata
def test_predict_by_name_nowcasts_1_km_frames_coarsened_to_the_checkpoints_2_km(shared_data: Path,
                                                                                tmp_path: Path) -> None:
    pytest.importorskip("pysteps")
    import json

    import xarray as xr

    from meteovision.pipeline.cli import main

    frames = sorted((shared_data / "radar" / "mch_20150515").glob("*.h5"))[-3:]
    args = ["predict", "--checkpoint", NAME, "--input", *map(str, frames), "--latest", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "refused")]) == 2  # 1 km frames, a 2 km checkpoint
    assert main([*args, "--output", str(tmp_path / "ok"), "--coarsen", "2"]) == 0
    (product,) = (tmp_path / "ok").glob("*.nc")
    with xr.open_dataset(product) as ds:
        assert ds.rain_rate.shape == (3, 320, 355)  # 640 x 710 cells of 1 km, halved
        assert float(abs(ds.x[1] - ds.x[0])) == pytest.approx(2000.0)
        assert json.loads(ds.attrs["meteovision_config"])["input_coarsen"] == 2
        assert ds.attrs["meteovision_checkpoint_sha256"] == file_sha256(packaged_checkpoint_path(NAME))
        assert float(ds.rain_rate.max()) > 1.0  # it rains in the Alps that evening
