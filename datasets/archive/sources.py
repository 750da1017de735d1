"""Settings of one archive source (a glob of files, a variable, a conversion, crop, coarsening, held-out windows).

Frozen dataclasses, so LightningCLI fills them from YAML (``data.init_args.sources``) and a typo or a
bad value fails with an error naming the source and the key.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meteovision.datasets.errors import MeteovisionError


class ArchiveError(MeteovisionError):
    """An archive source, its files or its store cannot be used as configured."""


class Conversion(enum.StrEnum):
    """How a file's variable becomes the training quantity."""

    RATE = "rate"  # already a rate (mm h-1): kept
    ACCUMULATION = "accumulation"  # kg m-2 or mm over the file's period -> mm h-1
    DBZ_TO_RATE = "dbz_to_rate"  # dBZ -> mm h-1 by Z = a R^b
    DBZ = "dbz"  # reflectivity kept in dBZ


#: Units each conversion expects from the reader (checked per file).
INPUT_UNITS: dict[Conversion, tuple[str, ...]] = {
    Conversion.RATE: ("mm h-1",),
    Conversion.ACCUMULATION: ("kg m-2", "mm"),
    Conversion.DBZ_TO_RATE: ("dBZ",),
    Conversion.DBZ: ("dBZ",),
}


@dataclass(frozen=True)
class TimeWindow:
    """A closed time window ``[start, end]`` (ISO 8601, UTC), e.g. an evaluation's test window."""

    start: str
    end: str

    def bounds(self) -> tuple[np.datetime64, np.datetime64]:
        lo, hi = _utc(self.start), _utc(self.end)
        if hi < lo:
            raise ArchiveError(f"time window {self.start} .. {self.end}: end before start")
        return lo, hi

    def contains(self, times: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds()
        t = np.asarray(times).astype("datetime64[ns]")
        return (t >= lo) & (t <= hi)


def _utc(text: str) -> np.datetime64:
    try:
        return np.datetime64(text.rstrip("Z").replace("+00:00", ""), "ns")
    except ValueError as err:
        raise ArchiveError(f"time {text!r} is not ISO 8601 (YYYY-MM-DDTHH:MM[:SS][Z])") from err


@dataclass(frozen=True)
class SourceSettings:
    """One radar series of the archive.

    ``glob`` is relative to the DataModule's ``root`` (or absolute). ``period_minutes`` is the
    accumulation period (default: the series' time step). ``crop_bounds_m`` is ``[left, bottom,
    right, top]`` in the file's projection. ``coarsen`` averages ``coarsen x coarsen`` blocks (linear Z
    for dBZ). ``test_from``: frames from then on are the test block (default: the last
    ``test_fraction``). ``exclude``: windows never used for training nor validation.
    """

    name: str
    glob: str
    variable: str
    conversion: Conversion | str = Conversion.RATE  # by value in YAML: rate, accumulation, dbz_to_rate, dbz
    zr_a: float = 200.0
    zr_b: float = 1.6
    period_minutes: float | None = None
    crop_bounds_m: tuple[float, float, float, float] | None = None
    coarsen: int = 1
    test_from: str | None = None
    exclude: tuple[TimeWindow, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        where = f"source {self.name!r}"
        if not self.name or not self.glob or not self.variable:
            raise ArchiveError(f"{where}: name, glob and variable must be given")
        object.__setattr__(self, "conversion", _conversion(self.conversion, where))
        if self.coarsen < 1:
            raise ArchiveError(f"{where}: coarsen must be >= 1, got {self.coarsen}")
        if self.zr_a <= 0 or self.zr_b <= 0:
            raise ArchiveError(f"{where}: zr_a and zr_b must be > 0, got {self.zr_a}, {self.zr_b}")
        if self.period_minutes is not None and self.period_minutes <= 0:
            raise ArchiveError(f"{where}: period_minutes must be > 0, got {self.period_minutes}")
        if self.crop_bounds_m is not None:
            left, bottom, right, top = (float(v) for v in self.crop_bounds_m)
            if not (left < right and bottom < top):
                raise ArchiveError(f"{where}: crop_bounds_m must be [left, bottom, right, top], "
                                   f"got {self.crop_bounds_m}")
            object.__setattr__(self, "crop_bounds_m", (left, bottom, right, top))
        windows = tuple(w if isinstance(w, TimeWindow) else TimeWindow(**w) for w in self.exclude)  # type: ignore[arg-type]
        for w in windows:
            w.bounds()
        object.__setattr__(self, "exclude", windows)
        if self.test_from is not None:
            _utc(self.test_from)

    @property
    def kind(self) -> Conversion:
        """The conversion as an enum member (YAML gives its value)."""
        return _conversion(self.conversion, f"source {self.name!r}")

    def test_start(self) -> np.datetime64 | None:
        return None if self.test_from is None else _utc(self.test_from)

    def files(self, root: Path) -> list[Path]:
        """The source's files, sorted; a clear error when none matches."""
        pattern = self.glob if os.path.isabs(self.glob) else str(root / self.glob)
        base = Path(pattern)
        anchor = Path(base.anchor)
        found = sorted(p for p in anchor.glob(str(base.relative_to(anchor))) if p.is_file())
        if not found:
            raise ArchiveError(f"source {self.name!r}: no file matches {pattern!r}")
        return found


def _conversion(value: Conversion | str, where: str) -> Conversion:
    try:
        return Conversion(value)
    except ValueError as err:
        known = [c.value for c in Conversion]
        raise ArchiveError(f"{where}: conversion {value!r} unknown; choose one of {known}") from err


def resolve_root(root: str, anchor: Path | None = None) -> Path:
    """``root`` as given, or relative to the checkout (``anchor``) when it is not found from the working folder."""
    path = Path(root).expanduser()
    if path.is_dir():
        return path.resolve()
    if not path.is_absolute():
        here = anchor or Path(__file__).resolve().parents[2]
        candidate = (here / path).resolve()
        if candidate.is_dir():
            return candidate
    raise ArchiveError(
        f"archive root {root!r} is not a folder (looked in {Path.cwd()} and beside the checkout); "
        "set data.init_args.root to the folder holding the radar files"
    )
