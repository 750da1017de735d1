"""``generate_sample_data``: one entry point that writes any application's sample folder.

The folder layout is the contract in docs/CONTRACTS.md ("Sample-data layout"). Re-running
into the same folder replaces its files and removes data files a previous, larger run left
behind; a non-empty folder that is not a sample folder is never written into.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from meteovision.datasets.synthetic.common import (
    APPS,
    OutputFolder,
    SampleDataError,
    SampleSettings,
    default_settings,
)
from meteovision.datasets.synthetic.writers import write_text

LOG = logging.getLogger(__name__)

#: app -> module whose ``generate(app, folder, seed, settings) -> Manifest`` writes it
GENERATORS: dict[str, str] = {
    "bow_echo": "meteovision.datasets.synthetic.bow_echo",
    "nowcast_precip": "meteovision.datasets.synthetic.nowcast",
    "nowcast_reflectivity": "meteovision.datasets.synthetic.nowcast",
    "nowcast_cloudiness": "meteovision.datasets.synthetic.nowcast",
    "sat2precip": "meteovision.datasets.synthetic.sat2precip",
    "radar_cleaning": "meteovision.datasets.synthetic.radar_cleaning",
    "webcam_snow": "meteovision.datasets.synthetic.webcam",
    "webcam_visibility": "meteovision.datasets.synthetic.webcam",
}
MANIFEST = "manifest.json"
DATA_FOLDERS = ("radar", "satellite", "targets", "images")
DATA_SUFFIXES = (".h5", ".nc", ".jpg")


def _check_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SampleDataError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise SampleDataError(
            f"{out_dir}: folder is not empty and holds no {MANIFEST}; refusing to write sample data into it"
        )


def _prune(folder: OutputFolder) -> None:
    """Delete data files of an earlier run that this run did not write (they would join the globs)."""
    for name in DATA_FOLDERS:
        sub = folder.root / name
        if not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.is_file() and path.suffix in DATA_SUFFIXES and path not in folder.written:
                LOG.info("removing stale sample file %s", path)
                path.unlink()


def generate_sample_data(app: str, out_dir: Path, seed: int, settings: SampleSettings | None = None) -> Path:
    """Write ``app``'s synthetic data into ``out_dir``; returns the path of its ``manifest.json``."""
    if app not in GENERATORS:
        raise SampleDataError(f"unknown application {app!r}; choose one of {', '.join(APPS)}")
    if not isinstance(seed, int) or seed < 0:
        raise SampleDataError(f"seed must be a non-negative integer, got {seed!r}")
    settings = settings or default_settings(app)
    out_dir = Path(out_dir)
    _check_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = OutputFolder(out_dir)
    module = importlib.import_module(GENERATORS[app])
    manifest = module.generate(app, folder, seed, settings)
    _prune(folder)
    path = out_dir / MANIFEST
    write_text(path, manifest.to_json())
    LOG.info("%s: wrote %d files and %s", app, len(folder.written), path)
    return path
