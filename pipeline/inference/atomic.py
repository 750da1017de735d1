"""Write-then-rename, so a consumer polling a folder never sees a partial file.

The temporary file sits in the target's own folder (same filesystem, so ``os.replace``
is atomic) and its name starts with "." and ends with ".tmp", which folder pollers and
globs such as ``*.nc`` skip. On any failure the temporary file goes and the target is
left as it was; a failure that is the folder's fault (full, read-only, not writable) is raised
as :class:`~meteovision.pipeline.inference.write_errors.OutputWriteError`, judged while the
partial file still fills the folder.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import netCDF4

from meteovision.pipeline.inference.products import WriterError
from meteovision.pipeline.inference.write_errors import output_problem

log = logging.getLogger(__name__)

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def temporary_path(target: Path) -> Path:
    """A fresh hidden name beside ``target`` (random, so concurrent writers never collide)."""
    return target.with_name(f"{TEMP_PREFIX}{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and moved onto ``target``.

    The body must create the file at the yielded path. The file is created with the
    process's usual permissions (no ``mkstemp`` 0600), because the name is random and
    not pre-created.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise WriterError(target, "the target folder does not exist")
    tmp = temporary_path(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise WriterError(target, f"nothing was written to the temporary file {tmp.name}")
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        # Any failure, KeyboardInterrupt included: drop the partial file, keep the target as it was.
        problem = output_problem(target.parent, exc) if isinstance(exc, Exception) else None
        tmp.unlink(missing_ok=True)
        if problem is not None and problem is not exc:
            raise problem from exc
        raise
    try:
        _fsync_path(target.parent, directory=True)
    except OSError as exc:  # some filesystems refuse fsync on a folder; the rename is done anyway
        log.debug("could not fsync folder %s: %s", target.parent, exc)


def is_valid_netcdf(path: Path, required_variables: Iterable[str] = ()) -> bool:
    """True when ``path`` opens as NetCDF, holds ``required_variables`` and every variable reads.

    Reading every variable catches truncated files whose header alone still opens.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with netCDF4.Dataset(path, "r") as nc:
            missing = [name for name in required_variables if name not in nc.variables]
            if missing:
                log.info("%s lacks variables %s", path, missing)
                return False
            for var in nc.variables.values():
                var[...]
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:
        log.info("%s is not a readable NetCDF file: %s", path, exc)
        return False
    return True
