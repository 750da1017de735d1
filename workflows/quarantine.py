"""Setting aside a unit of work that failed for good: the input moved to ``quarantine_folder``, a note beside it.

Called by the tick (:mod:`~meteovision.workflows.operational`) when a unit used up
``retry.max_attempts``; the ledger keeps the note's path (``--status`` shows it).
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.workflows.discovery import WorkUnit, iso, sha256_file
from meteovision.workflows.operational_config import OperationalConfig

log = logging.getLogger(__name__)

__all__ = ["quarantine"]


def _write_note(path: Path, doc: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _free_name(folder: Path, name: str, tag: str) -> Path:
    target = folder / name
    return target if not target.exists() else folder / f"{target.stem}.{tag}{target.suffix}"


def quarantine(config: OperationalConfig, unit: WorkUnit, reason: str, attempts: int) -> Path | None:
    """Set a unit that failed for good aside; the path of its note (None: recorded in the ledger only).

    A single file is moved into ``quarantine_folder`` (only if it still has the content that
    failed: a corrected re-delivery is left in place), with ``<name>.quarantine.json`` beside it.
    A nowcast window's frames are shared with other windows, so they stay; a note names them.
    """
    folder = config.quarantine_folder
    log.error("%s quarantined after %d attempt(s): %s", unit.label, attempts, reason)
    if folder is None:
        return None
    doc: dict[str, Any] = {
        "application": config.name,
        "unit": unit.label,
        "kind": unit.kind,
        "unit_id": unit.key,
        "reference_time": iso(unit.reference_time),
        "attempts": attempts,
        "reason": reason,
        "quarantined_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inputs": [{"path": str(f.path), "sha256": f.sha256} for f in unit.inputs],
    }
    if unit.kind == "file":
        source = unit.inputs[0]
        target = _free_name(folder, source.path.name, unit.key[:8])
        try:
            same = source.path.is_file() and sha256_file(source.path) == source.sha256
            if same:
                shutil.move(source.path, target)
                doc["moved_to"] = str(target)
                log.error("moved %s to %s", source.path, target)
            else:
                log.warning("%s changed or vanished since it failed: left in place", source.path)
        except OSError as err:
            log.error("cannot move %s to the quarantine folder: %s", source.path, err)
        note = target.with_name(target.name + ".quarantine.json")
    else:
        safe = unit.reference_time.strftime("%Y%m%dT%H%MZ") if unit.reference_time else "unknown"
        note = folder / f"{config.name}_{unit.kind}_{safe}_{unit.key[:8]}.quarantine.json"
    try:
        _write_note(note, doc)
    except (OSError, MeteovisionError) as err:
        log.error("cannot write the quarantine note %s: %s", note, err)
        return None
    return note
