"""Smoke test of ``benchmarks/nowcast.py``: it runs end to end on a tiny domain and reports every figure.

No timing is asserted (the numbers depend on the machine and its load). What is asserted: the
benchmark's network is the nowcast_precip configuration's, loaded as any checkpoint, and the
reported medians and ratios follow from the recorded times.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from meteovision.pipeline.checkpoints.loading import load_inference_model
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast
from tests.conftest import load_benchmark_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nowcast_precip.yaml"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script (``benchmarks/nowcast.py``)."""
    return load_benchmark_script("nowcast")


def test_checkpoint_is_the_configured_network(bench: ModuleType, tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    arch = bench.Architecture.from_config()
    model = load_inference_model(bench.make_checkpoint(tmp_path / "nowcast.ckpt", arch, seed=0))
    meta = model.meta
    assert (meta.model_name, meta.network.model_settings) == (model_args["model"], model_args["model_settings"])
    assert meta.network.nowcast_head == model_args["nowcast_head"] and isinstance(model.net, AdvectionNowcast)
    assert (meta.in_channels, meta.out_channels) == (data_args["num_input_frames"],
                                                     data_args["num_output_frames"])
    assert meta.task_kind == "nowcast" and meta.input_variables == ("RATE",)
    assert meta.target_normalization == meta.normalization  # outputs come back in mm h-1
    assert meta.data_description["trained"] is False


def test_benchmark_runs_and_reports(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures" / "nowcast.json"
    argv = ["--height", "48", "--width", "56", "--leads", "8", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text(encoding="utf-8"))

    assert figures["settings"]["height"] == 48 and figures["settings"]["leads"] == 8
    assert figures["machine"]["torch_threads"] == 1
    assert figures["data"]["shape"] == [4, 48, 56] and figures["data"]["wet_fraction_last"] > 0
    assert figures["network"]["trained_leads"] == 6  # 8 leads: two past the trained ones
    timings = {t["name"]: t for t in figures["timings"]}
    assert list(timings) == ["network", "lk", "sprog", "lk_motion", "lk_extrapolation"]
    for t in timings.values():
        assert len(t["times_s"]) == 1 and t["times_s"][0] > 0
        assert t["median_s"] == pytest.approx(statistics.median(t["times_s"]))
    network = timings["network"]["median_s"]
    ratios = figures["ratios"]
    assert ratios["lk_over_network"] == pytest.approx(timings["lk"]["median_s"] / network)
    assert ratios["sprog_over_network"] == pytest.approx(timings["sprog"]["median_s"] / network)
    assert f"LK/network = {ratios['lk_over_network']:.3f}" in printed
    assert f"S-PROG/network = {ratios['sprog_over_network']:.3f}" in printed
    assert "| method | median s | min s | / network | what |" in printed
    assert "8-lead nowcast on 48 x 56" in printed


def test_bad_settings_are_refused(bench: ModuleType) -> None:
    with pytest.raises(bench.BenchmarkError, match="at least 32 x 32"):
        bench.BenchSettings(height=16)
    with pytest.raises(bench.BenchmarkError, match="repeats must be >= 1"):
        bench.main(["--repeats", "0"])
