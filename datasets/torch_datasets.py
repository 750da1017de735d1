"""Torch datasets: reader frames -> normalised tensor samples (see "Torch samples" in docs/CONTRACTS.md).

A sample is a dict: ``inputs`` float32 [C, H, W], ``target`` (segmentation float32 [K, H, W] 0/1 or
int64 [H, W]; nowcast float32 [M, H, W]; regression float32 [K, H, W]; classification int64 []),
``mask`` bool like the target's spatial shape (True where the target and every input are
measured; absent for classification) and ``time`` float64 [] (seconds since 1970 of the last input).

This module cuts gridded frames (:mod:`~meteovision.datasets.frame_store`) into patches and
windows; webcam images live in :mod:`~meteovision.datasets.image_datasets`, the sample type and
epoch-keyed sampling in :mod:`~meteovision.datasets.sampling` (all re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from meteovision.datasets.frame_store import FrameStore, Reader
from meteovision.datasets.image_datasets import (
    ClassificationDataset,
    ImageStore,
    class_indices,
    read_image,
    resize_image,
    visibility_classes,
)
from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.sampling import (
    EpochSampler,
    Sample,
    SampleKey,
    SamplingError,
    seconds_since_epoch,
    split_key,
)
from meteovision.datasets.splits import sequence_windows

LOG = logging.getLogger(__name__)


TARGET_KINDS: tuple[str, ...] = ("binary", "multiclass", "regression")


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
        epoch, idx = split_key(key)
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
            "time": torch.tensor(seconds_since_epoch(self.reference_time(window)), dtype=torch.float64),
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


__all__ = [
    "TARGET_KINDS",
    "AugmentSettings",
    "ClassificationDataset",
    "EpochSampler",
    "FrameStore",
    "GriddedDataset",
    "ImageStore",
    "PatchSettings",
    "PixelRegressionDataset",
    "Reader",
    "Sample",
    "SampleKey",
    "SamplingError",
    "SegmentationDataset",
    "SequenceDataset",
    "class_indices",
    "lead_names",
    "read_image",
    "resize_image",
    "visibility_classes",
]
