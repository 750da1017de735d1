"""PNG quicklooks of one product field, for forecasters' eyes and for checking a run at a glance.

Uses matplotlib's object API on an Agg canvas (no pyplot, no screen, no global state), so
it is safe in a headless service and in threads. The colour scale follows the field:
rain rate on discrete levels (transparent below 0.1 mm h-1), reflectivity on NWS-like
colours, masks and classes as categories with a legend, probabilities 0..1, cloud
fraction in greys. Nodata (NaN) is drawn beige and named in a legend.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap, Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.inference.geography import draw_geography, has_geography
from meteovision.pipeline.inference.products import Product, ProductError, ProductVariable, lead_minutes

log = logging.getLogger(__name__)

RAIN_LEVELS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
RAIN_COLOURS = ("#a0d2ff", "#4ea5f5", "#1464d2", "#0fa00f", "#78d23c", "#fae632", "#fa9614", "#e61414")
RAIN_ABOVE = "#a000c8"
DBZ_LEVELS = tuple(float(v) for v in range(-10, 75, 5))
#: -10..5 dBZ in greys, then the US National Weather Service reflectivity colours from 5 to 70 dBZ.
DBZ_COLOURS = ("#e8e8e8", "#cfcfcf", "#b0b0b0",
               "#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802",
               "#e5bc00", "#fd9500", "#fd0000", "#d40000", "#bc0000", "#f800fd")
MASK_COLOURS = ("#f2f2f2", "#d62728")
NODATA_COLOUR = "#eadcc4"  # beige: apart from every scale's colours


@dataclass(frozen=True)
class ColourScale:
    """How one field is coloured: colormap, norm, colour-bar extension, and categories (if any)."""

    cmap: Colormap
    norm: Normalize
    extend: str = "neither"
    ticks: tuple[float, ...] | None = None
    categories: tuple[tuple[int, str], ...] = ()


def colour_scale(var: ProductVariable) -> ColourScale:
    """The colour scale suited to ``var`` (by kind, then units and standard name)."""
    if var.kind in ("mask", "classes"):
        assert var.flag_values is not None and var.flag_meanings is not None  # checked by ProductVariable
        values = tuple(sorted(var.flag_values))
        if len(values) == 2:
            colours = list(MASK_COLOURS)
        else:
            base = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
            colours = [to_hex(base(i % base.N)) for i in range(len(values))]
        cmap: Colormap = ListedColormap(colours)
        bounds = [values[0] - 0.5, *[(a + b) / 2 for a, b in itertools.pairwise(values)],
                  values[-1] + 0.5]
        meanings = dict(zip(var.flag_values, var.flag_meanings, strict=True))
        return ColourScale(cmap, BoundaryNorm(bounds, cmap.N),
                           categories=tuple((v, meanings[v]) for v in values))
    if var.kind == "probability":
        return ColourScale(matplotlib.colormaps["Blues"], Normalize(0.0, 1.0))
    if var.units == "mm h-1" or (var.standard_name or "").endswith(("precipitation_rate", "rainfall_rate")):
        rain = ListedColormap(RAIN_COLOURS).with_extremes(over=RAIN_ABOVE, under=(1.0, 1.0, 1.0, 0.0))
        return ColourScale(rain, BoundaryNorm(RAIN_LEVELS, rain.N), extend="max", ticks=RAIN_LEVELS)
    if var.units == "dBZ":
        dbz = ListedColormap(DBZ_COLOURS).with_extremes(over=DBZ_COLOURS[-1], under=(1.0, 1.0, 1.0, 0.0))
        return ColourScale(dbz, BoundaryNorm(DBZ_LEVELS, dbz.N), extend="both", ticks=DBZ_LEVELS[::2])
    if var.standard_name == "cloud_area_fraction":
        top = 100.0 if var.units == "%" else 1.0
        return ColourScale(matplotlib.colormaps["gray"], Normalize(0.0, top))
    finite = var.data[np.isfinite(var.data)]
    lo, hi = (var.valid_range if var.valid_range is not None
              else (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size
              else (0.0, 1.0))
    return ColourScale(matplotlib.colormaps["viridis"], Normalize(lo, hi if hi > lo else lo + 1.0))


def _clock(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def quicklook_title(product: Product, variable_name: str, lead_index: int = 0) -> str:
    """E.g. ``"rain rate | 2018-08-24 18:30 UTC | +30 min (ref 18:00 UTC)"``."""
    var = product.variable(variable_name)
    if not 0 <= lead_index < product.n_steps:
        raise ProductError(f"lead_index {lead_index} outside 0..{product.n_steps - 1}")
    valid = product.valid_times[lead_index]
    ref = product.reference_time
    if not product.is_nowcast:
        return f"{var.long_name} | {_clock(valid)} | analysis"
    ref_text = f"{ref:%H:%M} UTC" if ref.date() == valid.date() else _clock(ref)
    lead = lead_minutes(product.leads[lead_index])
    return f"{var.long_name} | {_clock(valid)} | +{lead} min (ref {ref_text})"


def write_quicklook(product: Product, variable_name: str, path: Path, lead_index: int = 0,
                    dpi: int = 100, geography: bool = True) -> Path:
    """Draw one field at one lead time as a PNG map (see ``quicklook_figure``); return ``path``."""
    path = Path(path)
    fig = quicklook_figure(product, variable_name, lead_index, dpi, geography)
    title = quicklook_title(product, variable_name, lead_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Title": title, "Software": "meteovision"})
    log.info("wrote quicklook %s", path)
    return path


def quicklook_figure(product: Product, variable_name: str, lead_index: int = 0, dpi: int = 100,
                     geography: bool = True) -> Figure:
    """The quicklook of one field at one lead time as a matplotlib figure.

    On a grid with a real CRS the map shows coastlines, borders and a lat/lon graticule in the
    product's projection (``geography.draw_geography``); ``geography=False`` (synthetic or webcam
    products) keeps plain axes in km of the projection.
    """
    var = product.variable(variable_name)
    title = quicklook_title(product, variable_name, lead_index)
    field = var.stacked()[lead_index].astype(np.float64)
    scale = colour_scale(var)
    grid = product.grid
    # Draw north-up, west-left whatever the order of the grid's coordinates.
    if grid.y[1] > grid.y[0]:
        field = field[::-1]
    if grid.x[1] < grid.x[0]:
        field = field[:, ::-1]
    dx = abs(float(grid.x[1] - grid.x[0]))
    dy = abs(float(grid.y[1] - grid.y[0]))
    unit = 1.0 if grid.crs.is_geographic else 1000.0  # degrees stay degrees, metres become km
    extent = ((float(grid.x.min()) - dx / 2) / unit, (float(grid.x.max()) + dx / 2) / unit,
              (float(grid.y.min()) - dy / 2) / unit, (float(grid.y.max()) + dy / 2) / unit)
    ny, nx = grid.shape
    fig = Figure(figsize=(7.5, max(3.0, min(12.0, 6.0 * ny / nx + 1.2))), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    nodata = np.isnan(field)
    image = ax.imshow(np.ma.masked_invalid(field), cmap=scale.cmap.with_extremes(bad=NODATA_COLOUR),
                      norm=scale.norm, extent=extent, origin="upper", interpolation="nearest")
    if geography and has_geography(grid.crs):
        draw_geography(ax, grid.crs, extent, unit)
    else:
        ax.set_xlabel("x (km)" if unit == 1000.0 else "x (degrees)")
        ax.set_ylabel("y (km)" if unit == 1000.0 else "y (degrees)")
    ax.set_title(title if len(title) <= 70 else title.replace(" | ", "\n", 1), fontsize=10)
    if scale.categories:
        handles = [Patch(facecolor=scale.cmap(scale.norm(v)), edgecolor="0.3", label=f"{v}: {meaning}")
                   for v, meaning in scale.categories]
        if nodata.any():
            handles.append(Patch(facecolor=NODATA_COLOUR, edgecolor="0.3", label="no data"))
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    else:
        if nodata.any():
            ax.legend(handles=[Patch(facecolor=NODATA_COLOUR, edgecolor="0.3", label="no data")],
                      loc="lower right", fontsize=8, framealpha=0.9)
        ticks = list(scale.ticks) if scale.ticks else None
        bar = fig.colorbar(image, ax=ax, extend=scale.extend, ticks=ticks, shrink=0.9)
        bar.set_label(var.units if var.units != "1" else "1 (fraction)")
    fig.tight_layout()
    return fig
