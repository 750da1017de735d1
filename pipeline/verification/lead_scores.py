"""Verification of nowcasts per lead time: contingency scores, FSS and MAE, exact over many analysis times.

One :class:`LeadTimeScores` accumulates one method's forecasts against the observations over
any number of analysis times. Its states are sums (integer counts, float64 sums), so the
scores it gives are those of all pixels of all analysis times pooled, never a mean of
per-time ratios:

* contingency table per lead time and threshold (event = value >= threshold): hits, misses,
  false alarms, correct negatives -> CSI = H/(H+M+F), POD = H/(H+M), FAR = F/(H+F), FBI;
* fractions skill score (Roberts and Lean 2008) per lead time and neighbourhood:
  FSS = 1 - sum((Pf - Po)^2) / sum(Pf^2 + Po^2), numerator and denominator summed over the
  analysis times (the aggregate of pysteps' ``fss_accum``), not a mean of per-time FSS;
* MAE = sum |f - o| / n, and the sample count n (pixels) and the number of analysis times.

Every update takes an explicit boolean mask (True = scored). The evaluation builds one mask
per analysis time and lead time and gives the *same* mask to every method, so all methods
are scored on the same pixels. The counts, sums and ratios come from the one scoring kernel,
:mod:`meteovision.pipeline.verification.scores`, which ``meteovision test``'s metrics call too;
its docstring states the edge rules (events are >= threshold, masked pixels and the outside
of the grid are "unknown", not "no rain", 0/0 is NaN). Frequency bias (``fbi@t``) is
(H + F) / (H + M); ``bias`` is the mean of forecast minus observation in mm h-1.

FSS scales are given in km and converted to odd windows of pixels for the grid's spacing by
:func:`fss_windows`. Ratios with a zero denominator (no event observed or forecast, no pixel
scored) are NaN, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.verification import scores

__all__ = [
    "FssWindow",
    "LeadSums",
    "LeadTimeScores",
    "Score",
    "VerificationError",
    "box_sum",
    "format_value",
    "fss_windows",
    "score_methods",
]


class VerificationError(MeteovisionError, ValueError):
    """Bad verification settings, or fields that cannot be scored together; the message says which."""


def format_value(value: float) -> str:
    """Compact, exact text of a threshold or scale for names: 0.5 -> "0.5", 1.0 -> "1", 16.0 -> "16"."""
    return str(np.format_float_positional(float(value), trim="-"))


@dataclass(frozen=True)
class FssWindow:
    """An FSS neighbourhood: the scale asked for, the odd pixel window used, and the scale reported.

    ``scale_km`` is what the tables call the scale: the scale asked for, or the grid spacing
    when the scale asked for is smaller than one pixel. ``effective_km`` = ``pixels`` x spacing.
    """

    requested_km: float
    scale_km: float
    pixels: int
    effective_km: float

    @property
    def name(self) -> str:
        return f"{format_value(self.scale_km)}km"


#: Relative tolerance within which scale / spacing counts as a whole number of cells.
_SNAP = 1e-3


def fss_windows(scales_km: Sequence[float], pixel_size_m: float) -> list[FssWindow]:
    """Odd pixel windows for FSS scales in km on a grid of ``pixel_size_m``.

    The window is the odd number of pixels nearest to scale / spacing, ties to the larger
    (n = 2 floor(s / 2dx) + 1): on a 2 km grid 4 km -> 3 px, 16 km -> 9 px; on a 1 km grid
    16 km -> 17 px. A ratio within 0.1 % of a whole number counts as that number (grids of
    1000.04 m cells). A scale below one pixel is the one-pixel scale, reported as the grid
    spacing (3 significant digits); scales that land on the same window are reported once (the first).
    """
    if not math.isfinite(pixel_size_m) or pixel_size_m <= 0:
        raise VerificationError(f"FSS: the grid spacing must be a positive number of metres, got {pixel_size_m}")
    if not scales_km:
        raise VerificationError("FSS: give at least one scale (km)")
    pixel_km = pixel_size_m / 1000.0
    out: list[FssWindow] = []
    seen: set[int] = set()
    for scale in scales_km:
        s = float(scale)
        if not math.isfinite(s) or s <= 0:
            raise VerificationError(f"FSS: scales must be positive km, got {list(scales_km)}")
        ratio = s / pixel_km
        if abs(ratio - round(ratio)) <= _SNAP * max(1.0, ratio):
            ratio = float(round(ratio))  # 16 km on 1000.04 m cells is 16 cells, not 15.9994
        if ratio < 1.0:
            pixels, reported = 1, float(f"{pixel_km:.3g}")
        else:
            pixels, reported = 2 * math.floor(ratio / 2.0) + 1, s
        if pixels in seen:
            continue
        seen.add(pixels)
        out.append(FssWindow(requested_km=s, scale_km=reported, pixels=pixels, effective_km=pixels * pixel_km))
    return out


def box_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``x`` (H, W) over the centred n x n window of every pixel (n odd), zero outside the grid.

    Integer input gives exact integer sums (the kernel's int64 cumulative sums).
    """
    if n < 1 or n % 2 == 0:
        raise VerificationError(f"box_sum: the window must be a positive odd number of pixels, got {n}")
    return scores.box_sums(x, [n])[0].numpy()


@dataclass(frozen=True)
class Score:
    """One score of one lead time: ``metric`` (e.g. ``csi@1``, ``fss@1_16km``, ``mae``), value and sample count."""

    lead_index: int
    metric: str
    value: float
    n_samples: int


def _added(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Sums of the keys both hold (a threshold or scale missing from one side is not pooled)."""
    return {k: a[k] + b[k] for k in a if k in b}


@dataclass(frozen=True)
class LeadSums:
    """The sufficient statistics of one method at one lead: counts and sums, addable across times and windows.

    Thresholds are keyed by their label (``format_value``), FSS sums by their metric name
    (``fss@1_16km``), so sums of windows on other grids pool by the scale in km. Adding two
    keeps the thresholds and scales both have. :meth:`scores` is the only place the evaluation
    turns sums into ratios (with the kernel's ratio functions).
    """

    n: int
    times: int
    sum_abs_error: float
    sum_error: float
    hits: dict[str, float]
    forecast_events: dict[str, float]
    observed_events: dict[str, float]
    fss_diff_sq: dict[str, float]
    fss_den: dict[str, float]

    def __add__(self, other: LeadSums) -> LeadSums:
        return LeadSums(
            n=self.n + other.n, times=self.times + other.times, sum_abs_error=self.sum_abs_error + other.sum_abs_error,
            sum_error=self.sum_error + other.sum_error, hits=_added(self.hits, other.hits),
            forecast_events=_added(self.forecast_events, other.forecast_events),
            observed_events=_added(self.observed_events, other.observed_events),
            fss_diff_sq=_added(self.fss_diff_sq, other.fss_diff_sq), fss_den=_added(self.fss_den, other.fss_den))

    def scores(self) -> dict[str, float]:
        """Every score and count by metric name: csi/pod/far/fbi@t, fss@..., mae, bias, the table counts."""
        labels = list(self.hits)
        h = np.array([self.hits[t] for t in labels], dtype=np.float64)
        fe = np.array([self.forecast_events[t] for t in labels], dtype=np.float64)
        oe = np.array([self.observed_events[t] for t in labels], dtype=np.float64)
        m, f = oe - h, fe - h
        tables = {"csi": scores.csi(h, m, f), "pod": scores.pod(h, m), "far": scores.far(h, f),
                  "fbi": scores.frequency_bias(h, m, f)}
        out: dict[str, float] = {}
        for key, values in tables.items():
            out.update({f"{key}@{t}": float(values[k]) for k, t in enumerate(labels)})
        names = list(self.fss_diff_sq)
        value = scores.fss(np.array([self.fss_diff_sq[s] for s in names]), np.array([self.fss_den[s] for s in names]),
                           np.zeros(len(names)))
        out.update({s: float(value[i]) for i, s in enumerate(names)})
        n = np.array([float(self.n)])
        out["mae"] = float(scores.mae(np.array([self.sum_abs_error]), n)[0])
        out["bias"] = float(scores.ratio(np.array([self.sum_error]), n)[0])
        counts = {"hits": h, "misses": m, "false_alarms": f, "correct_negatives": self.n - fe - oe + h}
        for key, count in counts.items():
            out.update({f"{key}@{t}": float(count[k]) for k, t in enumerate(labels)})
        out["analysis_times"] = float(self.times)
        return out


class LeadTimeScores:
    """Exact accumulation of one method's scores per lead time over many analysis times.

    ``update(forecast, observation, mask)`` takes fields of shape (n_leads, H, W) for one
    analysis time (NaN never enters: a NaN under a True mask is an error, so that the caller's
    shared mask is really what is scored). :func:`score_methods` scores several methods against
    one observation and mask, computing the observation's side once. :meth:`scores` gives
    :class:`Score` records; :meth:`merge` adds another accumulator's sums (parallel workers).
    """

    def __init__(
        self,
        n_leads: int,
        thresholds: Sequence[float],
        fss_threshold: float,
        windows: Sequence[FssWindow],
    ) -> None:
        if n_leads < 1:
            raise VerificationError(f"LeadTimeScores: n_leads must be >= 1, got {n_leads}")
        values = [float(t) for t in thresholds]
        if not values or not all(math.isfinite(v) for v in values):
            raise VerificationError(f"LeadTimeScores: give finite thresholds, got {list(thresholds)}")
        if len({format_value(v) for v in values}) != len(values):
            raise VerificationError(f"LeadTimeScores: thresholds repeat: {values}")
        if not math.isfinite(fss_threshold):
            raise VerificationError(f"LeadTimeScores: the FSS threshold must be finite, got {fss_threshold}")
        if len({w.pixels for w in windows}) != len(windows):
            raise VerificationError("LeadTimeScores: FSS windows repeat")
        self.n_leads = n_leads
        self.thresholds = values
        self.fss_threshold = float(fss_threshold)
        self.windows = list(windows)
        k, s = len(values), len(self.windows)
        self.hits = np.zeros((n_leads, k), dtype=np.int64)
        self.forecast_events = np.zeros((n_leads, k), dtype=np.int64)
        self.observed_events = np.zeros((n_leads, k), dtype=np.int64)
        self.n_pixels = np.zeros(n_leads, dtype=np.int64)
        self.n_times = np.zeros(n_leads, dtype=np.int64)
        self.sum_abs_error = np.zeros(n_leads, dtype=np.float64)
        self.sum_error = np.zeros(n_leads, dtype=np.float64)
        self.fss_num = np.zeros((n_leads, s), dtype=np.float64)
        self.fss_den = np.zeros((n_leads, s), dtype=np.float64)

    def empty_like(self) -> LeadTimeScores:
        """A zeroed accumulator with the same leads, thresholds and windows."""
        return LeadTimeScores(self.n_leads, self.thresholds, self.fss_threshold, self.windows)

    # ------------------------------------------------------------------ update
    def update(self, forecast: np.ndarray, observation: np.ndarray, mask: np.ndarray) -> None:
        """Add one analysis time: (n_leads, H, W) forecast, observation and boolean mask (True = scored)."""
        score_methods({"forecast": self}, {"forecast": forecast}, observation, mask)

    def _check(self, what: str, arr: np.ndarray, shape: tuple[int, ...], mask: np.ndarray) -> None:
        if arr.shape != shape or arr.ndim != 3:
            raise VerificationError(f"LeadTimeScores: {what} has shape {arr.shape}, expected {shape}")
        bad = mask & ~np.isfinite(arr)
        if bad.any():
            raise VerificationError(f"LeadTimeScores: the {what} is NaN or infinite at {int(bad.sum())} scored "
                                    "pixel(s); leave them out of the mask")

    def _add(self, table: scores.ContingencySums, errors: scores.ErrorSums, fss: scores.FssSums) -> None:
        self.n_times += 1
        self.n_pixels += table.n.numpy()
        self.hits += table.hits.numpy()
        self.forecast_events += table.forecast_events.numpy()
        self.observed_events += table.observed_events.numpy()
        self.sum_abs_error += errors.sum_abs_error.numpy()
        self.sum_error += errors.sum_error.numpy()
        self.fss_num += fss.diff_sq.numpy()
        self.fss_den += (fss.fct_sq + fss.obs_sq).numpy()

    def merge(self, other: LeadTimeScores) -> None:
        """Add the sums of an accumulator with the same leads, thresholds and windows."""
        if (other.n_leads, other.thresholds, other.fss_threshold, other.windows) != (
                self.n_leads, self.thresholds, self.fss_threshold, self.windows):
            raise VerificationError("LeadTimeScores: cannot merge accumulators of other leads, thresholds or windows")
        for name in ("hits", "forecast_events", "observed_events", "n_pixels", "n_times", "sum_abs_error",
                     "sum_error", "fss_num", "fss_den"):
            getattr(self, name).__iadd__(getattr(other, name))

    # ------------------------------------------------------------------ results
    def lead_sums(self, lead: int) -> LeadSums:
        """The counts and sums of one lead, keyed by threshold label and FSS metric name."""
        labels = [format_value(t) for t in self.thresholds]
        names = [self.fss_name(w) for w in self.windows]
        return LeadSums(
            n=int(self.n_pixels[lead]), times=int(self.n_times[lead]),
            sum_abs_error=float(self.sum_abs_error[lead]), sum_error=float(self.sum_error[lead]),
            hits={t: float(self.hits[lead, k]) for k, t in enumerate(labels)},
            forecast_events={t: float(self.forecast_events[lead, k]) for k, t in enumerate(labels)},
            observed_events={t: float(self.observed_events[lead, k]) for k, t in enumerate(labels)},
            fss_diff_sq={s: float(self.fss_num[lead, i]) for i, s in enumerate(names)},
            fss_den={s: float(self.fss_den[lead, i]) for i, s in enumerate(names)})

    def contingency(self) -> dict[str, np.ndarray]:
        """Hits, misses, false alarms and correct negatives, int64 arrays (n_leads, n_thresholds)."""
        hits = self.hits
        misses = self.observed_events - hits
        false_alarms = self.forecast_events - hits
        correct_negatives = self.n_pixels[:, None] - self.forecast_events - self.observed_events + hits
        return {"hits": hits.copy(), "misses": misses, "false_alarms": false_alarms,
                "correct_negatives": correct_negatives}

    def _table(self, key: str) -> np.ndarray:
        return np.array([[self.lead_sums(k).scores()[f"{key}@{format_value(t)}"] for t in self.thresholds]
                         for k in range(self.n_leads)])

    def csi(self) -> np.ndarray:
        return self._table("csi")

    def pod(self) -> np.ndarray:
        return self._table("pod")

    def far(self) -> np.ndarray:
        return self._table("far")

    def frequency_bias(self) -> np.ndarray:
        return self._table("fbi")

    def fss(self) -> np.ndarray:
        """(n_leads, n_windows): 1 - sum (Pf - Po)^2 / sum (Pf^2 + Po^2); NaN where neither field has events."""
        return scores.fss(self.fss_num, self.fss_den, np.zeros_like(self.fss_den)).numpy()

    def mae(self) -> np.ndarray:
        return scores.mae(self.sum_abs_error, self.n_pixels).numpy()

    def bias(self) -> np.ndarray:
        """Mean of forecast minus observation (mm h-1)."""
        return scores.ratio(self.sum_error, self.n_pixels).numpy()

    def fss_name(self, window: FssWindow) -> str:
        return f"fss@{format_value(self.fss_threshold)}_{window.name}"

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for key in ("csi", "pod", "far", "fbi"):
            names += [f"{key}@{format_value(t)}" for t in self.thresholds]
        names += [self.fss_name(w) for w in self.windows]
        return [*names, "mae", "bias"]

    def scores(self) -> Iterator[Score]:
        """Every score and count of every lead time, with the number of scored pixels as the sample count."""
        for lead in range(self.n_leads):
            n = int(self.n_pixels[lead])
            for metric, value in self.lead_sums(lead).scores().items():
                yield Score(lead, metric, value, n)


def score_methods(accumulators: Mapping[str, LeadTimeScores], forecasts: Mapping[str, np.ndarray],
                  observation: np.ndarray, mask: np.ndarray) -> None:
    """Add one analysis time of every method, all on one observation and mask (n_leads, H, W).

    The observation's events, window counts and FSS fractions are computed once by the kernel
    (:mod:`~meteovision.pipeline.verification.scores`) and shared by every method.
    """
    first = next(iter(accumulators.values()))
    shape = (first.n_leads, *observation.shape[-2:])
    if mask.shape != shape or mask.ndim != 3:
        raise VerificationError(f"LeadTimeScores: mask has shape {mask.shape}, expected {shape}")
    if mask.dtype != np.bool_:
        raise VerificationError(f"LeadTimeScores: the mask must be boolean (True = scored), got {mask.dtype}")
    first._check("observation", observation, shape, mask)
    for name, acc in accumulators.items():
        if (acc.n_leads, acc.fss_threshold, acc.windows) != (first.n_leads, first.fss_threshold, first.windows):
            raise VerificationError(f"LeadTimeScores: {name} has other leads or FSS windows than the others")
        acc._check("forecast", forecasts[name], shape, mask)
    mask = np.ascontiguousarray(mask)
    names = list(accumulators)
    events = {t: scores.observed_events(observation, mask, t)
              for t in {tuple(a.thresholds) for a in accumulators.values()}}
    fss = scores.fss_sums_of([forecasts[n] for n in names], observation, mask, first.fss_threshold,
                             [w.pixels for w in first.windows])
    for name, fss_of_method in zip(names, fss, strict=True):
        acc = accumulators[name]
        acc._add(scores.forecast_contingency(forecasts[name], events[tuple(acc.thresholds)]),
                 scores.error_sums(forecasts[name], observation, mask), fss_of_method)
