"""Decoded 2-D fields of indexed data files, read through the readers and kept in a per-worker LRU.

An epoch of random patches then reads each file about once. Readers know nothing of torch;
neither does this module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from meteovision.datasets.catalog import FrameIndex
from meteovision.datasets.errors import GridMismatchError, MissingVariableError

Reader = Callable[[Path], xr.Dataset]


def _default_reader(path: Path) -> xr.Dataset:
    """Any supported file; an all-nodata frame is data too (nothing valid, mask False), not an error."""
    from meteovision.datasets.readers import open_dataset

    return open_dataset(path, allow_empty=True)


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
