"""Samples of archive sequences, with the batch structure of the synthetic nowcast data.

A sample is ``inputs`` float32 [N, P, P] (normalised), ``target`` float32 [M, P, P] (normalised),
``mask`` bool [M, P, P] (True where the target and every input are measured: outside radar coverage
is False, so it weighs nothing in the loss nor the metrics) and ``time`` float64 [] (seconds of the
last input). With ``motion=True`` the inputs are [N + 2, P, P]: the frames, then the Lucas-Kanade
motion of the whole frames (pixels per step / ``MOTION_INPUT_SCALE``), cut and turned like them.
Sources of different sizes mix in one batch because every sample is a P x P patch:
random (seeded by ``(seed, epoch, index)``) for training, tiles covering the frame otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from meteovision.datasets.archive.series import SourceSeries
from meteovision.datasets.motion import MOTION_INPUT_SCALE, augment_motion, lucas_kanade
from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.torch_datasets import Sample, SampleKey, SamplingError, tile_origins

#: Random crops tried for a training patch before taking the one with most coverage.
CROP_TRIES = 8


class ArchiveSequenceDataset(Dataset[Sample]):
    """``windows[i] = (source, frame indices of the N + M frames)`` -> patches of sequences."""

    def __init__(self, series: Sequence[SourceSeries], windows: list[tuple[int, np.ndarray]], num_input_frames: int,
                 *, normalization: NormalizationStats, patch_size: int, train: bool,
                 patches_per_window: int = 2, flips: bool = True, rot90: bool = True, seed: int = 0,
                 motion: bool = False) -> None:
        for one in series:
            if patch_size > min(one.values.shape[1:]):
                raise SamplingError(f"patch_size {patch_size} larger than the {one.values.shape[1:]} grid of "
                                    f"{one.name}")
        self.series = list(series)
        self.windows = windows
        self.num_input_frames = num_input_frames
        self.normalization = normalization
        self.patch_size = patch_size
        self.train = train
        self.patches_per_window = patches_per_window
        self.flips, self.rot90, self.seed = flips, rot90, seed
        self.motion = motion
        self._motion: dict[int, np.ndarray] = {}
        self._items: list[tuple[int, int, int]] = []
        if not train:
            for w, (src, _) in enumerate(windows):
                h, wd = self.series[src].values.shape[1:]
                self._items += [(w, y, x) for y in tile_origins(h, patch_size) for x in tile_origins(wd, patch_size)]

    def __len__(self) -> int:
        return len(self.windows) * self.patches_per_window if self.train else len(self._items)

    def _cut(self, window: int, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
        s, frames = self.windows[window]
        p = self.patch_size
        raw = self.series[s].values[frames, y0 : y0 + p, x0 : x0 + p]
        n = self.num_input_frames
        valid_in = np.isfinite(raw[:n]).all(axis=0)
        mask = np.isfinite(raw[n:]) & valid_in[None]
        return raw, mask

    def window_motion(self, window: int) -> np.ndarray:
        """Lucas-Kanade motion of a window's input frames over the whole grid, computed once per window.

        On the whole frame, not the patch, so that a patch edge does not bias it; as ``predict`` computes it.
        """
        if window not in self._motion:
            s, frames = self.windows[window]
            past = self.series[s].values[frames[: self.num_input_frames]]
            self._motion[window] = lucas_kanade(past, f"motion of {self.series[s].name}").astype(np.float32)
        return self._motion[window]

    def locate(self, key: SampleKey) -> tuple[int, int, int, int, bool, bool]:
        """Window, patch origin and augmentation (rot90 k, flip y, flip x) of ``key``."""
        epoch, idx = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (0, int(key))
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range (0..{len(self) - 1})")
        if not self.train:
            w, y, x = self._items[idx]
            return w, y, x, 0, False, False
        window = idx // self.patches_per_window
        h, wd = self.series[self.windows[window][0]].values.shape[1:]
        rng = np.random.default_rng([self.seed, epoch, idx])
        best, best_cover = (0, 0), -1.0
        for _ in range(CROP_TRIES):
            y0, x0 = int(rng.integers(h - self.patch_size + 1)), int(rng.integers(wd - self.patch_size + 1))
            cover = float(self._cut(window, y0, x0)[1].mean())
            if cover > best_cover:
                best, best_cover = (y0, x0), cover
            if cover >= 0.5:
                break
        k = int(rng.integers(4)) if self.rot90 else 0
        flip_y = bool(self.flips and rng.random() < 0.5)
        flip_x = bool(self.flips and rng.random() < 0.5)
        return window, best[0], best[1], k, flip_y, flip_x

    def __getitem__(self, key: SampleKey) -> Sample:
        window, y0, x0, k, fy, fx = self.locate(key)
        raw, mask = self._cut(window, y0, x0)
        z = self.normalization.normalize(raw[:, None], channel_axis=1)[:, 0]
        arrays = [z[: self.num_input_frames], z[self.num_input_frames :], mask]
        arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
        if fy:
            arrays = [a[..., ::-1, :] for a in arrays]
        if fx:
            arrays = [a[..., ::-1] for a in arrays]
        inputs, target, m = (np.ascontiguousarray(a) for a in arrays)
        if self.motion:
            p = self.patch_size
            cut = self.window_motion(window)[:, y0 : y0 + p, x0 : x0 + p]
            inputs = np.concatenate([inputs, augment_motion(cut, k, fy, fx) / MOTION_INPUT_SCALE])
        s, frames = self.windows[window]
        t = self.series[s].times[frames[self.num_input_frames - 1]]
        return {
            "inputs": torch.from_numpy(inputs.astype(np.float32)),
            "target": torch.from_numpy(target.astype(np.float32)),
            "mask": torch.from_numpy(m),
            "time": torch.tensor(float(t.astype(np.int64)) / 1e9, dtype=torch.float64),
        }
