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

Format 2 (``store_format``) adds each frame's statistics, so that a DataModule's setup reads no
whole frame (see :mod:`meteovision.datasets.archive.summaries`): ``valid_count`` (time,),
``wet_count`` (time, wet_threshold), and ``stat_count``/``stat_mean``/``stat_m2`` (time, transform)
of the transformed values, with the transforms' names and fingerprints in the attributes
``stat_transforms`` and ``stat_probe``. Readers take the frames lazily, chunk by chunk
(:class:`StoredFrames`). A format-1 store (no statistics) still loads, computing them from the frames
(slow; a warning says to rebuild), but is not appended to; a newer format is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from meteovision.datasets.archive.conversions import OUTPUT_UNITS, converted_frame, read_frame
from meteovision.datasets.archive.frames import StoredFrames
from meteovision.datasets.archive.series import SourceSeries, sha256_of, spacing_of, unique_order
from meteovision.datasets.archive.sources import ArchiveError, SourceSettings
from meteovision.datasets.archive.summaries import FrameSummaries, probe, summary_arrays, thresholds_for
from meteovision.datasets.normalization import TRANSFORMS

LOG = logging.getLogger(__name__)

COMMITTED = "frames_committed"
FORMAT_ATTR = "store_format"
FORMAT = 2
TIME_CHUNK = 4096
#: Decoded frames a reader keeps (MB); the least recently used beyond it are dropped.
CACHE_MB = 1024


@dataclass(frozen=True)
class _SummaryVar:
    """One per-frame statistics array: name, its dimension after time (None: one value a frame), dtype, note."""

    name: str
    per: str | None
    dtype: type
    note: str


#: Per-frame statistics arrays, in the order :func:`summary_arrays` returns them.
SUMMARY_SPECS = (
    _SummaryVar("valid_count", None, np.int64, "cells with a value (not NaN)"),
    _SummaryVar("wet_count", "wet_threshold", np.int64, "cells with a value above wet_threshold"),
    _SummaryVar("stat_count", "transform", np.int64, "finite transformed values"),
    _SummaryVar("stat_mean", "transform", np.float64, "mean of the finite transformed values"),
    _SummaryVar("stat_m2", "transform", np.float64, "sum of squared deviations from stat_mean (M2)"),
)
SUMMARY_VARS = tuple(v.name for v in SUMMARY_SPECS)
#: Settings that change a stored frame: a store is only read for a source that agrees on them.
FRAME_SETTINGS = ("variable", "conversion", "zr_a", "zr_b", "period_minutes", "crop_bounds_m", "coarsen")
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


def _lazy_frames(files: list[Path], src: SourceSettings,
                 shape: tuple[int, int]) -> tuple[da.Array, da.Array, list[da.Array]]:
    """One dask task per file: times (T,) int64 s, frames (T, H, W) float32, and the per-frame statistics."""
    thresholds = thresholds_for(src.kind)
    extent = {None: (), "wet_threshold": (len(thresholds),), "transform": (len(TRANSFORMS),)}
    parts_t, parts_v = [], []
    parts_s: list[list[da.Array]] = [[] for _ in SUMMARY_VARS]
    for path in files:
        pair = dask.delayed(converted_frame, nout=2)(path, src)
        parts_t.append(da.from_delayed(dask.delayed(_seconds)(pair[0]), (), dtype=np.int64))
        parts_v.append(da.from_delayed(pair[1], shape, dtype=np.float32))
        summary = dask.delayed(summary_arrays, nout=len(SUMMARY_VARS))(pair[1], thresholds)
        for j, spec in enumerate(SUMMARY_SPECS):
            parts_s[j].append(da.from_delayed(summary[j], extent[spec.per], dtype=spec.dtype))
    return da.stack(parts_t), da.stack(parts_v), [da.stack(p) for p in parts_s]


def _summary_variables(src: SourceSettings, arrays: list[da.Array]) -> dict[str, tuple[Any, ...]]:
    """The statistics variables of a group, with their CF-style attributes."""
    units = OUTPUT_UNITS[src.kind]
    out: dict[str, tuple[Any, ...]] = {}
    for spec, arr in zip(SUMMARY_SPECS, arrays, strict=True):
        dims = ("time",) if spec.per is None else ("time", spec.per)
        note = f"{spec.note} ({units})" if spec.per == "wet_threshold" else spec.note
        out[spec.name] = (dims, arr.rechunk((TIME_CHUNK, *(-1 for _ in dims[1:]))), {"long_name": note})
    return out


def _record(files: list[Path]) -> list[dict[str, str]]:
    return [{"path": str(p), "sha256": sha256_of(p)} for p in files]


def build_source(out: Path, src: SourceSettings, files: list[Path], *, tile: int = 512) -> int:
    """Write the group of ``src`` (replacing it) from ``files``; returns the number of frames."""
    first = read_frame(files[0], src)
    spacing = spacing_of(first.x, first.y, f"{files[0]} (source {src.name!r})")
    shape = first.values.shape
    t_secs, frames, summaries = _lazy_frames(files, src, shape)
    ty, tx = min(tile, shape[0]), min(tile, shape[1])
    frames = frames.rechunk((1, ty, tx))
    t_secs = t_secs.rechunk(TIME_CHUNK)
    thresholds = thresholds_for(src.kind)
    ds = xr.Dataset(
        {
            "frames": (("time", "y", "x"), frames,
                       {"units": OUTPUT_UNITS[src.kind], "grid_mapping": "crs", "long_name": src.variable}),
            "valid_time": (("time",), t_secs, {"standard_name": "time", "units": "seconds since 1970-01-01 00:00:00",
                                               "calendar": "proleptic_gregorian"}),
            "crs": ((), np.int32(0), {"crs_wkt": first.crs_wkt}),
            **_summary_variables(src, summaries),
        },
        coords={"x": ("x", first.x, {"standard_name": "projection_x_coordinate", "units": "m"}),
                "y": ("y", first.y, {"standard_name": "projection_y_coordinate", "units": "m"}),
                "wet_threshold": ("wet_threshold", np.asarray(thresholds, dtype=np.float64),
                                  {"units": OUTPUT_UNITS[src.kind], "long_name": "threshold of wet_count"})},
        attrs={"Conventions": "CF-1.10", "source_name": src.name, "crs_wkt": first.crs_wkt,
               "spacing_m": spacing, "settings": json.dumps(asdict(src), default=str),
               "versions": json.dumps(_versions()), "files": json.dumps(_record(files)),
               FORMAT_ATTR: FORMAT, "stat_transforms": list(TRANSFORMS),
               "stat_probe": json.dumps({name: probe(name) for name in TRANSFORMS}), COMMITTED: 0},
    )
    encoding: dict[str, dict[str, Any]] = {"frames": {"chunks": (1, ty, tx)}, "valid_time": {"chunks": (TIME_CHUNK,)}}
    encoding.update({name: {"chunks": (TIME_CHUNK, *ds[name].shape[1:])} for name in SUMMARY_VARS})
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


def _format_of(g: zarr.Group, where: Path) -> int:
    """The group's format (1 before statistics were stored); a newer one than this code knows is refused."""
    fmt = int(str(g.attrs.get(FORMAT_ATTR, 1)))
    if fmt > FORMAT:
        raise ArchiveError(f"store group {where}: format {fmt} is newer than this meteovision reads ({FORMAT}); "
                           "update meteovision or rebuild the store with `meteovision store build`")
    return fmt


def append_source(out: Path, src: SourceSettings, files: list[Path]) -> int:
    """Add the files not yet in the group of ``src``; returns the number of frames added."""
    if not (out / src.name).exists():
        return build_source(out, src, files)
    g = zarr.open_group(str(out / src.name), mode="r+")
    if _format_of(g, out / src.name) < FORMAT:
        raise ArchiveError(f"store group {out / src.name}: written by an older meteovision without per-frame "
                           "statistics; rebuild it with `meteovision store build` rather than append")
    n = int(str(g.attrs.get(COMMITTED, 0)))
    known = json.loads(str(g.attrs.get("files", "[]")))
    seen = {(k["path"], k["sha256"]) for k in known}
    record = _record(files)
    new = [(p, r) for p, r in zip(files, record, strict=True) if (r["path"], r["sha256"]) not in seen]
    if not new:
        LOG.info("store %s: source %s is up to date (%d frames)", out, src.name, n)
        return 0
    frames_arr, times_arr = _array(g, "frames"), _array(g, "valid_time")
    stats_arrs = [_array(g, name) for name in SUMMARY_VARS]
    thresholds = tuple(float(t) for t in np.asarray(_array(g, "wet_threshold")[:]))
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
            for arr in (frames_arr, times_arr, *stats_arrs):
                if arr.shape[0] < pos + 1:
                    arr.resize((pos + 1, *arr.shape[1:]))
            frames_arr[pos] = values
            times_arr[pos] = secs
            for arr, value in zip(stats_arrs, summary_arrays(values, thresholds), strict=True):
                arr[pos] = value
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


def _check_settings(g: zarr.Group, src: SourceSettings, where: Path) -> None:
    """Refuse a group built with other conversion settings than ``src`` asks: its frames would differ."""
    built = json.loads(str(g.attrs.get("settings", "{}")))
    asked = json.loads(json.dumps(asdict(src), default=str))
    differ = [k for k in FRAME_SETTINGS if k in built and built[k] != asked[k]]
    if differ:
        pairs = ", ".join(f"{k}: store {built[k]!r}, source {asked[k]!r}" for k in differ)
        raise ArchiveError(f"store group {where} was built with other settings than source {src.name!r} ({pairs}); "
                           "rebuild it with `meteovision store build`")


def _summaries(g: zarr.Group, n: int, order: np.ndarray, where: Path) -> FrameSummaries | None:
    """The stored per-frame statistics in series order (None for a format-1 group)."""
    if _format_of(g, where) < 2:
        LOG.warning("store group %s: written by an older meteovision without per-frame statistics; setup reads "
                    "every training frame (slow): rebuild it with `meteovision store build`", where)
        return None
    stored = tuple(str(t) for t in list(g.attrs["stat_transforms"]))  # type: ignore[arg-type]
    probes = json.loads(str(g.attrs["stat_probe"]))
    usable = tuple(t for t in stored if t in TRANSFORMS and probes.get(t) == probe(t))
    if len(usable) < len(stored):
        LOG.warning("store group %s: transform(s) %s changed since the build; their statistics are computed from "
                    "the frames (rebuild the store to store them again)", where, sorted(set(stored) - set(usable)))
    valid, wet, count, mean, m2 = (np.asarray(_array(g, name)[:n])[order] for name in SUMMARY_VARS)
    thresholds = tuple(float(t) for t in np.asarray(_array(g, "wet_threshold")[:]))
    return FrameSummaries(thresholds, usable, valid, wet, count, mean, m2, stored_transforms=stored)


def load_store(out: Path, src: SourceSettings, *, cache_mb: int = CACHE_MB) -> SourceSeries:
    """The committed frames of ``src`` from the store, as :func:`load_raw` gives them from files.

    Only times and per-frame statistics are read here; frames are decoded chunk by chunk when sampled.
    """
    group = out / src.name
    if not group.exists():
        raise ArchiveError(f"store {out}: no group for source {src.name!r} (run `meteovision store build`)")
    g = zarr.open_group(str(group), mode="r")
    _check_settings(g, src, group)
    n = int(str(g.attrs.get(COMMITTED, 0)))
    secs = np.asarray(_array(g, "valid_time")[:n]).astype("timedelta64[s]")
    all_times = EPOCH + secs.astype("timedelta64[ns]")
    order = unique_order(all_times, src.name)
    frames = _array(g, "frames")
    shape = (int(frames.shape[1]), int(frames.shape[2]))
    chunks = (int(frames.chunks[1]), int(frames.chunks[2]))
    frame_mb = shape[0] * shape[1] * 4 / 1e6
    values = StoredFrames(group, order, shape, chunks, cache_frames=int(cache_mb / max(frame_mb, 1e-6)))
    return SourceSeries(src.name, all_times[order], values, str(frames.attrs["units"]),
                        float(str(g.attrs["spacing_m"])), str(g.attrs.get("crs_wkt", "")),
                        _summaries(g, n, order, group))
