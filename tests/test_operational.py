"""Operational runs: configuration, discovery, ledger, and the guarantees of a tick.

Checkpoints are the predict tests' tiny Half-UNets fitted for two batches on small synthetic
sample data (``test_predict.bow_checkpoint`` / ``nowcast_checkpoint``); inputs are copies of
that sample data's radar files. What is checked is bookkeeping: which units a tick processes,
what the ledger records, which products exist, and the exit codes a scheduler acts on. The
subprocess guarantees (SIGKILL mid-write, overlapping ticks, SIGTERM) are in
``test_operational_crash.py``.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.atomic import is_valid_netcdf
from meteovision.workflows.discovery import (
    FileFacts,
    FileInspector,
    InputFile,
    WorkUnit,
    discover,
    time_from_name,
)
from meteovision.workflows.ledger import Claim, Ledger, UnitState, backoff_delay, pid_alive
from meteovision.workflows.operational import TickSummary, run_tick
from meteovision.workflows.operational_config import (
    OperationalConfig,
    OperationalConfigError,
    load_config,
    parse_config,
    time_regex,
)
from meteovision.workflows.watch import parse_interval, watch
from tests.test_predict import Trained, bow_checkpoint, nowcast_checkpoint, write_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
#: Event 1 of the bow-echo sample data (seed 1) runs 23:25 ... 23:50 on 2022-06-03.
BOW_NOW = datetime(2022, 6, 4, 0, 0, tzinfo=UTC)
PRODUCT = "meteovision_bow_echo_halfunet_{:%Y%m%dT%H%MZ}.nc"


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def bow(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return bow_checkpoint(tmp_path_factory.mktemp("bow"))


@pytest.fixture(scope="module")
def nowcast(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return nowcast_checkpoint(tmp_path_factory.mktemp("nowcast"))


def radar_files(trained: Trained, day: str) -> list[Path]:
    """The sample radar files of one day (``YYYYmmdd``), sorted by time."""
    return sorted(p for p in (trained.data / "radar").iterdir() if p.name.startswith(day))


def copy_inputs(files: list[Path], folder: Path) -> list[Path]:
    """Copies delivered an hour ago (older than any ``min_age_seconds``)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = [Path(shutil.copy2(f, folder / f.name)) for f in files]
    an_hour_ago = time.time() - 3600
    for path in copies:
        os.utime(path, (an_hour_ago, an_hour_ago))
    return copies


def config_dict(root: Path, checkpoint: Path, inputs: Path, **changes: Any) -> dict[str, Any]:
    """A complete operational configuration under ``root`` (``changes`` replace top-level keys)."""
    doc: dict[str, Any] = {
        "name": "bow_echo",
        "kind": "single_file",
        "checkpoint": str(checkpoint),
        "input": {"folder": str(inputs), "pattern": "*.h5", "window_hours": 24, "min_age_seconds": 0},
        "output": {"folder": str(root / "products")},
        "ledger": str(root / "state" / "ledger.sqlite"),
        "lock": str(root / "state" / "ledger.lock"),
        "quarantine_folder": str(root / "quarantine"),
        "retry": {"max_attempts": 3, "backoff_seconds": 60},
    }
    doc.update(changes)
    return doc


def make_config(root: Path, checkpoint: Path, inputs: Path, **changes: Any) -> OperationalConfig:
    return parse_config(config_dict(root, checkpoint, inputs, **changes), root / "config.yaml")


def products(config: OperationalConfig) -> list[str]:
    """Visible product names (what a consumer globbing ``*.nc`` sees)."""
    return sorted(p.name for p in config.output.folder.glob("*.nc"))


def name_time(path: Path) -> datetime:
    return datetime.strptime(path.stem[-12:], "%Y%m%d%H%M").replace(tzinfo=UTC)


def ledger_rows(config: OperationalConfig) -> list[dict[str, Any]]:
    with sqlite3.connect(config.ledger) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM units ORDER BY reference_time, label")]


class FakeClock:
    """Epoch seconds that only move when told (backoff and leases without sleeping)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class DictCache:
    """An in-memory FactsCache."""

    def __init__(self) -> None:
        self.facts: dict[Path, tuple[tuple[int, ...], FileFacts]] = {}

    def get_facts(self, path: Path, signature: tuple[int, ...]) -> FileFacts | None:
        got = self.facts.get(path)
        return got[1] if got is not None and got[0] == signature else None

    def put_facts(self, items: Any) -> None:
        for path, signature, facts in items:
            self.facts[path] = (signature, facts)


# ----------------------------------------------------------------------------- configuration


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    base = config_dict(tmp_path, tmp_path / "m.ckpt", tmp_path / "in")
    src = tmp_path / "ops.yaml"

    bad = json.loads(json.dumps(base))
    bad["input"]["windw_hours"] = 3
    with pytest.raises(OperationalConfigError, match=r"input\.windw_hours: unknown key"):
        parse_config(bad, src)

    bad = {k: v for k, v in base.items() if k != "ledger"}
    with pytest.raises(OperationalConfigError, match=r"ledger: Field required"):
        parse_config(bad, src)

    bad = base | {"retry": {"max_attempts": 0}}
    with pytest.raises(
        OperationalConfigError, match=r"retry\.max_attempts: Input should be greater than or equal to 1"
    ):
        parse_config(bad, src)

    bad = base | {"input": base["input"] | {"time_format": "%d %b %Y"}}
    with pytest.raises(OperationalConfigError, match=r"input\.time_format: .*directive %b is not supported"):
        parse_config(bad, src)

    with pytest.raises(OperationalConfigError, match=r"nowcast_sequence needs a 'sequence' section"):
        parse_config(base | {"kind": "nowcast_sequence"}, src)

    with pytest.raises(
        OperationalConfigError, match=r"kind: Input should be 'single_file' or 'nowcast_sequence'"
    ):
        parse_config(base | {"kind": "nowcast"}, src)

    os.environ.pop("METEOVISION_TEST_UNSET", None)
    with pytest.raises(
        OperationalConfigError, match=r"ledger: environment variable METEOVISION_TEST_UNSET is not set"
    ):
        parse_config(base | {"ledger": "${METEOVISION_TEST_UNSET}/ledger.sqlite"}, src)

    src.write_text("name: [unclosed\n")
    with pytest.raises(OperationalConfigError, match=r"ops\.yaml: not valid YAML"):
        load_config(src)


def test_config_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/meteovision/x")
    (tmp_path / "etc").mkdir()
    src = tmp_path / "etc" / "ops.yaml"
    src.write_text(
        "name: x\nkind: single_file\ncheckpoint: models/x.ckpt\ninput: {folder: ../in}\n"
        "output: {folder: /abs/out}\nledger: ${STATE_DIRECTORY}/l.sqlite\nlock: ~/x.lock\n"
    )
    config = load_config(src)
    assert config.checkpoint == tmp_path / "etc" / "models" / "x.ckpt"
    assert config.input.folder == tmp_path / "etc" / ".." / "in"
    assert config.output.folder == Path("/abs/out")
    assert config.ledger == Path("/var/lib/meteovision/x/l.sqlite")
    assert config.lock == Path.home() / "x.lock"
    # defaults
    assert (config.input.window_hours, config.retry.max_attempts, config.log_format) == (6.0, 3, "text")


def test_example_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/meteovision/app")
    examples = sorted((WORKFLOWS / "examples").glob("*.yaml"))
    assert {p.stem for p in examples} >= {"bow_echo", "nowcast_precip"}
    for path in examples:
        config = load_config(path)
        assert config.name == path.stem, path
    nowcast = load_config(WORKFLOWS / "examples" / "nowcast_precip.yaml")
    assert nowcast.sequence is not None and (nowcast.sequence.frames, nowcast.sequence.step_minutes) == (
        4,
        5.0,
    )


def test_time_from_file_names() -> None:
    assert time_from_name(Path("202206032325.h5"), "%Y%m%d%H%M") == datetime(2022, 6, 3, 23, 25, tzinfo=UTC)
    assert time_from_name(Path("cam07_202401021200.jpg"), "%Y%m%d%H%M") == datetime(
        2024, 1, 2, 12, tzinfo=UTC
    )
    assert time_from_name(Path("T_PAAH_C_2024-01-02_1205.nc"), "%Y-%m-%d_%H%M") == datetime(
        2024, 1, 2, 12, 5, tzinfo=UTC
    )
    assert time_from_name(Path("radar_2024123.h5"), "%Y%j") == datetime(2024, 5, 2, tzinfo=UTC)  # day 123
    assert time_from_name(Path("202213011200.h5"), "%Y%m%d%H%M") is None  # month 13
    assert time_from_name(Path("latest.h5"), "%Y%m%d%H%M") is None
    assert time_regex("%Y%m%d").pattern == r"\d{4}\d{2}\d{2}"
    with pytest.raises(ValueError, match="has no time directive"):
        time_regex("radar_")


# ----------------------------------------------------------------------------- discovery


def test_discovery_window_age_and_names(bow: Trained, tmp_path: Path) -> None:
    files = copy_inputs(radar_files(bow, "20220603"), tmp_path / "in")  # 23:25 ... 23:50
    (tmp_path / "in" / "latest.h5").write_bytes(files[0].read_bytes())  # no time in the name
    (tmp_path / "in" / ".202206032355.h5.part").write_bytes(b"partial")  # hidden: never taken
    shutil.copy2(files[0], tmp_path / "in" / "202206040030.h5")  # 30 min ahead of now
    config = make_config(
        tmp_path,
        bow.checkpoint,
        tmp_path / "in",
        input={
            "folder": str(tmp_path / "in"),
            "pattern": "*.h5",
            "window_hours": 0.5,
            "max_future_minutes": 15,
            "min_age_seconds": 0,
        },
    )
    inspector = FileInspector(config, DictCache(), lambda: 2e9)
    found = discover(config, inspector, BOW_NOW)
    work = [u for u in found.units if u.processable]
    # window [23:30, 00:15]: 23:30 ... 23:50 (5 files); 23:25 too old, 00:30 too far ahead
    assert [u.label for u in work] == [f"2022060323{m}.h5" for m in ("50", "45", "40", "35", "30")]
    assert [u.reference_time for u in work] == [
        datetime(2022, 6, 3, 23, m, tzinfo=UTC) for m in (50, 45, 40, 35, 30)
    ]
    unplaced = [u for u in found.units if u.kind == "unplaced"]
    assert [(u.label, u.reason) for u in unplaced] == [
        ("latest.h5", "latest.h5: no time matching '%Y%m%d%H%M' in the file name")
    ]
    assert found.found == 6
    # the key is the content: same bytes under a new name -> another key; same file -> same key
    assert work[0].key == next(u for u in discover(config, inspector, BOW_NOW).units if u.processable).key
    assert work[0].inputs[0].sha256 == hashlib.sha256(work[0].inputs[0].path.read_bytes()).hexdigest()

    # a file changed just now is left for the next tick when min_age_seconds asks for it
    young = make_config(
        tmp_path,
        bow.checkpoint,
        tmp_path / "in",
        input={"folder": str(tmp_path / "in"), "pattern": "*.h5", "window_hours": 0.5, "min_age_seconds": 60},
    )
    os.utime(files[-1])  # 23:50 touched now
    labels = [
        u.label
        for u in discover(young, FileInspector(young, DictCache(), time.time), BOW_NOW).units
        if u.processable
    ]
    assert "202206032350.h5" not in labels and "202206032345.h5" in labels


def test_discovery_times_from_the_reader(bow: Trained, tmp_path: Path) -> None:
    files = copy_inputs(radar_files(bow, "20220603"), tmp_path / "in")
    for i, path in enumerate(files):
        path.rename(path.with_name(f"composite_{i}.h5"))  # names that say nothing of the time
    (tmp_path / "in" / "composite_9.h5").write_bytes(b"garbage")
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in",
                         input={"folder": str(tmp_path / "in"), "pattern": "*.h5", "time_from": "reader",
                                "window_hours": 0.25, "min_age_seconds": 0})
    inspector = FileInspector(config, DictCache(), time.time)
    found = discover(config, inspector, BOW_NOW)
    # window [23:45, 00:15] by the files' own time; the unreadable file stays work (to fail and be retried)
    assert [(u.label, u.reference_time) for u in found.units] == [
        ("composite_9.h5", None),
        ("composite_5.h5", datetime(2022, 6, 3, 23, 50, tzinfo=UTC)),
        ("composite_4.h5", datetime(2022, 6, 3, 23, 45, tzinfo=UTC)),
    ]
    assert all(u.kind == "file" for u in found.units) and found.found == 3
    assert "composite_9.h5" in inspector.problems[tmp_path / "in" / "composite_9.h5"]


def test_hash_cache_skips_unchanged_files(bow: Trained, tmp_path: Path) -> None:
    files = copy_inputs(radar_files(bow, "20220603")[:2], tmp_path / "in")
    config = make_config(tmp_path, bow.checkpoint, tmp_path / "in")
    cache = DictCache()
    settled = [f.stat().st_ctime + 10 for f in files]
    FileInspector(config, cache, lambda: max(settled)).facts(files[0])
    inspector = FileInspector(config, cache, lambda: max(settled))
    inspector.facts(files[0])
    inspector.flush()
    assert set(cache.facts) == {files[0]}
    # poison the cached hash: an unchanged file is believed, a rewritten one is hashed again
    sig, facts = cache.facts[files[0]]
    cache.facts[files[0]] = (sig, FileFacts("0" * 64, facts.time))
    assert inspector.facts(files[0]) == FileFacts("0" * 64, facts.time)
    files[0].write_bytes(files[0].read_bytes())
    assert inspector.facts(files[0]) == facts


# ----------------------------------------------------------------------------- the ledger


def _unit(path: Path, sha: str = "a" * 64) -> WorkUnit:
    return WorkUnit("file", path.name, (InputFile(path, None, sha),), None)


def test_ledger_claims_leases_and_dead_processes(tmp_path: Path) -> None:
    clock = FakeClock()
    units = [_unit(tmp_path / f"f{i}.h5") for i in range(4)]
    with Ledger(tmp_path / "l.sqlite", tmp_path / "l.lock", lease_seconds=100, clock=clock) as ledger:
        assert [u.key for u in ledger.register(units)] == [u.key for u in units]
        assert ledger.register(units) == []  # known already
        assert sqlite3.connect(tmp_path / "l.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        status, row = ledger.claim(units[0].key, max_attempts=3)
        assert status is Claim.CLAIMED and row is not None and (row.state, row.attempts) == ("claimed", 1)
        assert row.state is UnitState.CLAIMED and [r.unit_id for r in ledger.units(UnitState.CLAIMED)] == [row.unit_id]
        assert ledger.claim(units[0].key, 3)[0] is Claim.BUSY  # our own claim, alive, lease running

        # a claim by a process of this host that is gone (reaped) is taken over at once
        gone = subprocess.Popen(["true"])
        gone.wait()
        zombie = subprocess.Popen(["sleep", "30"])
        zombie.kill()
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        assert not pid_alive(gone.pid) and not pid_alive(zombie.pid) and pid_alive(os.getpid())
        zombie.wait()
        db = sqlite3.connect(tmp_path / "l.sqlite")
        host = socket.gethostname()
        for unit, claim_host, pid, lease in (
            (units[1], host, gone.pid, clock.now + 50),
            (units[2], "elsewhere", 1, clock.now + 50),
            (units[3], "elsewhere", 1, clock.now - 1),
        ):
            db.execute(
                "UPDATE units SET state='claimed', attempts=1, claimed_by='old', claim_host=?, "
                "claim_pid=?, lease_until=? WHERE unit_id=?",
                (claim_host, pid, lease, unit.key),
            )
        db.commit()
        db.close()
        assert ledger.claim(units[1].key, 3)[0] is Claim.TAKEN_OVER  # dead here
        assert ledger.claim(units[2].key, 3)[0] is Claim.BUSY  # other host, lease running
        status, row = ledger.claim(units[3].key, 3)  # other host, lease expired
        assert status is Claim.TAKEN_OVER and row is not None and row.attempts == 2
        clock.now += 51
        status, row = ledger.claim(units[2].key, 3)
        assert status is Claim.TAKEN_OVER and row is not None and row.claimed_by == ledger.owner

        # the old owner cannot record over a claim taken from it
        with Ledger(tmp_path / "l.sqlite", tmp_path / "l.lock", clock=clock) as other:
            assert other.finish(units[1].key, [tmp_path / "x.nc"], "c" * 64) is False
        assert ledger.finish(units[1].key, [tmp_path / "x.nc"], "c" * 64) is True
        finished = ledger.unit(units[1].key)
        assert (
            finished is not None and finished.state == "done" and finished.outputs == [str(tmp_path / "x.nc")]
        )
        assert ledger.claim(units[1].key, 3)[0] is Claim.FINISHED

        # an abandoned claim that had used up its attempts is quarantined, not retried
        db = sqlite3.connect(tmp_path / "l.sqlite")
        db.execute(
            "UPDATE units SET attempts=3, claim_host='elsewhere', lease_until=0 WHERE unit_id=?",
            (units[3].key,),
        )
        db.commit()
        db.close()
        status, row = ledger.claim(units[3].key, 3)
        assert status is Claim.QUARANTINED and row is not None and row.state is UnitState.QUARANTINED
        assert row.last_error is not None and "abandoned by" in row.last_error

        # release gives an attempt back
        ledger.release(units[0].key, "stopped")
        row0 = ledger.unit(units[0].key)
        assert row0 is not None and (row0.state, row0.attempts) == ("pending", 0)
        assert ledger.counts() == {
            "pending": 1,
            "claimed": 1,
            "done": 1,
            "failed": 0,
            "quarantined": 1,
            "skipped": 0,
        }


def test_backoff_doubles() -> None:
    assert [backoff_delay(n, 60.0) for n in (1, 2, 3, 4)] == [60.0, 120.0, 240.0, 480.0]
    assert backoff_delay(1, 0.0) == 0.0


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
    assert (second.failed, second.exit_code) == (1, ExitCode.PARTIAL_FAILURE)
    (row,) = [r for r in ledger_rows(config) if r["label"] == poison.name]
    assert (row["attempts"], row["next_attempt_at"]) == (2, t0 + 60 + 120)  # 60 s * 2**1
    assert tick(t0 + 179).skipped == 1
    third = tick(t0 + 180)
    assert (third.failed, third.quarantined, third.done, third.exit_code) == (
        0,
        1,
        0,
        ExitCode.PARTIAL_FAILURE,
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
        and summary.error == f"checkpoint: {tmp_path / 'absent.ckpt'}: no such file"
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


# ----------------------------------------------------------------------------- schedules


def _unit_file(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def test_systemd_units() -> None:
    folder = WORKFLOWS / "systemd"
    services = sorted(folder.glob("*.service"))
    timers = sorted(folder.glob("*.timer"))
    assert {p.name for p in timers} == {"meteovision-bow_echo.timer", "meteovision-nowcast_precip.timer"}
    for path in services:
        unit = _unit_file(path)
        assert unit["Unit"]["Description"], path
        service = unit["Service"]
        exec_start = shlex.split(service["ExecStart"])
        assert exec_start[1:4] == ["operational", "--config", exec_start[3]] and exec_start[0].endswith(
            "meteovision"
        )
        config_name = Path(exec_start[3]).name
        if "%i" not in config_name:
            assert (WORKFLOWS / "examples" / config_name).is_file(), f"{path.name} runs an unknown config"
        for key, value in (
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("KillSignal", "SIGTERM"),
        ):
            assert service[key] == value, (path.name, key)
        assert service["StateDirectory"].startswith("meteovision/")
        if service["Type"] == "oneshot":
            assert "3" in service["SuccessExitStatus"].split(), "exit 3 (nothing to do) must count as success"
        else:
            assert service["Type"] == "simple" and "--watch" in exec_start
            assert service["RestartPreventExitStatus"] == "2"
    for path in timers:
        timer = _unit_file(path)
        assert timer["Timer"]["OnCalendar"] == "*:0/5" and timer["Timer"]["Persistent"] == "true"
        assert (folder / timer["Timer"]["Unit"]).is_file()
        assert timer["Timer"]["Unit"] == path.with_suffix(".service").name
        assert timer["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze"):
        out = subprocess.run(
            ["systemd-analyze", "calendar", "*:0/5"], capture_output=True, text=True, check=True
        )
        assert "Normalized form: *-*-* *:00/5:00" in out.stdout
        for path in services + timers:
            res = subprocess.run(
                ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
            )
            problems = [
                line
                for line in (res.stdout + res.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "/opt/meteovision" not in line
            ]
            assert problems == [], problems


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?)(/\d+)?)*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _cron_field_ok(text: str, low: int, high: int) -> bool:
    if not _CRON_FIELD.match(text):
        return False
    numbers = [int(n) for n in re.findall(r"\d+", re.sub(r"/\d+", "", text))]
    return all(low <= n <= high for n in numbers)


def test_crontab_lines_parse() -> None:
    lines = [
        line
        for line in (WORKFLOWS / "cron" / "crontab.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    entries = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(entries) == 2
    for line in entries:
        fields = line.split(None, 5)
        assert len(fields) == 6, line
        assert all(_cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields[:5], _CRON_RANGES, strict=True)), (
            line
        )
        assert fields[0] == "*/5"
        words = shlex.split(fields[5])
        start = words.index("flock")
        assert words[start + 1] == "-n" and words[start + 2].endswith(".lock")
        command = words[start + 3 :]
        assert command[1:3] == ["operational", "--config"] and command[0].endswith("/meteovision")
        assert (WORKFLOWS / "examples" / Path(command[3]).name).is_file()
        assert "%" not in fields[5]  # cron turns % into newlines
    assert not _cron_field_ok("*/5x", 0, 59) and not _cron_field_ok("61", 0, 59)


def test_ecflow_suite() -> None:
    folder = WORKFLOWS / "ecflow"
    words = [
        line.split()
        for line in (folder / "meteovision.def").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    depth: list[str] = []
    edits: dict[str, str] = {}
    tasks: list[str] = []
    for word in words:
        if word[0] in ("suite", "family"):
            depth.append(word[0])
        elif word[0] in ("endsuite", "endfamily"):
            assert depth and depth.pop() == word[0][3:], f"unbalanced {word[0]}"
        elif word[0] == "edit":
            edits[word[1]] = word[2] if len(word) > 2 else ""
        elif word[0] == "task":
            tasks.append(word[1])
        elif word[0] == "cron":
            assert len(word) == 4 and all(re.fullmatch(r"\d\d:\d\d", w) for w in word[1:]), word
    assert depth == [] and tasks == ["tick", "tick"]
    assert {w[2] for w in words if w[0] == "edit" and w[1] == "APP"} == {"bow_echo", "nowcast_precip"}
    for app in ("bow_echo", "nowcast_precip"):
        assert (WORKFLOWS / "examples" / f"{app}.yaml").is_file()
    generated = {"ECF_PORT", "ECF_HOST", "ECF_NAME", "ECF_PASS", "ECF_TRYNO", "APP"}
    for script in [folder / "tick.ecf", *sorted((folder / "include").glob("*.h"))]:
        text = script.read_text()
        text = text.replace("%%", "")
        used = set(re.findall(r"%([A-Z_]+)%", text))
        assert used <= set(edits) | generated, (script.name, used - set(edits) - generated)
        includes = re.findall(r"^%include <([^>]+)>", text, flags=re.M)
        assert all((folder / "include" / name).is_file() for name in includes)
    assert (folder / "tick.ecf").is_file()
