"""Lightning tasks: the training, validation and test loops of the four kinds of problem.

A task builds its network from the model registry (name and settings from the config), and
its loss, optimiser and scheduler from settings dataclasses (:mod:`.settings`) that the config
writes as ``{name, **settings}`` mappings, so a scientist changes channels, architecture and loss
in YAML alone; a bad name, key or value is refused when the task is made, before any data is
read. The number of input and output channels is taken from the datamodule when the config
leaves it out. Everything inference needs (channel names and units, normalisation, class names,
versions, data description) is written into the checkpoint under the key ``"meteovision"``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar, cast

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch import Tensor, nn
from torchmetrics import Metric

from meteovision.core.errors import ConfigError
from meteovision.core.task_kinds import TaskKind
from meteovision.models import get_model_spec
from meteovision.pipeline.checkpoints.loading import (
    CHECKPOINT_KEY,
    CheckpointMetadata,
    NetworkMetadata,
    check_data_matches,
    checkpoint_metadata,
)
from meteovision.pipeline.checkpoints.metadata import MOTION_INPUT_HEADS
from meteovision.pipeline.checkpoints.networks import build_network
from meteovision.pipeline.training.metrics import (
    ClassificationScores,
    ContingencyScores,
    FractionsSkillScore,
    RegressionScores,
    SegmentationScores,
)
from meteovision.pipeline.training.rain_kept import RainKept, channel_of
from meteovision.pipeline.training.report import format_comparison_table
from meteovision.pipeline.training.settings import LossSettings, OptimizerSettings, SchedulerSettings
from meteovision.pipeline.verification.baselines import get_baseline

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


def _metric(metrics: nn.ModuleDict, key: str) -> Metric:
    """A metric of a ModuleDict, typed (ModuleDict values are plain Modules to type checkers)."""
    return cast(Metric, metrics[key])


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MeteoTask(L.LightningModule):
    """Shared machinery: model construction, optimiser, checkpoint metadata, test report."""

    task_kind: ClassVar[TaskKind]
    default_loss: ClassVar[LossSettings] = LossSettings("mse")
    default_optimizer: ClassVar[OptimizerSettings] = OptimizerSettings("adamw", lr=1e-3, weight_decay=1e-4)

    def __init__(
        self,
        application: str,
        model: str = "unet",
        model_settings: dict[str, Any] | None = None,
        in_channels: int | None = None,
        out_channels: int | None = None,
        loss: LossSettings | dict[str, Any] | None = None,
        optimizer: OptimizerSettings | dict[str, Any] | None = None,
        scheduler: SchedulerSettings | dict[str, Any] | None = None,
        baseline: str | None = None,
        thresholds: list[float] | None = None,
        channels_last: bool = False,
    ) -> None:
        """``loss``, ``optimizer`` and ``scheduler``: settings dataclasses or their config mappings
        (``{name: adamw, lr: 0.001}``), checked here; None takes the task's default (no scheduler)."""
        super().__init__()
        self.save_hyperparameters()
        self.application = application
        self.model_name = model
        self.model_settings = dict(model_settings or {})
        self.loss_settings = LossSettings.from_config(loss or self.default_loss)
        self.optimizer_settings = OptimizerSettings.from_config(optimizer or self.default_optimizer)
        self.scheduler_settings = SchedulerSettings.from_config(scheduler) if scheduler else None
        # the checkpoint keeps plain mappings (weights_only loading refuses Python objects), in the config's keys
        self.hparams["loss"] = self.loss_settings.to_dict()
        self.hparams["optimizer"] = self.optimizer_settings.to_dict()
        self.hparams["scheduler"] = self.scheduler_settings.to_dict() if self.scheduler_settings else None
        self.baseline_name = baseline
        self.thresholds = list(thresholds) if thresholds else [0.5]
        self.use_channels_last = channels_last
        self.loss_fn = self.loss_settings.build()
        # check the model name and settings now, not after the data has been read and normalised
        get_model_spec(self.model_name, **self.model_settings)
        self.net: nn.Module | None = None
        self.data_meta: CheckpointMetadata | None = None  # set by configure_model or a loaded checkpoint
        if in_channels is not None and out_channels is not None:
            self._build_net(in_channels, out_channels)

    @property
    def hparams_initial(self) -> AttributeDict:
        """Lightning's, with the settings as the plain mappings ``hparams`` holds (loggers write them to YAML)."""
        initial = super().hparams_initial
        for key in ("loss", "optimizer", "scheduler"):
            if key in initial:
                initial[key] = self.hparams[key]
        return initial

    # ------------------------------------------------------------------ model
    nowcast_head: str = "direct"
    max_speed: float | None = None
    long_lead_smoothing: float | None = None
    step_input: bool = False

    def network_description(self, in_channels: int, out_channels: int) -> NetworkMetadata:
        """What ``build_network`` needs; also recorded in the checkpoint for inference."""
        known = len(self.data_meta.input_variables) if self.data_meta is not None else 0
        variables = self.hparams.get("variables_per_frame") or known or 1
        return NetworkMetadata(model_name=self.model_name, in_channels=in_channels, out_channels=out_channels,
                               model_settings=self.model_settings, nowcast_head=self.nowcast_head,
                               variables_per_frame=int(variables), max_speed=self.max_speed,
                               long_lead_smoothing=self.long_lead_smoothing, step_input=self.step_input)

    def _build_net(self, in_channels: int, out_channels: int) -> None:
        description = self.network_description(in_channels, out_channels)
        self.net = build_network(description)
        self.hparams["in_channels"] = in_channels
        self.hparams["out_channels"] = out_channels
        if self.nowcast_head != "direct":
            self.hparams["variables_per_frame"] = description.variables_per_frame
        if self.use_channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._build_metrics()

    def configure_model(self) -> None:
        """Build the network once the datamodule has told us the channel counts."""
        dm = self._datamodule()
        if dm is not None:
            self.check_datamodule(dm)
        if self.net is None:
            if dm is None:
                raise RuntimeError(
                    f"{type(self).__name__}: in_channels/out_channels are not set and no datamodule is attached "
                    "to infer them from"
                )
            in_ch = self.hparams.get("in_channels") or len(dm.channel_names)
            out_ch = self.hparams.get("out_channels") or self.output_channels_from(dm)
            self._build_net(int(in_ch), int(out_ch))
        # after the net is built: the metadata records its channel counts (load_inference_model needs them)
        if dm is not None and getattr(dm, "channel_names", None):
            self.data_meta = checkpoint_metadata(self, dm)

    def check_datamodule(self, dm: Any) -> None:
        """Refuse a datamodule whose samples the network cannot take, naming both keys (before any step)."""
        wants = self.nowcast_head in MOTION_INPUT_HEADS
        gives = bool(getattr(dm, "motion_input", False))
        if wants != gives:
            raise ConfigError(
                f"model.init_args.nowcast_head '{self.nowcast_head}' {'takes' if wants else 'does not take'} the "
                f"Lucas-Kanade motion as input, but data.init_args.motion_input is {gives}: set it to "
                f"{wants} (the archive DataModule computes it)")
        if self.step_input != (steps := bool(getattr(dm, "native_steps", False))):
            raise ConfigError(f"model.init_args.step_input is {self.step_input} but data.init_args.native_steps is "
                              f"{steps}: a network trained at native steps takes the step as input; set both alike")

    def output_channels_from(self, dm: Any) -> int:
        return len(dm.target_names)

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.net is None:
            raise RuntimeError("the network is not built yet: call configure_model() or give the channel counts")
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # ------------------------------------------------------------------ metrics (per kind)
    def _build_metrics(self) -> None:
        self.val_metrics = self.make_metrics()
        self.test_metrics = self.make_metrics()
        self.baseline_metrics = self.make_metrics() if self.baseline_name else None

    def make_metrics(self) -> nn.ModuleDict:
        raise NotImplementedError

    def predictions_for_metrics(self, output: Tensor) -> Tensor:
        """Model output -> the quantity the metrics score (probability, physical value, class)."""
        return output

    def target_for_metrics(self, batch: Batch) -> Tensor:
        return batch["target"]

    def update_metrics(self, metrics: nn.ModuleDict, pred: Tensor, batch: Batch) -> None:
        target = self.target_for_metrics(batch)
        mask = batch.get("mask")
        for key in metrics:
            _metric(metrics, key).update(pred, target, mask)

    @staticmethod
    def compute_metrics(metrics: nn.ModuleDict) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in metrics:
            metric = _metric(metrics, name)
            for key, value in metric.compute().items():
                if isinstance(value, Tensor) and value.numel() == 1:
                    out[f"{name}/{key}"] = float(value)
            metric.reset()
        return out

    # ------------------------------------------------------------------ loops
    def compute_loss(self, output: Tensor, batch: Batch) -> Tensor:
        return self.loss_fn(output, batch["target"], batch.get("mask"))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        output = self(batch["inputs"])
        loss = self.compute_loss(output, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["inputs"].shape[0])
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        output = self(batch["inputs"])
        loss = self.compute_loss(output, batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["inputs"].shape[0])
        self.update_metrics(self.val_metrics, self.predictions_for_metrics(output), batch)

    def on_validation_epoch_end(self) -> None:
        scores = self.compute_metrics(self.val_metrics)
        self.log_dict({f"val/{k}": v for k, v in scores.items() if math.isfinite(v)}, sync_dist=False)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        output = self(batch["inputs"])
        loss = self.compute_loss(output, batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch["inputs"].shape[0])
        self.update_metrics(self.test_metrics, self.predictions_for_metrics(output), batch)
        if self.baseline_metrics is not None and self.baseline_name:
            baseline = get_baseline(self.baseline_name)
            physical_inputs = self.physical_inputs(batch)
            self.update_metrics(self.baseline_metrics, baseline(physical_inputs, self.checkpoint_meta), batch)

    def physical_inputs(self, batch: Batch) -> Tensor:
        """Inputs in physical units (baselines work on those), undoing the stored normalisation."""
        stats = self.data_meta.normalization if self.data_meta is not None else None
        return batch["inputs"] if stats is None else stats.denormalize(batch["inputs"], channel_axis=1)

    def to_physical_target(self, x: Tensor) -> Tensor:
        """Target-space values -> physical units (identity when targets are not normalised)."""
        stats = self.data_meta.target_normalization if self.data_meta is not None else None
        return x if stats is None else stats.denormalize(x, channel_axis=1)

    @property
    def checkpoint_meta(self) -> CheckpointMetadata:
        """The metadata, known once ``configure_model`` has seen the datamodule or a checkpoint was loaded."""
        if self.data_meta is None:
            raise RuntimeError(f"{type(self).__name__}: no checkpoint metadata yet (no datamodule or checkpoint seen)")
        return self.data_meta

    def on_test_epoch_end(self) -> None:
        model_scores = self.compute_metrics(self.test_metrics)
        self.log_dict({f"test/{k}": v for k, v in model_scores.items() if math.isfinite(v)})
        baseline_scores = self.compute_metrics(self.baseline_metrics) if self.baseline_metrics is not None else {}
        # trainer.log_dir broadcasts under DDP: every rank must ask, or rank 0 waits for the others forever
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            self._write_test_report(model_scores, baseline_scores, out_dir)

    def _write_test_report(
        self, model_scores: dict[str, float], baseline_scores: dict[str, float], out_dir: Path
    ) -> None:
        report = {
            "application": self.application,
            "model": self.model_name,
            "baseline": self.baseline_name,
            "model_scores": model_scores,
            "baseline_scores": baseline_scores,
            "data": dict(self.data_meta.data_description) if self.data_meta is not None else {},
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "test_metrics.json"
        # strict JSON: an undefined score (NaN, e.g. FAR with no event forecast) is written as null
        path.write_text(json.dumps(_json_safe(report), indent=2, sort_keys=True, default=str, allow_nan=False))
        table = format_comparison_table(self.application, self.model_name, self.baseline_name,
                                        model_scores, baseline_scores)
        print(table)  # the test report is user output, not a log line
        log.info("test metrics written to %s", path)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_settings.build(self.parameters())
        if self.scheduler_settings is None:
            return optimizer
        max_epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_settings.build(optimizer, max_epochs)}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = self.data_meta or checkpoint_metadata(self, self._datamodule())
        checkpoint[CHECKPOINT_KEY] = meta.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = CheckpointMetadata.from_checkpoint_dict(checkpoint)
        dm = self._datamodule()
        if dm is not None and getattr(dm, "channel_names", None):
            check_data_matches(meta, dm)
        self.data_meta = meta
        if self.net is None:
            self._build_net(meta.in_channels, meta.out_channels)


class SegmentationTask(MeteoTask):
    """Binary (one logit channel) or multiclass (one logit per class) masks: bow echoes, radar artefacts."""

    task_kind: ClassVar[TaskKind] = TaskKind.SEGMENTATION
    default_loss: ClassVar[LossSettings] = LossSettings("bce_dice")

    def __init__(
        self,
        application: str,
        *,
        rain_kept_channel: str | None = None,
        rain_kept_threshold: float = 5.0,
        **kwargs: Any,
    ) -> None:
        """``rain_kept_channel`` (radar cleaning): score the share of true echoes of that input channel
        (above ``rain_kept_threshold`` in its physical units, outside the artefact mask) left unflagged.
        The other settings are :class:`MeteoTask`'s (jsonargparse reads them through ``**kwargs``)."""
        self.rain_kept_channel = rain_kept_channel
        self.rain_kept_threshold = rain_kept_threshold
        super().__init__(application, **kwargs)

    def output_channels_from(self, dm: Any) -> int:
        classes = getattr(dm, "class_names", None)
        return 1 if not classes or len(classes) <= 2 else len(classes)

    @property
    def binary(self) -> bool:
        return int(self.hparams["out_channels"]) == 1

    def make_metrics(self) -> nn.ModuleDict:
        n = 2 if self.binary else int(self.hparams["out_channels"])
        metrics: dict[str, nn.Module] = {"seg": SegmentationScores(num_classes=n)}
        if self.binary:
            metrics["cont"] = ContingencyScores(thresholds=[0.5])
        if self.binary and self.rain_kept_channel:
            metrics["rain"] = RainKept()
        return nn.ModuleDict(metrics)

    def predictions_for_metrics(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output) if self.binary else output.argmax(dim=1)

    def update_metrics(self, metrics: nn.ModuleDict, pred: Tensor, batch: Batch) -> None:
        target = batch["target"]
        mask = batch.get("mask")
        if self.binary:
            _metric(metrics, "cont").update(pred, target, mask)
            _metric(metrics, "seg").update((pred >= 0.5).long().squeeze(1), target.long().squeeze(1),
                                  None if mask is None else mask.squeeze(1))
            if "rain" in metrics and self.rain_kept_channel:
                echo = channel_of(self.physical_inputs(batch), self.checkpoint_meta, self.rain_kept_channel)
                true_echo = (echo >= self.rain_kept_threshold) & (target.squeeze(1) < 0.5)
                if mask is not None:
                    true_echo &= mask.squeeze(1)
                _metric(metrics, "rain").update(pred.squeeze(1) < 0.5, true_echo)
        else:
            _metric(metrics, "seg").update(pred, target, mask)


class NowcastTask(MeteoTask):
    """N past frames in, M future frames out; scored in physical units at every lead time."""

    task_kind: ClassVar[TaskKind] = TaskKind.NOWCAST
    default_loss: ClassVar[LossSettings] = LossSettings("mae")

    def __init__(
        self,
        application: str,
        *,
        model: str = "deeplabv3plus",
        baseline: str | None = "persistence",
        thresholds: list[float] | None = None,
        fss_scales: list[int] | None = None,
        time_step_minutes: float = 5.0,
        nowcast_head: str = "lagrangian",
        variables_per_frame: int | None = None,
        max_speed: float = 12.0,
        long_lead_smoothing: float = 0.0,
        step_input: bool = False,
        **kwargs: Any,
    ) -> None:
        """``nowcast_head``: ``lagrangian`` (learned smooth motion, semi-Lagrangian extrapolation), ``advection``
        (the same plus a learned correction per lead), ``lk_advection`` (pysteps' Lucas-Kanade motion as input,
        refined by a smooth residual bounded by ``max_speed``, plus a correction per lead; needs
        ``data.init_args.motion_input: true``), ``residual`` (correction of persistence) or ``direct``.
        ``max_speed`` bounds the learned motion of the advection heads, in pixels per time step: it must exceed
        the fastest system the network will see (60 km h-1 is 5 px per 5 min at 1 km, 7.5 per 15 min at 2 km).
        ``long_lead_smoothing`` (pixels per step, 0 = none): an advection head's leads past the trained ones are
        smoothed at inference by a Gaussian of this sigma times the steps past the last trained lead, as S-PROG
        drops the scales it cannot predict (nothing is learned for those leads; training is unchanged).
        ``step_input``: the frames' step is an input channel (``data.init_args.native_steps: true``, matched).
        The other settings are :class:`MeteoTask`'s (jsonargparse reads them through ``**kwargs``)."""
        if not max_speed > 0:
            raise ValueError(f"max_speed must be > 0 pixels per time step, got {max_speed}")
        if not long_lead_smoothing >= 0:
            raise ValueError(f"long_lead_smoothing must be >= 0 pixels per step, got {long_lead_smoothing}")
        self.long_lead_smoothing = float(long_lead_smoothing) or None
        self.step_input = bool(step_input)
        self.fss_scales = list(fss_scales) if fss_scales else [1, 4, 16]
        self.time_step_minutes = time_step_minutes
        self.nowcast_head = nowcast_head
        self.max_speed = float(max_speed)
        super().__init__(application, model=model, baseline=baseline,
                         thresholds=thresholds or [0.5, 1.0, 5.0, 10.0], **kwargs)

    def make_metrics(self) -> nn.ModuleDict:
        metrics: dict[str, nn.Module] = {}
        for lead in range(int(self.hparams["out_channels"])):
            tag = f"lead{round((lead + 1) * self.time_step_minutes):03d}"
            metrics[f"{tag}_cont"] = ContingencyScores(thresholds=self.thresholds)
            metrics[f"{tag}_reg"] = RegressionScores()
            metrics[f"{tag}_fss"] = FractionsSkillScore(threshold=self.thresholds[min(1, len(self.thresholds) - 1)],
                                                        scales=self.fss_scales)
        return nn.ModuleDict(metrics)

    def predictions_for_metrics(self, output: Tensor) -> Tensor:
        return self.to_physical_target(output)

    def target_for_metrics(self, batch: Batch) -> Tensor:
        return self.to_physical_target(batch["target"])

    def update_metrics(self, metrics: nn.ModuleDict, pred: Tensor, batch: Batch) -> None:
        target = self.target_for_metrics(batch)
        mask = batch.get("mask")
        for lead in range(pred.shape[1]):
            tag = f"lead{round((lead + 1) * self.time_step_minutes):03d}"
            p, t = pred[:, lead : lead + 1], target[:, lead : lead + 1]
            m = None if mask is None else mask[:, lead : lead + 1]
            _metric(metrics, f"{tag}_cont").update(p, t, m)
            _metric(metrics, f"{tag}_reg").update(p, t, m)
            _metric(metrics, f"{tag}_fss").update(p, t, m)


class RegressionTask(MeteoTask):
    """Channels to a field (sat2precip), trained with a masked loss on a zero-inflated target."""

    task_kind: ClassVar[TaskKind] = TaskKind.REGRESSION
    default_loss: ClassVar[LossSettings] = LossSettings("mae")

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict({"reg": RegressionScores(), "cont": ContingencyScores(thresholds=self.thresholds)})

    def predictions_for_metrics(self, output: Tensor) -> Tensor:
        return self.to_physical_target(output).clamp_min(0.0)

    def target_for_metrics(self, batch: Batch) -> Tensor:
        return self.to_physical_target(batch["target"])


class ClassificationTask(MeteoTask):
    """Image to class (webcam snow cover, visibility), cross-entropy with class weights."""

    task_kind: ClassVar[TaskKind] = TaskKind.CLASSIFICATION
    default_loss: ClassVar[LossSettings] = LossSettings("cross_entropy")

    def output_channels_from(self, dm: Any) -> int:
        return len(dm.class_names)

    def make_metrics(self) -> nn.ModuleDict:
        known = self.data_meta.class_names if self.data_meta is not None else ()
        names = known or tuple(str(i) for i in range(int(self.hparams["out_channels"])))
        return nn.ModuleDict({"cls": ClassificationScores(num_classes=len(names), class_names=list(names))})

    def predictions_for_metrics(self, output: Tensor) -> Tensor:
        return output.argmax(dim=1)

    def update_metrics(self, metrics: nn.ModuleDict, pred: Tensor, batch: Batch) -> None:
        _metric(metrics, "cls").update(pred, batch["target"])


TASKS: dict[TaskKind, type[MeteoTask]] = {
    task.task_kind: task for task in (SegmentationTask, NowcastTask, RegressionTask, ClassificationTask)
}
