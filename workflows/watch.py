"""The ``--watch`` loop: a tick every interval in the foreground, stopped cleanly by SIGTERM or SIGINT.

Ticks start on a fixed cadence (start to start); a tick longer than the interval is followed by
the next one at once, with a warning. A stop signal lets the running tick finish its current
unit, then the loop ends; while waiting between ticks it ends at once. This is the mode for a
container or a ``Type=simple`` systemd service; timers, cron and ecFlow run single ticks instead.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from meteovision.workflows.operational import TickSummary
from meteovision.workflows.operational_config import OperationalConfigError

log = logging.getLogger(__name__)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_interval(text: str) -> float:
    """Seconds in ``"300"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"``; refuses zero and nonsense."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise OperationalConfigError(
                f"--every {text!r}: not a duration (e.g. 300, 30s, 5m, 1h30m)"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise OperationalConfigError(f"--every {text!r}: the interval must be positive")
    return seconds


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While active, SIGTERM and SIGINT set ``stop`` (instead of killing the process mid-write)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.warning("%s received: stopping after the current unit", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch(
    tick: Callable[[], TickSummary],
    every: float,
    stop: threading.Event,
    max_ticks: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[TickSummary]:
    """Run ``tick`` every ``every`` seconds until ``stop`` is set (or ``max_ticks`` ran); the summaries."""
    summaries: list[TickSummary] = []
    next_start = monotonic()
    while not stop.is_set():
        summaries.append(tick())
        if max_ticks is not None and len(summaries) >= max_ticks:
            break
        next_start += every
        wait = next_start - monotonic()
        if wait < 0:
            log.warning(
                "tick took %.1f s, longer than the interval of %.1f s: next tick now",
                summaries[-1].seconds,
                every,
            )
            next_start = monotonic()
            continue
        stop.wait(wait)
    log.info("watch loop ended after %d tick(s)", len(summaries))
    return summaries
