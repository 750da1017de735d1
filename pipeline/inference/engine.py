"""What every predict engine shares: settings, the per-unit outcome and report, and model preparation.

The gridded engines (:mod:`~meteovision.pipeline.inference.predict`) and the image engine
(:mod:`~meteovision.pipeline.inference.images`) both build on it; it imports neither.
A unit that fails (corrupt file, mismatched input, a window with a gap) is recorded with its reason
in the :class:`PredictReport` and the others go on; a problem of configuration (wrong task kind,
bad tiling settings, no CUDA) raises :class:`PredictError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.motion import MOTION_INPUT_SCALE, MotionDependencyError, lucas_kanade, step_channel
from meteovision.pipeline.checkpoints.loading import CheckpointMismatchError, InferenceModel
from meteovision.pipeline.checkpoints.metadata import MOTION_INPUT_HEADS
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.inputs import (
    InputMismatchError,
)
from meteovision.pipeline.inference.lead_smoothing import smooth_extrapolated_leads
from meteovision.pipeline.inference.outputs import (
    OUTPUT_FORMATS,
    physical_outputs,
)
from meteovision.pipeline.inference.tiling import TilingSettings, predict_domain

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "InputMismatchError",
    "Outcome",
    "Precision",
    "PredictError",
    "PredictReport",
    "PredictSettings",
    "Status",
    "cpu_has_native_bf16",
    "infer_field",
    "prepare_model",
]



class Status(StrEnum):
    """What became of one unit of work (a StrEnum: written as its plain value in JSON summaries)."""

    WRITTEN = "written"
    SKIPPED = "skipped"  # its output exists already
    FAILED = "failed"  # with the reason in the outcome


#: Errors that fail one unit of work (reported) instead of the whole run.
UNIT_ERRORS: tuple[type[Exception], ...] = (MeteovisionError, OSError)
ANALYSIS_KINDS = (TaskKind.SEGMENTATION, TaskKind.REGRESSION)
#: The network's arithmetic: ``auto`` (bf16 autocast on CUDA, float32 on the CPU), ``32`` or ``bf16``.
Precision = Literal["auto", "32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "32", "bf16")
DEFAULT_OVERLAP = 64


class PredictError(MeteovisionError):
    """The prediction cannot run as configured (task kind, device, settings, output folder)."""


@dataclass(frozen=True)
class PredictSettings:
    """How to run a checkpoint over inputs and where to write the products.

    ``tile_size`` None: the tiler's default (512) rounded up to the model's multiple; ``overlap``
    None: 64 pixels, or a quarter of an explicit ``tile_size`` when that is smaller.
    ``threshold`` turns a segmentation probability into the mask. ``latest_only`` makes a
    nowcast run for the last complete window only (the operational case); a break between
    frames longer than ``max_gap_minutes`` separates two nowcast segments (see
    :func:`predict_sequence`).

    ``precision``: ``auto`` runs the network under bf16 autocast on CUDA and in float32 on the CPU;
    ``bf16`` under bf16 autocast on any device (on a CPU with native bf16, AVX512-BF16 or AMX, about
    twice as fast as float32; probabilities move by about 1e-2); ``32`` always in float32. Outputs
    are accumulated and written in float32 whatever the precision.
    """

    output_dir: Path
    format: str = "netcdf"
    overwrite: bool = False
    quicklook: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    device: str = "cpu"
    threshold: float = 0.5
    ignore_grid_spacing: bool = False
    coarsen: int = 1
    latest_only: bool = False
    max_gap_minutes: float = 60.0
    progress: bool = False
    institution: str = "meteovision"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.format not in OUTPUT_FORMATS:
            raise PredictError(f"output format {self.format!r} unknown; choose one of {OUTPUT_FORMATS}")
        if not 0.0 < self.threshold < 1.0:
            raise PredictError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")
        if not self.max_gap_minutes > 0:
            raise PredictError(f"max_gap_minutes must be > 0, got {self.max_gap_minutes}")
        if self.batch_size < 1:
            raise PredictError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.coarsen < 1:
            raise PredictError(f"coarsen must be >= 1, got {self.coarsen}")
        if not (self.device in {"cpu", "cuda"} or self.device.startswith("cuda:")):
            raise PredictError(f"device {self.device!r} unknown; use cpu, cuda or cuda:N")
        if not self.institution.strip():
            raise PredictError("institution must not be empty")
        if self.precision not in PRECISIONS:
            raise PredictError(f"precision {self.precision!r} unknown; choose one of {', '.join(PRECISIONS)}")

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype :attr:`precision` gives on :attr:`device` (None: float32)."""
        if self.precision == "bf16" or (self.precision == "auto" and self.on_cuda):
            return torch.bfloat16
        return None

    @property
    def precision_used(self) -> Literal["32", "bf16"]:
        """:attr:`precision` with ``auto`` resolved for :attr:`device`."""
        return "32" if self.autocast_dtype is None else "bf16"


@dataclass(frozen=True)
class Outcome:
    """What became of one unit of work: ``written``, ``skipped`` (output exists) or ``failed`` (with why)."""

    unit: str
    status: Status
    outputs: tuple[Path, ...] = ()
    inputs: tuple[Path, ...] = ()
    reason: str = ""
    error: Exception | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # a plain "failed" from a caller is checked too

    @classmethod
    def failure(cls, unit: str, error: Exception, inputs: Sequence[Path] = ()) -> Outcome:
        log.error("%s failed: %s", unit, error)
        return cls(unit, Status.FAILED, (), tuple(inputs), str(error), error)


@dataclass(frozen=True)
class PredictReport:
    """Every unit's outcome, and the exit code they amount to (:mod:`~meteovision.pipeline.exit_codes`)."""

    outcomes: tuple[Outcome, ...] = ()

    def __add__(self, other: PredictReport) -> PredictReport:
        return PredictReport(self.outcomes + other.outcomes)

    def _with(self, status: Status) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status is status)

    @property
    def written(self) -> tuple[Outcome, ...]:
        return self._with(Status.WRITTEN)

    @property
    def skipped(self) -> tuple[Outcome, ...]:
        return self._with(Status.SKIPPED)

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return self._with(Status.FAILED)

    @property
    def exit_code(self) -> ExitCode:
        """0 all written; 1 some failed; 2 every unit refused as not fitting the checkpoint; 3 none
        to do; 5 every unit failed."""
        if not self.outcomes:
            return ExitCode.NOTHING_TO_DO
        if self.failed:
            if self.written or self.skipped:
                return ExitCode.PARTIAL_FAILURE
            refused = all(isinstance(o.error, CheckpointMismatchError) for o in self.failed)
            return ExitCode.USAGE_ERROR if refused else ExitCode.ALL_FAILED
        return ExitCode.OK if self.written else ExitCode.NOTHING_TO_DO

    def raise_for_failures(self) -> None:
        """Raise the first failure's error (for callers that want exceptions, not a report)."""
        for outcome in self.failed:
            if outcome.error is not None:
                raise outcome.error
            raise PredictError(f"{outcome.unit}: {outcome.reason}")

    def summary(self) -> str:
        code = self.exit_code
        return (f"{len(self.written)} written, {len(self.skipped)} skipped (output exists), "
                f"{len(self.failed)} failed; exit code {int(code)} ({code.description})")


# ---------------------------------------------------------------------------- model and field


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere CPU autocast emulates it."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(bool(probe()) for probe in probes if callable(probe)):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def prepare_model(model: InferenceModel, settings: PredictSettings) -> TilingSettings:
    """Put the network on the device in eval mode and channels-last; the tiling settings to run it with."""
    if settings.on_cuda and not torch.cuda.is_available():
        raise PredictError(f"device {settings.device!r} requested but CUDA is not available here")
    model.net.to(torch.device(settings.device))
    model.net.to(memory_format=torch.channels_last)
    model.net.eval()
    autocast_dtype = settings.autocast_dtype
    if autocast_dtype is not None and not settings.on_cuda and not cpu_has_native_bf16():
        log.warning("precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): emulated, "
                    "likely slower than float32")
    divisibility = model.meta.network.divisibility
    overrides: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "device": settings.device,
        "channels_last": True,
        "autocast_dtype": autocast_dtype,
        "progress": settings.progress,
    }
    if settings.tile_size is not None:
        overrides["tile_size"] = settings.tile_size
    if settings.overlap is not None:
        overrides["overlap"] = settings.overlap
    elif settings.tile_size is not None:
        overrides["overlap"] = min(DEFAULT_OVERLAP, settings.tile_size // 4)
    return TilingSettings.for_model(divisibility, **overrides)


def motion_input(model: InferenceModel, physical: np.ndarray, motion: np.ndarray | None) -> np.ndarray:
    """The motion channels of a motion-input head: Lucas-Kanade of the frames, scaled as in training."""
    if motion is None:
        try:
            motion = lucas_kanade(physical, f"{model.path.name} (head {model.meta.network.nowcast_head})")
        except MotionDependencyError as err:
            raise PredictError(str(err)) from err
    if motion.shape != (2, *physical.shape[-2:]):
        raise PredictError(f"{model.path.name}: motion must be (2, H, W) = (2, {physical.shape[-2]}, "
                           f"{physical.shape[-1]}), got {motion.shape}")
    return np.asarray(motion, dtype=np.float32) / np.float32(MOTION_INPUT_SCALE)


def infer_field(
    model: InferenceModel, physical: np.ndarray, tiling: TilingSettings, nodata: np.ndarray | None = None,
    motion: np.ndarray | None = None, n_leads: int | None = None, leads_per_step: int = 1,
) -> np.ndarray:
    """Model output ``[K, H, W]`` (probabilities or physical units) for a physical input ``[C, H, W]``.

    ``nodata`` (``[H, W]`` bool) marks pixels set to NaN in every output channel. A head that takes
    the Lucas-Kanade motion of its frames as input gets ``motion`` (``[2, H, W]`` pixels per step of the
    frames), computed here when not given. ``n_leads``: leads of an advection head (default: the trained
    ones). ``leads_per_step``: the frames are this many of the network's lead steps apart, which only a
    network trained at native steps (``step_input``) takes; its leads stay at its own step.
    """
    stats = model.input_stats()
    normalised = stats.normalize(physical, channel_axis=0) if stats is not None else physical
    network = model.meta.network
    if leads_per_step != 1 and not network.step_input:
        raise PredictError(f"{model.path.name}: frames {leads_per_step} of its steps apart need a network trained at "
                           "native steps (step_input); this one takes frames at its own step only")
    if network.step_input:
        step = leads_per_step * float(model.meta.time_step_minutes or 0.0)
        normalised = np.concatenate([normalised, step_channel(step, physical.shape[-2:])], axis=0)
    if network.nowcast_head in MOTION_INPUT_HEADS:
        per_lead = motion_input(model, physical, motion) / np.float32(leads_per_step)
        normalised = np.concatenate([normalised, per_lead], axis=0)
    if isinstance(model.net, AdvectionNowcast):
        raw = _advected(model.net, normalised, tiling, n_leads)
    elif n_leads is not None:
        raise PredictError(f"{model.path.name}: its '{model.meta.network.nowcast_head}' head makes its "
                           f"trained leads only; {n_leads} leads need an advection head")
    else:
        raw = predict_domain(model.net, normalised, tiling)
    out = physical_outputs(model, raw)
    if nodata is not None:
        out[:, nodata] = np.nan
    net, sigma = model.net, model.meta.network.long_lead_smoothing
    if sigma and isinstance(net, AdvectionNowcast):  # touches only leads past the trained ones
        smooth_extrapolated_leads(out, net.lead_times, net.variables_per_frame, sigma)
    return out


def _advected(net: AdvectionNowcast, normalised: np.ndarray, tiling: TilingSettings, n_leads: int | None) -> np.ndarray:
    """An advection head over the whole domain: its local part (motion, corrections) tile by tile, then
    one advection of the blended fields, so rain is carried across tile borders at every lead."""
    fields = predict_domain(net.motion_fields, normalised, tiling)
    with torch.inference_mode():
        leads = net.advect_fields(torch.from_numpy(fields)[None].to(tiling.device), n_leads or net.lead_times)
    return leads[0].to("cpu", torch.float32).numpy()


def run_config(model: InferenceModel, settings: PredictSettings, tiling: TilingSettings) -> dict[str, Any]:
    """What the products record as their configuration (with the checkpoint's sha256 and inputs)."""
    meta = model.meta
    kind = meta.task_kind
    stats = model.input_stats()
    config: dict[str, Any] = {
        "checkpoint": model.path.name,
        "task_kind": kind.value,
        "model_name": model.model_name,
        "model_settings": dict(meta.network.model_settings),
        "input_variables": list(meta.input_variables),
        "input_units": list(meta.channel_units),
        "input_transforms": list(stats.transforms) if stats is not None else [],
        "input_coarsen": settings.coarsen,  # k x k block mean of every input before the network
        "tiling": {
            "tile_size": tiling.tile_size, "overlap": tiling.overlap, "blend": tiling.blend,
            "batch_size": tiling.batch_size, "device": tiling.device,
            "autocast": str(tiling.autocast_dtype) if tiling.autocast_dtype is not None else "none",
        },
        "precision": settings.precision_used,  # what ran: "32" or "bf16" (autocast)
        "precision_requested": settings.precision,
        "training_versions": dict(meta.versions),
    }
    if kind is TaskKind.SEGMENTATION:
        config["threshold"] = settings.threshold
    if kind is TaskKind.NOWCAST:
        config["num_input_frames"] = meta.num_input_frames
        config["time_step_minutes"] = meta.time_step_minutes
        config["long_lead_smoothing"] = meta.network.long_lead_smoothing or 0.0  # sigma px/step past trained leads
    return config


def require_kind(model: InferenceModel, kinds: Sequence[TaskKind], what: str) -> None:
    """Refuse a checkpoint of another task kind before any file is read."""
    kind = model.meta.task_kind
    if kind not in kinds:
        raise PredictError(f"{model.path}: a {kind.value!r} checkpoint cannot run in {what} "
                           f"(it takes {[k.value for k in kinds]})")


def ensure_output_folder(settings: PredictSettings) -> None:
    """Create the output folder; failing that is a configuration error, not a per-file one."""
    try:
        settings.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PredictError(f"{settings.output_dir}: cannot create the output folder ({err})") from err


