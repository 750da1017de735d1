"""The application table: each row agrees with its packaged config, and every stage reads the same values.

Training targets and products name their mask flags from the table, the training DataModule reads
labels through the one checked reader, and unknown names are refused by name.
"""

from __future__ import annotations

import csv
from importlib import import_module, resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml

from meteovision.core.applications import (
    APPLICATION_NAMES,
    SNOW_CLASSES,
    VISIBILITY_BINS_M,
    VISIBILITY_CLASSES,
    UnknownApplicationError,
    get_application,
)
from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.datamodules import ClassificationDataModule
from meteovision.datasets.errors import ReaderError
from meteovision.datasets.synthetic import APPS, SampleSettings, generate_sample_data
from meteovision.datasets.torch_datasets import visibility_classes
from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata
from meteovision.pipeline.demo import APPS as DEMO_APPS
from meteovision.pipeline.inference.outputs import product_variables
from tests.test_torch_datasets import event_times, write_webcam_folder

TASK_KINDS = {
    "SegmentationTask": TaskKind.SEGMENTATION,
    "NowcastTask": TaskKind.NOWCAST,
    "RegressionTask": TaskKind.REGRESSION,
    "ClassificationTask": TaskKind.CLASSIFICATION,
}


def _config(name: str) -> dict[str, Any]:
    text = resources.files("meteovision.configs").joinpath(get_application(name).config_file).read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@pytest.mark.parametrize("name", APPLICATION_NAMES)
def test_table_agrees_with_the_packaged_config(name: str) -> None:
    app = get_application(name)
    cfg = _config(name)
    model, data = cfg["model"], cfg["data"]
    model_args, data_args = model["init_args"], data["init_args"]
    assert model_args["application"] == name
    assert TASK_KINDS[model["class_path"].rsplit(".", 1)[-1]] is app.kind
    assert model_args["baseline"] == app.baseline
    assert data_args["generate_if_missing"] == name
    # the config's DataModule class exists under the path it names
    module, cls = data["class_path"].rsplit(".", 1)
    assert hasattr(import_module(module), cls)
    if app.kind is TaskKind.CLASSIFICATION:
        label = data_args["label"]
        assert label.startswith(app.label_column.removesuffix("_m"))  # type: ignore[union-attr]
        dm = ClassificationDataModule("unused", label=label)
        assert dm.application is app and app.output_channels() == len(app.classes)
        assert app.input_names == ("red", "green", "blue")
        return
    variables = data_args.get("variables") or data_args["input_variables"]
    assert tuple(variables) == app.input_names
    assert set(data_args.get("transforms") or {}) <= set(app.input_names) | set(app.target_names)
    if app.kind is TaskKind.NOWCAST:
        assert app.targets == app.inputs
        n_out = int(data_args["num_output_frames"])
        assert app.output_channels(n_out) == len(variables) * n_out
    else:
        assert data_args["target_variable"] == app.target_names[0]
        assert app.output_channels() == 1  # one logit (binary mask) or one field


def test_every_stage_lists_the_same_applications() -> None:
    assert APPLICATION_NAMES == APPS == DEMO_APPS
    assert len(APPLICATION_NAMES) == 8
    configs = {p.name for p in resources.files("meteovision.configs").iterdir() if p.name.endswith(".yaml")}
    assert {get_application(n).config_file for n in APPLICATION_NAMES} <= configs


def test_unknown_application_is_refused_by_name() -> None:
    with pytest.raises(UnknownApplicationError, match=r"unknown application 'hail'; known: bow_echo, nowcast_precip"):
        get_application("hail")


def test_classes_and_bins() -> None:
    assert get_application("webcam_snow").classes == SNOW_CLASSES == ("none", "partial", "full")
    vis = get_application("webcam_visibility")
    assert vis.classes == VISIBILITY_CLASSES and vis.bins_m == VISIBILITY_BINS_M == (200.0, 1000.0, 5000.0)
    # an edge belongs to the class above it: 200 m is "200-1000 m", 5000 m is ">5 km"
    got = visibility_classes(np.array([150.0, 200.0, 999.0, 1000.0, 4999.0, 5000.0, np.nan]), vis.bins_m)
    np.testing.assert_array_equal(got, [0, 1, 1, 2, 2, 3, -1])
    assert get_application("sat2precip").headline_metric.higher_is_better is False
    assert get_application("nowcast_reflectivity").headline_metric.key == "lead030_cont/csi@25"


@pytest.mark.parametrize(("name", "target"), [("radar_cleaning", "artefact_mask"), ("bow_echo", "bow_echo_mask")])
def test_mask_flags_of_training_targets_equal_the_products(name: str, target: str, tmp_path: Path) -> None:
    """The synthetic targets a network learns from and the product it writes say the same flag meanings."""
    settings = SampleSettings(size=32, events=1, frames_per_event=2)
    generate_sample_data(name, tmp_path / name, seed=0, settings=settings)
    files = sorted((tmp_path / name / "targets").glob("*.nc"))
    with xr.open_dataset(files[0], mask_and_scale=False) as ds:
        written = (tuple(int(v) for v in ds[target].attrs["flag_values"]), ds[target].attrs["flag_meanings"])
    meta = CheckpointMetadata.from_dict({"application": name, "task_kind": "segmentation", "model_name": "unet",
                                         "in_channels": 1, "out_channels": 1, "target_names": [target]})
    product_mask = product_variables(meta, np.full((1, 4, 4), 0.7, dtype=np.float32), threshold=0.5)[1]
    flags = get_application(name).flags
    assert flags is not None
    assert written == (flags.values, flags.meanings_attribute)
    assert (product_mask.flag_values, " ".join(product_mask.flag_meanings or ())) == written
    if name == "radar_cleaning":
        assert written[1] == "precipitation_or_no_echo artefact"


def test_training_reads_labels_through_the_checked_reader(tmp_path: Path) -> None:
    """An unknown snow class in labels.csv is refused when the DataModule reads it, naming file and line."""
    root = write_webcam_folder(tmp_path, event_times(2, 2, step_minutes=60), cameras=1)
    csv_path = root / "labels.csv"
    rows = list(csv.DictReader(csv_path.open()))
    rows[2]["snow_class"] = "snowy"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dm = ClassificationDataModule(str(root))
    with pytest.raises(ReaderError, match=r"labels\.csv: line 4: unknown snow_class 'snowy'"):
        _ = dm.records
