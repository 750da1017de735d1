"""PNG figures of an evaluation: skill against lead time (one line per method) and side-by-side maps.

matplotlib's object API on an Agg canvas (no pyplot state), like ``quicklook``; rain rates on
the quicklook's discrete rain scale. Pixels outside the verification mask are greyed over,
pixels without data are beige.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyproj
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.inference.geography import draw_geography, has_geography
from meteovision.pipeline.inference.quicklook import NODATA_COLOUR, RAIN_ABOVE, RAIN_COLOURS, RAIN_LEVELS
from meteovision.pipeline.verification import scores
from meteovision.pipeline.verification.lead_scores import format_value

if TYPE_CHECKING:
    from meteovision.pipeline.verification.evaluate import EvaluationResult, MapCase

logger = logging.getLogger(__name__)

_COLOURS = {"network": "#d62728", "persistence": "#7f7f7f", "lk": "#1f77b4", "sprog": "#2ca02c"}
_LABELS = {"network": "network", "persistence": "persistence", "lk": "LK extrapolation", "sprog": "S-PROG"}
_STYLES = {"network": "-", "persistence": ":", "lk": "--", "sprog": "-."}
#: Colours of named checkpoint columns, in order (none of the baselines' colours).
_CHECKPOINT_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_MASK_GREY = (0.55, 0.55, 0.55, 0.55)


def method_colours(methods: list[str] | tuple[str, ...]) -> dict[str, str]:
    """A distinct colour per method: the baselines' own, then the checkpoints' in order."""
    networks = [m for m in methods if m not in _COLOURS or m == "network"]
    out = {m: _CHECKPOINT_COLOURS[i % len(_CHECKPOINT_COLOURS)] for i, m in enumerate(networks)}
    return {m: out.get(m) or _COLOURS[m] for m in methods}


def metric_slug(metric: str) -> str:
    """File-name form of a metric: ``csi@1`` -> ``csi_1``, ``fss@1_16km`` -> ``fss_1mm_16km``."""
    if metric.startswith("fss@"):
        threshold, scale = metric[4:].split("_", 1)
        return f"fss_{threshold}mm_{scale}"
    return re.sub(r"[^A-Za-z0-9.]+", "_", metric).strip("_")


def _metric_label(metric: str) -> str:
    if metric.startswith("fss@"):
        threshold, scale = metric[4:].split("_", 1)
        return f"FSS at {threshold} mm h-1, {scale.replace('km', ' km')}"
    if "@" in metric:
        key, threshold = metric.split("@", 1)
        return f"{key.upper()} at {threshold} mm h-1"
    return {"mae": "MAE (mm h-1)", "bias": "bias (mm h-1)"}.get(metric, metric)


def _save(fig: Figure, path: Path, title: str) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Title": title, "Software": "meteovision"})
    return path


def write_skill_plots(result: EvaluationResult, out_dir: Path) -> list[Path]:
    """``skill_vs_lead_<metric>.png`` for CSI at 1 and 5 mm h-1, FSS at the table scale and MAE."""
    leads = [result.lead_minutes(k) for k in range(result.n_leads)]
    written = []
    for metric in plot_metrics(result):
        fig = Figure(figsize=(6.4, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        colours = method_colours(list(result.methods))
        for name in result.methods:
            values = [result.value(name, k, metric) for k in range(result.n_leads)]
            ax.plot(leads, values, _STYLES.get(name, "-"), marker="o", ms=4, color=colours[name],
                    label=_LABELS.get(name, name))
        ax.set_xlabel("lead time (min)")
        ax.set_ylabel(_metric_label(metric))
        ax.set_xticks(leads if len(leads) <= 12 else leads[1::2])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        n = len(result.analysis_times)
        ax.set_title(f"{result.config.name}: {_metric_label(metric)}\n{n} analysis time(s), same mask for all",
                     fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"skill_vs_lead_{metric_slug(metric)}.png", metric))
    return written


def _csi(forecast: np.ndarray, observation: np.ndarray, mask: np.ndarray, threshold: float = 1.0) -> float:
    table = scores.contingency_sums(forecast[None], observation[None], mask[None], [threshold]).table()
    return float(scores.csi(table["hits"], table["misses"], table["false_alarms"])[0, 0])


def _map_panels(case: MapCase) -> list[tuple[str, np.ndarray]]:
    preferred = ("network", "lk", "persistence", "sprog")
    names = [n for n in preferred if n in case.forecasts] + [n for n in case.forecasts if n not in preferred]
    return [("observation", case.observation)] + [(n, case.forecasts[n]) for n in names]


def write_map(case: MapCase, result: EvaluationResult, path: Path) -> Path:
    """Observation and each method side by side at one lead, one rain scale, the unscored area greyed."""
    s = result.series
    panels = _map_panels(case)
    h, w = case.observation.shape
    extent = ((s.x[0] - s.pixel_size_m / 2) / 1000.0, (s.x[-1] + s.pixel_size_m / 2) / 1000.0,
              (s.y[-1] - s.pixel_size_m / 2) / 1000.0, (s.y[0] + s.pixel_size_m / 2) / 1000.0)
    panel = 4.2
    # wide domains: at most three panels a row, so each stays readable
    ncols = len(panels) if h >= w or len(panels) <= 3 else 3
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(panel * ncols + 1.0, nrows * max(2.2, min(8.0, panel * h / w + 0.8)) + 0.5), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    for spare in grid[len(panels) :]:
        spare.set_axis_off()
    axes = grid[: len(panels)]
    rain = ListedColormap(RAIN_COLOURS).with_extremes(over=RAIN_ABOVE, under=(1.0, 1.0, 1.0, 0.0), bad=NODATA_COLOUR)
    norm = BoundaryNorm(RAIN_LEVELS, rain.N)
    unscored = np.zeros((h, w, 4))
    unscored[~case.mask] = _MASK_GREY
    analysis = case.analysis_time.astype("datetime64[m]")
    valid = analysis + np.timedelta64(round(case.lead_minutes), "m")
    image = None
    for ax, (name, values) in zip(axes, panels, strict=True):
        image = ax.imshow(np.ma.masked_invalid(values), cmap=rain, norm=norm, extent=extent, origin="upper",
                          interpolation="nearest")
        ax.imshow(unscored, extent=extent, origin="upper", interpolation="nearest")
        title = _LABELS.get(name, name)
        if name != "observation":
            title += f"\nCSI at 1 mm h-1: {_csi(values, case.observation, case.mask):.2f}"
        else:
            title += f"\nvalid {np.datetime_as_string(valid, unit='m')}Z"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    crs = pyproj.CRS.from_wkt(s.crs_wkt) if s.crs_wkt else None
    if crs is not None and has_geography(crs) and not crs.is_geographic:
        for ax in axes:  # the projected lines are computed once (cached) and drawn on every panel
            draw_geography(ax, crs, extent, 1000.0)
    else:
        for ax in axes:
            ax.set_xlabel("x (km)", fontsize=8)
        for ax in grid[::ncols]:
            ax.set_ylabel("y (km)", fontsize=8)
    fig.legend(handles=[Patch(facecolor=NODATA_COLOUR, edgecolor="0.3", label="no data"),
                        Patch(facecolor=_MASK_GREY, edgecolor="0.3", label="not scored (same for all)")],
               loc="outside lower left", fontsize=7, ncol=2)
    if image is not None:
        bar = fig.colorbar(image, ax=list(grid), extend="max", ticks=list(RAIN_LEVELS), shrink=0.9,
                           aspect=30)
        bar.set_label("rain rate (mm h-1)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{result.config.name} | valid {np.datetime_as_string(valid, unit='m')}Z | "
                 f"+{format_value(case.lead_minutes)} min (analysis {np.datetime_as_string(analysis, unit='m')}Z)",
                 fontsize=9)
    return _save(fig, path, f"{result.config.name} +{format_value(case.lead_minutes)} min")


def write_maps(result: EvaluationResult, out_dir: Path) -> list[Path]:
    """``maps_<analysis time>_+<lead>min.png`` for each map case of the result."""
    written = []
    for case in result.maps:
        iso = str(np.datetime_as_string(case.analysis_time.astype("datetime64[m]"), unit="m"))
        stamp = iso.replace("-", "").replace(":", "") + "Z"
        path = out_dir / f"maps_{stamp}_+{format_value(case.lead_minutes)}min.png"
        written.append(write_map(case, result, path))
    return written


def plot_metrics(result: EvaluationResult) -> list[str]:
    """Metrics drawn against lead time: CSI at 1 and 5 mm h-1, FSS at the table scale, MAE."""
    names = result.accumulators[result.methods[0]].metric_names()
    return [m for m in ("csi@1", "csi@5", result.table_fss_metric(), "mae") if m in names]
