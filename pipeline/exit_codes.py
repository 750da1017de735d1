"""Process exit codes of the batch commands (``predict``, ``export``, ``operational``), defined once.

A scheduler (cron, systemd, ecFlow, the operational loop) reads these to decide what to do
next, so their meaning is fixed here and nowhere else:

* ``OK`` (0): every unit of work (a file, a nowcast window, an image) succeeded and at least one
  product was written.
* ``PARTIAL_FAILURE`` (1): at least one unit failed (a corrupt file, a window with a gap); the
  others were processed and their products written. The failures are listed on stdout.
  (Python itself exits 1 on an uncaught exception: a traceback on stderr tells that case apart.)
* ``USAGE_ERROR`` (2): the command cannot run as asked: bad arguments, an unreadable checkpoint,
  a device that is not there, or inputs that do not fit the checkpoint at all (every unit refused
  for a variable, unit, grid-spacing or time-step mismatch).
* ``NOTHING_TO_DO`` (3): no unit of work: no input matched, a series too short for one nowcast
  window, or every output already exists (skipped; rerun with ``--overwrite`` to replace them).
* ``OUTPUT_UNWRITABLE`` (4): the output folder cannot take products (no space left, read-only
  file system, permission denied). The run stopped at the first such write; no input is blamed
  (none is retried or quarantined for it); products written before stay. Rerun once fixed.
* ``ALL_FAILED`` (5): there were units of work and every one failed: nothing was written.
  The failures are listed on stdout.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of ``meteovision predict`` / ``export`` (see the module docstring)."""

    OK = 0
    PARTIAL_FAILURE = 1
    USAGE_ERROR = 2
    NOTHING_TO_DO = 3
    OUTPUT_UNWRITABLE = 4
    ALL_FAILED = 5

    @property
    def description(self) -> str:
        """One line saying what the code means, for logs and ``--help`` texts."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "all done",
    ExitCode.PARTIAL_FAILURE: "some inputs failed (listed), the others were processed",
    ExitCode.USAGE_ERROR: "configuration or usage error, nothing was processed",
    ExitCode.NOTHING_TO_DO: "nothing to do (no input, or every output already exists)",
    ExitCode.OUTPUT_UNWRITABLE: "the output folder cannot be written (full, read-only, permission); "
    "no input was blamed",
    ExitCode.ALL_FAILED: "every input failed (listed), nothing was written",
}


def epilog() -> str:
    """The exit codes as a ``--help`` epilog."""
    return "exit codes: " + "; ".join(f"{int(code)} {code.description}" for code in ExitCode)
