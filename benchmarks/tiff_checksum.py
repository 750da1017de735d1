"""Cost of the deflate checksum check of ``tiff_check`` on a real FMI GeoTIFF frame.

GDAL does not verify the zlib checksum of deflate tiles, so the reader decompresses every tile
once more with Python's ``zlib`` (see ``datasets/readers/tiff_check.py``). This script times the
structure + checksum check alone and a full read of the frame (which includes it):
``python benchmarks/tiff_checksum.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import SHARED_DATA, BenchmarkError

from meteovision.datasets.readers import read_geotiff
from meteovision.datasets.readers.tiff_check import check_tiff

logger = logging.getLogger("tiff_checksum")


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    frames = sorted((SHARED_DATA / "radar/fmi_geotiff_20160928").glob("*.tif"))
    if not frames:
        raise BenchmarkError(f"no FMI GeoTIFF under {SHARED_DATA}")
    path: Path = frames[0]
    check = _median_s(lambda: check_tiff(path), args.repeats)
    read = _median_s(lambda: read_geotiff(path), args.repeats)
    result = {"check_s": check, "read_s": read, "check_share_of_read": check / read}
    logger.info("%s: check %.3f s, full read %.3f s (check included): the check is %.0f %% of the read",
                path.name, check, read, 100 * check / read)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
