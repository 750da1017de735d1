"""Optimiser, scheduler and loss settings of a task as frozen dataclasses, checked when they are made.

A config writes each as one flat mapping, ``{name, **keyword arguments}``::

    optimizer: {name: adamw, lr: 0.001, weight_decay: 0.0001}
    scheduler: {name: cosine}
    loss: {name: bce_dice, pos_weight: 2.0}

:meth:`from_config` turns such a mapping into the dataclass and :meth:`to_dict` gives it back, so
the checkpoint's hyper-parameters and the saved config hold plain mappings in the same keys. Names
are those of the registries (``OPTIMIZERS`` and ``SCHEDULERS`` in :mod:`.optim`, ``LOSSES`` in
:mod:`.losses`); keyword arguments past the named fields go to the torch class (``options``).
Every bad name, key, type or value raises :class:`~meteovision.core.errors.ConfigError` naming the
key (``optimizer.lr must be a number > 0, got -1.0``), when the dataclass is made: the optimiser,
scheduler and loss are built once (the optimiser over a dummy parameter) to let torch check the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from meteovision.core.errors import ConfigError
from meteovision.pipeline.training.losses import LOSSES, LossConfigError, build_loss
from meteovision.pipeline.training.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
)

__all__ = ["LossSettings", "OptimizerSettings", "SchedulerSettings"]

SCHEDULER_INTERVALS = ("epoch", "step")


def _mapping(value: Any, key: str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise error(f"{key} must be a mapping {{name: ..., ...}}, got {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise error(f"{key}: setting names must be strings, got {bad}")
    return dict(value)


def _name(value: Any, key: str, known: Mapping[str, Any], error: type[ConfigError] = ConfigError) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"{key}.name must be a non-empty string, one of {sorted(known)}; got {value!r}")
    name = value.lower()
    if name not in known:
        raise error(f"{key}.name '{value}' is unknown; known: {sorted(known)}")
    return name


def _number(value: Any, key: str, *, positive: bool) -> float:
    """``value`` as a finite float, > 0 (``positive``) or >= 0; else a ConfigError naming ``key``."""
    bound = "> 0" if positive else ">= 0"
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ConfigError(f"{key} must be a number {bound}, got {value!r}")
    return float(value)


def _no_named_fields_in_options(key: str, options: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    doubled = sorted(set(options) & set(fields))
    if doubled:
        raise ConfigError(f"{key}.options: {doubled} are fields of their own; give them beside name, not in options")


def _dummy_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


@dataclass(frozen=True)
class OptimizerSettings:
    """A torch optimiser by registry name: ``lr`` and ``weight_decay`` (None: the optimiser's own
    default), other keyword arguments (``momentum``, ``betas``, ...) in ``options``."""

    name: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    key: ClassVar[str] = "optimizer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name(self.name, self.key, OPTIMIZERS))
        if self.lr is not None:
            object.__setattr__(self, "lr", _number(self.lr, f"{self.key}.lr", positive=True))
        if self.weight_decay is not None:
            value = _number(self.weight_decay, f"{self.key}.weight_decay", positive=False)
            object.__setattr__(self, "weight_decay", value)
        options = _mapping(self.options, f"{self.key}.options")
        _no_named_fields_in_options(self.key, options, ("name", "lr", "weight_decay"))
        object.__setattr__(self, "options", options)
        self.build([torch.nn.Parameter(torch.zeros(1))])  # unknown keys named, then torch checks the values

    @classmethod
    def from_config(cls, value: OptimizerSettings | Mapping[str, Any]) -> OptimizerSettings:
        """``{name: adamw, lr: 0.001, momentum: ...}`` -> settings (unknown keys named); settings pass."""
        if isinstance(value, cls):
            return value
        conf = _mapping(value, cls.key)
        name = conf.pop("name", "adamw")
        return cls(name=name, lr=conf.pop("lr", None), weight_decay=conf.pop("weight_decay", None), options=conf)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping a config writes (``None`` fields left out)."""
        named = {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay}
        return {**{k: v for k, v in named.items() if v is not None}, **self.options}

    def build(self, params: Any) -> torch.optim.Optimizer:
        """The optimiser over ``params`` (an iterable of parameters or parameter groups)."""
        return build_optimizer(params, self.to_dict())


@dataclass(frozen=True)
class SchedulerSettings:
    """A torch learning-rate scheduler by registry name, stepped every ``interval`` (``epoch`` or
    ``step``); ``monitor`` is the logged value ``plateau`` watches. ``cosine`` takes ``T_max`` from
    the trainer's ``max_epochs`` unless ``options`` gives it."""

    name: str
    monitor: str = "val/loss"
    interval: str = "epoch"
    options: dict[str, Any] = field(default_factory=dict)

    key: ClassVar[str] = "scheduler"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name(self.name, self.key, SCHEDULERS))
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ConfigError(f"{self.key}.monitor must be the name of a logged value, got {self.monitor!r}")
        if self.interval not in SCHEDULER_INTERVALS:
            raise ConfigError(f"{self.key}.interval must be one of {list(SCHEDULER_INTERVALS)}, got {self.interval!r}")
        options = _mapping(self.options, f"{self.key}.options")
        _no_named_fields_in_options(self.key, options, ("name", "monitor", "interval"))
        object.__setattr__(self, "options", options)
        self.build(_dummy_optimizer(), max_epochs=1)  # unknown keys named, then torch checks the values

    @classmethod
    def from_config(cls, value: SchedulerSettings | Mapping[str, Any]) -> SchedulerSettings:
        """``{name: cosine, T_max: 10}`` -> settings (a missing name or unknown key named); settings pass."""
        if isinstance(value, cls):
            return value
        conf = _mapping(value, cls.key)
        if "name" not in conf:
            raise ConfigError(f"{cls.key}.name is missing; known: {sorted(SCHEDULERS)}")
        return cls(name=conf.pop("name"), monitor=conf.pop("monitor", "val/loss"),
                   interval=conf.pop("interval", "epoch"), options=conf)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping a config writes."""
        return {"name": self.name, "monitor": self.monitor, "interval": self.interval, **self.options}

    def build(self, optimizer: torch.optim.Optimizer, max_epochs: int) -> dict[str, Any]:
        """Lightning's ``lr_scheduler`` dict for ``optimizer``."""
        built = build_scheduler(optimizer, self.to_dict(), max_epochs)
        if built is None:  # never: to_dict always names a scheduler
            raise ConfigError(f"{self.key}: nothing to build from {self.to_dict()}")
        return built


@dataclass(frozen=True)
class LossSettings:
    """A loss of the registry by name, with its keyword arguments (``pos_weight``, ``delta``, ...) in
    ``options``; the loss is built once when the settings are made, so every value is checked."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    key: ClassVar[str] = "loss"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name(self.name, self.key, LOSSES, LossConfigError))
        options = _mapping(self.options, f"{self.key}.options", LossConfigError)
        if "name" in options:
            raise LossConfigError(f"{self.key}.options: 'name' is a field of its own")
        object.__setattr__(self, "options", options)
        self.build()

    @classmethod
    def from_config(cls, value: LossSettings | Mapping[str, Any]) -> LossSettings:
        """``{name: bce_dice, pos_weight: 2}`` -> settings (a missing name or unknown key named)."""
        if isinstance(value, cls):
            return value
        conf = _mapping(value, cls.key, LossConfigError)
        if "name" not in conf:
            raise LossConfigError(f"{cls.key}.name is missing; known: {sorted(LOSSES)}")
        return cls(name=conf.pop("name"), options=conf)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping a config writes."""
        return {"name": self.name, **self.options}

    def build(self) -> torch.nn.Module:
        """The loss module, called as ``loss(pred, target, mask=None)``."""
        return build_loss(self.name, **self.options)
