"""The operational configuration (``meteovision operational --config FILE``), typed and strict.

One YAML file per application describes where inputs arrive, how they are grouped into units
of work, which checkpoint turns them into products, where those go, and the bookkeeping
(ledger, lock, retries, quarantine, logs). Unknown keys are refused (a typo must not silently
fall back to a default); every error names the file and the key.

Paths may use ``~`` and environment variables (``${STATE_DIRECTORY}/ledger.sqlite`` under
systemd); a relative path is taken relative to the folder of the configuration file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.packaged import PACKAGED_CHECKPOINTS

__all__ = [
    "InputConfig",
    "OperationalConfig",
    "OperationalConfigError",
    "OutputConfig",
    "PredictOptions",
    "RetryConfig",
    "SequenceConfig",
    "load_config",
    "time_regex",
]

#: strftime directives a file-name time pattern may use, and the digits each matches.
_DIRECTIVES: dict[str, str] = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "j": r"\d{3}",
}
_ENV_LEFT = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


class OperationalConfigError(MeteovisionError):
    """The operational configuration is unreadable, invalid, or does not fit the checkpoint."""


def time_regex(time_format: str) -> re.Pattern[str]:
    """A regex finding a time written with ``time_format`` (strftime) inside a file name.

    Only fixed-width numeric directives are allowed (%Y %y %m %d %H %M %S %j, and %%), so the
    match is unambiguous; anything else is refused with the directive named.
    """
    parts: list[str] = []
    i = 0
    while i < len(time_format):
        char = time_format[i]
        if char != "%":
            parts.append(re.escape(char))
            i += 1
            continue
        if i + 1 >= len(time_format):
            raise ValueError(f"time format {time_format!r} ends with a lone '%'")
        code = time_format[i + 1]
        if code == "%":
            parts.append("%")
        elif code in _DIRECTIVES:
            parts.append(_DIRECTIVES[code])
        else:
            raise ValueError(
                f"time format {time_format!r}: directive %{code} is not supported in file names "
                f"(use fixed-width ones: {' '.join('%' + d for d in _DIRECTIVES)})"
            )
        i += 2
    if not any(p in _DIRECTIVES.values() for p in parts):
        raise ValueError(f"time format {time_format!r} has no time directive")
    return re.compile("".join(parts))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Strict):
    """Where inputs arrive and which of them to take.

    ``pattern`` is a glob relative to ``folder`` (``**`` recurses); hidden files (names starting
    with ".", e.g. a producer's temporaries) are never taken. A file's time comes from its name
    (``time_from: filename`` with the strftime ``time_format``, UTC) or from the reader
    (``time_from: reader``, the last time step of the file). Only files whose time lies within the
    last ``window_hours`` (and at most ``max_future_minutes`` ahead, for clock skew) are taken;
    ``window_hours: null`` takes every file. A file changed less than ``min_age_seconds`` ago is
    left for the next tick (it may still be being written).
    """

    folder: Path
    pattern: str = "*"
    time_from: Literal["filename", "reader"] = "filename"
    time_format: str = "%Y%m%d%H%M"
    window_hours: float | None = Field(default=6.0, gt=0)
    max_future_minutes: float = Field(default=15.0, ge=0)
    min_age_seconds: float = Field(default=10.0, ge=0)

    @field_validator("pattern")
    @classmethod
    def _relative_pattern(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if value.startswith("/"):
            raise ValueError("must be relative to input.folder (put the folder in input.folder)")
        return value

    @field_validator("time_format")
    @classmethod
    def _valid_format(cls, value: str) -> str:
        time_regex(value)
        return value


class SequenceConfig(_Strict):
    """A nowcast's input: ``frames`` consecutive frames ``step_minutes`` apart (must match the checkpoint)."""

    frames: int = Field(ge=1, le=1000)
    step_minutes: float = Field(gt=0)


class OutputConfig(_Strict):
    """Where the products go, in which format, and whether PNG quicklooks go beside them."""

    folder: Path
    format: Literal["netcdf", "geotiff"] = "netcdf"
    quicklook: bool = False


class PredictOptions(_Strict):
    """Settings passed to the predict stage (``meteovision.pipeline.inference.predict.PredictSettings``)."""

    device: str = "cpu"
    batch_size: int = Field(default=4, ge=1)
    tile_size: int | None = Field(default=None, ge=8)
    overlap: int | None = Field(default=None, ge=0)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    ignore_grid_spacing: bool = False
    coarsen: int = Field(default=1, ge=1, description="average k x k input blocks first (predict --coarsen)")
    institution: str = "meteovision"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not (value in {"cpu", "cuda"} or re.fullmatch(r"cuda:\d+", value)):
            raise ValueError(f"{value!r} unknown; use cpu, cuda or cuda:N")
        return value


class RetryConfig(_Strict):
    """Bounded retries of a failing unit, and when a claim or a temporary file counts as abandoned.

    After the n-th failed attempt the next one waits ``backoff_seconds * 2**(n-1)``; after
    ``max_attempts`` the unit is quarantined. A claim older than ``lease_seconds`` (or whose
    process is dead on this host) is taken over. Hidden ``.*.tmp`` files in the output folder older
    than ``stale_temp_seconds`` are left-overs of killed writers and are deleted.
    """

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_seconds: float = Field(default=300.0, ge=0)
    lease_seconds: float = Field(default=3600.0, gt=0)
    stale_temp_seconds: float = Field(default=3600.0, ge=0)
    lock_timeout_seconds: float = Field(default=120.0, gt=0)


class OperationalConfig(_Strict):
    """One operational application: inputs -> units of work -> checkpoint -> products, with a ledger."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["single_file", "nowcast_sequence"]
    checkpoint: Path
    input: InputConfig
    sequence: SequenceConfig | None = None
    output: OutputConfig
    ledger: Path
    lock: Path
    quarantine_folder: Path | None = None
    retry: RetryConfig = RetryConfig()
    predict: PredictOptions = PredictOptions()
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _sequence_matches_kind(self) -> OperationalConfig:
        if self.kind == "nowcast_sequence" and self.sequence is None:
            raise ValueError("kind nowcast_sequence needs a 'sequence' section (frames, step_minutes)")
        if self.kind == "single_file" and self.sequence is not None:
            raise ValueError("'sequence' is only for kind nowcast_sequence; remove it for single_file")
        if self.ledger == self.lock:
            raise ValueError("'ledger' and 'lock' must be different files")
        return self


_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("checkpoint",),
    ("ledger",),
    ("lock",),
    ("quarantine_folder",),
    ("input", "folder"),
    ("output", "folder"),
)


def _expand(value: str, key: str, source: Path) -> str:
    """``~`` and ``$VAR`` expanded; a variable left unset is an error naming it (never a literal '$X')."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    left = _ENV_LEFT.search(expanded)
    if left:
        raise OperationalConfigError(
            f"{source}: {key}: environment variable {left.group(1)} is not set (in {value!r})"
        )
    return expanded


def _resolve_paths(raw: dict[str, Any], source: Path) -> None:
    """Expand and anchor the path keys of the raw mapping in place (relative to the file's folder)."""
    for keys in _PATH_KEYS:
        holder: Any = raw
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        last = keys[-1]
        if not isinstance(holder, dict) or not isinstance(holder.get(last), str):
            continue
        path = Path(_expand(holder[last], ".".join(keys), source))
        anchored = path if path.is_absolute() else source.parent / path
        if keys == ("checkpoint",) and str(path) in PACKAGED_CHECKPOINTS and not anchored.exists():
            continue  # the name of a checkpoint shipped in the package (no such file beside the config)
        holder[last] = str(anchored)


def _describe(err: ValidationError, source: Path) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = (
            "unknown key (not allowed here; check the spelling)"
            if item["type"] == "extra_forbidden"
            else item["msg"]
        )
        lines.append(f"  {key}: {message}")
    return f"{source}: invalid operational configuration:\n" + "\n".join(lines)


def parse_config(raw: Any, source: Path) -> OperationalConfig:
    """Validate an already-loaded mapping (``source`` names it in errors and anchors relative paths)."""
    if not isinstance(raw, dict):
        raise OperationalConfigError(
            f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}"
        )
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    _resolve_paths(raw, source)
    try:
        return OperationalConfig.model_validate(raw)
    except ValidationError as err:
        raise OperationalConfigError(_describe(err, source)) from err


def load_config(path: str | Path) -> OperationalConfig:
    """Read and validate an operational YAML file; :class:`OperationalConfigError` names the key at fault."""
    source = Path(path).expanduser().absolute()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise OperationalConfigError(
            f"{source}: cannot read the configuration ({err.strerror or err})"
        ) from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise OperationalConfigError(f"{source}: not valid YAML: {err}") from err
    return parse_config(raw, source)
