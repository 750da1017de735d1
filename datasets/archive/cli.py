"""``meteovision store build|append``: radar files -> one Zarr training store (dask, one task per file).

The files are a glob (``--glob`` with ``--variable``/``--conversion``...) or the sources of a training
config (``--config nowcast_precip_real``): the same readers, crops, coarsening and conversions as
training. Work runs on local processes (``--workers``) or on a running dask scheduler (``--scheduler``,
e.g. a dask-jobqueue SLURM cluster's address).
"""

from __future__ import annotations

import argparse
import logging
import time
from importlib import resources
from pathlib import Path

import dask
import yaml

from meteovision.datasets.archive.sources import ArchiveError, Conversion, SourceSettings, resolve_root
from meteovision.datasets.archive.store import build_store

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build", "append"], help="build (replace) or append new files")
    parser.add_argument("out", help="the Zarr store folder")
    parser.add_argument("--config", help="take the sources (and root) of this training config (name or path)")
    parser.add_argument("--glob", help="files to store (relative to --root or absolute)")
    parser.add_argument("--root", help="folder the globs are relative to (default: the config's root, else .)")
    parser.add_argument("--name", default="series", help="the source's name in the store (with --glob)")
    parser.add_argument("--variable", default="RATE", help="the file variable (with --glob)")
    parser.add_argument("--conversion", default="rate", choices=[c.value for c in Conversion])
    parser.add_argument("--coarsen", type=int, default=1, help="block-mean factor")
    parser.add_argument("--crop-bounds-m", type=float, nargs=4, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"))
    parser.add_argument("--period-minutes", type=float, help="accumulation period (conversion accumulation)")
    parser.add_argument("--tile", type=int, default=512, help="spatial chunk size (cells)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--scheduler", help="address of a running dask scheduler (e.g. a SLURMCluster's)")


def _config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    packaged = Path(str(resources.files("meteovision.configs").joinpath(Path(name).with_suffix(".yaml").name)))
    if packaged.is_file():
        return packaged
    raise ArchiveError(f"config {name!r}: no such file nor packaged config")


def sources_of_config(name: str) -> tuple[list[SourceSettings], str]:
    """The ``data.init_args.sources`` and ``root`` of a training config."""
    path = _config_path(name)
    data = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("init_args", {})
    raw = data.get("sources")
    if not raw:
        raise ArchiveError(f"{path}: no data.init_args.sources (an ArchiveDataModule config is needed)")
    try:
        return [SourceSettings(**s) for s in raw], str(data.get("root", "."))
    except TypeError as err:
        raise ArchiveError(f"{path}: data.init_args.sources: {err}") from err


def run(args: argparse.Namespace) -> int:
    if args.config:
        sources, root = sources_of_config(args.config)
    elif args.glob:
        crop = tuple(args.crop_bounds_m) if args.crop_bounds_m else None
        sources = [SourceSettings(name=args.name, glob=args.glob, variable=args.variable,
                                  conversion=Conversion(args.conversion), coarsen=args.coarsen,
                                  crop_bounds_m=crop, period_minutes=args.period_minutes)]  # type: ignore[arg-type]
        root = "."
    else:
        raise ArchiveError("store: give --config CONFIG or --glob GLOB")
    root_dir = resolve_root(args.root or root)
    start = time.perf_counter()
    if args.scheduler:
        from dask.distributed import Client

        with Client(args.scheduler):
            written = build_store(Path(args.out), sources, root_dir, append=args.action == "append", tile=args.tile)
    else:
        with dask.config.set(scheduler="processes", num_workers=args.workers):
            written = build_store(Path(args.out), sources, root_dir, append=args.action == "append", tile=args.tile)
    LOG.warning("store %s: %s frames written in %.1f s", args.out, written, time.perf_counter() - start)
    return 0
