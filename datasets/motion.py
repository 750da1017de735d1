"""Lucas-Kanade motion of rain-rate frames, the one estimate shared by training, inference and the baselines.

pysteps' dense Lucas-Kanade on dBR frames (pysteps' own protocol: 0.1 mm h-1 threshold, -15 dBR
below it, gaps filled with that zero value). It lives with the data because a nowcast network
can take it as an input: the training samples, ``meteovision predict`` and the LK baseline of
``meteovision evaluate`` must compute the very same field. pysteps is an optional extra
(``meteovision[baselines]``) imported only here and only when motion is asked for.

Motion is ``(2, H, W)`` in pixels per time step: ``[0]`` along columns (x, eastward on a north-up
grid), ``[1]`` along rows (y, downward).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator

import numpy as np

from meteovision.core.errors import MeteovisionError
from meteovision.datasets import normalization

log = logging.getLogger(__name__)

#: pysteps' protocol, also the networks' ``log10_rain``: below 0.1 mm h-1 (-10 dBR) is no rain, set to -15 dBR.
RAIN_THRESHOLD_MM_H = normalization.DBR_THRESHOLD
DBR_THRESHOLD = 10.0 * math.log10(RAIN_THRESHOLD_MM_H)
DBR_ZEROVALUE = normalization.DBR_ZERO_VALUE
#: Lucas-Kanade motion from the last three frames, as in pysteps' examples.
MOTION_FRAMES = 3
#: Motion given to a network as input is divided by this (pixels per step), to be of order one.
MOTION_INPUT_SCALE = 10.0
#: A network trained at native steps (``native_steps``) gets its input frames' step, in minutes divided by
#: this, as one constant channel between the frames and the motion.
STEP_INPUT_SCALE_MINUTES = 10.0
BASELINES_EXTRA = "pip install meteovision[baselines]"


class MotionDependencyError(MeteovisionError):
    """pysteps or OpenCV, which the Lucas-Kanade motion needs, is not installed."""


@contextlib.contextmanager
def quiet_pysteps() -> Iterator[None]:
    """pysteps prints its configuration on import and S-PROG its progress on stdout: keep stdout for results."""
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        yield
    if captured.getvalue().strip():
        log.debug("pysteps said: %s", captured.getvalue().strip())


def pysteps_missing(what: str) -> str | None:
    """None when pysteps imports, else the sentence that says which extra installs it."""
    try:
        with quiet_pysteps():
            import pysteps  # noqa: F401
    except ImportError:
        return f"{what} needs pysteps, which is not installed: {BASELINES_EXTRA}"
    return None


def to_dbr(rate: np.ndarray) -> np.ndarray:
    """mm h-1 -> dBR with pysteps' threshold and zero value; NaN stays NaN."""
    from pysteps.utils.transformation import dB_transform

    dbr, _ = dB_transform(rate.astype(np.float64), threshold=RAIN_THRESHOLD_MM_H, zerovalue=DBR_ZEROVALUE)
    return np.asarray(dbr)


def from_dbr(dbr: np.ndarray) -> np.ndarray:
    """dBR -> mm h-1; below the 0.1 mm h-1 threshold is 0, NaN stays NaN."""
    from pysteps.utils.transformation import dB_transform

    rate, _ = dB_transform(dbr, threshold=DBR_THRESHOLD, inverse=True)
    return np.asarray(rate, dtype=np.float32)


def filled_dbr(frames: np.ndarray) -> np.ndarray:
    """Frames in dBR with gaps set to the zero value (pysteps' methods need finite inputs)."""
    dbr = to_dbr(np.asarray(frames))
    dbr[~np.isfinite(dbr)] = DBR_ZEROVALUE
    return dbr


def lucas_kanade(frames: np.ndarray, what: str = "Lucas-Kanade motion") -> np.ndarray:
    """``(2, H, W)`` float64 motion in pixels per step of the last :data:`MOTION_FRAMES` of ``(T, H, W)`` mm h-1."""
    missing = pysteps_missing(what)
    if missing:
        raise MotionDependencyError(missing)
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < MOTION_FRAMES:
        raise ValueError(f"{what} needs (T >= {MOTION_FRAMES}, H, W) frames, got shape {frames.shape}")
    from pysteps import motion
    from pysteps.exceptions import MissingOptionalDependency

    dbr = filled_dbr(frames[-MOTION_FRAMES:])
    try:
        with quiet_pysteps():
            velocity = motion.get_method("LK")(dbr, dense=True)
    except MissingOptionalDependency as err:
        raise MotionDependencyError(f"{what}: {err} ({BASELINES_EXTRA} installs pysteps and OpenCV)") from err
    return np.asarray(velocity, dtype=np.float64)


def augment_motion(motion: np.ndarray, k: int, flip_y: bool, flip_x: bool) -> np.ndarray:
    """The motion of frames turned by ``np.rot90(., k, axes=(-2, -1))``, then flipped along y, then x.

    The field is moved like the frames and its vectors turned with them: one quarter turn
    (counter-clockwise as displayed, rows downward) takes (u, v) to (v, -u); a flip negates the
    component along its axis.
    """
    field = np.rot90(motion, k, axes=(-2, -1))
    u, v = field[0], field[1]
    for _ in range(k % 4):
        u, v = v, -u
    if flip_y:
        u, v = u[::-1, :], -v[::-1, :]
    if flip_x:
        u, v = -u[:, ::-1], v[:, ::-1]
    return np.ascontiguousarray(np.stack((u, v)))


def step_channel(step_minutes: float, shape: tuple[int, int]) -> np.ndarray:
    """float32 ``(1, H, W)``: the input frames' time step as a network input (see :data:`STEP_INPUT_SCALE_MINUTES`)."""
    return np.full((1, *shape), step_minutes / STEP_INPUT_SCALE_MINUTES, dtype=np.float32)
