"""The in-memory description of a gridded product, shared by every product writer.

A writer turns a :class:`Product` into a file and knows nothing of models: the predict
stage (or a baseline) fills a ``Product`` with arrays in physical units, the grid, the
times and the provenance, and hands it to the NetCDF, GeoTIFF or quicklook writer.
Everything is checked here, once, so the writers can trust what they get.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyproj
import xarray as xr

from meteovision.datasets.conventions import GRID_MAPPING
from meteovision.datasets.errors import MeteovisionError

VariableKind = Literal["continuous", "mask", "probability", "classes"]
VARIABLE_KINDS: tuple[str, ...] = get_args(VariableKind)

#: Names the writers use for coordinates; a product variable may not take them.
RESERVED_NAMES = frozenset({"x", "y", "lat", "lon", "time", "leadtime", "forecast_reference_time", "crs"})

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

#: Packages whose versions a product records by default.
DEFAULT_VERSIONED_PACKAGES = ("meteovision", "numpy", "torch", "xarray", "netCDF4", "pyproj")


class ProductError(MeteovisionError):
    """A product description is inconsistent (shapes, flags, times, names)."""


class WriterError(MeteovisionError):
    """A product file could not be written. Carries the path and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _as_utc(value: datetime | np.datetime64, what: str) -> datetime:
    """An aware UTC datetime; naive values are taken as UTC (the readers' convention)."""
    if isinstance(value, np.datetime64):
        ns = int(value.astype("datetime64[ns]").astype(np.int64))
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    if not isinstance(value, datetime):
        raise ProductError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, eq=False)
class ProductVariable:
    """One field of a product: ``data`` is ``[y, x]`` or ``[leadtime, y, x]`` in physical units.

    NaN marks "no value" (outside coverage) for every kind; masks and class fields may be
    given as floats with NaN and are stored as int8 with a fill value.
    """

    name: str
    data: np.ndarray
    units: str
    standard_name: str | None
    long_name: str
    kind: VariableKind = "continuous"
    flag_values: tuple[int, ...] | None = None
    flag_meanings: tuple[str, ...] | None = None
    valid_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        where = f"product variable {self.name!r}"
        if not _NAME_RE.match(self.name) or self.name in RESERVED_NAMES:
            raise ProductError(f"{where}: name must match {_NAME_RE.pattern} and not be one of "
                               f"{sorted(RESERVED_NAMES)}")
        if self.kind not in VARIABLE_KINDS:
            raise ProductError(f"{where}: kind {self.kind!r} is not one of {VARIABLE_KINDS}")
        data = np.asarray(self.data)
        if data.ndim not in (2, 3):
            raise ProductError(f"{where}: data must be [y, x] or [leadtime, y, x], got shape {data.shape}")
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)
                or data.dtype == np.bool_):
            raise ProductError(f"{where}: data must be numeric, got dtype {data.dtype}")
        object.__setattr__(self, "data", data)
        if self.valid_range is not None:
            lo, hi = (float(v) for v in self.valid_range)
            if not lo < hi:
                raise ProductError(f"{where}: valid_range {self.valid_range} must be increasing")
            object.__setattr__(self, "valid_range", (lo, hi))
        if self.kind in ("mask", "classes"):
            self._check_flags(where, data)
        elif self.flag_values is not None or self.flag_meanings is not None:
            raise ProductError(f"{where}: flag_values/flag_meanings belong to masks and classes only")
        if self.kind == "probability":
            if self.units != "1":
                raise ProductError(f"{where}: a probability has units '1', got {self.units!r}")
            if self.valid_range is None:
                object.__setattr__(self, "valid_range", (0.0, 1.0))
        if self.valid_range is not None and self.kind not in ("mask", "classes"):
            finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
            lo, hi = self.valid_range
            if finite.size and (finite.min() < lo or finite.max() > hi):
                raise ProductError(f"{where}: values span [{finite.min()}, {finite.max()}], outside "
                                   f"valid_range [{lo}, {hi}]")

    def _check_flags(self, where: str, data: np.ndarray) -> None:
        if self.flag_values is None or self.flag_meanings is None:
            raise ProductError(f"{where}: a {self.kind} needs flag_values and flag_meanings")
        values = tuple(int(v) for v in self.flag_values)
        meanings = tuple(str(m) for m in self.flag_meanings)
        if len(values) != len(meanings) or len(values) < 2:
            raise ProductError(f"{where}: {len(values)} flag_values for {len(meanings)} flag_meanings "
                               "(need the same number, at least two)")
        if len(set(values)) != len(values) or min(values) < 0 or max(values) > 127:
            raise ProductError(f"{where}: flag_values {values} must be distinct and in 0..127 (int8)")
        bad = [m for m in meanings if not _NAME_RE.match(m)]
        if bad:
            raise ProductError(f"{where}: flag_meanings {bad} must be single words (letters, digits, _)")
        present = data[~np.isnan(data)] if np.issubdtype(data.dtype, np.floating) else data
        unknown = np.setdiff1d(np.unique(present), np.asarray(values))
        if unknown.size:
            raise ProductError(f"{where}: values {unknown[:10].tolist()} are not among flag_values {values}")
        object.__setattr__(self, "flag_values", values)
        object.__setattr__(self, "flag_meanings", meanings)

    @property
    def is_integer(self) -> bool:
        """Masks and class fields are stored as int8."""
        return self.kind in ("mask", "classes")

    def stacked(self) -> np.ndarray:
        """The data as ``[leadtime, y, x]`` (a 2-D field becomes one step)."""
        return self.data[np.newaxis] if self.data.ndim == 2 else self.data

    # Constructors for the fields the applications produce, with their CF names and units.
    @classmethod
    def rain_rate(cls, data: np.ndarray, name: str = "rain_rate") -> ProductVariable:
        """Precipitation rate in mm h-1 (liquid water equivalent)."""
        return cls(name, data, "mm h-1", "lwe_precipitation_rate", "rain rate", "continuous")

    @classmethod
    def reflectivity(cls, data: np.ndarray, name: str = "reflectivity") -> ProductVariable:
        """Equivalent radar reflectivity factor in dBZ."""
        return cls(name, data, "dBZ", "equivalent_reflectivity_factor", "radar reflectivity", "continuous")

    @classmethod
    def cloud_fraction(cls, data: np.ndarray, name: str = "cloud_area_fraction") -> ProductVariable:
        """Cloud cover as a fraction 0..1 of the pixel."""
        return cls(name, data, "1", "cloud_area_fraction", "cloud area fraction", "continuous",
                   valid_range=(0.0, 1.0))

    @classmethod
    def mask(cls, data: np.ndarray, name: str, long_name: str,
             flag_meanings: tuple[str, str]) -> ProductVariable:
        """A 0/1 mask (0 = first meaning, 1 = second), e.g. ``("no_bow_echo", "bow_echo")``."""
        return cls(name, data, "1", None, long_name, "mask", flag_values=(0, 1), flag_meanings=flag_meanings)

    @classmethod
    def probability(cls, data: np.ndarray, name: str, long_name: str) -> ProductVariable:
        """A probability 0..1 (e.g. of one class), stored as float32."""
        return cls(name, data, "1", None, long_name, "probability", valid_range=(0.0, 1.0))

    @classmethod
    def classes(cls, data: np.ndarray, name: str, long_name: str,
                class_names: Sequence[str]) -> ProductVariable:
        """A class index field 0..K-1 named by ``class_names``."""
        return cls(name, data, "1", None, long_name, "classes",
                   flag_values=tuple(range(len(class_names))), flag_meanings=tuple(class_names))


@dataclass(frozen=True, eq=False)
class ProductGrid:
    """Cell-centre projection coordinates in metres and their CRS."""

    x: np.ndarray
    y: np.ndarray
    crs: pyproj.CRS

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64)
        y = np.asarray(self.y, dtype=np.float64)
        for axis, values in (("x", x), ("y", y)):
            if values.ndim != 1 or values.size < 2:
                raise ProductError(f"grid: {axis} must be 1-D with at least 2 cells, "
                                   f"got shape {values.shape}")
            if not np.all(np.isfinite(values)):
                raise ProductError(f"grid: {axis} holds non-finite values")
            steps = np.diff(values)
            if not (np.all(steps > 0) or np.all(steps < 0)):
                raise ProductError(f"grid: {axis} must be strictly monotonic")
        if not isinstance(self.crs, pyproj.CRS):
            raise ProductError(f"grid: crs must be a pyproj.CRS, got {type(self.crs).__name__}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return int(self.y.size), int(self.x.size)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> ProductGrid:
        """The grid of a reader dataset (docs/CONTRACTS.md: x/y in metres, ``crs`` with ``crs_wkt``)."""
        source = ds.attrs.get("source_path", "<dataset>")
        missing = [n for n in ("x", "y", GRID_MAPPING) if n not in ds.variables]
        if missing:
            raise ProductError(f"{source}: dataset lacks {missing}, needed for a product grid")
        wkt = ds[GRID_MAPPING].attrs.get("crs_wkt")
        if not wkt:
            raise ProductError(f"{source}: variable '{GRID_MAPPING}' has no crs_wkt attribute")
        try:
            crs = pyproj.CRS.from_wkt(wkt)
        except pyproj.exceptions.CRSError as exc:
            raise ProductError(f"{source}: crs_wkt is not a valid CRS ({exc})") from exc
        return cls(ds["x"].values, ds["y"].values, crs)

    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D longitude and latitude (degrees, on the CRS's own datum) of the cell centres; NaN off-globe."""
        geodetic = self.crs.geodetic_crs
        if geodetic is None:
            raise ProductError(f"grid: CRS {self.crs.name!r} has no geodetic CRS for lat/lon")
        transformer = pyproj.Transformer.from_crs(self.crs, geodetic, always_xy=True)
        xx, yy = np.meshgrid(self.x, self.y)
        lon, lat = transformer.transform(xx, yy, errcheck=False)
        lon = np.where(np.isfinite(lon) & np.isfinite(lat), lon, np.nan)
        lat = np.where(np.isfinite(lat) & np.isfinite(lon), lat, np.nan)
        return np.asarray(lon), np.asarray(lat)


def default_package_versions(names: Sequence[str] = DEFAULT_VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (``"not installed"`` where absent), for provenance."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class Provenance:
    """Where a product came from: enough to reproduce it (model, checkpoint, config, inputs)."""

    application: str
    model_name: str
    model_version: str
    checkpoint_sha256: str | None
    config: Mapping[str, Any] = field(default_factory=dict)
    package_versions: Mapping[str, str] = field(default_factory=default_package_versions)
    input_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, value in (("application", self.application), ("model_name", self.model_name)):
            if not _TOKEN_RE.match(value):
                raise ProductError(f"provenance: {what} {value!r} must be a token of letters, digits, _ . -")
        if self.checkpoint_sha256 is not None and not _SHA256_RE.match(self.checkpoint_sha256):
            raise ProductError(f"provenance: checkpoint_sha256 {self.checkpoint_sha256!r} is not 64 "
                               "lower-case hex digits")
        object.__setattr__(self, "input_files", tuple(str(p) for p in self.input_files))


@dataclass(frozen=True, eq=False)
class Product:
    """A gridded product: variables on one grid, at one reference time and zero or more lead times.

    ``lead_times=None`` is an analysis (valid at the reference time, one time step);
    a list makes a nowcast whose variables are ``[len(lead_times), y, x]``.
    """

    variables: tuple[ProductVariable, ...]
    grid: ProductGrid
    reference_time: datetime
    lead_times: tuple[timedelta, ...] | None
    provenance: Provenance
    title: str
    institution: str
    references: str = "meteovision product; see the meteovision README for the method"
    comment: str = ""

    def __post_init__(self) -> None:
        variables = tuple(self.variables)
        if not variables:
            raise ProductError("product: no variables")
        names = [v.name for v in variables]
        if len(set(names)) != len(names):
            raise ProductError(f"product: variable names repeat: {names}")
        object.__setattr__(self, "variables", variables)
        object.__setattr__(self, "reference_time", _as_utc(self.reference_time, "product reference_time"))
        if self.lead_times is not None:
            leads = tuple(self.lead_times)
            if not leads:
                raise ProductError("product: lead_times is empty (use None for an analysis)")
            if any(not isinstance(lead, timedelta) for lead in leads):
                raise ProductError("product: lead_times must be datetime.timedelta values")
            if any(b <= a for a, b in itertools.pairwise(leads)) or leads[0] < timedelta(0):
                raise ProductError(f"product: lead_times must be non-negative and increasing, got {leads}")
            object.__setattr__(self, "lead_times", leads)
        n_steps = self.n_steps
        for var in variables:
            shape = var.stacked().shape
            if shape[1:] != self.grid.shape:
                raise ProductError(f"product variable {var.name!r}: spatial shape {shape[1:]} differs from "
                                   f"the grid's {self.grid.shape}")
            if shape[0] != n_steps:
                raise ProductError(f"product variable {var.name!r}: {shape[0]} time steps for "
                                   f"{n_steps} lead time(s)")
        if not self.title.strip() or not self.institution.strip():
            raise ProductError("product: title and institution must not be empty")

    @property
    def is_nowcast(self) -> bool:
        """A nowcast has a leadtime dimension; an analysis a single time."""
        return self.lead_times is not None

    @property
    def n_steps(self) -> int:
        """Number of time steps (lead times, or 1 for an analysis)."""
        return 1 if self.lead_times is None else len(self.lead_times)

    @property
    def leads(self) -> tuple[timedelta, ...]:
        """Lead times, ``(0,)`` for an analysis."""
        return (timedelta(0),) if self.lead_times is None else self.lead_times

    @property
    def valid_times(self) -> tuple[datetime, ...]:
        """Valid (UTC) time of each step."""
        return tuple(self.reference_time + lead for lead in self.leads)

    def variable(self, name: str) -> ProductVariable:
        """The variable called ``name``."""
        for var in self.variables:
            if var.name == name:
                return var
        raise ProductError(f"product has no variable {name!r}; it has {[v.name for v in self.variables]}")


def lead_minutes(lead: timedelta) -> int:
    """A lead time in whole minutes (products are made at minute resolution)."""
    minutes = lead.total_seconds() / 60.0
    if not math.isclose(minutes, round(minutes), abs_tol=1e-9):
        raise ProductError(f"lead time {lead} is not a whole number of minutes")
    return round(minutes)


def product_filename(application: str, model_name: str, reference_time: datetime,
                     lead: timedelta | None = None, suffix: str = ".nc") -> str:
    """Deterministic file name, e.g. ``meteovision_nowcast_precip_deeplabv3plus_20180824T1800Z.nc``.

    A single lead time (one file per step) adds ``_lead0030min`` (zero-padded so names sort by lead).
    """
    for what, value in (("application", application), ("model_name", model_name)):
        if not _TOKEN_RE.match(value):
            raise ProductError(f"file name: {what} {value!r} must be a token of letters, digits, _ . -")
    ref = _as_utc(reference_time, "reference_time")
    name = f"meteovision_{application}_{model_name}_{ref:%Y%m%dT%H%MZ}"
    if lead is not None:
        name += f"_lead{lead_minutes(lead):04d}min"
    return name + suffix
