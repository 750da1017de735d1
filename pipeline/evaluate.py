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
4. :func:`run_evaluation` runs every method (``meteovision.pipeline.nowcast_methods``) from
   each analysis time and scores each lead with :class:`~meteovision.pipeline.verification.LeadTimeScores`
   on one mask shared by all methods: the observation is valid, the Lagrangian source of the
   pixel (along the Lucas-Kanade motion of the past frames) lies inside the domain and the
   radar coverage, and every method has a finite value there.
5. :func:`write_outputs` writes ``scores.json``, ``scores.csv`` (method, lead_minutes, metric,
   value, n_samples) and ``scores.md``, the skill-against-lead plots and the maps
   (``meteovision.pipeline.evaluate_plots``); :func:`markdown_table` is what the CLI prints.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pydantic
import pyproj
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meteovision.datasets.conventions import crs_of
from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.readers import detect_format, open_series
from meteovision.pipeline.atomic import atomic_write
from meteovision.pipeline.checkpoints import file_sha256
from meteovision.pipeline.verification import FssWindow, LeadTimeScores, format_value, fss_windows
from meteovision.pipeline.versions import package_versions

if TYPE_CHECKING:
    from meteovision.pipeline.nowcast_methods import NowcastMethod

logger = logging.getLogger(__name__)

#: The methods every evaluation knows; ``network`` needs a checkpoint.
KNOWN_METHODS = ("network", "persistence", "lk", "sprog")
#: Order of the methods in tables and maps.
_ORDER = {name: i for i, name in enumerate(KNOWN_METHODS)}


class EvaluationError(MeteovisionError):
    """A bad evaluation config, or a series that cannot be evaluated; the message names the file."""


# ---------------------------------------------------------------------------- config
class EvaluationConfig(BaseModel):
    """What ``meteovision evaluate`` runs; every field is a YAML key (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="label of the evaluation (titles, JSON)")
    data_root: Path = Field(Path("../shared/data"), description="folder the input glob is relative to "
                            "(relative to the current directory; --data-root overrides)")
    inputs: str = Field(description="glob of the frames under data_root, e.g. radar/opera_20180824/*.hdf")
    variable: str = Field("RATE", description="variable of the files (RATE in mm h-1, or DBZH in dBZ)")
    conversion: Literal["rate", "dbz_to_rate"] = "rate"
    zr_a: float = Field(223.0, gt=0, description="Z = a R^b for dbz_to_rate (pysteps' FMI default)")
    zr_b: float = Field(1.53, gt=0)
    crop_bounds_m: tuple[float, float, float, float] | None = Field(
        None, description="left, bottom, right, top in projection metres (cells whose centre is inside)")
    crop_pixels: tuple[tuple[int, int], tuple[int, int]] | None = Field(
        None, description="((row0, row1), (col0, col1)) of the native grid")
    coarsen: int = Field(1, ge=1, description="average k x k blocks (linear Z for dBZ)")
    time_step_minutes: float | None = Field(None, gt=0, description="expected step; refused if the files differ")
    test_from: datetime | None = Field(None, description="first time of the test window (UTC)")
    last_frames: int | None = Field(None, ge=2, description="the test window is the last N frames")
    past_frames: int = Field(4, ge=1, description="frames each method sees, the analysis time included")
    max_lead_minutes: float = Field(60.0, gt=0)
    thresholds: tuple[float, ...] = (0.5, 1.0, 5.0, 10.0)
    fss_threshold: float = 1.0
    fss_scales_km: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    table_fss_scale_km: float = Field(16.0, description="FSS scale shown in the printed table and plot")
    methods: tuple[str, ...] = ("persistence", "lk", "sprog")
    method_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    map_leads_minutes: tuple[float, ...] = (30.0, 60.0)
    maps: Literal["none", "last", "all"] = "last"
    output_dir: Path = Path("evaluation")

    @field_validator("methods")
    @classmethod
    def _methods_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(KNOWN_METHODS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"methods repeat: {list(value)}")
        return value

    @model_validator(mode="after")
    def _one_window(self) -> EvaluationConfig:
        if self.crop_bounds_m is not None and self.crop_pixels is not None:
            raise ValueError("give crop_bounds_m or crop_pixels, not both")
        if self.test_from is not None and self.last_frames is not None:
            raise ValueError("give test_from or last_frames, not both")
        if not self.thresholds:
            raise ValueError("give at least one threshold")
        return self


def _format_validation(err: pydantic.ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def resolve_config_path(value: str | Path) -> Path:
    """A config given by path, or by name (``evaluate_opera``) from the packaged configs."""
    path = Path(value)
    if path.is_file():
        return path
    from importlib import resources

    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    packaged = resources.files("meteovision.configs").joinpath(name)
    if packaged.is_file():
        return Path(str(packaged))
    raise EvaluationError(f"{value}: no such config file (nor a packaged config of that name)")


def load_config(path: str | Path, **overrides: Any) -> EvaluationConfig:
    """Read and check an evaluation YAML; ``overrides`` (not None) replace its keys."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EvaluationError(f"{p}: cannot read the config ({exc})") from exc
    if not isinstance(raw, dict):
        raise EvaluationError(f"{p}: the config must be a mapping of keys, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvaluationConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise EvaluationError(f"{p}: {_format_validation(exc)}") from exc


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class RadarSeries:
    """Rain rate frames (T, H, W) in mm h-1 (NaN = no data) on a north-up grid, with their times."""

    rates: np.ndarray
    times: np.ndarray  # datetime64[ns]
    x: np.ndarray
    y: np.ndarray
    pixel_size_m: float
    time_step_minutes: float
    files: tuple[Path, ...]
    crs_name: str


def _input_files(cfg: EvaluationConfig) -> list[Path]:
    root = cfg.data_root
    if not root.is_dir():
        raise EvaluationError(f"{cfg.name}: data root {root} is not a folder (set data_root or --data-root)")
    files = sorted(p for p in root.glob(cfg.inputs) if p.is_file())
    if not files:
        raise EvaluationError(f"{cfg.name}: no file matches {cfg.inputs!r} under {root}")
    return files


def _reader_options(cfg: EvaluationConfig, fmt: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if cfg.crop_bounds_m is not None:
        options["window"] = tuple(cfg.crop_bounds_m)
    elif cfg.crop_pixels is not None:
        options["window"] = tuple(tuple(p) for p in cfg.crop_pixels)
    if fmt == "odim_h5":
        options.update(quantities=[cfg.variable], include_quality=False)
    elif fmt == "cf_netcdf":
        options["variables"] = [cfg.variable]
    elif fmt == "geotiff" and cfg.coarsen > 1:
        options.update(coarsen=cfg.coarsen, coarsen_method="mean")
    return options


def coarsen_blocks(values: np.ndarray, factor: int, linear_db: bool) -> np.ndarray:
    """Mean of the valid cells of ``factor`` x ``factor`` blocks of (T, H, W); linear Z for dBZ.

    Trailing rows and columns that do not fill a block are dropped; an all-NaN block is NaN.
    The same rule as the GeoTIFF reader's ``coarsen`` (which does this strip by strip).
    """
    t, h, w = values.shape
    h2, w2 = h // factor, w // factor
    blocks = values[:, : h2 * factor, : w2 * factor].astype(np.float64)
    blocks = blocks.reshape(t, h2, factor, w2, factor)
    if linear_db:
        blocks = np.power(10.0, blocks / 10.0)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(2, 4))
    count = valid.sum(axis=(2, 4))
    mean = np.full(total.shape, np.nan)
    np.divide(total, count, out=mean, where=count > 0)
    if linear_db:
        with np.errstate(divide="ignore"):
            mean = 10.0 * np.log10(mean)
    return mean.astype(np.float32)


def _block_centres(coords: np.ndarray, factor: int) -> np.ndarray:
    n = coords.size // factor
    return coords[: n * factor].reshape(n, factor).mean(axis=1)


def dbz_to_rate(dbz: np.ndarray, a: float = 223.0, b: float = 1.53) -> np.ndarray:
    """Rain rate (mm h-1) from reflectivity (dBZ) by Z = a R^b, Z in mm6 m-3; NaN stays NaN."""
    z = np.power(10.0, dbz.astype(np.float64) / 10.0)
    return np.power(z / a, 1.0 / b).astype(np.float32)


def _crs_label(crs: pyproj.CRS) -> str:
    """The CRS's name, or its projection method where the name is "unknown" (ODIM projdefs)."""
    if crs.name and crs.name.lower() != "unknown":
        return str(crs.name)
    operation = crs.coordinate_operation
    return str(operation.method_name) if operation is not None else crs.to_proj4()


def load_series(cfg: EvaluationConfig) -> RadarSeries:
    """Read, crop, coarsen and convert the whole series once (see the module docstring)."""
    files = _input_files(cfg)
    fmt = detect_format(files[0])
    logger.info("%s: reading %d %s files from %s", cfg.name, len(files), fmt, cfg.data_root)
    ds = open_series(files, **_reader_options(cfg, fmt))
    if cfg.variable not in ds:
        names = sorted(str(v) for v in ds.data_vars if v != "crs")
        raise EvaluationError(f"{files[0]}: no variable {cfg.variable!r} (it has {names})")
    units = str(ds[cfg.variable].attrs.get("units", ""))
    wanted = "mm h-1" if cfg.conversion == "rate" else "dBZ"
    if units != wanted:
        raise EvaluationError(f"{files[0]}: {cfg.variable} is in {units!r}, but conversion "
                              f"{cfg.conversion!r} needs {wanted!r}")
    values = ds[cfg.variable].to_numpy().astype(np.float32)
    if values.ndim != 3:
        raise EvaluationError(f"{files[0]}: {cfg.variable} has dims {ds[cfg.variable].dims}, expected (time, y, x)")
    x, y = ds["x"].to_numpy(), ds["y"].to_numpy()
    if cfg.coarsen > 1 and fmt != "geotiff":
        values = coarsen_blocks(values, cfg.coarsen, linear_db=cfg.conversion == "dbz_to_rate")
        x, y = _block_centres(x, cfg.coarsen), _block_centres(y, cfg.coarsen)
    if cfg.conversion == "dbz_to_rate":
        values = dbz_to_rate(values, cfg.zr_a, cfg.zr_b)
    if x.size < 2 or y.size < 2:
        raise EvaluationError(f"{files[0]}: the cropped grid is {y.size} x {x.size} cells; too small")
    dx, dy = float(np.median(np.abs(np.diff(x)))), float(np.median(np.abs(np.diff(y))))
    if abs(dx - dy) > 0.01 * dx:
        raise EvaluationError(f"{files[0]}: cells of {dx:g} x {dy:g} m are not square; the methods need square cells")
    if x[1] < x[0] or y[1] > y[0]:
        raise EvaluationError(f"{files[0]}: the grid is not north-up (x increasing, y decreasing)")
    step_s = float(ds.attrs.get("time_step_seconds", 0))
    if step_s <= 0:
        raise EvaluationError(f"{files[0]}: the series has no time step (one frame?)")
    step_min = step_s / 60.0
    if cfg.time_step_minutes is not None and not math.isclose(step_min, cfg.time_step_minutes):
        raise EvaluationError(f"{files[0]}: the frames are {step_min:g} min apart, the config says "
                              f"{cfg.time_step_minutes:g} min")
    crs_name = _crs_label(crs_of(ds)) if "crs" in ds else "unknown CRS"
    logger.info("%s: %d frames of %d x %d cells at %.0f m, every %g min", cfg.name, values.shape[0],
                values.shape[1], values.shape[2], dx, step_min)
    return RadarSeries(rates=values, times=ds["time"].to_numpy().astype("datetime64[ns]"), x=x, y=y,
                       pixel_size_m=0.5 * (dx + dy), time_step_minutes=step_min, files=tuple(files),
                       crs_name=crs_name)


def n_leads_of(cfg: EvaluationConfig, step_minutes: float) -> int:
    """Number of lead steps up to ``max_lead_minutes``, which must be a whole number of steps."""
    n = cfg.max_lead_minutes / step_minutes
    if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise EvaluationError(f"{cfg.name}: max_lead_minutes {cfg.max_lead_minutes:g} is not a whole number of "
                              f"{step_minutes:g}-min steps")
    return round(n)


def window_mask(cfg: EvaluationConfig, times: np.ndarray) -> np.ndarray:
    """Boolean (T,): the frames of the test window."""
    if cfg.last_frames is not None:
        if cfg.last_frames > times.size:
            raise EvaluationError(f"{cfg.name}: last_frames {cfg.last_frames} but the series has {times.size}")
        inside = np.zeros(times.size, dtype=bool)
        inside[-cfg.last_frames :] = True
        return inside
    if cfg.test_from is not None:
        start = cfg.test_from
        if start.tzinfo is not None:
            start = start.astimezone(UTC).replace(tzinfo=None)
        return times >= np.datetime64(start, "ns")
    logger.warning("%s: no test_from or last_frames: the whole series is the test window", cfg.name)
    return np.ones(times.size, dtype=bool)


def analysis_indices(times: np.ndarray, inside: np.ndarray, step_minutes: float, past: int, n_leads: int) -> list[int]:
    """Indices t0 whose past frames t0-(past-1)..t0 and future frames t0+1..t0+n_leads are all inside the
    window and exactly one step apart (a gap in the series excludes the times around it)."""
    step = np.timedelta64(round(step_minutes * 60e9), "ns")
    out = []
    for i in range(past - 1, times.size - n_leads):
        span = slice(i - past + 1, i + n_leads + 1)
        if not inside[span].all():
            continue
        if np.all(np.diff(times[span]) == step):
            out.append(i)
    return out


# ---------------------------------------------------------------------------- running
def _iso(t: np.datetime64) -> str:
    return str(np.datetime_as_string(t.astype("datetime64[s]"), unit="m")) + "Z"


def _lead_minutes(k: int, step: float) -> float:
    return float(round((k + 1) * step, 6))


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
        return _lead_minutes(k, self.series.time_step_minutes)

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
    from meteovision.pipeline.nowcast_methods import build_method

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
    from meteovision.pipeline.nowcast_methods import NowcastInput, lucas_kanade_motion, source_inside_mask

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
            f"window ({int(inside.sum())} frames from {_iso(series.times[inside][0]) if inside.any() else '-'})")
    logger.info("%s: %d analysis time(s) from %s to %s, %d leads of %g min, methods %s", cfg.name, len(indices),
                _iso(series.times[indices[0]]), _iso(series.times[indices[-1]]), n_leads, step, names)
    methods = build_methods(cfg, names, checkpoint)
    windows = fss_windows(cfg.fss_scales_km, series.pixel_size_m)
    accumulators = {n: LeadTimeScores(n_leads, cfg.thresholds, cfg.fss_threshold, windows) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    map_at = _map_indices(cfg, len(indices))
    map_leads = [k for k in range(n_leads) if any(math.isclose(_lead_minutes(k, step), m)
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
        logger.info("%s: %s scored, %s pixels per lead", cfg.name, _iso(series.times[i]),
                    ", ".join(str(int(m.sum())) for m in mask))
        if j in map_at:
            maps += [MapCase(series.times[i], _lead_minutes(k, step), observation[k].copy(),
                             {n: fc[k].copy() for n, fc in forecasts.items()}, mask[k].copy()) for k in map_leads]
    return EvaluationResult(config=cfg, series=series, methods=names, analysis_times=[series.times[i] for i in indices],
                            n_leads=n_leads, windows=windows, accumulators=accumulators, seconds=seconds, maps=maps,
                            checkpoint=Path(checkpoint) if checkpoint is not None else None, command=command)


# ---------------------------------------------------------------------------- outputs
def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def score_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """One row per method, lead and metric: the content of ``scores.csv``."""
    rows = []
    for name in result.methods:
        for score in result.accumulators[name].scores():
            rows.append({"method": name, "lead_minutes": result.lead_minutes(score.lead_index),
                         "metric": score.metric, "value": score.value, "n_samples": score.n_samples})
    return rows


def scores_document(result: EvaluationResult) -> dict[str, Any]:
    """Everything ``scores.json`` holds: settings, data, analysis times, windows and every score."""
    s, cfg = result.series, result.config
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in score_rows(result):
        per_lead = scores.setdefault(row["method"], {}).setdefault(format_value(row["lead_minutes"]), {})
        per_lead[row["metric"]] = _json_number(row["value"])
    first = result.accumulators[result.methods[0]]
    return {
        "name": cfg.name,
        "command": result.command,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": json.loads(cfg.model_dump_json()),
        "data": {
            "files": [str(p) for p in s.files], "first_time": _iso(s.times[0]), "last_time": _iso(s.times[-1]),
            "shape": list(s.rates.shape[1:]), "pixel_size_m": s.pixel_size_m,
            "time_step_minutes": s.time_step_minutes, "crs": s.crs_name,
            "x_range_m": [float(s.x[0]), float(s.x[-1])], "y_range_m": [float(s.y[0]), float(s.y[-1])],
        },
        "analysis_times": [_iso(t) for t in result.analysis_times],
        "lead_minutes": [result.lead_minutes(k) for k in range(result.n_leads)],
        "methods": result.methods,
        "checkpoint": None if result.checkpoint is None else {
            "path": str(result.checkpoint), "sha256": file_sha256(result.checkpoint)},
        "fss_windows": [{"requested_km": w.requested_km, "scale_km": w.scale_km, "pixels": w.pixels,
                         "effective_km": w.effective_km, "metric": first.fss_name(w)} for w in result.windows],
        "mask": "observation valid & Lagrangian source (LK motion) inside domain and coverage & every method finite",
        "n_samples": {format_value(result.lead_minutes(k)): int(first.n_pixels[k]) for k in range(result.n_leads)},
        "seconds_per_forecast": {n: result.seconds[n] / max(1, len(result.analysis_times)) for n in result.methods},
        "scores": scores,
        "versions": package_versions(),
    }


def markdown_table(result: EvaluationResult, leads_minutes: Sequence[float] | None = None) -> str:
    """All methods per lead time: CSI/POD/FAR at 1 mm h-1, CSI at 5, FSS at the table scale, MAE, samples."""
    fss = result.table_fss_metric()
    fss_label = fss.split("@", 1)[1].replace("_", " mm h-1, ")
    metrics = [("csi@1", "CSI 1"), ("pod@1", "POD 1"), ("far@1", "FAR 1"), ("csi@5", "CSI 5"),
               (fss, f"FSS {fss_label}"), ("mae", "MAE (mm h-1)")]
    acc = result.accumulators[result.methods[0]]
    metrics = [(m, label) for m, label in metrics if m in acc.metric_names()]
    header = ["lead", "method", *[label for _, label in metrics], "pixels"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for k in range(result.n_leads):
        lead = result.lead_minutes(k)
        if leads_minutes is not None and not any(math.isclose(lead, m) for m in leads_minutes):
            continue
        for name in result.methods:
            values = [result.value(name, k, m) for m, _ in metrics]
            cells = [f"+{format_value(lead)} min", name, *[f"{v:.3f}" if math.isfinite(v) else "-" for v in values],
                     str(int(result.accumulators[name].n_pixels[k]))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_caption(result: EvaluationResult) -> str:
    s = result.series
    times = result.analysis_times
    return (f"{result.config.name}: {len(times)} analysis time(s) {_iso(times[0])} to {_iso(times[-1])}, "
            f"{s.rates.shape[1]} x {s.rates.shape[2]} cells of {s.pixel_size_m / 1000:.3g} km, "
            f"{s.time_step_minutes:g}-min steps; thresholds in mm h-1; pixels = scored samples (same for all methods)")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_outputs(result: EvaluationResult, out_dir: Path) -> list[Path]:
    """Write scores.json, scores.csv, scores.md and the PNG plots and maps into ``out_dir``; return the paths."""
    from meteovision.pipeline.evaluate_plots import write_maps, write_skill_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "scores.json"
    _write_text(path, json.dumps(scores_document(result), indent=2) + "\n")
    written.append(path)
    path = out_dir / "scores.csv"
    with atomic_write(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "lead_minutes", "metric", "value", "n_samples"])
        writer.writeheader()
        for row in score_rows(result):
            writer.writerow({**row, "lead_minutes": format_value(row["lead_minutes"]),
                             "value": "nan" if not math.isfinite(row["value"]) else repr(row["value"])})
    written.append(path)
    path = out_dir / "scores.md"
    _write_text(path, table_caption(result) + "\n\n" + markdown_table(result) + "\n")
    written.append(path)
    written += write_skill_plots(result, out_dir)
    written += write_maps(result, out_dir)
    for p in written:
        logger.info("wrote %s", p)
    return written


def plot_metrics(result: EvaluationResult) -> list[str]:
    """Metrics drawn against lead time: CSI at 1 and 5 mm h-1, FSS at the table scale, MAE."""
    names = result.accumulators[result.methods[0]].metric_names()
    return [m for m in ("csi@1", "csi@5", result.table_fss_metric(), "mae") if m in names]
