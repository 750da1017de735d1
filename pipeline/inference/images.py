"""Classification checkpoints (webcam snow cover, visibility) at predict time: class probabilities per image.

A webcam photo has no map grid, so the product is a table instead of a NetCDF file: one CSV
(one row per image: file, camera, time, predicted class, then one probability column
``p_<class>`` per class) and one JSON holding the same rows plus the provenance (checkpoint
sha256, configuration, package versions). Both are named by ``products.product_filename``
with the latest image time and an 8-hex digest of the input file names, e.g.
``meteovision_webcam_snow_resnet18_20240102T1200Z_classes_1a2b3c4d.csv``, so a rerun over the
same images finds (and skips) them. Images are resized exactly as in training
(``torch_datasets.resize_image``, to the datamodule's ``image_size``) and normalised with the
checkpoint's statistics.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from tqdm.auto import tqdm

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.read_guard import reading
from meteovision.datasets.readers import open_dataset
from meteovision.datasets.torch_datasets import resize_image
from meteovision.pipeline.checkpoints.loading import InferenceModel
from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.inference.engine import (
    UNIT_ERRORS,
    Outcome,
    PredictReport,
    PredictSettings,
    Status,
    ensure_output_folder,
    require_kind,
)
from meteovision.pipeline.inference.inputs import InputMismatchError, iso_minutes, utc_datetime
from meteovision.pipeline.inference.products import default_package_versions, product_filename
from meteovision.pipeline.inference.write_errors import OutputWriteError

log = logging.getLogger(__name__)

#: The datamodules' default, used when a checkpoint records no image size.
DEFAULT_IMAGE_SIZE = 128


@dataclass(frozen=True, eq=False)
class Image:
    """One webcam photo, resized for the network (uint8 ``[3, S, S]``)."""

    path: Path
    time: np.datetime64
    camera: str
    pixels: np.ndarray


def image_size_of(model: InferenceModel) -> int:
    """The side the training resized images to (older checkpoints: their datamodule arguments, read at load)."""
    size = model.meta.image_size
    if size is None:
        log.warning("%s records no image size; resizing to the default %d", model.path.name,
                    DEFAULT_IMAGE_SIZE)
        return DEFAULT_IMAGE_SIZE
    return size


def _stats_dict(model: InferenceModel) -> dict[str, Any] | None:
    stats = model.meta.normalization
    return stats.to_dict() if stats is not None else None


def class_names_of(model: InferenceModel) -> list[str]:
    names = list(model.meta.class_names)
    n = model.meta.out_channels
    return names if len(names) == n else [f"class{i}" for i in range(n)]


def read_image(path: Path, size: int) -> Image:
    """Read a photo through the readers and resize it as in training."""
    with reading(path), open_dataset(path) as ds:
        for var in ds.data_vars.values():
            if tuple(var.dims[-3:]) == ("band", "y", "x"):
                raw = np.asarray(var.values)
                raw = raw[0] if raw.ndim == 4 else raw
                time = np.atleast_1d(ds["time"].to_numpy())[0] if "time" in ds.coords else None
                if time is None:
                    raise InputMismatchError(path, "the image has no time")
                camera = str(ds.attrs.get("camera", ""))
                return Image(path, np.datetime64(time, "ns"), camera, resize_image(raw, size, path))
    raise InputMismatchError(path, "not an image: no (band, y, x) variable; a classification checkpoint "
                                   "takes photos")


def _digest(images: Sequence[Image]) -> str:
    names = "\n".join(sorted(img.path.name for img in images))
    return hashlib.sha256(names.encode("utf-8")).hexdigest()[:8]


def output_paths(model: InferenceModel, images: Sequence[Image], output_dir: Path) -> tuple[Path, Path]:
    """The CSV and JSON files for ``images``."""
    latest = max(img.time for img in images)
    stem = product_filename(model.application, model.model_name, utc_datetime(latest),
                            suffix=f"_classes_{_digest(images)}")
    return output_dir / f"{stem}.csv", output_dir / f"{stem}.json"


def _valid(csv_path: Path, json_path: Path, count: int) -> bool:
    if not (csv_path.is_file() and json_path.is_file()):
        return False
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, ValueError) as err:
        log.info("%s / %s unreadable: %s", csv_path, json_path, err)
        return False
    return isinstance(doc, dict) and len(doc.get("images", [])) == count and len(rows) == count + 1


def classify(model: InferenceModel, images: Sequence[Image], settings: PredictSettings) -> np.ndarray:
    """Class probabilities ``[n, K]`` (softmax), ``batch_size`` images at a time."""
    stats = model.input_stats()
    device = torch.device(settings.device)
    model.net.to(device)
    model.net.to(memory_format=torch.channels_last)
    model.net.eval()
    out = []
    for start in range(0, len(images), settings.batch_size):
        chunk = images[start : start + settings.batch_size]
        batch = np.stack([img.pixels.astype(np.float32) for img in chunk])
        x = stats.normalize(batch, channel_axis=1) if stats is not None else batch
        tensor = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                    enabled=settings.autocast_dtype is not None):
            logits = model.net(tensor)
        out.append(logits.detach().to("cpu", torch.float32).numpy())
    return softmax(np.concatenate(out), axis=1).astype(np.float32)


def _documents(model: InferenceModel, images: Sequence[Image], probs: np.ndarray, size: int,
               settings: PredictSettings) -> tuple[str, str]:
    classes = class_names_of(model)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "camera", "time", "predicted_class", *(f"p_{c}" for c in classes)])
    rows: list[dict[str, Any]] = []
    for img, p in zip(images, probs, strict=True):
        predicted = classes[int(np.argmax(p))]
        writer.writerow([img.path.name, img.camera, iso_minutes(img.time), predicted,
                         *(f"{float(v):.6f}" for v in p)])
        rows.append({
            "file": img.path.name,
            "camera": img.camera,
            "time": iso_minutes(img.time),
            "predicted_class": predicted,
            "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)},
        })
    doc: dict[str, Any] = {
        "application": model.application,
        "model_name": model.model_name,
        "checkpoint": model.path.name,
        "checkpoint_sha256": model.sha256,
        "class_names": classes,
        "config": {"image_size": size, "device": settings.device, "batch_size": settings.batch_size,
                   "precision": settings.precision_used, "normalization": _stats_dict(model)},
        "package_versions": default_package_versions(),
        "training_versions": dict(model.meta.versions),
        "images": rows,
    }
    return buffer.getvalue(), json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def predict_images(
    model: InferenceModel, paths: Iterable[str | Path], settings: PredictSettings
) -> PredictReport:
    """Classify every image; one CSV and one JSON for all of them (existing ones kept unless overwrite)."""
    require_kind(model, (TaskKind.CLASSIFICATION,), "predict_images")
    if settings.format != "netcdf" or settings.quicklook:
        log.info("classification writes CSV and JSON tables; --format and --quicklook do not apply")
    ensure_output_folder(settings)
    size = image_size_of(model)
    outcomes: list[Outcome] = []
    images: list[Image] = []
    for path in tqdm([Path(p) for p in paths], desc="images", unit="image", disable=not settings.progress):
        try:
            images.append(read_image(path, size))
        except UNIT_ERRORS as err:
            outcomes.append(Outcome.failure(path.name, err, (path,)))
    if not images:
        return PredictReport(tuple(outcomes))
    images.sort(key=lambda img: (img.time, img.path.name))
    csv_path, json_path = output_paths(model, images, settings.output_dir)
    if not settings.overwrite and _valid(csv_path, json_path, len(images)):
        log.info("%s exists, skipped", csv_path.name)
        outcomes.extend(
            Outcome(img.path.name, Status.SKIPPED, (csv_path, json_path), (img.path,), "output exists")
            for img in images
        )
        return PredictReport(tuple(outcomes))
    try:
        probs = classify(model, images, settings)
        csv_text, json_text = _documents(model, images, probs, size, settings)
        _write_text(csv_path, csv_text)
        _write_text(json_path, json_text)
    except OutputWriteError:
        raise  # the output folder's fault, not the images'
    except UNIT_ERRORS as err:
        outcomes.extend(Outcome.failure(img.path.name, err, (img.path,)) for img in images)
        return PredictReport(tuple(outcomes))
    log.info("wrote %s and %s (%d images)", csv_path, json_path, len(images))
    outcomes.extend(
        Outcome(img.path.name, Status.WRITTEN, (csv_path, json_path), (img.path,)) for img in images
    )
    return PredictReport(tuple(outcomes))
