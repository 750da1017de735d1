"""Structural check of a TIFF file: every directory, tag value, strip and tile lies inside the file.

GDAL tolerates truncation in ways that yield silently wrong data: a cut ``GDAL_METADATA``
tag is dropped with a warning (so gain/offset/nodata vanish and raw codes pass for dBZ),
and a windowed read of the intact part succeeds. Walking the image file directories and
comparing every offset with the file size catches all of these before GDAL is involved.

GDAL does not verify the zlib (Adler-32) checksum of deflate-compressed strips and tiles:
a flipped bit in a tile reads without error as tens of thousands of changed pixels. Every
deflate block is therefore decompressed once here with Python's ``zlib``, which checks it.
"""

from __future__ import annotations

import mmap
import zlib
from pathlib import Path

from meteovision.datasets.errors import CorruptFileError

#: TIFF field type -> bytes per value
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
               16: 8, 17: 8, 18: 8}
_OFFSET_TAGS = {273: 279, 324: 325}  # StripOffsets -> StripByteCounts, TileOffsets -> TileByteCounts
_COMPRESSION_TAG = 259
#: Compression codes of zlib streams (Adobe deflate, old-style deflate): checksummed.
_DEFLATE = {8, 32946}
_MAX_IFDS = 4096
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class _TiffReader:
    """Unsigned integers at byte offsets of a memory-mapped file (no copy of the image data)."""

    def __init__(self, path: Path, data: mmap.mmap) -> None:
        self.path = path
        self.data = data
        self.size = len(data)
        order = self.data[:2]
        if order not in (b"II", b"MM"):
            raise CorruptFileError(path, "not a TIFF file (bad byte-order mark)")
        self.endian: str = "little" if order == b"II" else "big"
        magic = self.uint(2, 2)
        if magic not in (42, 43):
            raise CorruptFileError(path, f"not a TIFF file (magic {magic})")
        self.big = magic == 43

    def uint(self, offset: int, n: int) -> int:
        if offset + n > self.size:
            raise CorruptFileError(self.path, f"truncated TIFF: needs byte {offset + n} of {self.size}")
        return int.from_bytes(self.data[offset : offset + n], self.endian)  # type: ignore[arg-type]

    def values(self, offset: int, n: int, size: int) -> list[int]:
        return [self.uint(offset + i * size, size) for i in range(n)]


def check_tiff(path: Path) -> None:
    """Raise ``CorruptFileError`` if any part of the TIFF structure points past the end of the file."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        _walk(_TiffReader(path, data))


def _walk(t: _TiffReader) -> None:
    path = t.path
    word = 8 if t.big else 4
    ifd = t.uint(8, 8) if t.big else t.uint(4, 4)
    seen: set[int] = set()
    while ifd:
        if ifd in seen or len(seen) >= _MAX_IFDS:
            raise CorruptFileError(path, "TIFF directory chain loops")
        seen.add(ifd)
        count_size, entry_size = (8, 20) if t.big else (2, 12)
        n_entries = t.uint(ifd, count_size)
        entries: dict[int, list[int]] = {}
        for i in range(n_entries):
            entry = ifd + count_size + i * entry_size
            tag, ftype = t.uint(entry, 2), t.uint(entry + 2, 2)
            count = t.uint(entry + 4, word)
            size = _TYPE_SIZES.get(ftype)
            if size is None:
                continue  # unknown types are skipped by readers too
            nbytes = size * count
            where = entry + 4 + word
            if nbytes > word:
                where = t.uint(where, word)
                if where + nbytes > t.size:
                    raise CorruptFileError(
                        path, f"truncated TIFF: tag {tag} needs bytes up to {where + nbytes} of {t.size}"
                    )
            if tag in _OFFSET_TAGS or tag in _OFFSET_TAGS.values() or tag == _COMPRESSION_TAG:
                entries[tag] = t.values(where, count, size)
        for offsets_tag, counts_tag in _OFFSET_TAGS.items():
            offsets, counts = entries.get(offsets_tag, []), entries.get(counts_tag, [])
            for start, length in zip(offsets, counts, strict=False):
                if length and start + length > t.size:
                    raise CorruptFileError(
                        path, f"truncated TIFF: image data needs bytes up to {start + length} of {t.size}"
                    )
            if entries.get(_COMPRESSION_TAG, [1])[0] in _DEFLATE:
                _check_deflate(t, offsets, counts, "strip" if offsets_tag == 273 else "tile")
        ifd = t.uint(ifd + count_size + n_entries * entry_size, word)


def _check_deflate(t: _TiffReader, offsets: list[int], counts: list[int], kind: str) -> None:
    """Decompress every deflate block: zlib verifies its Adler-32 checksum, GDAL does not."""
    for index, (start, length) in enumerate(zip(offsets, counts, strict=False)):
        if not length:
            continue  # a sparse block, never written
        try:
            zlib.decompress(t.data[start : start + length])
        except zlib.error as exc:
            raise CorruptFileError(
                t.path, f"{kind} {index} (bytes {start}-{start + length}) fails its zlib check: {exc}"
            ) from exc
