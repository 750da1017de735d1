"""Outputs of the predict stage: raw network outputs -> physical fields -> product variables -> files.

What each task kind writes (names known from the checkpoint alone, so an existing output can be
recognised and skipped before any model runs):

* segmentation, binary (one logit): ``<thing>_probability`` (float32 0-1, the sigmoid) and
  ``<thing>_mask`` (int8, flag_values 0 1, flag_meanings from the application table, as in the
  training targets), the mask being ``probability >= threshold``;
* segmentation, multiclass: ``probability_<class>`` per class (softmax) and ``<thing>_class``
  (int8 class index, flag_meanings = the class names);
* nowcast: one variable per input variable on ``(leadtime, y, x)``: rain rate in mm h-1
  (``lwe_precipitation_rate``), reflectivity in dBZ, ``cloud_area_fraction`` (1); other
  variables keep their name (lower-cased) and the checkpoint's units;
* regression (sat2precip): the target in physical units (rain rate in mm h-1), clamped at 0.

Nodata is NaN in every field (the writers store their fill value there).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import rasterio
import rasterio.errors
from scipy.special import expit, softmax

from meteovision.core.applications import APPLICATIONS
from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, InferenceModel
from meteovision.pipeline.inference.atomic import is_valid_netcdf
from meteovision.pipeline.inference.inputs import utc_datetime
from meteovision.pipeline.inference.products import (
    Product,
    ProductGrid,
    ProductVariable,
    Provenance,
    product_filename,
)

log = logging.getLogger(__name__)

OutputFormat = Literal["netcdf", "geotiff"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
SUFFIXES: dict[str, str] = {"netcdf": ".nc", "geotiff": ".tif"}
GRIDDED_KINDS = tuple(kind for kind in TaskKind if kind.is_gridded)



class OutputError(MeteovisionError):
    """The checkpoint's outputs cannot be turned into a product (unknown task kind, bad names)."""


@dataclass(frozen=True)
class Quantity:
    """How a physical model output is written: product name, CF constructor, physical bounds."""

    product_name: str
    units: str
    make: Callable[[np.ndarray, str], ProductVariable]
    bounds: tuple[float, float] | None


QUANTITIES: dict[str, Quantity] = {
    "RATE": Quantity("rain_rate", "mm h-1", ProductVariable.rain_rate, (0.0, math.inf)),
    "DBZH": Quantity("reflectivity", "dBZ", ProductVariable.reflectivity, None),
    "TH": Quantity("reflectivity", "dBZ", ProductVariable.reflectivity, None),
    "cloud_area_fraction": Quantity("cloud_area_fraction", "1", ProductVariable.cloud_fraction, (0.0, 1.0)),
}


def _token(text: str) -> str:
    """A valid product variable name made of ``text`` (letters, digits, _; starts with a letter)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    if not name or not name[0].isalpha():
        name = f"v_{name}"
    return name


def _binary(meta: CheckpointMetadata) -> bool:
    return meta.out_channels == 1


def _thing(meta: CheckpointMetadata) -> str:
    """What a segmentation masks, from its target name: ``bow_echo_mask`` -> ``bow_echo``."""
    base = meta.target_names[0] if meta.target_names else meta.application
    return _token(base.removesuffix("_mask"))


def _mask_meanings(meta: CheckpointMetadata, thing: str) -> tuple[str, str]:
    """flag_meanings (0, 1) of a binary mask: the application table's, so products say what the training
    targets said; ``no_<thing> <thing>`` for an application outside the table."""
    app = APPLICATIONS.get(meta.application or "")
    if app is not None and app.flags is not None and len(app.flags.meanings) == 2:
        return app.flags.meanings[0], app.flags.meanings[1]
    return f"no_{thing}", thing


def _class_names(meta: CheckpointMetadata) -> list[str]:
    n = meta.out_channels
    names = list(meta.class_names)
    if len(names) != n:
        names = [f"class{i}" for i in range(n)]
    return [_token(c) for c in names]


def _units_per_variable(meta: CheckpointMetadata) -> list[str]:
    names = meta.variables_per_step
    units = list(meta.target_units)
    return units[: len(names)] if len(units) >= len(names) else ["1"] * len(names)


def _quantity(variable: str, units: str) -> Quantity | None:
    """The known quantity ``variable`` is, when its units agree (never relabel other units)."""
    q = QUANTITIES.get(variable)
    return q if q is not None and q.units == units else None


def variable_names(meta: CheckpointMetadata) -> list[str]:
    """Names of the product variables a checkpoint's outputs become, in order."""
    kind = meta.task_kind
    if kind is TaskKind.SEGMENTATION:
        thing = _thing(meta)
        if _binary(meta):
            return [f"{thing}_probability", f"{thing}_mask"]
        return [f"probability_{c}" for c in _class_names(meta)] + [f"{thing}_class"]
    if kind in (TaskKind.NOWCAST, TaskKind.REGRESSION):
        out = []
        for variable, units in zip(meta.variables_per_step, _units_per_variable(meta), strict=True):
            q = _quantity(variable, units)
            out.append(q.product_name if q is not None else _token(variable.lower()))
        if len(set(out)) != len(out):
            raise OutputError(f"outputs {list(meta.variables_per_step)} map to repeated product names {out}")
        return out
    raise OutputError(f"task kind {kind.value!r} has no gridded product "
                      f"(gridded kinds: {[k.value for k in GRIDDED_KINDS]})")


def physical_outputs(model: InferenceModel, raw: np.ndarray) -> np.ndarray:
    """Raw network outputs ``[K, H, W]`` -> probabilities (segmentation) or physical units (others).

    Segmentation: sigmoid of one logit, softmax of several. Nowcast and regression: the target
    space is undone with the checkpoint's target statistics; rain rates are clamped at 0 and
    fractions to 0..1 (a regression target is always clamped at 0).
    """
    meta = model.meta
    kind = meta.task_kind
    if kind is TaskKind.SEGMENTATION:
        probs = expit(raw) if raw.shape[0] == 1 else softmax(raw, axis=0)
        return np.asarray(probs, dtype=np.float32)
    if kind not in (TaskKind.NOWCAST, TaskKind.REGRESSION):
        raise OutputError(f"task kind {kind.value!r} has no gridded output")
    stats = model.target_stats()
    out = stats.denormalize(raw, channel_axis=0) if stats is not None else raw.astype(np.float32)
    variables = meta.variables_per_step
    units = _units_per_variable(meta)
    n = max(len(variables), 1)
    for v, (variable, unit) in enumerate(zip(variables, units, strict=True)):
        q = _quantity(variable, unit)
        lo, hi = q.bounds if q is not None and q.bounds is not None else (-math.inf, math.inf)
        if kind is TaskKind.REGRESSION:
            lo = max(lo, 0.0)
        if math.isfinite(lo) or math.isfinite(hi):
            np.clip(out[v::n], lo, hi, out=out[v::n])
    return out


def product_variables(
    meta: CheckpointMetadata, outputs: np.ndarray, threshold: float
) -> tuple[ProductVariable, ...]:
    """Product variables from ``physical_outputs`` (NaN = nodata), named as :func:`variable_names` says."""
    kind = meta.task_kind
    names = variable_names(meta)
    if kind is TaskKind.SEGMENTATION:
        thing = _thing(meta)
        label = thing.replace("_", " ")
        nodata = np.isnan(outputs).any(axis=0)
        if _binary(meta):
            prob = outputs[0]
            mask = np.where(nodata, np.nan, (prob >= threshold).astype(np.float32))
            meanings = _mask_meanings(meta, thing)
            return (
                ProductVariable.probability(prob, names[0], f"probability of {label}"),
                ProductVariable.mask(mask, names[1], f"{label} mask (probability >= {threshold:g})",
                                     meanings),
            )
        classes = _class_names(meta)
        index = np.where(nodata, np.nan, np.nan_to_num(outputs).argmax(axis=0).astype(np.float32))
        probs = tuple(ProductVariable.probability(outputs[k], names[k], f"probability of class {c}")
                      for k, c in enumerate(classes))
        return (*probs, ProductVariable.classes(index, names[-1], f"most probable {label} class", classes))
    variables = meta.variables_per_step
    units = _units_per_variable(meta)
    n = len(variables)
    out = []
    for v, (variable, unit, name) in enumerate(zip(variables, units, names, strict=True)):
        data = outputs[v::n] if kind is TaskKind.NOWCAST else outputs[v]
        q = _quantity(variable, unit)
        if q is not None:
            out.append(q.make(data, name))
        else:
            out.append(ProductVariable(name, data, unit, None, f"predicted {variable}", "continuous"))
    return tuple(out)


# ---------------------------------------------------------------------------- products and files


def output_path(model: InferenceModel, reference_time: np.datetime64, fmt: str, output_dir: Path) -> Path:
    """Deterministic file of the product made at ``reference_time`` (``products.product_filename``)."""
    name = product_filename(model.application, model.model_name, utc_datetime(reference_time),
                            suffix=SUFFIXES[fmt])
    return Path(output_dir) / name


def has_valid_output(path: Path, fmt: str, meta: CheckpointMetadata) -> bool:
    """True when ``path`` already holds this checkpoint's product (all variables readable)."""
    if not path.is_file():
        return False
    names = variable_names(meta)
    if fmt == "netcdf":
        return is_valid_netcdf(path, names)
    steps = meta.num_lead_times if meta.task_kind is TaskKind.NOWCAST else 1
    try:
        with rasterio.open(path) as src:
            if src.count != steps * len(names):
                return False
            src.read()
    except rasterio.errors.RasterioError as exc:
        log.info("%s is not a readable GeoTIFF: %s", path, exc)
        return False
    return True


def build_product(
    model: InferenceModel,
    variables: Sequence[ProductVariable],
    grid: ProductGrid,
    reference_time: np.datetime64,
    leads: Sequence[timedelta] | None,
    input_files: Sequence[Path],
    config: Mapping[str, Any],
    institution: str,
) -> Product:
    """A :class:`Product` with this checkpoint's provenance."""
    kind = model.meta.task_kind.value
    provenance = Provenance(
        application=model.application,
        model_name=model.model_name,
        model_version=f"checkpoint {model.path.name} (sha256 {model.sha256[:12]})",
        checkpoint_sha256=model.sha256,
        config=dict(config),
        input_files=tuple(str(p) for p in input_files),
    )
    return Product(
        variables=tuple(variables),
        grid=grid,
        reference_time=utc_datetime(reference_time),
        lead_times=tuple(leads) if leads is not None else None,
        provenance=provenance,
        title=f"meteovision {model.application} {kind} by {model.model_name}",
        institution=institution,
    )


def write_product(product: Product, path: Path, fmt: str, overwrite: bool, quicklook: bool) -> list[Path]:
    """Write ``product`` (NetCDF or GeoTIFF) and, when asked, one PNG per variable and lead time."""
    from meteovision.pipeline.inference.geotiff_writer import write_product_geotiff
    from meteovision.pipeline.inference.netcdf_writer import write_product_netcdf

    written = [write_product_netcdf(product, path, overwrite=overwrite) if fmt == "netcdf"
               else write_product_geotiff(product, path, overwrite=overwrite)]
    if quicklook:
        written.extend(write_quicklooks(product, path.parent, overwrite))
    return written


def write_quicklooks(product: Product, folder: Path, overwrite: bool) -> list[Path]:
    """PNGs ``<product name>[_leadNNNNmin]_<variable>.png``; existing ones are kept unless ``overwrite``."""
    from meteovision.pipeline.inference.quicklook import write_quicklook

    prov = product.provenance
    paths = []
    for var in product.variables:
        for step in range(product.n_steps):
            lead = product.leads[step] if product.is_nowcast else None
            name = product_filename(prov.application, prov.model_name, product.reference_time, lead,
                                    suffix=f"_{var.name}.png")
            path = folder / name
            if path.exists() and not overwrite:
                log.info("keeping existing quicklook %s", path)
            else:
                write_quicklook(product, var.name, path, lead_index=step)
            paths.append(path)
    return paths
