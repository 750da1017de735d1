"""Quicklook PNGs: one per kind of field, titled with the times, coloured by the field's scale."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyproj
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from meteovision.pipeline.inference.products import Product, ProductError, ProductGrid, ProductVariable, Provenance
from meteovision.pipeline.inference.quicklook import (
    DBZ_COLOURS,
    NODATA_COLOUR,
    RAIN_ABOVE,
    RAIN_COLOURS,
    colour_scale,
    quicklook_title,
    write_quicklook,
)

CRS = pyproj.CRS.from_epsg(3067)
REF = datetime(2018, 8, 24, 18, 0)
NY, NX = 60, 80


def make(variables: list[ProductVariable], leads: list[int] | None = None, ref: datetime = REF) -> Product:
    g = ProductGrid(300_000.0 + 1000.0 * np.arange(NX), 7_000_000.0 - 1000.0 * np.arange(NY), CRS)
    return Product(variables, g, ref, None if leads is None else [timedelta(minutes=m) for m in leads],
                   Provenance("test", "unet", "1.0", None), title="test", institution="Test Institute")


def blob(scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:NY, 0:NX]
    return (scale * np.exp(-((xx - 40.0) ** 2 + (yy - 30.0) ** 2) / 300.0)).astype(np.float32)


def fields() -> dict[str, Product]:
    rain = np.stack([blob(30.0), blob(60.0), blob(90.0)])
    rain[:, :5] = np.nan
    mask = (blob(1.0) > 0.5).astype(np.float32)
    classes = np.digitize(blob(1.0), [0.2, 0.6]).astype(np.int8)
    return {
        "rain_rate": make([ProductVariable.rain_rate(rain)], leads=[30, 60, 90]),
        "reflectivity": make([ProductVariable.reflectivity(blob(70.0) - 10.0)]),
        "bow_echo_mask": make([ProductVariable.mask(mask, "bow_echo_mask", "bow echo mask",
                                                    ("no_bow_echo", "bow_echo"))]),
        "snow_class": make([ProductVariable.classes(classes, "snow_class", "snow class",
                                                    ["none", "partial", "full"])]),
        "probability_rain": make([ProductVariable.probability(blob(1.0), "probability_rain",
                                                              "probability of rain")]),
        "cloud_area_fraction": make([ProductVariable.cloud_fraction(blob(1.0))]),
    }


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA"))


def share_of(image: np.ndarray, colour: str | tuple[float, ...]) -> float:
    rgba = np.round(np.array(to_rgba(colour)) * 255).astype(np.uint8)
    return float(np.all(np.abs(image.astype(int) - rgba) <= 1, axis=-1).mean())


@pytest.mark.parametrize("name", sorted(fields()))
def test_quicklook_png_for_every_kind(name: str, tmp_path: Path) -> None:
    prod = fields()[name]
    lead_index = prod.n_steps - 1
    path = write_quicklook(prod, name, tmp_path / f"{name}.png", lead_index=lead_index)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 15_000
    with Image.open(path) as img:
        assert img.size[0] == 750  # 7.5 in at 100 dpi
        assert img.text["Title"] == quicklook_title(prod, name, lead_index)
    image = pixels(path)
    assert len(np.unique(image.reshape(-1, 4), axis=0)) > 20  # a map, not a blank canvas
    assert os.listdir(tmp_path) == [f"{name}.png"]


def test_titles_give_valid_and_lead_times() -> None:
    prods = fields()
    assert quicklook_title(prods["rain_rate"], "rain_rate", 0) == \
        "rain rate | 2018-08-24 18:30 UTC | +30 min (ref 18:00 UTC)"
    assert quicklook_title(prods["rain_rate"], "rain_rate", 2) == \
        "rain rate | 2018-08-24 19:30 UTC | +90 min (ref 18:00 UTC)"
    assert quicklook_title(prods["reflectivity"], "reflectivity") == \
        "radar reflectivity | 2018-08-24 18:00 UTC | analysis"
    late = make([ProductVariable.rain_rate(np.stack([blob(1.0)] * 2))], leads=[15, 45],
                ref=datetime(2018, 8, 24, 23, 30))
    assert quicklook_title(late, "rain_rate", 1) == \
        "rain rate | 2018-08-25 00:15 UTC | +45 min (ref 2018-08-24 23:30 UTC)"
    with pytest.raises(ProductError):
        quicklook_title(late, "rain_rate", 2)
    with pytest.raises(ProductError):
        quicklook_title(late, "reflectivity", 0)


def test_rain_scale_levels() -> None:
    scale = colour_scale(ProductVariable.rain_rate(np.zeros((2, 2))))
    colour = lambda value: scale.cmap(scale.norm(value))  # noqa: E731
    assert colour(0.05)[3] == 0.0  # below 0.1 mm h-1: transparent
    assert colour(0.0)[3] == 0.0
    assert colour(0.3) == to_rgba(RAIN_COLOURS[0])
    assert colour(0.6) == to_rgba(RAIN_COLOURS[1])
    assert colour(7.0) == to_rgba(RAIN_COLOURS[4])  # 5..10 mm h-1
    assert colour(75.0) == to_rgba(RAIN_COLOURS[7])  # 50..100 mm h-1
    assert colour(150.0) == to_rgba(RAIN_ABOVE)
    dbz = colour_scale(ProductVariable.reflectivity(np.zeros((2, 2))))
    assert dbz.cmap(dbz.norm(42.0)) == to_rgba(DBZ_COLOURS[10])  # NWS 40-45 dBZ, dark yellow
    assert dbz.cmap(dbz.norm(-20.0))[3] == 0.0


def test_drawn_colours_follow_the_values(tmp_path: Path) -> None:
    """A uniform 7 mm h-1 field is drawn in the 5-10 colour; a 42 dBZ field in the 40-45 colour."""
    rain = np.full((NY, NX), 7.0, np.float32)
    rain[:20] = np.nan
    image = pixels(write_quicklook(make([ProductVariable.rain_rate(rain)]), "rain_rate", tmp_path / "r.png"))
    assert share_of(image, RAIN_COLOURS[4]) > 0.15
    assert share_of(image, NODATA_COLOUR) > 0.08
    assert share_of(image, RAIN_COLOURS[0]) < 0.01  # only the colour bar
    dbz = make([ProductVariable.reflectivity(np.full((NY, NX), 42.0))])
    image = pixels(write_quicklook(dbz, "reflectivity", tmp_path / "d.png"))
    assert share_of(image, DBZ_COLOURS[10]) > 0.25
    assert share_of(image, NODATA_COLOUR) < 0.001


def test_mask_legend_names_flags(tmp_path: Path) -> None:
    prod = fields()["bow_echo_mask"]
    scale = colour_scale(prod.variables[0])
    assert scale.categories == ((0, "no_bow_echo"), (1, "bow_echo"))
    assert scale.cmap(scale.norm(1)) != scale.cmap(scale.norm(0))
    image = pixels(write_quicklook(prod, "bow_echo_mask", tmp_path / "m.png"))
    assert share_of(image, scale.cmap(scale.norm(1))) > 0.02
    assert share_of(image, scale.cmap(scale.norm(0))) > 0.2
