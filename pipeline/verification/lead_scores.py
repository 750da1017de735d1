"""Verification of nowcasts per lead time: contingency scores, FSS and MAE, exact over many analysis times.

One :class:`LeadTimeScores` accumulates one method's forecasts against the observations over
any number of analysis times. Its states are sums (integer counts, float64 sums), so the
scores it gives are those of all pixels of all analysis times pooled, never a mean of
per-time ratios:

* contingency table per lead time and threshold (event = value >= threshold): hits, misses,
  false alarms, correct negatives -> CSI = H/(H+M+F), POD = H/(H+M), FAR = F/(H+F);
* fractions skill score (Roberts and Lean 2008) per lead time and neighbourhood:
  FSS = 1 - sum((Pf - Po)^2) / sum(Pf^2 + Po^2), numerator and denominator summed over the
  analysis times (the aggregate of pysteps' ``fss_accum``), not a mean of per-time FSS;
* MAE = sum |f - o| / n, and the sample count n (pixels) and the number of analysis times.

Every update takes an explicit boolean mask (True = scored). The evaluation builds one mask
per analysis time and lead time and gives the *same* mask to every method, so all methods
are scored on the same pixels. Pixels outside the mask count for nothing: not in the tables,
not in the neighbourhoods of FSS. The fraction of a scored pixel is (events among the scored
pixels of its window) / (number of scored pixels in its window); the outside of the grid is
not scored either. So a masked area (outside radar coverage, pixels whose Lagrangian source
lies outside the domain) is "unknown", not "no rain". This differs at the grid edges from
pysteps' ``fss`` and from ``meteovision.pipeline.training.metrics.FractionsSkillScore``, which count
the outside of the grid as non-events.

FSS scales are given in km and converted to odd windows of pixels for the grid's spacing by
:func:`fss_windows`. Ratios with a zero denominator (no event observed or forecast, no pixel
scored) are NaN, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from meteovision.datasets.errors import MeteovisionError

__all__ = [
    "FssWindow",
    "LeadTimeScores",
    "Score",
    "VerificationError",
    "box_sum",
    "format_value",
    "fss_windows",
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

    Integer input gives exact integer sums (an integral image in int64).
    """
    if n < 1 or n % 2 == 0:
        raise VerificationError(f"box_sum: the window must be a positive odd number of pixels, got {n}")
    if n == 1:
        return x.astype(np.int64 if x.dtype.kind in "biu" else np.float64)
    dtype = np.int64 if x.dtype.kind in "biu" else np.float64
    h, w = x.shape
    r = n // 2
    padded = np.zeros((h + 2 * r + 1, w + 2 * r + 1), dtype=dtype)
    padded[r + 1 : r + 1 + h, r + 1 : r + 1 + w] = x
    integral = padded.cumsum(axis=0).cumsum(axis=1)
    return (
        integral[n : n + h, n : n + w] - integral[:h, n : n + w] - integral[n : n + h, :w] + integral[:h, :w]
    )


@dataclass(frozen=True)
class Score:
    """One score of one lead time: ``metric`` (e.g. ``csi@1``, ``fss@1_16km``, ``mae``), value and sample count."""

    lead_index: int
    metric: str
    value: float
    n_samples: int


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


class LeadTimeScores:
    """Exact accumulation of one method's scores per lead time over many analysis times.

    ``update(forecast, observation, mask)`` takes fields of shape (n_leads, H, W) for one
    analysis time (NaN never enters: a NaN under a True mask is an error, so that the caller's
    shared mask is really what is scored). :meth:`scores` gives :class:`Score` records.
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

    # ------------------------------------------------------------------ update
    def update(self, forecast: np.ndarray, observation: np.ndarray, mask: np.ndarray) -> None:
        """Add one analysis time: (n_leads, H, W) forecast, observation and boolean mask (True = scored)."""
        shape = (self.n_leads, *observation.shape[-2:])
        for what, arr in (("forecast", forecast), ("observation", observation), ("mask", mask)):
            if arr.shape != shape or arr.ndim != 3:
                raise VerificationError(f"LeadTimeScores: {what} has shape {arr.shape}, expected {shape}")
        if mask.dtype != np.bool_:
            raise VerificationError(f"LeadTimeScores: the mask must be boolean (True = scored), got {mask.dtype}")
        for what, arr in (("forecast", forecast), ("observation", observation)):
            bad = mask & ~np.isfinite(arr)
            if bad.any():
                raise VerificationError(
                    f"LeadTimeScores: the {what} is NaN or infinite at {int(bad.sum())} scored pixel(s); "
                    "leave them out of the mask"
                )
        for lead in range(self.n_leads):
            self._update_lead(lead, forecast[lead], observation[lead], mask[lead])

    def _update_lead(self, lead: int, f: np.ndarray, o: np.ndarray, m: np.ndarray) -> None:
        n = int(m.sum())
        self.n_times[lead] += 1
        if n == 0:
            return
        fv = f[m].astype(np.float64)
        ov = o[m].astype(np.float64)
        self.n_pixels[lead] += n
        err = fv - ov
        self.sum_abs_error[lead] += float(np.abs(err).sum())
        self.sum_error[lead] += float(err.sum())
        for k, t in enumerate(self.thresholds):
            fe = fv >= t
            oe = ov >= t
            self.hits[lead, k] += int((fe & oe).sum())
            self.forecast_events[lead, k] += int(fe.sum())
            self.observed_events[lead, k] += int(oe.sum())
        valid = m.astype(np.int64)
        f_event = ((f >= self.fss_threshold) & m).astype(np.int64)
        o_event = ((o >= self.fss_threshold) & m).astype(np.int64)
        for s, window in enumerate(self.windows):
            count = box_sum(valid, window.pixels)[m].astype(np.float64)
            pf = box_sum(f_event, window.pixels)[m] / count
            po = box_sum(o_event, window.pixels)[m] / count
            self.fss_num[lead, s] += float(((pf - po) ** 2).sum())
            self.fss_den[lead, s] += float((pf**2).sum() + (po**2).sum())

    # ------------------------------------------------------------------ results
    def contingency(self) -> dict[str, np.ndarray]:
        """Hits, misses, false alarms and correct negatives, int64 arrays (n_leads, n_thresholds)."""
        hits = self.hits
        misses = self.observed_events - hits
        false_alarms = self.forecast_events - hits
        correct_negatives = self.n_pixels[:, None] - self.forecast_events - self.observed_events + hits
        return {"hits": hits.copy(), "misses": misses, "false_alarms": false_alarms,
                "correct_negatives": correct_negatives}

    def csi(self) -> np.ndarray:
        c = self.contingency()
        return _ratio(c["hits"], c["hits"] + c["misses"] + c["false_alarms"])

    def pod(self) -> np.ndarray:
        c = self.contingency()
        return _ratio(c["hits"], c["hits"] + c["misses"])

    def far(self) -> np.ndarray:
        c = self.contingency()
        return _ratio(c["false_alarms"], c["hits"] + c["false_alarms"])

    def fss(self) -> np.ndarray:
        """(n_leads, n_windows): 1 - sum (Pf - Po)^2 / sum (Pf^2 + Po^2); NaN where neither field has events."""
        return 1.0 - _ratio(self.fss_num, self.fss_den)

    def mae(self) -> np.ndarray:
        return _ratio(self.sum_abs_error, self.n_pixels)

    def bias(self) -> np.ndarray:
        """Mean of forecast minus observation (mm h-1)."""
        return _ratio(self.sum_error, self.n_pixels)

    def fss_name(self, window: FssWindow) -> str:
        return f"fss@{format_value(self.fss_threshold)}_{window.name}"

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for key in ("csi", "pod", "far"):
            names += [f"{key}@{format_value(t)}" for t in self.thresholds]
        names += [self.fss_name(w) for w in self.windows]
        return [*names, "mae", "bias"]

    def scores(self) -> Iterator[Score]:
        """Every score of every lead time, with the number of scored pixels as the sample count."""
        tables = {"csi": self.csi(), "pod": self.pod(), "far": self.far()}
        fss, mae, bias = self.fss(), self.mae(), self.bias()
        counts = self.contingency()
        for lead in range(self.n_leads):
            n = int(self.n_pixels[lead])
            for key, table in tables.items():
                for k, t in enumerate(self.thresholds):
                    yield Score(lead, f"{key}@{format_value(t)}", float(table[lead, k]), n)
            for s, window in enumerate(self.windows):
                yield Score(lead, self.fss_name(window), float(fss[lead, s]), n)
            yield Score(lead, "mae", float(mae[lead]), n)
            yield Score(lead, "bias", float(bias[lead]), n)
            for key, table in counts.items():
                for k, t in enumerate(self.thresholds):
                    yield Score(lead, f"{key}@{format_value(t)}", float(table[lead, k]), n)
            yield Score(lead, "analysis_times", float(self.n_times[lead]), n)
