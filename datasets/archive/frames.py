"""A store group's frames as a lazy (T, H, W) array: only the chunks a patch touches are decoded.

Training draws small patches from a few frames, so reading every frame at setup (as raw files must)
wastes most of the work. :class:`StoredFrames` indexes like the in-memory array it replaces
(``values[frames, y0:y1, x0:x1]``, ``values[t]``, ``np.asarray(values)``) and decodes a chunk the
first time a selection needs it, into a per-frame buffer kept for the next patches. At most
``cache_frames`` frame buffers are held (least recently used dropped), so memory stays bounded
whatever the archive's length. Pickling (DataLoader workers) drops the open array and the buffers:
each process reopens the group itself.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from meteovision.datasets.archive.sources import ArchiveError

LOG = logging.getLogger(__name__)


class _Buffer:
    """One frame's decoded chunks (cells of chunks not yet read are undefined)."""

    def __init__(self, shape: tuple[int, int], grid: tuple[int, int]) -> None:
        self.values = np.empty(shape, dtype=np.float32)  # pages are committed only where chunks land
        self.loaded = np.zeros(grid, dtype=bool)


class StoredFrames:
    """Frames ``positions`` (time order) of the ``frames`` array of the store group at ``path``."""

    def __init__(self, path: Path, positions: np.ndarray, shape: tuple[int, int], chunks: tuple[int, int],
                 *, cache_frames: int = 256) -> None:
        self.path = path
        self.positions = np.asarray(positions, dtype=np.int64)
        self.frame_shape = (int(shape[0]), int(shape[1]))
        self.chunks = (int(chunks[0]), int(chunks[1]))
        self.cache_frames = max(int(cache_frames), 1)
        self._array: zarr.Array | None = None
        self._buffers: OrderedDict[int, _Buffer] = OrderedDict()

    @property
    def frames_held(self) -> int:
        """How many frames have decoded chunks in memory now."""
        return len(self._buffers)

    # -- array protocol -------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.positions.size), *self.frame_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return int(self.positions.size)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) > 3:
            raise IndexError(f"too many indices for a (T, H, W) array: {key!r}")
        parts = parts + (slice(None),) * (3 - len(parts))
        frames = np.arange(len(self))[parts[0]]
        (ys, squeeze_y), (xs, squeeze_x) = (self._span(p, n) for p, n in zip(parts[1:], self.frame_shape, strict=True))
        flat = np.atleast_1d(frames)
        out = np.empty((flat.size, ys.stop - ys.start, xs.stop - xs.start), dtype=np.float32)
        for i, t in enumerate(flat):
            out[i] = self._region(int(t), ys, xs)
        if squeeze_x:
            out = out[..., 0]
        if squeeze_y:
            out = out[:, 0]
        return out[0] if np.ndim(frames) == 0 else out

    @staticmethod
    def _span(part: Any, size: int) -> tuple[slice, bool]:
        """A spatial index as a step-1 slice (and whether it was an integer, to drop the axis)."""
        if isinstance(part, int | np.integer):
            i = int(part) + size if int(part) < 0 else int(part)
            if not 0 <= i < size:
                raise IndexError(f"index {int(part)} out of range for an axis of {size}")
            return slice(i, i + 1), True
        if isinstance(part, slice):
            start, stop, step = part.indices(size)
            if step != 1:
                raise IndexError(f"stored frames take spatial slices of step 1, got {part!r}")
            return slice(start, max(start, stop)), False
        raise IndexError(f"stored frames take integers or slices on y and x, got {type(part).__name__}")

    # -- reading --------------------------------------------------------------------------------------------
    def _frames_array(self) -> zarr.Array:
        if self._array is None:
            arr = zarr.open_group(str(self.path), mode="r")["frames"]
            if not isinstance(arr, zarr.Array):
                raise ArchiveError(f"store group {self.path}: 'frames' is not an array")
            self._array = arr
        return self._array

    def _buffer(self, t: int) -> _Buffer:
        buf = self._buffers.get(t)
        if buf is None:
            cy, cx = self.chunks
            grid = (-(-self.frame_shape[0] // cy), -(-self.frame_shape[1] // cx))
            buf = self._buffers[t] = _Buffer(self.frame_shape, grid)
            while len(self._buffers) > self.cache_frames:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(t)
        return buf

    def _region(self, t: int, ys: slice, xs: slice) -> np.ndarray:
        """Frame ``t`` (series order) over ``ys, xs``, decoding the chunks not read yet."""
        buf = self._buffer(t)
        cy, cx = self.chunks
        gy = slice(ys.start // cy, -(-ys.stop // cy)) if ys.stop > ys.start else slice(0, 0)
        gx = slice(xs.start // cx, -(-xs.stop // cx)) if xs.stop > xs.start else slice(0, 0)
        if not buf.loaded[gy, gx].all():
            # one aligned read of the bounding chunks (those already held are decoded again: rare)
            y0, y1 = gy.start * cy, min(gy.stop * cy, self.frame_shape[0])
            x0, x1 = gx.start * cx, min(gx.stop * cx, self.frame_shape[1])
            buf.values[y0:y1, x0:x1] = self._frames_array()[int(self.positions[t]), y0:y1, x0:x1]
            buf.loaded[gy, gx] = True
        return buf.values[ys, xs]

    # -- pickling (DataLoader workers) ----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        state["_buffers"] = OrderedDict()
        return state
