"""Verification scores that accumulate over a whole epoch and across DDP processes.

Each metric is a ``torchmetrics.Metric`` whose states are *sums* (counts, sums of squares)
registered with ``dist_reduce_fx="sum"``: the epoch score is computed once from the summed
states, never as a mean of per-batch scores, and DDP ranks merge by adding their states.
States are registered with ``add_state`` so they follow the module to any device; float
sums are kept in float64 and counts in int64 whatever dtype the module is cast to (a
``bf16-true`` Lightning run must not accumulate millions of pixels in bfloat16). Float64
states rule out Apple MPS; score there on the CPU.

Every ``update`` takes an optional boolean ``mask`` (True = valid). Pixels where the mask is
False or where the prediction or the target is NaN (or infinite) never enter a score.
``compute()`` returns ``dict[str, Tensor]`` of scalars with flat names (``"csi@1"``,
``"rmse"``, ``"f1_macro"``) so a Lightning task can ``log_dict`` them. Ratios whose
denominator is zero (no event observed, no pixel scored) are NaN, never 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.verification import scores
from meteovision.pipeline.verification.lead_scores import format_value

__all__ = [
    "ClassificationScores",
    "ContingencyScores",
    "FractionsSkillScore",
    "MetricInputError",
    "RegressionScores",
    "SegmentationScores",
    "format_threshold",
]


class MetricInputError(MeteovisionError, ValueError):
    """A metric was built with bad settings or fed tensors it cannot score; the message says which."""


# ---------------------------------------------------------------------------- helpers
#: Compact, exact text of a threshold for metric names: 0.5 -> "0.5", 1.0 -> "1", 1e-5 -> "0.00001"; the
#: same text the real-radar verification gives its thresholds, so training and evaluation scores share names.
format_threshold = format_value


def _squeezed_shape(shape: torch.Size) -> list[int]:
    return [d for d in shape if d != 1]


def _align(x: Tensor, shape: torch.Size, what: str, owner: str) -> Tensor:
    """``x`` viewed with ``shape``: equal shapes, shapes equal up to singleton dims, or broadcastable."""
    if x.shape == shape:
        return x
    if _squeezed_shape(x.shape) == _squeezed_shape(shape):
        return x.reshape(shape)
    try:
        return torch.broadcast_to(x, shape)
    except RuntimeError as err:
        raise MetricInputError(
            f"{owner}: {what} has shape {tuple(x.shape)}, which does not match {tuple(shape)}"
        ) from err


def _check_mask(mask: Tensor, owner: str) -> Tensor:
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise MetricInputError(f"{owner}: mask must be boolean (True = valid), got {mask.dtype}")
    return mask.to(torch.bool)


def _valid_pairs(
    pred: Tensor, target: Tensor, mask: Tensor | None, owner: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Prediction and target on one shape, plus where both are finite and the mask allows."""
    pred = _align(pred.detach(), target.shape, "prediction", owner)
    target = target.detach()
    valid = torch.ones(target.shape, dtype=torch.bool, device=target.device)
    if mask is not None:
        valid = _align(_check_mask(mask, owner), target.shape, "mask", owner).clone()
    if pred.dtype.is_floating_point:
        valid &= torch.isfinite(pred)
    if target.dtype.is_floating_point:
        valid &= torch.isfinite(target)
    return pred, target, valid


#: ``num / den`` in float64, NaN where ``den`` is zero: the kernel's one 0/0 rule.
_ratio = scores.ratio


def _bincount(x: Tensor, size: int) -> Tensor:
    """Counts of 0..size-1 in ``x``; a deterministic loop where ``torch.bincount`` would refuse to run."""
    if x.device.type != "cpu" and torch.are_deterministic_algorithms_enabled():
        return torch.stack([(x == k).sum() for k in range(size)]).to(torch.int64)
    return torch.bincount(x, minlength=size)[:size].to(torch.int64)


class _SumMetric(Metric):
    """Base: sum states that follow the module's device but keep their own dtype."""

    full_state_update = False
    is_differentiable = False

    def _apply(self, fn: Callable[..., Any], exclude_state: Sequence[str] = "") -> Any:
        names = list(self._defaults)
        this = cast("_SumMetric", super()._apply(fn, exclude_state=[*exclude_state, *names]))
        for key in names:
            if key in exclude_state:
                continue
            default = this._defaults[key]
            if isinstance(default, Tensor):  # every state here is a tensor; lists would be left alone
                this._defaults[key] = default.to(fn(default).device)
            current = getattr(this, key)
            setattr(this, key, current.to(fn(current).device))
        return this

    def _sum_state(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.add_state(name, default=torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")


# ---------------------------------------------------------------------------- contingency
class ContingencyScores(_SumMetric):
    """Hits, misses, false alarms and correct negatives per threshold (event = value >= threshold).

    ``compute()`` gives, per threshold ``t`` (named with :func:`format_threshold`):
    ``csi@t`` = H/(H+M+F), ``pod@t`` = H/(H+M), ``far@t`` = F/(H+F), ``fbi@t`` = (H+F)/(H+M),
    and the raw counts ``hits@t``, ``misses@t``, ``false_alarms@t``, ``correct_negatives@t``.
    A score whose denominator is zero is NaN (FBI with no observed event included).
    Works for probabilities (threshold 0.5) and physical values (rain rates) alike.
    """

    higher_is_better = None
    hits: Tensor
    forecast_events: Tensor
    observed_events: Tensor
    total: Tensor

    def __init__(self, thresholds: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        values = [float(t) for t in thresholds]
        if not values:
            raise MetricInputError("ContingencyScores: give at least one threshold")
        if not all(np.isfinite(values)):
            raise MetricInputError(f"ContingencyScores: thresholds must be finite, got {values}")
        names = [format_threshold(t) for t in values]
        if len(set(names)) != len(names):
            raise MetricInputError(f"ContingencyScores: thresholds repeat: {values}")
        self.thresholds = values
        self.threshold_names = names
        n = len(values)
        self._sum_state("hits", (n,), torch.int64)
        self._sum_state("forecast_events", (n,), torch.int64)
        self._sum_state("observed_events", (n,), torch.int64)
        self._sum_state("total", (), torch.int64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        pred, target, valid = _valid_pairs(pred, target, mask, type(self).__name__)
        sums = scores.contingency_sums(pred.reshape(1, -1), target.reshape(1, -1), valid.reshape(1, -1),
                                       self.thresholds)
        self.hits += sums.hits[0]
        self.forecast_events += sums.forecast_events[0]
        self.observed_events += sums.observed_events[0]
        self.total += sums.n[0]

    def counts(self) -> dict[str, Tensor]:
        """The contingency table per threshold, as int64 tensors of shape [n_thresholds]."""
        hits = self.hits
        misses = self.observed_events - hits
        false_alarms = self.forecast_events - hits
        correct_negatives = self.total - self.forecast_events - self.observed_events + hits
        return {"hits": hits, "misses": misses, "false_alarms": false_alarms,
                "correct_negatives": correct_negatives}

    def compute(self) -> dict[str, Tensor]:
        c = self.counts()
        h, m, f = c["hits"], c["misses"], c["false_alarms"]
        values = {"csi": scores.csi(h, m, f), "pod": scores.pod(h, m), "far": scores.far(h, f),
                  "fbi": scores.frequency_bias(h, m, f), **c}
        return {f"{key}@{name}": v[i] for key, v in values.items() for i, name in enumerate(self.threshold_names)}


# ---------------------------------------------------------------------------- FSS
class FractionsSkillScore(_SumMetric):
    """Fractions skill score (Roberts and Lean 2008) at one threshold and several neighbourhood sizes.

    For every scale n (pixels, odd or even) the event fields (value >= threshold) become
    fractions over the n x n window; over the epoch we sum (Pf - Po)^2, Pf^2 and Po^2 and
    FSS = 1 - sum((Pf - Po)^2) / (sum(Pf^2) + sum(Po^2)), the aggregation pysteps uses
    (``fss_accum``) rather than a mean of per-field scores. The sums come from the scoring
    kernel (:mod:`meteovision.pipeline.verification.scores`), as in ``meteovision evaluate``:
    invalid pixels (mask False, NaN) and the outside of the grid are left out of every window
    (the fraction of a pixel is over its valid neighbours), and only valid pixels enter the
    sums. Away from edges and masks this equals pysteps' ``fss``. Keys: ``fss@<threshold>_<n>px``.
    """

    higher_is_better = True
    sum_diff_sq: Tensor
    sum_fct_sq: Tensor
    sum_obs_sq: Tensor

    def __init__(self, threshold: float, scales: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        if not np.isfinite(self.threshold):
            raise MetricInputError(f"FractionsSkillScore: threshold must be finite, got {threshold}")
        values = list(scales)
        if not values or any(isinstance(s, bool) or int(s) != s or int(s) < 1 for s in values):
            raise MetricInputError(
                f"FractionsSkillScore: scales must be positive integers (pixels), got {values}"
            )
        self.scales = [int(s) for s in values]
        if len(set(self.scales)) != len(self.scales):
            raise MetricInputError(f"FractionsSkillScore: scales repeat: {self.scales}")
        n = len(self.scales)
        self._sum_state("sum_diff_sq", (n,), torch.float64)
        self._sum_state("sum_fct_sq", (n,), torch.float64)
        self._sum_state("sum_obs_sq", (n,), torch.float64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        owner = type(self).__name__
        if target.ndim < 2:
            raise MetricInputError(
                f"{owner}: fields need two spatial dims [..., H, W], got {tuple(target.shape)}"
            )
        pred, target, valid = _valid_pairs(pred, target, mask, owner)
        sums = scores.fss_sums(pred, target, valid, self.threshold, self.scales)
        self.sum_diff_sq += sums.diff_sq.sum(dim=0)
        self.sum_fct_sq += sums.fct_sq.sum(dim=0)
        self.sum_obs_sq += sums.obs_sq.sum(dim=0)

    def compute(self) -> dict[str, Tensor]:
        fss = scores.fss(self.sum_diff_sq, self.sum_fct_sq, self.sum_obs_sq)
        thr = format_threshold(self.threshold)
        return {f"fss@{thr}_{n}px": fss[i] for i, n in enumerate(self.scales)}


# ---------------------------------------------------------------------------- confusion matrices
class _ConfusionMetric(_SumMetric):
    """A [C, C] confusion matrix (rows = truth, columns = prediction) summed over the epoch."""

    higher_is_better = True
    confmat: Tensor

    def __init__(self, num_classes: int, class_names: Sequence[str] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or int(num_classes) < 2:
            raise MetricInputError(f"{owner}: num_classes must be an integer >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        if class_names is None:
            names = [str(i) for i in range(self.num_classes)]
        else:
            names = [str(c) for c in class_names]
        if len(names) != self.num_classes:
            raise MetricInputError(
                f"{owner}: {len(names)} class names for {self.num_classes} classes: {names}"
            )
        if len(set(names)) != len(names) or any(not n for n in names):
            raise MetricInputError(f"{owner}: class names must be unique and non-empty, got {names}")
        self.class_names = names
        self._sum_state("confmat", (self.num_classes, self.num_classes), torch.int64)

    def _labels(self, pred: Tensor, target: Tensor, mask: Tensor | None,
                ignore_index: int | None) -> tuple[Tensor, Tensor]:
        """Valid (truth, prediction) class indices as flat int64 tensors."""
        owner = type(self).__name__
        c = self.num_classes
        if target.dtype.is_floating_point:
            finite = target[torch.isfinite(target)]
            if bool((finite != finite.round()).any()):
                raise MetricInputError(f"{owner}: target must hold class indices, got fractional values")
        pred = pred.detach()
        if (pred.ndim == target.ndim >= 2 and target.shape[1] == 1 and pred.shape[1] == c
                and pred.shape != target.shape):
            target = target.squeeze(1)
        if pred.ndim == target.ndim + 1:
            pred = self._scores_to_labels(pred)
        elif pred.dtype.is_floating_point and c == 2:
            pred = torch.where(torch.isfinite(pred), (pred >= 0.5).to(pred.dtype), pred)
        pred, target, valid = _valid_pairs(pred, target, mask, owner)
        if pred.dtype.is_floating_point:
            p_fin = pred[valid]
            if bool((p_fin != p_fin.round()).any()):
                raise MetricInputError(
                    f"{owner}: predicted labels must be class indices, got fractional values"
                )
        t = target.to(torch.int64)
        p = pred.to(torch.int64)
        if ignore_index is not None:
            valid &= t != ignore_index
        t = t[valid]
        p = p[valid]
        for what, x in (("target", t), ("prediction", p)):
            if x.numel() and bool(((x < 0) | (x >= c)).any()):
                raise MetricInputError(
                    f"{owner}: {what} holds labels outside 0..{c - 1}: {x.unique().tolist()[:10]}"
                )
        return t, p

    def _scores_to_labels(self, scores: Tensor) -> Tensor:
        """Class scores [B, C, ...] -> labels (argmax), or one channel of probabilities -> 0/1 when binary.

        Labels come back as float with NaN where a score is NaN, so such pixels are dropped.
        """
        owner = type(self).__name__
        c = self.num_classes
        if not scores.dtype.is_floating_point:
            scores = scores.to(torch.float32)
        finite = torch.isfinite(scores).all(dim=1)
        if scores.shape[1] == c:
            labels = scores.nan_to_num(nan=0.0).argmax(dim=1).to(scores.dtype)
        elif scores.shape[1] == 1 and c == 2:
            labels = (scores[:, 0] >= 0.5).to(scores.dtype)
        else:
            raise MetricInputError(
                f"{owner}: {scores.shape[1]} score channels for {c} classes, shape {tuple(scores.shape)}"
            )
        return torch.where(finite, labels, torch.full_like(labels, float("nan")))

    def _add(self, t: Tensor, p: Tensor) -> None:
        c = self.num_classes
        self.confmat += _bincount(t * c + p, c * c).reshape(c, c)

    def confusion_matrix(self) -> Tensor:
        """The epoch's confusion matrix, int64 [C, C]: rows = truth, columns = prediction (DDP-synced)."""
        with self.sync_context(should_sync=True, should_unsync=True):
            return self.confmat.detach().clone()

    def _per_class(self) -> dict[str, Tensor]:
        cm = self.confmat
        tp = cm.diagonal()
        fn = cm.sum(dim=1) - tp
        fp = cm.sum(dim=0) - tp
        return {
            "iou": _ratio(tp, tp + fp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": _ratio(tp.sum(), cm.sum()),
        }


def _nanmean(x: Tensor) -> Tensor:
    """Mean over defined entries; NaN when none is defined."""
    return torch.nanmean(x) if bool(torch.isfinite(x).any()) else torch.tensor(float("nan"), dtype=x.dtype,
                                                                                 device=x.device)


class SegmentationScores(_ConfusionMetric):
    """Per-class and macro IoU and F1 of a label map, plus pixel accuracy (binary masks: ``num_classes=2``).

    ``pred`` is a label map like ``target``, class scores ``[B, C, ...]`` (argmax), or for two
    classes probabilities (>= 0.5 is class 1). Pixels whose target is ``ignore_index`` are
    skipped. A class absent from both truth and prediction has undefined (NaN) IoU and F1 and
    is left out of the macro means. Keys: ``iou_<class>``, ``f1_<class>``, ``iou_macro``,
    ``f1_macro``, ``accuracy``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None,
                 class_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, class_names, **kwargs)
        self.ignore_index = ignore_index

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        t, p = self._labels(pred, target, mask, self.ignore_index)
        self._add(t, p)

    def compute(self) -> dict[str, Tensor]:
        s = self._per_class()
        out: dict[str, Tensor] = {}
        for key in ("iou", "f1"):
            for i, name in enumerate(self.class_names):
                out[f"{key}_{name}"] = s[key][i]
            out[f"{key}_macro"] = _nanmean(s[key])
        out["accuracy"] = s["accuracy"]
        return out


class ClassificationScores(_ConfusionMetric):
    """Accuracy, per-class F1 and macro-F1 of image classes; the confusion matrix by :meth:`confusion_matrix`.

    ``pred`` holds class indices [B] or logits [B, C]. Macro-F1 averages the F1 of the classes
    present in the truth or the predictions of the epoch: a class absent from both has an
    undefined F1 (NaN, reported as ``f1_<name>``) and is excluded from ``f1_macro``.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, class_names, **kwargs)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        t, p = self._labels(pred, target, mask, None)
        self._add(t, p)

    def compute(self) -> dict[str, Tensor]:
        s = self._per_class()
        out: dict[str, Tensor] = {"accuracy": s["accuracy"], "f1_macro": _nanmean(s["f1"])}
        for i, name in enumerate(self.class_names):
            out[f"f1_{name}"] = s["f1"][i]
        return out


# ---------------------------------------------------------------------------- regression
class RegressionScores(_SumMetric):
    """RMSE, MAE, bias (mean of prediction minus observation) and Pearson correlation, exact over the epoch.

    The states are the sums n, Σx, Σy, Σx², Σy², Σxy, Σ|e|, Σe, Σe² (x = prediction,
    y = observation, e = x - y) in float64, so the epoch values are those of all pixels
    pooled, not means of batch means. The correlation is NaN when either field is constant
    (its variance, computed from the sums, is below 1e-12 of Σx²/n). Keys: ``rmse``, ``mae``,
    ``bias``, ``corr``, ``count``.
    """

    higher_is_better = None

    _STATES = ("n", "sx", "sy", "sxx", "syy", "sxy", "sae", "se", "se2")
    n: Tensor
    sx: Tensor
    sy: Tensor
    sxx: Tensor
    syy: Tensor
    sxy: Tensor
    sae: Tensor
    se: Tensor
    se2: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._STATES:
            self._sum_state(name, (), torch.float64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        pred, target, valid = _valid_pairs(pred, target, mask, type(self).__name__)
        x = pred[valid].to(torch.float64)
        y = target[valid].to(torch.float64)
        e = x - y
        errors = scores.error_sums(pred.reshape(1, -1), target.reshape(1, -1), valid.reshape(1, -1))
        self.n += x.numel()
        self.sx += x.sum()
        self.sy += y.sum()
        self.sxx += (x * x).sum()
        self.syy += (y * y).sum()
        self.sxy += (x * y).sum()
        self.sae += errors.sum_abs_error[0]
        self.se += errors.sum_error[0]
        self.se2 += (e * e).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.n
        cov = self.n * self.sxy - self.sx * self.sy
        var_x = self.n * self.sxx - self.sx**2
        var_y = self.n * self.syy - self.sy**2
        tiny = 1e-12
        defined = (var_x > tiny * n * self.sxx) & (var_y > tiny * n * self.syy)
        spread = torch.sqrt(var_x.clamp_min(0) * var_y.clamp_min(0))
        denom = torch.where(defined, spread, torch.zeros_like(cov))
        return {
            "rmse": torch.sqrt(_ratio(self.se2, n)),
            "mae": scores.mae(self.sae, n),
            "bias": _ratio(self.se, n),
            "corr": _ratio(cov, denom).clamp(-1.0, 1.0),
            "count": n.clone(),
        }
