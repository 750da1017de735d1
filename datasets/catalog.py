"""Index of data files: which file holds which time, and how times group into events.

Times come cheaply from the file name (``YYYYmmddHHMM``, ``YYYYmmddHHMMSS`` or
``YYYYmmddTHHMMSSZ``) and only when the name has none from opening the file with the
readers. A sample-data folder (``manifest.json``, see docs/CONTRACTS.md) is indexed from its
manifest: input and target globs matched by time, or the webcam ``labels.csv``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meteovision.datasets.errors import ReaderError
from meteovision.datasets.splits import as_datetime64, group_events

LOG = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: Date and time in a file name: 20180824230000, 201609281445, 20180601T084500Z.
_TIME_IN_NAME = re.compile(r"(?<!\d)(\d{8})T?(\d{4})(\d{2})?Z?(?!\d)")
#: Files a folder index never treats as data.
_NOT_DATA = {".json", ".csv", ".md", ".txt", ".yaml", ".yml", ".log", ".lock", ".tmp"}


class CatalogError(ReaderError):
    """A data folder, manifest or label file that cannot be indexed."""


@dataclass(frozen=True)
class Manifest:
    """The ``manifest.json`` of a sample-data folder."""

    path: Path
    app: str
    seed: int | None
    created_by: str
    time_step_minutes: float | None
    events: tuple[tuple[np.datetime64, np.datetime64], ...]
    inputs: tuple[str, ...]
    targets: str | None
    labels_csv: str | None
    input_variables: tuple[str, ...]
    target_variable: str | None
    class_names: tuple[str, ...] | None

    @property
    def data_dir(self) -> Path:
        return self.path.parent

    @classmethod
    def load(cls, location: str | Path) -> Manifest:
        """Read ``location`` (the manifest file or its folder)."""
        path = Path(location)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CatalogError(path, "no manifest.json: not a sample-data folder") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(path, f"unreadable manifest: {exc}") from exc
        if not isinstance(raw, dict):
            raise CatalogError(path, "manifest is not a JSON object")
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path) -> Manifest:
        for key in ("app", "inputs"):
            if key not in raw:
                raise CatalogError(path, f"manifest lacks {key!r}")
        inputs = raw["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(g, str) for g in inputs) or not inputs:
            raise CatalogError(path, f"manifest 'inputs' must be a non-empty list of globs, got {inputs!r}")
        try:
            events = tuple(
                (np.datetime64(_strip_z(a), "ns"), np.datetime64(_strip_z(b), "ns")) for a, b in raw.get("events") or []
            )
            step = raw.get("time_step_minutes")
            seed = raw.get("seed")
            class_names = raw.get("class_names")
            return cls(
                path=path,
                app=str(raw["app"]),
                seed=None if seed is None else int(seed),
                created_by=str(raw.get("created_by", "")),
                time_step_minutes=None if step is None else float(step),
                events=events,
                inputs=tuple(inputs),
                targets=raw.get("targets"),
                labels_csv=raw.get("labels_csv"),
                input_variables=tuple(str(v) for v in raw.get("input_variables") or []),
                target_variable=raw.get("target_variable"),
                class_names=None if class_names is None else tuple(str(c) for c in class_names),
            )
        except (TypeError, ValueError) as exc:
            raise CatalogError(path, f"malformed manifest: {exc}") from exc


def has_manifest(data_dir: str | Path) -> bool:
    return (Path(data_dir) / MANIFEST_NAME).is_file()


def _strip_z(value: str) -> str:
    value = str(value)
    if value.endswith("Z"):
        return value[:-1]
    return value.split("+")[0] if "T" in value and "+" in value else value


def time_from_filename(path: str | Path) -> np.datetime64 | None:
    """Time written in the file name (the last date-time in it), or None."""
    for match in reversed(list(_TIME_IN_NAME.finditer(Path(path).name))):
        date, hhmm, ss = match.groups()
        try:
            when = datetime.strptime(date + hhmm + (ss or "00"), "%Y%m%d%H%M%S")
        except ValueError:
            continue
        return np.datetime64(when, "ns")
    return None


def time_of_file(path: str | Path) -> np.datetime64:
    """Time of a one-frame file: from its name when there, else from its content (readers)."""
    when = time_from_filename(path)
    if when is not None:
        return when
    from meteovision.datasets.readers import open_dataset

    with open_dataset(Path(path)) as ds:
        if "time" not in ds.coords or ds.sizes.get("time", 0) < 1:
            raise CatalogError(path, "no time in the file name nor in the file")
        return np.datetime64(ds["time"].values[0], "ns")


def modal_step(times: Any) -> np.timedelta64 | None:
    """Most frequent positive step between sorted unique times (None for fewer than 2 times)."""
    t = np.unique(as_datetime64(times))
    if t.size < 2:
        return None
    steps, counts = np.unique(np.diff(t), return_counts=True)
    return np.timedelta64(steps[np.argmax(counts)], "ns")


def find_gaps(times: Any, step: np.timedelta64 | None) -> list[tuple[np.datetime64, np.datetime64]]:
    """Pairs of neighbouring times further apart than ``step``."""
    t = np.unique(as_datetime64(times))
    if step is None or t.size < 2:
        return []
    d = np.diff(t)
    return [(t[k], t[k + 1]) for k in np.flatnonzero(d > step)]


@dataclass(frozen=True)
class FileCatalog:
    """Files of a folder (or a list), sorted by time, with event ids."""

    paths: tuple[Path, ...]
    times: np.ndarray
    events: np.ndarray
    time_step: np.timedelta64 | None

    def __len__(self) -> int:
        return len(self.paths)

    def gaps(self) -> list[tuple[np.datetime64, np.datetime64]]:
        return find_gaps(self.times, self.time_step)


def index_files(paths: Iterable[str | Path], max_gap: timedelta = timedelta(hours=1)) -> FileCatalog:
    """Time and event of every file (events: runs without a gap larger than ``max_gap``)."""
    plist = [Path(p) for p in paths]
    for p in plist:
        if not p.is_file():
            raise CatalogError(p, "not a file")
    times = np.array([time_of_file(p) for p in plist], dtype="datetime64[ns]")
    order = np.argsort(times, kind="stable")
    times = times[order]
    sorted_paths = tuple(plist[i] for i in order)
    return FileCatalog(sorted_paths, times, group_events(times, max_gap), modal_step(times))


def index_folder(
    folder: str | Path, pattern: str = "*", recursive: bool = False, max_gap: timedelta = timedelta(hours=1)
) -> FileCatalog:
    """Index the data files of ``folder`` (hidden files, manifests and text files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise CatalogError(root, "not a folder")
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    files = sorted(p for p in found if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _NOT_DATA)
    if not files:
        raise CatalogError(root, f"no data files matching {pattern!r}")
    return index_files(files, max_gap=max_gap)


@dataclass(frozen=True)
class FrameIndex:
    """Gridded frames of a sample folder: one time each, its input files and target file."""

    data_dir: Path
    times: np.ndarray
    input_files: tuple[tuple[Path, ...], ...]
    target_files: tuple[Path, ...] | None
    time_step: np.timedelta64 | None

    def __len__(self) -> int:
        return int(self.times.size)


def _glob_by_time(data_dir: Path, pattern: str) -> dict[np.datetime64, Path]:
    by_time: dict[np.datetime64, Path] = {}
    for path in sorted(data_dir.glob(pattern)):
        if not path.is_file():
            continue
        when = time_of_file(path)
        if when in by_time:
            raise CatalogError(path, f"same time {when} as {by_time[when].name} in glob {pattern!r}")
        by_time[when] = path
    if not by_time:
        raise CatalogError(data_dir, f"no file matches {pattern!r}")
    return by_time


def frame_index(manifest: Manifest) -> FrameIndex:
    """Match the manifest's input globs (and target glob) by time; times missing anywhere are dropped."""
    root = manifest.data_dir
    groups = [_glob_by_time(root, g) for g in manifest.inputs]
    if manifest.targets:
        groups.append(_glob_by_time(root, manifest.targets))
    common = set(groups[0])
    for g in groups[1:]:
        common &= set(g)
    every = set().union(*groups)
    if len(every) > len(common):
        LOG.warning("%s: %d time(s) lack an input or target file and are left out", root, len(every) - len(common))
    if not common:
        raise CatalogError(root, "no time has every input (and target) file")
    times = np.array(sorted(common), dtype="datetime64[ns]")
    n_in = len(manifest.inputs)
    input_files = tuple(tuple(groups[k][t] for k in range(n_in)) for t in times)
    target_files = tuple(groups[-1][t] for t in times) if manifest.targets else None
    step = (
        np.timedelta64(round(manifest.time_step_minutes * 60e9), "ns")
        if manifest.time_step_minutes
        else modal_step(times)
    )
    return FrameIndex(root, times, input_files, target_files, step)


def events_from_manifest(times: np.ndarray, manifest: Manifest) -> np.ndarray | None:
    """Event number of each time from the manifest's [start, end] ranges (-1 outside); None without events."""
    if not manifest.events:
        return None
    labels = np.full(times.size, -1, dtype=np.int64)
    for k, (start, end) in enumerate(manifest.events):
        labels[(times >= start) & (times <= end)] = k
    return labels


@dataclass(frozen=True)
class ImageRecords:
    """Webcam images of ``labels.csv``: absolute path, camera, time and labels."""

    csv_path: Path
    paths: tuple[Path, ...]
    cameras: tuple[str, ...]
    times: np.ndarray
    snow_class: tuple[str, ...]
    visibility_m: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def image_records(csv_path: str | Path) -> ImageRecords:
    """The webcam images of a ``labels.csv``, read by the one labels reader
    (:func:`~meteovision.datasets.readers.webcam.read_webcam_labels`: columns, snow classes,
    visibilities, times and image files checked, errors naming the file and line)."""
    from meteovision.datasets.readers.webcam import read_webcam_labels

    csv_path = Path(csv_path)
    table = read_webcam_labels(csv_path)
    snow = tuple("" if pd.isna(v) else str(v) for v in table["snow_class"])
    return ImageRecords(
        csv_path=csv_path,
        paths=tuple(Path(p) for p in table["path"]),
        cameras=tuple(str(c) for c in table["camera"]),
        times=table["time"].to_numpy("datetime64[ns]"),
        snow_class=snow,
        visibility_m=table["visibility_m"].to_numpy(np.float64),
    )


def describe_times(times: Sequence[np.datetime64] | np.ndarray) -> str:
    """``start .. end`` in ISO minutes, or ``-`` for no times."""
    t = as_datetime64(times)
    if t.size == 0:
        return "-"
    fmt = "%Y-%m-%dT%H:%MZ"
    return f"{_iso(t.min(), fmt)} .. {_iso(t.max(), fmt)}"


def _iso(t: np.datetime64, fmt: str) -> str:
    return pd.Timestamp(t).strftime(fmt)


__all__ = [
    "MANIFEST_NAME",
    "CatalogError",
    "FileCatalog",
    "FrameIndex",
    "ImageRecords",
    "Manifest",
    "describe_times",
    "events_from_manifest",
    "find_gaps",
    "frame_index",
    "has_manifest",
    "image_records",
    "index_files",
    "index_folder",
    "modal_step",
    "time_from_filename",
    "time_of_file",
]
