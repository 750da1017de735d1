"""Loss registry and masked losses: hand-computed values, NaN targets, class weights, config errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from meteovision.pipeline.training.losses import LOSSES, LossConfigError, LossInputError, build_loss

LN2 = math.log(2.0)
NAN = float("nan")

BINARY = ["bce", "focal", "dice", "bce_dice", "focal_dice"]
REGRESSION = ["mae", "mse", "huber"]


def value(name: str, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
          **settings: Any) -> float:
    return float(build_loss(name, **settings)(pred, target, mask))


# ---------------------------------------------------------------------------- binary losses by hand
def test_bce_of_zero_logit_is_ln2_and_pos_weight_scales_positives() -> None:
    pred = torch.zeros(2, 1, 3, 3)
    target = torch.randint(0, 2, (2, 1, 3, 3)).float()
    assert value("bce", pred, target) == pytest.approx(LN2, abs=1e-7)
    # one positive (weighted 3) and one negative pixel: (3 ln2 + ln2) / 2
    assert value("bce", torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), pos_weight=3.0) == \
        pytest.approx(2 * LN2, abs=1e-7)


def test_binary_target_with_or_without_channel() -> None:
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 4, 4) > 0.5).float()
    for name in BINARY:
        assert value(name, pred, target) == pytest.approx(value(name, pred, target[:, None]), abs=1e-7), name


def test_focal_by_hand_and_gamma_zero_is_alpha_weighted_bce() -> None:
    # logit 0: p_t = 1/2, (1 - p_t)^2 = 1/4; positive weighted alpha = 0.25, negative 0.75
    one = torch.ones(1, 1, 1, 1)
    assert value("focal", torch.zeros_like(one), one) == pytest.approx(LN2 / 16, abs=1e-7)
    assert value("focal", torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)) == \
        pytest.approx(3 * LN2 / 16, abs=1e-7)
    torch.manual_seed(1)
    pred = torch.randn(3, 1, 5, 5) * 3
    target = (torch.rand(3, 1, 5, 5) > 0.7).float()
    alpha = 0.3
    bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    expected = ((alpha * target + (1 - alpha) * (1 - target)) * bce).mean()
    assert value("focal", pred, target, gamma=0.0, alpha=alpha) == pytest.approx(float(expected), abs=1e-6)
    assert value("focal", pred, target, gamma=0.0, alpha=None) == pytest.approx(float(bce.mean()), abs=1e-6)
    # focusing lowers the loss of well-classified pixels
    assert value("focal", pred, target, gamma=2.0, alpha=None) < float(bce.mean())


def test_dice_by_hand_perfect_and_masked() -> None:
    # p = 0.5 everywhere, target [1, 1, 0, 0], smooth 1: (2*1 + 1) / (2 + 2 + 1) = 0.6 -> loss 0.4
    pred = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    assert value("dice", pred, target) == pytest.approx(0.4, abs=1e-7)
    # valid pixels 0 and 2 only: sum p = 1, sum t = 1, sum pt = 0.5 -> (1 + 1) / (2 + 1) -> loss 1/3
    mask = torch.tensor([[[[True, False, True, False]]]])
    assert value("dice", pred, target, mask) == pytest.approx(1 / 3, abs=1e-7)
    perfect = (target * 2 - 1) * 40.0
    assert value("dice", perfect, target) == pytest.approx(0.0, abs=1e-6)
    # multiclass: C = 2 uniform logits against labels [0, 0, 1, 1] is the binary case per class -> 0.4
    labels = torch.tensor([[[0, 0, 1, 1]]])
    assert value("dice", torch.zeros(1, 2, 1, 4), labels) == pytest.approx(0.4, abs=1e-7)
    onehot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert value("dice", (onehot * 2 - 1) * 40.0, labels) == pytest.approx(0.0, abs=1e-6)


def test_weighted_sums_and_combo() -> None:
    torch.manual_seed(2)
    pred = torch.randn(2, 1, 6, 6)
    target = (torch.rand(2, 1, 6, 6) > 0.6).float()
    bce, dice = value("bce", pred, target), value("dice", pred, target)
    focal = value("focal", pred, target, gamma=1.5)
    assert value("bce_dice", pred, target) == pytest.approx(bce + dice, abs=1e-6)
    assert value("bce_dice", pred, target, bce_weight=0.5, dice_weight=2.0) == \
        pytest.approx(0.5 * bce + 2 * dice, abs=1e-6)
    assert value("focal_dice", pred, target, gamma=1.5, dice_weight=3.0) == \
        pytest.approx(focal + 3 * dice, abs=1e-6)
    terms = [{"name": "bce", "weight": 1}, {"name": "dice", "weight": 1}]
    assert value("combo", pred, target, terms=terms) == pytest.approx(bce + dice, abs=1e-6)
    terms = [{"name": "focal", "weight": 2.0, "gamma": 1.5}, {"name": "bce"}]
    assert value("combo", pred, target, terms=terms) == pytest.approx(2 * focal + bce, abs=1e-6)


# ---------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_by_hand_with_class_weights() -> None:
    # sample 1: uniform logits, class 0 -> ln 2; sample 2: p(class 1) = 3/4 -> ln(4/3)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    labels = torch.tensor([0, 1])
    assert value("cross_entropy", logits, labels) == pytest.approx((LN2 + math.log(4 / 3)) / 2, abs=1e-7)
    assert value("cross_entropy", logits, labels, weight=[1.0, 3.0]) == \
        pytest.approx((LN2 + 3 * math.log(4 / 3)) / 4, abs=1e-7)
    # the mask drops sample 2; ignore_index drops it too
    assert value("cross_entropy", logits, labels, torch.tensor([True, False])) == pytest.approx(LN2, abs=1e-7)
    assert value("cross_entropy", logits, torch.tensor([0, 7]), ignore_index=7) == \
        pytest.approx(LN2, abs=1e-7)
    assert value("cross_entropy", torch.zeros(4, 5), torch.tensor([0, 1, 2, 4])) == \
        pytest.approx(math.log(5), abs=1e-6)


def test_cross_entropy_matches_torch_with_weights_and_smoothing() -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 3, 5, 6)
    labels = torch.randint(0, 3, (4, 5, 6))
    weight = [0.5, 2.0, 1.0]
    for smoothing in (0.0, 0.1):
        ours = value("cross_entropy", logits, labels, weight=weight, label_smoothing=smoothing)
        ref = F.cross_entropy(logits, labels, weight=torch.tensor(weight), label_smoothing=smoothing)
        assert ours == pytest.approx(float(ref), rel=1e-6), smoothing
    with pytest.raises(LossInputError, match="2 class weights for 3 classes"):
        value("cross_entropy", logits, labels, weight=[1.0, 2.0])
    with pytest.raises(LossInputError, match=r"class indices \[5\]"):
        value("cross_entropy", logits, torch.full((4, 5, 6), 5))


# ---------------------------------------------------------------------------- regression by hand
def test_masked_regression_losses_by_hand() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    target = torch.tensor([[2.0, NAN, 0.0, 4.0]])
    mask = torch.tensor([[True, True, True, False]])
    # valid: index 0 (error -1) and index 2 (error 3)
    assert value("mae", pred, target, mask) == pytest.approx(2.0)
    assert value("mse", pred, target, mask) == pytest.approx(5.0)
    # huber, delta 1: 0.5 * 1 and 3 - 0.5
    assert value("huber", pred, target, mask) == pytest.approx(1.5)
    assert value("huber", pred, target, mask, delta=2.0) == pytest.approx((0.5 + (2 * 3 - 2)) / 2)


@pytest.mark.parametrize("name", REGRESSION + BINARY + ["cross_entropy"])
def test_no_valid_pixel_gives_zero_with_a_gradient(name: str) -> None:
    if name == "cross_entropy":
        pred = torch.randn(2, 3, 4, 4, requires_grad=True)
        target = torch.full((2, 4, 4), NAN)
    else:
        pred = torch.randn(2, 1, 4, 4, requires_grad=True)
        target = torch.full((2, 1, 4, 4), NAN)
    loss = build_loss(name)(pred, target, torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert pred.grad is not None
    assert torch.equal(pred.grad, torch.zeros_like(pred))


# ---------------------------------------------------------------------------- NaN targets
MULTICLASS = ["cross_entropy", "multiclass_dice", "multiclass_focal"]


@pytest.mark.parametrize("name", REGRESSION + BINARY + MULTICLASS)
def test_nan_target_pixels_change_nothing(name: str) -> None:
    torch.manual_seed(4)
    multiclass = name in MULTICLASS
    settings: dict[str, Any] = {"alpha": None} if name == "multiclass_focal" else {}
    loss_fn = build_loss(name.removeprefix("multiclass_"), **settings)
    where: tuple[int | slice, ...]
    if multiclass:
        pred = torch.randn(2, 3, 5, 5, requires_grad=True)
        target = torch.randint(0, 3, (2, 5, 5)).float()
        nan_target = target.clone()
        nan_target[0, 1, 2] = NAN
        mask = torch.ones(2, 5, 5, dtype=torch.bool)
        mask[0, 1, 2] = False
        where = (0, slice(None), 1, 2)
    else:
        pred = torch.randn(2, 1, 5, 5, requires_grad=True)
        target = torch.rand(2, 1, 5, 5) if name in REGRESSION else (torch.rand(2, 1, 5, 5) > 0.5).float()
        nan_target = target.clone()
        nan_target[0, 0, 1, 2] = NAN
        mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        mask[0, 0, 1, 2] = False
        where = (0, 0, 1, 2)
    with_nan = loss_fn(pred, nan_target)
    with_nan.backward()
    assert pred.grad is not None
    grad = pred.grad.clone()
    assert torch.isfinite(with_nan) and bool(torch.isfinite(grad).all())
    assert torch.equal(grad[where], torch.zeros_like(grad[where]))
    # the same as masking the pixel out, and different from scoring it with any real target value
    got = float(with_nan.detach())
    assert got == pytest.approx(float(loss_fn(pred, target, mask).detach()), abs=1e-6)
    assert got != pytest.approx(float(loss_fn(pred, target).detach()), abs=1e-7)


# ---------------------------------------------------------------------------- registry errors
def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(LossConfigError) as err:
        build_loss("wasserstein")
    for known in LOSSES:
        assert known in str(err.value)
    assert set(LOSSES) == {"bce", "focal", "dice", "bce_dice", "focal_dice", "cross_entropy", "mae", "mse",
                           "huber", "combo"}


def test_bad_settings_are_named() -> None:
    with pytest.raises(LossConfigError, match=r"unknown setting\(s\) \['gama'\]"):
        build_loss("focal", gama=2.0)
    with pytest.raises(LossConfigError, match="gamma"):
        build_loss("focal", gamma=-1.0)
    with pytest.raises(LossConfigError, match="pos_weight"):
        build_loss("bce", pos_weight="heavy")
    with pytest.raises(LossConfigError, match="label_smoothing"):
        build_loss("cross_entropy", label_smoothing=1.5)
    with pytest.raises(LossConfigError, match="terms"):
        build_loss("combo", terms=[])
    with pytest.raises(LossConfigError, match="unknown"):
        build_loss("combo", terms=[{"name": "bce"}, {"name": "nope"}])
    with pytest.raises(LossInputError, match="cross_entropy"):
        build_loss("bce")(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


def test_buffers_follow_the_module() -> None:
    loss = build_loss("cross_entropy", weight=[1.0, 3.0]).to(torch.float64)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    out = loss(logits, torch.tensor([0, 1]))
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx((LN2 + 3 * math.log(4 / 3)) / 4, abs=1e-12)
