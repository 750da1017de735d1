"""Torch datasets: reader frames -> normalised tensor samples (see "Torch samples" in docs/CONTRACTS.md).

A sample is a dict: ``inputs`` float32 [C, H, W], ``target`` (segmentation float32 [K, H, W] 0/1 or
int64 [H, W]; nowcast float32 [M, H, W]; regression float32 [K, H, W]; classification int64 []),
``mask`` bool like the target's spatial shape (True where the target and every input are
measured; absent for classification) and ``time`` float64 [] (seconds since 1970 of the last input).

Readers know nothing of torch; this module converts. Decoded frames are kept in a per-worker
LRU (:class:`FrameStore`), so an epoch of random patches reads each file about once.
Training patches are drawn from ``(seed, epoch, index)``: the same epoch gives the same patches
whatever the number of workers (the epoch comes from :class:`EpochSampler`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset, Sampler

from meteovision.datasets.catalog import FrameIndex, ImageRecords
from meteovision.datasets.errors import GridMismatchError, MeteovisionError, MissingVariableError
from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.splits import sequence_windows

LOG = logging.getLogger(__name__)

Reader = Callable[[Path], xr.Dataset]
Sample = dict[str, torch.Tensor]
SampleKey = int | tuple[int, int]

TARGET_KINDS: tuple[str, ...] = ("binary", "multiclass", "regression")
SNOW_CLASS_NAMES: tuple[str, ...] = ("none", "partial", "full")
VISIBILITY_BINS_M: tuple[float, ...] = (200.0, 1000.0, 5000.0)
VISIBILITY_CLASS_NAMES: tuple[str, ...] = ("<200 m", "200-1000 m", "1-5 km", ">5 km")


class SamplingError(MeteovisionError):
    """Patches or windows that cannot be drawn with the requested settings."""


def _default_reader(path: Path) -> xr.Dataset:
    """Any supported file; an all-nodata frame is data too (nothing valid, mask False), not an error."""
    from meteovision.datasets.readers import open_dataset

    return open_dataset(path, allow_empty=True)


def _seconds(t: np.datetime64) -> float:
    return float(np.asarray(t).astype("datetime64[ns]").astype(np.int64)) / 1e9


class FrameStore:
    """Decoded 2-D fields of a :class:`FrameIndex`, with an LRU of the last ``cache_frames`` files.

    Each DataLoader worker holds its own copy (the cache is not pickled).
    """

    def __init__(self, index: FrameIndex, cache_frames: int = 128, reader: Reader | None = None) -> None:
        self.index = index
        self.cache_frames = max(int(cache_frames), 1)
        self.reader: Reader = reader or _default_reader
        self._cache: OrderedDict[Path, dict[str, np.ndarray]] = OrderedDict()
        self._shape: tuple[int, int] | None = None
        self._units: dict[str, str] = {}
        self._spacing: float | None = None
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.index)

    @property
    def times(self) -> np.ndarray:
        return self.index.times

    def _fields(self, path: Path) -> dict[str, np.ndarray]:
        """2-D fields of a file by variable name, and by ODIM ``quantity`` attribute where that differs
        (a quality field named after its ``how/task`` is still found as ``QIND``)."""
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            self.hits += 1
            return cached
        self.misses += 1
        fields: dict[str, np.ndarray] = {}
        aliases: dict[str, str] = {}
        with self.reader(path) as ds:
            if self._spacing is None and "x" in ds.coords and ds.sizes.get("x", 0) > 1:
                self._spacing = float(abs(ds["x"].values[1] - ds["x"].values[0]))
            for name, var in ds.data_vars.items():
                if var.dims[-2:] != ("y", "x"):
                    continue
                arr = np.asarray(var.values)
                if arr.ndim == 3 and var.dims[0] == "time":
                    arr = arr[0]
                if arr.ndim != 2:
                    continue
                arr = np.ascontiguousarray(arr, dtype=np.float32)
                if self._shape is None:
                    self._shape = (int(arr.shape[0]), int(arr.shape[1]))
                elif arr.shape != self._shape:
                    raise GridMismatchError(f"{path}: grid {arr.shape} differs from the first frame's {self._shape}")
                fields[str(name)] = arr
                self._units.setdefault(str(name), str(var.attrs.get("units", "1")))
                quantity = var.attrs.get("quantity")
                if isinstance(quantity, str) and quantity and quantity != name:
                    aliases.setdefault(quantity, str(name))
        for quantity, name in aliases.items():
            if quantity not in fields:
                fields[quantity] = fields[name]
                self._units.setdefault(quantity, self._units[name])
        self._cache[path] = fields
        if len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return fields

    def grid_spacing(self) -> float | None:
        """Spacing of the x coordinate in metres (read from the first frame when not yet known)."""
        if self._spacing is None and len(self.index):
            self._fields(self.index.input_files[0][0])
        return self._spacing

    def _files(self, frame: int, source: str) -> tuple[Path, ...]:
        inputs = self.index.input_files[frame]
        targets = () if self.index.target_files is None else (self.index.target_files[frame],)
        return targets + inputs if source == "targets" else inputs + targets

    def field(self, frame: int, variable: str, source: str = "inputs") -> np.ndarray:
        """Whole 2-D field of ``variable`` at ``frame`` (``source='targets'``: the target file first)."""
        files = self._files(frame, source)
        for path in files:
            fields = self._fields(path)
            if variable in fields:
                return fields[variable]
        have = sorted({v for p in files for v in self._fields(p)})
        raise MissingVariableError(files[0], f"no 2-D variable {variable!r} at this time; files hold {have}")

    def read(
        self,
        frame: int,
        variables: Sequence[str],
        source: str = "inputs",
        window: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """float32 ``[C, h, w]`` of ``variables``; ``window = (y0, x0, h, w)`` crops before copying."""
        arrays = [self.field(frame, v, source) for v in variables]
        if window is not None:
            y0, x0, h, w = window
            arrays = [a[y0 : y0 + h, x0 : x0 + w] for a in arrays]
        return np.stack(arrays)

    def units(self, variables: Sequence[str], source: str = "inputs") -> list[str]:
        """Units attribute of each variable (read from the first frame)."""
        for v in variables:
            if v not in self._units:
                self.field(0, v, source)
        return [self._units[v] for v in variables]

    def grid_shape(self) -> tuple[int, int]:
        if self._shape is None:
            path = self.index.input_files[0][0]
            self._fields(path)
            if self._shape is None:
                raise MissingVariableError(path, "no 2-D (y, x) variable in the file")
        return self._shape


@dataclass(frozen=True)
class PatchSettings:
    """How gridded samples are cut.

    ``patch_size`` None: whole frames. Training draws ``patches_per_frame`` random patches per window
    and epoch; a share ``positive_patch_probability`` of them (spread evenly over the sample indices)
    must hold at least ``min_positive_fraction`` of positive target pixels (target >
    ``positive_threshold`` in physical units; at least one pixel). Validation/test use a fixed tiling
    of ``patch_size`` tiles, or whole frames with ``eval_whole_frames``.
    """

    patch_size: int | None = 64
    patches_per_frame: int = 1
    min_positive_fraction: float = 0.0
    positive_patch_probability: float = 0.0
    positive_threshold: float = 0.5
    eval_whole_frames: bool = False

    def __post_init__(self) -> None:
        if self.patch_size is not None and self.patch_size < 1:
            raise SamplingError(f"patch_size must be positive, got {self.patch_size}")
        if self.patches_per_frame < 1:
            raise SamplingError(f"patches_per_frame must be >= 1, got {self.patches_per_frame}")
        if not 0.0 <= self.min_positive_fraction <= 1.0:
            raise SamplingError(f"min_positive_fraction must lie in [0, 1], got {self.min_positive_fraction}")
        if not 0.0 <= self.positive_patch_probability <= 1.0:
            raise SamplingError(f"positive_patch_probability must lie in [0, 1], got {self.positive_patch_probability}")


@dataclass(frozen=True)
class AugmentSettings:
    """Training-only geometric augmentations (same transform on inputs, target and mask).

    Radar fields have no preferred orientation; satellite channels (sun angle, parallax) and
    webcam images do, so their configurations switch these off (webcams: horizontal flips only).
    """

    flips: bool = False
    rot90: bool = False


def patch_counts(mask: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Number of True pixels in every ``ph`` x ``pw`` patch, indexed by the patch's top-left origin."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    ii[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    return ii[ph:, pw:] - ii[:-ph, pw:] - ii[ph:, :-pw] + ii[:-ph, :-pw]


def tile_origins(size: int, patch: int) -> list[int]:
    """Origins of tiles covering ``size`` pixels; the last tile is aligned with the edge (overlaps)."""
    if patch > size:
        raise SamplingError(f"patch of {patch} pixels larger than the frame's {size}")
    origins = list(range(0, size - patch + 1, patch))
    if origins[-1] != size - patch:
        origins.append(size - patch)
    return origins


def _is_guided(idx: int, share: float) -> bool:
    """Deterministic quota: exactly floor(n * share) of the indices 0..n-1, evenly spread."""
    return math.floor((idx + 1) * share + 1e-9) > math.floor(idx * share + 1e-9)


def _augment(arrays: list[np.ndarray], k: int, flip_y: bool, flip_x: bool) -> list[np.ndarray]:
    out = []
    for arr in arrays:
        a = np.rot90(arr, k, axes=(-2, -1)) if k else arr
        if flip_y:
            a = a[..., ::-1, :]
        if flip_x:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` so random patches are reproducible per epoch in any worker.

    The order is shuffled from ``(seed, epoch)`` when ``shuffle``. Lightning calls
    :meth:`set_epoch` before each epoch; without it the epoch advances on each iteration.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.length)
            if self.shuffle
            else np.arange(self.length)
        )
        for i in order:
            yield epoch, int(i)


def _split_key(key: SampleKey) -> tuple[int, int]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)


def _as_windows(frames: np.ndarray) -> np.ndarray:
    """int64 ``[n_windows, frames_per_window]`` (a 1-D array is one frame per window)."""
    arr = np.asarray(frames, dtype=np.int64)
    return arr[:, None] if arr.ndim == 1 else arr


class GriddedDataset(Dataset[Sample]):
    """Windows of frames -> samples; the base of the segmentation, sequence and regression datasets.

    ``input_frames[w]`` / ``target_frames[w]`` are the frame indices of window ``w`` (inputs in time
    order; the last input is the reference time). Inputs are normalised with ``normalization``
    (one entry per input variable, repeated over the input frames).
    """

    def __init__(
        self,
        store: FrameStore,
        input_frames: np.ndarray,
        target_frames: np.ndarray,
        input_variables: Sequence[str],
        target_variables: Sequence[str],
        *,
        normalization: NormalizationStats,
        target_kind: str,
        target_normalization: NormalizationStats | None = None,
        target_source: str = "targets",
        train: bool = False,
        patch: PatchSettings | None = None,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> None:
        if target_kind not in TARGET_KINDS:
            raise SamplingError(f"unknown target kind {target_kind!r}; choose one of {TARGET_KINDS}")
        if list(normalization.channel_names) != list(input_variables):
            raise SamplingError(
                f"normalisation of {list(normalization.channel_names)} but inputs {list(input_variables)}"
            )
        if target_kind == "regression":
            if target_normalization is None:
                raise SamplingError("a regression target needs target_normalization")
            if list(target_normalization.channel_names) != list(target_variables):
                raise SamplingError(
                    f"target normalisation channels {list(target_normalization.channel_names)} "
                    f"differ from targets {list(target_variables)}"
                )
        self.store = store
        self.input_frames = _as_windows(input_frames)
        self.target_frames = _as_windows(target_frames)
        if self.input_frames.shape[0] != self.target_frames.shape[0]:
            raise SamplingError("input and target windows differ in number")
        self.input_variables = list(input_variables)
        self.target_variables = list(target_variables)
        self.normalization = normalization
        self.target_kind = target_kind
        self.target_normalization = target_normalization
        self.target_source = target_source
        self.train = train
        self.patch = patch or PatchSettings()
        self.augment = augment or AugmentSettings()
        self.seed = seed
        if target_kind == "multiclass" and self.target_frames.shape[1] * len(self.target_variables) != 1:
            raise SamplingError("a multiclass target is one variable at one time")
        self._tiles: list[tuple[int, int]] = []
        self._eligible = np.zeros(0, dtype=np.int64)
        self._is_eligible = np.zeros(self.num_windows, dtype=bool)
        self._need = 1
        self.grid_shape = (0, 0)
        if self.num_windows == 0:
            return
        height, width = store.grid_shape()
        self.grid_shape = (height, width)
        ps = self.patch.patch_size
        if ps is not None and (ps > height or ps > width):
            raise SamplingError(f"patch_size {ps} larger than the grid {height} x {width} of {store.index.data_dir}")
        if ps is not None and not train and not self.patch.eval_whole_frames:
            self._tiles = [(y, x) for y in tile_origins(height, ps) for x in tile_origins(width, ps)]
        if train and ps is not None and self.patch.positive_patch_probability > 0:
            self._need = max(1, math.ceil(self.patch.min_positive_fraction * ps * ps - 1e-9))
            ok = [w for w in range(self.num_windows) if patch_counts(self._positive_map(w), ps, ps).max() >= self._need]
            if not ok:
                raise SamplingError(
                    f"no {ps}x{ps} patch of the training windows holds {self._need} positive target pixel(s) "
                    f"(min_positive_fraction {self.patch.min_positive_fraction}, threshold "
                    f"{self.patch.positive_threshold}); lower them or set positive_patch_probability to 0"
                )
            self._eligible = np.array(ok, dtype=np.int64)
            self._is_eligible[self._eligible] = True

    # -- sizes and names ----------------------------------------------------------------------------------
    @property
    def num_windows(self) -> int:
        return int(self.input_frames.shape[0])

    def _per_window(self) -> int:
        if self.patch.patch_size is None:
            return 1
        if self.train:
            return self.patch.patches_per_frame
        return max(len(self._tiles), 1)

    def __len__(self) -> int:
        return self.num_windows * self._per_window()

    @property
    def eligible_windows(self) -> np.ndarray:
        """Training windows that can give a patch meeting the positive-fraction requirement."""
        return self._eligible

    def reference_time(self, window: int) -> np.datetime64:
        return self.store.times[self.input_frames[window, -1]]

    # -- sampling ------------------------------------------------------------------------------------------
    def _positive_map(self, window: int) -> np.ndarray:
        frames = self.target_frames[window]
        raw = np.concatenate([self.store.read(f, self.target_variables, self.target_source) for f in frames])
        with np.errstate(invalid="ignore"):
            return (np.isfinite(raw) & (raw > self.patch.positive_threshold)).any(axis=0)

    def locate(self, key: SampleKey) -> tuple[int, tuple[int, int, int, int], tuple[int, bool, bool]]:
        """Window, crop ``(y0, x0, h, w)`` and augmentation ``(rot90 k, flip_y, flip_x)`` of ``key``."""
        epoch, idx = _split_key(key)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range (0..{len(self) - 1})")
        height, width = self.grid_shape
        ps = self.patch.patch_size
        per = self._per_window()
        window = idx // per
        if not self.train:
            if ps is None or not self._tiles:
                return window, (0, 0, height, width), (0, False, False)
            y0, x0 = self._tiles[idx % per]
            return window, (y0, x0, ps, ps), (0, False, False)
        rng = np.random.default_rng([self.seed, epoch, idx])
        if ps is None:
            crop = (0, 0, height, width)
        elif self._eligible.size and _is_guided(idx, self.patch.positive_patch_probability):
            if not self._is_eligible[window]:
                window = int(self._eligible[rng.integers(self._eligible.size)])
            counts = patch_counts(self._positive_map(window), ps, ps)
            ys, xs = np.nonzero(counts >= self._need)
            pick = rng.integers(ys.size)
            crop = (int(ys[pick]), int(xs[pick]), ps, ps)
        else:
            crop = (int(rng.integers(height - ps + 1)), int(rng.integers(width - ps + 1)), ps, ps)
        square = crop[2] == crop[3]
        k = int(rng.integers(4)) if self.augment.rot90 and square else 0
        flip_y = bool(self.augment.flips and rng.random() < 0.5)
        flip_x = bool(self.augment.flips and rng.random() < 0.5)
        return window, crop, (k, flip_y, flip_x)

    def __getitem__(self, key: SampleKey) -> Sample:
        window, crop, (k, flip_y, flip_x) = self.locate(key)
        return self.sample(window, crop, k, flip_y, flip_x)

    def sample(
        self,
        window: int,
        crop: tuple[int, int, int, int],
        k: int = 0,
        flip_y: bool = False,
        flip_x: bool = False,
    ) -> Sample:
        """The sample of ``window`` cut at ``crop`` and augmented."""
        h, w = crop[2], crop[3]
        store, tvars = self.store, self.target_variables
        raw_in = np.stack([store.read(f, self.input_variables, "inputs", crop) for f in self.input_frames[window]])
        valid_in = np.isfinite(raw_in).all(axis=(0, 1))
        inputs = self.normalization.normalize(raw_in, channel_axis=1).reshape(-1, h, w)
        raw_t = np.concatenate([store.read(f, tvars, self.target_source, crop) for f in self.target_frames[window]])
        t_valid = np.isfinite(raw_t)
        mask = t_valid & valid_in[None]
        if self.target_kind == "binary":
            target = np.where(t_valid, raw_t > 0.5, False).astype(np.float32)
        elif self.target_kind == "multiclass":
            target = np.where(t_valid[0], raw_t[0], 0).astype(np.int64)
            mask = mask[0]
        else:
            assert self.target_normalization is not None
            target = self.target_normalization.normalize(raw_t, channel_axis=0)
        inputs, target, mask = _augment([inputs, target, mask], k, flip_y, flip_x)
        return {
            "inputs": torch.from_numpy(inputs),
            "target": torch.from_numpy(target),
            "mask": torch.from_numpy(mask),
            "time": torch.tensor(_seconds(self.reference_time(window)), dtype=torch.float64),
        }


class SegmentationDataset(GriddedDataset):
    """Image(s) at one time -> mask at the same time (bow_echo: RATE -> bow_echo_mask; radar_cleaning)."""

    def __init__(
        self,
        store: FrameStore,
        frames: Sequence[int] | np.ndarray,
        input_variables: Sequence[str],
        target_variables: Sequence[str],
        normalization: NormalizationStats,
        *,
        multiclass: bool = False,
        train: bool = False,
        patch: PatchSettings | None = None,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> None:
        idx = np.asarray(frames, dtype=np.int64).reshape(-1, 1)
        super().__init__(
            store,
            idx,
            idx,
            input_variables,
            target_variables,
            normalization=normalization,
            target_kind="multiclass" if multiclass else "binary",
            train=train,
            patch=patch,
            augment=augment,
            seed=seed,
        )

    @property
    def channel_names(self) -> list[str]:
        return list(self.input_variables)


class PixelRegressionDataset(GriddedDataset):
    """Channels -> a physical field, masked where the target is not measured (sat2precip)."""

    def __init__(
        self,
        store: FrameStore,
        frames: Sequence[int] | np.ndarray,
        input_variables: Sequence[str],
        target_variables: Sequence[str],
        normalization: NormalizationStats,
        *,
        target_normalization: NormalizationStats,
        train: bool = False,
        patch: PatchSettings | None = None,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> None:
        idx = np.asarray(frames, dtype=np.int64).reshape(-1, 1)
        super().__init__(
            store,
            idx,
            idx,
            input_variables,
            target_variables,
            normalization=normalization,
            target_kind="regression",
            target_normalization=target_normalization,
            train=train,
            patch=patch,
            augment=augment,
            seed=seed,
        )

    @property
    def channel_names(self) -> list[str]:
        return list(self.input_variables)


def lead_names(variables: Sequence[str], offsets: Sequence[int], step_minutes: float) -> list[str]:
    """Channel names of stacked time steps, frame-major: ``RATE_t-5min, RATE_t+0min``."""
    return [f"{v}_t{round(o * step_minutes):+d}min" for o in offsets for v in variables]


class SequenceDataset(GriddedDataset):
    """N past frames -> M future frames of the same variable(s) (nowcasting).

    Only windows of N + M frames exactly one nominal step apart, all inside ``frames`` (one split),
    are used: a missing file or a split boundary never sits inside a sequence.
    """

    def __init__(
        self,
        store: FrameStore,
        frames: Sequence[int] | np.ndarray,
        variables: Sequence[str],
        num_input_frames: int,
        num_output_frames: int,
        *,
        normalization: NormalizationStats,
        time_step: np.timedelta64 | None = None,
        train: bool = False,
        patch: PatchSettings | None = None,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> None:
        if num_input_frames < 1 or num_output_frames < 1:
            raise SamplingError(f"need >= 1 input and output frame, not {num_input_frames}, {num_output_frames}")
        step = time_step if time_step is not None else store.index.time_step
        if step is None:
            raise SamplingError(f"{store.index.data_dir}: no time step known (fewer than two frames)")
        self.time_step = np.timedelta64(step, "ns")
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames
        windows = sequence_windows(store.times, frames, num_input_frames + num_output_frames, self.time_step)
        super().__init__(
            store,
            windows[:, :num_input_frames],
            windows[:, num_input_frames:],
            variables,
            variables,
            normalization=normalization,
            target_kind="regression",
            target_normalization=normalization,
            target_source="inputs",
            train=train,
            patch=patch,
            augment=augment,
            seed=seed,
        )

    @property
    def step_minutes(self) -> float:
        return float(self.time_step / np.timedelta64(1, "m"))

    @property
    def channel_names(self) -> list[str]:
        offsets = range(-(self.num_input_frames - 1), 1)
        return lead_names(self.input_variables, offsets, self.step_minutes)

    @property
    def target_names(self) -> list[str]:
        return lead_names(self.target_variables, range(1, self.num_output_frames + 1), self.step_minutes)


def visibility_classes(visibility_m: np.ndarray, bins: Sequence[float] = VISIBILITY_BINS_M) -> np.ndarray:
    """Visibility (m) -> class index (0: below the first bin edge ...); -1 where unknown."""
    v = np.asarray(visibility_m, dtype=np.float64)
    out = np.digitize(v, np.asarray(bins, dtype=np.float64), right=False).astype(np.int64)
    out[~np.isfinite(v)] = -1
    return out


def class_indices(values: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Class names -> indices; -1 where empty or unknown."""
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup.get(v, -1) for v in values], dtype=np.int64)


def read_image(path: Path) -> np.ndarray:
    """uint8 [3, H, W] RGB of a webcam image, via the readers."""
    from meteovision.datasets.readers import open_dataset

    with open_dataset(path) as ds:
        for var in ds.data_vars.values():
            if var.dims[-3:] == ("band", "y", "x"):
                arr = np.asarray(var.values)
                return arr[0] if arr.ndim == 4 else arr
    raise MissingVariableError(path, "no (band, y, x) image variable")


def resize_image(raw: np.ndarray, size: int, path: Path | None = None) -> np.ndarray:
    """uint8 [3, H, W] -> uint8 [3, size, size] (bilinear, antialiased)."""
    if raw.ndim != 3 or raw.shape[0] != 3:
        raise MissingVariableError(path or Path("?"), f"expected an RGB image [3, H, W], not {raw.shape}")
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None]
    resized = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8).numpy()


class ImageStore:
    """Webcam images of :class:`ImageRecords`, resized to ``image_size`` squared (bilinear, antialiased)
    once and kept as uint8 in an LRU of ``cache_images`` (per worker; the cache is not pickled)."""

    def __init__(
        self,
        records: ImageRecords,
        image_size: int = 128,
        cache_images: int = 1024,
        image_reader: Callable[[Path], np.ndarray] | None = None,
    ) -> None:
        if image_size < 8:
            raise SamplingError(f"image_size must be >= 8, got {image_size}")
        self.records = records
        self.image_size = image_size
        self.cache_images = max(int(cache_images), 1)
        self.image_reader = image_reader or read_image
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def image(self, record: int) -> np.ndarray:
        """uint8 [3, S, S] image of record ``record``."""
        cached = self._cache.get(record)
        if cached is not None:
            self._cache.move_to_end(record)
            return cached
        path = self.records.paths[record]
        img = resize_image(np.asarray(self.image_reader(path)), self.image_size, path)
        self._cache[record] = img
        if len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return img


class ClassificationDataset(Dataset[Sample]):
    """Webcam image -> class index (snow class, visibility class); records without a label are left out.

    Training flips images left-right only (a scene has its sky on top).
    """

    def __init__(
        self,
        store: ImageStore,
        indices: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        normalization: NormalizationStats,
        *,
        train: bool = False,
        flips: bool = False,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.records = store.records
        idx = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(self.records),):
            raise SamplingError(f"{labels.shape[0]} labels for {len(self.records)} records")
        keep = labels[idx] >= 0
        if (~keep).any():
            LOG.warning("%s: %d image(s) without a usable label left out", self.records.csv_path, int((~keep).sum()))
        self.indices = idx[keep]
        self.labels = labels
        self.normalization = normalization
        self.train = train
        self.flips = flips
        self.seed = seed

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, key: SampleKey) -> Sample:
        epoch, idx = _split_key(key)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range (0..{len(self) - 1})")
        record = int(self.indices[idx])
        x = self.normalization.normalize(self.store.image(record).astype(np.float32), channel_axis=0)
        if self.train and self.flips and np.random.default_rng([self.seed, epoch, idx]).random() < 0.5:
            x = np.ascontiguousarray(x[..., ::-1])
        return {
            "inputs": torch.from_numpy(x),
            "target": torch.tensor(int(self.labels[record]), dtype=torch.int64),
            "time": torch.tensor(_seconds(self.records.times[record]), dtype=torch.float64),
        }
