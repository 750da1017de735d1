"""Training losses by name, so a config picks and weighs them: ``build_loss("bce_dice", dice_weight=2)``.

Every loss is an ``nn.Module`` called as ``loss(pred, target, mask=None)``: ``pred`` holds
logits for the classification and segmentation losses and raw values for the regression
ones. Invalid pixels (mask False, or NaN in the target: outside radar coverage) are
replaced before any arithmetic and then weighted out, so they change neither the value nor
the gradient and can never turn either into NaN. Means run over the valid pixels only; a
batch without a valid pixel gives 0 that still belongs to the graph (``backward`` works).

Input shapes: binary losses take ``pred`` [B, 1, ...] (or [B, ...], or [B, K, ...] for K
independent binary channels) and a target of the same shape, with or without the singleton
channel. Multiclass losses (``cross_entropy``, and ``dice``/``focal`` when ``pred`` has C > 1
channels and the target has none) take class-index targets [B, ...].
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meteovision.core.errors import ConfigError, MeteovisionError

log = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "BCELoss",
    "ComboLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "HuberLoss",
    "LossConfigError",
    "LossInputError",
    "MAELoss",
    "MSELoss",
    "build_loss",
]


class LossConfigError(ConfigError):
    """A loss name or setting in the config is unknown or out of range; the message names it."""


class LossInputError(MeteovisionError, ValueError):
    """A loss was called with tensors whose shapes or types do not fit; the message gives the shapes."""


# ---------------------------------------------------------------------------- input handling
def _squeezed(shape: torch.Size) -> list[int]:
    return [d for d in shape if d != 1]


def _align(x: Tensor, shape: torch.Size, what: str, owner: str) -> Tensor:
    """``x`` on ``shape``: same shape, same up to singleton dims, or broadcastable."""
    if x.shape == shape:
        return x
    if _squeezed(x.shape) == _squeezed(shape):
        return x.reshape(shape)
    try:
        return torch.broadcast_to(x, shape)
    except RuntimeError as err:
        raise LossInputError(
            f"{owner}: {what} has shape {tuple(x.shape)}, prediction needs {tuple(shape)}"
        ) from err


def _valid(target: Tensor, mask: Tensor | None, shape: torch.Size, owner: str) -> Tensor:
    """Where the target is finite and the mask (if any) is True, on ``shape``."""
    if target.dtype.is_floating_point:
        valid = torch.isfinite(target)
    else:
        valid = torch.ones_like(target, dtype=torch.bool)
    if mask is not None:
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise LossInputError(f"{owner}: mask must be boolean (True = valid), got {mask.dtype}")
        valid = valid & _align(mask.to(torch.bool), shape, "mask", owner)
    return valid


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over valid entries; 0 (still in the graph) when none is valid."""
    weight = valid.to(values.dtype)
    return (torch.where(valid, values, torch.zeros_like(values)) * weight).sum() / weight.sum().clamp_min(1.0)


def _is_multiclass(pred: Tensor, target: Tensor) -> bool:
    """Class-index target beside C > 1 channels of logits (rather than K binary channels)."""
    return pred.ndim >= 2 and pred.shape[1] > 1 and target.shape != pred.shape


def _binary_inputs(pred: Tensor, target: Tensor, mask: Tensor | None, owner: str) -> tuple[Tensor, Tensor]:
    """Target (0/1 or soft, invalid set to 0) on the prediction's shape, and the valid pixels."""
    target = _align(target, pred.shape, "target", owner)
    valid = _valid(target, mask, pred.shape, owner)
    target = torch.where(valid, target.to(pred.dtype), torch.zeros_like(pred))
    return target, valid


def _class_inputs(pred: Tensor, target: Tensor, mask: Tensor | None, owner: str,
                  ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Class indices [B, ...] (invalid set to 0) for logits [B, C, ...], and the valid pixels."""
    shape = torch.Size((pred.shape[0], *pred.shape[2:]))
    finite: Tensor | None = None
    if target.dtype.is_floating_point:
        finite = _align(torch.isfinite(target), shape, "target", owner)
        target = torch.where(torch.isfinite(target), target, torch.zeros_like(target)).round().to(torch.int64)
    elif target.dtype.is_complex or target.dtype == torch.bool:
        raise LossInputError(f"{owner}: target must hold class indices, got {target.dtype}")
    target = _align(target, shape, "target", owner)
    valid = _valid(target, mask, shape, owner)
    if finite is not None:
        valid = valid & finite
    if ignore_index is not None:
        valid = valid & (target != ignore_index)
    n_classes = pred.shape[1]
    if bool((valid & ((target < 0) | (target >= n_classes))).any()):
        bad = sorted(set(target[valid & ((target < 0) | (target >= n_classes))].unique().tolist()))[:10]
        raise LossInputError(f"{owner}: target holds class indices {bad} outside 0..{n_classes - 1}")
    target = torch.where(valid, target, torch.zeros_like(target))
    return target, valid


def _floats(values: float | Sequence[float] | None, what: str, owner: str) -> Tensor | None:
    if values is None:
        return None
    try:
        out = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise LossConfigError(
            f"{owner}: {what} must be a number or a list of numbers, got {values!r}"
        ) from err
    if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
        raise LossConfigError(f"{owner}: {what} must be finite and >= 0, got {values!r}")
    return out


def _channel_view(weights: Tensor, pred: Tensor) -> Tensor:
    """Per-channel weights [K] shaped to broadcast on dim 1 of ``pred``."""
    if weights.numel() == 1:
        return weights.reshape(())
    return weights.reshape(1, -1, *([1] * (pred.ndim - 2)))


def _number(value: Any, what: str, owner: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= float(value) <= high:
        raise LossConfigError(f"{owner}: {what} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


class _MaskedLoss(nn.Module):
    """Base: every loss is ``forward(pred, target, mask=None) -> scalar``."""

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------------------- classification / segmentation
class BCELoss(_MaskedLoss):
    """Binary cross-entropy on logits, mean over valid pixels; ``pos_weight`` (number or one per channel)
    up-weights the rare positive class (bow echoes, artefacts)."""

    def __init__(self, pos_weight: float | Sequence[float] | None = None) -> None:
        super().__init__()
        self.pos_weight: Tensor | None
        self.register_buffer("pos_weight", _floats(pos_weight, "pos_weight", "bce"))

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if _is_multiclass(pred, target):
            raise LossInputError(
                f"bce: prediction {tuple(pred.shape)} and target {tuple(target.shape)} look multiclass; "
                "use cross_entropy (or give a target of the prediction's shape)"
            )
        target, valid = _binary_inputs(pred, target, mask, "bce")
        pos_weight = None if self.pos_weight is None else _channel_view(self.pos_weight.to(pred.dtype), pred)
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none", pos_weight=pos_weight)
        return _masked_mean(loss, valid)


class FocalLoss(_MaskedLoss):
    """Focal loss (Lin et al. 2017): FL = -alpha_t (1 - p_t)^gamma log(p_t), mean over valid pixels.

    Binary (sigmoid): ``alpha`` weighs positives and 1 - alpha negatives (None: no weighting);
    with gamma = 0 it is the alpha-weighted BCE. Multiclass (softmax, class-index target):
    ``alpha`` is None or one weight per class.
    """

    def __init__(self, alpha: float | Sequence[float] | None = 0.25, gamma: float = 2.0,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        self.gamma = _number(gamma, "gamma", "focal", 0.0)
        self.ignore_index = ignore_index
        self.alpha: Tensor | None
        self.register_buffer("alpha", _floats(alpha, "alpha", "focal"))
        if self.alpha is not None and self.alpha.numel() == 1 and float(self.alpha) > 1.0:
            raise LossConfigError(
                f"focal: a single alpha weighs positives against negatives, must be in [0, 1], got {alpha}"
            )

    def _modulation(self, p_t: Tensor) -> Tensor:
        # clamp keeps the derivative of x**gamma finite at x = 0 for gamma < 1
        return torch.pow((1.0 - p_t).clamp_min(1e-12), self.gamma)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if _is_multiclass(pred, target):
            labels, valid = _class_inputs(pred, target, mask, "focal", self.ignore_index)
            log_p = F.log_softmax(pred, dim=1)
            log_p_t = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
            loss = -self._modulation(log_p_t.exp()) * log_p_t
            if self.alpha is not None:
                if self.alpha.numel() != pred.shape[1]:
                    raise LossConfigError(
                        f"focal: multiclass alpha needs one weight per class ({pred.shape[1]}), "
                        f"got {self.alpha.tolist()}"
                    )
                loss = loss * self.alpha.to(pred.dtype)[labels]
            return _masked_mean(loss, valid)
        target, valid = _binary_inputs(pred, target, mask, "focal")
        ce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        p = torch.sigmoid(pred)
        p_t = p * target + (1.0 - p) * (1.0 - target)
        loss = ce * self._modulation(p_t)
        if self.alpha is not None:
            if self.alpha.numel() not in (1, pred.shape[1] if pred.ndim >= 2 else 1):
                raise LossConfigError(f"focal: binary alpha needs one value or one per channel, got "
                                      f"{self.alpha.tolist()} for prediction {tuple(pred.shape)}")
            alpha = _channel_view(self.alpha.to(pred.dtype), pred)
            loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
        return _masked_mean(loss, valid)


class DiceLoss(_MaskedLoss):
    """Soft Dice loss 1 - (2 Σ p t + smooth) / (Σ p + Σ t + smooth) over the valid pixels of the whole batch.

    Binary: sigmoid probabilities, one Dice per channel. Multiclass (class-index target):
    softmax probabilities against one-hot targets, one Dice per class. The loss is the mean
    over channels/classes; a class absent from both target and prediction scores Dice 1.
    """

    def __init__(self, smooth: float = 1.0, ignore_index: int | None = None) -> None:
        super().__init__()
        self.smooth = _number(smooth, "smooth", "dice", 0.0)
        self.ignore_index = ignore_index

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if _is_multiclass(pred, target):
            labels, valid = _class_inputs(pred, target, mask, "dice", self.ignore_index)
            prob = torch.softmax(pred, dim=1)
            onehot = F.one_hot(labels, pred.shape[1]).movedim(-1, 1).to(pred.dtype)
            weight = valid.unsqueeze(1).to(pred.dtype)
        else:
            onehot, valid = _binary_inputs(pred, target, mask, "dice")
            prob = torch.sigmoid(pred)
            weight = valid.to(pred.dtype)
            if pred.ndim == 1:
                prob, onehot, weight = prob[:, None], onehot[:, None], weight[:, None]
        prob = prob * weight
        onehot = onehot * weight
        dims = [d for d in range(prob.ndim) if d != 1]
        inter = (prob * onehot).sum(dim=dims)
        card = prob.sum(dim=dims) + onehot.sum(dim=dims)
        dice = (2.0 * inter + self.smooth) / (card + self.smooth).clamp_min(1e-12)
        return 1.0 - dice.mean()


class WeightedSum(_MaskedLoss):
    """Σ weight_i * loss_i over named terms: the engine of ``bce_dice``, ``focal_dice`` and ``combo``."""

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList([m for _, m in terms])

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        total = pred.new_zeros(())
        for weight, term in zip(self.weights, self.terms, strict=True):
            if weight != 0.0:
                total = total + weight * term(pred, target, mask)
        return total


class BCEDiceLoss(WeightedSum):
    """``bce_weight`` * BCE + ``dice_weight`` * Dice: pixel accuracy plus overlap of rare objects."""

    def __init__(self, *, bce_weight: float = 1.0, dice_weight: float = 1.0,
                 pos_weight: float | Sequence[float] | None = None, smooth: float = 1.0) -> None:
        super().__init__([
            (_number(bce_weight, "bce_weight", "bce_dice", 0.0), BCELoss(pos_weight=pos_weight)),
            (_number(dice_weight, "dice_weight", "bce_dice", 0.0), DiceLoss(smooth=smooth)),
        ])


class FocalDiceLoss(WeightedSum):
    """``focal_weight`` * focal + ``dice_weight`` * Dice."""

    def __init__(self, *, focal_weight: float = 1.0, dice_weight: float = 1.0,
                 alpha: float | Sequence[float] | None = 0.25, gamma: float = 2.0, smooth: float = 1.0,
                 ignore_index: int | None = None) -> None:
        super().__init__([
            (_number(focal_weight, "focal_weight", "focal_dice", 0.0),
             FocalLoss(alpha=alpha, gamma=gamma, ignore_index=ignore_index)),
            (_number(dice_weight, "dice_weight", "focal_dice", 0.0),
             DiceLoss(smooth=smooth, ignore_index=ignore_index)),
        ])


class CrossEntropyLoss(_MaskedLoss):
    """Softmax cross-entropy for images [B, C] or maps [B, C, ...] with class-index targets.

    ``weight``: one weight per class; the mean is Σ w_y l / Σ w_y over valid samples, as
    ``torch.nn.functional.cross_entropy`` does. ``ignore_index`` and ``label_smoothing`` as in
    torch. Float targets may carry NaN for invalid pixels.
    """

    def __init__(self, weight: Sequence[float] | None = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight: Tensor | None
        self.register_buffer("weight", _floats(weight, "weight", "cross_entropy"))
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise LossConfigError(f"cross_entropy: ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.label_smoothing = _number(label_smoothing, "label_smoothing", "cross_entropy", 0.0, 1.0)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if pred.ndim < 2:
            raise LossInputError(
                f"cross_entropy: prediction needs a class dim [B, C, ...], got {tuple(pred.shape)}"
            )
        if self.weight is not None and self.weight.numel() != pred.shape[1]:
            raise LossInputError(
                f"cross_entropy: {self.weight.numel()} class weights for {pred.shape[1]} classes"
            )
        labels, valid = _class_inputs(pred, target, mask, "cross_entropy", self.ignore_index)
        weight = None if self.weight is None else self.weight.to(pred.dtype)
        loss = F.cross_entropy(pred, labels, weight=weight, reduction="none",
                               label_smoothing=self.label_smoothing)
        sample_weight = valid.to(pred.dtype) if weight is None else weight[labels] * valid.to(pred.dtype)
        return torch.where(valid, loss, torch.zeros_like(loss)).sum() / sample_weight.sum().clamp_min(1e-12)


# ---------------------------------------------------------------------------- regression
class _PointwiseRegression(_MaskedLoss):
    name = "regression"

    def pointwise(self, error: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        target = _align(target, pred.shape, "target", self.name)
        valid = _valid(target, mask, pred.shape, self.name)
        error = torch.where(valid, pred - torch.where(valid, target.to(pred.dtype), torch.zeros_like(pred)),
                            torch.zeros_like(pred))
        return _masked_mean(self.pointwise(error), valid)


class MAELoss(_PointwiseRegression):
    """Mean absolute error over valid pixels (robust to the heavy tail of rain rates)."""

    name = "mae"

    def pointwise(self, error: Tensor) -> Tensor:
        return error.abs()


class MSELoss(_PointwiseRegression):
    """Mean squared error over valid pixels."""

    name = "mse"

    def pointwise(self, error: Tensor) -> Tensor:
        return error * error


class HuberLoss(_PointwiseRegression):
    """Huber loss over valid pixels: quadratic below ``delta``, linear above."""

    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = _number(delta, "delta", "huber", 0.0)
        if self.delta == 0.0:
            raise LossConfigError("huber: delta must be > 0 (use mae for delta = 0)")

    def pointwise(self, error: Tensor) -> Tensor:
        return F.huber_loss(error, torch.zeros_like(error), reduction="none", delta=self.delta)


# ---------------------------------------------------------------------------- registry
class ComboLoss(WeightedSum):
    """Σ weight * loss over ``terms``, each a mapping ``{"name": ..., "weight": 1.0, **settings}``."""

    def __init__(self, terms: Sequence[Mapping[str, Any]]) -> None:
        if isinstance(terms, str | bytes) or not isinstance(terms, Sequence) or not terms:
            raise LossConfigError(
                f"combo: 'terms' must be a non-empty list of {{name, weight, ...}}, got {terms!r}"
            )
        built: list[tuple[float, nn.Module]] = []
        for i, term in enumerate(terms):
            if not isinstance(term, Mapping) or "name" not in term:
                raise LossConfigError(f"combo: term {i} must be a mapping with a 'name', got {term!r}")
            conf = dict(term)
            weight = _number(conf.pop("weight", 1.0), f"weight of term {i}", "combo", 0.0)
            built.append((weight, build_loss(**conf)))
        super().__init__(built)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
    "focal_dice": FocalDiceLoss,
    "cross_entropy": CrossEntropyLoss,
    "mae": MAELoss,
    "mse": MSELoss,
    "huber": HuberLoss,
    "combo": ComboLoss,
}


def build_loss(name: str, **settings: Any) -> nn.Module:
    """The loss called ``name`` built with ``settings``.

    Unknown names or settings raise :class:`LossConfigError` listing the known ones.
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise LossConfigError(f"loss '{name}' is unknown; known: {sorted(LOSSES)}")
    factory = LOSSES[key]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(settings) - set(params))
    if unknown:
        raise LossConfigError(f"loss '{key}': unknown setting(s) {unknown}; known: {sorted(params)}")
    try:
        loss = factory(**settings)
    except TypeError as err:
        raise LossConfigError(f"loss '{key}': {err}") from err
    log.debug("built loss %s with %s", key, settings)
    return loss
