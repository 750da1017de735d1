"""Per-channel normalisation: a value transform (log, dB, clip) followed by standardisation.

The statistics are fitted on the training split only (see :func:`compute_stats`) and
travel with the checkpoint (``to_dict``/``from_dict``), so inference normalises exactly
as training did. Transforms, chosen per channel:

* ``none``: the physical value.
* ``log1p``: ``log(1 + max(x, 0))``; inverse ``max(expm1(z), 0)``. For rain rates and amounts.
* ``log10_rain``: pysteps-like dBR, ``10 log10(R)`` for ``R >= 0.1 mm h-1`` and the
  "zero value" ``10 log10(0.1) - 5 = -15 dBR`` below (as ``pysteps.utils.dB_transform``);
  the inverse maps values below ``-10 dBR`` back to 0.
* ``clip_dbz``: reflectivity clipped to ``[-10, 70] dBZ`` (undetect, -32 dBZ, becomes -10);
  the inverse is the identity, so it is lossless only inside the range.

After standardisation NaN (nodata) becomes ``fill_value`` (0: the training mean); the
caller records validity separately (the sample ``mask``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from meteovision.datasets.errors import MeteovisionError

TRANSFORMS: tuple[str, ...] = ("none", "log1p", "log10_rain", "clip_dbz")
#: dBR transform: rain rates below the threshold (mm h-1) get the zero value (dBR).
DBR_THRESHOLD = 0.1
DBR_ZERO_VALUE = 10.0 * math.log10(DBR_THRESHOLD) - 5.0
#: clip_dbz bounds (dBZ).
DBZ_CLIP = (-10.0, 70.0)
STATS_VERSION = 1

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class NormalizationError(MeteovisionError):
    """Statistics that cannot be used: wrong channels, bad numbers, unreadable file."""


def _check_transform(name: str) -> None:
    if name not in TRANSFORMS:
        raise NormalizationError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")


def apply_transform(x: ArrayT, name: str) -> ArrayT:
    """Physical values -> transformed space (NaN stays NaN)."""
    _check_transform(name)
    if name == "none":
        return x
    if isinstance(x, torch.Tensor):
        xt = x.float() if not torch.is_floating_point(x) else x
        if name == "log1p":
            return torch.log1p(torch.clamp(xt, min=0.0))
        if name == "log10_rain":
            dbr = 10.0 * torch.log10(torch.clamp(xt, min=DBR_THRESHOLD))
            return torch.where(xt >= DBR_THRESHOLD, dbr, torch.where(torch.isnan(xt), xt, DBR_ZERO_VALUE))
        return torch.clamp(xt, min=DBZ_CLIP[0], max=DBZ_CLIP[1])
    xa = np.asarray(x)
    xa = xa if np.issubdtype(xa.dtype, np.floating) else xa.astype(np.float32)
    with np.errstate(invalid="ignore"):
        if name == "log1p":
            return np.log1p(np.maximum(xa, 0.0))
        if name == "log10_rain":
            dbr = 10.0 * np.log10(np.maximum(xa, DBR_THRESHOLD))
            out = np.where(xa >= DBR_THRESHOLD, dbr, DBR_ZERO_VALUE)
            return np.where(np.isnan(xa), np.nan, out).astype(xa.dtype, copy=False)
        return np.clip(xa, DBZ_CLIP[0], DBZ_CLIP[1])


def invert_transform(z: ArrayT, name: str) -> ArrayT:
    """Transformed space -> physical values."""
    _check_transform(name)
    if name in ("none", "clip_dbz"):
        return z
    if isinstance(z, torch.Tensor):
        if name == "log1p":
            return torch.clamp(torch.expm1(z), min=0.0)
        rain = torch.pow(10.0, z / 10.0)
        return torch.where(z < 10.0 * math.log10(DBR_THRESHOLD), torch.zeros_like(z), rain)
    za = np.asarray(z)
    if name == "log1p":
        return np.maximum(np.expm1(za), 0.0)
    with np.errstate(invalid="ignore"):
        rain = np.power(10.0, za / 10.0)
        out = np.where(za < 10.0 * math.log10(DBR_THRESHOLD), 0.0, rain)
    return np.where(np.isnan(za), np.nan, out).astype(za.dtype, copy=False)


@dataclass(frozen=True)
class NormalizationStats:
    """Per-channel transform + mean/std (in transformed space), fitted on the training split."""

    channel_names: tuple[str, ...]
    channel_units: tuple[str, ...]
    transforms: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fill_value: float = 0.0
    counts: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        n = len(self.channel_names)
        for label, seq in (
            ("channel_units", self.channel_units),
            ("transforms", self.transforms),
            ("mean", self.mean),
            ("std", self.std),
        ):
            if len(seq) != n:
                raise NormalizationError(f"{label} has {len(seq)} entries for {n} channels {self.channel_names}")
        for name in self.transforms:
            _check_transform(name)
        for c, (m, s) in enumerate(zip(self.mean, self.std, strict=True)):
            if not (math.isfinite(m) and math.isfinite(s) and s > 0):
                raise NormalizationError(f"channel {self.channel_names[c]!r}: mean {m} / std {s} not usable")

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def select(self, names: Sequence[str]) -> NormalizationStats:
        """Statistics of a subset of the channels, in the order given."""
        missing = [n for n in names if n not in self.channel_names]
        if missing:
            raise NormalizationError(f"no statistics for {missing}; have {list(self.channel_names)}")
        idx = [self.channel_names.index(n) for n in names]
        return NormalizationStats(
            channel_names=tuple(self.channel_names[i] for i in idx),
            channel_units=tuple(self.channel_units[i] for i in idx),
            transforms=tuple(self.transforms[i] for i in idx),
            mean=tuple(self.mean[i] for i in idx),
            std=tuple(self.std[i] for i in idx),
            fill_value=self.fill_value,
            counts=tuple(self.counts[i] for i in idx) if self.counts else (),
        )

    def union(self, *others: NormalizationStats) -> NormalizationStats:
        """These channels followed by the channels of ``others`` not already here (first statistics win).

        Joins a checkpoint's input and target statistics into one file without editing the dict layout.
        Per-channel counts are dropped when channels are added: they no longer describe one fit.
        """
        names, units, transforms = list(self.channel_names), list(self.channel_units), list(self.transforms)
        mean, std = list(self.mean), list(self.std)
        for other in others:
            for i, name in enumerate(other.channel_names):
                if name in names:
                    continue
                names.append(name)
                units.append(other.channel_units[i])
                transforms.append(other.transforms[i])
                mean.append(other.mean[i])
                std.append(other.std[i])
        added = len(names) != self.num_channels
        return NormalizationStats(
            channel_names=tuple(names), channel_units=tuple(units), transforms=tuple(transforms), mean=tuple(mean),
            std=tuple(std), fill_value=self.fill_value, counts=() if added else self.counts,
        )

    # -- applying --------------------------------------------------------------------------------------------
    def _repeats(self, size: int) -> int:
        """How many times the channels repeat along the channel axis (frame-major stacks of time steps)."""
        n = self.num_channels
        if size % n:
            raise NormalizationError(
                f"channel axis of length {size}: not a multiple of {n} channels {list(self.channel_names)}"
            )
        return size // n

    def _per_channel(self, x: ArrayT, channel_axis: int, fn_name: str) -> ArrayT:
        axis = channel_axis % x.ndim
        reps = self._repeats(x.shape[axis])
        parts = []
        for k in range(reps * self.num_channels):
            c = k % self.num_channels
            sl = x.narrow(axis, k, 1) if isinstance(x, torch.Tensor) else np.take(x, [k], axis=axis)
            if fn_name == "normalize":
                z = (apply_transform(sl, self.transforms[c]) - self.mean[c]) / self.std[c]
                if isinstance(z, torch.Tensor):
                    z = torch.nan_to_num(z, nan=self.fill_value, posinf=self.fill_value, neginf=self.fill_value)
                else:
                    z = np.where(np.isfinite(z), z, self.fill_value)
            else:
                z = invert_transform(sl * self.std[c] + self.mean[c], self.transforms[c])
            parts.append(z)
        if isinstance(x, torch.Tensor):
            return torch.cat(parts, dim=axis).to(torch.float32)
        return np.concatenate(parts, axis=axis).astype(np.float32, copy=False)

    def normalize(self, x: ArrayT, channel_axis: int = 0) -> ArrayT:
        """Physical values -> standardised float32; NaN becomes ``fill_value``.

        The channel axis may hold a multiple of the channels (N time steps stacked frame-major,
        ``[t0c0, t0c1, t1c0, ...]``): the statistics repeat.
        """
        return self._per_channel(x, channel_axis, "normalize")

    def denormalize(self, z: ArrayT, channel_axis: int = 0) -> ArrayT:
        """Standardised values -> physical values (inverse of :meth:`normalize` for valid pixels)."""
        return self._per_channel(z, channel_axis, "denormalize")

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATS_VERSION,
            "channel_names": list(self.channel_names),
            "channel_units": list(self.channel_units),
            "transforms": list(self.transforms),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "fill_value": float(self.fill_value),
            "counts": [int(v) for v in self.counts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationStats:
        if not isinstance(data, dict):
            raise NormalizationError(f"normalisation statistics must be a mapping, got {type(data).__name__}")
        version = data.get("version", STATS_VERSION)
        if version != STATS_VERSION:
            raise NormalizationError(f"normalisation statistics version {version}; this code reads {STATS_VERSION}")
        missing = [k for k in ("channel_names", "channel_units", "transforms", "mean", "std") if k not in data]
        if missing:
            raise NormalizationError(f"normalisation statistics lack {missing}")
        try:
            return cls(
                channel_names=tuple(str(v) for v in data["channel_names"]),
                channel_units=tuple(str(v) for v in data["channel_units"]),
                transforms=tuple(str(v) for v in data["transforms"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                fill_value=float(data.get("fill_value", 0.0)),
                counts=tuple(int(v) for v in data.get("counts", ())),
            )
        except (TypeError, ValueError) as exc:
            raise NormalizationError(f"normalisation statistics malformed: {exc}") from exc

    def save_json(self, path: str | Path) -> Path:
        """Write atomically (temporary file + rename) so a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> NormalizationStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NormalizationError(f"{path}: normalisation file not found") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise NormalizationError(f"{path}: cannot read normalisation statistics: {exc}") from exc
        try:
            return cls.from_dict(data)
        except NormalizationError as exc:
            raise NormalizationError(f"{path}: {exc}") from exc


def transformed_moments(values: np.ndarray, transform: str) -> tuple[int, float, float]:
    """(count, mean, M2) of the finite values of ``values`` after ``transform``, in float64.

    The one per-batch step of :class:`StatsAccumulator`; the training store keeps it per frame.
    """
    v = apply_transform(values.astype(np.float64, copy=False), transform).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0, 0.0, 0.0
    mean = float(v.mean())
    return int(v.size), mean, float(((v - mean) ** 2).sum())


class StatsAccumulator:
    """Streaming per-channel mean/variance in float64 (Chan et al. pairwise update), NaN ignored."""

    def __init__(self, channel_names: Sequence[str], transforms: Sequence[str]) -> None:
        if len(channel_names) != len(transforms):
            raise NormalizationError(f"{len(transforms)} transforms for {len(channel_names)} channels")
        for name in transforms:
            _check_transform(name)
        self.channel_names = tuple(channel_names)
        self.transforms = tuple(transforms)
        n = len(channel_names)
        self.count = np.zeros(n, dtype=np.int64)
        self.mean = np.zeros(n, dtype=np.float64)
        self.m2 = np.zeros(n, dtype=np.float64)

    def update(self, frame: np.ndarray, channel_axis: int = 0) -> None:
        """Add one array holding every channel along ``channel_axis`` (physical values)."""
        arr = np.moveaxis(np.asarray(frame), channel_axis, 0)
        if arr.shape[0] != len(self.channel_names):
            raise NormalizationError(f"frame has {arr.shape[0]} channels, expected {list(self.channel_names)}")
        for c, name in enumerate(self.transforms):
            self.merge(c, *transformed_moments(arr[c], name))

    def merge(self, c: int, count: int, mean: float, m2: float) -> None:
        """Merge the (count, mean, M2) of more values of channel ``c`` (Chan et al.'s pairwise update)."""
        if count == 0:
            return
        na = int(self.count[c])
        delta = mean - self.mean[c]
        total = na + count
        self.mean[c] += delta * count / total
        self.m2[c] += m2 + delta * delta * na * count / total
        self.count[c] = total

    def finish(self, channel_units: Sequence[str], fill_value: float = 0.0) -> NormalizationStats:
        empty = [self.channel_names[c] for c in range(len(self.count)) if self.count[c] == 0]
        if empty:
            raise NormalizationError(f"no valid value in the training data for channel(s) {empty}")
        std = np.sqrt(self.m2 / self.count)
        # A constant channel (e.g. an all-zero quality index) keeps std 1 rather than dividing by zero.
        std = np.where(std > 1e-12, std, 1.0)
        return NormalizationStats(
            channel_names=self.channel_names,
            channel_units=tuple(channel_units),
            transforms=self.transforms,
            mean=tuple(float(v) for v in self.mean),
            std=tuple(float(v) for v in std),
            fill_value=fill_value,
            counts=tuple(int(v) for v in self.count),
        )


def compute_stats(
    frames: Iterable[np.ndarray],
    channel_names: Sequence[str],
    channel_units: Sequence[str],
    transforms: Sequence[str] | None = None,
    *,
    channel_axis: int = 0,
    fill_value: float = 0.0,
) -> NormalizationStats:
    """Fit statistics by streaming over ``frames`` (give it the TRAINING frames only).

    Each element holds all channels along ``channel_axis``; NaN values are ignored.
    """
    acc = StatsAccumulator(channel_names, transforms or ["none"] * len(channel_names))
    for frame in frames:
        acc.update(frame, channel_axis=channel_axis)
    return acc.finish(channel_units, fill_value=fill_value)
