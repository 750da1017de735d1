"""Exceptions raised by the readers, so a caller can tell a bad file from a bug.

Every error names the file and the problem. Library exceptions (h5py, netCDF4,
rasterio, PIL) are wrapped, never leaked as raw tracebacks to a user.
"""

from __future__ import annotations

from pathlib import Path

from meteovision.core.errors import MeteovisionError


class ReaderError(MeteovisionError):
    """A file could not be turned into a dataset. Carries the path and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnknownFormatError(ReaderError):
    """No reader recognises the file's content."""


class CorruptFileError(ReaderError):
    """The file is empty, truncated or unreadable by its format's library."""


class MissingVariableError(ReaderError):
    """The file lacks a variable or attribute the reader needs."""


class EmptyFrameError(ReaderError):
    """Every pixel of the frame is nodata: nothing was measured."""


class SeriesError(MeteovisionError):
    """Frames of a series do not fit together (grid, CRS or variables differ)."""


class GridMismatchError(SeriesError):
    """Two frames of a series sit on different grids or CRSs."""


class AttributeValueError(ReaderError):
    """An attribute holds a value that cannot be the number (or numbers) the format says it is."""


class SizeLimitError(ReaderError):
    """The file declares a grid larger than the configured limit: refused before allocating it."""


class UnitsError(ReaderError):
    """The file's units are not what its labels say (an ellipsoid in km, a CRS in feet...)."""


class ReadOptionsError(MeteovisionError):
    """A ``ReadOptions`` value that no reader can honour (coarsen 0, an unknown method...)."""
