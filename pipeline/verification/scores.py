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

Box sums are separable cumulative sums in integers (exact), computed once per field
and shared by every window; the observation's fractions are computed once per field and
shared by every method scored against it (:class:`ObservedFractions`).
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


def contingency_sums(forecast: Array, observation: Array, valid: Array, thresholds: Sequence[float]) -> ContingencySums:
    """Contingency counts of fields (N, ...) per field (first axis) and threshold; event = value >= threshold."""
    f, o, m = (_fields(as_tensor(a)) for a in (forecast, observation, valid))
    m = m.to(torch.bool)
    t = torch.tensor([float(v) for v in thresholds], dtype=torch.float64, device=f.device)
    fe = (f[..., None].to(torch.float64) >= t) & m[..., None]
    oe = (o[..., None].to(torch.float64) >= t) & m[..., None]
    return ContingencySums(hits=(fe & oe).sum(dim=1), forecast_events=fe.sum(dim=1),
                           observed_events=oe.sum(dim=1), n=m.sum(dim=1))


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


def _cumsum0(x: Tensor, dim: int) -> Tensor:
    """Cumulative sum along ``dim`` with a leading zero (length + 1), in ``x``'s dtype."""
    c = x.cumsum(dim=dim, dtype=x.dtype)
    shape = list(c.shape)
    shape[dim] = 1
    return torch.cat([torch.zeros(shape, dtype=c.dtype, device=c.device), c], dim=dim)


def _axis_sums(cum: Tensor, n: int, dim: int) -> Tensor:
    """Window sums along ``dim`` (windows i - n//2 .. i - n//2 + n - 1, clipped) from a zero-led cumulative sum.

    The cumulative sum is extended by n//2 zeros before and its total repeated after, so every
    window is the difference of two slices (views), with no index gathering.
    """
    length = cum.shape[dim] - 1
    before = list(cum.shape)
    before[dim] = n // 2
    total = cum.narrow(dim, length, 1)
    ext = torch.cat([torch.zeros(before, dtype=cum.dtype, device=cum.device), cum,
                     total.expand(*[n - n // 2 if d == dim else -1 for d in range(cum.ndim)])], dim=dim)
    return ext.narrow(dim, n, length) - ext.narrow(dim, 0, length)


def box_sums(x: Array, sizes: Sequence[int]) -> list[Tensor]:
    """Sums of ``x`` (..., H, W) over the n x n window of every pixel for each n, zero outside the grid.

    Integer and boolean input gives exact integer sums (int32 while the field has fewer than
    2**31 pixels, else int64), float input float64. The cumulative sum down the rows is shared
    by every size.
    """
    t = as_tensor(x)
    if t.dtype.is_floating_point:
        t = t.to(torch.float64)
    else:
        t = t.to(torch.int32 if t.shape[-2] * t.shape[-1] < 2**31 else torch.int64)
    rows = _cumsum0(t, -2)
    out = []
    for n in sizes:
        if n == 1:
            out.append(t)
            continue
        down = _axis_sums(rows, int(n), t.ndim - 2)
        out.append(_axis_sums(_cumsum0(down, -1), int(n), t.ndim - 1))
    return out


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
    event = (o >= threshold) & m
    counts = [torch.where(m, c.to(torch.float64), 1.0) for c in box_sums(m, sizes)]
    fractions = [torch.where(m, s / c, 0.0) for s, c in zip(box_sums(event, sizes), counts, strict=True)]
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
    event = (f >= observed.threshold) & m
    diff, fct = [], []
    for s, c, po in zip(box_sums(event, observed.sizes), observed.counts, observed.fractions, strict=True):
        pf = torch.where(m, s / c, 0.0)
        diff.append(((pf - po) ** 2).sum(dim=(-2, -1)))
        fct.append((pf * pf).sum(dim=(-2, -1)))
    return FssSums(diff_sq=torch.stack(diff, dim=-1), fct_sq=torch.stack(fct, dim=-1), obs_sq=observed.obs_sq)
