"""The predict stage: a trained checkpoint over whole input files, to CF-1.10 products.

Importable engine (the command line is ``predict_cli``; the operational scheduler calls these):

* :func:`predict_file` / :func:`predict_files`: segmentation and regression checkpoints, one
  product (an analysis) per input time step;
* :func:`predict_sequence`: nowcast checkpoints; every window of the last N frames at the
  checkpoint's nominal step gives one product with M lead times (``leadtime`` dimension,
  ``forecast_reference_time`` = the last input time);
* :func:`meteovision.pipeline.inference.images.predict_images`: classification (webcams), not
  gridded: a CSV and a JSON of class probabilities per image;
* :func:`run_prediction`: picks one of those by the checkpoint's task kind.

Each unit of work (a file, a window, an image) is read and checked against the checkpoint
(:mod:`~meteovision.pipeline.inference.inputs`), normalised with the checkpoint's input statistics
(NaN -> the fill value), run over the whole domain by overlapping tiles
(:func:`~meteovision.pipeline.inference.tiling.predict_domain`, channels-last; bf16 autocast on CUDA and
float32 on the CPU unless :attr:`PredictSettings.precision` says otherwise), turned back into
probabilities or physical units, set to NaN where the input is nodata (any input channel; for
nowcasts, any channel of the last input frame) and written
(:mod:`~meteovision.pipeline.inference.outputs`). A unit that fails (corrupt file, mismatched
input, a window with a gap) is recorded with its reason in the :class:`PredictReport` and the
others go on; a problem of configuration (wrong task kind, bad tiling settings, no CUDA)
raises :class:`PredictError`, and an output folder that cannot take products (full disk,
read-only) raises :class:`~meteovision.pipeline.inference.write_errors.OutputWriteError` at the
first failed write. Existing valid outputs are skipped unless ``overwrite``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import GridMismatchError, SeriesError
from meteovision.pipeline.checkpoints.loading import InferenceModel
from meteovision.pipeline.inference.engine import (
    ANALYSIS_KINDS,
    PRECISIONS,
    UNIT_ERRORS,
    InputMismatchError,
    Outcome,
    Precision,
    PredictError,
    PredictReport,
    PredictSettings,
    Status,
    cpu_has_native_bf16,
    ensure_output_folder,
    infer_field,
    prepare_model,
    require_kind,
    run_config,
)
from meteovision.pipeline.inference.images import predict_images
from meteovision.pipeline.inference.inputs import (
    Frame,
    FrameCache,
    InputSpec,
    grid_problem,
    iso_minutes,
    minutes,
    modal_step,
    read_frames,
    step_fits,
)
from meteovision.pipeline.inference.outputs import (
    build_product,
    has_valid_output,
    output_path,
    product_variables,
    write_product,
)
from meteovision.pipeline.inference.tiling import TilingSettings
from meteovision.pipeline.inference.write_errors import OutputWriteError

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
    "predict_file",
    "predict_files",
    "predict_sequence",
    "prepare_model",
    "require_kind",
    "run_prediction",
]


def _setup(
    model: InferenceModel, settings: PredictSettings
) -> tuple[TilingSettings, InputSpec, dict[str, Any]]:
    tiling = prepare_model(model, settings)
    spec = InputSpec.from_meta(model.meta, settings.ignore_grid_spacing, settings.coarsen)
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
    leads = meta.lead_times if meta.task_kind is TaskKind.NOWCAST else None
    inputs = [f.path for f in frames]
    product = build_product(model, variables, reference.grid, reference.time, leads, inputs, config,
                            settings.institution)
    written = write_product(product, target, settings.format, settings.overwrite, settings.quicklook)
    return Outcome(unit, Status.WRITTEN, tuple(written), tuple(inputs))


def _skip(
    settings: PredictSettings, model: InferenceModel, unit: str, target: Path, inputs: Sequence[Path]
) -> Outcome | None:
    if settings.overwrite or not has_valid_output(target, settings.format, model.meta):
        return None
    log.info("%s: %s exists, skipped (use overwrite to replace it)", unit, target.name)
    return Outcome(unit, Status.SKIPPED, (target,), tuple(inputs), "output exists")


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
            except OutputWriteError:
                raise  # the output folder's fault: every later unit would fail the same way
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
    require_kind(model, (TaskKind.NOWCAST,), "predict_sequence")
    meta = model.meta
    n_in = meta.num_input_frames
    step_minutes = meta.time_step_minutes
    if not step_minutes:  # refused at load already; kept for metadata built in code
        raise PredictError(f"{model.path}: the nowcast checkpoint records no time_step_minutes")
    step = np.timedelta64(round(step_minutes * 60e9), "ns")
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
        except OutputWriteError:
            raise  # the output folder's fault: every later window would fail the same way
        except UNIT_ERRORS as err:
            outcomes.append(Outcome.failure(unit, err, inputs))
    return PredictReport(tuple(outcomes))


# ---------------------------------------------------------------------------- dispatch


def run_prediction(
    model: InferenceModel, paths: Iterable[str | Path], settings: PredictSettings
) -> PredictReport:
    """The right engine for the checkpoint's task kind."""
    kind = model.meta.task_kind
    if kind in ANALYSIS_KINDS:
        return predict_files(model, paths, settings)
    if kind is TaskKind.NOWCAST:
        return predict_sequence(model, paths, settings)
    return predict_images(model, paths, settings)  # TaskKind.CLASSIFICATION, the last kind
