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

Box sums come from one integral image per field (exact: integer counts, summed as int32 or
as float64 below 2**53), shared by every window. Several forecasts scored against one
observation share its side: its events per threshold (:class:`ObservedEvents`) and its FSS
window counts (:func:`fss_sums_of`). Float32 fields are compared with their
thresholds in float32 (each threshold rounded up to the least float32 not below it), which is
exactly the float64 comparison without widening the fields. Large intermediate arrays go into a
few reused buffers: on a CPU, touching fresh pages costs as much as the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ContingencySums",
    "ErrorSums",
    "FssSums",
    "ObservedEvents",
    "as_tensor",
    "at_least",
    "box_sums",
    "contingency_sums",
    "csi",
    "error_sums",
    "far",
    "forecast_contingency",
    "frequency_bias",
    "fss",
    "fss_sums",
    "fss_sums_of",
    "mae",
    "observed_events",
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
    On the CPU numpy compares (several times faster than torch's single-threaded comparison).
    """
    if x.dtype == torch.float64:
        bound: float | np.floating = threshold
    elif x.dtype != torch.float32:
        x, bound = x.to(torch.float64), threshold
    else:
        with np.errstate(over="ignore"):
            bound = np.float32(threshold)
        if float(bound) < threshold:
            bound = np.nextafter(bound, np.float32(np.inf))
    if x.device.type == "cpu":
        return torch.from_numpy(np.greater_equal(x.numpy(), bound))
    return x >= float(bound)


def _count(x: Tensor, dim: int) -> Tensor:
    """Number of True values of a boolean tensor along ``dim``, as int64.

    Along the rows of a CPU tensor with numpy 2, each 8 bytes are one uint64 word whose set bits
    are the True values (a bool is one byte, 0 or 1), counted by ``np.bitwise_count``: several
    times faster than a byte sum. Otherwise summed as bytes into int32 while fewer than 2**31
    values are summed (several times faster than torch's int64 sum of booleans), else into int64.
    """
    popcount = _BITWISE_COUNT
    if x.device.type == "cpu" and dim in (-1, x.ndim - 1) and popcount is not None:
        return torch.from_numpy(_count_rows(np.ascontiguousarray(x.numpy()).view(np.uint8), popcount))
    wide = x.shape[dim] >= 2**31
    return x.view(torch.uint8).sum(dim=dim, dtype=torch.int64 if wide else torch.int32).to(torch.int64)


#: numpy's population count (numpy >= 2.0), None before.
_BITWISE_COUNT: Callable[[np.ndarray], np.ndarray] | None = getattr(np, "bitwise_count", None)


def _count_rows(a: np.ndarray, popcount: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Sum of every row of 0/1 bytes ``a`` (..., P), int64: whole 8-byte words by population count, the
    last P mod 8 bytes as they are."""
    whole = a.shape[-1] - a.shape[-1] % 8
    counts = popcount(a[..., :whole].view(np.uint64)).sum(axis=-1, dtype=np.int64)
    if whole < a.shape[-1]:
        counts += a[..., whole:].sum(axis=-1, dtype=np.int64)
    return counts


@dataclass(frozen=True)
class ObservedEvents:
    """The observation's side of a contingency table, fields (N, P): scored pixels and events per threshold.

    Computed once per observation and mask and shared by every forecast scored against them.
    """

    thresholds: tuple[float, ...]
    valid: Tensor  # bool (N, P)
    events: tuple[Tensor, ...]  # bool (N, P) per threshold, False outside ``valid``
    counts: Tensor  # int64 (N, K)
    n: Tensor  # int64 (N,)


def observed_events(observation: Array, valid: Array, thresholds: Sequence[float]) -> ObservedEvents:
    """The observation's events (value >= threshold, scored pixels only) of fields (N, ...)."""
    o, m = (_fields(as_tensor(a)) for a in (observation, valid))
    m = m.to(torch.bool)
    events = tuple(at_least(o, float(t)).logical_and_(m) for t in thresholds)
    counts = torch.stack([_count(e, dim=1) for e in events], dim=1)
    return ObservedEvents(tuple(float(t) for t in thresholds), m, events, counts, _count(m, dim=1))


def forecast_contingency(forecast: Array, observed: ObservedEvents) -> ContingencySums:
    """Contingency counts of a forecast (same fields as ``observed``) per field and threshold."""
    f = _fields(as_tensor(forecast))
    hits, forecast_events = [], []
    for t, oe in zip(observed.thresholds, observed.events, strict=True):
        fe = at_least(f, t).logical_and_(observed.valid)
        forecast_events.append(_count(fe, dim=1))
        hits.append(_count(fe.logical_and_(oe), dim=1))
    return ContingencySums(hits=torch.stack(hits, dim=1), forecast_events=torch.stack(forecast_events, dim=1),
                           observed_events=observed.counts, n=observed.n)


def contingency_sums(forecast: Array, observation: Array, valid: Array, thresholds: Sequence[float]) -> ContingencySums:
    """Contingency counts of fields (N, ...) per field (first axis) and threshold; event = value >= threshold."""
    return forecast_contingency(forecast, observed_events(observation, valid, thresholds))


@dataclass(frozen=True)
class ErrorSums:
    """Per field: sum |f - o|, sum (f - o) (float64) and the scored pixels ``n`` (int64), shape (N,)."""

    sum_abs_error: Tensor
    sum_error: Tensor
    n: Tensor


def error_sums(forecast: Array, observation: Array, valid: Array) -> ErrorSums:
    """Sums of absolute and signed errors of fields (N, ...) over their scored pixels.

    The difference is taken in float64 (each value widened exactly). On the CPU numpy subtracts,
    widening on the fly (torch's single-threaded widening copy costs several times more).
    """
    f, o, m = (_fields(as_tensor(a)) for a in (forecast, observation, valid))
    m = m.to(torch.bool)
    numpy_types = (torch.float32, torch.float64)
    if f.device.type == "cpu" and f.dtype in numpy_types and o.dtype in numpy_types:
        err = torch.from_numpy(np.subtract(f.numpy(), o.numpy(), dtype=np.float64))
    else:
        err = f.to(torch.float64) - o.to(torch.float64)
    err.masked_fill_(~m, 0.0)
    signed = err.sum(dim=1)
    return ErrorSums(sum_abs_error=err.abs_().sum(dim=1), sum_error=signed, n=_count(m, dim=1))


def _integral_image(t: Tensor, pad: int, dtype: torch.dtype) -> Tensor:
    """Integral image of fields (..., H, W), (..., H + 1 + 2 pad, W + 1 + 2 pad), in ``dtype``.

    Entry (pad + i, pad + j) is the sum of ``t[..., :i, :j]``. The ``pad`` rows and columns before
    repeat the zero row, those after repeat the totals, so a window reaching outside the grid sums
    what lies inside (zero outside) and every window is four shifted views of one array. The field
    is copied into a zero frame and summed in place along the rows, then down the columns.
    """
    h, w = t.shape[-2:]
    out = torch.zeros((*t.shape[:-2], h + 1 + 2 * pad, w + 1 + 2 * pad), dtype=dtype, device=t.device)
    out[..., pad + 1 : pad + 1 + h, pad + 1 : pad + 1 + w] = t
    out.cumsum_(dim=-1)
    out.cumsum_(dim=-2)
    return out


def _sum_dtype(x: Tensor) -> torch.dtype:
    """The dtype in which sums of ``x`` are exact: int32 (int64 from 2**31 pixels per field) for integer or
    boolean input, float64 for float input."""
    if x.dtype.is_floating_point:
        return torch.float64
    return torch.int32 if x.shape[-2] * x.shape[-1] < 2**31 else torch.int64


class _WindowSums:
    """Box sums of one field stack for any window size, from its integral image, into a reused buffer.

    ``dtype`` is the sums' type (:func:`_sum_dtype` keeps integer counts exact).
    """

    def __init__(self, t: Tensor, sizes: Sequence[int], dtype: torch.dtype, buffer: Tensor | None = None) -> None:
        """``buffer`` (``t``'s shape, ``dtype``) may be shared by several stacks whose sums are used in turn."""
        self.field, self.dtype = t, dtype
        self.pad = max((int(n) for n in sizes), default=1) // 2
        self.integral = _integral_image(t, self.pad, dtype) if self.pad else t
        self.buffer = torch.empty(t.shape, dtype=dtype, device=t.device) if buffer is None else buffer

    def __call__(self, n: int) -> Tensor:
        """Sums over the n x n windows (``buffer`` is overwritten by the next call; the field itself for n = 1,
        in its own dtype)."""
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
    t = as_tensor(x)
    sums = _WindowSums(t, sizes, _sum_dtype(t))
    return [sums(int(n)).to(sums.dtype, copy=True) for n in sizes]


def _as_fields(x: Array) -> Tensor:
    t = as_tensor(x)
    return t.reshape(-1, *t.shape[-2:]) if t.ndim >= 2 else t.reshape(1, 1, -1)


@dataclass(frozen=True)
class FssSums:
    """Per field and window (N, S) float64: sum (Pf - Po)^2, sum Pf^2 and sum Po^2 over the scored pixels."""

    diff_sq: Tensor
    fct_sq: Tensor
    obs_sq: Tensor


#: Pixels per FSS chunk: a few fields at a time keep the arrays of one window in the CPU's caches.
FSS_CHUNK_PIXELS = 1 << 17


def fss_sums_of(forecasts: Sequence[Array], observation: Array, valid: Array, threshold: float,
                sizes: Sequence[int]) -> list[FssSums]:
    """FSS sums of several forecasts (..., H, W) against one observation and mask, per field and window.

    The observation's side (its window counts and squared fractions) is computed once per window and
    shared by every forecast. A fraction is (window event count) / (scored pixels of the window), 0 at
    a pixel not scored, so with w = 1 / (scored pixels of the window)^2 at a scored pixel:
    sum Pf^2 = sum Cf^2 w and sum (Pf - Po)^2 = sum (Cf - Co)^2 w, from the integer window counts Cf
    and Co. The count difference is exact, so there is no cancellation (a perfect forecast scores
    exactly 0) and each term is rounded once. Windows are taken one after the other, every array of
    one window in a few reused buffers, and fields a few at a time (``FSS_CHUNK_PIXELS``): the fields
    are independent.
    """
    o = _as_fields(observation)
    m = _as_fields(valid).to(torch.bool)
    fields = [_as_fields(f) for f in forecasts]
    for f in fields:
        if f.shape != o.shape:
            raise ValueError(f"fss_sums_of: forecast fields {tuple(f.shape)} differ from the observation's "
                             f"{tuple(o.shape)}")
    step = max(1, FSS_CHUNK_PIXELS // max(1, o.shape[-2] * o.shape[-1]))
    parts = [_fss_chunk([f[i : i + step] for f in fields], o[i : i + step], m[i : i + step], threshold, sizes)
             for i in range(0, max(o.shape[0], 1), step)]  # one (empty) chunk for no field
    return [FssSums(*(torch.cat([getattr(p[k], name) for p in parts]) for name in ("diff_sq", "fct_sq", "obs_sq")))
            for k in range(len(fields))]


def _weighted_sums(squares: Tensor, w: Tensor) -> Tensor:
    """sum s w along the rows of integer squares ``squares`` (K, N, P) and float64 weights ``w`` (N, P): (K, N).

    Each square is widened exactly (below 2**53), so each term is rounded once. On the CPU numpy's
    einsum casts on the fly; unlike a BLAS call it starts no thread pool that would compete with the
    evaluation's worker processes.
    """
    if squares.device.type == "cpu":
        return torch.from_numpy(np.einsum("kij,ij->ki", squares.numpy(), w.numpy()))
    return (squares.to(torch.float64) * w).sum(dim=-1)


def _event_counts(x: Tensor, m: Tensor, threshold: float) -> Tensor:
    """1 where ``x >= threshold`` on a scored pixel, else 0, as int8 (summed exactly by the integral image)."""
    return at_least(x, threshold).logical_and_(m).view(torch.int8)


def _fss_chunk(fields: Sequence[Tensor], o: Tensor, m: Tensor, threshold: float, sizes: Sequence[int]) -> list[FssSums]:
    """:func:`fss_sums_of` of a few fields (N, H, W)."""
    count_dtype = _sum_dtype(m)
    largest = max((int(n) for n in sizes), default=1)
    square_dtype = torch.int32 if largest**4 < 2**31 else torch.int64  # a count is at most n^2: its square exact
    scored = torch.empty(m.shape, dtype=torch.float64, device=m.device).copy_(m)
    weight = torch.empty_like(scored)
    shared = torch.empty(m.shape, dtype=count_dtype, device=m.device)  # window counts, used one stack at a time
    squares = torch.empty((2, *m.shape), dtype=square_dtype, device=m.device)  # Cf^2 and (Cf - Co)^2
    valid_counts = _WindowSums(m.view(torch.int8), sizes, count_dtype, shared)
    observed = _WindowSums(_event_counts(o, m, threshold), sizes, count_dtype)  # own buffer: used with each forecast
    predicted = [_WindowSums(_event_counts(f, m, threshold), sizes, count_dtype, shared) for f in fields]
    obs_sq: list[Tensor] = []
    diff: list[list[Tensor]] = [[] for _ in fields]
    fct: list[list[Tensor]] = [[] for _ in fields]
    flat = (m.shape[0], m.shape[-2] * m.shape[-1])

    for n in (int(v) for v in sizes):
        # (1 / scored pixels of the window)^2 where scored, 0 elsewhere; a pixel's own window: 1 where scored
        w = scored if n == 1 else weight.copy_(valid_counts(n)).clamp_(min=1.0).reciprocal_().mul_(scored).square_()
        counts_o = observed(n)
        torch.mul(counts_o, counts_o, out=squares[0])
        obs_sq.append(_weighted_sums(squares[:1].view(1, *flat), w.view(flat))[0])
        for k, sums in enumerate(predicted):
            counts_f = sums(n)
            torch.mul(counts_f, counts_f, out=squares[0])
            difference = torch.sub(counts_f, counts_o, out=squares[1])
            difference.mul_(difference)
            both = _weighted_sums(squares.view(2, *flat), w.view(flat))
            fct[k].append(both[0])
            diff[k].append(both[1])
    obs = torch.stack(obs_sq, dim=-1)
    return [FssSums(diff_sq=torch.stack(d, dim=-1), fct_sq=torch.stack(f, dim=-1), obs_sq=obs)
            for d, f in zip(diff, fct, strict=True)]


def fss_sums(forecast: Array, observation: Array, valid: Array, threshold: float, sizes: Sequence[int]) -> FssSums:
    """FSS sums of one forecast (..., H, W) against the observation, per field and window (N, S)."""
    return fss_sums_of([forecast], observation, valid, threshold, sizes)[0]
