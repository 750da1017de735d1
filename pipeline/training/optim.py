"""Optimiser and learning-rate scheduler from a config mapping, with errors that name the bad key."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from meteovision.core.errors import ConfigError

__all__ = ["OPTIMIZERS", "SCHEDULERS", "ConfigError", "build_optimizer", "build_scheduler", "unknown_settings"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "radam": torch.optim.RAdam,
    "nadam": torch.optim.NAdam,
}

SCHEDULERS: dict[str, type[Any]] = {
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "step": torch.optim.lr_scheduler.StepLR,
    "multistep": torch.optim.lr_scheduler.MultiStepLR,
    "exponential": torch.optim.lr_scheduler.ExponentialLR,
    "onecycle": torch.optim.lr_scheduler.OneCycleLR,
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}


def unknown_settings(kind: str, name: str, cls: type[Any], kwargs: Mapping[str, Any], skip: int = 2) -> None:
    """Refuse keyword arguments that ``cls.__init__`` (past its first ``skip`` parameters) does not take.

    ``kind`` and ``name`` make the message: ``optimizer 'adamw': unknown setting(s) ['lrr']; known: [...]``.
    """
    params = list(inspect.signature(cls.__init__).parameters.values())[skip:]
    known = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"{kind} '{name}': unknown setting(s) {unknown}; known: {sorted(known)}")


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``{"name": "adamw", "lr": 1e-3, ...}`` -> optimiser over ``params``."""
    conf = dict(settings)
    name = str(conf.pop("name", "adamw")).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name '{name}' is unknown; known: {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    unknown_settings("optimizer", name, cls, conf, skip=2)
    try:
        return cls(params, **conf)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer '{name}': {err}") from err


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: Mapping[str, Any] | None, max_epochs: int
) -> dict[str, Any] | None:
    """``{"name": "cosine", ...}`` -> Lightning's lr_scheduler dict, or None.

    ``cosine`` defaults ``T_max`` to the trainer's max_epochs so a config need not repeat it;
    ``plateau`` monitors ``monitor`` (default ``val/loss``).
    """
    if not settings:
        return None
    conf = dict(settings)
    if "name" not in conf:
        raise ConfigError(f"scheduler.name is missing; known: {sorted(SCHEDULERS)}")
    name = str(conf.pop("name")).lower()
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name '{name}' is unknown; known: {sorted(SCHEDULERS)}")
    monitor = str(conf.pop("monitor", "val/loss"))
    interval = str(conf.pop("interval", "epoch"))
    if name == "cosine":
        conf.setdefault("T_max", max(1, max_epochs))
    cls = SCHEDULERS[name]
    unknown_settings("scheduler", name, cls, conf, skip=2)
    try:
        scheduler = cls(optimizer, **conf)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"scheduler '{name}': {err}") from err
    out: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
    if name == "plateau":
        out["monitor"] = monitor
    return out

