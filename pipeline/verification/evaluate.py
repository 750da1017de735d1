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
   radar coverage, and every method has a finite value there.
5. :func:`write_outputs` writes ``scores.json``, ``scores.csv`` (method, lead_minutes, metric,
   value, n_samples) and ``scores.md``, the skill-against-lead plots and the maps
   (``meteovision.pipeline.verification.plots``); :func:`markdown_table` is what the CLI prints.
"""


from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meteovision.pipeline.verification.lead_scores import FssWindow, LeadTimeScores, fss_windows

if TYPE_CHECKING:
    from meteovision.pipeline.verification.nowcast_methods import NowcastMethod

from meteovision.pipeline.verification.evaluate_config import EvaluationConfig, EvaluationError
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

#: The methods every evaluation knows; ``network`` needs a checkpoint.
KNOWN_METHODS = ("network", "persistence", "lk", "sprog")
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
    checkpoint: Path | None = None
    command: str = ""
    _values: dict[tuple[str, int, str], float] = field(default_factory=dict, init=False, repr=False)

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


def method_names(cfg: EvaluationConfig, checkpoint: Path | None) -> list[str]:
    names = list(cfg.methods)
    if checkpoint is not None and "network" not in names:
        names.insert(0, "network")
    if "network" in names and checkpoint is None:
        raise EvaluationError(f"{cfg.name}: method 'network' needs a checkpoint (--checkpoint)")
    return sorted(names, key=lambda n: _ORDER.get(n, len(_ORDER)))


def build_methods(cfg: EvaluationConfig, names: Sequence[str], checkpoint: Path | None) -> dict[str, NowcastMethod]:
    from meteovision.pipeline.verification.nowcast_methods import build_method

    methods: dict[str, NowcastMethod] = {}
    for name in names:
        settings = dict(cfg.method_settings.get(name, {}))
        methods[name] = build_method(name, checkpoint=checkpoint if name == "network" else None, **settings)
    return methods


def _map_indices(cfg: EvaluationConfig, n_times: int) -> set[int]:
    if cfg.maps == "none" or n_times == 0:
        return set()
    return set(range(n_times)) if cfg.maps == "all" else {n_times - 1}


def run_evaluation(cfg: EvaluationConfig, checkpoint: Path | None = None, *,
                   series: RadarSeries | None = None, command: str = "") -> EvaluationResult:
    """Load the series (unless given), run every method over the test window's analysis times, score them."""
    from meteovision.pipeline.verification.nowcast_methods import NowcastInput, lucas_kanade_motion, source_inside_mask

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise EvaluationError(f"{checkpoint}: no such checkpoint file")
    names = method_names(cfg, checkpoint)
    series = series if series is not None else load_series(cfg)
    step = series.time_step_minutes
    n_leads = n_leads_of(cfg, step)
    inside = window_mask(cfg, series.times)
    indices = analysis_indices(series.times, inside, step, cfg.past_frames, n_leads)
    if not indices:
        raise EvaluationError(
            f"{cfg.name}: no analysis time has {cfg.past_frames} past and {n_leads} future frames inside the test "
            f"window ({int(inside.sum())} frames from {iso_time(series.times[inside][0]) if inside.any() else '-'})")
    logger.info("%s: %d analysis time(s) from %s to %s, %d leads of %g min, methods %s", cfg.name, len(indices),
                iso_time(series.times[indices[0]]), iso_time(series.times[indices[-1]]), n_leads, step, names)
    methods = build_methods(cfg, names, checkpoint)
    windows = fss_windows(cfg.fss_scales_km, series.pixel_size_m)
    accumulators = {n: LeadTimeScores(n_leads, cfg.thresholds, cfg.fss_threshold, windows) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    map_at = _map_indices(cfg, len(indices))
    map_leads = [k for k in range(n_leads) if any(math.isclose(lead_minutes_of(k, step), m)
                                                   for m in cfg.map_leads_minutes)]
    maps: list[MapCase] = []
    for j, i in enumerate(indices):
        past = NowcastInput(frames=series.rates[i - cfg.past_frames + 1 : i + 1], time_step_minutes=step,
                            pixel_size_m=series.pixel_size_m)
        observation = series.rates[i + 1 : i + 1 + n_leads]
        motion = lucas_kanade_motion(past)
        mask = np.asarray(source_inside_mask(past, n_leads, motion), dtype=bool) & np.isfinite(observation)
        forecasts: dict[str, np.ndarray] = {}
        for name, method in methods.items():
            start = time.perf_counter()
            fc = np.asarray(method.forecast(past, n_leads), dtype=np.float32)
            seconds[name] += time.perf_counter() - start
            if fc.shape != observation.shape:
                raise EvaluationError(f"{cfg.name}: method {name!r} returned shape {fc.shape}, "
                                      f"expected {observation.shape}")
            forecasts[name] = fc
            mask &= np.isfinite(fc)
        for name, fc in forecasts.items():
            accumulators[name].update(fc, observation, mask)
        logger.info("%s: %s scored, %s pixels per lead", cfg.name, iso_time(series.times[i]),
                    ", ".join(str(int(m.sum())) for m in mask))
        if j in map_at:
            maps += [MapCase(series.times[i], lead_minutes_of(k, step), observation[k].copy(),
                             {n: fc[k].copy() for n, fc in forecasts.items()}, mask[k].copy()) for k in map_leads]
    return EvaluationResult(config=cfg, series=series, methods=names, analysis_times=[series.times[i] for i in indices],
                            n_leads=n_leads, windows=windows, accumulators=accumulators, seconds=seconds, maps=maps,
                            checkpoint=Path(checkpoint) if checkpoint is not None else None, command=command)


