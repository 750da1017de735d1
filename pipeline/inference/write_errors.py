"""Telling a failed write that is the output folder's fault (full, read-only, not ours) from a bad input.

A product that cannot be written because the disk is full says nothing about its input: counting
it against the input (retry, then quarantine) would set valid files aside, and every later unit
would fail the same way. The format libraries do not always say why: netCDF4 reports a full disk
as ``RuntimeError: NetCDF: HDF error`` with no errno. So a failed write is classified twice:

1. an ``OSError`` with a write-side errno (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``,
   ``EPERM``) anywhere in the exception chain;
2. else the folder itself, looked at while the partial file still fills it: a read-only mount,
   less than :data:`MIN_FREE_BYTES` (or no inode) left, or not writable by this process.

Either gives :class:`OutputWriteError`, which the batch commands do not treat as a per-unit
failure: they stop and exit with ``ExitCode.OUTPUT_UNWRITABLE``.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from meteovision.core.errors import MeteovisionError

log = logging.getLogger(__name__)

__all__ = ["MIN_FREE_BYTES", "OutputWriteError", "folder_problem", "output_problem"]

#: A folder with less free space than this after a failed write is taken as full.
MIN_FREE_BYTES = 1 << 20

_WHAT: dict[int, str] = {
    errno.ENOSPC: "no space left on",
    errno.EDQUOT: "disk quota exceeded on",
    errno.EROFS: "read-only file system at",
    errno.EACCES: "permission denied on",
    errno.EPERM: "operation not permitted on",
}


class OutputWriteError(MeteovisionError):
    """The output folder cannot take products (full, read-only, no permission); no input is to blame."""

    def __init__(self, folder: Path, code: int, detail: str = "") -> None:
        self.folder = Path(folder)
        self.errno = code
        self.detail = detail
        text = f"{_WHAT.get(code, os.strerror(code))} {self.folder}"
        super().__init__(text + (f" ({detail})" if detail else ""))


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def folder_problem(folder: Path) -> int | None:
    """The errno that keeps ``folder`` from taking a file now (EROFS, ENOSPC, EACCES), or None."""
    try:
        st = os.statvfs(folder)
    except OSError as err:
        return err.errno if err.errno in _WHAT else None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES or (st.f_files > 0 and st.f_favail == 0):
        return errno.ENOSPC
    if not os.access(folder, os.W_OK | os.X_OK):
        return errno.EACCES
    return None


def output_problem(folder: Path, err: BaseException) -> OutputWriteError | None:
    """:class:`OutputWriteError` when writing into ``folder`` failed with ``err`` for the folder's sake."""
    if isinstance(err, OutputWriteError):
        return err
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in _WHAT:
            return OutputWriteError(folder, link.errno, str(err))
    code = folder_problem(folder)
    if code is None:
        return None
    log.debug("write into %s failed (%s); the folder says %s", folder, err, os.strerror(code))
    return OutputWriteError(folder, code, str(err))
