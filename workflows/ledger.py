"""The operational ledger: which units of work were claimed, done, failed or quarantined (SQLite, WAL).

Every write is one ``BEGIN IMMEDIATE`` transaction taken under an exclusive file lock
(``filelock``), so two ticks running at once (a timer firing while a slow tick still runs, two
hosts sharing a ledger folder is *not* supported: SQLite WAL needs a local filesystem) never
claim the same unit: the claim re-reads the unit's row inside the transaction.

States of a unit (``units.state``)::

    pending --claim--> claimed --finish--> done
                          |--fail--> failed --(backoff elapsed) claim--> claimed ...
                          |--fail at max_attempts--> quarantined
    skipped: recorded, never claimed (nowcast gap, file without a time, second file of a time)

``attempts`` counts claims, so a unit whose processing kills the process (it never reaches
``fail``) still runs out of attempts. A claim is abandoned, and may be taken over, when its lease
has expired or when it was made on this host by a process that no longer runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from meteovision.datasets.errors import MeteovisionError
from meteovision.workflows.discovery import FileFacts, WorkUnit, iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class UnitState(StrEnum):
    """Where a unit of work stands; the values are what the ``units.state`` column holds."""

    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"  # due again after its backoff
    QUARANTINED = "quarantined"  # attempts used up: set aside until requeued
    SKIPPED = "skipped"


STATES = tuple(s.value for s in UnitState)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS units (
    unit_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    inputs TEXT NOT NULL,
    reference_time TEXT,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    outputs TEXT,
    quarantine_path TEXT,
    checkpoint_sha256 TEXT,
    claimed_by TEXT,
    claim_host TEXT,
    claim_pid INTEGER,
    claimed_at REAL,
    lease_until REAL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS units_state ON units (state);
CREATE INDEX IF NOT EXISTS units_label ON units (label);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    signature TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    data_time TEXT
);
CREATE TABLE IF NOT EXISTS ticks (
    tick_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    exit_code INTEGER NOT NULL,
    summary TEXT NOT NULL
);
"""


class LedgerError(MeteovisionError):
    """The ledger cannot be opened, locked or written."""


class Claim(Enum):
    """What :meth:`Ledger.claim` made of a unit."""

    CLAIMED = "claimed"
    TAKEN_OVER = "taken over"  # claimed after its previous claim was abandoned (killed tick)
    BUSY = "busy"  # claimed by a live process whose lease runs
    WAITING = "waiting"  # failed before; its backoff has not elapsed
    FINISHED = "finished"  # done, quarantined or skipped: nothing to do
    QUARANTINED = "quarantined"  # an abandoned claim that had used up its attempts: quarantined now


@dataclass(frozen=True)
class UnitRow:
    """One row of ``units``, decoded."""

    unit_id: str
    kind: str
    label: str
    inputs: list[list[str]]
    reference_time: str | None
    state: UnitState
    attempts: int
    last_error: str | None
    outputs: list[str]
    quarantine_path: str | None
    claimed_by: str | None
    claim_host: str | None
    claim_pid: int | None
    lease_until: float | None
    next_attempt_at: float

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> UnitRow:
        return cls(
            unit_id=row["unit_id"],
            kind=row["kind"],
            label=row["label"],
            inputs=json.loads(row["inputs"]),
            reference_time=row["reference_time"],
            state=UnitState(row["state"]),
            attempts=int(row["attempts"]),
            last_error=row["last_error"],
            outputs=json.loads(row["outputs"] or "[]"),
            quarantine_path=row["quarantine_path"],
            claimed_by=row["claimed_by"],
            claim_host=row["claim_host"],
            claim_pid=row["claim_pid"],
            lease_until=row["lease_until"],
            next_attempt_at=float(row["next_attempt_at"]),
        )


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this host (a zombie, killed but not yet reaped, counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def backoff_delay(attempts: int, backoff_seconds: float) -> float:
    """Wait before the next attempt after ``attempts`` failed ones: ``backoff * 2**(attempts-1)``."""
    return backoff_seconds * 2 ** max(attempts - 1, 0)


class Ledger:
    """A tick's connection to the ledger; use as a context manager (it closes the connection).

    ``clock`` gives epoch seconds (wall time; tests pass a fake one to step through backoffs).
    ``owner`` identifies this tick's claims (host, pid and a random tick id).
    """

    def __init__(
        self,
        path: Path,
        lock_path: Path,
        *,
        lock_timeout: float = 120.0,
        lease_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.lock_path = Path(lock_path)
        self.lock_timeout = lock_timeout
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.tick_id = uuid.uuid4().hex[:12]
        self.owner = f"{self.host}:{self.pid}:{self.tick_id}"
        for folder in {self.path.parent, self.lock_path.parent}:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise LedgerError(
                    f"{folder}: cannot create the ledger/lock folder ({err.strerror or err})"
                ) from err
        self._lock = FileLock(self.lock_path, timeout=lock_timeout)
        try:
            self._db = sqlite3.connect(self.path, timeout=lock_timeout, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            with self._locked():  # two ticks creating the ledger at once: one sets it up
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r}); put the ledger on a "
                    "local filesystem"
                )
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self.transaction():
                pass  # creates the tables on first use
        except sqlite3.Error as err:
            raise LedgerError(f"{self.path}: cannot open the ledger ({err})") from err

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The exclusive file lock, or :class:`LedgerError` after ``lock_timeout``."""
        try:
            self._lock.acquire()
        except Timeout as err:
            raise LedgerError(
                f"{self.lock_path}: lock not obtained within {self.lock_timeout:g} s (another tick holds it)"
            ) from err
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the file lock; rolled back on any error."""
        with self._locked():
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._ensure_schema()
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                raise LedgerError(f"{self.path}: {err}") from err

    def _ensure_schema(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema {version} is newer than this meteovision's ({SCHEMA_VERSION})"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _row(self, db: sqlite3.Connection, unit_id: str) -> UnitRow | None:
        row = db.execute("SELECT * FROM units WHERE unit_id = ?", (unit_id,)).fetchone()
        return None if row is None else UnitRow.from_sql(row)

    # ------------------------------------------------------------------ file facts (hash cache)

    def get_facts(self, path: Path, signature: tuple[int, ...]) -> FileFacts | None:
        row = self._db.execute(
            "SELECT signature, sha256, data_time FROM files WHERE path = ?", (str(path),)
        ).fetchone()
        if row is None or row["signature"] != json.dumps(list(signature)):
            return None
        when = datetime.fromisoformat(row["data_time"]) if row["data_time"] else None
        return FileFacts(row["sha256"], when)

    def put_facts(self, items: Sequence[tuple[Path, tuple[int, ...], FileFacts]]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO files (path, signature, sha256, data_time) VALUES (?, ?, ?, ?)",
                [
                    (str(p), json.dumps(list(sig)), f.sha256, f.time.isoformat() if f.time else None)
                    for p, sig, f in items
                ],
            )

    # ------------------------------------------------------------------ units

    def register(self, units: Sequence[WorkUnit]) -> list[WorkUnit]:
        """Insert the units not yet known (work as ``pending``, records as ``skipped``); returns those."""
        now = self.clock()
        new: list[WorkUnit] = []
        with self.transaction() as db:
            for unit in units:
                exists = db.execute("SELECT 1 FROM units WHERE unit_id = ?", (unit.key,)).fetchone()
                if exists:
                    continue
                state = "pending" if unit.processable else "skipped"
                inputs = json.dumps([[str(f.path), f.sha256] for f in unit.inputs])
                db.execute(
                    "INSERT INTO units (unit_id, kind, label, inputs, reference_time, state, last_error, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        unit.key,
                        unit.kind,
                        unit.label,
                        inputs,
                        iso(unit.reference_time),
                        state,
                        unit.reason or None,
                        now,
                        now,
                    ),
                )
                new.append(unit)
        return new

    def _abandoned(self, row: UnitRow, now: float) -> bool:
        if row.lease_until is not None and row.lease_until < now:
            return True
        return row.claim_host == self.host and row.claim_pid is not None and not pid_alive(row.claim_pid)

    def claim(self, unit_id: str, max_attempts: int) -> tuple[Claim, UnitRow | None]:
        """Claim one unit for this tick if it is due; the row as it now stands."""
        now = self.clock()
        with self.transaction() as db:
            row = self._row(db, unit_id)
            if row is None:
                raise LedgerError(f"{self.path}: unit {unit_id[:12]} was never registered")
            outcome = Claim.CLAIMED
            if row.state in (UnitState.DONE, UnitState.QUARANTINED, UnitState.SKIPPED):
                return Claim.FINISHED, row
            if row.state is UnitState.CLAIMED:
                if not self._abandoned(row, now):
                    return Claim.BUSY, row
                log.warning("%s: taking over the claim of %s (attempt %d; %s)", row.label, row.claimed_by,
                            row.attempts, "lease expired" if (row.lease_until or 0) < now else "process gone")
                if row.attempts >= max_attempts:
                    reason = (
                        f"abandoned by {row.claimed_by} on attempt {row.attempts} of {max_attempts} "
                        f"(the process died while working on it); last error: {row.last_error or 'none'}"
                    )
                    db.execute(
                        "UPDATE units SET state = 'quarantined', last_error = ?, claimed_by = NULL, "
                        "updated_at = ?, finished_at = ? WHERE unit_id = ?",
                        (reason, now, now, unit_id),
                    )
                    return Claim.QUARANTINED, self._row(db, unit_id)
                outcome = Claim.TAKEN_OVER
            elif row.state is UnitState.FAILED and row.next_attempt_at > now:
                return Claim.WAITING, row
            db.execute(
                "UPDATE units SET state = 'claimed', attempts = attempts + 1, claimed_by = ?, "
                "claim_host = ?, claim_pid = ?, claimed_at = ?, lease_until = ?, updated_at = ? "
                "WHERE unit_id = ?",
                (self.owner, self.host, self.pid, now, now + self.lease_seconds, now, unit_id),
            )
            return outcome, self._row(db, unit_id)

    def _update_own(self, db: sqlite3.Connection, unit_id: str, sql: str, params: tuple[Any, ...]) -> bool:
        cur = db.execute(
            f"UPDATE units SET {sql} WHERE unit_id = ? AND state = 'claimed' AND claimed_by = ?",
            (*params, unit_id, self.owner),
        )
        if cur.rowcount != 1:
            log.error(
                "unit %s: our claim was taken over meanwhile; its new owner records the result", unit_id[:12]
            )
            return False
        return True

    def finish(self, unit_id: str, outputs: Sequence[Path], checkpoint_sha256: str) -> bool:
        """Mark our claimed unit done with its outputs; False when the claim was no longer ours."""
        now = self.clock()
        with self.transaction() as db:
            return self._update_own(
                db,
                unit_id,
                "state = 'done', outputs = ?, checkpoint_sha256 = ?, last_error = NULL, "
                "lease_until = NULL, updated_at = ?, finished_at = ?",
                (json.dumps([str(p) for p in outputs]), checkpoint_sha256, now, now),
            )

    def fail(self, unit_id: str, reason: str, max_attempts: int, backoff_seconds: float) -> UnitState | None:
        """Record a failed attempt: ``failed`` with the next attempt's time, ``quarantined`` when used up."""
        now = self.clock()
        with self.transaction() as db:
            row = self._row(db, unit_id)
            if row is None:
                raise LedgerError(f"{self.path}: unit {unit_id[:12]} was never registered")
            if row.attempts >= max_attempts:
                ok = self._update_own(db, unit_id, "state = 'quarantined', last_error = ?, lease_until = NULL, "
                                      "updated_at = ?, finished_at = ?", (reason, now, now))
                return UnitState.QUARANTINED if ok else None
            due = now + backoff_delay(row.attempts, backoff_seconds)
            ok = self._update_own(
                db,
                unit_id,
                "state = 'failed', last_error = ?, next_attempt_at = ?, lease_until = NULL, updated_at = ?",
                (reason, due, now),
            )
            return UnitState.FAILED if ok else None

    def release(self, unit_id: str, reason: str) -> None:
        """Give back our claim without spending an attempt (the tick stopped for a reason not the unit's)."""
        now = self.clock()
        with self.transaction() as db:
            self._update_own(
                db,
                unit_id,
                "state = CASE WHEN attempts > 1 THEN 'failed' ELSE 'pending' END, attempts = attempts - 1, "
                "last_error = ?, lease_until = NULL, next_attempt_at = 0, updated_at = ?",
                (reason, now),
            )

    def set_quarantine_path(self, unit_id: str, path: Path) -> None:
        with self.transaction() as db:
            db.execute("UPDATE units SET quarantine_path = ? WHERE unit_id = ?", (str(path), unit_id))

    def requeue(self, states: Sequence[UnitState] = (UnitState.FAILED, UnitState.QUARANTINED)) -> int:
        """Make failed/quarantined units due again with fresh attempts (after the cause was fixed)."""
        now = self.clock()
        marks = ", ".join("?" for _ in states)
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE units SET state = 'pending', attempts = 0, next_attempt_at = 0, "
                f"quarantine_path = NULL, updated_at = ? WHERE state IN ({marks})",
                (now, *(UnitState(s).value for s in states)),
            )
            return int(cur.rowcount)

    # ------------------------------------------------------------------ reading

    def unit(self, unit_id: str) -> UnitRow | None:
        with self.transaction() as db:
            return self._row(db, unit_id)

    def units(self, state: UnitState | None = None) -> list[UnitRow]:
        with self.transaction() as db:
            if state is None:
                rows = db.execute("SELECT * FROM units ORDER BY reference_time, label").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM units WHERE state = ? ORDER BY reference_time, label", (UnitState(state).value,)
                ).fetchall()
        return [UnitRow.from_sql(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self.transaction() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM units GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | {r["state"]: int(r["n"]) for r in rows}

    def record_tick(self, started_at: float, exit_code: int, summary: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO ticks (tick_id, host, pid, started_at, finished_at, exit_code, summary) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.tick_id,
                    self.host,
                    self.pid,
                    started_at,
                    self.clock(),
                    exit_code,
                    json.dumps(summary, sort_keys=True),
                ),
            )

    def last_ticks(self, limit: int = 5) -> list[dict[str, Any]]:
        with self.transaction() as db:
            rows = db.execute("SELECT * FROM ticks ORDER BY finished_at DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) | {"summary": json.loads(r["summary"])} for r in rows]


def utc_text(epoch: float | None) -> str:
    """An epoch time as ``2024-01-02T12:05:00Z`` for reports."""
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
