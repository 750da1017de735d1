"""A folder of versioned models with an atomically switched ``current`` pointer; ``meteovision models``.

Layout of ``DIR``::

    v0001/model.ckpt  v0001/metrics.json  v0001/MODEL_CARD.md    (one folder per promoted model)
    v0002/...
    current -> v0002                                            (relative symlink)
    history.jsonl                                               (promotions and rollbacks)

Versions are immutable: a folder is assembled under a hidden temporary name and renamed into
place whole. ``current`` is a **symlink**, switched by creating a temporary symlink beside it and
``os.replace``-ing it onto ``current``: rename(2) replaces the name atomically, so ``current``
always exists and resolves to a complete version, and a consumer such as an operational config
(``checkpoint: DIR/current/model.ckpt``) keeps a plain path with no code of ours in between
(a ``current.json`` would need every reader to parse it). Promotions and rollbacks are appended to
``history.jsonl``: the pointer's history is a stack (a promotion pushes, a rollback pops), so
``rollback`` returns to the version that was current before the last promotion.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from meteovision.datasets.errors import MeteovisionError

__all__ = ["ModelRegistry", "ModelVersion", "RegistryError", "add_arguments", "run"]

CURRENT = "current"
HISTORY = "history.jsonl"
CHECKPOINT_NAME = "model.ckpt"
METRICS_NAME = "metrics.json"
CARD_NAME = "MODEL_CARD.md"
_VERSION = re.compile(r"v(\d{4,})")


class RegistryError(MeteovisionError):
    """A model folder that is missing, inconsistent, or cannot do what was asked (no version to roll back to)."""


@dataclass(frozen=True)
class ModelVersion:
    """One promoted model: ``DIR/vNNNN`` with its checkpoint, metrics and model card."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def number(self) -> int:
        match = _VERSION.fullmatch(self.name)
        if match is None:
            raise RegistryError(f"{self.path}: not a version folder (vNNNN)")
        return int(match.group(1))

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def card(self) -> Path:
        return self.path / CARD_NAME

    def metrics(self) -> dict[str, Any]:
        path = self.path / METRICS_NAME
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise RegistryError(f"{path}: unreadable metrics: {err}") from err


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelRegistry:
    """The versioned model folder ``root`` (created on first use)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: not a folder")

    def _lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".lock"), timeout=120)

    def versions(self) -> list[ModelVersion]:
        """Complete versions, oldest first (hidden temporaries are never listed)."""
        if not self.root.is_dir():
            return []
        found = [ModelVersion(p) for p in self.root.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(found, key=lambda v: v.number)

    def current(self) -> ModelVersion | None:
        """The version ``current`` points to (None before the first promotion)."""
        link = self.root / CURRENT
        if not link.is_symlink():
            if link.exists():
                raise RegistryError(f"{link}: exists but is not a symlink to a version folder")
            return None
        target = self.root / os.readlink(link)
        if not target.is_dir() or not (target / CHECKPOINT_NAME).is_file():
            raise RegistryError(f"{link}: points to {target}, which is not a complete version")
        return ModelVersion(target)

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        events = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RegistryError(f"{path}: line {n} is not JSON: {err}") from err
        return events

    def _stack(self) -> list[str]:
        stack: list[str] = []
        for event in self.history():
            if event["event"] == "promote":
                stack.append(str(event["version"]))
            elif event["event"] == "rollback" and stack:
                stack.pop()
        return stack

    def add_version(self, checkpoint: Path, metrics: Mapping[str, Any], card: str) -> ModelVersion:
        """Copy ``checkpoint`` with its metrics and card into the next ``vNNNN`` (assembled, then renamed)."""
        if not Path(checkpoint).is_file():
            raise RegistryError(f"{checkpoint}: no such checkpoint file")
        with self._lock():
            existing = self.versions()
            number = existing[-1].number + 1 if existing else 1
            final = self.root / f"v{number:04d}"
            tmp = self.root / f".{final.name}.{secrets.token_hex(4)}.tmp"
            tmp.mkdir()
            try:
                shutil.copyfile(checkpoint, tmp / CHECKPOINT_NAME)
                (tmp / METRICS_NAME).write_text(json.dumps(dict(metrics), indent=2, sort_keys=True, default=str))
                (tmp / CARD_NAME).write_text(card)
                for child in tmp.iterdir():
                    with open(child, "rb") as handle:
                        os.fsync(handle.fileno())
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return ModelVersion(final)

    def _point_to(self, version: ModelVersion) -> None:
        """Switch ``current`` with one rename: a temporary symlink ``os.replace``-d onto it."""
        tmp = self.root / f".{CURRENT}.{secrets.token_hex(4)}.tmp"
        os.symlink(version.name, tmp)
        try:
            os.replace(tmp, self.root / CURRENT)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _record(self, event: str, version: ModelVersion, previous: ModelVersion | None, **extra: Any) -> None:
        doc = {"time": _now(), "event": event, "version": version.name,
               "previous": previous.name if previous else None, **extra}
        with open(self.root / HISTORY, "a") as handle:
            handle.write(json.dumps(doc) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def promote(self, version: ModelVersion, **extra: Any) -> None:
        """Make ``version`` current (recorded in the history)."""
        if version.path.parent.resolve() != self.root.resolve() or not version.checkpoint.is_file():
            raise RegistryError(f"{version.path}: not a complete version of {self.root}")
        with self._lock():
            previous = self.current()
            self._point_to(version)
            self._record("promote", version, previous, **extra)

    def rollback(self) -> ModelVersion:
        """Point ``current`` back to the version current before the last promotion; returns it."""
        with self._lock():
            stack = self._stack()
            current = self.current()
            if len(stack) < 2 or current is None:
                raise RegistryError(f"{self.root}: no earlier version to roll back to "
                                    f"(promotions in effect: {stack or 'none'})")
            target = ModelVersion(self.root / stack[-2])
            if not target.checkpoint.is_file():
                raise RegistryError(f"{target.path}: the version to roll back to is missing or incomplete")
            self._point_to(target)
            self._record("rollback", target, current)
            return target


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "rollback"),
                        help="list: versions and the current one; rollback: back to the previous current")
    parser.add_argument("--models", required=True, type=Path, metavar="DIR", help="the versioned model folder")


def _score_line(version: ModelVersion) -> str:
    try:
        metrics = version.metrics()
    except RegistryError as err:
        return str(err)
    key = metrics.get("metric")
    score = metrics.get("candidate", {}).get(key) if key else None
    return f"{key} = {score}" if key else ""


def run(args: argparse.Namespace) -> int:
    """``meteovision models list|rollback --models DIR``; 0 done, 2 error."""
    try:
        registry = ModelRegistry(args.models)
        if args.action == "rollback":
            version = registry.rollback()
            print(f"current -> {version.name} ({version.checkpoint})")
            return 0
        current = registry.current()
        versions = registry.versions()
        if not versions:
            print(f"{registry.root}: no model version")
        for version in versions:
            mark = "*" if current is not None and version.name == current.name else " "
            print(f"{mark} {version.name}  {_score_line(version)}")
    except (MeteovisionError, OSError) as err:
        print(f"meteovision models: error: {err}", file=sys.stderr)
        return 2
    return 0
