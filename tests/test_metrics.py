"""Verification metrics against hand-computed tables, numpy and pysteps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_sum

from meteovision.pipeline.training.metrics import (
    ClassificationScores,
    ContingencyScores,
    FractionsSkillScore,
    MetricInputError,
    RegressionScores,
    SegmentationScores,
    format_threshold,
)

NAN = float("nan")

# 4x4 rain rates (mm h-1); events at threshold 1 are value >= 1 (1.0 itself is an event, 0.99 is not).
#   observed events: (0,0) (0,1) (1,0) (2,2)                 -> 4
#   forecast events: (0,0) (0,2) (1,0) (2,3) (3,1)           -> 5
#   hits (0,0) (1,0) = 2, misses (0,1) (2,2) = 2, false alarms (0,2) (2,3) (3,1) = 3, correct negatives 9
OBS = torch.tensor([[3.0, 1.0, 0.0, 0.5], [1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 10.0, 0.99], [0.0, 0.0, 0.0, 0.0]])
FCST = torch.tensor([[1.0, 0.2, 2.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 1.0], [0.0, 4.0, 0.0, 0.0]])


def scalars(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items()}


def assert_close_or_nan(value: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------- contingency
def test_contingency_hand_table() -> None:
    metric = ContingencyScores(thresholds=[1.0])
    metric.update(FCST[None, None], OBS[None, None])
    s = scalars(metric.compute())
    assert (s["hits@1"], s["misses@1"], s["false_alarms@1"], s["correct_negatives@1"]) == (2, 2, 3, 9)
    assert s["csi@1"] == pytest.approx(2 / 7, abs=1e-15)
    assert s["pod@1"] == pytest.approx(0.5, abs=1e-15)
    assert s["far@1"] == pytest.approx(0.6, abs=1e-15)
    assert s["fbi@1"] == pytest.approx(1.25, abs=1e-15)


def test_contingency_several_thresholds_and_names() -> None:
    metric = ContingencyScores(thresholds=[0.5, 1.0, 10, 0.1])
    metric.update(FCST, OBS)
    s = scalars(metric.compute())
    # threshold 10: observed event (2,2) only, no forecast event -> 1 miss, POD 0, FAR undefined
    assert (s["hits@10"], s["misses@10"], s["false_alarms@10"], s["correct_negatives@10"]) == (0, 1, 0, 15)
    assert s["pod@10"] == 0.0 and s["csi@10"] == 0.0 and s["fbi@10"] == 0.0
    assert math.isnan(s["far@10"])
    # threshold 0.5: obs events also (0,3)=0.5 and (2,3)=0.99 -> 6; forecast events also (2,2)=0.9 -> 6;
    # hits (0,0) (1,0) (2,2) (2,3), misses (0,1) (0,3), false alarms (0,2) (3,1), correct negatives 8
    assert (s["hits@0.5"], s["misses@0.5"], s["false_alarms@0.5"], s["correct_negatives@0.5"]) == (4, 2, 2, 8)
    assert s["csi@0.5"] == pytest.approx(4 / 8) and s["fbi@0.5"] == pytest.approx(1.0)
    assert {"csi@0.1", "pod@0.1", "far@0.1", "fbi@0.1"} <= set(s)
    assert format_threshold(0.5) == "0.5" and format_threshold(1.0) == "1"
    assert format_threshold(1e-5) == "0.00001"


def test_contingency_probabilities_at_half() -> None:
    prob = torch.tensor([[0.9, 0.5, 0.49, 0.1]])
    truth = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    metric = ContingencyScores(thresholds=[0.5])
    metric.update(prob, truth)
    s = scalars(metric.compute())
    assert (s["hits@0.5"], s["misses@0.5"], s["false_alarms@0.5"], s["correct_negatives@0.5"]) == (1, 1, 1, 1)
    assert s["csi@0.5"] == pytest.approx(1 / 3)


def test_contingency_undefined_ratios_are_nan() -> None:
    metric = ContingencyScores(thresholds=[1.0])
    metric.update(torch.zeros(4, 4), torch.zeros(4, 4))
    s = scalars(metric.compute())
    assert s["correct_negatives@1"] == 16
    for key in ("csi@1", "pod@1", "far@1", "fbi@1"):
        assert math.isnan(s[key]), key
    # only false alarms: nothing observed -> POD and FBI undefined, FAR 1, CSI 0
    metric.reset()
    metric.update(torch.ones(2, 2), torch.zeros(2, 2))
    s = scalars(metric.compute())
    assert s["far@1"] == 1.0 and s["csi@1"] == 0.0
    assert math.isnan(s["pod@1"]) and math.isnan(s["fbi@1"])


def test_contingency_accumulates_counts_not_batch_means() -> None:
    # batch 2: one pixel, a hit -> CSI 1 on its own
    fcst2, obs2 = torch.tensor([[2.0]]), torch.tensor([[3.0]])
    two = ContingencyScores(thresholds=[1.0])
    two.update(FCST[None, None], OBS[None, None])
    two.update(fcst2[None, None], obs2[None, None])
    one = ContingencyScores(thresholds=[1.0])
    one.update(torch.cat([FCST.flatten(), fcst2.flatten()]), torch.cat([OBS.flatten(), obs2.flatten()]))
    s_two, s_one = scalars(two.compute()), scalars(one.compute())
    assert s_two == s_one
    assert s_two["csi@1"] == pytest.approx(3 / 8)  # hits 3, misses 2, false alarms 3
    assert s_two["csi@1"] != pytest.approx((2 / 7 + 1.0) / 2)  # the (wrong) mean of batch scores


def test_contingency_masks_and_nans_are_excluded() -> None:
    reference = ContingencyScores(thresholds=[1.0])
    reference.update(FCST, OBS)
    expected = scalars(reference.compute())
    # a fifth column: NaN target under a forecast event, NaN forecast under an observed event,
    # and a masked-out false alarm; none may count
    fcst = torch.cat([FCST, torch.tensor([[5.0], [NAN], [7.0], [0.0]])], dim=1)
    obs = torch.cat([OBS, torch.tensor([[NAN], [4.0], [0.0], [0.0]])], dim=1)
    mask = torch.ones_like(obs, dtype=torch.bool)
    mask[2, 4] = False
    metric = ContingencyScores(thresholds=[1.0])
    metric.update(fcst, obs, mask)
    s = scalars(metric.compute())
    assert s["correct_negatives@1"] == expected["correct_negatives@1"] + 1  # only (3,4) is valid and new
    for key in ("hits@1", "misses@1", "false_alarms@1", "csi@1", "pod@1", "far@1", "fbi@1"):
        assert s[key] == expected[key], key


def test_contingency_shapes_and_settings_are_checked() -> None:
    metric = ContingencyScores(thresholds=[1.0])
    metric.update(FCST[None, None], OBS[None])  # [B,1,H,W] against [B,H,W] is the same field
    assert float(metric.compute()["hits@1"]) == 2
    with pytest.raises(MetricInputError, match="prediction has shape"):
        metric.update(torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(MetricInputError, match="boolean"):
        metric.update(FCST, OBS, torch.ones(4, 4))
    with pytest.raises(MetricInputError, match="at least one"):
        ContingencyScores(thresholds=[])
    with pytest.raises(MetricInputError, match="repeat"):
        ContingencyScores(thresholds=[1, 1.0])


# ---------------------------------------------------------------------------- FSS
def row(*values: float) -> torch.Tensor:
    """A 1 x W field as [1, 1, 1, W]."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_fss_hand_golden_one_row() -> None:
    # f event at column 0, o event at column 1 of a 1 x 5 domain; the outside of the grid is not scored
    # n=1: Pf, Po are the events -> FSS = 1 - 2/2 = 0
    # n=3: windows hold 2, 3, 3, 3, 2 scored cells: Pf = [1/2, 1/3, 0, 0, 0], Po = [1/2, 1/3, 1/3, 0, 0]
    #      sum diff^2 = 1/9, sum Pf^2 + Po^2 = 5/6 -> 1 - 2/15 = 13/15
    # n=2: window covers columns i-1..i (1, 2, 2, 2, 2 cells): Pf = [1, 1/2, 0, ..], Po = [0, 1/2, 1/2, 0, 0]
    #      sum diff^2 = 1 + 1/4 = 5/4, sum Pf^2 + Po^2 = 5/4 + 1/2 = 7/4 -> 1 - 5/7 = 2/7
    metric = FractionsSkillScore(threshold=0.5, scales=[1, 2, 3])
    metric.update(row(1, 0, 0, 0, 0), row(0, 1, 0, 0, 0))
    s = scalars(metric.compute())
    assert s["fss@0.5_1px"] == pytest.approx(0.0, abs=1e-12)
    assert s["fss@0.5_3px"] == pytest.approx(13 / 15, abs=1e-12)
    assert s["fss@0.5_2px"] == pytest.approx(2 / 7, abs=1e-12)


def test_fss_identical_is_one_and_disjoint_pixels_zero() -> None:
    rng = np.random.default_rng(1)
    field = torch.tensor(rng.gamma(0.6, 2.0, (2, 1, 24, 30)))
    same = FractionsSkillScore(threshold=1.0, scales=[1, 4, 9])
    same.update(field, field.clone())
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in scalars(same.compute()).values())
    f, o = torch.zeros(1, 1, 10, 10), torch.zeros(1, 1, 10, 10)
    f[0, 0, 2, 3] = 5.0
    o[0, 0, 7, 6] = 5.0
    apart = FractionsSkillScore(threshold=1.0, scales=[1])
    apart.update(f, o)
    assert float(apart.compute()["fss@1_1px"]) == pytest.approx(0.0, abs=1e-12)
    empty = FractionsSkillScore(threshold=1.0, scales=[3])
    empty.update(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5))
    assert math.isnan(float(empty.compute()["fss@1_3px"]))  # no event anywhere: undefined


def test_fss_matches_pysteps_over_several_fields_away_from_the_edges() -> None:
    spatialscores = pytest.importorskip("pysteps.verification.spatialscores")
    rng = np.random.default_rng(7)
    fcst = np.zeros((3, 69, 73))
    obs = np.zeros((3, 69, 73))
    fcst[:, 16:-16, 16:-16] = rng.gamma(0.5, 2.0, (3, 37, 41))
    obs[:, 16:-16, 16:-16] = rng.gamma(0.5, 2.0, (3, 37, 41))
    scales = [1, 2, 3, 5, 8, 15]
    metric = FractionsSkillScore(threshold=1.0, scales=scales)
    metric.update(torch.tensor(fcst[:2]).unsqueeze(1), torch.tensor(obs[:2]).unsqueeze(1))
    metric.update(torch.tensor(fcst[2:]).unsqueeze(1), torch.tensor(obs[2:]).unsqueeze(1))
    ours = scalars(metric.compute())
    for n in scales:
        state = spatialscores.fss_init(1.0, n)
        for k in range(3):
            spatialscores.fss_accum(state, fcst[k], obs[k])
        assert ours[f"fss@1_{n}px"] == pytest.approx(spatialscores.fss_compute(state), abs=1e-9), n
    single = FractionsSkillScore(threshold=1.0, scales=[4])
    single.update(torch.tensor(fcst[0]), torch.tensor(obs[0]))
    assert float(single.compute()["fss@1_4px"]) == pytest.approx(spatialscores.fss(fcst[0], obs[0], 1.0, 4),
                                                                 abs=1e-9)


def test_fss_mask_hand_golden_and_nan_equivalence() -> None:
    # 1 x 4 domain, column 3 invalid. Valid events: f at column 1, o at column 2 (o's event at 3 is masked).
    # n=3 windows (columns i-1..i+1) hold the scored cells inside the grid: col0 2, col1 3, col2 2.
    # Pf = [1/2, 1/3, 1/2], Po = [0, 1/3, 1/2] -> sum diff^2 = 1/4, sum Pf^2 + Po^2 = 22/36 + 13/36 = 35/36
    expected = 1.0 - (1 / 4) / (35 / 36)
    f, o = row(0, 1, 0, 0), row(0, 0, 1, 1)
    mask = torch.tensor([True, True, True, False]).reshape(1, 1, 1, 4)
    masked = FractionsSkillScore(threshold=0.5, scales=[3])
    masked.update(f, o, mask)
    assert float(masked.compute()["fss@0.5_3px"]) == pytest.approx(expected, abs=1e-12)
    with_nan = FractionsSkillScore(threshold=0.5, scales=[3])
    with_nan.update(f, row(0, 0, 1, NAN))
    assert float(with_nan.compute()["fss@0.5_3px"]) == pytest.approx(expected, abs=1e-12)
    unmasked = FractionsSkillScore(threshold=0.5, scales=[3])
    unmasked.update(f, o)
    assert float(unmasked.compute()["fss@0.5_3px"]) != pytest.approx(expected, abs=1e-3)


def test_fss_all_true_mask_equals_no_mask() -> None:
    rng = np.random.default_rng(3)
    f = torch.tensor(rng.gamma(0.5, 2.0, (2, 2, 16, 20)))
    o = torch.tensor(rng.gamma(0.5, 2.0, (2, 2, 16, 20)))
    plain, masked = FractionsSkillScore(1.0, [1, 4, 7]), FractionsSkillScore(1.0, [1, 4, 7])
    plain.update(f, o)
    masked.update(f, o, torch.ones_like(f, dtype=torch.bool))
    assert scalars(plain.compute()) == pytest.approx(scalars(masked.compute()), abs=1e-12)


def test_fss_settings_are_checked() -> None:
    with pytest.raises(MetricInputError, match="positive integers"):
        FractionsSkillScore(1.0, [0, 3])
    with pytest.raises(MetricInputError, match="positive integers"):
        FractionsSkillScore(1.0, [2.5])
    with pytest.raises(MetricInputError, match="two spatial dims"):
        FractionsSkillScore(1.0, [1]).update(torch.zeros(5), torch.zeros(5))


# ---------------------------------------------------------------------------- segmentation
# truth [[0,0,1],[1,2,2]], prediction [[0,1,1],[1,2,0]]
# confusion (rows truth): [[1,1,0],[0,2,0],[1,0,1]]: tp [1,2,1], fp [1,1,0], fn [1,0,1]
SEG_T = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
SEG_P = torch.tensor([[[0, 1, 1], [1, 2, 0]]])


def test_segmentation_iou_f1_by_hand() -> None:
    metric = SegmentationScores(num_classes=3)
    metric.update(SEG_P, SEG_T)
    s = scalars(metric.compute())
    for key, expected in {"iou_0": 1 / 3, "iou_1": 2 / 3, "iou_2": 1 / 2, "f1_0": 1 / 2, "f1_1": 4 / 5,
                          "f1_2": 2 / 3, "iou_macro": 1 / 2, "f1_macro": (1 / 2 + 4 / 5 + 2 / 3) / 3,
                          "accuracy": 4 / 6}.items():
        assert s[key] == pytest.approx(expected, abs=1e-12), key
    assert metric.confusion_matrix().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # class scores [B, C, H, W] give the same result through argmax
    scores = SegmentationScores(num_classes=3)
    scores.update(torch.nn.functional.one_hot(SEG_P, 3).permute(0, 3, 1, 2).float() * 3.0, SEG_T)
    assert scalars(scores.compute()) == s


def test_segmentation_ignore_index_and_absent_class() -> None:
    # dropping truth class 2: confusion [[1,1,0],[0,2,0],[0,0,0]] -> class 2 absent, left out of the macro
    metric = SegmentationScores(num_classes=3, ignore_index=2)
    metric.update(SEG_P, SEG_T)
    s = scalars(metric.compute())
    assert s["iou_0"] == pytest.approx(1 / 2) and s["iou_1"] == pytest.approx(2 / 3)
    assert math.isnan(s["iou_2"]) and math.isnan(s["f1_2"])
    assert s["iou_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_segmentation_binary_probabilities_with_mask_and_nan() -> None:
    prob = torch.tensor([[[[0.9, 0.2], [0.6, 0.7]]]])  # -> [[1,0],[1,1]]
    truth = torch.tensor([[[[1.0, 1.0], [0.0, NAN]]]])
    mask = torch.tensor([[[[True, True], [True, True]]]])
    metric = SegmentationScores(num_classes=2)
    metric.update(prob, truth, mask)
    # valid pixels: (t1,p1) (t1,p0) (t0,p1) -> confusion [[0,1],[1,1]]
    assert metric.confusion_matrix().tolist() == [[0, 1], [1, 1]]
    s = scalars(metric.compute())
    assert s["iou_1"] == pytest.approx(1 / 3) and s["f1_1"] == pytest.approx(1 / 2)
    assert s["iou_0"] == 0.0


def test_segmentation_rejects_bad_labels() -> None:
    metric = SegmentationScores(num_classes=3)
    with pytest.raises(MetricInputError, match=r"outside 0\.\.2"):
        metric.update(SEG_P, SEG_T + 1)
    with pytest.raises(MetricInputError, match="score channels"):
        metric.update(torch.zeros(1, 4, 2, 3), SEG_T)


# ---------------------------------------------------------------------------- classification
def test_classification_by_hand() -> None:
    # truth [0,0,1,1,2,2,2], prediction [0,1,1,1,2,0,2]; class "d" never appears
    # confusion rows truth: [[1,1,0,0],[0,2,0,0],[1,0,2,0],[0,0,0,0]]
    # tp [1,2,2,0], fp [1,1,0,0], fn [1,0,1,0] -> F1 [1/2, 4/5, 4/5, undefined]
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    metric = ClassificationScores(num_classes=4, class_names=["a", "b", "c", "d"])
    metric.update(pred, truth)
    s = scalars(metric.compute())
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert (s["f1_a"], s["f1_b"], s["f1_c"]) == pytest.approx((0.5, 0.8, 0.8))
    assert math.isnan(s["f1_d"])
    assert s["f1_macro"] == pytest.approx(0.7)  # (0.5 + 0.8 + 0.8) / 3: "d" is excluded
    cm = metric.confusion_matrix()
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    # logits [B, C] give the same through argmax; accumulation over two batches is exact
    logits = torch.nn.functional.one_hot(pred, 4).float()
    split = ClassificationScores(num_classes=4, class_names=["a", "b", "c", "d"])
    split.update(logits[:3], truth[:3])
    split.update(logits[3:], truth[3:])
    assert torch.equal(split.confusion_matrix(), cm)
    assert scalars(split.compute()) == pytest.approx(s, nan_ok=True)


def test_classification_settings_are_checked() -> None:
    with pytest.raises(MetricInputError, match="2 class names for 3 classes"):
        ClassificationScores(num_classes=3, class_names=["x", "y"])
    with pytest.raises(MetricInputError, match="unique"):
        ClassificationScores(num_classes=2, class_names=["x", "x"])


# ---------------------------------------------------------------------------- regression
def test_regression_by_hand_and_numpy() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    obs = torch.tensor([2.0, 2.0, 5.0, 3.0])
    metric = RegressionScores()
    metric.update(pred, obs)
    s = scalars(metric.compute())
    # errors [-1, 0, -2, 1]
    assert s["rmse"] == pytest.approx(math.sqrt(6 / 4), abs=1e-12)
    assert s["mae"] == pytest.approx(1.0, abs=1e-12)
    assert s["bias"] == pytest.approx(-0.5, abs=1e-12)
    assert s["corr"] == pytest.approx(float(np.corrcoef(pred.numpy(), obs.numpy())[0, 1]), abs=1e-12)
    assert s["count"] == 4


def test_regression_accumulates_exactly_and_skips_invalid() -> None:
    rng = np.random.default_rng(5)
    x = rng.gamma(0.7, 3.0, 500)
    y = x + rng.normal(0.0, 1.0, 500)
    metric = RegressionScores()
    metric.update(torch.tensor(x[:100]), torch.tensor(y[:100]))
    metric.update(torch.tensor(x[100:]), torch.tensor(y[100:]))
    s = scalars(metric.compute())
    e = x - y
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
    assert s["mae"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    assert s["bias"] == pytest.approx(np.mean(e), rel=1e-10)
    assert s["corr"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    batch_mean_rmse = (np.sqrt(np.mean(e[:100] ** 2)) + np.sqrt(np.mean(e[100:] ** 2))) / 2
    assert abs(s["rmse"] - batch_mean_rmse) > 1e-3
    # NaN in target or prediction and masked pixels change nothing
    xs = torch.tensor(np.concatenate([x, [1.0, NAN, 50.0]]))
    ys = torch.tensor(np.concatenate([y, [NAN, 2.0, 0.0]]))
    mask = torch.ones_like(xs, dtype=torch.bool)
    mask[-1] = False
    dirty = RegressionScores()
    dirty.update(xs, ys, mask)
    assert scalars(dirty.compute()) == pytest.approx(s, rel=1e-12)


def test_regression_constant_field_has_no_correlation() -> None:
    metric = RegressionScores()
    metric.update(torch.full((50,), 0.1), torch.linspace(0, 1, 50))
    s = scalars(metric.compute())
    assert math.isnan(s["corr"])
    assert s["bias"] == pytest.approx(0.1 - 0.5, abs=1e-7)
    empty = RegressionScores()
    empty.update(torch.tensor([NAN]), torch.tensor([1.0]))
    assert all(math.isnan(v) for k, v in scalars(empty.compute()).items() if k != "count")


# ---------------------------------------------------------------------------- device, dtype, DDP-style merge
def all_metrics() -> dict[str, Metric]:
    return {
        "cont": ContingencyScores([0.5, 1.0]),
        "fss": FractionsSkillScore(1.0, [1, 3]),
        "seg": SegmentationScores(3),
        "cls": ClassificationScores(3, ["a", "b", "c"]),
        "reg": RegressionScores(),
    }


def test_states_are_sums_that_follow_the_module_but_keep_their_dtype() -> None:
    metrics = all_metrics()
    for name, metric in metrics.items():
        assert metric._reductions, name
        assert all(fx is dim_zero_sum for fx in metric._reductions.values()), name
    collection = nn.ModuleDict(metrics)
    collection.to(torch.float16)  # a "16-true" run casts the module; sums must stay float64 / int64
    assert metrics["reg"].sxx.dtype == torch.float64
    assert metrics["fss"].sum_fct_sq.dtype == torch.float64
    assert metrics["cont"].hits.dtype == torch.int64
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float16)
    metrics["reg"].update(pred, torch.tensor([2.0, 2.0, 5.0, 3.0], dtype=torch.float16))
    assert float(metrics["reg"].compute()["rmse"]) == pytest.approx(math.sqrt(1.5), abs=1e-12)
    collection.to(torch.device("cpu"))
    assert metrics["reg"].sxx.device.type == "cpu"
    collection.to("meta")  # registered states move with the module, defaults too
    for metric in metrics.values():
        for state in metric._defaults:
            assert getattr(metric, state).device.type == "meta"
            default = metric._defaults[state]
            assert isinstance(default, torch.Tensor) and default.device.type == "meta"


def test_merging_states_equals_one_pass() -> None:
    """What DDP does (sum the states of the ranks) gives the single-process score."""
    rng = np.random.default_rng(11)
    f = torch.tensor(rng.gamma(0.5, 2.0, (4, 1, 12, 12)))
    o = torch.tensor(rng.gamma(0.5, 2.0, (4, 1, 12, 12)))
    for make in (lambda: ContingencyScores([1.0]), lambda: FractionsSkillScore(1.0, [1, 3]),
                 RegressionScores):
        rank0, rank1, whole = make(), make(), make()
        rank0.update(f[:1], o[:1])
        rank1.update(f[1:], o[1:])
        whole.update(f, o)
        rank0.merge_state(rank1)
        assert scalars(rank0.compute()) == pytest.approx(scalars(whole.compute()), rel=1e-12)
