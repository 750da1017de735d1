"""``meteovision fit|validate|test`` through LightningCLI: one YAML per application, dotted overrides.

Conventions added on top of LightningCLI:
- configs may be given by application name (``--config bow_echo``) as well as by path;
- checkpoints go to ``<default_root_dir>/checkpoints`` (``last.ckpt`` always kept), so
  ``--ckpt_path last`` finds the interrupted run, and the loggers continue that run's version;
- the resolved config is saved beside the logs of every run (LightningCLI's SaveConfigCallback).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from meteovision.pipeline.tasks import MeteoTask

log = logging.getLogger(__name__)


def resolve_config_path(value: str) -> str:
    """A config given as ``bow_echo`` or ``bow_echo.yaml`` resolves to the packaged file."""
    if Path(value).exists():
        return value
    name = value if value.endswith(".yaml") else f"{value}.yaml"
    packaged = resources.files("meteovision.configs").joinpath(Path(name).name)
    if packaged.is_file():
        return str(packaged)
    return value


def _latest_version(root: Path) -> int | None:
    versions = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions) if versions else None


class MeteoCLI(LightningCLI):
    """LightningCLI with the meteovision conventions above."""

    def before_fit(self) -> None:
        self._continue_run_version()

    def _continue_run_version(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt = self.config.get(subcommand, {}).get("ckpt_path") if subcommand else None
        if ckpt != "last":
            return
        for logger in self.trainer.loggers:
            root = Path(logger.root_dir) if getattr(logger, "root_dir", None) else None
            if root is None:
                continue
            version = _latest_version(root)
            if version is not None and hasattr(logger, "_version"):
                logger._version = version
                log.info("resuming: %s continues version_%d", type(logger).__name__, version)


def _trainer_defaults() -> dict[str, Any]:
    """Persistent callbacks: the best and the last checkpoint, and the learning-rate trace."""
    return {
        "callbacks": [
            ModelCheckpoint(
                save_last=True,
                save_top_k=1,
                monitor="val/loss",
                mode="min",
                filename="epoch{epoch:03d}-val_loss{val/loss:.4f}",
                auto_insert_metric_name=False,
            ),
            LearningRateMonitor(),
        ],
    }


def fix_checkpoint_dirs(cli: LightningCLI) -> None:
    """Put checkpoints in ``<default_root_dir>/checkpoints`` so ``--ckpt_path last`` finds them."""
    root = Path(cli.trainer.default_root_dir)
    for callback in cli.trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(root / "checkpoints")


def _rewrite_configs(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for i, token in enumerate(out[:-1]):
        if token in ("--config", "-c"):
            out[i + 1] = resolve_config_path(out[i + 1])
    return [f"--config={resolve_config_path(t.split('=', 1)[1])}" if t.startswith("--config=") else t for t in out]


def build_cli(argv: Sequence[str], run: bool = True) -> MeteoCLI:
    """The LightningCLI instance for ``argv`` (tests call this with ``run=False``)."""

    class _CLI(MeteoCLI):
        def before_fit(self) -> None:
            fix_checkpoint_dirs(self)
            super().before_fit()

        def before_validate(self) -> None:
            fix_checkpoint_dirs(self)

        def before_test(self) -> None:
            fix_checkpoint_dirs(self)

    return _CLI(
        MeteoTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=_trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        seed_everything_default=42,
        args=_rewrite_configs(argv),
        run=run,
        parser_kwargs={"prog": "meteovision"},
    )


def run_argv(argv: Sequence[str]) -> int:
    """Entry point from the ``meteovision`` dispatcher: ``argv`` starts with the subcommand."""
    build_cli(argv)
    return 0
