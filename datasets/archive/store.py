"""The Zarr training store: every source's converted frames, built and appended with dask.

One group per source: ``frames`` (time, y, x) float32, chunked one frame in time and
``tile x tile`` (512) in space (zstd-compressed by zarr), ``valid_time`` (time,) int64 seconds since
1970, ``x``/``y`` in the source's projection. Group attributes hold the CRS WKT, units, spacing,
time step, the files with their sha256, and the reader and library versions.

Each file is one dask task (read, crop, coarsen, convert), so a worker holds a few frames whatever the
archive's length. The default cluster is local processes; on HPC, pass a ``dask_jobqueue.SLURMCluster``'s
client (see the README). Appending writes the new frames past ``frames_committed`` and updates that
attribute last: a reader only sees committed frames, so an interrupted append leaves the store readable
and the next append rewrites the uncommitted tail. A file already recorded (path and sha256) or a time
already stored is never written twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from meteovision.datasets.archive.conversions import OUTPUT_UNITS, converted_frame, read_frame
from meteovision.datasets.archive.series import SourceSeries, sha256_of, sorted_unique, spacing_of
from meteovision.datasets.archive.sources import ArchiveError, SourceSettings

LOG = logging.getLogger(__name__)

COMMITTED = "frames_committed"
TIME_CHUNK = 4096
EPOCH = np.datetime64("1970-01-01T00:00:00", "ns")


def _versions() -> dict[str, str]:
    out = {}
    for name in ("meteovision", "xarray", "zarr", "dask", "h5py", "rasterio", "netCDF4", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _seconds(times: np.ndarray) -> np.ndarray:
    return ((np.asarray(times).astype("datetime64[ns]") - EPOCH) // np.timedelta64(1, "s")).astype(np.int64)


def _lazy_frames(files: list[Path], src: SourceSettings, shape: tuple[int, int]) -> tuple[da.Array, da.Array]:
    """One dask task per file: (times (T,) int64 s, frames (T, H, W) float32)."""
    parts_t, parts_v = [], []
    for path in files:
        pair = dask.delayed(converted_frame, nout=2)(path, src)
        parts_t.append(da.from_delayed(dask.delayed(_seconds)(pair[0]), (), dtype=np.int64))
        parts_v.append(da.from_delayed(pair[1], shape, dtype=np.float32))
    return da.stack(parts_t), da.stack(parts_v)


def _record(files: list[Path]) -> list[dict[str, str]]:
    return [{"path": str(p), "sha256": sha256_of(p)} for p in files]


def build_source(out: Path, src: SourceSettings, files: list[Path], *, tile: int = 512) -> int:
    """Write the group of ``src`` (replacing it) from ``files``; returns the number of frames."""
    first = read_frame(files[0], src)
    spacing = spacing_of(first.x, first.y, f"{files[0]} (source {src.name!r})")
    shape = first.values.shape
    t_secs, frames = _lazy_frames(files, src, shape)
    ty, tx = min(tile, shape[0]), min(tile, shape[1])
    frames = frames.rechunk((1, ty, tx))
    t_secs = t_secs.rechunk(TIME_CHUNK)
    ds = xr.Dataset(
        {
            "frames": (("time", "y", "x"), frames,
                       {"units": OUTPUT_UNITS[src.kind], "grid_mapping": "crs", "long_name": src.variable}),
            "valid_time": (("time",), t_secs, {"standard_name": "time", "units": "seconds since 1970-01-01 00:00:00",
                                               "calendar": "proleptic_gregorian"}),
            "crs": ((), np.int32(0), {"crs_wkt": first.crs_wkt}),
        },
        coords={"x": ("x", first.x, {"standard_name": "projection_x_coordinate", "units": "m"}),
                "y": ("y", first.y, {"standard_name": "projection_y_coordinate", "units": "m"})},
        attrs={"Conventions": "CF-1.10", "source_name": src.name, "crs_wkt": first.crs_wkt,
               "spacing_m": spacing, "settings": json.dumps(asdict(src), default=str),
               "versions": json.dumps(_versions()), "files": json.dumps(_record(files)),
               COMMITTED: 0},
    )
    encoding = {"frames": {"chunks": (1, ty, tx)}, "valid_time": {"chunks": (TIME_CHUNK,)}}
    ds.to_zarr(out, group=src.name, mode="w", encoding=encoding, consolidated=False)
    _commit(out, src.name, len(files))
    LOG.info("store %s: source %s, %d frames of %d x %d", out, src.name, len(files), *shape)
    return len(files)


def _array(g: zarr.Group, name: str) -> zarr.Array:
    arr = g[name]
    if not isinstance(arr, zarr.Array):
        raise ArchiveError(f"store group {g.path!r}: {name!r} is not an array")
    return arr


def _commit(out: Path, group: str, n: int, files: list[dict[str, str]] | None = None) -> None:
    """The last step of a write: the frame count (and file record) readers trust."""
    g = zarr.open_group(str(out / group), mode="r+")
    if files is not None:
        g.attrs["files"] = json.dumps(files)
    times = np.asarray(_array(g, "valid_time")[:n])
    steps = np.diff(np.sort(times))
    g.attrs["time_step_minutes"] = float(np.median(steps) / 60.0) if steps.size else None
    g.attrs[COMMITTED] = int(n)


def append_source(out: Path, src: SourceSettings, files: list[Path]) -> int:
    """Add the files not yet in the group of ``src``; returns the number of frames added."""
    if not (out / src.name).exists():
        return build_source(out, src, files)
    g = zarr.open_group(str(out / src.name), mode="r+")
    n = int(str(g.attrs.get(COMMITTED, 0)))
    known = json.loads(str(g.attrs.get("files", "[]")))
    seen = {(k["path"], k["sha256"]) for k in known}
    record = _record(files)
    new = [(p, r) for p, r in zip(files, record, strict=True) if (r["path"], r["sha256"]) not in seen]
    if not new:
        LOG.info("store %s: source %s is up to date (%d frames)", out, src.name, n)
        return 0
    frames_arr, times_arr = _array(g, "frames"), _array(g, "valid_time")
    stored = set(np.asarray(times_arr[:n]).tolist())
    added = 0
    for path, rec in new:
        t, values = converted_frame(path, src)
        secs = int(_seconds(np.asarray([t]))[0])
        if secs in stored:
            LOG.warning("%s: time %s already in the store; not written twice", path, t)
        else:
            if values.shape != tuple(frames_arr.shape[1:]):
                raise ArchiveError(f"{path}: grid {values.shape} differs from the store's {frames_arr.shape[1:]}")
            pos = n + added
            if frames_arr.shape[0] < pos + 1:
                frames_arr.resize((pos + 1, *frames_arr.shape[1:]))
                times_arr.resize((pos + 1,))
            frames_arr[pos] = values
            times_arr[pos] = secs
            stored.add(secs)
            added += 1
        known.append(rec)
    _commit(out, src.name, n + added, known)
    LOG.info("store %s: source %s, %d frame(s) appended (%d in all)", out, src.name, added, n + added)
    return added


def build_store(out: Path, sources: list[SourceSettings], root: Path, *, append: bool = False,
                tile: int = 512) -> dict[str, int]:
    """Build (or append to) the store at ``out`` from ``sources``; frames written per source.

    Runs on the active dask scheduler (``dask.config.set(scheduler="processes")``, or a distributed
    ``Client`` created before the call: local, or a dask-jobqueue SLURM cluster).
    """
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for src in sources:
        files = src.files(root)
        written[src.name] = append_source(out, src, files) if append else build_source(out, src, files, tile=tile)
    return written


def load_store(out: Path, src: SourceSettings) -> SourceSeries:
    """The committed frames of ``src`` from the store, as :func:`load_raw` gives them from files."""
    group = out / src.name
    if not group.exists():
        raise ArchiveError(f"store {out}: no group for source {src.name!r} (run `meteovision store build`)")
    g = zarr.open_group(str(group), mode="r")
    n = int(str(g.attrs.get(COMMITTED, 0)))
    secs = np.asarray(_array(g, "valid_time")[:n]).astype("timedelta64[s]")
    times = EPOCH + secs.astype("timedelta64[ns]")
    frames = _array(g, "frames")
    values = np.asarray(frames[:n], dtype=np.float32)
    times, values = sorted_unique(times, values, src.name)
    return SourceSeries(src.name, times, values, str(frames.attrs["units"]), float(str(g.attrs["spacing_m"])),
                        str(g.attrs.get("crs_wkt", "")))
