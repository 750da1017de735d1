"""Fixtures and helpers shared by the operational tests: checkpoints, input copies, configurations, clocks.

Checkpoints are the predict tests' tiny Half-UNets fitted for two batches on small synthetic
sample data (``predict_helpers.bow_checkpoint`` / ``nowcast_checkpoint``); inputs are copies of
that sample data's radar files.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meteovision.workflows.discovery import (
    FileFacts,
)
from meteovision.workflows.operational_config import (
    OperationalConfig,
    parse_config,
)
from tests.predict_helpers import Trained, bow, nowcast

__all__ = ["bow", "nowcast"]


WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
#: Event 1 of the bow-echo sample data (seed 1) runs 23:25 ... 23:50 on 2022-06-03.
BOW_NOW = datetime(2022, 6, 4, 0, 0, tzinfo=UTC)
PRODUCT = "meteovision_bow_echo_halfunet_{:%Y%m%dT%H%MZ}.nc"


# ----------------------------------------------------------------------------- fixtures and helpers


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
