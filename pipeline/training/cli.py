"""``meteovision fit|validate|test`` through LightningCLI: one YAML per application, dotted overrides.

Conventions added on top of LightningCLI:
- configs may be given by application name (``--config bow_echo``) as well as by path;
- checkpoints go to ``<default_root_dir>/checkpoints`` (``last.ckpt`` always kept), so
  ``--ckpt_path last`` finds the interrupted run, and the loggers continue that run's version;
- every logger of one run writes to the same ``version_N`` folder (a CSV and a TensorBoard
  logger sharing ``save_dir``/``name`` would otherwise take two numbers), and each checkpoint
  records that number so a resumed ``fit`` finds its folder again, CSV history kept;
- the resolved config is saved beside the logs of every run (LightningCLI's SaveConfigCallback);
- ``optimizer``, ``scheduler`` and ``loss`` are read from their flat ``{name, **settings}`` mappings
  into the settings dataclasses of :mod:`.settings` and written back in the same keys;
- errors of this package (bad model setting, unknown loss, ...) end the command with their
  message and exit status 2, like a wrong key or type in the config does.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as L
import torch
from jsonargparse.typing import register_type
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.loading import load_metadata
from meteovision.pipeline.checkpoints.metadata import RUN_KEY
from meteovision.pipeline.training.settings import LossSettings, OptimizerSettings, SchedulerSettings
from meteovision.pipeline.training.tasks import MeteoTask

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


#: top-level checkpoint key holding the run's logger version (``{"log_version": N}``)
_LAST_CKPT = re.compile(r"last(-\d+)?\.ckpt")
#: ``--ckpt_path`` values Lightning resolves to a file of its own run
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def _latest_version(root: Path) -> int | None:
    versions = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions) if versions else None


def _newest_last_checkpoint(folder: Path) -> Path | None:
    """The file ``--ckpt_path last`` resolves to: the newest ``last.ckpt`` / ``last-vN.ckpt`` (as Lightning)."""
    found = [p for p in folder.glob("last*.ckpt") if _LAST_CKPT.fullmatch(p.name)] if folder.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _recorded_version(path: Path) -> int | None:
    """The logger version a meteovision ``fit`` wrote into checkpoint ``path`` (None: not recorded)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # Lightning reports an unreadable checkpoint itself when it loads it
        log.warning("%s: cannot read the run version (%s); logs go to a new version folder", path, err)
        return None
    version = ckpt.get(RUN_KEY, {}).get("log_version") if isinstance(ckpt, dict) else None
    return version if isinstance(version, int) else None


def _keep_csv_history(logger: CSVLogger) -> None:
    """Continue ``metrics.csv`` of a resumed run: Lightning's CSV writer deletes it when its folder exists."""
    path = Path(logger.log_dir) / "metrics.csv"
    if getattr(rank_zero_only, "rank", 0) != 0 or not path.is_file():  # set from the launcher's env vars
        return
    saved = path.read_text()
    header = next(csv.reader([saved.splitlines()[0]]), []) if saved else []
    with warnings.catch_warnings():  # its "previous log files will be deleted" is untrue once restored
        warnings.filterwarnings("ignore", message="Experiment logs directory", category=UserWarning)
        writer = logger.experiment  # creating the writer removes the file
    path.write_text(saved)
    writer.metrics_keys = sorted(header)  # the writer appends and rewrites the header for new keys


class RecordRunVersion(Callback):
    """Writes the loggers' version number into every checkpoint (key :data:`RUN_KEY`)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        version = trainer.logger.version if trainer.logger is not None else None
        if isinstance(version, int):
            checkpoint[RUN_KEY] = {"log_version": version}


class MeteoCLI(LightningCLI):
    """LightningCLI with the meteovision conventions above."""

    def before_fit(self) -> None:
        self._check_given_checkpoint()
        fix_checkpoint_dirs(self)
        self._align_run_version()

    def before_validate(self) -> None:
        self._check_given_checkpoint()
        fix_checkpoint_dirs(self)
        self._align_run_version()

    def before_test(self) -> None:
        self._check_given_checkpoint()
        fix_checkpoint_dirs(self)
        self._align_run_version()

    def _given_checkpoint(self) -> str | None:
        subcommand = self.config.get("subcommand")
        ckpt = self.config.get(subcommand, {}).get("ckpt_path") if subcommand else None
        return ckpt if isinstance(ckpt, str) else None

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` as ``predict`` does before Lightning does, so a bad file gets the same refusal.

        Missing, empty, truncated, foreign or unsafe (a pickled Python object) checkpoints raise a
        :class:`~meteovision.pipeline.checkpoints.metadata.CheckpointError` naming the file and why,
        which ``run_argv`` prints as one line with exit status 2, instead of torch's traceback.
        """
        ckpt = self._given_checkpoint()
        if ckpt is not None and ckpt not in _LIGHTNING_CKPT_NAMES:
            load_metadata(ckpt)
        super()._parse_ckpt_path()

    def _check_given_checkpoint(self) -> None:
        """``--ckpt_path last``: the same check on the file it resolves to (known once the trainer exists)."""
        if self._given_checkpoint() == "last":
            path = _newest_last_checkpoint(Path(self.trainer.default_root_dir) / "checkpoints")
            if path is not None:
                load_metadata(path)

    def _resumed_checkpoint(self) -> Path | None:
        """The checkpoint a ``fit`` resumes from when it lies under this run's ``default_root_dir``."""
        subcommand = self.config.get("subcommand")
        if subcommand != "fit":
            return None
        ckpt = self.config.get(subcommand, {}).get("ckpt_path")
        root = Path(self.trainer.default_root_dir).resolve()
        if ckpt == "last":
            return _newest_last_checkpoint(root / "checkpoints")
        if isinstance(ckpt, str) and Path(ckpt).is_file() and Path(ckpt).resolve().is_relative_to(root):
            return Path(ckpt)
        return None

    def _align_run_version(self) -> None:
        """Give every logger (without an explicit ``version``) the same ``version_N`` folder.

        A resumed ``fit`` continues the version recorded in its checkpoint (older checkpoints:
        the latest folder); any other run takes the next number free in all the loggers' folders.
        """
        loggers = [lg for lg in self.trainer.loggers
                   if getattr(lg, "root_dir", None) and getattr(lg, "_version", "explicit") is None]
        if not loggers:
            return
        latest = [v for lg in loggers if (v := _latest_version(Path(str(lg.root_dir)))) is not None]
        resumed = self._resumed_checkpoint()
        version: int | None = None
        if resumed is not None:
            version = _recorded_version(resumed)
            if version is None and resumed.name.startswith("last") and latest:
                version = max(latest)
        if version is not None:
            log.info("resuming from %s: the loggers continue version_%d", resumed, version)
        else:
            version = max(latest) + 1 if latest else 0
        for lg in loggers:
            cast(Any, lg)._version = version  # CSVLogger/TensorBoardLogger read it lazily, at first use
        if resumed is not None:
            for lg in loggers:
                if isinstance(lg, CSVLogger):
                    _keep_csv_history(lg)


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
            RecordRunVersion(),
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


def register_settings_types() -> None:
    """Let jsonargparse read each settings dataclass from its flat config mapping and write it back so.

    A mapping the dataclass refuses falls through to the ``dict`` of the task's parameter type, and
    the task's constructor then raises the error naming the key (``meteovision fit: error: ...``).
    """
    for cls in (OptimizerSettings, SchedulerSettings, LossSettings):
        register_type(cls, serializer=cls.to_dict, deserializer=cls.from_config)


def build_cli(argv: Sequence[str], run: bool = True) -> MeteoCLI:
    """The LightningCLI instance for ``argv`` (tests call this with ``run=False``)."""
    register_settings_types()
    return MeteoCLI(
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


def package_error(err: BaseException) -> MeteovisionError | None:
    """The error of this package behind ``err`` (jsonargparse wraps errors raised while it builds classes)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, MeteovisionError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_argv(argv: Sequence[str]) -> int:
    """Entry point from the ``meteovision`` dispatcher: ``argv`` starts with the subcommand.

    Returns 2 with the message on stderr for an error of this package; a wrong key or type in
    the config exits with status 2 from jsonargparse already.
    """
    # argv is sys.argv[1:] here by construction; LightningCLI would warn that both were given
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
    try:
        build_cli(argv)
    except Exception as err:  # only errors of this package are reported briefly; others propagate
        ours = package_error(err)
        if ours is None:
            raise
        log.debug("meteovision %s failed", argv[0] if argv else "", exc_info=True)
        print(f"meteovision {argv[0] if argv else ''}: error: {ours}", file=sys.stderr)
        return 2
    return 0
