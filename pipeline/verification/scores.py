"""The one scoring kernel: sufficient statistics (counts and sums) and the ratios computed from them.

Training (``meteovision.pipeline.training.metrics``, torchmetrics states summed across DDP
ranks) and the real-radar evaluation (:mod:`meteovision.pipeline.verification.lead_scores`)
both call these functions, so ``meteovision test`` and ``meteovision evaluate`` give the same
CSI, POD, FAR, frequency bias, FSS and MAE on the same arrays. Inputs may be numpy arrays or
torch tensors (numpy goes through ``torch.from_numpy``, no copy); the sums come back as
tensors (int64 counts, float64 sums) on the input's device.

The edge rules, written here once:

* **Events**: a value is an event when ``value >= threshold`` (not ``>``).
* **Scored pixels**: the caller gives a boolean ``valid`` (True = scored). Pixels outside it
  count for nothing: not in the tables, not in the sums, not in any FSS neighbourhood.
  (Training makes ``valid`` = its mask and finite values; the evaluation refuses NaN under
  its shared mask.)
* **FSS neighbourhoods**: the n x n window of pixel i spans i - n//2 .. i - n//2 + n - 1 on
  each axis (centred for odd n; scipy's ``uniform_filter`` placement for even n). The
  fraction of a scored pixel is (events among the scored pixels of its window) / (number of
  scored pixels of its window). The outside of the grid is not scored either, like a masked
  pixel: an edge is "unknown", not "no rain". Away from the edges and masks this is exactly
  pysteps' ``fss``; at the grid edges pysteps counts the outside as non-events.
* **Aggregation**: FSS = 1 - sum (Pf - Po)^2 / sum (Pf^2 + Po^2) with both sums taken over
  every pixel and field first (pysteps' ``fss_accum``), never a mean of per-field FSS.
* **0/0**: a ratio whose denominator is zero (no event observed or forecast, no pixel
  scored) is NaN, never 0.

Box sums come from one integer integral image per field (exact), shared by every window;
the observation's fractions are computed once per field and shared by every method scored
against it (:class:`ObservedFractions`). Float32 fields are compared with their thresholds in
float32 (each threshold rounded up to the least float32 not below it), which is exactly the
float64 comparison without widening the fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ContingencySums",
    "ErrorSums",
    "FssSums",
    "ObservedFractions",
    "as_tensor",
    "at_least",
    "box_sums",
    "contingency_sums",
    "csi",
    "error_sums",
    "far",
    "frequency_bias",
    "fss",
    "fss_sums",
    "mae",
    "observed_fractions",
    "pod",
    "ratio",
]

Array = np.ndarray | Tensor


def as_tensor(x: Array) -> Tensor:
    """A tensor view of a numpy array (no copy when contiguous) or the tensor itself, detached."""
    if isinstance(x, Tensor):
        return x.detach()
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------- ratios
def ratio(num: Array, den: Array) -> Tensor:
    """``num / den`` in float64, NaN where ``den`` is zero (an undefined score, not a zero one)."""
    n = as_tensor(num).to(torch.float64)
    d = as_tensor(den).to(torch.float64)
    safe = torch.where(d != 0, d, torch.ones_like(d))
    return torch.where(d != 0, n / safe, torch.full_like(n / safe, float("nan")))


def csi(hits: Array, misses: Array, false_alarms: Array) -> Tensor:
    """Critical success index H / (H + M + F)."""
    h = as_tensor(hits)
    return ratio(h, h + as_tensor(misses) + as_tensor(false_alarms))


def pod(hits: Array, misses: Array) -> Tensor:
    """Probability of detection H / (H + M)."""
    h = as_tensor(hits)
    return ratio(h, h + as_tensor(misses))


def far(hits: Array, false_alarms: Array) -> Tensor:
    """False alarm ratio F / (H + F)."""
    f = as_tensor(false_alarms)
    return ratio(f, as_tensor(hits) + f)


def frequency_bias(hits: Array, misses: Array, false_alarms: Array) -> Tensor:
    """Frequency bias (H + F) / (H + M): forecast events over observed events."""
    h = as_tensor(hits)
    return ratio(h + as_tensor(false_alarms), h + as_tensor(misses))


def fss(diff_sq: Array, fct_sq: Array, obs_sq: Array) -> Tensor:
    """Fractions skill score 1 - sum (Pf - Po)^2 / sum (Pf^2 + Po^2) from the sums."""
    return 1.0 - ratio(diff_sq, as_tensor(fct_sq) + as_tensor(obs_sq))


def mae(sum_abs_error: Array, n: Array) -> Tensor:
    """Mean absolute error sum |f - o| / n."""
    return ratio(sum_abs_error, n)


# ---------------------------------------------------------------------------- sums
def _fields(x: Tensor) -> Tensor:
    """(N, ...) -> (N, P): every field flattened (a 0-d or 1-d input is one field)."""
    if x.ndim <= 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], -1)


@dataclass(frozen=True)
class ContingencySums:
    """Per field and threshold: hits, forecast and observed events (int64 (N, K)); scored pixels ``n`` (N,)."""

    hits: Tensor
    forecast_events: Tensor
    observed_events: Tensor
    n: Tensor

    def table(self) -> dict[str, Tensor]:
        """Hits, misses, false alarms and correct negatives, (N, K)."""
        h = self.hits
        return {"hits": h, "misses": self.observed_events - h, "false_alarms": self.forecast_events - h,
                "correct_negatives": self.n[..., None] - self.forecast_events - self.observed_events + h}


def at_least(x: Tensor, threshold: float) -> Tensor:
    """``x >= threshold`` as compared in float64, without widening a float32 ``x``.

    For float32 values, ``x >= t`` in float64 is ``x >= t32`` with t32 the least float32 not below t.
    """
    if x.dtype == torch.float64:
        return x >= threshold
    if x.dtype != torch.float32:
        return x.to(torch.float64) >= threshold
    with np.errstate(over="ignore"):
        t32 = np.float32(threshold)
    if float(t32) < threshold:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return x >= float(t32)


def contingency_sums(forecast: Array, observation: Array, valid: Array, thresholds: Sequence[float]) -> ContingencySums:
    """Contingency counts of fields (N, ...) per field (first axis) and threshold; event = value >= threshold."""
    f, o, m = (_fields(as_tensor(a)) for a in (forecast, observation, valid))
    m = m.to(torch.bool)
    hits, forecast_events, observed_events = [], [], []
    for t in (float(v) for v in thresholds):
        fe = at_least(f, t).logical_and_(m)
        oe = at_least(o, t).logical_and_(m)
        forecast_events.append(fe.sum(dim=1))
        observed_events.append(oe.sum(dim=1))
        hits.append(fe.logical_and_(oe).sum(dim=1))
    return ContingencySums(hits=torch.stack(hits, dim=1), forecast_events=torch.stack(forecast_events, dim=1),
                           observed_events=torch.stack(observed_events, dim=1), n=m.sum(dim=1))


@dataclass(frozen=True)
class ErrorSums:
    """Per field: sum |f - o|, sum (f - o) (float64) and the scored pixels ``n`` (int64), shape (N,)."""

    sum_abs_error: Tensor
    sum_error: Tensor
    n: Tensor


def error_sums(forecast: Array, observation: Array, valid: Array) -> ErrorSums:
    """Sums of absolute and signed errors of fields (N, ...) over their scored pixels."""
    f, o, m = (_fields(as_tensor(a)) for a in (forecast, observation, valid))
    m = m.to(torch.bool)
    err = torch.where(m, f.to(torch.float64) - o.to(torch.float64), torch.zeros((), dtype=torch.float64,
                                                                                  device=f.device))
    return ErrorSums(sum_abs_error=err.abs().sum(dim=1), sum_error=err.sum(dim=1), n=m.sum(dim=1))


def _integral_image(t: Tensor, pad: int) -> Tensor:
    """Integral image of fields (..., H, W), (..., H + 1 + 2 pad, W + 1 + 2 pad), in ``t``'s dtype.

    Entry (pad + i, pad + j) is the sum of ``t[..., :i, :j]``. The ``pad`` rows and columns before
    repeat the zero row, those after repeat the totals, so a window reaching outside the grid sums
    what lies inside (zero outside) and every window is four shifted views of one array.
    """
    h, w = t.shape[-2:]
    core = t.cumsum(dim=-2, dtype=t.dtype).cumsum(dim=-1, dtype=t.dtype)
    lead = torch.zeros((*t.shape[:-2], h + 1, w + 1), dtype=t.dtype, device=t.device)
    lead[..., 1:, 1:] = core
    rows = torch.arange(-pad, h + 1 + pad, device=t.device).clamp_(0, h)
    cols = torch.arange(-pad, w + 1 + pad, device=t.device).clamp_(0, w)
    return lead.index_select(-2, rows).index_select(-1, cols)


def _as_counts(x: Array) -> Tensor:
    """Integer or boolean input as exact integer sums need it (int32 below 2**31 pixels per field, else int64)."""
    t = as_tensor(x)
    if t.dtype.is_floating_point:
        return t.to(torch.float64)
    return t.to(torch.int32 if t.shape[-2] * t.shape[-1] < 2**31 else torch.int64)


class _WindowSums:
    """Box sums of one field stack for any window size, from its integral image, into a reused buffer."""

    def __init__(self, t: Tensor, sizes: Sequence[int]) -> None:
        self.field = t
        self.pad = max((int(n) for n in sizes), default=1) // 2
        self.integral = _integral_image(t, self.pad) if self.pad else t
        self.buffer = torch.empty_like(t)

    def __call__(self, n: int) -> Tensor:
        """Sums over the n x n windows (``buffer`` is overwritten by the next call; the field itself for n = 1)."""
        if n == 1:
            return self.field
        h, w = self.field.shape[-2:]
        lo, hi = self.pad - n // 2, self.pad - n // 2 + n
        rows_hi, rows_lo = self.integral.narrow(-2, hi, h), self.integral.narrow(-2, lo, h)
        out = torch.sub(rows_hi.narrow(-1, hi, w), rows_lo.narrow(-1, hi, w), out=self.buffer)
        return out.sub_(rows_hi.narrow(-1, lo, w)).add_(rows_lo.narrow(-1, lo, w))


def box_sums(x: Array, sizes: Sequence[int]) -> list[Tensor]:
    """Sums of ``x`` (..., H, W) over the n x n window of every pixel for each n, zero outside the grid.

    Integer and boolean input gives exact integer sums (int32 while the field has fewer than
    2**31 pixels, else int64), float input float64. One integral image serves every size: each
    window is the signed sum of four shifted views of it.
    """
    sums = _WindowSums(_as_counts(x), sizes)
    return [sums(int(n)).clone() for n in sizes]


@dataclass(frozen=True)
class ObservedFractions:
    """The observation's side of FSS for fields (N, H, W): scored pixels, window counts and fractions.

    Computed once per observation and mask and shared by every forecast scored against them.
    ``counts[s]`` and ``fractions[s]`` are (N, H, W) float64 for window ``sizes[s]`` (1 where
    a pixel is not scored, so no division by zero), ``obs_sq`` is sum Po^2 per field (N, S).
    """

    threshold: float
    sizes: tuple[int, ...]
    valid: Tensor
    counts: tuple[Tensor, ...]
    fractions: tuple[Tensor, ...]
    obs_sq: Tensor


def _as_fields(x: Array) -> Tensor:
    t = as_tensor(x)
    return t.reshape(-1, *t.shape[-2:]) if t.ndim >= 2 else t.reshape(1, 1, -1)


def observed_fractions(observation: Array, valid: Array, threshold: float, sizes: Sequence[int]) -> ObservedFractions:
    """The observation's event fractions over windows of ``sizes`` pixels, fields (..., H, W) -> (N, H, W)."""
    o = _as_fields(observation)
    m = _as_fields(valid).to(torch.bool)
    event = at_least(o, threshold).logical_and_(m)
    not_scored = ~m
    valid_sums, event_sums = _WindowSums(_as_counts(m), sizes), _WindowSums(_as_counts(event), sizes)
    counts = [valid_sums(int(n)).to(torch.float64).masked_fill_(not_scored, 1.0) for n in sizes]
    fractions = [torch.div(event_sums(int(n)), c).masked_fill_(not_scored, 0.0)
                 for n, c in zip(sizes, counts, strict=True)]
    obs_sq = torch.stack([(p * p).sum(dim=(-2, -1)) for p in fractions], dim=-1)
    return ObservedFractions(float(threshold), tuple(int(n) for n in sizes), m, tuple(counts), tuple(fractions),
                             obs_sq)


@dataclass(frozen=True)
class FssSums:
    """Per field and window (N, S) float64: sum (Pf - Po)^2, sum Pf^2 and sum Po^2 over the scored pixels."""

    diff_sq: Tensor
    fct_sq: Tensor
    obs_sq: Tensor


def fss_sums(forecast: Array, observed: ObservedFractions) -> FssSums:
    """FSS sums of a forecast (..., H, W) against the observation's fractions (same fields and mask)."""
    f = _as_fields(forecast)
    m = observed.valid
    event = at_least(f, observed.threshold).logical_and_(m)
    diff, fct = [], []
    not_scored = ~m
    pf = torch.empty(m.shape, dtype=torch.float64, device=m.device)  # two buffers for every window: no fresh pages
    sq = torch.empty_like(pf)
    event_sums = _WindowSums(_as_counts(event), observed.sizes)
    for n, c, po in zip(observed.sizes, observed.counts, observed.fractions, strict=True):
        torch.div(event_sums(n), c, out=pf).masked_fill_(not_scored, 0.0)
        torch.sub(pf, po, out=sq)
        diff.append(sq.mul_(sq).sum(dim=(-2, -1)))
        fct.append(torch.mul(pf, pf, out=sq).sum(dim=(-2, -1)))
    return FssSums(diff_sq=torch.stack(diff, dim=-1), fct_sq=torch.stack(fct, dim=-1), obs_sq=observed.obs_sq)
