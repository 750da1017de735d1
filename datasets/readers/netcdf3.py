"""Size check of classic NetCDF files (CDF-1, CDF-2 64-bit offset, CDF-5).

A truncated NETCDF3 file opens without error and the library returns fill values for
the missing bytes: silently wrong data. The header states where each variable begins and
how large it is, so the smallest valid file size follows from the header alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meteovision.datasets.errors import CorruptFileError

_NC_DIMENSION = 0x0A
_NC_VARIABLE = 0x0B
_NC_ATTRIBUTE = 0x0C
_STREAMING = 0xFFFFFFFF
#: nc_type -> bytes per value (byte, char, short, int, float, double, ubyte, ushort, uint, int64, uint64)
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}

MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")


@dataclass(frozen=True)
class _Var:
    name: str
    shape: tuple[int, ...]
    is_record: bool
    type_size: int
    begin: int


class _OutOfBytesError(Exception):
    """The header goes on past the bytes read so far."""


class _Header:
    """Sequential big-endian reader of the header bytes, failing clearly at the end of the file."""

    def __init__(self, data: bytes, version: int, path: Path) -> None:
        self.data = data
        self.pos = 4
        self.path = path
        self.non_neg = 8 if version == 5 else 4
        self.offset = 4 if version == 1 else 8

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _OutOfBytesError
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "big")

    def tag(self) -> int:
        return self.uint(4)

    def count(self) -> int:
        return self.uint(self.non_neg)

    def name(self) -> str:
        n = self.count()
        text = self._take(n)
        self._take((-n) % 4)
        return text.decode("utf-8", errors="replace")

    def skip_attributes(self) -> None:
        tag, n = self.tag(), self.count()
        if tag not in (0, _NC_ATTRIBUTE):
            raise CorruptFileError(self.path, f"bad NETCDF3 attribute list tag {tag:#x}")
        for _ in range(n if tag else 0):
            self.name()
            nc_type = self.uint(4)
            size = _TYPE_SIZES.get(nc_type)
            if size is None:
                raise CorruptFileError(self.path, f"unknown NETCDF3 attribute type {nc_type}")
            nbytes = self.count() * size
            self._take(nbytes + (-nbytes) % 4)


def _parse(data: bytes, path: Path) -> tuple[int, list[_Var], int]:
    """(numrecs, variables, header length) from the bytes of a classic file."""
    if data[:4] not in MAGICS:
        raise CorruptFileError(path, "not a NETCDF3 file (bad magic bytes)")
    h = _Header(data, data[3], path)
    numrecs = h.uint(h.non_neg)
    tag, ndims = h.tag(), h.count()
    if tag not in (0, _NC_DIMENSION):
        raise CorruptFileError(path, f"bad NETCDF3 dimension list tag {tag:#x}")
    dims: list[int] = []
    for _ in range(ndims if tag else 0):
        h.name()
        dims.append(h.count())
    h.skip_attributes()
    tag, nvars = h.tag(), h.count()
    if tag not in (0, _NC_VARIABLE):
        raise CorruptFileError(path, f"bad NETCDF3 variable list tag {tag:#x}")
    variables: list[_Var] = []
    for _ in range(nvars if tag else 0):
        name = h.name()
        dimids = [h.count() for _ in range(h.count())]
        if any(d >= len(dims) for d in dimids):
            raise CorruptFileError(path, f"variable {name} refers to an unknown dimension")
        h.skip_attributes()
        nc_type = h.uint(4)
        size = _TYPE_SIZES.get(nc_type)
        if size is None:
            raise CorruptFileError(path, f"variable {name} has unknown NETCDF3 type {nc_type}")
        h.count()  # vsize: recomputed below, as the header clamps it for huge variables
        begin = h.uint(h.offset)
        shape = tuple(dims[d] for d in dimids)
        is_record = bool(shape) and shape[0] == 0
        variables.append(_Var(name, shape, is_record, size, begin))
    return numrecs, variables, h.pos


def _nbytes(shape: tuple[int, ...], size: int) -> int:
    n = size
    for d in shape:
        n *= d
    return n


def expected_size(path: Path) -> int | None:
    """Smallest size in bytes a classic NetCDF file must have, from its header.

    ``None`` when the record count is unknown (a streaming file). Padding after the last
    variable is not required, so the bound is the end of the last byte of data.
    """
    with open(path, "rb") as fh:
        # The header is small; read generously, then more if the parse runs out of bytes.
        chunk = 1 << 16
        data = fh.read(chunk)
        while True:
            try:
                numrecs, variables, header_len = _parse(data, path)
                break
            except _OutOfBytesError:
                more = fh.read(chunk)
                if not more:
                    raise CorruptFileError(path, "truncated NETCDF3 header") from None
                data += more
                chunk *= 2
    end = header_len
    record_vars = [v for v in variables if v.is_record]
    for v in variables:
        if not v.is_record:
            end = max(end, v.begin + _nbytes(v.shape, v.type_size))
    if record_vars:
        if numrecs == _STREAMING:
            return None
        sizes = [_nbytes(v.shape[1:], v.type_size) for v in record_vars]
        recsize = sizes[0] if len(sizes) == 1 else sum(s + (-s) % 4 for s in sizes)
        if numrecs > 0:
            for v, s in zip(record_vars, sizes, strict=True):
                end = max(end, v.begin + (numrecs - 1) * recsize + s)
    return end


def check_size(path: Path) -> None:
    """Raise ``CorruptFileError`` when a classic NetCDF file is shorter than its header says."""
    expected = expected_size(path)
    actual = path.stat().st_size
    if expected is not None and actual < expected:
        raise CorruptFileError(
            path, f"truncated NETCDF3 file: {actual} bytes, the header needs at least {expected}"
        )

