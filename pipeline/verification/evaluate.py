"""Nowcast verification on a radar series: every method, the same analysis times, the same mask, every lead.

The stage, in order:

1. :class:`EvaluationConfig` (YAML) names the files (a glob under ``data_root``), the variable
   and its conversion to rain rate (``rate``: already mm h-1; ``dbz_to_rate``: Z = a R^b with
   Z in mm6 m-3, a = 223, b = 1.53 as pysteps uses for FMI), a crop (projection metres or
   pixel slices), a coarsening factor, the test window (``test_from`` or ``last_frames``),
   the past frames each method sees, the maximum lead time, thresholds, FSS scales and methods.
2. :func:`load_series` reads the files once through the readers (a crop is read as a window;
   GeoTIFFs are coarsened by the reader strip by strip, averaging linear Z for dBZ; other
   formats are coarsened here the same way) and converts to mm h-1 with NaN for no data.
3. :func:`analysis_indices` keeps the analysis times whose past frames and every future frame
   up to the maximum lead lie inside the test window, at exact time steps (no gap inside).
4. :func:`run_evaluation` runs every method (``meteovision.pipeline.verification.nowcast_methods``) from
   each analysis time and scores each lead with :class:`~meteovision.pipeline.verification.lead_scores.LeadTimeScores`
   on one mask shared by all methods: the observation is valid, the Lagrangian source of the
   pixel (along the Lucas-Kanade motion of the past frames) lies inside the domain and the
   radar coverage, and every method has a finite value there. The LK motion is computed once per
   analysis time and shared by LK, S-PROG and the mask; ``workers`` > 1 scores analysis times in
   parallel processes (``concurrent.futures``, forked from a fork server that imported torch and
   pysteps once; the pool is started once per process and kept for a further config) and adds their
   sums in analysis-time order, so the scores are those of one worker. Each task carries only its
   analysis time's frames.
5. :func:`write_outputs` writes ``scores.json``, ``scores.csv`` (method, lead_minutes, metric,
   value, n_samples) and ``scores.md``, the skill-against-lead plots and the maps
   (``meteovision.pipeline.verification.plots``); :func:`markdown_table` is what the CLI prints.
"""


from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import forkserver
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meteovision.pipeline.checkpoints.packaged import resolve_checkpoint
from meteovision.pipeline.verification.lead_scores import FssWindow, LeadTimeScores, fss_windows, score_methods

if TYPE_CHECKING:
    from meteovision.pipeline.verification.nowcast_methods import NowcastMethod

from meteovision.pipeline.verification.evaluate_config import KNOWN_METHODS, EvaluationConfig, EvaluationError
from meteovision.pipeline.verification.radar_series import (
    RadarSeries,
    analysis_indices,
    iso_time,
    lead_minutes_of,
    load_series,
    n_leads_of,
    window_mask,
)

logger = logging.getLogger(__name__)

#: Order of the methods in tables and maps.
_ORDER = {name: i for i, name in enumerate(KNOWN_METHODS)}


@dataclass
class MapCase:
    """Fields for one analysis time's maps: observation, every method, and the verification mask, per lead."""

    analysis_time: np.datetime64
    lead_minutes: float
    observation: np.ndarray
    forecasts: dict[str, np.ndarray]
    mask: np.ndarray


@dataclass
class EvaluationResult:
    """Every method's accumulated scores over the analysis times, and what they were computed on."""

    config: EvaluationConfig
    series: RadarSeries
    methods: list[str]
    analysis_times: list[np.datetime64]
    n_leads: int
    windows: list[FssWindow]
    accumulators: dict[str, LeadTimeScores]
    seconds: dict[str, float]
    maps: list[MapCase] = field(default_factory=list)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    command: str = ""
    #: Seconds of the Lucas-Kanade motion, computed once per analysis time and shared (not in ``seconds``).
    motion_seconds: float = 0.0
    _values: dict[tuple[str, int, str], float] = field(default_factory=dict, init=False, repr=False)

    @property
    def checkpoint(self) -> Path | None:
        """The first checkpoint (None without one): what a single ``--checkpoint`` gave."""
        return next(iter(self.checkpoints.values()), None)

    def lead_minutes(self, k: int) -> float:
        return lead_minutes_of(k, self.series.time_step_minutes)

    def table_fss_metric(self) -> str:
        acc = next(iter(self.accumulators.values()))
        chosen = min(self.windows, key=lambda w: abs(w.requested_km - self.config.table_fss_scale_km))
        return acc.fss_name(chosen)

    def value(self, method: str, k: int, metric: str) -> float:
        """One score of one method at lead index ``k`` (KeyError for an unknown metric)."""
        if not self._values:
            self._values = {(name, sc.lead_index, sc.metric): sc.value
                            for name, acc in self.accumulators.items() for sc in acc.scores()}
        return self._values[(method, k, metric)]


def checkpoint_names(checkpoints: Sequence[str | Path]) -> dict[str, Path]:
    """``name=path`` or ``path`` entries -> {method name: path}; names come from the file stem.

    A lone unnamed checkpoint keeps the method name ``network`` (as before several were allowed).
    """
    named: dict[str, Path] = {}
    for entry in checkpoints:
        text = str(entry)
        name, sep, path = text.partition("=")
        if not sep:
            name, path = ("network" if len(checkpoints) == 1 else Path(text).stem), text
        if not name or name in KNOWN_METHODS[1:] or name in named:
            raise EvaluationError(f"checkpoint {text}: the method name {name!r} is empty, a baseline's or taken "
                                  f"(give name=path)")
        named[name] = Path(path)
    return named


@functools.lru_cache(maxsize=32)
def _input_frames(path: Path, stamp: tuple[int, int]) -> int:
    """Past frames the checkpoint at ``path`` reads; read once per file version (``stamp``: mtime, size)."""
    from meteovision.pipeline.checkpoints.loading import load_metadata

    return load_metadata(path).num_input_frames


def check_networks_fit(cfg: EvaluationConfig, checkpoints: Mapping[str, Path] | Path | None) -> None:
    """Refuse, before any frame is read, a missing checkpoint or one needing more past frames than ``cfg``
    gives. Each checkpoint's metadata is read once however many configs are checked."""
    for name, path in _as_checkpoints(checkpoints).items():
        resolved = resolve_checkpoint(path)
        if not resolved.is_file():
            raise EvaluationError(f"{resolved}: no such checkpoint file (nor a packaged checkpoint)")
        stat = resolved.stat()
        needed = _input_frames(resolved, (stat.st_mtime_ns, stat.st_size))
        if needed and needed > cfg.past_frames:
            raise EvaluationError(f"{cfg.name}: checkpoint {name} ({path}) needs {needed} past frames, the config "
                                  f"gives {cfg.past_frames} (past_frames)")


def method_names(cfg: EvaluationConfig, checkpoints: Mapping[str, Path] | Path | None) -> list[str]:
    """The baselines of the config and one method per checkpoint, networks first."""
    nets = _as_checkpoints(checkpoints)
    names = [n for n in cfg.methods if n != "network"]
    if "network" in cfg.methods and not nets:
        raise EvaluationError(f"{cfg.name}: method 'network' needs a checkpoint (--checkpoint)")
    return list(nets) + sorted(names, key=lambda n: _ORDER.get(n, len(_ORDER)))


def _as_checkpoints(checkpoints: Mapping[str, Path] | Path | None) -> dict[str, Path]:
    if checkpoints is None:
        return {}
    if isinstance(checkpoints, Path | str):
        return {"network": Path(checkpoints)}
    return dict(checkpoints)


def build_methods(cfg: EvaluationConfig, names: Sequence[str],
                  checkpoints: Mapping[str, Path] | Path | None) -> dict[str, NowcastMethod]:
    """The nowcast methods by name; a checkpoint's method takes the config's ``network`` settings."""
    from meteovision.pipeline.verification.nowcast_methods import build_method

    nets = _as_checkpoints(checkpoints)
    methods: dict[str, NowcastMethod] = {}
    for name in names:
        if name in nets:
            settings = dict(cfg.method_settings.get("network", {}))
            methods[name] = build_method("network", checkpoint=nets[name], **settings)
        else:
            methods[name] = build_method(name, **dict(cfg.method_settings.get(name, {})))
    return methods


def _map_indices(cfg: EvaluationConfig, n_times: int) -> set[int]:
    if cfg.maps == "none" or n_times == 0:
        return set()
    return set(range(n_times)) if cfg.maps == "all" else {n_times - 1}


@dataclass(frozen=True)
class _Spec:
    """What every analysis time of one evaluation shares: settings, methods, windows; small, sent with each task.

    ``token`` names the evaluation, so that a worker builds its methods once per evaluation.
    """

    token: tuple[int, int]
    cfg: EvaluationConfig
    step: float
    pixel_size_m: float
    n_leads: int
    names: tuple[str, ...]
    checkpoints: dict[str, Path]
    windows: tuple[FssWindow, ...]
    map_leads: tuple[int, ...]


@dataclass(frozen=True)
class _Task:
    """One analysis time: its past frames and the observed frames of every lead (only these travel)."""

    spec: _Spec
    frames: np.ndarray
    analysis_time: np.datetime64
    with_maps: bool


@dataclass
class _TimeScores:
    """One analysis time's sums per method, method seconds and map cases."""

    accumulators: dict[str, LeadTimeScores]
    seconds: dict[str, float]
    maps: list[MapCase]
    motion_seconds: float


#: Evaluations started by this process (with its pid, the token of an evaluation).
_evaluations = itertools.count()
#: This worker process's methods, built for the evaluation of the token (one entry once a task ran).
_worker_methods: dict[tuple[int, int], dict[str, NowcastMethod]] = {}
#: The worker pool of this process, started once and reused by later evaluations: (workers, pool).
_pool: list[tuple[int, ProcessPoolExecutor]] = []
#: What the fork server imports once, so that no worker pays for it: the evaluation, the methods and the
#: pysteps modules they call (absent ones are skipped by the server).
_PRELOAD = [__name__, "meteovision.pipeline.verification.nowcast_methods", "pysteps.motion.lucaskanade",
            "pysteps.extrapolation.semilagrangian", "pysteps.nowcasts.sprog", "cv2"]


def _init_worker() -> None:
    """One thread per worker for torch and OpenCV: the processes are the parallelism (2 cores, not 2 x 2)."""
    import torch

    torch.set_num_threads(1)
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)


def _score_in_worker(task: _Task) -> _TimeScores:
    spec = task.spec
    methods = _worker_methods.get(spec.token)
    if methods is None:
        _worker_methods.clear()
        methods = _worker_methods[spec.token] = build_methods(spec.cfg, spec.names, spec.checkpoints)
    return _score_time(task, methods)


def _score_time(task: _Task, methods: Mapping[str, NowcastMethod]) -> _TimeScores:
    """Run every method from one analysis time and score it on the shared mask."""
    from meteovision.pipeline.verification.nowcast_methods import NowcastInput, lucas_kanade_motion, source_inside_mask
    from meteovision.pipeline.verification.trajectory import Trajectory

    spec = task.spec
    cfg, n_leads = spec.cfg, spec.n_leads
    past = NowcastInput(frames=task.frames[: cfg.past_frames], time_step_minutes=spec.step,
                        pixel_size_m=spec.pixel_size_m)
    observation = task.frames[cfg.past_frames :]
    start = time.perf_counter()
    motion = lucas_kanade_motion(past)  # once for LK, S-PROG and the mask, and LK's trajectory once for LK and the mask
    past = dataclasses.replace(past, motion=motion, trajectory=Trajectory.along(motion, n_leads))
    motion_seconds = time.perf_counter() - start
    inside = np.asarray(source_inside_mask(past, n_leads, past.motion), dtype=bool)
    past = dataclasses.replace(past, inside=inside)  # LK and S-PROG blank the same sources outside
    mask = inside & np.isfinite(observation)
    forecasts: dict[str, np.ndarray] = {}
    seconds = dict.fromkeys(methods, 0.0)
    for name, method in methods.items():
        start = time.perf_counter()
        fc = np.asarray(method.forecast(past, n_leads), dtype=np.float32)
        seconds[name] += time.perf_counter() - start
        if fc.shape != observation.shape:
            raise EvaluationError(f"{cfg.name}: method {name!r} returned shape {fc.shape}, "
                                  f"expected {observation.shape}")
        forecasts[name] = fc
        mask &= np.isfinite(fc)
    accumulators = {n: LeadTimeScores(n_leads, cfg.thresholds, cfg.fss_threshold, spec.windows) for n in methods}
    score_methods(accumulators, forecasts, observation, mask)
    logger.info("%s: %s scored, %s pixels per lead", cfg.name, iso_time(task.analysis_time),
                ", ".join(str(int(m.sum())) for m in mask))
    maps = [MapCase(task.analysis_time, lead_minutes_of(k, spec.step), observation[k].copy(),
                    {n: fc[k].copy() for n, fc in forecasts.items()}, mask[k].copy())
            for k in spec.map_leads] if task.with_maps else []
    return _TimeScores(accumulators, seconds, maps, motion_seconds)


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` processes, created on first use and kept for later evaluations.

    Not a plain fork: a fork after OpenCV's or torch's thread pools have started can deadlock the
    children. A fork server imports :data:`_PRELOAD` once and forks the workers from that thread-free
    process (spawn where there is no fork server). The server starts here, in the background, so it
    imports while the caller reads the frames; the workers start on the first task.
    """
    if _pool and _pool[0][0] == workers:
        return _pool[0][1]
    _close_pool()
    starts = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in starts else "spawn")
    if "forkserver" in starts:
        context.set_forkserver_preload(_PRELOAD)
        forkserver.ensure_running()
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=context)
    _pool[:] = [(workers, pool)]
    return pool


def _close_pool() -> None:
    """Stop this process's worker pool, if any (a broken pool is replaced by the next evaluation)."""
    if _pool:
        _pool.pop()[1].shutdown(cancel_futures=True)


def _score_all(tasks: Sequence[_Task], workers: int) -> list[_TimeScores]:
    """Score every analysis time, in parallel processes when ``workers`` > 1; results in task order."""
    if workers <= 1 or len(tasks) <= 1:
        if not tasks:
            return []
        spec = tasks[0].spec
        methods = build_methods(spec.cfg, spec.names, spec.checkpoints)
        return [_score_time(task, methods) for task in tasks]
    try:
        return list(_worker_pool(workers).map(_score_in_worker, tasks))
    except BrokenProcessPool:
        _close_pool()
        raise


def run_evaluation(cfg: EvaluationConfig, checkpoint: Path | Mapping[str, Path] | None = None, *,
                   series: RadarSeries | None = None, command: str = "", workers: int = 1) -> EvaluationResult:
    """Load the series (unless given), run every method over the test window's analysis times, score them.

    ``checkpoint`` is one checkpoint (method ``network``) or {method name: checkpoint}, each a path or the
    name of a packaged checkpoint; ``workers``
    processes score analysis times in parallel (the same scores as one).
    """
    nets = {name: resolve_checkpoint(path) for name, path in _as_checkpoints(checkpoint).items()}
    check_networks_fit(cfg, nets)
    if workers < 1:
        raise EvaluationError(f"{cfg.name}: workers must be >= 1, got {workers}")
    names = method_names(cfg, nets)
    if workers > 1:
        _worker_pool(workers)  # the fork server imports while the frames are read
    series = series if series is not None else load_series(cfg)
    step = series.time_step_minutes
    n_leads = n_leads_of(cfg, step)
    inside = window_mask(cfg, series.times)
    indices = analysis_indices(series.times, inside, step, cfg.past_frames, n_leads)
    if not indices:
        raise EvaluationError(
            f"{cfg.name}: no analysis time has {cfg.past_frames} past and {n_leads} future frames inside the test "
            f"window ({int(inside.sum())} frames from {iso_time(series.times[inside][0]) if inside.any() else '-'})")
    logger.info("%s: %d analysis time(s) from %s to %s, %d leads of %g min, methods %s, %d worker(s)", cfg.name,
                len(indices), iso_time(series.times[indices[0]]), iso_time(series.times[indices[-1]]), n_leads, step,
                names, workers)
    windows = fss_windows(cfg.fss_scales_km, series.pixel_size_m)
    map_leads = tuple(k for k in range(n_leads) if any(math.isclose(lead_minutes_of(k, step), m)
                                                       for m in cfg.map_leads_minutes))
    spec = _Spec((os.getpid(), next(_evaluations)), cfg, step, series.pixel_size_m, n_leads, tuple(names), nets,
                 tuple(windows), map_leads)
    map_at = _map_indices(cfg, len(indices))
    tasks = [_Task(spec, series.rates[i - cfg.past_frames + 1 : i + 1 + n_leads], series.times[i], j in map_at)
             for j, i in enumerate(indices)]  # only the frames of each analysis time travel to a worker
    accumulators = {n: LeadTimeScores(n_leads, cfg.thresholds, cfg.fss_threshold, windows) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    maps: list[MapCase] = []
    motion_seconds = 0.0
    for part in _score_all(tasks, workers):
        for name in names:
            accumulators[name].merge(part.accumulators[name])
            seconds[name] += part.seconds[name]
        maps += part.maps
        motion_seconds += part.motion_seconds
    return EvaluationResult(config=cfg, series=series, methods=names, analysis_times=[series.times[i] for i in indices],
                            n_leads=n_leads, windows=windows, accumulators=accumulators, seconds=seconds, maps=maps,
                            checkpoints=nets, command=command, motion_seconds=motion_seconds)
