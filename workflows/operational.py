"""One operational tick: find new inputs, claim them in the ledger, predict, record the outcome.

:func:`run_tick` is what ``meteovision operational`` runs once (cron, a systemd timer, ecFlow)
or in a loop (``--watch``). A tick

1. drops left-over temporary files of killed writers (hidden ``.*.tmp`` older than
   ``retry.stale_temp_seconds``) from the output folder;
2. lists the input files by pattern and time window and builds the units of work
   (:mod:`~meteovision.workflows.discovery`); a nowcast window with a gap is recorded as
   ``skipped`` with its reason;
3. claims each due unit, newest first, in the ledger (:mod:`~meteovision.workflows.ledger`),
   one at a time, so ticks running at once share the work and never do the same unit twice;
4. runs the predict stage on it (products written atomically, existing ones replaced: the
   ledger, not the output folder, decides what is new);
5. records ``done`` with the outputs, or ``failed`` with the reason and a backoff, or, after
   ``retry.max_attempts``, ``quarantined`` (the input moved to ``quarantine_folder`` with a
   ``.quarantine.json`` note beside it, :mod:`~meteovision.workflows.quarantine`).

A write that fails for the output folder's sake (no space left, read-only, permission denied;
:mod:`~meteovision.pipeline.inference.write_errors`) is nobody's input's fault: the unit is given
back without spending an attempt and the tick stops with ``ExitCode.OUTPUT_UNWRITABLE``; the
next tick with room makes every product.

The checkpoint is loaded only when a unit is due, so an idle tick costs a folder listing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.packaged import resolve_checkpoint
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.atomic import TEMP_PREFIX, TEMP_SUFFIX
from meteovision.pipeline.inference.write_errors import OutputWriteError, folder_problem
from meteovision.workflows.discovery import FileInspector, WorkUnit, discover
from meteovision.workflows.ledger import Claim, Ledger, LedgerError, UnitState
from meteovision.workflows.logs import FIELDS
from meteovision.workflows.operational_config import OperationalConfig, OperationalConfigError
from meteovision.workflows.quarantine import quarantine

if TYPE_CHECKING:  # the predict stage imports torch: loaded only when a unit is due
    from meteovision.pipeline.checkpoints.loading import InferenceModel
    from meteovision.pipeline.inference.predict import PredictSettings

log = logging.getLogger(__name__)

__all__ = ["TickSummary", "check_model", "clean_stale_temps", "predict_settings", "quarantine", "run_tick"]


@dataclass
class _Counts:
    found: int = 0
    new: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    quarantined: int = 0
    reclaimed: int = 0
    processed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TickSummary:
    """What one tick did (counts of units; ``found`` counts input files in the time window).

    ``skipped``: units not attempted this tick for a reason (a nowcast gap, a file without a time,
    a second file of the same time, a unit in its backoff wait or being processed by another tick).
    ``reclaimed``: abandoned claims taken over. ``error``: the problem that stopped the tick (the
    configuration, the ledger, or, with ``output_unwritable``, the output folder: full, read-only).
    """

    name: str
    found: int = 0
    new: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    quarantined: int = 0
    reclaimed: int = 0
    seconds: float = 0.0
    error: str | None = None
    output_unwritable: bool = False
    stopped: bool = False
    processed: tuple[str, ...] = ()

    @property
    def exit_code(self) -> ExitCode:
        """4 output folder full/read-only; 2 configuration error; 1 some unit failed or was quarantined
        and others done; 5 failures and nothing done; 0 work done; 3 nothing to do."""
        if self.output_unwritable:
            return ExitCode.OUTPUT_UNWRITABLE
        if self.error is not None:
            return ExitCode.USAGE_ERROR
        if self.failed or self.quarantined:
            return ExitCode.PARTIAL_FAILURE if self.done else ExitCode.ALL_FAILED
        return ExitCode.OK if self.done else ExitCode.NOTHING_TO_DO

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("processed")
        doc["seconds"] = round(self.seconds, 3)
        doc["exit_code"] = int(self.exit_code)
        return doc

    def line(self) -> str:
        code = self.exit_code
        text = (
            f"{self.name}: found {self.found}, new {self.new}, done {self.done}, failed {self.failed}, "
            f"skipped {self.skipped}, quarantined {self.quarantined}, reclaimed {self.reclaimed}, "
            f"{self.seconds:.1f} s; exit {int(code)} ({code.description})"
        )
        if self.stopped:
            text += "; stopped on request"
        return text + (f"; error: {self.error}" if self.error else "")


# ---------------------------------------------------------------------------- preparation


def _prepare_folders(config: OperationalConfig) -> None:
    """Refuse a missing checkpoint or input folder; create the output and quarantine folders."""
    if not resolve_checkpoint(config.checkpoint).is_file():
        raise OperationalConfigError(f"checkpoint: {config.checkpoint}: no such file (nor a packaged checkpoint)")
    if not config.input.folder.is_dir():
        raise OperationalConfigError(f"input.folder: {config.input.folder}: no such folder")
    for key, folder in (
        ("output.folder", config.output.folder),
        ("quarantine_folder", config.quarantine_folder),
    ):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OperationalConfigError(f"{key}: {folder}: cannot create ({err.strerror or err})") from err


def clean_stale_temps(folder: Path, max_age_seconds: float, wall_clock: float) -> list[Path]:
    """Delete the atomic writers' hidden temporaries in ``folder`` older than ``max_age_seconds``.

    A younger one may belong to a tick writing right now, so it is left alone (it is hidden and
    named ``*.tmp``, so no consumer sees it anyway).
    """
    removed = []
    for path in folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if wall_clock - path.stat().st_mtime >= max_age_seconds:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
    if removed:
        log.warning(
            "removed %d left-over temporary file(s) of killed writers in %s: %s",
            len(removed),
            folder,
            ", ".join(p.name for p in removed),
        )
    return removed


def predict_settings(config: OperationalConfig) -> PredictSettings:
    """The predict stage's settings: always overwrite (the ledger decides what is new), one nowcast window."""
    from meteovision.pipeline.inference.predict import PredictSettings

    p = config.predict
    step = config.sequence.step_minutes if config.sequence is not None else 0.0
    return PredictSettings(
        output_dir=config.output.folder,
        format=config.output.format,
        overwrite=True,
        quicklook=config.output.quicklook,
        tile_size=p.tile_size,
        overlap=p.overlap,
        batch_size=p.batch_size,
        device=p.device,
        threshold=p.threshold,
        ignore_grid_spacing=p.ignore_grid_spacing,
        coarsen=p.coarsen,
        latest_only=config.kind == "nowcast_sequence",
        max_gap_minutes=max(60.0, 2 * step),
        progress=False,
        institution=p.institution,
    )


def check_model(config: OperationalConfig, model: InferenceModel) -> None:
    """Refuse a checkpoint that does not fit the configuration's kind, frame count or step."""
    kind = model.meta.task_kind
    where = f"checkpoint {config.checkpoint}"
    if config.kind == "single_file":
        if kind is TaskKind.NOWCAST:
            raise OperationalConfigError(
                f"kind: single_file cannot run the nowcast {where}; use kind "
                "nowcast_sequence with a sequence section"
            )
        return
    assert config.sequence is not None
    if kind is not TaskKind.NOWCAST:
        raise OperationalConfigError(
            f"kind: nowcast_sequence needs a nowcast checkpoint; {where} is {kind.value!r}"
        )
    frames = model.meta.num_input_frames
    if frames != config.sequence.frames:
        raise OperationalConfigError(
            f"sequence.frames: {config.sequence.frames}, but {where} takes {frames} input frames"
        )
    step = model.meta.time_step_minutes or 0.0
    if not math.isclose(step, config.sequence.step_minutes, rel_tol=1e-6):
        raise OperationalConfigError(
            f"sequence.step_minutes: {config.sequence.step_minutes:g}, but {where} was "
            f"trained on frames {step:g} min apart"
        )


# ---------------------------------------------------------------------------- one unit


def _predict_unit(
    model: InferenceModel, settings: PredictSettings, unit: WorkUnit
) -> tuple[list[Path], str | None]:
    """Outputs written and, when the unit failed, why (every failing part of it)."""
    from meteovision.pipeline.inference.predict import PredictError, run_prediction

    try:
        report = run_prediction(model, unit.paths, settings)
    except (PredictError, OutputWriteError):
        raise  # the settings or the output folder, not the unit: the caller stops the tick
    except (MeteovisionError, OSError) as err:
        return [], str(err)
    except Exception as err:  # operational boundary: a bug on one input must not stall the others
        log.exception("%s: unexpected error in the predict stage", unit.label)
        return [], f"{type(err).__name__}: {err}"
    outputs = [p for o in report.written + report.skipped for p in o.outputs]
    if report.failed:
        return outputs, "; ".join(f"{o.unit}: {o.reason}" for o in report.failed)
    if not outputs:
        return [], f"the predict stage made no product from {', '.join(p.name for p in unit.paths)}"
    return outputs, None


class _Runner:
    """The per-tick state: the ledger, the lazily loaded model, the counts."""

    def __init__(self, config: OperationalConfig, ledger: Ledger, counts: _Counts) -> None:
        self.config = config
        self.ledger = ledger
        self.counts = counts
        self._model: InferenceModel | None = None
        self._settings: PredictSettings | None = None

    def model(self) -> tuple[InferenceModel, PredictSettings]:
        if self._model is None or self._settings is None:
            from meteovision.pipeline.checkpoints.loading import load_inference_model

            model = load_inference_model(self.config.checkpoint)
            check_model(self.config, model)
            self._settings = predict_settings(self.config)
            self._model = model
            log.info(
                "loaded %s (%s %s, sha256 %s)",
                self.config.checkpoint.name,
                model.application,
                model.model_name,
                model.sha256[:12],
            )
        return self._model, self._settings

    def run(self, unit: WorkUnit) -> None:
        retry = self.config.retry
        status, row = self.ledger.claim(unit.key, retry.max_attempts)
        if status in (Claim.BUSY, Claim.WAITING):
            self.counts.skipped += 1
            if status is Claim.WAITING and row is not None:
                log.info(
                    "%s: attempt %d failed; next attempt not before %s",
                    unit.label,
                    row.attempts,
                    datetime.fromtimestamp(row.next_attempt_at, UTC).strftime("%H:%M:%SZ"),
                )
            return
        if status is Claim.FINISHED or row is None:
            return
        if status is Claim.QUARANTINED:
            self.counts.quarantined += 1
            self._set_aside(unit, row.last_error or "abandoned", row.attempts)
            return
        if status is Claim.TAKEN_OVER:
            self.counts.reclaimed += 1
        self.counts.processed.append(unit.key)
        try:
            code = folder_problem(self.config.output.folder)
            if code is not None:  # full or read-only before we start: spend no compute, blame no input
                raise OutputWriteError(self.config.output.folder, code, "checked before processing")
            model, settings = self.model()
        except MeteovisionError as err:
            self.ledger.release(unit.key, f"not attempted: {err}")
            raise
        from meteovision.pipeline.inference.predict import PredictError

        try:
            outputs, problem = _predict_unit(model, settings, unit)
        except OutputWriteError as err:
            self.ledger.release(unit.key, f"not attempted: {err}")
            raise
        except PredictError as err:
            self.ledger.release(unit.key, f"not attempted: {err}")
            raise OperationalConfigError(f"predict: {err}") from err
        except BaseException:
            # interrupted (KeyboardInterrupt, SystemExit): give the unit back, spend no attempt
            self.ledger.release(unit.key, "interrupted")
            raise
        if problem is None:
            if self.ledger.finish(unit.key, outputs, model.sha256):
                self.counts.done += 1
                log.info("%s done: %s", unit.label, ", ".join(p.name for p in outputs))
            return
        state = self.ledger.fail(unit.key, problem, retry.max_attempts, retry.backoff_seconds)
        if state is UnitState.QUARANTINED:
            self.counts.quarantined += 1
            self._set_aside(unit, problem, row.attempts)
        elif state is UnitState.FAILED:
            self.counts.failed += 1
            log.error(
                "%s failed (attempt %d of %d): %s", unit.label, row.attempts, retry.max_attempts, problem
            )

    def _set_aside(self, unit: WorkUnit, reason: str, attempts: int) -> None:
        note = quarantine(self.config, unit, reason, attempts)
        if note is not None:
            self.ledger.set_quarantine_path(unit.key, note)


# ---------------------------------------------------------------------------- the tick


def _tick(
    config: OperationalConfig, ledger: Ledger, now: datetime, stop: threading.Event | None, counts: _Counts
) -> bool:
    """The tick's work; True when it stopped on request before the end."""
    # file ages are real time, whatever clock the ledger runs on
    inspector = FileInspector(config, ledger, time.time)
    found = discover(config, inspector, now)
    inspector.flush()
    new = {u.key for u in ledger.register(found.units)}
    counts.found = found.found
    counts.new = sum(1 for u in found.units if u.processable and u.key in new)
    for unit in found.units:
        if unit.processable:
            continue
        counts.skipped += 1
        if unit.key in new:
            log.warning("%s skipped: %s", unit.label, unit.reason)
    runner = _Runner(config, ledger, counts)
    for unit in found.units:
        if not unit.processable:
            continue
        if stop is not None and stop.is_set():
            log.warning("stop requested: leaving the remaining units to the next tick")
            return True
        runner.run(unit)
    return False


def run_tick(
    config: OperationalConfig,
    *,
    now: datetime | None = None,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
) -> TickSummary:
    """Run one tick and log its summary; never raises for bad inputs or configuration (see ``error``).

    ``now`` (aware UTC) is the end of the input time window (default: the clock's time; set it to
    reprocess a past period). ``clock`` gives epoch seconds for the ledger (claims, leases,
    backoff). ``stop``, once set, makes the tick stop before its next unit.
    """
    start = time.monotonic()
    started_at = clock()
    window_end = now if now is not None else datetime.fromtimestamp(started_at, UTC)
    if window_end.tzinfo is None:
        window_end = window_end.replace(tzinfo=UTC)
    counts = _Counts()
    error: str | None = None
    unwritable = False
    stopped = False
    ledger: Ledger | None = None
    try:
        _prepare_folders(config)
        clean_stale_temps(config.output.folder, config.retry.stale_temp_seconds, time.time())
        ledger = Ledger(
            config.ledger,
            config.lock,
            lock_timeout=config.retry.lock_timeout_seconds,
            lease_seconds=config.retry.lease_seconds,
            clock=clock,
        )
        stopped = _tick(config, ledger, window_end, stop, counts)
    except OutputWriteError as err:
        error, unwritable = f"{err}; no input was blamed, the next tick with room makes the products", True
    except (OperationalConfigError, LedgerError) as err:
        error = str(err)
    except MeteovisionError as err:  # the checkpoint cannot be loaded (CheckpointMismatchError, ...)
        error = f"checkpoint: {err}"
    summary = TickSummary(
        name=config.name,
        found=counts.found,
        new=counts.new,
        done=counts.done,
        failed=counts.failed,
        skipped=counts.skipped,
        quarantined=counts.quarantined,
        reclaimed=counts.reclaimed,
        seconds=time.monotonic() - start,
        error=error,
        output_unwritable=unwritable,
        stopped=stopped,
        processed=tuple(counts.processed),
    )
    level = (
        logging.ERROR
        if error
        else logging.WARNING
        if summary.exit_code in (ExitCode.PARTIAL_FAILURE, ExitCode.ALL_FAILED)
        else logging.INFO
    )
    log.log(
        level,
        "tick summary %s",
        summary.line(),
        extra={FIELDS: {"event": "tick_summary", **summary.as_dict()}},
    )
    if ledger is not None:
        try:
            ledger.record_tick(started_at, int(summary.exit_code), summary.as_dict())
        except LedgerError as err:
            log.error("could not record the tick in the ledger: %s", err)
        finally:
            ledger.close()
    return summary
