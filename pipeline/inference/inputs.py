"""Inputs of the predict stage: find files, read them through the readers, check them against a checkpoint.

A checkpoint was trained on given variables, in given units, on a grid of a given spacing;
a file that differs is refused with :class:`InputMismatchError` (naming the file and the
problem) before any model runs, because a model fed the wrong quantity still returns numbers.
"""

from __future__ import annotations

import glob
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from meteovision.datasets.errors import MissingVariableError
from meteovision.datasets.read_guard import reading
from meteovision.datasets.readers import ReadOptions, open_dataset
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, CheckpointMismatchError
from meteovision.pipeline.inference.products import ProductGrid

log = logging.getLogger(__name__)

#: Relative difference of grid spacing tolerated between the checkpoint and an input.
GRID_SPACING_TOLERANCE = 0.01
_GLOB_CHARS = frozenset("*?[")


class InputMismatchError(CheckpointMismatchError):
    """An input file does not fit the checkpoint (variables, units, grid spacing, time step)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ---------------------------------------------------------------------------- finding files


def _visible_files(folder: Path) -> list[Path]:
    """Regular files of ``folder``, sorted; hidden ones (atomic writers' temporaries) left out."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def expand_inputs(specs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Files named by ``specs``: each a file, a folder (its visible files) or a glob pattern.

    Returns ``(files, missing)``: the files found (sorted per spec, duplicates dropped, order of
    the specs kept) and the explicit file paths that do not exist (the caller reports them).
    A folder or a glob that matches nothing is logged and contributes nothing.
    """
    files: list[Path] = []
    missing: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _visible_files(path)
        elif path.exists():
            found = [path]
        elif _GLOB_CHARS & set(text):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            missing.append(path)
            continue
        if not found:
            log.warning("input %s matches no file", text)
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, missing


# ---------------------------------------------------------------------------- what the checkpoint expects


@dataclass(frozen=True)
class InputSpec:
    """What every input frame must hold for a checkpoint: variables, their units, the grid spacing.

    ``coarsen``: average k x k blocks of every input as it is read (the valid cells; linear Z for dBZ),
    so that a 1 km composite meets a 2 km checkpoint; the spacing is checked after it.
    """

    variables: tuple[str, ...]
    units: tuple[str, ...] | None
    grid_spacing_m: float | None
    ignore_grid_spacing: bool = False
    coarsen: int = 1

    @classmethod
    def from_meta(cls, meta: CheckpointMetadata, ignore_grid_spacing: bool = False, coarsen: int = 1) -> InputSpec:
        """The expectations written in a checkpoint's metadata (``checkpoints.metadata``)."""
        variables = meta.input_variables
        if not variables:
            raise CheckpointMismatchError(
                f"checkpoint of {meta.application!r} records no input_variables; it cannot say "
                "which variables of a file to read"
            )
        units_all = meta.channel_units
        # Stacked time steps are frame-major, so the first len(variables) units are the variables' units.
        units = tuple(units_all[: len(variables)]) if len(units_all) >= len(variables) else None
        spacing = meta.grid_spacing_m
        return cls(variables, units, spacing, ignore_grid_spacing, coarsen)

    def open(self, path: Path) -> xr.Dataset:
        """The file read through the readers, its blocks averaged when ``coarsen`` > 1."""
        return open_dataset(path, options=ReadOptions(coarsen=self.coarsen)) if self.coarsen > 1 else open_dataset(path)


@dataclass(frozen=True, eq=False)
class Frame:
    """One time step of one input file, checked against an :class:`InputSpec`."""

    path: Path
    index: int
    time: np.datetime64
    grid: ProductGrid

    @property
    def key(self) -> tuple[Path, int]:
        return (self.path, self.index)

    @property
    def label(self) -> str:
        """The file name, with the time step when the file holds several."""
        return self.path.name if self.index == 0 else f"{self.path.name}[{self.index}]"


def grid_spacing(grid: ProductGrid) -> tuple[float, float]:
    """Mean cell size (dx, dy) in metres of a grid."""
    return float(np.abs(np.diff(grid.x)).mean()), float(np.abs(np.diff(grid.y)).mean())


def check_grid_spacing(path: Path, grid: ProductGrid, spec: InputSpec) -> None:
    """Refuse (or, with ``ignore_grid_spacing``, warn about) a grid whose spacing is not the checkpoint's."""
    if spec.grid_spacing_m is None:
        return
    dx, dy = grid_spacing(grid)
    expected = spec.grid_spacing_m
    off = max(abs(dx - expected), abs(dy - expected)) / expected
    if off <= GRID_SPACING_TOLERANCE:
        return
    problem = (f"grid spacing {dx:g} x {dy:g} m differs from the checkpoint's {expected:g} m by more than "
               f"{GRID_SPACING_TOLERANCE:.0%}")
    if spec.ignore_grid_spacing:
        log.warning("%s: %s (ignored on request)", path, problem)
        return
    raise InputMismatchError(path, problem + " (pass --ignore-grid-spacing to run the model anyway)")


def _by_name(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """2-D-gridded variables by name, and by ODIM ``quantity`` where that differs (as the training store)."""
    out: dict[str, xr.DataArray] = {}
    aliases: dict[str, xr.DataArray] = {}
    for name, var in ds.data_vars.items():
        if tuple(var.dims[-2:]) != ("y", "x"):
            continue
        out[str(name)] = var
        quantity = var.attrs.get("quantity")
        if isinstance(quantity, str) and quantity and quantity != name:
            aliases.setdefault(quantity, var)
    for quantity, var in aliases.items():
        out.setdefault(quantity, var)
    return out


def _checked_variables(path: Path, ds: xr.Dataset, spec: InputSpec) -> list[xr.DataArray]:
    found = _by_name(ds)
    absent = [v for v in spec.variables if v not in found]
    if absent:
        raise InputMismatchError(
            path, f"lacks input variable(s) {absent} the checkpoint needs; the file has {sorted(found)}"
        )
    chosen = [found[v] for v in spec.variables]
    if spec.units is not None:
        for name, var, want in zip(spec.variables, chosen, spec.units, strict=True):
            have = str(var.attrs.get("units", "1"))
            if have != want:
                raise InputMismatchError(
                    path, f"variable {name!r} is in {have!r}, the checkpoint expects {want!r}"
                )
    for name, var in zip(spec.variables, chosen, strict=True):
        extra = [d for d in var.dims if d not in ("time", "y", "x")]
        if extra:
            raise InputMismatchError(
                path, f"variable {name!r} has dimensions {var.dims}; expected (time, y, x)"
            )
    return chosen


def _times(path: Path, ds: xr.Dataset) -> np.ndarray:
    if "time" not in ds.coords:
        raise MissingVariableError(path, "no time coordinate: a product needs the time of its input")
    return np.atleast_1d(ds["time"].to_numpy()).astype("datetime64[ns]")


def _stack(path: Path, chosen: list[xr.DataArray], index: int) -> np.ndarray:
    """float32 ``[V, H, W]`` of time step ``index``."""
    arrays = []
    for var in chosen:
        values = var.isel(time=index).values if "time" in var.dims else var.values
        arrays.append(np.asarray(values, dtype=np.float32))
    data = np.stack(arrays)
    if data.ndim != 3:
        raise InputMismatchError(path, f"expected 2-D fields, got shape {data.shape[1:]}")
    return data


def read_frames(path: Path, spec: InputSpec) -> list[tuple[Frame, np.ndarray]]:
    """Read ``path`` and check it; every time step's :class:`Frame` and its float32 ``[V, H, W]`` data.

    Raises a ``MeteovisionError`` naming the file: unreadable (reader errors), wrong variables or
    units, or wrong grid spacing (:class:`InputMismatchError`), or no CRS (``ProductError``); any
    other exception a format library raises on the file's content becomes ``UnexpectedReadError``.
    """
    path = Path(path)
    with reading(path), spec.open(path) as ds:
        chosen = _checked_variables(path, ds, spec)
        grid = ProductGrid.from_dataset(ds)
        check_grid_spacing(path, grid, spec)
        times = _times(path, ds)
        frames = []
        for i, t in enumerate(times):
            frames.append((Frame(path, i, np.datetime64(t, "ns"), grid), _stack(path, chosen, i)))
    return frames


def load_frame(frame: Frame, spec: InputSpec) -> np.ndarray:
    """The ``[V, H, W]`` data of a frame read (and checked) earlier, read again from its file."""
    with reading(frame.path), spec.open(frame.path) as ds:
        return _stack(frame.path, _checked_variables(frame.path, ds, spec), frame.index)


def grid_problem(reference: ProductGrid, grid: ProductGrid) -> str | None:
    """Why ``grid`` is not the same grid as ``reference`` (shape, coordinates, CRS), or None."""
    if grid.shape != reference.shape:
        return f"grid shape {grid.shape} differs from {reference.shape}"
    for axis in ("x", "y"):
        a, b = getattr(reference, axis), getattr(grid, axis)
        tol = 1e-6 * float(np.abs(np.diff(a)).min())
        if not np.allclose(a, b, rtol=0.0, atol=tol):
            return f"{axis} coordinates differ by up to {float(np.abs(a - b).max()):g} m"
    if not grid.crs.equals(reference.crs):
        return f"CRS {grid.crs.name!r} differs from {reference.crs.name!r}"
    return None


class FrameCache:
    """The last ``capacity`` frames' data (least recently used dropped): a window slides, files read once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        self._data: OrderedDict[tuple[Path, int], np.ndarray] = OrderedDict()

    def put(self, frame: Frame, data: np.ndarray) -> None:
        self._data[frame.key] = data
        self._data.move_to_end(frame.key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def get(self, frame: Frame, spec: InputSpec) -> np.ndarray:
        data = self._data.get(frame.key)
        if data is None:
            data = load_frame(frame, spec)
            self.put(frame, data)
        else:
            self._data.move_to_end(frame.key)
        return data


def utc_datetime(t: np.datetime64) -> datetime:
    """A reader time (naive UTC ``datetime64``) as an aware UTC ``datetime``."""
    ns = int(t.astype("datetime64[ns]").astype(np.int64))
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def iso_minutes(t: np.datetime64) -> str:
    """``2018-08-24T18:00Z``."""
    return f"{utc_datetime(t):%Y-%m-%dT%H:%MZ}"


def minutes(delta: np.timedelta64) -> float:
    """A numpy time difference in minutes."""
    return float(delta / np.timedelta64(1, "m"))


def modal_step(times: np.ndarray) -> np.timedelta64 | None:
    """The most frequent step between sorted distinct ``times`` (the smallest on a tie); None for < 2."""
    if times.size < 2:
        return None
    steps, counts = np.unique(np.diff(np.sort(times)), return_counts=True)
    return np.timedelta64(steps[int(np.argmax(counts))], "ns")


def step_fits(series_step: np.timedelta64, model_step: np.timedelta64) -> bool:
    """True when windows at ``model_step`` can be cut from a series at ``series_step`` (whole multiple)."""
    ratio = model_step / series_step
    return bool(ratio >= 1 - 1e-9 and math.isclose(ratio, round(ratio), abs_tol=1e-9))
