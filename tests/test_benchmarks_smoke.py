"""Smoke test of ``benchmarks/loaders.py``: it runs end to end with tiny settings and reports every figure.

No timing is asserted (the numbers depend on the machine and its load); the counts, shapes and the
arithmetic linking throughput, time per batch, step time, ratio and verdict are.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.conftest import OdimField, OdimFile, OdimGrid, load_benchmark_script, write_odim

BATCH = 2
PATCH = 32
BATCHES = 2


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script (``benchmarks/loaders.py``)."""
    return load_benchmark_script("loaders")


def fake_shared_data(root: Path, frames: int = 8) -> Path:
    """``root/radar/opera_20180824``: ``frames`` small ODIM RATE composites 15 min apart, named as OPERA's."""
    folder = root / "radar" / "opera_20180824"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    grid = OdimGrid(nx=40, ny=48)
    for k in range(frames):
        minutes = 18 * 60 + 15 * k
        hhmmss = f"{minutes // 60:02d}{minutes % 60:02d}00"
        raw = rng.integers(0, 200, size=(grid.ny, grid.nx)).astype(np.uint8)
        raw[:4, :4] = 255
        spec = OdimFile(fields=[OdimField("RATE", raw, gain=0.1)], grid=grid, date="20180824", time=hhmmss)
        write_odim(folder / f"T_PAAH21_C_EUOC_20180824{hhmmss}.hdf", spec)
    return root


def check_regime(regime: dict[str, float], batch_size: int, step_s: float) -> None:
    assert regime["seconds"] > 0
    assert math.isclose(regime["samples_per_s"], regime["samples"] / regime["seconds"], rel_tol=1e-9)
    assert math.isclose(regime["seconds_per_batch"], batch_size / regime["samples_per_s"], rel_tol=1e-9)
    assert math.isclose(regime["ratio_to_step"], regime["seconds_per_batch"] / step_s, rel_tol=1e-9)
    assert regime["pass"] == (regime["ratio_to_step"] < 1.0)


def test_benchmark_runs_every_case(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = fake_shared_data(tmp_path / "shared")
    out = tmp_path / "figures" / "loaders.json"
    # one thread: a 2-thread step on cores that other jobs load can take seconds even at 32 px
    argv = ["--quick", "--batch-size", str(BATCH), "--patch-size", str(PATCH), "--batches", str(BATCHES),
            "--step-warmup", "0", "--step-repeats", "1", "--threads", "1",
            "--shared-data", str(shared), "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text(encoding="utf-8"))

    assert figures["regimes"] == ["cold", "first_epoch", "warm"]
    assert figures["settings"]["batch_size"] == BATCH and figures["settings"]["opera_frames"] == 8
    assert figures["machine"]["torch_threads"] == 1
    cases = figures["cases"]
    assert list(cases) == ["opera_sequence", "nowcast_precip", "bow_echo"]
    channels = {"opera_sequence": (3, 3), "nowcast_precip": (4, 6), "bow_echo": (1, 1)}
    for name, (c_in, c_out) in channels.items():
        case = cases[name]
        assert case["status"] == "ok", case
        assert case["patch_size"] == PATCH
        assert case["input_shape"] == [BATCH, c_in, PATCH, PATCH]
        assert case["target_shape"] == [BATCH, c_out, PATCH, PATCH]
        step = case["step"]
        assert len(step["times_s"]) == 1
        assert step["median_s"] == pytest.approx(statistics.median(step["times_s"]))
        assert [entry["num_workers"] for entry in case["loaders"]] == [0, 2]
        for entry in case["loaders"]:
            for regime in ("cold", "warm"):
                assert entry[regime]["batches"] == BATCHES
                assert entry[regime]["samples"] == BATCHES * BATCH
            epoch = entry["first_epoch"]
            assert epoch["samples"] == case["samples_per_epoch"]
            assert epoch["batches"] == math.ceil(epoch["samples"] / BATCH)
            for regime in ("cold", "first_epoch", "warm"):
                check_regime(entry[regime], BATCH, step["median_s"])
            for regime in ("cold", "warm"):
                word = "PASS" if entry[regime]["pass"] else "FAIL"
                assert f"{word} {name} num_workers={entry['num_workers']} {regime}: loader" in printed
    # 8 frames -> 3 windows of 3 + 3 frames, 4 random patches each
    assert cases["opera_sequence"]["samples_per_epoch"] == 12
    assert cases["opera_sequence"]["data_dir"] == str(shared / "radar" / "opera_20180824")
    assert sum(line.startswith(("PASS ", "FAIL ")) for line in printed.splitlines()) == 12
    assert "samp/s" in printed and "cold = every file of a sample decoded" in printed


def test_missing_real_data_is_skipped(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "loaders.json"
    missing = tmp_path / "no_shared_data"
    argv = ["--quick", "--cases", "opera_sequence", "--shared-data", str(missing), "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    folder = missing / "radar" / "opera_20180824"
    assert f"SKIPPED opera_sequence: real data folder {folder} not found" in printed
    case = json.loads(out.read_text(encoding="utf-8"))["cases"]["opera_sequence"]
    assert case["status"] == "skipped" and "--shared-data" in case["reason"]
    assert case["loaders"] == []


def test_bad_settings_are_refused(bench: ModuleType) -> None:
    with pytest.raises(bench.BenchmarkError, match="unknown case"):
        bench.main(["--cases", "radar_cleaning"])
    with pytest.raises(bench.BenchmarkError, match="batch_size must be >= 1"):
        bench.BenchSettings(batch_size=0)
