"""What to read from a file, said once for every reader: ``ReadOptions``.

A caller (evaluation, training, inference) states variables, window, coarsening and limits
without knowing the file's format; every reader honours the same object, or refuses an option
it cannot honour with a named error (a webcam photo has no map window). The readers' older
keyword arguments (``quantities=``, ``window=``...) still work and override these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from meteovision.datasets.errors import ReaderError, ReadOptionsError
from meteovision.datasets.readers._common import WindowSpec

CoarsenMethod = Literal["mean", "nearest"]
COARSEN_METHODS: tuple[str, ...] = ("mean", "nearest")

#: Largest number of output cells (times x rows x columns) one variable may have: 2**28 float32
#: cells are 1 GiB. A file declaring more (a 60000 x 60000 grid) is refused before allocating.
DEFAULT_MAX_CELLS = 2**28


@dataclass(frozen=True)
class ReadOptions:
    """Selection, sub-grid, block averaging and size limit of one read, for any format.

    ``variables``: names to keep (ODIM quantities, NetCDF variable names, the GeoTIFF band's
    name, ``image`` for a webcam photo); None keeps all. ``window``: see ``_common.WindowSpec``
    (pixel slices or bounds in the CRS's metres). ``coarsen``: average ``k x k`` blocks after the
    window (``coarsen_method`` "mean": valid cells, in linear Z for dBZ; "nearest": the block's
    centre cell). ``include_quality``: ODIM quality layers as variables. ``allow_empty``: accept
    an all-nodata frame. ``max_cells``: refuse a read whose output exceeds this many cells.
    """

    variables: tuple[str, ...] | None = None
    window: WindowSpec | None = None
    coarsen: int = 1
    coarsen_method: CoarsenMethod = "mean"
    include_quality: bool = True
    allow_empty: bool = False
    max_cells: int = DEFAULT_MAX_CELLS

    def __post_init__(self) -> None:
        if self.variables is not None:
            if isinstance(self.variables, str):
                raise ReadOptionsError(f"variables must be a sequence of names, got the string {self.variables!r}")
            object.__setattr__(self, "variables", tuple(str(v) for v in self.variables))
        if isinstance(self.coarsen, bool) or int(self.coarsen) != self.coarsen or self.coarsen < 1:
            raise ReadOptionsError(f"coarsen must be a positive integer, got {self.coarsen!r}")
        object.__setattr__(self, "coarsen", int(self.coarsen))
        if self.coarsen_method not in COARSEN_METHODS:
            raise ReadOptionsError(f"coarsen_method must be one of {COARSEN_METHODS}, got {self.coarsen_method!r}")
        if int(self.max_cells) < 1:
            raise ReadOptionsError(f"max_cells must be positive, got {self.max_cells!r}")


def with_overrides(options: ReadOptions | None, path: Path, **given: Any) -> ReadOptions:
    """``options`` (or the defaults) with the keyword arguments that are not None put over them.

    Lets each reader keep its older keywords (``quantities=``, ``coarsen=``) next to ``options=``;
    a bad value raises ``ReaderError`` naming the file being read.
    """
    known = {f.name for f in fields(ReadOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ReadOptionsError(f"unknown read options {unknown}; known: {sorted(known)}")
    changes = {key: value for key, value in given.items() if value is not None}
    try:
        return replace(options or ReadOptions(), **changes)
    except ReadOptionsError as exc:
        raise ReaderError(path, str(exc)) from exc
