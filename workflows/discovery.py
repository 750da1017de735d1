"""Finding operational work: input files by pattern and time window, grouped into units of work.

A unit of work is what the ledger claims and the predict stage processes in one go: one file
(``single_file``) or one window of N consecutive frames ending at a reference time
(``nowcast_sequence``). Its key is the sha256 of its input paths and their content hashes, so
a file delivered again with other content makes a new unit, and the same content never does.

Some candidates cannot be processed and are recorded instead of claimed (state ``skipped``):
a nowcast window with a missing frame (a gap), a file whose name holds no time, and a second
file of a time already taken (``duplicate``: of the files sharing a time, the first by name is
used, deterministically, the others are recorded once and not retried).

Each file is looked at on its own. With ``time_from: reader``, a file the reader cannot open
(whatever its library raised) is still a unit of work (kind ``file``), so the predict stage's
failure retries and finally quarantines it, and it never keeps the other files from being
processed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from meteovision.datasets.errors import MeteovisionError
from meteovision.workflows.operational_config import OperationalConfig, time_regex

log = logging.getLogger(__name__)

UnitKind = Literal["file", "window", "gap", "unplaced", "duplicate"]
#: A file whose status changed less than this long ago is hashed again next time (coarse ctime clocks).
SETTLED_SECONDS = 2.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileFacts:
    """What the ledger remembers of a file so an unchanged file is not hashed (or read) again."""

    sha256: str
    time: datetime | None


class FactsCache(Protocol):
    """Content hash and data time of files, valid while their ``os.stat`` signature is unchanged."""

    def get_facts(self, path: Path, signature: tuple[int, ...]) -> FileFacts | None: ...

    def put_facts(self, items: Sequence[tuple[Path, tuple[int, ...], FileFacts]]) -> None: ...


@dataclass(frozen=True)
class InputFile:
    """One input file: its path, its (UTC, aware) data time if known, its content sha256."""

    path: Path
    time: datetime | None
    sha256: str


@dataclass(frozen=True)
class WorkUnit:
    """A unit of work (``file``, ``window``), or why a candidate is none (``gap``, ``unplaced``, ``duplicate``)."""

    kind: UnitKind
    label: str
    inputs: tuple[InputFile, ...]
    reference_time: datetime | None
    reason: str = ""

    @property
    def key(self) -> str:
        """sha256 of the kind, reference time and every input's path and content hash."""
        doc = [self.kind, iso(self.reference_time), [[str(f.path), f.sha256] for f in self.inputs]]
        return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode("utf-8")).hexdigest()

    @property
    def processable(self) -> bool:
        return self.kind in ("file", "window")

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.inputs]


@dataclass(frozen=True)
class Discovery:
    """A tick's view of its input folder: the files in the time window and the units built from them."""

    found: int
    units: tuple[WorkUnit, ...]


def iso(t: datetime | None) -> str | None:
    """``2022-06-03T23:25:00Z`` (or None)."""
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    """Device, inode, size, mtime and ctime: any rewrite or re-delivery changes at least the ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def time_from_name(path: Path, time_format: str) -> datetime | None:
    """The UTC time written in the file name with ``time_format``, or None when the name holds none."""
    match = time_regex(time_format).search(path.name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(0), time_format).replace(tzinfo=UTC)
    except ValueError:
        return None  # digits in the right places but not a date (e.g. month 13)


def time_from_reader(path: Path) -> datetime:
    """The last time step of the file, through the project's readers (raises a ``MeteovisionError``)."""
    from meteovision.datasets.read_guard import reading
    from meteovision.datasets.readers import open_dataset

    with reading(path), open_dataset(path) as ds:
        if "time" not in ds.coords:
            raise MeteovisionError(f"{path}: no time coordinate; use input.time_from: filename")
        last = np.atleast_1d(ds["time"].to_numpy()).astype("datetime64[ns]").max()
    ns = int(last.astype(np.int64))
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def list_candidates(config: OperationalConfig, wall_clock: float) -> list[Path]:
    """Visible regular files matching the pattern that have not changed for ``min_age_seconds``."""
    folder = config.input.folder
    out = []
    for path in sorted(folder.glob(config.input.pattern)):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            st = path.stat()
        except OSError:  # vanished between the listing and the stat
            continue
        if not path.is_file():
            continue
        if wall_clock - st.st_mtime < config.input.min_age_seconds:
            log.info("%s changed %.0f s ago: left for the next tick", path.name, wall_clock - st.st_mtime)
            continue
        out.append(path)
    return out


class FileInspector:
    """Hashes (and, with ``time_from: reader``, dates) files, through the ledger's cache."""

    def __init__(self, config: OperationalConfig, cache: FactsCache, wall_clock: Callable[[], float]) -> None:
        self.config = config
        self.cache = cache
        self.wall_clock = wall_clock
        self._fresh: list[tuple[Path, tuple[int, ...], FileFacts]] = []
        self.problems: dict[Path, str] = {}

    def name_time(self, path: Path) -> datetime | None:
        return time_from_name(path, self.config.input.time_format)

    def facts(self, path: Path) -> FileFacts | None:
        """Hash and time of ``path``; None (reason in :attr:`problems`) when it cannot be read at all."""
        try:
            st = path.stat()
        except OSError as err:
            self.problems[path] = f"{path}: cannot stat ({err.strerror or err})"
            return None
        signature = stat_signature(st)
        cached = self.cache.get_facts(path, signature)
        if cached is not None:
            return cached
        try:
            digest = sha256_file(path)
        except OSError as err:
            self.problems[path] = f"{path}: cannot read ({err.strerror or err})"
            return None
        when: datetime | None
        if self.config.input.time_from == "filename":
            when = self.name_time(path)
        else:
            try:
                when = time_from_reader(path)
            except (MeteovisionError, OSError) as err:
                self.problems[path] = str(err)
                return FileFacts(digest, None)  # not cached: read again next tick
        facts = FileFacts(digest, when)
        if self.wall_clock() - st.st_ctime >= SETTLED_SECONDS:
            self._fresh.append((path, signature, facts))
        return facts

    def flush(self) -> None:
        """Store the facts learnt this tick."""
        if self._fresh:
            self.cache.put_facts(self._fresh)
            self._fresh = []


def in_window(t: datetime, config: OperationalConfig, now: datetime) -> bool:
    hours = config.input.window_hours
    if t > now + timedelta(minutes=config.input.max_future_minutes):
        return False
    return hours is None or t >= now - timedelta(hours=hours)


def _times(paths: Iterable[Path], inspector: FileInspector) -> dict[Path, datetime | None]:
    """Data time of every path (from the name when that is the source, else via the cached facts)."""
    times: dict[Path, datetime | None] = {}
    for path in paths:
        if inspector.config.input.time_from == "filename":
            times[path] = inspector.name_time(path)
            continue
        got = inspector.facts(path)
        times[path] = got.time if got is not None else None
    return times


def _unplaced(path: Path, sha: str, reason: str) -> WorkUnit:
    return WorkUnit("unplaced", path.name, (InputFile(path, None, sha),), None, reason)


def _duplicate(path: Path, sha: str, t: datetime, first: Path) -> WorkUnit:
    """The record of ``path``, whose time ``t`` is that of ``first`` (used instead: first by name)."""
    reason = f"{path.name}: time {iso(t)} is also that of {first.name}; only {first.name} is used"
    return WorkUnit("duplicate", path.name, (InputFile(path, t, sha),), t, reason)


def _unreadable(path: Path, sha: str, config: OperationalConfig, inspector: FileInspector) -> WorkUnit:
    """A file without a time: a record (time from the name) or, when the reader failed, work to retry."""
    if config.input.time_from == "filename":
        return _unplaced(path, sha, _no_time_reason(path, config, inspector))
    # reader mode: the predict stage reads it again; its failure retries and then quarantines the
    # file instead of leaving it in the folder, ignored, for ever.
    return WorkUnit("file", path.name, (InputFile(path, None, sha),), None)


def discover(config: OperationalConfig, inspector: FileInspector, now: datetime) -> Discovery:
    """The tick's units of work (and skip records), newest reference time first."""
    paths = list_candidates(config, inspector.wall_clock())
    if config.kind == "single_file":
        return _single_files(config, inspector, paths, now)
    return _sequences(config, inspector, paths, now)


def _no_time_reason(path: Path, config: OperationalConfig, inspector: FileInspector) -> str:
    if config.input.time_from == "filename":
        return f"{path.name}: no time matching {config.input.time_format!r} in the file name"
    return inspector.problems.get(path, f"{path}: the reader gives no time")


def _single_files(
    config: OperationalConfig, inspector: FileInspector, paths: list[Path], now: datetime
) -> Discovery:
    times = _times(paths, inspector)
    units: list[WorkUnit] = []
    first_of: dict[datetime, Path] = {}
    found = 0
    for path in paths:  # sorted by name: the first file of a time is the same every tick
        t = times[path]
        if t is not None and not in_window(t, config, now):
            continue
        facts = inspector.facts(path)
        if facts is None:
            continue  # vanished or unreadable by the OS: nothing to claim; seen again next tick
        found += 1
        if t is None:
            units.append(_unreadable(path, facts.sha256, config, inspector))
            continue
        first = first_of.setdefault(t, path)
        if first != path:  # both would write the same product: only the first is made
            units.append(_duplicate(path, facts.sha256, t, first))
            continue
        units.append(WorkUnit("file", path.name, (InputFile(path, t, facts.sha256),), t))
    units.sort(key=lambda u: (u.reference_time or datetime.max.replace(tzinfo=UTC), u.label), reverse=True)
    return Discovery(found, tuple(units))


def _sequences(
    config: OperationalConfig, inspector: FileInspector, paths: list[Path], now: datetime
) -> Discovery:
    assert config.sequence is not None
    n = config.sequence.frames
    step = timedelta(minutes=config.sequence.step_minutes)
    times = _times(paths, inspector)
    by_time: dict[datetime, Path] = {}
    units: list[WorkUnit] = []
    references: list[datetime] = []
    for path in paths:
        t = times[path]
        if t is None:
            facts = inspector.facts(path)
            if facts is not None:
                units.append(_unreadable(path, facts.sha256, config, inspector))
            continue
        twin = by_time.get(t)
        if twin is not None:
            if in_window(t, config, now):
                facts = inspector.facts(path)
                if facts is not None:
                    units.append(_duplicate(path, facts.sha256, t, twin))
            continue
        by_time[t] = path
        if in_window(t, config, now):
            references.append(t)

    def file_at(t: datetime) -> InputFile | None:
        path = by_time.get(t)
        if path is None:
            return None
        facts = inspector.facts(path)
        return None if facts is None else InputFile(path, t, facts.sha256)

    for ref in sorted(references, reverse=True):
        wanted = [ref - k * step for k in range(n - 1, -1, -1)]
        frames = [file_at(t) for t in wanted]
        present = tuple(f for f in frames if f is not None)
        label = f"nowcast {iso(ref)}"
        if len(present) < n:
            missing = [iso(t) for t, f in zip(wanted, frames, strict=True) if f is None]
            reason = (
                f"window of {n} frames {config.sequence.step_minutes:g} min apart ending {iso(ref)} "
                f"has a gap: no frame at {', '.join(str(m) for m in missing)}"
            )
            units.append(WorkUnit("gap", label, present, ref, reason))
        else:
            units.append(WorkUnit("window", label, present, ref))
    unplaced = sum(1 for u in units if u.kind in ("unplaced", "duplicate", "file"))
    return Discovery(len(references) + unplaced, tuple(units))
