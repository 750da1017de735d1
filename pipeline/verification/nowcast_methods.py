"""Every nowcast method behind one interface, pysteps style: ``build_method(name).forecast(past, n_leads)``.

The evaluator scores persistence, pysteps' optical-flow extrapolation, S-PROG and a trained
network on the same cases, so they all take the same :class:`NowcastInput` (past rain-rate
frames in mm h-1, NaN outside radar coverage) and return ``(n_leads, H, W)`` float32 mm h-1
with NaN where the method has no value:

* ``persistence``: the last frame at every lead (Eulerian persistence);
* ``lk``: pysteps' own protocol - dBR (0.1 mm h-1 threshold), Lucas-Kanade motion of the last
  three frames, semi-Lagrangian extrapolation of the last frame (pysteps' scheme, bit for bit, along
  a :class:`~meteovision.pipeline.verification.trajectory.Trajectory` the mask shares), back to mm h-1;
* ``sprog``: pysteps' S-PROG with the settings of its example (6 cascade levels, AR(2), CDF
  matching) on the same dBR frames and motion;
* ``network``: a meteovision nowcast checkpoint run exactly as ``meteovision predict`` runs it
  (its normalisation, tiling and output code); an advection head continues its own motion
  past the leads it was trained for.

:func:`source_inside_mask` tells where a lead's Lagrangian source lies inside the domain and
the radar coverage: a pixel whose rain comes from outside is unknowable for every method, so
the evaluator scores none of them there. pysteps is an optional extra (``meteovision[baselines]``),
imported only when a method needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.motion import (
    DBR_THRESHOLD,
    DBR_ZEROVALUE,
    MOTION_FRAMES,
    MotionDependencyError,
    filled_dbr,
    from_dbr,
    lucas_kanade,
    pysteps_missing,
    quiet_pysteps,
    to_dbr,
)
from meteovision.pipeline.checkpoints.loading import InferenceModel, load_inference_model
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast
from meteovision.pipeline.inference.predict import (
    Precision,
    PredictSettings,
    infer_field,
    prepare_model,
    require_kind,
)
from meteovision.pipeline.inference.tiling import TilingSettings
from meteovision.pipeline.verification.baselines import persist
from meteovision.pipeline.verification.trajectory import Trajectory

log = logging.getLogger(__name__)

__all__ = [
    "METHOD_NAMES",
    "LucasKanadeNowcast",
    "NetworkNowcast",
    "NowcastDependencyError",
    "NowcastError",
    "NowcastInput",
    "NowcastMethod",
    "Persistence",
    "SprogNowcast",
    "build_method",
    "lagrangian_trajectory",
    "lucas_kanade_motion",
    "source_inside_mask",
]

#: A lead's pixel counts as having an inside source when its advected validity is at least this.
SOURCE_INSIDE_MIN = 0.999
RAIN_UNITS = "mm h-1"
METHOD_NAMES = ("persistence", "lk", "sprog", "network")
#: Keyword settings of ``build_method("network", ...)``: how the predict stage runs it.
NETWORK_SETTINGS = ("device", "tile_size", "overlap", "batch_size", "precision")


class NowcastError(MeteovisionError):
    """A nowcast method cannot run on this input or with these settings."""


class NowcastDependencyError(NowcastError):
    """An optional dependency (pysteps, OpenCV) that the method needs is not installed."""


@dataclass(frozen=True)
class NowcastInput:
    """The past of one nowcast: rain-rate frames and the spacing they were observed at.

    ``frames``: ``(T, H, W)`` mm h-1, oldest first; NaN = no data (outside radar coverage).
    Stored as float32 (a copy only when the given array is not already float32).
    """

    frames: np.ndarray
    time_step_minutes: float
    pixel_size_m: float
    #: The Lucas-Kanade motion of these frames when already computed (the evaluator computes it once per
    #: analysis time and shares it between LK, S-PROG and the mask); None = compute when needed.
    motion: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: :func:`source_inside_mask` of these frames along ``motion`` for the first leads, when already computed.
    inside: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: The semi-Lagrangian departure points along ``motion`` (LK extrapolation and the mask sample them).
    trajectory: Trajectory | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames, dtype=np.float32)
        if frames.ndim != 3:
            raise NowcastError(f"frames must be (T, H, W), got shape {frames.shape}")
        t, h, w = frames.shape
        if t < 1 or h < 2 or w < 2:
            raise NowcastError(f"frames must hold at least one 2 x 2 frame, got shape {frames.shape}")
        if np.isinf(frames).any():
            raise NowcastError("frames hold infinite values (nodata must be NaN)")
        for label, value in (("time_step_minutes", self.time_step_minutes), ("pixel_size_m", self.pixel_size_m)):
            if not (math.isfinite(value) and value > 0):
                raise NowcastError(f"{label} must be a finite number > 0, got {value}")
        object.__setattr__(self, "frames", frames)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def last(self, n: int, method: str) -> np.ndarray:
        """The last ``n`` frames; a method that needs more than there are says so."""
        if self.frames.shape[0] < n:
            raise NowcastError(f"{method} needs the last {n} frames, got {self.frames.shape[0]}")
        return self.frames[-n:]


class NowcastMethod(Protocol):
    """What the evaluator calls: a short ``name`` and ``forecast``.

    ``name`` is a read-only property here so that frozen dataclasses fit the protocol.
    """

    @property
    def name(self) -> str: ...

    def forecast(self, past: NowcastInput, n_leads: int) -> np.ndarray:
        """``(n_leads, H, W)`` float32 mm h-1 for leads 1..n_leads steps; NaN where there is no value."""
        ...


def _check_leads(n_leads: int) -> None:
    if isinstance(n_leads, bool) or not isinstance(n_leads, int | np.integer) or n_leads < 1:
        raise NowcastError(f"n_leads must be an integer >= 1, got {n_leads!r}")


# ---------------------------------------------------------------------------- pysteps


def _require_pysteps(what: str) -> None:
    """Import pysteps (lazily: the package works without it), or say which extra installs it."""
    missing = pysteps_missing(what)
    if missing:
        raise NowcastDependencyError(missing)


def _filled_dbr(past: NowcastInput, n: int, what: str) -> np.ndarray:
    """The last ``n`` frames in dBR with gaps set to the zero value (pysteps' methods need finite inputs)."""
    return filled_dbr(past.last(n, what))


def lucas_kanade_motion(past: NowcastInput) -> np.ndarray:
    """``(2, H, W)`` motion in pixels per time step (x eastward along columns, then y along rows).

    pysteps' dense Lucas-Kanade on the last three frames in dBR, gaps filled with the zero value;
    ``past.motion`` when the caller computed it already.
    """
    if past.motion is not None:
        return past.motion
    what = "Lucas-Kanade motion"
    past.last(MOTION_FRAMES, what)
    try:
        return lucas_kanade(past.frames, what)
    except MotionDependencyError as err:
        raise NowcastDependencyError(str(err)) from err


def _motion_for(past: NowcastInput, motion: np.ndarray | None) -> np.ndarray:
    if motion is None:
        return lucas_kanade_motion(past)
    velocity = np.asarray(motion, dtype=np.float64)
    if velocity.shape != (2, *past.shape):
        raise NowcastError(f"motion must be (2, H, W) = (2, {past.shape[0]}, {past.shape[1]}), got {velocity.shape}")
    if not np.isfinite(velocity).all():
        raise NowcastError("motion holds non-finite values")
    return velocity


def source_inside_mask(past: NowcastInput, n_leads: int, motion: np.ndarray | None = None) -> np.ndarray:
    """``(n_leads, H, W)`` bool: the pixel's Lagrangian source lies inside the domain and the coverage.

    The last frame's validity (1 inside radar coverage, 0 outside) is extrapolated like the LK
    forecast (semi-Lagrangian, bilinear, 0 beyond the domain) along ``motion`` (LK of ``past``
    when None); a pixel counts where it stays >= 0.999, so a source even partly outside does not.
    """
    _check_leads(n_leads)
    if past.inside is not None and past.inside.shape[0] >= n_leads and (motion is None or motion is past.motion):
        return past.inside[:n_leads]
    valid = np.isfinite(past.frames[-1])
    return lagrangian_trajectory(past, n_leads, motion).covered(valid, SOURCE_INSIDE_MIN, n_leads)


def lagrangian_trajectory(past: NowcastInput, n_leads: int, motion: np.ndarray | None = None) -> Trajectory:
    """pysteps' semi-Lagrangian departure points along ``motion`` (LK of ``past`` when None) for ``n_leads``.

    ``past.trajectory`` when it was computed along ``past.motion`` for as many leads or more.
    """
    shared = past.trajectory
    if shared is not None and shared.n_leads >= n_leads and (motion is None or motion is past.motion):
        return shared
    return Trajectory.along(_motion_for(past, motion), n_leads)


# ---------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Persistence:
    """Eulerian persistence: the last frame at every lead (NaN where it is NaN)."""

    name: str = "persistence"
    min_frames: int = 1

    def forecast(self, past: NowcastInput, n_leads: int) -> np.ndarray:
        _check_leads(n_leads)
        return persist(past.frames, n_leads)


@dataclass(frozen=True)
class LucasKanadeNowcast:
    """pysteps' extrapolation nowcast: LK motion of the last three frames, the last frame advected in dBR.

    A pixel whose source lies outside the domain or the coverage is NaN, exactly where
    :func:`source_inside_mask` is False: gaps are filled with the dBR zero value for the
    advection (as pysteps' example does) and put back as NaN by that mask, so every pixel the
    evaluator scores has a value (pysteps' NaN-propagating interpolation would also blank
    pixels that take a weight below 0.001 from a gap).
    """

    name: str = "lk"
    min_frames: int = MOTION_FRAMES

    def forecast(self, past: NowcastInput, n_leads: int) -> np.ndarray:
        _check_leads(n_leads)
        velocity = lucas_kanade_motion(past)
        return self.extrapolate(past, velocity, n_leads)

    @staticmethod
    def extrapolate(past: NowcastInput, velocity: np.ndarray, n_leads: int) -> np.ndarray:
        """The last frame advected ``n_leads`` steps along a given motion (the benchmark times both parts).

        pysteps' semi-Lagrangian extrapolation, bit for bit, along the shared trajectory when
        ``velocity`` is ``past.motion`` and ``past.trajectory`` was computed with it.
        """
        trajectory = lagrangian_trajectory(past, n_leads, velocity)
        last = to_dbr(past.frames[-1])
        gaps = ~np.isfinite(last)
        if gaps.all():
            raise NowcastError("the last frame holds no data (every pixel is NaN)")
        last[gaps] = DBR_ZEROVALUE
        # outval NaN: sources beyond the domain have no value, as in source_inside_mask
        rate = from_dbr(trajectory.sample(np.asarray(last, dtype=np.float64), np.nan, n_leads))
        if gaps.any():
            rate[~source_inside_mask(past, n_leads, velocity)] = np.nan
        return rate


@dataclass(frozen=True)
class SprogNowcast:
    """pysteps' S-PROG (scale-dependent AR(2) decay of the cascade), settings of pysteps' example.

    Gaps are filled with the dBR zero value for the method (as the example does) and put back as
    NaN where a lead's source lies outside the coverage or the domain (:func:`source_inside_mask`).
    """

    name: str = "sprog"
    n_cascade_levels: int = 6
    ar_order: int = 2
    decomp_method: str = "fft"
    bandpass_filter_method: str = "gaussian"
    probmatching_method: str = "cdf"

    def __post_init__(self) -> None:
        if self.n_cascade_levels < 1 or self.ar_order < 1:
            raise NowcastError(f"n_cascade_levels and ar_order must be >= 1, got {self.n_cascade_levels}, "
                               f"{self.ar_order}")

    @property
    def min_frames(self) -> int:
        return max(MOTION_FRAMES, self.ar_order + 1)

    def forecast(self, past: NowcastInput, n_leads: int) -> np.ndarray:
        _check_leads(n_leads)
        past.last(self.min_frames, "S-PROG")
        velocity = lucas_kanade_motion(past)
        from pysteps import nowcasts

        dbr = _filled_dbr(past, self.ar_order + 1, "S-PROG")
        with quiet_pysteps():
            out = nowcasts.get_method("sprog")(
                dbr, velocity, n_leads, precip_thr=DBR_THRESHOLD, n_cascade_levels=self.n_cascade_levels,
                ar_order=self.ar_order, decomp_method=self.decomp_method,
                bandpass_filter_method=self.bandpass_filter_method, probmatching_method=self.probmatching_method,
            )
        rate = from_dbr(np.asarray(out))
        if np.isnan(past.frames[-1]).any():  # sources beyond the domain are NaN already (pysteps' outval)
            rate[~source_inside_mask(past, n_leads, velocity)] = np.nan
        return rate


@dataclass(frozen=True)
class NetworkNowcast:
    """A trained meteovision nowcast checkpoint, run as ``meteovision predict`` runs it.

    The last N frames go through the predict stage's normalisation, tiling and output code
    (:func:`~meteovision.pipeline.inference.predict.infer_field`; NaN where the last frame is NaN). Leads
    beyond the M trained ones come from an advection head continuing its own motion; other heads
    refuse them. A head that takes the Lucas-Kanade motion as input (``lk_advection``) gets the very
    motion the LK baseline uses (computed once per analysis time). The data are taken as given: a
    checkpoint trained at another time step or grid spacing gets a warning, not a resampling.
    """

    model: InferenceModel
    tiling: TilingSettings
    name: str = "network"
    _warned: set[tuple[float, float]] = field(default_factory=set, init=False, compare=False, repr=False)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, *, device: str = "cpu", tile_size: int | None = None,
        overlap: int | None = None, batch_size: int = 4, precision: Precision = "auto",
    ) -> NetworkNowcast:
        """Load a nowcast checkpoint (weights_only) and prepare it with the predict stage's settings."""
        model = load_inference_model(checkpoint)
        require_kind(model, (TaskKind.NOWCAST,), "a network nowcast")
        variables = list(model.meta.input_variables)
        units = list(model.meta.channel_units)
        if len(variables) != 1 or not units or units[-1] != RAIN_UNITS:
            raise NowcastError(f"{model.path}: a network nowcast takes one rain-rate variable in {RAIN_UNITS}; "
                               f"this checkpoint takes {variables} in {sorted(set(units))}")
        settings = PredictSettings(output_dir=Path("."), device=device, tile_size=tile_size, overlap=overlap,
                                   batch_size=batch_size, precision=precision)
        return cls(model, prepare_model(model, settings))

    @property
    def min_frames(self) -> int:
        return self.model.meta.num_input_frames

    @property
    def trained_leads(self) -> int:
        return self.model.meta.num_lead_times

    @property
    def extends_leads(self) -> bool:
        """Whether leads past the trained ones can be made (an advection head continues its motion)."""
        return isinstance(self.model.net, AdvectionNowcast)

    def forecast(self, past: NowcastInput, n_leads: int) -> np.ndarray:
        _check_leads(n_leads)
        window = past.last(self.min_frames, f"{self.model.path.name} (network)")
        self._warn_spacing(past)
        m = self.trained_leads
        model = self.model
        advects = isinstance(model.net, AdvectionNowcast)
        if n_leads > m and not advects:
            head = model.meta.network.nowcast_head
            raise NowcastError(f"{model.path.name} was trained for {m} leads and its '{head}' head cannot "
                               f"extrapolate to {n_leads}; only an advection/lagrangian head can")
        k = self.leads_per_step(past)
        out = infer_field(model, window, self.tiling, nodata=np.isnan(window[-1]), motion=past.motion,
                          n_leads=n_leads * k if advects else None, leads_per_step=k)
        return np.ascontiguousarray(out[k - 1 :: k][:n_leads], dtype=np.float32)

    def leads_per_step(self, past: NowcastInput) -> int:
        """k when a network trained at native steps gets frames k of its lead steps apart, else 1."""
        meta = self.model.meta
        if not (meta.network.step_input and meta.time_step_minutes):
            return 1
        ratio = past.time_step_minutes / float(meta.time_step_minutes)
        k = round(ratio)
        if k < 1 or not math.isclose(ratio, k, rel_tol=1e-6):
            raise NowcastError(f"{self.model.path.name} makes leads every {meta.time_step_minutes:g} min; frames "
                               f"every {past.time_step_minutes:g} min are not a whole number of them")
        return k

    def _warn_spacing(self, past: NowcastInput) -> None:
        meta = self.model.meta
        step, spacing = meta.time_step_minutes, meta.grid_spacing_m
        if meta.network.step_input:  # takes any whole number of its steps (leads_per_step)
            step = None
        key = (past.time_step_minutes, past.pixel_size_m)
        if key in self._warned:
            return
        differs = [
            (label, float(trained), given, unit)
            for label, trained, given, unit in (("time step", step, past.time_step_minutes, "min"),
                                                ("grid spacing", spacing, past.pixel_size_m, "m"))
            if trained and not math.isclose(float(trained), given, rel_tol=1e-6)
        ]
        if differs:
            self._warned.add(key)
            log.warning("%s was trained at %s; the data are at %s: its motion is applied per step and pixel as "
                        "trained, without resampling", self.model.path.name,
                        " and ".join(f"{label} {t:g} {u}" for label, t, _, u in differs),
                        " and ".join(f"{label} {g:g} {u}" for label, _, g, u in differs))


# ---------------------------------------------------------------------------- registry


def build_method(name: str, *, checkpoint: Path | None = None, **settings: Any) -> NowcastMethod:
    """The method called ``name`` (``persistence``, ``lk``, ``sprog`` or ``network``).

    ``checkpoint`` is required for ``network``; ``settings`` are the method's own (S-PROG: its
    dataclass fields; network: ``device``, ``tile_size``, ``overlap``, ``batch_size``, ``precision``).
    """
    if name not in METHOD_NAMES:
        raise NowcastError(f"unknown nowcast method {name!r}; known: {', '.join(METHOD_NAMES)}")
    if name != "network" and checkpoint is not None:
        raise NowcastError(f"method {name!r} takes no checkpoint")
    if name == "network":
        if checkpoint is None:
            raise NowcastError("method 'network' needs a checkpoint")
        unknown = sorted(set(settings) - set(NETWORK_SETTINGS))
        if unknown:
            raise NowcastError(f"method 'network' has no setting(s) {unknown}; it takes {list(NETWORK_SETTINGS)}")
        return NetworkNowcast.from_checkpoint(checkpoint, **settings)
    if name in ("lk", "sprog"):
        _require_pysteps(f"method {name!r}")
    factories: dict[str, type[Persistence] | type[LucasKanadeNowcast] | type[SprogNowcast]] = {
        "persistence": Persistence, "lk": LucasKanadeNowcast, "sprog": SprogNowcast,
    }
    cls = factories[name]
    allowed = {f.name for f in dataclasses.fields(cls)} - {"name", "min_frames"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise NowcastError(f"method {name!r} has no setting(s) {unknown}; it takes {sorted(allowed) or 'none'}")
    return cls(**settings)
