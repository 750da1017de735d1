"""``meteovision operational``: one tick (or a ``--watch`` loop) of an operational application.

Examples::

    meteovision operational --config /etc/meteovision/bow_echo.yaml
    meteovision operational --config nowcast_precip.yaml --watch --every 5m --log-format json
    meteovision operational --config bow_echo.yaml --status
    meteovision operational --config bow_echo.yaml --check

The exit code of a tick (see ``meteovision.pipeline.exit_codes``): 0 work done, 1 some unit
failed or was quarantined and others were done, 2 configuration error, 3 nothing to do, 4 the
output folder is full, read-only or not writable (no input blamed), 5 units failed and none was
done. The watch loop exits 0 when stopped by SIGTERM/SIGINT, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.exit_codes import ExitCode, epilog
from meteovision.workflows.operational_config import OperationalConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = epilog()
    parser.add_argument(
        "--config", required=True, type=Path, help="operational YAML (see workflows/examples)"
    )
    parser.add_argument(
        "--watch", action="store_true", help="run ticks in a foreground loop until SIGTERM/SIGINT"
    )
    parser.add_argument(
        "--every", default="5m", help="with --watch: interval between tick starts (300, 30s, 5m, 1h)"
    )
    parser.add_argument(
        "--max-ticks", type=int, default=None, help="with --watch: stop after this many ticks"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text or JSON lines (default: the config's log_format)",
    )
    parser.add_argument(
        "--now",
        default=None,
        metavar="ISO",
        help="end of the input time window instead of the current time (UTC), to reprocess "
        "a past period, e.g. 2024-06-01T12:00",
    )
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and the checkpoint against it, then exit (0 or 2)",
    )
    actions.add_argument(
        "--status",
        action="store_true",
        help="print the ledger: units per state, failed and quarantined ones, last ticks",
    )
    actions.add_argument(
        "--requeue",
        action="store_true",
        help="make failed and quarantined units due again with fresh attempts (after a fix; "
        "move quarantined files back first)",
    )


def _error(message: str) -> int:
    print(f"meteovision operational: error: {message}", file=sys.stderr)
    return int(ExitCode.USAGE_ERROR)


def _window_end(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise MeteovisionError(f"--now {text!r}: not an ISO time (e.g. 2024-06-01T12:00)") from err
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def run(args: argparse.Namespace) -> int:
    """Load the configuration and run what was asked; return the exit code."""
    import logging

    from meteovision.workflows.logs import configure_logging

    try:
        config = load_config(args.config)
        now = _window_end(args.now)
    except MeteovisionError as err:
        return _error(str(err))
    level = logging.getLogger().getEffectiveLevel()
    configure_logging(args.log_format or config.log_format, min(level, logging.INFO))
    if args.check:
        return _check(config)
    if args.status:
        return _status(config)
    if args.requeue:
        return _requeue(config)
    return _run_ticks(config, args, now)


def _run_ticks(config: OperationalConfig, args: argparse.Namespace, now: datetime | None) -> int:
    from meteovision.workflows.operational import run_tick
    from meteovision.workflows.watch import parse_interval, stop_on_signals, watch

    stop = threading.Event()
    if not args.watch:
        with stop_on_signals(stop):
            return int(run_tick(config, now=now, stop=stop).exit_code)
    try:
        every = parse_interval(args.every)
    except MeteovisionError as err:
        return _error(str(err))
    with stop_on_signals(stop):
        summaries = watch(lambda: run_tick(config, now=now, stop=stop), every, stop, args.max_ticks)
    if summaries and summaries[-1].exit_code == ExitCode.USAGE_ERROR:
        return int(ExitCode.USAGE_ERROR)
    return int(ExitCode.OK)


def _check(config: OperationalConfig) -> int:
    from meteovision.pipeline.checkpoints.loading import load_inference_model
    from meteovision.workflows.operational import check_model, predict_settings

    try:
        if not config.input.folder.is_dir():
            raise MeteovisionError(f"input.folder: {config.input.folder}: no such folder")
        model = load_inference_model(config.checkpoint)
        check_model(config, model)
        predict_settings(config)
    except MeteovisionError as err:
        return _error(str(err))
    print(json.dumps(config.model_dump(mode="json"), indent=1))
    print(
        f"configuration {config.name!r} is valid; checkpoint {config.checkpoint.name} ({model.application}, "
        f"{model.model_name}) fits it"
    )
    return int(ExitCode.OK)


def _status(config: OperationalConfig) -> int:
    from meteovision.workflows.ledger import Ledger, UnitState, utc_text

    try:
        with Ledger(config.ledger, config.lock, lock_timeout=config.retry.lock_timeout_seconds) as ledger:
            counts = ledger.counts()
            troubled = [row for state in (UnitState.FAILED, UnitState.QUARANTINED, UnitState.CLAIMED)
                        for row in ledger.units(state)]
            ticks = ledger.last_ticks()
    except MeteovisionError as err:
        return _error(str(err))
    print(f"{config.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for row in troubled:
        extra = f" -> {row.quarantine_path}" if row.quarantine_path else ""
        print(
            f"{row.state.upper():12s} {row.label} (attempts {row.attempts}, "
            f"next {utc_text(row.next_attempt_at)}, "
            f"by {row.claimed_by or '-'}): {row.last_error or ''}{extra}"
        )
    for tick in ticks:
        print(
            f"tick {tick['tick_id']} on {tick['host']} pid {tick['pid']} at {utc_text(tick['finished_at'])}: "
            f"exit {tick['exit_code']}, "
            + ", ".join(
                f"{k} {v}"
                for k, v in tick["summary"].items()
                if k in ("found", "new", "done", "failed", "skipped", "quarantined")
            )
        )
    return int(ExitCode.OK)


def _requeue(config: OperationalConfig) -> int:
    from meteovision.workflows.ledger import Ledger

    try:
        with Ledger(config.ledger, config.lock, lock_timeout=config.retry.lock_timeout_seconds) as ledger:
            n = ledger.requeue()
    except MeteovisionError as err:
        return _error(str(err))
    print(f"{config.name}: {n} unit(s) due again")
    return int(ExitCode.OK)
