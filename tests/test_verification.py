"""Per-lead verification scores against values counted by hand: contingency, FSS, MAE, masks, accumulation."""

from __future__ import annotations

import numpy as np
import pytest

from meteovision.pipeline.verification.lead_scores import (
    FssWindow,
    LeadTimeScores,
    VerificationError,
    box_sum,
    fss_windows,
)

ONE_PX = [FssWindow(requested_km=1.0, scale_km=1.0, pixels=1, effective_km=1.0)]
THREE_PX = [FssWindow(requested_km=3.0, scale_km=3.0, pixels=3, effective_km=3.0)]


def _scores(acc: LeadTimeScores, lead: int = 0) -> dict[str, float]:
    return {s.metric: s.value for s in acc.scores() if s.lead_index == lead}


def _one(values: list[list[float]]) -> np.ndarray:
    """A single-lead field (1, H, W)."""
    return np.asarray(values, dtype=np.float32)[None]


FC = _one([[0.0, 2.0], [5.0, 0.4]])
OB = _one([[1.0, 0.0], [6.0, 0.6]])


def test_contingency_counts_by_hand() -> None:
    acc = LeadTimeScores(1, [0.5, 1.0, 10.0], 1.0, ONE_PX)
    acc.update(FC, OB, np.ones(FC.shape, dtype=bool))
    s = _scores(acc)
    # threshold 1: forecast events (0,1), (1,0); observed (0,0), (1,0) -> H=1, M=1, F=1, CN=1
    assert (s["hits@1"], s["misses@1"], s["false_alarms@1"], s["correct_negatives@1"]) == (1, 1, 1, 1)
    assert s["csi@1"] == pytest.approx(1 / 3)
    assert s["pod@1"] == pytest.approx(1 / 2)
    assert s["far@1"] == pytest.approx(1 / 2)
    # threshold 0.5: observed also (1,1) -> H=1, M=2, F=1, CN=0
    assert (s["hits@0.5"], s["misses@0.5"], s["false_alarms@0.5"], s["correct_negatives@0.5"]) == (1, 2, 1, 0)
    assert s["csi@0.5"] == pytest.approx(1 / 4)
    # threshold 10: no event at all -> every ratio undefined, not zero
    assert np.isnan(s["csi@10"]) and np.isnan(s["pod@10"]) and np.isnan(s["far@10"])
    assert s["mae"] == pytest.approx((1 + 2 + 1 + 0.2) / 4, rel=1e-6)
    assert s["bias"] == pytest.approx((-1 + 2 - 1 - 0.2) / 4, rel=1e-6)
    assert s["analysis_times"] == 1
    assert {sc.n_samples for sc in acc.scores()} == {4}


def test_mask_excludes_pixels() -> None:
    acc = LeadTimeScores(1, [1.0], 1.0, ONE_PX)
    mask = np.ones(FC.shape, dtype=bool)
    mask[0, 0, 0] = False  # the miss at (0,0) is not scored
    acc.update(FC, OB, mask)
    s = _scores(acc)
    assert (s["hits@1"], s["misses@1"], s["false_alarms@1"], s["correct_negatives@1"]) == (1, 0, 1, 1)
    assert s["csi@1"] == pytest.approx(1 / 2)
    assert s["pod@1"] == pytest.approx(1.0)
    assert s["mae"] == pytest.approx((2 + 1 + 0.2) / 3, rel=1e-6)
    assert {sc.n_samples for sc in acc.scores()} == {3}


def test_nan_under_the_mask_is_refused_and_outside_is_ignored() -> None:
    acc = LeadTimeScores(1, [1.0], 1.0, ONE_PX)
    f = FC.copy()
    f[0, 1, 1] = np.nan
    with pytest.raises(VerificationError, match="forecast is NaN or infinite at 1 scored pixel"):
        acc.update(f, OB, np.ones(FC.shape, dtype=bool))
    mask = np.ones(FC.shape, dtype=bool)
    mask[0, 1, 1] = False
    acc.update(f, OB, mask)
    assert _scores(acc)["mae"] == pytest.approx((1 + 2 + 1) / 3)


def test_counts_accumulate_over_analysis_times_not_as_a_mean_of_ratios() -> None:
    acc = LeadTimeScores(1, [1.0], 1.0, ONE_PX)
    ones = np.ones(FC.shape, dtype=bool)
    acc.update(FC, OB, ones)  # H=1, M=1, F=1 -> CSI 1/3
    acc.update(OB, OB, ones)  # H=2, M=0, F=0 -> CSI 1
    s = _scores(acc)
    assert s["csi@1"] == pytest.approx(3 / 5)  # (1+2) / (3+2), not (1/3 + 1)/2
    assert s["analysis_times"] == 2
    assert s["mae"] == pytest.approx(4.2 / 8, rel=1e-6)


def test_fss_identical_fields_is_one_and_disjoint_single_pixels_zero() -> None:
    rng = np.random.default_rng(0)
    field = rng.gamma(0.5, 2.0, size=(1, 20, 30)).astype(np.float32)
    acc = LeadTimeScores(1, [1.0], 1.0, ONE_PX + THREE_PX)
    acc.update(field, field, np.ones(field.shape, dtype=bool))
    s = _scores(acc)
    assert s["fss@1_1km"] == pytest.approx(1.0)
    assert s["fss@1_3km"] == pytest.approx(1.0)

    f = np.zeros((1, 5, 5), dtype=np.float32)
    o = np.zeros((1, 5, 5), dtype=np.float32)
    f[0, 1, 1] = 2.0
    o[0, 3, 3] = 2.0
    acc = LeadTimeScores(1, [1.0], 1.0, ONE_PX)
    acc.update(f, o, np.ones(f.shape, dtype=bool))
    assert _scores(acc)["fss@1_1km"] == pytest.approx(0.0)


def test_fss_mid_case_by_hand() -> None:
    # one row of 3 pixels, forecast event at column 0, observed event at column 1, 3 x 3 window.
    # Scored pixels in each window (the outside of the grid is not scored): 2, 3, 2.
    # Pf = [1/2, 1/3, 0], Po = [1/2, 1/3, 1/2]: sum (Pf-Po)^2 = 1/4, sum Pf^2 + Po^2 = 35/36.
    f = np.array([[[2.0, 0.0, 0.0]]], dtype=np.float32)
    o = np.array([[[0.0, 2.0, 0.0]]], dtype=np.float32)
    acc = LeadTimeScores(1, [1.0], 1.0, THREE_PX)
    acc.update(f, o, np.ones(f.shape, dtype=bool))
    assert _scores(acc)["fss@1_3km"] == pytest.approx(1 - (1 / 4) / (35 / 36))  # 26/35

    # masking column 2 leaves Pf = Po = [1/2, 1/2]: perfect
    mask = np.array([[[True, True, False]]])
    acc = LeadTimeScores(1, [1.0], 1.0, THREE_PX)
    acc.update(f, o, mask)
    assert _scores(acc)["fss@1_3km"] == pytest.approx(1.0)


def test_fss_sums_over_times_before_the_ratio() -> None:
    f = np.array([[[2.0, 0.0, 0.0]]], dtype=np.float32)
    o = np.array([[[0.0, 2.0, 0.0]]], dtype=np.float32)
    acc = LeadTimeScores(1, [1.0], 1.0, THREE_PX)
    ones = np.ones(f.shape, dtype=bool)
    acc.update(f, o, ones)  # num 1/4, den 35/36
    acc.update(o, o, ones)  # num 0, den 2 * (1/4 + 1/9 + 1/4) = 11/9
    expected = 1 - (1 / 4) / (35 / 36 + 11 / 9)
    assert _scores(acc)["fss@1_3km"] == pytest.approx(expected)


def test_fss_matches_pysteps_away_from_the_edges() -> None:
    spatialscores = pytest.importorskip("pysteps.verification.spatialscores")
    rng = np.random.default_rng(3)
    f = np.zeros((40, 50), dtype=np.float32)
    o = np.zeros((40, 50), dtype=np.float32)
    f[8:-8, 8:-8] = rng.gamma(0.6, 2.0, size=(24, 34))
    o[8:-8, 8:-8] = rng.gamma(0.6, 2.0, size=(24, 34))
    window = [FssWindow(requested_km=5.0, scale_km=5.0, pixels=5, effective_km=5.0)]
    acc = LeadTimeScores(1, [1.0], 1.0, window)
    acc.update(f[None], o[None], np.ones((1, 40, 50), dtype=bool))
    assert _scores(acc)["fss@1_5km"] == pytest.approx(spatialscores.fss(f, o, 1.0, 5), rel=1e-9)


def test_leads_are_kept_apart() -> None:
    f = np.concatenate([OB, FC])
    o = np.concatenate([OB, OB])
    acc = LeadTimeScores(2, [1.0], 1.0, ONE_PX)
    acc.update(f, o, np.ones(f.shape, dtype=bool))
    assert _scores(acc, 0)["csi@1"] == pytest.approx(1.0)
    assert _scores(acc, 1)["csi@1"] == pytest.approx(1 / 3)


def test_fss_windows_from_km() -> None:
    two_km = fss_windows([1, 2, 4, 8, 16, 32, 64], 2000.0)
    assert [(w.scale_km, w.pixels) for w in two_km] == [(2, 1), (4, 3), (8, 5), (16, 9), (32, 17), (64, 33)]
    assert two_km[0].requested_km == 1 and two_km[0].name == "2km"
    one_km = fss_windows([1, 2, 4, 8, 16, 32, 64], 1000.0)
    assert [w.pixels for w in one_km] == [1, 3, 5, 9, 17, 33, 65]
    assert one_km[4].effective_km == pytest.approx(17.0)
    # FMI's 1 km cells are 1000.036 m: 16 km is still 16 cells (17 px), the pixel scale is "1km"
    fmi = fss_windows([1, 2, 16], 1000.036)
    assert [(w.name, w.pixels) for w in fmi] == [("1km", 1), ("2km", 3), ("16km", 17)]
    with pytest.raises(VerificationError, match="positive km"):
        fss_windows([0.0], 1000.0)


def test_box_sum_is_exact_with_zero_outside() -> None:
    x = np.arange(12).reshape(3, 4)
    expected = np.zeros_like(x)
    padded = np.pad(x, 1)
    for i in range(3):
        for j in range(4):
            expected[i, j] = padded[i : i + 3, j : j + 3].sum()
    np.testing.assert_array_equal(box_sum(x, 3), expected)
    with pytest.raises(VerificationError, match="odd"):
        box_sum(x, 2)


def test_bad_shapes_and_masks_are_refused() -> None:
    acc = LeadTimeScores(1, [1.0], 1.0, ONE_PX)
    with pytest.raises(VerificationError, match="mask must be boolean"):
        acc.update(FC, OB, np.ones(FC.shape, dtype=np.float32))
    with pytest.raises(VerificationError, match="forecast has shape"):
        acc.update(FC[:, :1], OB, np.ones(FC.shape, dtype=bool))
    with pytest.raises(VerificationError, match="thresholds repeat"):
        LeadTimeScores(1, [1.0, 1.0], 1.0, ONE_PX)
