"""The application table: what each of the eight applications reads, predicts and is judged by.

Written once here and read by every stage: readers and synthetic data (classes, label columns,
flag meanings), datamodules (class names, visibility bins), products (mask flags), model cards
and retraining (headline metric), the demo (the list of applications). A test checks each row
against its packaged config (``configs/<name>.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from meteovision.core.errors import MeteovisionError
from meteovision.core.task_kinds import TaskKind


class UnknownApplicationError(MeteovisionError, KeyError):
    """An application name that is not in the table; the message lists the known ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown application {name!r}; known: {', '.join(APPLICATION_NAMES)}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Variable:
    """A named quantity with its units and, where CF defines one, its standard name."""

    name: str
    units: str
    standard_name: str | None = None


@dataclass(frozen=True)
class Flags:
    """``flag_values`` and ``flag_meanings`` of a mask, as written to targets and products."""

    values: tuple[int, ...]
    meanings: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.meanings):
            raise ValueError(f"{len(self.values)} flag values for {len(self.meanings)} meanings")

    @property
    def meanings_attribute(self) -> str:
        """The CF ``flag_meanings`` attribute: the meanings separated by blanks."""
        return " ".join(self.meanings)


@dataclass(frozen=True)
class HeadlineMetric:
    """The one score an application is judged by: its key in ``test_metrics.json`` and direction."""

    key: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Application:
    """One row of the table. ``classes`` name the class indices of a classification (or a
    multiclass mask); ``bins_m`` are the class edges of a binned target (visibility)."""

    name: str
    kind: TaskKind
    inputs: tuple[Variable, ...]
    targets: tuple[Variable, ...]
    baseline: str
    headline_metric: HeadlineMetric
    classes: tuple[str, ...] = ()
    bins_m: tuple[float, ...] = ()
    flags: Flags | None = None
    label_column: str | None = None  # column of labels.csv holding the target (webcam applications)
    extra_metrics: tuple[HeadlineMetric, ...] = field(default=())

    @property
    def config_file(self) -> str:
        """File name of the packaged training config in ``configs/``."""
        return f"{self.name}.yaml"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.inputs)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.targets)

    @property
    def metrics(self) -> tuple[HeadlineMetric, ...]:
        """The headline metric first, then the others reported beside it."""
        return (self.headline_metric, *self.extra_metrics)

    def output_channels(self, num_output_frames: int = 1) -> int:
        """Channels of the network's output: one logit for a binary mask, one per class, or one per
        target variable and lead time (a nowcast predicts its inputs ``num_output_frames`` times)."""
        if self.kind is TaskKind.CLASSIFICATION:
            return len(self.classes)
        if self.kind is TaskKind.SEGMENTATION:
            return 1 if len(self.classes) <= 2 else len(self.classes)
        if self.kind is TaskKind.NOWCAST:
            return len(self.inputs) * num_output_frames
        return len(self.targets)


#: Snow cover classes of the webcam labels (``snow_class`` column), in class-index order.
SNOW_CLASSES: tuple[str, ...] = ("none", "partial", "full")
#: Visibility class edges in metres: <200 m, 200-1000 m, 1-5 km, >5 km.
VISIBILITY_BINS_M: tuple[float, ...] = (200.0, 1000.0, 5000.0)
VISIBILITY_CLASSES: tuple[str, ...] = ("<200 m", "200-1000 m", "1-5 km", ">5 km")
#: Columns of a webcam ``labels.csv``.
LABEL_COLUMNS: tuple[str, ...] = ("path", "camera", "time", "snow_class", "visibility_m")

RATE = Variable("RATE", "mm h-1", "rainfall_rate")
DBZH = Variable("DBZH", "dBZ", "equivalent_reflectivity_factor")
CLOUD = Variable("cloud_area_fraction", "1", "cloud_area_fraction")
_RGB = (Variable("red", "1"), Variable("green", "1"), Variable("blue", "1"))
_CSI = HeadlineMetric("cont/csi@0.5", "CSI", True)
_F1 = HeadlineMetric("cls/f1_macro", "macro-F1", True)
_ACCURACY = HeadlineMetric("cls/accuracy", "accuracy", True)

_TABLE: tuple[Application, ...] = (
    Application(
        name="bow_echo",
        kind=TaskKind.SEGMENTATION,
        inputs=(RATE,),
        targets=(Variable("bow_echo_mask", "1"),),
        baseline="bow_echo_rule",
        headline_metric=_CSI,
        extra_metrics=(HeadlineMetric("cont/pod@0.5", "POD", True), HeadlineMetric("cont/far@0.5", "FAR", False)),
        flags=Flags((0, 1), ("no_bow_echo", "bow_echo")),
    ),
    Application(
        name="nowcast_precip",
        kind=TaskKind.NOWCAST,
        inputs=(RATE,),
        targets=(RATE,),
        baseline="persistence",
        headline_metric=HeadlineMetric("lead030_cont/csi@1", "CSI 1 mm/h +30 min", True),
        extra_metrics=(HeadlineMetric("lead030_reg/mae", "MAE +30 min (mm/h)", False),),
    ),
    Application(
        name="nowcast_reflectivity",
        kind=TaskKind.NOWCAST,
        inputs=(DBZH,),
        targets=(DBZH,),
        baseline="persistence",
        headline_metric=HeadlineMetric("lead030_cont/csi@25", "CSI 25 dBZ +30 min", True),
        extra_metrics=(HeadlineMetric("lead030_reg/mae", "MAE +30 min (dB)", False),),
    ),
    Application(
        name="nowcast_cloudiness",
        kind=TaskKind.NOWCAST,
        inputs=(CLOUD,),
        targets=(CLOUD,),
        baseline="persistence",
        headline_metric=HeadlineMetric("lead030_cont/csi@0.5", "CSI 0.5 +30 min", True),
        extra_metrics=(HeadlineMetric("lead030_reg/mae", "MAE +30 min", False),),
    ),
    Application(
        name="sat2precip",
        kind=TaskKind.REGRESSION,
        inputs=(
            Variable("IR_108", "K", "toa_brightness_temperature"),
            Variable("IR_120", "K", "toa_brightness_temperature"),
            Variable("WV_062", "K", "toa_brightness_temperature"),
            Variable("VIS_006", "1", "toa_bidirectional_reflectance"),
        ),
        targets=(RATE,),
        baseline="gpi",
        headline_metric=HeadlineMetric("reg/rmse", "RMSE (mm/h)", False),
        extra_metrics=(
            HeadlineMetric("cont/csi@1", "CSI 1 mm/h", True),
            HeadlineMetric("reg/corr", "correlation", True),
        ),
    ),
    Application(
        name="radar_cleaning",
        kind=TaskKind.SEGMENTATION,
        inputs=(Variable("TH", "dBZ", "equivalent_reflectivity_factor"), Variable("QIND", "1")),
        targets=(Variable("artefact_mask", "1"),),
        baseline="texture_filter",
        headline_metric=HeadlineMetric("cont/csi@0.5", "artefact CSI", True),
        extra_metrics=(HeadlineMetric("rain/rain_kept", "rain kept", True),),
        flags=Flags((0, 1), ("precipitation_or_no_echo", "artefact")),
    ),
    Application(
        name="webcam_snow",
        kind=TaskKind.CLASSIFICATION,
        inputs=_RGB,
        targets=(Variable("snow_class", "1"),),
        baseline="snow_rule",
        headline_metric=_F1,
        extra_metrics=(_ACCURACY,),
        classes=SNOW_CLASSES,
        label_column="snow_class",
    ),
    Application(
        name="webcam_visibility",
        kind=TaskKind.CLASSIFICATION,
        inputs=_RGB,
        targets=(Variable("visibility_m", "m", "visibility_in_air"),),
        baseline="visibility_rule",
        headline_metric=_F1,
        extra_metrics=(_ACCURACY,),
        classes=VISIBILITY_CLASSES,
        bins_m=VISIBILITY_BINS_M,
        label_column="visibility_m",
    ),
)

APPLICATIONS: dict[str, Application] = {app.name: app for app in _TABLE}
#: Every application, in the order the demo and ``sample-data --app all`` run them.
APPLICATION_NAMES: tuple[str, ...] = tuple(APPLICATIONS)


def get_application(name: str) -> Application:
    """The table row of ``name``; :class:`UnknownApplicationError` names the known ones otherwise."""
    try:
        return APPLICATIONS[name]
    except KeyError:
        raise UnknownApplicationError(name) from None


def iter_applications() -> Iterator[Application]:
    """Every row, in table order."""
    return iter(_TABLE)


__all__ = [
    "APPLICATIONS",
    "APPLICATION_NAMES",
    "LABEL_COLUMNS",
    "SNOW_CLASSES",
    "VISIBILITY_BINS_M",
    "VISIBILITY_CLASSES",
    "Application",
    "Flags",
    "HeadlineMetric",
    "UnknownApplicationError",
    "Variable",
    "get_application",
    "iter_applications",
]
