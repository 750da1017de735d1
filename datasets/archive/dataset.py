"""Samples of archive sequences, with the batch structure of the synthetic nowcast data.

A sample is ``inputs`` float32 [N, P, P] (normalised), ``target`` float32 [M, P, P] (normalised),
``mask`` bool [M, P, P] (True where the target and every input are measured: outside radar coverage
is False, so it weighs nothing in the loss nor the metrics) and ``time`` float64 [] (seconds of the
last input). With ``motion=True`` the inputs are [N + 2, P, P]: the frames, then the Lucas-Kanade
motion of the whole frames (pixels per step / ``MOTION_INPUT_SCALE``), cut and turned like them.
With ``step_ratios`` (native steps) source s is k_s leads per frame: its N past frames are k_s leads
apart, the step channel (:func:`~meteovision.datasets.motion.step_channel`) sits between the frames and
the motion, the motion is per lead (Lucas-Kanade / k_s), and the target holds the M leads with the
frames at leads k_s, 2 k_s, ... (the others and any future frame outside the split: NaN, masked).
Sources of different sizes mix in one batch because every sample is a P x P patch:
random (seeded by ``(seed, epoch, index)``) for training, tiles covering the frame otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from meteovision.datasets.archive.events import MISSING
from meteovision.datasets.archive.series import SourceSeries
from meteovision.datasets.motion import MOTION_INPUT_SCALE, augment_motion, lucas_kanade, step_channel
from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.torch_datasets import Sample, SampleKey, SamplingError, tile_origins

#: Random crops tried for a training patch before taking the one with most coverage.
CROP_TRIES = 8


class ArchiveSequenceDataset(Dataset[Sample]):
    """``windows[i] = (source, frame indices of the N + M frames)`` -> patches of sequences."""

    def __init__(self, series: Sequence[SourceSeries], windows: list[tuple[int, np.ndarray]], num_input_frames: int,
                 *, normalization: NormalizationStats, patch_size: int, train: bool,
                 patches_per_window: int = 2, flips: bool = True, rot90: bool = True, seed: int = 0,
                 motion: bool = False, step_ratios: Sequence[int] | None = None, num_leads: int | None = None,
                 time_step_minutes: float = 5.0) -> None:
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
        self.step_ratios = None if step_ratios is None else list(step_ratios)
        if self.step_ratios is not None and (num_leads is None or len(self.step_ratios) != len(self.series)):
            raise SamplingError("native steps need num_leads and one step ratio per source")
        self.num_leads = num_leads
        self.time_step_minutes = time_step_minutes
        self._motion: dict[int, np.ndarray] = {}
        self._items: list[tuple[int, int, int]] = []
        if not train:
            for w, (src, _) in enumerate(windows):
                h, wd = self.series[src].values.shape[1:]
                self._items += [(w, y, x) for y in tile_origins(h, patch_size) for x in tile_origins(wd, patch_size)]

    def __len__(self) -> int:
        return len(self.windows) * self.patches_per_window if self.train else len(self._items)

    def _cut(self, window: int, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
        """The N input frames and the M target leads of a patch (NaN: not observed), and the target mask."""
        s, frames = self.windows[window]
        p = self.patch_size
        n = self.num_input_frames
        if self.step_ratios is None:
            raw = self.series[s].values[frames, y0 : y0 + p, x0 : x0 + p]
        else:
            k, present = self.step_ratios[s], frames != MISSING
            cut = self.series[s].values[frames[present], y0 : y0 + p, x0 : x0 + p]
            raw = np.full((n + int(self.num_leads or 0), p, p), np.nan, dtype=np.float32)
            rows = np.concatenate([np.arange(n), n - 1 + k * np.arange(1, frames.size - n + 1)])
            raw[rows[present]] = cut
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
            motion = lucas_kanade(past, f"motion of {self.series[s].name}")
            k = 1 if self.step_ratios is None else self.step_ratios[s]
            self._motion[window] = (motion / k).astype(np.float32)  # pixels per lead
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
        s, frames = self.windows[window]
        if self.step_ratios is not None:
            step = self.step_ratios[s] * self.time_step_minutes
            inputs = np.concatenate([inputs, step_channel(step, inputs.shape[-2:])])
        if self.motion:
            p = self.patch_size
            cut = self.window_motion(window)[:, y0 : y0 + p, x0 : x0 + p]
            inputs = np.concatenate([inputs, augment_motion(cut, k, fy, fx) / MOTION_INPUT_SCALE])
        t = self.series[s].times[frames[self.num_input_frames - 1]]
        return {
            "inputs": torch.from_numpy(inputs.astype(np.float32)),
            "target": torch.from_numpy(target.astype(np.float32)),
            "mask": torch.from_numpy(m),
            "time": torch.tensor(float(t.astype(np.int64)) / 1e9, dtype=torch.float64),
        }
