"""GeoTIFF copies of a product for GIS users (QGIS, ArcGIS), written atomically.

Band layout: one band per (lead time, variable), lead-major, so with variables
``v0..vK-1`` band ``1 + step * K + k`` holds variable ``k`` at lead step ``step``
(an analysis has one step). Every band carries a description
(``"rain_rate 2018-08-24T18:30Z +30 min"``) and tags (variable, units, standard_name,
valid_time, reference_time, lead_time_minutes, flags). All bands share one dtype:
int8 with nodata -1 when every chosen variable is a mask or class field, float32
with nodata NaN otherwise. The grid must be regular (GeoTIFF has an affine transform).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
from affine import Affine

from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.inference.products import (
    Product,
    ProductGrid,
    ProductVariable,
    WriterError,
    lead_minutes,
)

log = logging.getLogger(__name__)

INT_NODATA = -1
_REL_TOL = 1e-6


def grid_transform(grid: ProductGrid, path: Path) -> tuple[Affine, bool, bool]:
    """Affine transform of the north-up raster, and whether rows / columns must be flipped to get it."""
    steps = []
    for axis, values in (("x", grid.x), ("y", grid.y)):
        diffs = np.diff(values)
        step = float(np.abs(diffs).mean())
        if not np.allclose(np.abs(diffs), step, rtol=_REL_TOL, atol=0.0):
            raise WriterError(path, f"GeoTIFF needs a regular grid; {axis} spacing varies "
                                    f"({np.abs(diffs).min()}..{np.abs(diffs).max()} m)")
        steps.append(step)
    dx, dy = steps
    flip_cols = bool(grid.x[1] < grid.x[0])
    flip_rows = bool(grid.y[1] > grid.y[0])
    west = float(grid.x.min()) - dx / 2.0
    north = float(grid.y.max()) + dy / 2.0
    return Affine(dx, 0.0, west, 0.0, -dy, north), flip_rows, flip_cols


def _band_tags(product: Product, var: ProductVariable, step: int) -> dict[str, str]:
    lead = product.leads[step]
    tags = {
        "variable": var.name,
        "long_name": var.long_name,
        "units": var.units,
        "kind": var.kind,
        "valid_time": product.valid_times[step].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reference_time": product.reference_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lead_time_minutes": str(lead_minutes(lead)),
    }
    if var.standard_name:
        tags["standard_name"] = var.standard_name
    if var.flag_values is not None and var.flag_meanings is not None:
        tags["flag_values"] = " ".join(str(v) for v in var.flag_values)
        tags["flag_meanings"] = " ".join(var.flag_meanings)
    return tags


def _is_valid_geotiff(path: Path, count: int) -> bool:
    try:
        with rasterio.open(path) as src:
            if src.count != count:
                return False
            src.read()
    except rasterio.errors.RasterioError as exc:
        log.info("%s is not a readable GeoTIFF: %s", path, exc)
        return False
    return True


def write_product_geotiff(product: Product, path: Path, variables: Sequence[str] | None = None,
                          overwrite: bool = False) -> Path:
    """Write the chosen ``variables`` (default all) of ``product`` as one multi-band GeoTIFF."""
    path = Path(path)
    chosen = [product.variable(n) for n in variables] if variables is not None else list(product.variables)
    if not chosen:
        raise WriterError(path, "no variables chosen for the GeoTIFF")
    count = product.n_steps * len(chosen)
    if path.exists():
        if not overwrite and _is_valid_geotiff(path, count):
            log.info("keeping existing GeoTIFF %s (overwrite=False)", path)
            return path
        if not overwrite:
            log.warning("existing %s is not a valid GeoTIFF for this product; rewriting it", path)

    transform, flip_rows, flip_cols = grid_transform(product.grid, path)
    integer = all(v.is_integer for v in chosen)
    dtype = "int8" if integer else "float32"
    nodata: float = INT_NODATA if integer else float("nan")
    ny, nx = product.grid.shape
    profile = {
        "driver": "GTiff", "dtype": dtype, "count": count, "width": nx, "height": ny,
        "crs": rasterio.crs.CRS.from_wkt(product.grid.crs.to_wkt()), "transform": transform, "nodata": nodata,
        "compress": "deflate", "predictor": 2 if integer else 3,
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }
    prov = product.provenance
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        try:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.update_tags(
                    title=product.title, institution=product.institution,
                    source=f"{prov.model_name} {prov.model_version}", application=prov.application,
                    reference_time=product.reference_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    checkpoint_sha256=prov.checkpoint_sha256 or "none",
                    band_layout="band = 1 + lead_step * n_variables + variable_index",
                    variables=" ".join(v.name for v in chosen),
                )
                units = []
                for step in range(product.n_steps):
                    for k, var in enumerate(chosen):
                        band = 1 + step * len(chosen) + k
                        values = var.stacked()[step]
                        if integer:
                            if np.issubdtype(values.dtype, np.floating):
                                values = np.where(np.isnan(values), INT_NODATA, np.nan_to_num(values))
                            values = values.astype(np.int8)
                        else:
                            values = values.astype(np.float32)
                        if flip_rows:
                            values = values[::-1]
                        if flip_cols:
                            values = values[:, ::-1]
                        dst.write(values, band)
                        tags = _band_tags(product, var, step)
                        dst.update_tags(band, **tags)
                        dst.set_band_description(
                            band, f"{var.name} {tags['valid_time']} +{tags['lead_time_minutes']} min")
                        units.append(var.units)
                dst.units = tuple(units)
        except rasterio.errors.RasterioError as exc:
            raise WriterError(path, f"writing GeoTIFF failed: {exc}") from exc
    log.info("wrote %s", path)
    return path
