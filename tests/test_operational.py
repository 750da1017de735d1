"""Operational runs: configuration, discovery and the ledger.

What is checked is bookkeeping: which units discovery builds, what the ledger records and how it
hands out claims. The ticks are in ``test_operational_tick.py``, the failure guarantees (a bad file,
a full disk, duplicate times) in ``test_operational_failures.py``, the subprocess guarantees
(SIGKILL mid-write, overlapping ticks, SIGTERM) in ``test_operational_crash.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meteovision.workflows.discovery import (
    FileFacts,
    FileInspector,
    InputFile,
    WorkUnit,
    discover,
    time_from_name,
)
from meteovision.workflows.ledger import Claim, Ledger, UnitState, backoff_delay, pid_alive
from meteovision.workflows.operational_config import (
    OperationalConfigError,
    load_config,
    parse_config,
    time_regex,
)
from tests.operational_helpers import (
    BOW_NOW,
    WORKFLOWS,
    DictCache,
    FakeClock,
    bow,
    config_dict,
    copy_inputs,
    make_config,
    nowcast,
    radar_files,
)
from tests.predict_helpers import Trained

__all__ = ["bow", "nowcast"]  # module-scoped fixtures, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_a_packaged_checkpoint_name_stays_a_name_unless_a_file_beside_the_config_has_it(tmp_path: Path) -> None:
    src = tmp_path / "ops.yaml"
    src.write_text("name: x\nkind: single_file\ncheckpoint: nowcast_precip_real\ninput: {folder: in}\n"
                   "output: {folder: out}\nledger: l.sqlite\nlock: x.lock\n")
    assert load_config(src).checkpoint == Path("nowcast_precip_real")
    (tmp_path / "nowcast_precip_real").write_bytes(b"mine")
    assert load_config(src).checkpoint == tmp_path / "nowcast_precip_real"


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
