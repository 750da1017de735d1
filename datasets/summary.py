"""``meteovision summary PATH...``: what is in these files, or what a model will be fed from this folder.

* Files (or a plain folder of files): variables, units, CRS, grid, time range and gaps, and value
  statistics (min/max/mean, NaN share), streamed file by file so large composites fit in memory.
* A sample-data folder (``manifest.json``): builds the application's data module (``--config`` a
  LightningCLI YAML, else the application's defaults), fits it, and prints the split sizes and time
  ranges and the tensor shapes/dtypes of one batch of each split.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from meteovision.datasets.catalog import (
    CatalogError,
    Manifest,
    describe_times,
    find_gaps,
    has_manifest,
    index_folder,
    modal_step,
    time_of_file,
)
from meteovision.datasets.conventions import crs_of
from meteovision.datasets.errors import MeteovisionError

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="file(s), a folder of files, or a sample-data folder (with manifest.json)",
    )
    parser.add_argument("--app", default=None, help="application of a sample folder (default: the manifest's)")
    parser.add_argument(
        "--config",
        default=None,
        help="YAML with a LightningCLI `data:` section (class_path/init_args) to build the data module",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of the printed batches")
    parser.add_argument("--pattern", default="*", help="glob of the files to read inside a plain folder")


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    try:
        if len(paths) == 1 and paths[0].is_dir() and has_manifest(paths[0]):
            text = summarize_sample_folder(paths[0], app=args.app, config=args.config, batch_size=args.batch_size)
        elif len(paths) == 1 and paths[0].is_dir():
            text = summarize_files(list(index_folder(paths[0], pattern=args.pattern).paths))
        else:
            for p in paths:
                if not p.exists():
                    raise CatalogError(p, "no such file or folder")
            files: list[Path] = []
            for p in paths:
                files.extend(index_folder(p, pattern=args.pattern).paths if p.is_dir() else [p])
            text = summarize_files(files)
    except MeteovisionError as exc:
        print(f"meteovision summary: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


# -- files -------------------------------------------------------------------------------------------------
@dataclass
class _VarStats:
    units: str
    long_name: str
    dtype: str
    minimum: float = np.inf
    maximum: float = -np.inf
    total: float = 0.0
    valid: int = 0
    size: int = 0

    def update(self, values: np.ndarray) -> None:
        """Add a field without copying it to float64 (composites of 36 M cells stay cheap)."""
        v = np.asarray(values)
        v = v if np.issubdtype(v.dtype, np.floating) else v.astype(np.float32)
        finite = np.isfinite(v)
        n_valid = int(finite.sum())
        self.size += v.size
        self.valid += n_valid
        if n_valid:
            self.minimum = min(self.minimum, float(np.min(v, where=finite, initial=np.inf)))
            self.maximum = max(self.maximum, float(np.max(v, where=finite, initial=-np.inf)))
            self.total += float(np.sum(v, where=finite, dtype=np.float64))


@dataclass
class _FileSummary:
    formats: set[str] = field(default_factory=set)
    grids: dict[str, list[str]] = field(default_factory=dict)
    variables: dict[str, _VarStats] = field(default_factory=dict)
    times: list[np.datetime64] = field(default_factory=list)


def _grid_text(ds: Any) -> tuple[str, str]:
    """(grid description, CRS description) of a reader dataset."""
    x = np.asarray(ds["x"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    dx = float(x[1] - x[0]) if x.size > 1 else float("nan")
    dy = float(y[1] - y[0]) if y.size > 1 else float("nan")
    xu, yu = str(ds["x"].attrs.get("units", "m")), str(ds["y"].attrs.get("units", "m"))
    digits = 0 if xu == "m" else 3  # degrees of a latitude/longitude grid need decimals
    grid = (
        f"{y.size} x {x.size} (y x), dx {dx:g} {xu}, dy {dy:g} {yu}, "
        f"x {x.min():.{digits}f}..{x.max():.{digits}f} {xu}, y {y.min():.{digits}f}..{y.max():.{digits}f} {yu}"
    )
    try:
        crs = crs_of(ds)
    except (KeyError, ValueError) as exc:
        return grid, f"unknown ({exc})"
    name = crs.name
    if name in ("", "unknown") and crs.coordinate_operation is not None:
        name = crs.coordinate_operation.method_name
    epsg = crs.to_epsg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "you will likely lose information": it is for display
        proj4 = crs.to_proj4()
    crs_text = name + (f" (EPSG:{epsg})" if epsg else "") + f" [{proj4}]"
    return grid, crs_text


def summarize_files(paths: list[Path]) -> str:
    """Readable summary of the given data files, read one at a time."""
    from meteovision.datasets.readers import open_dataset

    if not paths:
        raise CatalogError(Path("."), "no file to summarise")
    acc = _FileSummary()
    for path in paths:
        with open_dataset(path) as ds:
            acc.formats.add(str(ds.attrs.get("source_format", "?")))
            grid, crs_text = _grid_text(ds)
            acc.grids.setdefault(f"{grid}\n  crs: {crs_text}", []).append(path.name)
            acc.times.extend(
                np.asarray(ds["time"].values, dtype="datetime64[ns]").tolist()
                if "time" in ds.coords
                else [time_of_file(path)]
            )
            for name, var in ds.data_vars.items():
                if var.dims[-2:] != ("y", "x"):
                    continue
                stats = acc.variables.setdefault(
                    str(name),
                    _VarStats(str(var.attrs.get("units", "?")), str(var.attrs.get("long_name", "")), str(var.dtype)),
                )
                stats.update(var.values)
    times = np.array(acc.times, dtype="datetime64[ns]")
    step = modal_step(times)
    gaps = find_gaps(times, step)
    lines = [f"files: {len(paths)} ({paths[0].name}" + (f" .. {paths[-1].name})" if len(paths) > 1 else ")")]
    lines.append(f"format: {', '.join(sorted(acc.formats))}")
    step_text = "-" if step is None else f"{step / np.timedelta64(1, 's'):g} s"
    lines.append(f"time: {describe_times(times)} ({times.size} frame(s), step {step_text}, {len(gaps)} gap(s))")
    for a, b in gaps[:10]:
        lines.append(f"  gap: {describe_times([a])} -> {describe_times([b])}")
    for grid, names in acc.grids.items():
        lines.append(f"grid: {grid}" + (f"\n  ({len(names)} files)" if len(acc.grids) > 1 else ""))
    lines.append("variables:")
    for name, s in acc.variables.items():
        nan = 100.0 * (1 - s.valid / s.size) if s.size else 100.0
        if s.valid:
            values = f"min {s.minimum:.4g}, max {s.maximum:.4g}, mean {s.total / s.valid:.4g}"
        else:
            values = "no valid value"
        lines.append(f"  {name} [{s.units}] {s.long_name} ({s.dtype}): {values}, NaN {nan:.2f} %")
    return "\n".join(lines)


# -- sample folder ------------------------------------------------------------------------------------------
def _load_config(path: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(path, f"unreadable config: {exc}") from exc
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise CatalogError(path, "config has no `data:` section with a class_path")
    return data


def _tensor_text(name: str, t: torch.Tensor) -> str:
    text = f"{name} {str(t.dtype).replace('torch.', '')} {list(t.shape)}"
    if t.numel() == 0:
        return text
    if t.dtype == torch.bool:
        return text + f" (True {100.0 * t.float().mean().item():.1f} %)"
    tf = t.double()
    return text + f" (min {tf.min().item():.4g}, max {tf.max().item():.4g}, mean {tf.mean().item():.4g})"


def summarize_sample_folder(
    data_dir: Path, app: str | None = None, config: str | None = None, batch_size: int | None = None
) -> str:
    """Build and fit the folder's data module; describe splits, channels and one batch per split."""
    from meteovision.datasets.datamodules import datamodule_for_app, datamodule_from_config

    manifest = Manifest.load(data_dir)
    overrides: dict[str, Any] = {} if batch_size is None else {"loader": {"batch_size": batch_size}}
    if config:
        cfg = _load_config(config)
        init_args = dict(cfg.get("init_args") or {})
        if batch_size is not None:
            init_args.pop("batch_size", None)  # a deprecated flat key would be overridden anyway
            init_args["loader"] = {**(init_args.get("loader") or {}), "batch_size": batch_size}
        cfg = {**cfg, "init_args": init_args}
        dm = datamodule_from_config(cfg, str(data_dir))
    else:
        dm = datamodule_for_app(app or manifest.app, str(data_dir), **overrides)
    dm.setup("fit")
    desc = dm.data_description()
    lines = [
        f"sample data: {data_dir} (app {desc['app']}, seed {desc['seed']}, by {desc['created_by'] or '?'})",
        f"data module: {type(dm).__name__}",
    ]
    norm = dm.normalization
    lines.append("inputs (normalised: transform, then (x - mean) / std; NaN -> 0):")
    for i, name in enumerate(norm.channel_names):
        lines.append(
            f"  {name} [{norm.channel_units[i]}] {norm.transforms[i]}: mean {norm.mean[i]:.4g}, std {norm.std[i]:.4g}"
        )
    if len(dm.channel_names) != norm.num_channels:
        lines.append(f"  channels: {', '.join(dm.channel_names)}")
    target = dm.target_transform
    target_space = (
        "raw"
        if target is None
        else ", ".join(
            f"{n} {t} mean {m:.4g} std {s:.4g}"
            for n, t, m, s in zip(target.channel_names, target.transforms, target.mean, target.std, strict=True)
        )
    )
    lines.append(
        f"targets: {', '.join(dm.target_names)} [{', '.join(sorted(set(dm.target_units)))}] "
        f"(target space: {target_space})"
    )
    if dm.class_names:
        lines.append(f"classes: {', '.join(f'{i}={c}' for i, c in enumerate(dm.class_names))}")
    split = desc["split"]
    lines.append(
        f"split ({split['mode']} by {split['block']}, buffer {split['boundary_gap_minutes']:g} min, "
        f"{split['dropped_frames']} frame(s) dropped):"
    )
    for name, info in desc["splits"].items():
        span = f"{info['start']} .. {info['end']}" if info["start"] else "-"
        lines.append(f"  {name:5s} {info['frames']:6d} frames {info['samples']:7d} samples  {span}")
    lines.append("one batch per split:")
    loaders = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    for name, make in loaders.items():
        if desc["splits"][name]["samples"] == 0:
            lines.append(f"  {name}: no sample")
            continue
        batch = next(iter(make()))
        lines.append(f"  {name}: " + "; ".join(_tensor_text(k, v) for k, v in batch.items()))
    return "\n".join(lines)
