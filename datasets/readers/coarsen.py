"""The cells a read covers and how they are averaged: one implementation for every reader.

``Selection`` turns ``ReadOptions`` (window, coarsen, size limit) into row/column slices of the
north-up grid, checks the output size before anything is allocated, and reads coarsened fields
strip by strip through a reader's ``read_rows`` callback, so memory stays at one strip of
whole blocks plus the output wherever the format reads by rows (HDF5, NetCDF, GDAL).

Block mean: valid cells only, in linear units (Z in mm6 m-3 for dBZ, the value itself
otherwise); an all-NaN block is NaN. "nearest" keeps the cell at offset ``k // 2`` of each
block. Trailing rows/columns that do not fill a block are dropped; coordinates are the block
centres.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meteovision.datasets.errors import ReaderError, SizeLimitError
from meteovision.datasets.readers._common import resolve_window
from meteovision.datasets.readers.options import CoarsenMethod, ReadOptions

#: Rows per strip in a coarsened read (rounded to whole blocks): bounds memory to a few MB.
STRIP_ROWS = 128

#: ``read_rows(rows, cols)``: physical float32 values ``(..., rows, cols)`` in north-up order.
RowReader = Callable[[slice, slice], np.ndarray]


def reduce_blocks(values: np.ndarray, factor: int, method: CoarsenMethod, linear_db: bool) -> np.ndarray:
    """Reduce ``(..., h, w)``, h and w multiples of ``factor``, to ``(..., h/factor, w/factor)``."""
    *lead, h, w = values.shape
    if method == "nearest":
        return values[..., factor // 2 :: factor, factor // 2 :: factor].copy()
    blocks = values.reshape(*lead, h // factor, factor, w // factor, factor)
    if linear_db:
        blocks = np.power(np.float32(10.0), blocks / np.float32(10.0))
    valid = ~np.isnan(blocks)
    count = valid.sum(axis=(-3, -1))
    total = np.where(valid, blocks, np.float32(0.0)).sum(axis=(-3, -1), dtype=np.float64)
    mean = np.full(total.shape, np.nan, dtype=np.float64)
    np.divide(total, count, out=mean, where=count > 0)
    if linear_db:
        with np.errstate(divide="ignore"):
            mean = 10.0 * np.log10(mean)
    return mean.astype(np.float32)


def block_centres(coords: np.ndarray, factor: int) -> np.ndarray:
    """Centres of whole ``factor`` blocks of 1-D cell centres (a trailing partial block is dropped)."""
    n = coords.size // factor
    return coords[: n * factor].reshape(n, factor).mean(axis=1)


@dataclass(frozen=True)
class Selection:
    """Rows and columns of the full north-up grid one read covers (whole blocks), and the block size."""

    rows: slice
    cols: slice
    factor: int
    method: CoarsenMethod

    @classmethod
    def of(cls, options: ReadOptions, x: np.ndarray, y: np.ndarray, path: Path, n_times: int = 1) -> Selection:
        """The selection for ``options`` on a grid with centres ``x``, ``y``; refuses an output too large."""
        rows, cols = resolve_window(options.window, x, y, path)
        factor = options.coarsen
        nrows = (rows.stop - rows.start) // factor * factor
        ncols = (cols.stop - cols.start) // factor * factor
        if nrows == 0 or ncols == 0:
            raise ReaderError(path, f"window of {rows.stop - rows.start} x {cols.stop - cols.start} cells is "
                                    f"smaller than one coarsen block of {factor}")
        selection = cls(slice(rows.start, rows.start + nrows), slice(cols.start, cols.start + ncols), factor,
                        options.coarsen_method)
        cells = n_times * (nrows // factor) * (ncols // factor)
        if cells > options.max_cells:
            raise SizeLimitError(
                path, f"the read would hold {n_times} x {nrows // factor} x {ncols // factor} = {cells:,} cells "
                f"(grid of {len(y)} x {len(x)}), over the limit of {options.max_cells:,} (ReadOptions.max_cells); "
                "read a window or coarsen",
            )
        return selection

    def coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output x and y: the selected centres, or the block centres when coarsened."""
        xs, ys = x[self.cols], y[self.rows]
        if self.factor == 1:
            return xs, ys
        return block_centres(xs, self.factor), block_centres(ys, self.factor)

    def attrs(self, units: str) -> dict[str, Any]:
        """Attributes recording the coarsening on a coarsened variable (none when not coarsened)."""
        if self.factor == 1:
            return {}
        linear = " (linear Z)" if self.method == "mean" and units == "dBZ" else ""
        return {"coarsen": self.factor, "coarsen_method": self.method + linear}

    def _strips(self) -> Iterator[slice]:
        step = max(1, STRIP_ROWS // self.factor) * self.factor
        for start in range(self.rows.start, self.rows.stop, step):
            yield slice(start, min(start + step, self.rows.stop))

    def read(self, read_rows: RowReader, linear_db: bool) -> np.ndarray:
        """The field on the selection: one read, or strip reads reduced block by block."""
        if self.factor == 1:
            return read_rows(self.rows, self.cols)
        out: np.ndarray | None = None
        for strip in self._strips():
            reduced = reduce_blocks(read_rows(strip, self.cols), self.factor, self.method, linear_db)
            if out is None:
                n_out = (self.rows.stop - self.rows.start) // self.factor
                out = np.empty((*reduced.shape[:-2], n_out, reduced.shape[-1]), dtype=np.float32)
            start = (strip.start - self.rows.start) // self.factor
            out[..., start : start + reduced.shape[-2], :] = reduced
        assert out is not None  # at least one strip: rows hold one block or more
        return out
