"""A safety net around reading one input file, so one bad file fails alone and names itself.

The readers turn the problems they know into :class:`~meteovision.datasets.errors.ReaderError`.
A file can still hit one they do not know (an ODIM ``gain`` of ``b"abc"`` makes ``float()`` raise
``ValueError``; a truncated HDF5 chunk makes netCDF4 raise ``RuntimeError``). A batch that lets such
an exception through stops at that file: later files are never tried and no summary is printed.

:func:`reading` wraps the *read* of one file (open, checks, loading the arrays) and turns the
exception types a format library raises on bad content into :class:`UnexpectedReadError`, which
names the file, the exception type and its message; the traceback goes to the debug log. It is
kept narrow on purpose: only reading is wrapped, so a bug in inference or writing still raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meteovision.core.errors import MeteovisionError
from meteovision.datasets.errors import CorruptFileError

log = logging.getLogger(__name__)

__all__ = ["LIBRARY_READ_ERRORS", "UnexpectedReadError", "reading"]

#: What h5py, netCDF4, rasterio, PIL and numpy raise on content they cannot make sense of.
#: ``OSError`` is not here: callers already treat it as a per-file failure.
LIBRARY_READ_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    LookupError,
    ArithmeticError,
    AttributeError,
    RuntimeError,
)


class UnexpectedReadError(CorruptFileError):
    """Reading the file raised an exception no reader anticipated; keeps its type and message."""

    def __init__(self, path: str | Path, error: Exception) -> None:
        self.error_type = type(error).__name__
        super().__init__(path, f"unreadable: {self.error_type} while reading: {error}")


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a library exception raised in the block into :class:`UnexpectedReadError` for ``path``."""
    try:
        yield
    except MeteovisionError:
        raise  # ours, already named (some of ours are also ValueErrors)
    except LIBRARY_READ_ERRORS as err:
        log.debug("%s: %s while reading", path, type(err).__name__, exc_info=True)
        raise UnexpectedReadError(path, err) from err
