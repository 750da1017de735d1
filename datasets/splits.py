"""Train/validation/test split by blocks of time, never by random frames.

Neighbouring radar or satellite frames are nearly identical, so a random split across
the frames of one event leaks the test set into training. Here whole blocks (events:
runs of frames without a gap larger than ``max_gap``; optionally cut further at UTC
midnight) go to one split. An event is cut only when there are too few events to give
every split with a positive fraction some frames; then, and wherever blocks of different
splits lie close in time, frames are dropped so that any two kept frames of different
splits are at least ``gap`` apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from meteovision.datasets.errors import MeteovisionError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_MODES: tuple[str, ...] = ("chronological", "interleaved")
BLOCK_KINDS: tuple[str, ...] = ("event", "day")
DROPPED = ""


class SplitError(MeteovisionError):
    """A split that cannot be made from these times and settings."""


def as_datetime64(times: Any) -> np.ndarray:
    """Any sequence of datetimes / numpy datetimes / ISO strings -> datetime64[ns] array (naive UTC)."""
    arr = np.asarray(times)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]")
    try:
        out = np.array([np.datetime64(_naive(t), "ns") for t in arr.ravel()], dtype="datetime64[ns]")
    except (TypeError, ValueError) as exc:
        raise SplitError(f"times are not datetimes: {exc}") from exc
    return out.reshape(arr.shape)


def _naive(t: Any) -> Any:
    if isinstance(t, datetime) and t.tzinfo is not None:
        return t.replace(tzinfo=None) - (t.utcoffset() or timedelta(0))
    if isinstance(t, str) and t.endswith("Z"):
        return t[:-1]
    return t


def _td64(value: timedelta | np.timedelta64 | float) -> np.timedelta64:
    """timedelta, numpy timedelta, or minutes (float) -> timedelta64[ns]."""
    if isinstance(value, np.timedelta64):
        return value.astype("timedelta64[ns]")
    if isinstance(value, timedelta):
        return np.timedelta64(round(value.total_seconds() * 1e9), "ns")
    return np.timedelta64(round(float(value) * 60e9), "ns")


def group_events(times: Any, max_gap: timedelta | np.timedelta64 | float) -> np.ndarray:
    """Event id (0, 1, ...) of each frame: a new event starts after a gap larger than ``max_gap``.

    ``times`` need not be sorted; ids increase with time. ``max_gap`` as a float is in minutes.
    """
    t = as_datetime64(times)
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    new = np.concatenate([[False], np.diff(ts) > _td64(max_gap)])
    ids = np.empty(t.size, dtype=np.int64)
    ids[order] = np.cumsum(new)
    return ids


@dataclass(frozen=True)
class TimeSplit:
    """Split label of every frame ("train", "val", "test" or "" for dropped), in the caller's order."""

    times: np.ndarray
    labels: np.ndarray
    blocks: np.ndarray
    gap: np.timedelta64

    def indices(self, name: str) -> np.ndarray:
        """Frame indices of split ``name``, in time order."""
        if name not in SPLIT_NAMES:
            raise SplitError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
        idx = np.flatnonzero(self.labels == name)
        return idx[np.argsort(self.times[idx], kind="stable")]

    def counts(self) -> dict[str, int]:
        out = {name: int((self.labels == name).sum()) for name in SPLIT_NAMES}
        out["dropped"] = int((self.labels == DROPPED).sum())
        return out

    def time_range(self, name: str) -> tuple[np.datetime64, np.datetime64] | None:
        idx = self.indices(name)
        if idx.size == 0:
            return None
        return self.times[idx[0]], self.times[idx[-1]]


def _blocks(ts: np.ndarray, events: np.ndarray | None, max_gap: np.timedelta64, block: str) -> np.ndarray:
    """Block id of each time-sorted frame: runs split at large gaps, event changes and (block='day') dates."""
    new = np.zeros(ts.size, dtype=bool)
    if ts.size:
        new[1:] = np.diff(ts) > max_gap
        if events is not None:
            new[1:] |= events[1:] != events[:-1]
        if block == "day":
            days = ts.astype("datetime64[D]")
            new[1:] |= days[1:] != days[:-1]
    return np.cumsum(new)


def _snap_cut(pos: int, seq_times: np.ndarray) -> int:
    """Move a cut inside a block forward so that frames of equal time stay together."""
    while 0 < pos < seq_times.size and seq_times[pos] == seq_times[pos - 1]:
        pos += 1
    return pos


def _choose_boundaries(bounds: np.ndarray, n: int, fractions: tuple[float, float, float]) -> tuple[int, int] | None:
    """Best pair of block boundaries (positions in the assignment order) leaving no wanted split empty."""
    b1, b2 = fractions[0] * n, (fractions[0] + fractions[1]) * n
    need = [f > 0 for f in fractions]
    best: tuple[float, int, int] | None = None
    for B1 in bounds:
        if need[0] and B1 == 0:
            continue
        lo = B1 + 1 if need[1] else B1
        hi = n - 1 if need[2] else n
        cand = bounds[(bounds >= lo) & (bounds <= hi)]
        if cand.size == 0:
            continue
        B2 = int(cand[np.argmin(np.abs(cand - b2))])
        cost = abs(B1 - b1) + abs(B2 - b2)
        if best is None or cost < best[0]:
            best = (cost, int(B1), B2)
    return None if best is None else (best[1], best[2])


def _cut_boundaries(
    bounds: np.ndarray, n: int, fractions: tuple[float, float, float], seq_times: np.ndarray
) -> tuple[int, int]:
    """Boundaries when an event must be cut: block boundaries where they fit, exact cuts elsewhere."""
    need = [f > 0 for f in fractions]
    if sum(need) > n:
        raise SplitError(f"{n} frames cannot fill {sum(need)} splits")
    b1, b2 = fractions[0] * n, (fractions[0] + fractions[1]) * n
    lo1 = 1 if need[0] else 0
    hi1 = n - int(need[1]) - int(need[2])
    options: list[tuple[int, float, int, int]] = []
    cands1 = [int(b) for b in bounds if lo1 <= b <= hi1]
    exact1 = _snap_cut(min(max(round(b1), lo1), hi1), seq_times)
    for B1, cuts1 in [(b, 0) for b in cands1] + [(exact1, 1)]:
        lo2 = B1 + int(need[1])
        hi2 = n - int(need[2])
        if lo2 > hi2:
            continue
        cands2 = [int(b) for b in bounds if lo2 <= b <= hi2]
        exact2 = _snap_cut(min(max(round(b2), lo2), hi2), seq_times)
        for B2, cuts2 in [(b, 0) for b in cands2] + [(exact2, 1)]:
            if lo2 <= B2 <= hi2:
                options.append((cuts1 + cuts2, abs(B1 - b1) + abs(B2 - b2), B1, B2))
    if not options:
        raise SplitError(f"cannot place split boundaries in {n} frames with fractions {fractions}")
    _, _, B1, B2 = min(options)
    return B1, B2


def _enforce_gap(ts: np.ndarray, labels: np.ndarray, gap: np.timedelta64) -> np.ndarray:
    """Drop frames so that kept frames of different splits are at least ``gap`` apart.

    Walks backwards in time keeping a frame only if no later kept frame of another split is
    closer than ``gap``: the earlier side of each boundary (train before val) gives way.
    """
    out = labels.copy()
    if gap <= np.timedelta64(0, "ns"):
        return out
    next_kept: dict[str, np.datetime64] = {}
    for i in range(ts.size - 1, -1, -1):
        lab = out[i]
        if lab == DROPPED:
            continue
        if any(other != lab and t_next - ts[i] < gap for other, t_next in next_kept.items()):
            out[i] = DROPPED
            continue
        next_kept[lab] = ts[i]
    return out


def split_by_time(
    times: Any,
    events: Sequence[Any] | np.ndarray | None = None,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ranges: Mapping[str, Sequence[tuple[Any, Any]]] | None = None,
    gap: timedelta | np.timedelta64 | float = timedelta(hours=1),
    max_gap: timedelta | np.timedelta64 | float = timedelta(hours=1),
    mode: str = "chronological",
    block: str = "event",
    seed: int = 0,
) -> TimeSplit:
    """Assign every frame to train/val/test by whole blocks of time.

    ``times``: one time per frame (any order, duplicates allowed: e.g. several cameras).
    ``events``: optional event label per frame (else events come from gaps > ``max_gap``).
    ``fractions``: (train, val, test) shares of frames, reached as closely as whole blocks allow;
    ``mode="chronological"`` puts the latest blocks in test, ``"interleaved"`` shuffles blocks
    with ``seed`` first. ``ranges``: explicit {split: [(start, end), ...]} (inclusive) instead of
    fractions; frames outside every range are dropped. ``gap``/``max_gap`` as floats are minutes.
    """
    t = as_datetime64(times).ravel()
    n = t.size
    gap64 = _td64(gap)
    if n == 0:
        return TimeSplit(t, np.zeros(0, dtype="<U5"), np.zeros(0, dtype=np.int64), gap64)
    if mode not in SPLIT_MODES:
        raise SplitError(f"unknown split mode {mode!r}; choose one of {SPLIT_MODES}")
    if block not in BLOCK_KINDS:
        raise SplitError(f"unknown block kind {block!r}; choose one of {BLOCK_KINDS}")
    if np.isnat(t).any():
        raise SplitError("some frame times are missing (NaT)")
    ev = None
    if events is not None:
        ev = np.asarray(events).ravel()
        if ev.size != n:
            raise SplitError(f"{ev.size} event labels for {n} frames")
    order = np.argsort(t, kind="stable")
    ts = t[order]
    blocks = _blocks(ts, ev[order] if ev is not None else None, _td64(max_gap), block)
    labels_sorted = np.full(n, DROPPED, dtype="<U5")

    if ranges is not None:
        unknown = set(ranges) - set(SPLIT_NAMES)
        if unknown:
            raise SplitError(f"unknown split name(s) {sorted(unknown)} in ranges; use {SPLIT_NAMES}")
        for name, spans in ranges.items():
            for start, end in spans:
                s, e = as_datetime64([start, end])
                if e < s:
                    raise SplitError(f"range of {name!r} ends ({e}) before it starts ({s})")
                inside = (ts >= s) & (ts <= e)
                clash = inside & (labels_sorted != DROPPED) & (labels_sorted != name)
                if clash.any():
                    raise SplitError(f"range {s}..{e} of {name!r} overlaps another split's range")
                labels_sorted[inside] = name
    else:
        f = tuple(float(v) for v in fractions)
        if len(f) != 3 or any(v < 0 for v in f) or not np.isclose(sum(f), 1.0):
            raise SplitError(f"fractions must be three non-negative shares summing to 1, got {fractions}")
        block_ids = np.unique(blocks)
        if mode == "interleaved":
            block_ids = np.random.default_rng(seed).permutation(block_ids)
        # frames in assignment order: blocks one after another, each block in time order
        seq = np.concatenate([np.flatnonzero(blocks == b) for b in block_ids])
        sizes = np.array([(blocks == b).sum() for b in block_ids])
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        f3 = (f[0], f[1], f[2])
        chosen = _choose_boundaries(bounds, n, f3)
        if chosen is None:
            chosen = _cut_boundaries(bounds, n, f3, ts[seq])
        B1, B2 = chosen
        labels_sorted[seq[:B1]] = "train"
        labels_sorted[seq[B1:B2]] = "val"
        labels_sorted[seq[B2:]] = "test"

    labels_sorted = _enforce_gap(ts, labels_sorted, gap64)
    labels = np.empty(n, dtype="<U5")
    labels[order] = labels_sorted
    block_out = np.empty(n, dtype=np.int64)
    block_out[order] = blocks
    return TimeSplit(times=t, labels=labels, blocks=block_out, gap=gap64)


def sequence_windows(
    times: Any, indices: np.ndarray | Sequence[int], length: int, step: timedelta | np.timedelta64 | float
) -> np.ndarray:
    """Windows of ``length`` frames at exactly the nominal ``step`` apart, all taken from ``indices``.

    Returns int64 ``[n_windows, length]`` frame indices (into ``times``). A window never spans a
    gap (missing frame) nor leaves the given split, so inputs and targets come from one split.
    """
    if length < 1:
        raise SplitError(f"window length must be >= 1, got {length}")
    t = as_datetime64(times).ravel()
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size < length:
        return np.zeros((0, length), dtype=np.int64)
    idx = idx[np.argsort(t[idx], kind="stable")]
    ts = t[idx]
    step64 = _td64(step)
    if step64 <= np.timedelta64(0, "ns"):
        raise SplitError(f"time step must be positive, got {step}")
    ok = np.diff(ts) == step64  # ok[k]: frame k+1 follows frame k by exactly one step
    if length == 1:
        return idx[:, None].copy()
    # run length of consecutive ok steps starting at each position
    run = np.zeros(ok.size + 1, dtype=np.int64)
    for k in range(ok.size - 1, -1, -1):
        run[k] = run[k + 1] + 1 if ok[k] else 0
    starts = np.flatnonzero(run[: idx.size - length + 1] >= length - 1)
    return idx[starts[:, None] + np.arange(length)[None, :]]
