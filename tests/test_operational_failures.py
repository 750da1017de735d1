"""Operational ticks where one thing goes wrong: it must never block or lose the others.

* a file with a bad attribute in a folder dated by the reader: recorded, retried, quarantined;
  the other files are processed on the first tick;
* a full or read-only output folder: the output's fault, never the inputs' (no attempt spent,
  nothing quarantined), exit 4 with the folder named; the next tick with room makes every product;
* two files of the same time (``single_file``): the first by name is used, the other is recorded
  once as a duplicate and never retried.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import pytest

from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference import netcdf_writer
from meteovision.workflows.operational import TickSummary, run_tick
from meteovision.workflows.operational_config import OperationalConfig
from tests.operational_helpers import (
    BOW_NOW,
    PRODUCT,
    FakeClock,
    bow,
    copy_inputs,
    ledger_rows,
    make_config,
    name_time,
    products,
    radar_files,
)
from tests.predict_helpers import Trained

__all__ = ["bow"]  # module-scoped fixture, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def set_attribute(path: Path, group: str, name: str, value: Any) -> Path:
    """Overwrite one HDF5 attribute in place (how a producer's bad release looks)."""
    with h5py.File(path, "r+") as f:
        f[group].attrs[name] = value
    return path


def reader_config(tmp_path: Path, trained: Trained, **retry: Any) -> OperationalConfig:
    return make_config(
        tmp_path, trained.checkpoint, tmp_path / "in",
        input={"folder": str(tmp_path / "in"), "pattern": "*.h5", "time_from": "reader", "window_hours": 24,
               "min_age_seconds": 0},
        retry={"max_attempts": 2, "backoff_seconds": 60, **retry},
    )


# ----------------------------------------------------------------------------- a bad file in a watched folder


@pytest.mark.parametrize(("group", "name", "value", "message"), [
    ("dataset1/data1/what", "gain", b"abc", "attribute dataset1/data1/what/gain = 'abc' is not a number"),
    ("where", "xsize", b"1900 px", "attribute where/xsize = '1900 px' is not a number"),
], ids=["gain", "xsize"])
def test_a_bad_attribute_in_a_reader_dated_folder_is_retried_then_quarantined(
    bow: Trained, tmp_path: Path, group: str, name: str, value: bytes, message: str
) -> None:
    files = copy_inputs(radar_files(bow, "20220603")[:4], tmp_path / "in")
    bad = set_attribute(files[1], group, name, value)
    good = [p for p in files if p != bad]
    clock = FakeClock()
    config = reader_config(tmp_path, bow)

    def tick(at: float) -> TickSummary:
        clock.now = at
        return run_tick(config, now=BOW_NOW, clock=clock)

    first = tick(clock.now)  # discovery survives the bad file; the others are made at once
    assert first.error is None
    assert (first.found, first.done, first.failed, first.exit_code) == (4, 3, 1, ExitCode.PARTIAL_FAILURE)
    assert products(config) == [PRODUCT.format(name_time(p)) for p in good]
    (row,) = [r for r in ledger_rows(config) if r["label"] == bad.name]
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert message in row["last_error"] and bad.name in row["last_error"]

    second = tick(clock.now + 60)  # backoff elapsed: attempt 2 of 2, quarantined
    assert (second.done, second.failed, second.quarantined, second.exit_code) == (0, 0, 1, ExitCode.ALL_FAILED)
    assert not bad.exists()
    note = json.loads((tmp_path / "quarantine" / f"{bad.name}.quarantine.json").read_text())
    assert note["attempts"] == 2 and message in note["reason"]
    assert (tmp_path / "quarantine" / bad.name).is_file()
    assert tick(clock.now + 10_000).exit_code == ExitCode.NOTHING_TO_DO


def test_a_bad_real_opera_file_is_quarantined_and_never_stops_discovery(
    bow: Trained, shared_data: Path, tmp_path: Path
) -> None:
    """A real OPERA composite whose gain is ``b"abc"``, beside the sample files it does not fit."""
    source = sorted((shared_data / "radar" / "opera_20180824").glob("*.hdf"))[0]
    copy_inputs(radar_files(bow, "20220603")[:2], tmp_path / "in")
    bad = tmp_path / "in" / (source.stem + ".h5")
    shutil.copy(source, bad)
    os.chmod(bad, 0o644)
    set_attribute(bad, "dataset1/what", "gain", b"abc")  # OPERA keeps gain one level up
    clock = FakeClock()
    config = reader_config(tmp_path, bow, max_attempts=1)
    summary = run_tick(config, now=BOW_NOW, clock=clock)
    assert summary.error is None
    assert (summary.done, summary.quarantined, summary.exit_code) == (2, 1, ExitCode.PARTIAL_FAILURE)
    assert (tmp_path / "quarantine" / bad.name).is_file() and not bad.exists()
    (row,) = [r for r in ledger_rows(config) if r["label"] == bad.name]
    assert "is not a number" in row["last_error"]


# ----------------------------------------------------------------------------- full or read-only output


@pytest.mark.parametrize(("code", "says"), [
    (errno.ENOSPC, "no space left on"),
    (errno.EACCES, "permission denied on"),
    (errno.EROFS, "read-only file system at"),
], ids=["ENOSPC", "EACCES", "EROFS"])
def test_a_full_disk_never_quarantines_good_inputs(
    bow: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    def unwritable(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    inputs = copy_inputs(radar_files(bow, "20220603")[:3], tmp_path / "in")
    clock = FakeClock()
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in", retry={"max_attempts": 2, "backoff_seconds": 60})
    monkeypatch.setattr(netcdf_writer, "_write", unwritable)
    for k in range(4):  # twice max_attempts ticks on a full disk
        clock.now += 3600 * k
        summary = run_tick(config, now=BOW_NOW, clock=clock)
        assert summary.exit_code == ExitCode.OUTPUT_UNWRITABLE == 4
        assert summary.error is not None and f"{says} {config.output.folder}" in summary.error
        assert (summary.failed, summary.quarantined, summary.done) == (0, 0, 0)
    assert [(r["state"], r["attempts"]) for r in ledger_rows(config)] == [("pending", 0)] * 3
    assert all(p.is_file() for p in inputs) and not any((tmp_path / "quarantine").iterdir())
    assert list(config.output.folder.iterdir()) == []  # no temporary left behind either

    monkeypatch.undo()  # room again: the next tick makes every product
    back = run_tick(config, now=BOW_NOW, clock=clock)
    assert (back.done, back.exit_code) == (3, ExitCode.OK)
    assert products(config) == [PRODUCT.format(name_time(p)) for p in inputs]


def test_a_read_only_output_folder_blames_no_input(bow: Trained, tmp_path: Path) -> None:
    copy_inputs(radar_files(bow, "20220603")[:2], tmp_path / "in")
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in", retry={"max_attempts": 1, "backoff_seconds": 60})
    config.output.folder.mkdir(parents=True)
    config.output.folder.chmod(0o555)
    try:
        try:
            (config.output.folder / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("this user writes into read-only folders (root with CAP_DAC_OVERRIDE)")
        summary = run_tick(config, now=BOW_NOW)
        assert summary.exit_code == ExitCode.OUTPUT_UNWRITABLE
        assert f"permission denied on {config.output.folder}" in (summary.error or "")
        assert [(r["state"], r["attempts"]) for r in ledger_rows(config)] == [("pending", 0)] * 2
    finally:
        config.output.folder.chmod(0o755)
    assert run_tick(config, now=BOW_NOW).done == 2


# ----------------------------------------------------------------------------- two files of one time


@pytest.mark.parametrize("time_from", ["filename", "reader"])
def test_a_second_file_of_the_same_time_is_skipped_once_and_recorded(
    bow: Trained, tmp_path: Path, time_from: str, caplog: pytest.LogCaptureFixture
) -> None:
    first, other = copy_inputs(radar_files(bow, "20220603")[:2], tmp_path / "in")
    twin = copy_inputs([first], tmp_path / "twin")[0].rename(tmp_path / "in" / f"z_{first.name}")
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in",
                         input={"folder": str(tmp_path / "in"), "pattern": "*.h5", "time_from": time_from,
                                "window_hours": 24, "min_age_seconds": 0})
    with caplog.at_level(logging.WARNING, logger="meteovision.workflows.operational"):
        summary = run_tick(config, now=BOW_NOW)
    assert (summary.found, summary.done, summary.skipped, summary.exit_code) == (3, 2, 1, ExitCode.OK)
    assert products(config) == [PRODUCT.format(name_time(p)) for p in (first, other)]
    rows = {r["label"]: r for r in ledger_rows(config)}
    assert (rows[first.name]["state"], rows[twin.name]["state"], rows[twin.name]["kind"]) == (
        "done", "skipped", "duplicate")
    assert rows[twin.name]["last_error"] == (
        f"{twin.name}: time 2022-06-03T23:25:00Z is also that of {first.name}; only {first.name} is used")
    assert f"{twin.name} skipped: {rows[twin.name]['last_error']}" in caplog.text
    again = run_tick(config, now=BOW_NOW)  # recorded once: not retried, not logged again
    assert (again.done, again.skipped, again.exit_code) == (0, 1, ExitCode.NOTHING_TO_DO)
    assert [r["attempts"] for r in ledger_rows(config) if r["label"] == twin.name] == [0]
