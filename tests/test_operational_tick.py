"""Operational ticks: idempotence, re-delivery, poison files, nowcast windows, the CLI and the watch loop.

What is checked is bookkeeping: which units a tick processes, what the ledger records, which
products exist, and the exit codes a scheduler acts on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.atomic import is_valid_netcdf
from meteovision.workflows.ledger import Ledger
from meteovision.workflows.operational import TickSummary, run_tick
from meteovision.workflows.operational_config import (
    OperationalConfigError,
)
from meteovision.workflows.watch import parse_interval, watch
from tests.operational_helpers import (
    BOW_NOW,
    PRODUCT,
    FakeClock,
    bow,
    config_dict,
    copy_inputs,
    ledger_rows,
    make_config,
    name_time,
    nowcast,
    products,
    radar_files,
)
from tests.predict_helpers import Trained, write_rate

__all__ = ["bow", "nowcast"]  # module-scoped fixtures, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- ticks


def test_tick_then_idempotent(bow: Trained, tmp_path: Path) -> None:
    inputs = copy_inputs(radar_files(bow, "20220603"), tmp_path / "in")
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in")
    first = run_tick(config, now=BOW_NOW)
    assert (first.found, first.new, first.done, first.failed, first.skipped, first.quarantined) == (
        6,
        6,
        6,
        0,
        0,
        0,
    )
    assert first.exit_code == ExitCode.OK and first.error is None
    assert products(config) == [PRODUCT.format(name_time(p)) for p in inputs]
    for name in products(config):
        assert is_valid_netcdf(config.output.folder / name, ["bow_echo_probability", "bow_echo_mask"])
    rows = ledger_rows(config)
    assert [(r["label"], r["state"], r["attempts"]) for r in rows] == [(p.name, "done", 1) for p in inputs]
    assert [json.loads(r["outputs"]) for r in rows] == [
        [str(config.output.folder / PRODUCT.format(name_time(p)))] for p in inputs
    ]
    assert all(
        r["checkpoint_sha256"] == hashlib.sha256(bow.checkpoint.read_bytes()).hexdigest() for r in rows
    )
    mtimes = {n: (config.output.folder / n).stat().st_mtime_ns for n in products(config)}

    second = run_tick(config, now=BOW_NOW)
    assert (second.found, second.new, second.done, second.failed) == (6, 0, 0, 0)
    assert second.exit_code == ExitCode.NOTHING_TO_DO
    assert {n: (config.output.folder / n).stat().st_mtime_ns for n in products(config)} == mtimes
    with Ledger(config.ledger, config.lock) as ledger:
        ticks = ledger.last_ticks()
    assert [t["exit_code"] for t in ticks] == [3, 0]
    assert ticks[1]["summary"]["done"] == 6


def test_redelivered_file_is_processed_again(bow: Trained, tmp_path: Path) -> None:
    inputs = copy_inputs(radar_files(bow, "20220603"), tmp_path / "in")
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in")
    assert run_tick(config, now=BOW_NOW).done == 6
    target = config.output.folder / PRODUCT.format(name_time(inputs[2]))
    with xr.open_dataset(target) as ds:
        before = ds["bow_echo_probability"].load()
    others = {p.name: p.stat().st_mtime_ns for p in config.output.folder.glob("*.nc") if p != target}

    # the same time delivered again with other content (a corrected composite)
    rate = np.zeros((48, 48), dtype=np.float32)
    rate[10:30, 5:40] = 25.0
    write_rate(inputs[2], name_time(inputs[2]).replace(tzinfo=None), rate)
    again = run_tick(config, now=BOW_NOW)
    assert (again.new, again.done, again.failed, again.exit_code) == (1, 1, 0, ExitCode.OK)
    with xr.open_dataset(target) as ds:
        after = ds["bow_echo_probability"].load()
    assert not np.allclose(before.fillna(-1), after.fillna(-1))
    assert {p.name: p.stat().st_mtime_ns for p in config.output.folder.glob("*.nc") if p != target} == others
    same_file = [r for r in ledger_rows(config) if r["label"] == inputs[2].name]
    assert [r["state"] for r in same_file] == ["done", "done"]
    assert len({json.loads(r["inputs"])[0][1] for r in same_file}) == 2  # two content hashes
    assert run_tick(config, now=BOW_NOW).exit_code == ExitCode.NOTHING_TO_DO


def test_poison_file_backoff_then_quarantine(bow: Trained, tmp_path: Path) -> None:
    good = copy_inputs(radar_files(bow, "20220603")[:3], tmp_path / "in")  # 23:25 23:30 23:35
    poison = tmp_path / "in" / "202206032340.h5"
    poison.write_bytes(b"this is not an HDF5 file\n" * 10)
    clock = FakeClock()
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in")

    def tick(at: float) -> TickSummary:
        clock.now = at
        return run_tick(config, now=BOW_NOW, clock=clock)

    t0 = clock.now
    first = tick(t0)
    assert (first.done, first.failed, first.quarantined, first.exit_code) == (
        3,
        1,
        0,
        ExitCode.PARTIAL_FAILURE,
    )
    (row,) = [r for r in ledger_rows(config) if r["label"] == poison.name]
    assert (row["state"], row["attempts"], row["next_attempt_at"]) == ("failed", 1, t0 + 60)
    assert poison.name in row["last_error"]

    waiting = tick(t0 + 59)  # backoff 60 s * 2**0 not elapsed
    assert (waiting.done, waiting.failed, waiting.skipped, waiting.exit_code) == (
        0,
        0,
        1,
        ExitCode.NOTHING_TO_DO,
    )
    second = tick(t0 + 60)
    assert (second.failed, second.exit_code) == (1, ExitCode.ALL_FAILED)  # nothing else was due
    (row,) = [r for r in ledger_rows(config) if r["label"] == poison.name]
    assert (row["attempts"], row["next_attempt_at"]) == (2, t0 + 60 + 120)  # 60 s * 2**1
    assert tick(t0 + 179).skipped == 1
    third = tick(t0 + 180)
    assert (third.failed, third.quarantined, third.done, third.exit_code) == (
        0,
        1,
        0,
        ExitCode.ALL_FAILED,
    )

    # moved aside with a note; the ledger says where; good products untouched throughout
    assert not poison.exists()
    moved = tmp_path / "quarantine" / poison.name
    assert moved.read_bytes() == b"this is not an HDF5 file\n" * 10
    note = json.loads((tmp_path / "quarantine" / f"{poison.name}.quarantine.json").read_text())
    assert (note["attempts"], note["unit"], note["moved_to"]) == (3, poison.name, str(moved))
    assert poison.name in note["reason"]
    (row,) = [r for r in ledger_rows(config) if r["label"] == poison.name]
    assert (row["state"], row["attempts"]) == ("quarantined", 3)
    assert row["quarantine_path"] == str(tmp_path / "quarantine" / f"{poison.name}.quarantine.json")
    assert products(config) == [PRODUCT.format(name_time(p)) for p in good]
    later = tick(t0 + 10_000)
    assert (later.found, later.done, later.failed, later.quarantined) == (3, 0, 0, 0)
    assert later.exit_code == ExitCode.NOTHING_TO_DO

    # an operator moves it back and requeues: fresh attempts, and it fails (and waits) anew
    shutil.move(moved, poison)
    with Ledger(config.ledger, config.lock, clock=clock) as ledger:
        assert ledger.requeue() == 1
    retried = tick(t0 + 10_001)
    assert (retried.new, retried.failed, retried.quarantined) == (0, 1, 0)
    (row,) = [r for r in ledger_rows(config) if r["label"] == poison.name]
    assert (row["state"], row["attempts"], row["next_attempt_at"]) == ("failed", 1, t0 + 10_001 + 60)


def test_nowcast_windows_and_gaps(nowcast: Trained, tmp_path: Path) -> None:
    frames = radar_files(nowcast, "20230502")  # 00:55 ... 01:20, 5 min apart
    assert len(frames) == 6
    t = [name_time(f) for f in frames]
    inputs = copy_inputs(frames, tmp_path / "in")
    inputs[3].unlink()  # 01:10 missing
    config = make_config(
        tmp_path,
        nowcast.checkpoint,
        tmp_path / "in",
        name="nowcast_precip",
        kind="nowcast_sequence",
        sequence={"frames": 3, "step_minutes": 5},
    )
    now = t[-1] + timedelta(minutes=5)
    first = run_tick(config, now=now)
    # references 00:55 01:00 01:05 01:15 01:20: only 01:05 has 00:55 01:00 01:05; the others are gaps
    assert (first.found, first.new, first.done, first.skipped, first.exit_code) == (5, 1, 1, 4, ExitCode.OK)
    made = sorted(p.name for p in config.output.folder.glob("*.nc"))
    assert made == [f"meteovision_nowcast_precip_halfunet_{t[2]:%Y%m%dT%H%MZ}.nc"]
    with xr.open_dataset(config.output.folder / made[0]) as ds:
        assert ds.sizes["leadtime"] == 2
        assert "rain_rate" in ds
    gaps = {r["label"]: r for r in ledger_rows(config) if r["state"] == "skipped"}
    assert sorted(gaps) == [f"nowcast {x:%Y-%m-%dT%H:%M:%SZ}" for x in (t[0], t[1], t[4], t[5])]
    assert gaps[f"nowcast {t[4]:%Y-%m-%dT%H:%M:%SZ}"]["last_error"].endswith(
        f"no frame at {t[3]:%Y-%m-%dT%H:%M:%SZ}"
    )
    assert gaps[f"nowcast {t[0]:%Y-%m-%dT%H:%M:%SZ}"]["last_error"].endswith(
        f"no frame at {t[0] - timedelta(minutes=10):%Y-%m-%dT%H:%M:%SZ}, "
        f"{t[0] - timedelta(minutes=5):%Y-%m-%dT%H:%M:%SZ}"
    )

    shutil.copy2(frames[3], inputs[3])  # the late frame arrives
    second = run_tick(config, now=now)
    assert (second.new, second.done, second.skipped, second.exit_code) == (3, 3, 2, ExitCode.OK)
    assert sorted(p.name for p in config.output.folder.glob("*.nc")) == [
        f"meteovision_nowcast_precip_halfunet_{x:%Y%m%dT%H%MZ}.nc" for x in t[2:]
    ]
    done = [json.loads(r["inputs"]) for r in ledger_rows(config) if r["state"] == "done"]
    assert [[Path(p).name for p, _ in d] for d in done] == [
        [f.name for f in inputs[i - 2 : i + 1]] for i in (2, 3, 4, 5)
    ]
    assert run_tick(config, now=now).exit_code == ExitCode.NOTHING_TO_DO


def test_checkpoint_must_fit_the_config(nowcast: Trained, bow: Trained, tmp_path: Path) -> None:
    copy_inputs(radar_files(nowcast, "20230502"), tmp_path / "in")
    now = datetime(2023, 5, 2, 1, 30, tzinfo=UTC)
    wrong_frames = make_config(
        tmp_path,
        nowcast.checkpoint,
        tmp_path / "in",
        kind="nowcast_sequence",
        sequence={"frames": 4, "step_minutes": 5},
    )
    summary = run_tick(wrong_frames, now=now)
    assert summary.exit_code == ExitCode.USAGE_ERROR
    assert summary.error is not None and "sequence.frames: 4, but checkpoint" in summary.error
    # the claim was given back without spending an attempt
    assert {(r["state"], r["attempts"]) for r in ledger_rows(wrong_frames) if r["kind"] == "window"} == {
        ("pending", 0)
    }

    single = make_config(tmp_path / "b", nowcast.checkpoint, tmp_path / "in")
    summary = run_tick(single, now=now)
    assert (
        summary.error is not None and "kind: single_file cannot run the nowcast checkpoint" in summary.error
    )

    missing = make_config(tmp_path / "c", tmp_path / "absent.ckpt", tmp_path / "in")
    summary = run_tick(missing, now=now)
    assert (
        summary.exit_code == ExitCode.USAGE_ERROR
        and summary.error == f"checkpoint: {tmp_path / 'absent.ckpt'}: no such file (nor a packaged checkpoint)"
    )


def test_cli_tick_and_status(bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from meteovision.pipeline.cli import main

    copy_inputs(radar_files(bow, "20220603")[:2], tmp_path / "in")
    path = tmp_path / "ops.yaml"
    path.write_text(json.dumps(config_dict(tmp_path, bow.checkpoint, tmp_path / "in")))  # JSON is YAML
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        args = ["operational", "--config", str(path), "--now", "2022-06-04T00:00"]
        assert main(args) == 0
        assert main(args) == 3
        assert main([*args, "--status"]) == 0
        assert main([*args, "--check"]) == 0
        assert main(["operational", "--config", str(path), "--now", "yesterday"]) == 2
        assert main(["operational", "--config", str(tmp_path / "nope.yaml")]) == 2
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    out, err = capsys.readouterr()
    assert "bow_echo: 0 pending, 0 claimed, 2 done, 0 failed, 0 quarantined, 0 skipped" in out
    assert "configuration 'bow_echo' is valid; checkpoint bow.ckpt (bow_echo, halfunet) fits it" in out
    assert "--now 'yesterday': not an ISO time" in err
    assert "nope.yaml: cannot read the configuration" in err


def test_watch_loop_cadence_and_stop() -> None:
    assert [parse_interval(x) for x in ("300", "30s", "5m", "1h30m", "1d")] == [300, 30, 300, 5400, 86400]
    for bad in ("5x", "0", "-5m", "m5", ""):
        with pytest.raises(OperationalConfigError, match="--every"):
            parse_interval(bad)
    stop = threading.Event()
    calls: list[float] = []
    fake = [0.0]

    def tick() -> TickSummary:
        calls.append(fake[0])
        fake[0] += 2.0  # each tick takes 2 s of the fake monotonic clock
        if len(calls) == 3:
            stop.set()
        return TickSummary(name="x", seconds=2.0)

    summaries = watch(tick, every=0.0001, stop=stop, monotonic=lambda: fake[0])
    assert len(summaries) == 3 and calls == [0.0, 2.0, 4.0]  # overran: next tick at once
    stop.clear()
    assert len(watch(tick, every=0.001, stop=stop, max_ticks=2)) == 2
