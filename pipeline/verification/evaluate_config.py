"""The evaluation settings (one YAML per radar series), validated at once with the bad key named."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meteovision.datasets.archive.sources import Conversion
from meteovision.datasets.errors import MeteovisionError

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)

#: The methods every evaluation knows; ``network`` needs a checkpoint.
KNOWN_METHODS = ("network", "persistence", "lk", "sprog")


class EvaluationError(MeteovisionError):
    """A bad evaluation config, or a series that cannot be evaluated; the message names the file."""


# ---------------------------------------------------------------------------- config
class EvaluationConfig(BaseModel):
    """What ``meteovision evaluate`` runs; every field is a YAML key (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="label of the evaluation (titles, JSON)")
    data_root: Path = Field(Path("../shared/data"), description="folder the input glob is relative to "
                            "(relative to the current directory; --data-root overrides)")
    inputs: str = Field(description="glob of the frames under data_root, e.g. radar/opera_20180824/*.hdf")
    variable: str = Field("RATE", description="variable of the files (RATE in mm h-1, or DBZH in dBZ)")
    conversion: Literal[Conversion.RATE, Conversion.ACCUMULATION, Conversion.DBZ_TO_RATE] = Field(
        Conversion.RATE, description="to rain rate: rate (kept), accumulation (amount over period_minutes), "
        "dbz_to_rate (Z = a R^b)")
    period_minutes: float | None = Field(None, gt=0, description="accumulation period of one file (default: "
                                         "the series' time step)")
    zr_a: float = Field(223.0, gt=0, description="Z = a R^b for dbz_to_rate (pysteps' FMI default)")
    zr_b: float = Field(1.53, gt=0)
    crop_bounds_m: tuple[float, float, float, float] | None = Field(
        None, description="left, bottom, right, top in projection metres (cells whose centre is inside)")
    crop_pixels: tuple[tuple[int, int], tuple[int, int]] | None = Field(
        None, description="((row0, row1), (col0, col1)) of the native grid")
    coarsen: int = Field(1, ge=1, description="average k x k blocks (linear Z for dBZ)")
    time_step_minutes: float | None = Field(None, gt=0, description="expected step; refused if the files differ")
    test_from: datetime | None = Field(None, description="first time of the test window (UTC)")
    last_frames: int | None = Field(None, ge=2, description="the test window is the last N frames")
    past_frames: int = Field(4, ge=1, description="frames each method sees, the analysis time included")
    max_lead_minutes: float = Field(60.0, gt=0)
    thresholds: tuple[float, ...] = (0.5, 1.0, 5.0, 10.0)
    fss_threshold: float = 1.0
    fss_scales_km: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    table_fss_scale_km: float = Field(16.0, description="FSS scale shown in the printed table and plot")
    methods: tuple[str, ...] = ("persistence", "lk", "sprog")
    method_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    map_leads_minutes: tuple[float, ...] = (30.0, 60.0)
    maps: Literal["none", "last", "all"] = "last"
    output_dir: Path = Path("evaluation")

    @field_validator("methods")
    @classmethod
    def _methods_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(KNOWN_METHODS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"methods repeat: {list(value)}")
        return value

    @model_validator(mode="after")
    def _one_window(self) -> EvaluationConfig:
        if self.crop_bounds_m is not None and self.crop_pixels is not None:
            raise ValueError("give crop_bounds_m or crop_pixels, not both")
        if self.test_from is not None and self.last_frames is not None:
            raise ValueError("give test_from or last_frames, not both")
        if not self.thresholds:
            raise ValueError("give at least one threshold")
        return self


def _format_validation(err: pydantic.ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def resolve_config_path(value: str | Path) -> Path:
    """A config given by path, or by name (``evaluate_opera``) from the packaged configs."""
    path = Path(value)
    if path.is_file():
        return path
    from importlib import resources

    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    packaged = resources.files("meteovision.configs").joinpath(name)
    if packaged.is_file():
        return Path(str(packaged))
    raise EvaluationError(f"{value}: no such config file (nor a packaged config of that name)")


def load_config(path: str | Path, **overrides: Any) -> EvaluationConfig:
    """Read and check an evaluation YAML; ``overrides`` (not None) replace its keys."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EvaluationError(f"{p}: cannot read the config ({exc})") from exc
    if not isinstance(raw, dict):
        raise EvaluationError(f"{p}: the config must be a mapping of keys, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvaluationConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise EvaluationError(f"{p}: {_format_validation(exc)}") from exc


