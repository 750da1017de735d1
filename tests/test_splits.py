"""Time split: whole events per split, buffers at boundaries, no sequence across splits (leakage tests)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from meteovision.datasets.splits import (
    SPLIT_NAMES,
    SplitError,
    TimeSplit,
    group_events,
    sequence_windows,
    split_by_time,
)

STEP = np.timedelta64(5, "m")


def _events(n_events: int, frames: int, start: str = "2024-05-01T12:00", spacing_days: int = 1) -> np.ndarray:
    t0 = np.datetime64(start, "ns")
    return np.concatenate(
        [t0 + np.timedelta64(spacing_days * e, "D") + STEP * np.arange(frames) for e in range(n_events)]
    )


def _assert_no_leak(split: TimeSplit, gap: np.timedelta64) -> None:
    """Any two kept frames of different splits are at least ``gap`` apart."""
    for a in SPLIT_NAMES:
        for b in SPLIT_NAMES:
            if a >= b:
                continue
            ta = split.times[split.indices(a)]
            tb = split.times[split.indices(b)]
            if ta.size and tb.size:
                assert np.abs(ta[:, None] - tb[None, :]).min() >= gap, (a, b)


def _assert_events_whole(split: TimeSplit, events: np.ndarray) -> None:
    for ev in np.unique(events):
        labels = set(split.labels[events == ev]) - {""}
        assert len(labels) <= 1, f"event {ev} in splits {labels}"


def test_group_events_golden() -> None:
    t = np.array(
        ["2024-01-01T00:00", "2024-01-01T00:05", "2024-01-01T02:00", "2024-01-01T00:10"], dtype="datetime64[ns]"
    )
    np.testing.assert_array_equal(group_events(t, timedelta(minutes=30)), [0, 0, 1, 0])
    np.testing.assert_array_equal(group_events(t, 200.0), [0, 0, 0, 0])  # minutes


def test_chronological_split_keeps_events_whole_and_tests_latest() -> None:
    times = _events(10, 12)
    events = group_events(times, timedelta(hours=1))
    split = split_by_time(times, gap=timedelta(hours=1))
    _assert_events_whole(split, events)
    _assert_no_leak(split, np.timedelta64(1, "h"))
    # 120 frames: train = 7 events (84 = 0.7 * 120), val 1 event, test the latest 2 (whole blocks)
    assert split.counts() == {"train": 84, "val": 12, "test": 24, "dropped": 0}
    assert set(events[split.indices("train")]) == set(range(7))
    assert set(events[split.indices("test")]) == {8, 9}
    assert split.times[split.indices("train")].max() < split.times[split.indices("val")].min()
    assert split.times[split.indices("val")].max() < split.times[split.indices("test")].min()


def test_interleaved_split_is_seeded_and_whole() -> None:
    times = _events(20, 6)
    events = group_events(times, timedelta(hours=1))
    a = split_by_time(times, mode="interleaved", seed=4)
    b = split_by_time(times, mode="interleaved", seed=4)
    c = split_by_time(times, mode="interleaved", seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    for s in (a, c):
        _assert_events_whole(s, events)
        counts = s.counts()
        assert counts == {"train": 84, "val": 18, "test": 18, "dropped": 0}
    # interleaved: test events are not simply the latest ones
    assert events[a.indices("test")].min() < 17


def test_single_event_is_cut_with_a_buffer() -> None:
    times = _events(1, 100)  # 100 frames at 5 min: one event must be cut
    split = split_by_time(times, gap=timedelta(hours=1))
    # cuts at 70 and 85; 11 frames (< 60 min) dropped before each boundary
    np.testing.assert_array_equal(split.indices("train"), np.arange(0, 59))
    np.testing.assert_array_equal(split.indices("val"), np.arange(70, 74))
    np.testing.assert_array_equal(split.indices("test"), np.arange(85, 100))
    assert split.counts()["dropped"] == 22
    _assert_no_leak(split, np.timedelta64(1, "h"))


def test_close_events_in_different_splits_get_a_buffer() -> None:
    # events 30 min apart (max_gap 10 min): blocks touch; the 1 h buffer still holds between splits
    t0 = np.datetime64("2024-01-01T00:00", "ns")
    times = np.concatenate([t0 + STEP * np.arange(12) + np.timedelta64(85 * k, "m") for k in range(8)])
    split = split_by_time(times, max_gap=timedelta(minutes=10), gap=timedelta(hours=1))
    _assert_no_leak(split, np.timedelta64(1, "h"))
    assert all(split.counts()[name] > 0 for name in SPLIT_NAMES)
    assert split.counts()["dropped"] > 0


def test_explicit_ranges() -> None:
    times = _events(6, 4)
    split = split_by_time(
        times,
        ranges={
            "train": [("2024-05-01", "2024-05-03T23:59")],
            "val": [(datetime(2024, 5, 4), datetime(2024, 5, 4, 23))],
            "test": [("2024-05-06T00:00", "2024-05-07T00:00")],
        },
    )
    assert split.counts() == {"train": 12, "val": 4, "test": 4, "dropped": 4}  # 2024-05-05 in no range
    with pytest.raises(SplitError, match="overlaps"):
        split_by_time(times, ranges={"train": [("2024-05-01", "2024-05-04")], "val": [("2024-05-03", "2024-05-05")]})


def test_duplicate_times_stay_together() -> None:
    single = _events(1, 40)
    times = np.repeat(single, 3)  # three cameras per time
    split = split_by_time(times, gap=timedelta(minutes=30))
    for t in single:
        assert len(set(split.labels[times == t])) == 1
    _assert_no_leak(split, np.timedelta64(30, "m"))


def test_day_blocks_cut_events_at_midnight() -> None:
    times = np.datetime64("2024-01-01T22:00", "ns") + np.timedelta64(1, "h") * np.arange(6)  # 22:00 .. 03:00
    ev = split_by_time(times, fractions=(0.5, 0.5, 0.0), gap=0.0, max_gap=timedelta(hours=2))
    day = split_by_time(times, fractions=(0.5, 0.5, 0.0), gap=0.0, max_gap=timedelta(hours=2), block="day")
    assert list(day.labels) == ["train", "train", "val", "val", "val", "val"]
    # with event blocks the single event must be cut at the exact fraction instead
    assert list(ev.labels) == ["train", "train", "train", "val", "val", "val"]


def test_sequence_windows_refuse_gaps() -> None:
    times = _events(1, 12)
    keep = np.delete(np.arange(12), 5)  # frame 5 missing
    w = sequence_windows(times, keep, 4, STEP)
    np.testing.assert_array_equal(w, [[0, 1, 2, 3], [1, 2, 3, 4], [6, 7, 8, 9], [7, 8, 9, 10], [8, 9, 10, 11]])
    assert sequence_windows(times, keep, 7, STEP).shape == (0, 7)
    np.testing.assert_array_equal(sequence_windows(times, [3, 1], 1, STEP), [[1], [3]])


def test_sequences_never_straddle_splits() -> None:
    times = np.concatenate([_events(1, 100), _events(3, 30, start="2024-06-01T00:00")])
    split = split_by_time(times, gap=timedelta(minutes=30))
    total = 0
    for name in SPLIT_NAMES:
        windows = sequence_windows(times, split.indices(name), 6, STEP)
        total += len(windows)
        assert (split.labels[windows] == name).all()
        assert (np.diff(times[windows], axis=1) == STEP).all()
    assert total > 0


def test_bad_settings() -> None:
    times = _events(3, 5)
    with pytest.raises(SplitError, match="fractions"):
        split_by_time(times, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(SplitError, match="mode"):
        split_by_time(times, mode="random")
    with pytest.raises(SplitError, match="cannot fill"):
        split_by_time(times[:2])
