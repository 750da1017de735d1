"""Settings, seeding, calendars and the manifest shared by every synthetic generator.

Randomness never comes from global state: each stream is a ``numpy.random.Generator``
seeded from ``(seed, app, key...)`` through ``zlib.crc32`` (Python's ``hash`` is salted
per process), so one seed gives byte-identical files on every run and machine.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from meteovision.core.applications import APPLICATION_NAMES
from meteovision.datasets.errors import MeteovisionError

#: Applications, in the order ``--app all`` writes them.
APPS: tuple[str, ...] = APPLICATION_NAMES


class SampleDataError(MeteovisionError):
    """Bad settings or an output folder that sample data must not be written into."""


@dataclass(frozen=True)
class SampleSettings:
    """How much synthetic data to write; defaults keep every app to seconds on 2 CPUs.

    ``size`` is the grid side in cells for radar (1 km) and satellite (3 km) apps;
    webcam images are ``image_height`` x ``image_width`` pixels.
    """

    size: int = 96
    events: int = 5
    frames_per_event: int = 16
    cameras: int = 4
    image_height: int = 96
    image_width: int = 128

    def __post_init__(self) -> None:
        checks = {
            "size": (self.size, 32, 1024),
            "events": (self.events, 1, 100),
            "frames_per_event": (self.frames_per_event, 2, 288),
            "cameras": (self.cameras, 1, 26),
            "image_height": (self.image_height, 32, 1024),
            "image_width": (self.image_width, 32, 1024),
        }
        for name, (value, low, high) in checks.items():
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise SampleDataError(f"sample settings: {name}={value!r} must be an integer in [{low}, {high}]")


#: Per-application defaults where the generic ones are too little to learn from. A radar nowcast learns
#: motion, and each event has one motion (3-30 m s-1, any direction): five events give it three motions
#: to train on. Forty short events (12 frames: 3 windows of 4 + 6) give it about thirty, for 6 times the frames.
APP_SETTINGS: dict[str, SampleSettings] = {
    "nowcast_precip": SampleSettings(events=40, frames_per_event=12),
    "nowcast_reflectivity": SampleSettings(events=40, frames_per_event=12),
}


def default_settings(app: str) -> SampleSettings:
    """The sample settings ``app`` gets when none are given (``APP_SETTINGS``, else the generic ones)."""
    return APP_SETTINGS.get(app, SampleSettings())


def _key_int(key: str | int) -> int:
    if isinstance(key, int):
        if key < 0:
            raise SampleDataError(f"random stream key {key} must be non-negative")
        return key
    return zlib.crc32(key.encode("utf-8"))


def make_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """Independent, reproducible generator for the stream named by ``(seed, *keys)``."""
    if seed < 0:
        raise SampleDataError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, *(_key_int(k) for k in keys)]))


def event_calendar(
    rng: np.random.Generator,
    n_events: int,
    n_frames: int,
    step_minutes: int,
    first_day: datetime,
    hours: tuple[int, int] = (0, 24),
) -> list[list[datetime]]:
    """Frame times of ``n_events`` events, each on its own day, contiguous at ``step_minutes``.

    Events are at least four days apart (plus up to two days of jitter, more for events
    longer than a day) so no two share a day, and start inside ``hours`` (UTC) when the
    event fits in that window.
    """
    duration = (n_frames - 1) * step_minutes
    spacing = 4 + duration // (24 * 60)
    events: list[list[datetime]] = []
    for e in range(n_events):
        day = first_day + timedelta(days=spacing * e + int(rng.integers(0, 3)))
        latest = hours[1] * 60 - duration
        earliest = hours[0] * 60
        if latest < earliest:
            start_min = max(0, min(earliest, 24 * 60 - duration))
        else:
            start_min = earliest + step_minutes * int(rng.integers(0, (latest - earliest) // step_minutes + 1))
        start = day + timedelta(minutes=start_min)
        events.append([start + timedelta(minutes=step_minutes * i) for i in range(n_frames)])
    return events


def stamp(time: datetime) -> str:
    """``YYYYmmddHHMM`` as used in sample file names."""
    return time.strftime("%Y%m%d%H%M")


def iso(time: datetime) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def created_by(app: str) -> str:
    """Producer string for files and the manifest: package version, never a wall-clock time."""
    from importlib import metadata

    try:
        version = metadata.version("meteovision")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"meteovision {version} (meteovision.datasets.synthetic, app {app})"


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds (docs/CONTRACTS.md, "Sample-data layout")."""

    app: str
    seed: int
    time_step_minutes: int
    events: list[tuple[datetime, datetime]]
    inputs: list[str]
    targets: str | None
    labels_csv: str | None
    input_variables: list[str]
    target_variable: str | None
    class_names: list[str] | None
    settings: SampleSettings
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "app": self.app,
            "seed": self.seed,
            "created_by": created_by(self.app),
            "time_step_minutes": self.time_step_minutes,
            "events": [[iso(a), iso(b)] for a, b in self.events],
            "inputs": list(self.inputs),
            "targets": self.targets,
            "labels_csv": self.labels_csv,
            "input_variables": list(self.input_variables),
            "target_variable": self.target_variable,
            "class_names": None if self.class_names is None else list(self.class_names),
            "settings": dataclasses.asdict(self.settings),
        }
        doc.update(self.extra)
        return json.dumps(doc, indent=2) + "\n"


def event_bounds(events: Sequence[Sequence[datetime]]) -> list[tuple[datetime, datetime]]:
    return [(ev[0], ev[-1]) for ev in events]


@dataclass
class OutputFolder:
    """The folder one app writes into; remembers every file written so stale ones can be pruned."""

    root: Path
    written: set[Path] = field(default_factory=set)

    def file(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written.add(path)
        return path
