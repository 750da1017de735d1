"""The one scoring kernel: hand golden values, and `meteovision test` and `meteovision evaluate` agreeing on it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from meteovision.pipeline.training.metrics import ContingencyScores, FractionsSkillScore, RegressionScores
from meteovision.pipeline.verification import scores
from meteovision.pipeline.verification.lead_scores import FssWindow, LeadTimeScores

# 4 x 4 fields. Events >= 1: forecast at (0,0), (1,1), (3,3); observed at (0,0), (0,1), (2,2).
# >= 1: H 1, M 2, F 2, CN 11 -> CSI 1/5, POD 1/3, FAR 2/3, FBI 3/3 = 1.
# >= 5: forecast (1,1), observed (2,2): H 0, M 1, F 1, CN 14 -> CSI 0, POD 0, FAR 1, FBI 1.
# |f - o| = 2 + 6 + 7 + 2 (the (0,0) pair agrees) -> MAE 17/16.
# FSS at 1 mm/h, 1 px: events differ at 4 pixels, 3 + 3 events -> 1 - 4/6 = 1/3;
# 7 px: every window holds the whole grid, Pf = Po = 3/16 everywhere -> 1.
F4 = np.array([[3, 0, 0, 0], [0, 6, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]], dtype=np.float32)
O4 = np.array([[3, 2, 0, 0], [0, 0, 0, 0], [0, 0, 7, 0], [0, 0, 0, 0]], dtype=np.float32)


def _kernel_scores(f: np.ndarray, o: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    table = scores.contingency_sums(f[None], o[None], valid[None], [1.0, 5.0]).table()
    h, m, fa = table["hits"][0], table["misses"][0], table["false_alarms"][0]
    fss = scores.fss_sums(f[None], o[None], valid[None], 1.0, [1, 7])
    err = scores.error_sums(f[None], o[None], valid[None])
    return {"csi": scores.csi(h, m, fa).numpy(), "pod": scores.pod(h, m).numpy(), "far": scores.far(h, fa).numpy(),
            "fbi": scores.frequency_bias(h, m, fa).numpy(), "cn": table["correct_negatives"][0].numpy(),
            "fss": scores.fss(fss.diff_sq[0], fss.fct_sq[0], fss.obs_sq[0]).numpy(),
            "mae": scores.mae(err.sum_abs_error, err.n).numpy()}


@pytest.mark.parametrize("as_torch", [False, True])
def test_kernel_golden_values_on_a_4x4_field(as_torch: bool) -> None:
    valid = np.ones((4, 4), dtype=bool)
    f, o = (torch.from_numpy(F4), torch.from_numpy(O4)) if as_torch else (F4, O4)
    s = _kernel_scores(f, o, torch.from_numpy(valid) if as_torch else valid)  # type: ignore[arg-type]
    np.testing.assert_allclose(s["csi"], [1 / 5, 0.0])
    np.testing.assert_allclose(s["pod"], [1 / 3, 0.0])
    np.testing.assert_allclose(s["far"], [2 / 3, 1.0])
    np.testing.assert_allclose(s["fbi"], [1.0, 1.0])
    np.testing.assert_array_equal(s["cn"], [11, 14])
    np.testing.assert_allclose(s["fss"], [1 / 3, 1.0])
    np.testing.assert_allclose(s["mae"], [17 / 16])


def test_kernel_mask_and_zero_over_zero() -> None:
    # masking (3,3) drops a false alarm at 1 mm/h: H 1, M 2, F 1, n 15 -> CSI 1/4, FAR 1/2; MAE 15/15
    valid = np.ones((4, 4), dtype=bool)
    valid[3, 3] = False
    s = _kernel_scores(F4, O4, valid)
    np.testing.assert_allclose(s["csi"], [1 / 4, 0.0])
    np.testing.assert_allclose(s["far"], [1 / 2, 1.0])
    np.testing.assert_allclose(s["mae"], [1.0])
    zero = np.zeros((4, 4), dtype=np.float32)
    empty = _kernel_scores(zero, zero, valid)  # no event anywhere: every event ratio is NaN, MAE 0
    assert np.isnan(empty["csi"]).all() and np.isnan(empty["pod"]).all() and np.isnan(empty["fss"]).all()
    assert empty["mae"][0] == 0.0
    nothing = _kernel_scores(F4, O4, np.zeros((4, 4), dtype=bool))
    assert np.isnan(nothing["mae"]).all()


def test_box_sums_match_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 7, 9))  # two fields; windows up to wider than the grid
    sizes = [1, 2, 3, 4, 5, 8, 11, 21]
    for n, got in zip(sizes, scores.box_sums(x, sizes), strict=True):
        want = np.zeros_like(x)
        for i in range(7):
            for j in range(9):
                r0, c0 = max(0, i - n // 2), max(0, j - n // 2)
                want[:, i, j] = x[:, r0 : max(0, i - n // 2 + n), c0 : max(0, j - n // 2 + n)].sum(axis=(1, 2))
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"n={n}")


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = rng.gamma(0.5, 3.0, (3, 33, 41)).astype(np.float32)
    o = rng.gamma(0.5, 3.0, (3, 33, 41)).astype(np.float32)
    o[:, :6, -9:] = np.nan  # outside radar coverage
    f[1, 20:25, 3:7] = np.nan
    mask = rng.random(f.shape) > 0.1
    return f, o, mask


def test_meteovision_test_metrics_and_evaluation_agree() -> None:
    """The training metrics (torch, NaN dropped) and LeadTimeScores (numpy, mask) give the same scores."""
    thresholds, pixels = [0.5, 1.0, 5.0], [1, 3, 5, 9]
    windows = [FssWindow(float(n), float(n), n, float(n)) for n in pixels]
    for seed in (1, 2):
        f, o, mask = _random_case(seed)
        scored = mask & np.isfinite(f) & np.isfinite(o)
        evaluation = LeadTimeScores(1, thresholds, 1.0, windows)
        table, fss, reg = ContingencyScores(thresholds), FractionsSkillScore(1.0, pixels), RegressionScores()
        for k in range(3):  # three analysis times of one lead
            evaluation.update(np.nan_to_num(f[k : k + 1]), np.nan_to_num(o[k : k + 1]), scored[k : k + 1])
            for metric in (table, fss, reg):
                metric.update(torch.from_numpy(f[k : k + 1]), torch.from_numpy(o[k : k + 1]),
                              torch.from_numpy(mask[k : k + 1]))
        ours = {s.metric: s.value for s in evaluation.scores()}
        trained = {key: float(v) for m in (table, fss, reg) for key, v in m.compute().items()}
        for key in ("csi", "pod", "far", "fbi"):
            for t in ("0.5", "1", "5"):
                assert ours[f"{key}@{t}"] == pytest.approx(trained[f"{key}@{t}"], rel=1e-12), (key, t)
        for n in pixels:
            assert ours[f"fss@1_{n}km"] == pytest.approx(trained[f"fss@1_{n}px"], rel=1e-12), n
        assert ours["mae"] == pytest.approx(trained["mae"], rel=1e-12)
        assert ours["hits@1"] == trained["hits@1"]


# ---------------------------------------------------------------------------- the FSS before the kernel
def _old_box_sum(x: np.ndarray, n: int) -> np.ndarray:
    """The integral image LeadTimeScores used before the kernel (kept here as the reference)."""
    dtype = np.int64 if x.dtype.kind in "biu" else np.float64
    if n == 1:
        return x.astype(dtype)
    h, w = x.shape
    r = n // 2
    padded = np.zeros((h + 2 * r + 1, w + 2 * r + 1), dtype=dtype)
    padded[r + 1 : r + 1 + h, r + 1 : r + 1 + w] = x
    integral = padded.cumsum(axis=0).cumsum(axis=1)
    return integral[n : n + h, n : n + w] - integral[:h, n : n + w] - integral[n : n + h, :w] + integral[:h, :w]


def _old_fss_sums(f: np.ndarray, o: np.ndarray, m: np.ndarray, threshold: float, n: int) -> tuple[float, float]:
    valid = m.astype(np.int64)
    f_event = ((f >= threshold) & m).astype(np.int64)
    o_event = ((o >= threshold) & m).astype(np.int64)
    count = _old_box_sum(valid, n)[m].astype(np.float64)
    pf = _old_box_sum(f_event, n)[m] / count
    po = _old_box_sum(o_event, n)[m] / count
    return float(((pf - po) ** 2).sum()), float((pf**2).sum() + (po**2).sum())


def test_new_fss_equals_the_old_implementation() -> None:
    pixels = [1, 3, 5, 9, 17]
    windows = [FssWindow(float(n), float(n), n, float(n)) for n in pixels]
    f, o, mask = _random_case(5)
    scored = mask & np.isfinite(f) & np.isfinite(o)
    f, o = np.nan_to_num(f), np.nan_to_num(o)
    acc = LeadTimeScores(3, [1.0], 1.0, windows)
    acc.update(f, o, scored)
    for lead in range(3):
        for s, n in enumerate(pixels):
            num, den = _old_fss_sums(f[lead], o[lead], scored[lead], 1.0, n)
            assert acc.fss_num[lead, s] == pytest.approx(num, rel=1e-12, abs=1e-12)
            assert acc.fss_den[lead, s] == pytest.approx(den, rel=1e-12)


def test_kernel_leaves_its_inputs_unchanged() -> None:
    """The kernel reuses buffers and works in place: never in the caller's arrays (float64 input is not copied
    by a widening, so an in-place step there would write into the forecast)."""
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        f, o = (rng.gamma(0.5, 2.0, (3, 20, 25)).astype(dtype) for _ in range(2))
        valid = rng.random((3, 20, 25)) > 0.1
        copies = [a.copy() for a in (f, o, valid)]
        scores.error_sums(f, o, valid)
        scores.contingency_sums(f, o, valid, [0.5, 1.0])
        scores.fss_sums_of([f, o], o, valid, 1.0, [1, 3, 9])
        for before, after in zip(copies, (f, o, valid), strict=True):
            np.testing.assert_array_equal(before, after)


def _exact_fss_sums(f: np.ndarray, o: np.ndarray, m: np.ndarray, threshold: float, n: int) -> tuple[Fraction, Fraction]:
    """sum (Pf - Po)^2 and sum Pf^2 of one field in rational arithmetic: the fractions' exact values."""
    count = _old_box_sum(m.astype(np.int64), n)
    cf = _old_box_sum(((f >= threshold) & m).astype(np.int64), n)
    co = _old_box_sum(((o >= threshold) & m).astype(np.int64), n)
    diff, fct = Fraction(0), Fraction(0)
    for i, j in zip(*np.nonzero(m), strict=True):
        pf, po = Fraction(int(cf[i, j]), int(count[i, j])), Fraction(int(co[i, j]), int(count[i, j]))
        diff += (pf - po) ** 2
        fct += pf**2
    return diff, fct


def test_fss_sums_are_the_exact_sums_rounded_and_zero_for_a_perfect_forecast() -> None:
    """The FSS sums come from integer window counts, each term rounded once: within a few ulps of the exact
    rational sums (no cancellation between sum Pf^2, sum Pf Po and sum Po^2), and exactly 0 for a forecast
    equal to the observation."""
    rng = np.random.default_rng(11)
    f, o = (rng.gamma(0.6, 2.0, (2, 23, 31)).astype(np.float32) for _ in range(2))
    valid = rng.random((2, 23, 31)) > 0.15
    sizes = [1, 3, 5, 9]
    sums, perfect = scores.fss_sums_of([f, o], o, valid, 1.0, sizes)
    for k in range(2):
        for s, n in enumerate(sizes):
            diff, fct = _exact_fss_sums(f[k], o[k], valid[k], 1.0, n)
            assert float(sums.diff_sq[k, s]) == pytest.approx(float(diff), rel=1e-14)
            assert float(sums.fct_sq[k, s]) == pytest.approx(float(fct), rel=1e-14)
    assert torch.equal(perfect.diff_sq, torch.zeros_like(perfect.diff_sq))
    assert torch.equal(perfect.fct_sq, perfect.obs_sq)


@pytest.mark.parametrize("popcount", [True, False])
def test_event_counts_of_rows_of_any_width(popcount: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts by 8-byte population count (numpy 2) or by byte sums (older numpy) agree with a plain sum,
    whatever the row's width modulo 8."""
    if not popcount:
        monkeypatch.setattr(scores, "_BITWISE_COUNT", None)
    elif scores._BITWISE_COUNT is None:
        pytest.skip("numpy < 2 has no bitwise_count")
    rng = np.random.default_rng(5)
    for width in range(1, 26):
        rows = rng.random((3, width)) > 0.4
        np.testing.assert_array_equal(scores._count(torch.from_numpy(rows), dim=1).numpy(), rows.sum(axis=1))
        assert scores._count(torch.from_numpy(rows), dim=1).dtype == torch.int64
