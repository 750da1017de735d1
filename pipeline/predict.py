"""The predict stage: a trained checkpoint over whole input files, to CF-1.10 products.

Importable engine (the command line is ``predict_cli``; the operational scheduler calls these):

* :func:`predict_file` / :func:`predict_files`: segmentation and regression checkpoints, one
  product (an analysis) per input time step;
* :func:`predict_sequence`: nowcast checkpoints; every window of the last N frames at the
  checkpoint's nominal step gives one product with M lead times (``leadtime`` dimension,
  ``forecast_reference_time`` = the last input time);
* :func:`meteovision.pipeline.predict_images.predict_images`: classification (webcams), not
  gridded: a CSV and a JSON of class probabilities per image;
* :func:`run_prediction`: picks one of those by the checkpoint's task kind.

Each unit of work (a file, a window, an image) is read and checked against the checkpoint
(:mod:`~meteovision.pipeline.predict_inputs`), normalised with the checkpoint's input statistics
(NaN -> the fill value), run over the whole domain by overlapping tiles
(:func:`~meteovision.pipeline.tiling.predict_domain`, channels-last; bf16 autocast on CUDA and
float32 on the CPU unless :attr:`PredictSettings.precision` says otherwise), turned back into
probabilities or physical units, set to NaN where the input is nodata (any input channel; for
nowcasts, any channel of the last input frame) and written
(:mod:`~meteovision.pipeline.predict_outputs`). A unit that fails (corrupt file, mismatched
input, a window with a gap) is recorded with its reason in the :class:`PredictReport` and the
others go on; a problem of configuration (wrong task kind, bad tiling settings, no CUDA)
raises :class:`PredictError`. Existing valid outputs are skipped unless ``overwrite``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from meteovision.datasets.errors import GridMismatchError, MeteovisionError, SeriesError
from meteovision.pipeline.checkpoints import CheckpointMismatchError, InferenceModel
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.predict_inputs import (
    Frame,
    FrameCache,
    InputMismatchError,
    InputSpec,
    grid_problem,
    iso_minutes,
    minutes,
    modal_step,
    read_frames,
    step_fits,
)
from meteovision.pipeline.predict_outputs import (
    OUTPUT_FORMATS,
    build_product,
    has_valid_output,
    lead_times,
    output_path,
    physical_outputs,
    product_variables,
    task_kind_of,
    write_product,
)
from meteovision.pipeline.tiling import TilingSettings, predict_domain

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "InputMismatchError",
    "Outcome",
    "Precision",
    "PredictError",
    "PredictReport",
    "PredictSettings",
    "cpu_has_native_bf16",
    "infer_field",
    "predict_file",
    "predict_files",
    "predict_sequence",
    "prepare_model",
    "run_prediction",
]

Status = Literal["written", "skipped", "failed"]
#: Errors that fail one unit of work (reported) instead of the whole run.
UNIT_ERRORS: tuple[type[Exception], ...] = (MeteovisionError, OSError)
ANALYSIS_KINDS = ("segmentation", "regression")
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

    @classmethod
    def failure(cls, unit: str, error: Exception, inputs: Sequence[Path] = ()) -> Outcome:
        log.error("%s failed: %s", unit, error)
        return cls(unit, "failed", (), tuple(inputs), str(error), error)


@dataclass(frozen=True)
class PredictReport:
    """Every unit's outcome, and the exit code they amount to (:mod:`~meteovision.pipeline.exit_codes`)."""

    outcomes: tuple[Outcome, ...] = ()

    def __add__(self, other: PredictReport) -> PredictReport:
        return PredictReport(self.outcomes + other.outcomes)

    def _with(self, status: Status) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == status)

    @property
    def written(self) -> tuple[Outcome, ...]:
        return self._with("written")

    @property
    def skipped(self) -> tuple[Outcome, ...]:
        return self._with("skipped")

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return self._with("failed")

    @property
    def exit_code(self) -> ExitCode:
        """0 all written; 1 some failed; 2 every unit refused as not fitting the checkpoint; 3 none done."""
        if not self.outcomes:
            return ExitCode.NOTHING_TO_DO
        if self.failed:
            refused = all(isinstance(o.error, CheckpointMismatchError) for o in self.failed)
            if refused and not self.written and not self.skipped:
                return ExitCode.USAGE_ERROR
            return ExitCode.PARTIAL_FAILURE
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
    divisibility = int(model.meta.get("divisibility") or 1)
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


def infer_field(
    model: InferenceModel, physical: np.ndarray, tiling: TilingSettings, nodata: np.ndarray | None = None
) -> np.ndarray:
    """Model output ``[K, H, W]`` (probabilities or physical units) for a physical input ``[C, H, W]``.

    ``nodata`` (``[H, W]`` bool) marks pixels set to NaN in every output channel.
    """
    stats = model.input_stats()
    normalised = stats.normalize(physical, channel_axis=0) if stats is not None else physical
    raw = predict_domain(model.net, normalised, tiling)
    out = physical_outputs(model, raw)
    if nodata is not None:
        out[:, nodata] = np.nan
    return out


def run_config(model: InferenceModel, settings: PredictSettings, tiling: TilingSettings) -> dict[str, Any]:
    """What the products record as their configuration (with the checkpoint's sha256 and inputs)."""
    meta = model.meta
    kind = task_kind_of(meta)
    stats = model.input_stats()
    config: dict[str, Any] = {
        "checkpoint": model.path.name,
        "task_kind": kind,
        "model_name": model.model_name,
        "model_settings": meta.get("model_settings") or {},
        "input_variables": list(meta.get("input_variables") or []),
        "input_units": list(meta.get("channel_units") or []),
        "input_transforms": list(stats.transforms) if stats is not None else [],
        "tiling": {
            "tile_size": tiling.tile_size, "overlap": tiling.overlap, "blend": tiling.blend,
            "batch_size": tiling.batch_size, "device": tiling.device,
            "autocast": str(tiling.autocast_dtype) if tiling.autocast_dtype is not None else "none",
        },
        "precision": settings.precision_used,  # what ran: "32" or "bf16" (autocast)
        "precision_requested": settings.precision,
        "training_versions": meta.get("versions") or {},
    }
    if kind == "segmentation":
        config["threshold"] = settings.threshold
    if kind == "nowcast":
        config["num_input_frames"] = meta.get("num_input_frames")
        config["time_step_minutes"] = meta.get("time_step_minutes")
    return config


def require_kind(model: InferenceModel, kinds: Sequence[str], what: str) -> None:
    """Refuse a checkpoint of another task kind before any file is read."""
    kind = task_kind_of(model.meta)
    if kind not in kinds:
        raise PredictError(f"{model.path}: a {kind!r} checkpoint cannot run in {what} "
                           f"(it takes {list(kinds)})")


def ensure_output_folder(settings: PredictSettings) -> None:
    """Create the output folder; failing that is a configuration error, not a per-file one."""
    try:
        settings.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PredictError(f"{settings.output_dir}: cannot create the output folder ({err})") from err


def _setup(
    model: InferenceModel, settings: PredictSettings
) -> tuple[TilingSettings, InputSpec, dict[str, Any]]:
    tiling = prepare_model(model, settings)
    spec = InputSpec.from_meta(model.meta, settings.ignore_grid_spacing)
    if spec.grid_spacing_m is None:
        log.warning("%s records no grid spacing: the inputs' grid spacing cannot be checked", model.path.name)
    ensure_output_folder(settings)
    return tiling, spec, run_config(model, settings, tiling)


def _write_unit(
    model: InferenceModel,
    settings: PredictSettings,
    tiling: TilingSettings,
    config: Mapping[str, Any],
    unit: str,
    target: Path,
    frames: Sequence[Frame],
    physical: np.ndarray,
    nodata: np.ndarray,
) -> Outcome:
    """Run the model on one unit's input and write its product."""
    meta = model.meta
    reference = frames[-1]
    outputs = infer_field(model, physical, tiling, nodata)
    variables = product_variables(meta, outputs, settings.threshold)
    leads = lead_times(meta) if task_kind_of(meta) == "nowcast" else None
    inputs = [f.path for f in frames]
    product = build_product(model, variables, reference.grid, reference.time, leads, inputs, config,
                            settings.institution)
    written = write_product(product, target, settings.format, settings.overwrite, settings.quicklook)
    return Outcome(unit, "written", tuple(written), tuple(inputs))


def _skip(
    settings: PredictSettings, model: InferenceModel, unit: str, target: Path, inputs: Sequence[Path]
) -> Outcome | None:
    if settings.overwrite or not has_valid_output(target, settings.format, model.meta):
        return None
    log.info("%s: %s exists, skipped (use overwrite to replace it)", unit, target.name)
    return Outcome(unit, "skipped", (target,), tuple(inputs), "output exists")


# ---------------------------------------------------------------------------- analyses


def predict_files(
    model: InferenceModel, paths: Iterable[str | Path], settings: PredictSettings
) -> PredictReport:
    """Segmentation or regression over every time step of every file; one product per time step."""
    require_kind(model, ANALYSIS_KINDS, "predict_files")
    tiling, spec, config = _setup(model, settings)
    claimed: dict[Path, str] = {}
    outcomes: list[Outcome] = []
    files = [Path(p) for p in paths]
    for path in tqdm(files, desc="files", unit="file", disable=not settings.progress):
        try:
            frames = read_frames(path, spec)
        except UNIT_ERRORS as err:
            outcomes.append(Outcome.failure(path.name, err, (path,)))
            continue
        for frame, data in frames:
            try:
                outcomes.append(_analysis(model, settings, tiling, config, frame, data, claimed))
            except UNIT_ERRORS as err:
                outcomes.append(Outcome.failure(frame.label, err, (path,)))
    return PredictReport(tuple(outcomes))


def predict_file(model: InferenceModel, path: str | Path, settings: PredictSettings) -> PredictReport:
    """:func:`predict_files` for one file."""
    return predict_files(model, [path], settings)


def _analysis(
    model: InferenceModel,
    settings: PredictSettings,
    tiling: TilingSettings,
    config: Mapping[str, Any],
    frame: Frame,
    data: np.ndarray,
    claimed: dict[Path, str],
) -> Outcome:
    target = output_path(model, frame.time, settings.format, settings.output_dir)
    other = claimed.get(target)
    if other is not None:
        raise SeriesError(f"{frame.path}: its time {iso_minutes(frame.time)} is also that of {other}; "
                          f"both would write {target.name}")
    claimed[target] = frame.label
    skipped = _skip(settings, model, frame.label, target, (frame.path,))
    if skipped is not None:
        return skipped
    nodata = np.isnan(data).any(axis=0)
    return _write_unit(model, settings, tiling, config, frame.label, target, [frame], data, nodata)


# ---------------------------------------------------------------------------- nowcasts


def _ns(t: np.datetime64) -> int:
    return int(t.astype("datetime64[ns]").astype(np.int64))


def _reference_times(times: np.ndarray, step: np.timedelta64, n_in: int, max_gap_minutes: float) -> list[Any]:
    """Frame times with N - 1 steps of history inside their segment (a break > max_gap starts a new one)."""
    history = (n_in - 1) * step
    max_gap = np.timedelta64(round(max_gap_minutes * 60e9), "ns")
    out = []
    start = times[0]
    for i, t in enumerate(times):
        if i and t - times[i - 1] > max_gap:
            log.info("break of %g min before %s: a new segment starts", minutes(t - times[i - 1]),
                     iso_minutes(t))
            start = t
        if t - history >= start:
            out.append(t)
    return out


def predict_sequence(
    model: InferenceModel, paths: Iterable[str | Path], settings: PredictSettings
) -> PredictReport:
    """Nowcasts from a series of frames: one product per complete window of the last N frames.

    The series is cut into segments at breaks longer than ``max_gap_minutes`` (separate events,
    days); the reference times are the frame times with N - 1 nominal steps of history inside
    their segment. A window missing a frame (a shorter gap, or a file that failed) is refused
    and reported. A series whose step does not divide the checkpoint's step is refused as a
    whole (:class:`InputMismatchError`).
    """
    require_kind(model, ("nowcast",), "predict_sequence")
    meta = model.meta
    n_in = int(meta.get("num_input_frames") or 1)
    step_minutes = meta.get("time_step_minutes")
    if not step_minutes:
        raise PredictError(f"{model.path}: the nowcast checkpoint records no time_step_minutes")
    step = np.timedelta64(round(float(step_minutes) * 60e9), "ns")
    tiling, spec, config = _setup(model, settings)
    cache = FrameCache(n_in)
    outcomes: list[Outcome] = []
    by_time: dict[int, Frame] = {}
    reference: Frame | None = None
    for path in tqdm([Path(p) for p in paths], desc="reading", unit="file", disable=not settings.progress):
        try:
            frames = read_frames(path, spec)
        except UNIT_ERRORS as err:
            outcomes.append(Outcome.failure(path.name, err, (path,)))
            continue
        for frame, data in frames:
            reference = reference or frame
            problem = grid_problem(reference.grid, frame.grid)
            if problem is not None:
                mismatch = GridMismatchError(f"{frame.path}: {problem} of {reference.path.name}")
                outcomes.append(Outcome.failure(frame.label, mismatch, (frame.path,)))
                continue
            twin = by_time.get(_ns(frame.time))
            if twin is not None:
                clash = SeriesError(f"{frame.path}: time {iso_minutes(frame.time)} is also that of "
                                    f"{twin.label}")
                outcomes.append(Outcome.failure(frame.label, clash, (frame.path,)))
                continue
            by_time[_ns(frame.time)] = frame
            cache.put(frame, data)
    if reference is None or not by_time:
        return PredictReport(tuple(outcomes))

    times = np.array(sorted(by_time), dtype=np.int64).astype("datetime64[ns]")
    series_step = modal_step(times)
    if series_step is not None and not step_fits(series_step, step):
        raise InputMismatchError(
            reference.path.parent,
            f"the frames are {minutes(series_step):g} min apart, but the checkpoint's nowcast step is "
            f"{float(step_minutes):g} min: windows of {n_in} frames {float(step_minutes):g} min apart "
            "cannot be cut from this series",
        )
    candidates = _reference_times(times, step, n_in, settings.max_gap_minutes)
    if not candidates:
        log.warning("%d frame(s) from %s to %s: no segment is long enough for one window of %d frames "
                    "%g min apart", times.size, iso_minutes(times[0]), iso_minutes(times[-1]), n_in,
                    float(step_minutes))
    if settings.latest_only:
        candidates = candidates[-1:]
    windows: list[tuple[np.datetime64, list[Frame]]] = []
    for t in candidates:
        wanted = [t - k * step for k in range(n_in - 1, -1, -1)]
        missing = [w for w in wanted if _ns(w) not in by_time]
        unit = f"nowcast {iso_minutes(t)}"
        present = [by_time[_ns(w)].path for w in wanted if _ns(w) in by_time]
        if missing:
            gap = SeriesError(f"window of {n_in} frames ending {iso_minutes(t)} has a gap: no valid frame at "
                              f"{', '.join(iso_minutes(w) for w in missing)}")
            outcomes.append(Outcome.failure(unit, gap, present))
            continue
        windows.append((t, [by_time[_ns(w)] for w in wanted]))

    for t, frames_w in tqdm(windows, desc="nowcasts", unit="window", disable=not settings.progress):
        unit = f"nowcast {iso_minutes(t)}"
        inputs = [f.path for f in frames_w]
        try:
            target = output_path(model, t, settings.format, settings.output_dir)
            skipped = _skip(settings, model, unit, target, inputs)
            if skipped is not None:
                outcomes.append(skipped)
                continue
            window = np.concatenate([cache.get(f, spec) for f in frames_w], axis=0)  # frame-major
            nodata = np.isnan(window[-len(spec.variables):]).any(axis=0)  # where the last frame is nodata
            outcomes.append(
                _write_unit(model, settings, tiling, config, unit, target, frames_w, window, nodata)
            )
        except UNIT_ERRORS as err:
            outcomes.append(Outcome.failure(unit, err, inputs))
    return PredictReport(tuple(outcomes))


# ---------------------------------------------------------------------------- dispatch


def run_prediction(
    model: InferenceModel, paths: Iterable[str | Path], settings: PredictSettings
) -> PredictReport:
    """The right engine for the checkpoint's task kind."""
    kind = task_kind_of(model.meta)
    if kind in ANALYSIS_KINDS:
        return predict_files(model, paths, settings)
    if kind == "nowcast":
        return predict_sequence(model, paths, settings)
    if kind == "classification":
        from meteovision.pipeline.predict_images import predict_images

        return predict_images(model, paths, settings)
    raise PredictError(f"{model.path}: task kind {kind!r} unknown; expected segmentation, nowcast, "
                       "regression or classification")
