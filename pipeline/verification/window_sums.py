"""The evaluation's contingency counts and FSS sums, fast.

The same counts and sums as the kernel's (:mod:`meteovision.pipeline.verification.scores`)
``contingency_sums``, ``observed_fractions`` and ``fss_sums``, bit for bit (tests/test_lead_scores_fast.py
compares them), at a fraction of the cost: the events are
compared in the fields' own float32, the window sums come from one integer integral image per field
(four shifted views for any window, not a cumulative sum per window), the observation's side is computed
once per analysis time and the float64 work goes into reused buffers. The final sums are torch's, on
arrays of the kernel's shape and values, so their rounding is the kernel's too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def as_float(x: np.ndarray) -> np.ndarray:
    """``x`` itself when float32 or float64 (the evaluation's fields), else as float64."""
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def at_least(x: np.ndarray, threshold: float) -> np.ndarray:
    """``x >= threshold`` compared in float64 (the kernel's contingency rule) without widening float32 fields.

    For float32 values, ``x >= t`` in float64 is ``x >= t32`` with t32 the least float32 not below t.
    """
    if x.dtype != np.float32:
        return np.greater_equal(x, np.float64(threshold))
    with np.errstate(over="ignore"):
        t32 = np.float32(threshold)
    if float(t32) < threshold:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return np.greater_equal(x, t32)


def fss_events(x: np.ndarray, threshold: float, mask: np.ndarray) -> np.ndarray:
    """FSS events of the scored pixels: the kernel compares in the field's dtype (threshold rounded to it)."""
    with np.errstate(over="ignore"):
        events = np.greater_equal(x, x.dtype.type(threshold))
    events &= mask
    return events


def true_counts(x: np.ndarray) -> np.ndarray:
    """True pixels of each field of (N, H, W) booleans, int64 (N,)."""
    return np.array([np.count_nonzero(field) for field in x], dtype=np.int64)


@dataclass(frozen=True)
class SumBuffers:
    """Scratch arrays of one analysis time's shape, reused by every window and method (no fresh pages)."""

    sums: np.ndarray
    fractions: np.ndarray
    squares: np.ndarray

    @staticmethod
    def for_shape(shape: tuple[int, ...]) -> SumBuffers:
        # torch-allocated, so the sums below reduce memory laid out as the kernel's own tensors
        return SumBuffers(np.empty(shape, dtype=np.int32), torch.zeros(shape, dtype=torch.float64).numpy(),
                        torch.empty(shape, dtype=torch.float64).numpy())


def integral_image(x: np.ndarray, pad: int) -> np.ndarray:
    """Integral image of (N, H, W) booleans, int32 (N, H + 1 + 2 pad, W + 1 + 2 pad), clamped beyond the grid.

    Entry (pad + i, pad + j) is the sum of x[:, :i, :j]; the ``pad`` rows and columns before repeat
    the zero row, those after repeat the totals, so a window reaching outside the grid sums what
    lies inside (the kernel's "zero outside").
    """
    n, h, w = x.shape
    out = np.zeros((n, h + 1 + 2 * pad, w + 1 + 2 * pad), dtype=np.int32)
    core = out[:, pad + 1 : pad + 1 + h, pad + 1 : pad + 1 + w]
    np.cumsum(x, axis=1, dtype=np.int32, out=core)
    np.cumsum(core, axis=2, out=core)
    out[:, pad + 1 + h :, :] = out[:, pad + h : pad + h + 1, :]
    out[:, :, pad + 1 + w :] = out[:, :, pad + w : pad + w + 1]
    return out


def window_sums(integral: np.ndarray, pad: int, size: int, out: np.ndarray) -> np.ndarray:
    """Sums over the centred ``size`` x ``size`` window (odd) of every pixel, into ``out``.

    ``integral`` is :func:`integral_image`'s with the same ``pad``.
    """
    h, w = out.shape[-2:]
    lo, hi = pad - size // 2, pad + size // 2 + 1
    np.subtract(integral[:, hi : hi + h, hi : hi + w], integral[:, lo : lo + h, hi : hi + w], out=out)
    out -= integral[:, hi : hi + h, lo : lo + w]
    out += integral[:, lo : lo + h, lo : lo + w]
    return out


def torch_sums(x: np.ndarray) -> np.ndarray:
    """Sum over each field of (N, H, W) float64 with torch's reduction, as the kernel sums its fractions."""
    return torch.from_numpy(x).sum(dim=(-2, -1)).numpy()


@dataclass(frozen=True)
class Observed:
    """The observation's side of one analysis time, shared by every method scored against it.

    ``events[t]``, ``event_counts[t]``: observed events at threshold t on the scored pixels and their
    number per field; ``counts[s]``: scored pixels
    in window s (1 where a pixel is not scored, as the kernel's), ``fractions[s]``: observed FSS
    fractions (0 where not scored), ``obs_sq``: sum Po^2 per field and window (N, S).
    """

    mask: np.ndarray
    n: np.ndarray
    events: dict[float, np.ndarray]
    event_counts: dict[float, np.ndarray]
    fss_threshold: float
    sizes: tuple[int, ...]
    pad: int
    counts: list[np.ndarray]
    fractions: list[np.ndarray]
    obs_sq: np.ndarray


def observe(observation: np.ndarray, mask: np.ndarray, thresholds: Sequence[float], fss_threshold: float,
             sizes: Sequence[int], buffers: SumBuffers) -> Observed:
    events = {}
    for t in thresholds:
        events[t] = at_least(observation, t)
        events[t] &= mask
    pad = max(sizes) // 2
    valid = integral_image(mask, pad)
    observed = integral_image(fss_events(observation, fss_threshold, mask), pad)
    counts, fractions = [], []
    for size in sizes:
        count = np.ones(mask.shape, dtype=np.float64)
        np.copyto(count, window_sums(valid, pad, size, buffers.sums), where=mask)
        fraction = np.zeros(mask.shape, dtype=np.float64)
        np.divide(window_sums(observed, pad, size, buffers.sums), count, out=fraction, where=mask)
        counts.append(count)
        fractions.append(fraction)
    obs_sq = np.stack([torch_sums(np.multiply(p, p, out=buffers.squares)) for p in fractions], axis=-1)
    return Observed(mask, true_counts(mask), events, {t: true_counts(e) for t, e in events.items()},
                     float(fss_threshold), tuple(sizes), pad, counts, fractions, obs_sq)


def fss_sums(events: np.ndarray, observed: Observed, buffers: SumBuffers) -> tuple[np.ndarray, np.ndarray]:
    """sum (Pf - Po)^2 and sum Pf^2 per field and window (N, S) of a forecast's FSS events."""
    integral = integral_image(events, observed.pad)
    pf, sq = buffers.fractions, buffers.squares
    diff_sq, fct_sq = [], []
    for size, count, po in zip(observed.sizes, observed.counts, observed.fractions, strict=True):
        np.divide(window_sums(integral, observed.pad, size, buffers.sums), count, out=pf, where=observed.mask)
        np.subtract(pf, po, out=sq)
        np.multiply(sq, sq, out=sq)
        diff_sq.append(torch_sums(sq))
        fct_sq.append(torch_sums(np.multiply(pf, pf, out=sq)))
    return np.stack(diff_sq, axis=-1), np.stack(fct_sq, axis=-1)
