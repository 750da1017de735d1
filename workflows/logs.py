"""Logs of the operational runs: plain text for people, JSON lines for log shippers.

With ``json`` every record is one JSON object on one line (``time``, ``level``, ``logger``,
``message``, plus the structured ``fields`` a record carries, e.g. the tick summary's counts),
and Python warnings are routed through logging so that stderr holds nothing else.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attribute of a LogRecord holding structured fields (pass ``extra={FIELDS: {...}}``).
FIELDS = "fields"


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record; the record's ``fields`` are merged in at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            doc.update({k: v for k, v in fields.items() if k not in doc})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Replace the root handlers by one on stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(fmt == "json")
