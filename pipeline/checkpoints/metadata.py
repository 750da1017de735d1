"""The typed metadata a checkpoint carries, built once at save and parsed once at load.

Every later stage reads it by attribute (``model.meta.task_kind``, ``model.meta.lead_times``),
never by string key. On disk it is plain lists, numbers and strings, so
``torch.load(weights_only=True)`` reads it. Layouts:

- format 2 (this code): the fields below, the network's under ``"network"``;
- format 1 and 0 (``format_version`` absent): one flat dict, network fields at the top level.

Both are parsed into the same :class:`CheckpointMetadata`; a newer format is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import cached_property
from typing import Any

import torch

from meteovision.core.errors import MeteovisionError
from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.normalization import NormalizationError, NormalizationStats
from meteovision.pipeline.versions import package_versions

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "meteovision"
#: The key under which `meteovision fit` records its run (the loggers' version) in every checkpoint.
RUN_KEY = "meteovision_run"
FORMAT_VERSION = 2
NOWCAST_HEADS = ("direct", "residual", "advection", "lagrangian", "lk_advection")
#: Heads whose input is the frames plus their Lucas-Kanade motion (two channels the data do not hold).
MOTION_INPUT_HEADS = ("lk_advection",)


class CheckpointError(MeteovisionError):
    """A checkpoint cannot be used: missing, empty, truncated, unsafe, or its metadata is bad."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was trained on data other than what it is given now."""


@dataclass(frozen=True)
class NetworkMetadata:
    """What ``build_network`` needs to rebuild the trained network before loading its weights."""

    model_name: str
    in_channels: int
    out_channels: int
    model_settings: Mapping[str, Any] = field(default_factory=dict)
    nowcast_head: str = "direct"
    variables_per_frame: int = 1
    max_speed: float | None = None  # None: the head's historical bound (advection heads: 6 px/step)
    divisibility: int = 1  # input height and width must be a multiple of this
    #: Gaussian sigma (pixels) per step past an advection head's trained leads, applied at inference; None: none
    long_lead_smoothing: float | None = None
    #: Trained at native steps: the input holds the frames' time step as a channel after the frames, the
    #: motion is per lead (``time_step_minutes``), and a series at k leads per step gets leads k, 2k, ...
    step_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for the checkpoint and for ``build_network``'s callers that log it."""
        return {
            "model_name": self.model_name,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "model_settings": dict(self.model_settings),
            "nowcast_head": self.nowcast_head,
            "variables_per_frame": self.variables_per_frame,
            "max_speed": self.max_speed,
            "divisibility": self.divisibility,
            "long_lead_smoothing": self.long_lead_smoothing,
            "step_input": self.step_input,
        }


@dataclass(frozen=True)
class CheckpointMetadata:
    """Everything inference, explain, export and retrain need to know about a trained network."""

    application: str
    task_kind: TaskKind
    network: NetworkMetadata
    task: str = ""  # the Lightning task class that trained it
    input_variables: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()  # one per input channel (variables x frames, frame-major)
    channel_units: tuple[str, ...] = ()
    normalization: NormalizationStats | None = None
    target_names: tuple[str, ...] = ()
    target_units: tuple[str, ...] = ()
    target_normalization: NormalizationStats | None = None
    class_names: tuple[str, ...] = ()
    num_input_frames: int = 1
    num_output_frames: int | None = None
    time_step_minutes: float | None = None
    grid_spacing_m: float | None = None
    patch_size: int | None = None
    image_size: int | None = None  # side the classifier's images were resized to
    data_description: Mapping[str, Any] = field(default_factory=dict, compare=False)  # shown to people only
    versions: Mapping[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ derived facts
    @property
    def model_name(self) -> str:
        return self.network.model_name

    @property
    def in_channels(self) -> int:
        return self.network.in_channels

    @property
    def out_channels(self) -> int:
        return self.network.out_channels

    @cached_property
    def variables_per_step(self) -> tuple[str, ...]:
        """Physical variables of one output step: a nowcast's input variables, else the targets."""
        return self.input_variables if self.task_kind is TaskKind.NOWCAST else self.target_names

    @cached_property
    def num_lead_times(self) -> int:
        """M, the output steps (1 for kinds that do not forecast)."""
        if self.num_output_frames:
            return self.num_output_frames
        return self.out_channels // max(len(self.variables_per_step), 1)

    @cached_property
    def lead_times(self) -> tuple[timedelta, ...]:
        """1..M nominal time steps; a nowcast without a time step is refused at load."""
        step = self.time_step_minutes or 0.0
        return tuple(timedelta(minutes=step * (m + 1)) for m in range(self.num_lead_times))

    # ------------------------------------------------------------------ disk layout
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (format :data:`FORMAT_VERSION`), for ``torch.save`` and ``weights_only`` loading."""
        return _plain({
            "format_version": FORMAT_VERSION,
            "application": self.application,
            "task": self.task,
            "task_kind": self.task_kind.value,
            "network": self.network.to_dict(),
            "input_variables": list(self.input_variables),
            "channel_names": list(self.channel_names),
            "channel_units": list(self.channel_units),
            "normalization": self.normalization.to_dict() if self.normalization else None,
            "target_names": list(self.target_names),
            "target_units": list(self.target_units),
            "target_normalization": self.target_normalization.to_dict() if self.target_normalization else None,
            "class_names": list(self.class_names),
            "num_input_frames": self.num_input_frames,
            "num_output_frames": self.num_output_frames,
            "time_step_minutes": self.time_step_minutes,
            "grid_spacing_m": self.grid_spacing_m,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "data_description": dict(self.data_description),
            "versions": {str(k): str(v) for k, v in self.versions.items()},
        })

    @classmethod
    def from_checkpoint_dict(cls, ckpt: Mapping[str, Any], source: str = "checkpoint") -> CheckpointMetadata:
        """The metadata of a loaded checkpoint; ``source`` (the file) names it in every error."""
        if CHECKPOINT_KEY not in ckpt:
            raise CheckpointError(f"{source}: not a meteovision checkpoint (no '{CHECKPOINT_KEY}' metadata)")
        meta = cls.from_dict(ckpt[CHECKPOINT_KEY], source)
        hparams = ckpt.get("datamodule_hyper_parameters")
        if meta.image_size is None and isinstance(hparams, Mapping) and hparams.get("image_size"):
            # format 0/1 classifiers recorded their image size only in Lightning's datamodule arguments
            fields = _Fields(hparams, f"{source} [datamodule_hyper_parameters]")
            meta = replace(meta, image_size=fields.positive("image_size"))
        return meta

    @classmethod
    def from_dict(cls, data: Any, source: str = "checkpoint") -> CheckpointMetadata:
        """Parse and check any known layout (format 2, or the flat legacy formats 1 and 0)."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: metadata must be a mapping, got {type(data).__name__}")
        f = _Fields(data, source)
        version = f.integer("format_version", 0)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{source}: metadata format {version} is newer than this code reads "
                                  f"({FORMAT_VERSION}); update meteovision")
        net = _Fields(f.mapping("network"), f"{source} [network]") if version >= 2 else f
        meta = cls(
            application=f.text("application"),
            task=f.text("task", ""),
            task_kind=f.kind(),
            network=NetworkMetadata(
                model_name=net.text("model_name"),
                in_channels=net.positive("in_channels"),
                out_channels=net.positive("out_channels"),
                model_settings=net.mapping("model_settings", required=False),
                nowcast_head=net.choice("nowcast_head", NOWCAST_HEADS, "direct"),
                variables_per_frame=net.positive("variables_per_frame", 1),
                max_speed=net.number("max_speed"),
                divisibility=net.positive("divisibility", 1),
                long_lead_smoothing=net.number("long_lead_smoothing"),
                step_input=net.flag("step_input"),
            ),
            input_variables=f.texts("input_variables"),
            channel_names=f.texts("channel_names"),
            channel_units=f.texts("channel_units"),
            normalization=f.stats("normalization"),
            target_names=f.texts("target_names"),
            target_units=f.texts("target_units"),
            target_normalization=f.stats("target_normalization"),
            class_names=f.texts("class_names"),
            num_input_frames=f.positive("num_input_frames", 1),
            num_output_frames=f.positive("num_output_frames", None),
            time_step_minutes=f.number("time_step_minutes"),
            grid_spacing_m=f.number("grid_spacing_m"),
            patch_size=f.positive("patch_size", None),
            image_size=f.positive("image_size", None),
            data_description=f.mapping("data_description", required=False),
            versions={str(k): str(v) for k, v in f.mapping("versions", required=False).items()},
            format_version=version,
        )
        if meta.task_kind is TaskKind.NOWCAST and not meta.time_step_minutes:
            raise CheckpointError(f"{source}: nowcast metadata records no time_step_minutes, so its lead "
                                  "times are unknown")
        return meta


class _Fields:
    """Typed reads of one metadata mapping; each bad or missing field is a CheckpointError naming it."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def _bad(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: metadata field '{key}' {problem}")

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            raise self._bad(key, "is missing")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default is None)
        if value is None:
            return str(default)
        if not isinstance(value, str) or not value:
            raise self._bad(key, f"must be a non-empty string, got {value!r}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, False)
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise self._bad(key, f"must be a list of strings, got {value!r}")
        return tuple(str(v) for v in value)

    def integer(self, key: str, default: int) -> int:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, f"must be an integer, got {value!r}")
        return value

    def positive(self, key: str, default: Any = ...) -> Any:
        """A positive integer; required when no default is given, ``default`` when absent."""
        value = self._get(key, default is ...)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
            raise self._bad(key, f"must be a positive integer, got {value!r}")
        return int(value)

    def number(self, key: str) -> float | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self._bad(key, f"must be a positive number, got {value!r}")
        return float(value)

    def flag(self, key: str) -> bool:
        """A boolean; absent (checkpoints written before the field existed) is False."""
        value = self._get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, known: Sequence[str], default: str) -> str:
        value = self.text(key, default)
        if value not in known:
            raise self._bad(key, f"is {value!r}; known: {list(known)}")
        return value

    def kind(self) -> TaskKind:
        value = self.text("task_kind")
        try:
            return TaskKind(value)
        except ValueError:
            raise self._bad("task_kind", f"is {value!r}; known: {[k.value for k in TaskKind]}") from None

    def mapping(self, key: str, required: bool = True) -> Mapping[str, Any]:
        value = self._get(key, required)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self._bad(key, f"must be a mapping, got {type(value).__name__}")
        return dict(value)

    def stats(self, key: str) -> NormalizationStats | None:
        value = self._get(key, False)
        if not value:
            return None
        try:
            return NormalizationStats.from_dict(dict(value) if isinstance(value, Mapping) else value)
        except NormalizationError as err:
            raise self._bad(key, str(err)) from err


def _plain(value: Any) -> Any:
    """Tensors, numpy scalars and tuples -> JSON-like values that weights_only loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _optional(dm: Any, name: str) -> Any:
    """A datamodule property the data may be unable to tell (one frame: no time step); None then."""
    try:
        return getattr(dm, name, None)
    except MeteovisionError as err:  # our named data errors only; a bug still raises
        log.debug("checkpoint metadata: %s unknown (%s)", name, err)
        return None


def _stats_of(obj: Any) -> NormalizationStats | None:
    return obj if isinstance(obj, NormalizationStats) else None


def checkpoint_metadata(task: Any, dm: Any) -> CheckpointMetadata:
    """Everything inference needs, taken once from the task and its datamodule (at fit or save).

    Passed through its own disk layout, so what training holds is exactly what a load will see
    (numpy scalars become floats) and a checkpoint that could not be read back is never written.
    """
    from meteovision.models import get_model_spec

    describe = getattr(dm, "data_description", None)
    hp = task.hparams
    built = CheckpointMetadata(
        application=str(task.application),
        task=type(task).__name__,
        task_kind=TaskKind(task.task_kind),
        network=NetworkMetadata(
            model_name=str(task.model_name),
            in_channels=int(hp["in_channels"]),
            out_channels=int(hp["out_channels"]),
            model_settings=_plain(dict(task.model_settings)),
            nowcast_head=str(getattr(task, "nowcast_head", "direct")),
            variables_per_frame=int(hp.get("variables_per_frame") or 1),
            max_speed=getattr(task, "max_speed", None),
            long_lead_smoothing=getattr(task, "long_lead_smoothing", None),
            step_input=bool(getattr(task, "step_input", False)),
            divisibility=int(get_model_spec(task.model_name, **task.model_settings).divisibility),
        ),
        input_variables=tuple(getattr(dm, "input_variables", None) or ()),
        channel_names=tuple(getattr(dm, "channel_names", None) or ()),
        channel_units=tuple(getattr(dm, "channel_units", None) or ()),
        normalization=_stats_of(getattr(dm, "normalization", None)),
        target_names=tuple(getattr(dm, "target_names", None) or ()),
        target_units=tuple(getattr(dm, "target_units", None) or ()),
        target_normalization=_stats_of(getattr(dm, "target_transform", None)),
        class_names=tuple(getattr(dm, "class_names", None) or ()),
        num_input_frames=int(getattr(dm, "num_input_frames", 1) or 1),
        num_output_frames=getattr(dm, "num_output_frames", None),
        time_step_minutes=_optional(dm, "time_step_minutes"),
        grid_spacing_m=_optional(dm, "grid_spacing_m"),
        patch_size=getattr(getattr(dm, "patch", None), "patch_size", None),
        image_size=getattr(dm, "image_size", None),
        data_description=_plain(describe()) if callable(describe) else {},
        versions=package_versions(),
    )
    return CheckpointMetadata.from_dict(built.to_dict(), f"metadata of {task.application!r}")
