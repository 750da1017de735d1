"""Explain a network: what each convolution filter responds to (activation maximisation).

Works on any registry model (U-Net, DeepLabV3+, Half-UNet, VGG, ResNet), trained or not. The
gradient ascent, its objective and the clear-rise rule are :mod:`meteovision.pipeline.explain.ascent`
(re-exported here); this module draws the grid (each filter's response before -> after, and by how
many spreads it rose), writes the ``.npz`` and runs a checkpoint's layer (:func:`explain_filters`).

Layers and the frozen network are :mod:`meteovision.pipeline.explain.layers`; where a prediction
looks (saliency) is :mod:`meteovision.pipeline.explain.saliency`; the command line is
:mod:`meteovision.pipeline.explain.cli`; :func:`explain_for_report` gives the demo its figures.
"""

from __future__ import annotations

import json
import logging
import re
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from meteovision.core.task_kinds import TaskKind
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, InferenceModel, load_inference_model
from meteovision.pipeline.explain.ascent import (
    PROBES,
    RISE_MARGIN,
    AscentSettings,
    FilterResult,
    clearly_raised,
    gaussian_blur,
    input_floor,
    most_excitable,
    rise_text,
    visualize_filters,
)
from meteovision.pipeline.explain.layers import (
    TRACE_SIZE,
    ExplainError,
    LayerInfo,
    conv_layers,
    device_of,
    encoder_ends,
    frozen,
    parse_filters,
    resolve_layer,
)
from meteovision.pipeline.inference.atomic import atomic_write

log = logging.getLogger(__name__)

#: Tiles per row of a filter grid (filters times input channels).
GRID_TILES = 4

__all__ = [
    "PROBES",
    "RISE_MARGIN",
    "AscentSettings",
    "ExplainError",
    "FilterResult",
    "LayerInfo",
    "clearly_raised",
    "conv_layers",
    "default_size",
    "device_of",
    "encoder_ends",
    "explain_filters",
    "explain_for_report",
    "frozen",
    "gaussian_blur",
    "input_floor",
    "most_excitable",
    "parse_filters",
    "resolve_layer",
    "rise_text",
    "visualize_filters",
]

# ---------------------------------------------------------------------------- figures and files


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "layer"


def channel_names_of(meta: CheckpointMetadata, count: int) -> list[str]:
    """The checkpoint's input channel names, or ``channel0..`` when it records none that fit."""
    names = list(meta.channel_names)
    return names if len(names) == count else [f"channel{i}" for i in range(count)]


def save_png(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": "meteovision"})
    log.info("wrote %s", path)
    return path


def write_filter_grid(result: FilterResult, path: Path, title: str = "") -> Path:
    """PNG: per filter, one tile per input channel (named), titled with its response before -> after.

    Filters run left to right, :data:`GRID_TILES` tiles a row. Each tile shows the receptive field
    and a pixel around it: the input is featureless elsewhere.
    """
    n, c = result.inputs.shape[:2]
    names = list(result.channel_names) or [f"channel{i}" for i in range(c)]
    size_y, size_x = result.inputs.shape[-2:]
    y0, y1, x0, x1 = result.receptive_field if result.receptive_field[1] else (0, size_y, 0, size_x)
    y0, y1, x0, x1 = max(y0 - 1, 0), min(y1 + 1, size_y), max(x0 - 1, 0), min(x1 + 1, size_x)
    per_row = max(1, min(n, GRID_TILES // c))
    rows = -(-n // per_row)
    tile = 1.9
    fig = Figure(figsize=(max(6.0, 0.4 + tile * c * per_row), 1.3 + (tile + 0.25) * rows), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, c * per_row, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    raised = result.raised
    for i in range(n):
        shown = result.inputs[i, :, y0:y1, x0:x1]
        vmax = float(np.abs(shown).max()) or 1.0
        text = rise_text(float(result.initial_activation[i]), float(result.final_activation[i]),
                         float(result.spread[i]))
        note = "" if raised[i] else ", no clear rise"
        for j in range(c):
            ax = axes[i // per_row][(i % per_row) * c + j]
            ax.set_axis_on()
            ax.imshow(shown[j], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            head = f"filter {result.filters[i]}" + (f", {names[j]}" if c > 1 else "")
            ax.set_title(f"{head}\n{text}{note}" if j == 0 else head, fontsize=7,
                         color="black" if raised[i] else "firebrick")
    heading = title or f"{result.layer}: inputs that excite each filter"
    channel = f"; channel {names[0]}" if c == 1 else ""
    fig.suptitle(textwrap.fill(
        f"{heading}. Each filter's response (pre-activation at the centre of its map) to a featureless "
        f"input -> to the one shown, and the rise in sd of its response to random inputs (clear: >= "
        f"{RISE_MARGIN:g} sd). Shown: {y1 - y0} x {x1 - x0} px around the receptive field, normalised "
        f"input units{channel}", 110 if fig.get_figwidth() > 7 else 80), fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def save_filter_result(result: FilterResult, path: Path) -> Path:
    """``.npz`` with the optimised inputs, the filters, the responses before and after, the settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            inputs=result.inputs,
            filters=np.asarray(result.filters, dtype=np.int64),
            initial_activation=result.initial_activation,
            final_activation=result.final_activation,
            spread=result.spread,
            raised=result.raised,
            receptive_field=np.asarray(result.receptive_field, dtype=np.int64),
            channel_names=np.asarray(result.channel_names, dtype=str),
            layer=np.asarray(result.layer),
            seed=np.asarray(result.seed),
            settings=np.asarray(json.dumps(asdict(result.settings), sort_keys=True)),
        )
    log.info("wrote %s", path)
    return path


def default_size(model: InferenceModel) -> int:
    """Input side to trace and visualise a checkpoint at: a classifier's image size, else 64."""
    if model.meta.task_kind is TaskKind.CLASSIFICATION:
        from meteovision.pipeline.inference.images import image_size_of

        return image_size_of(model)
    return TRACE_SIZE


def explain_filters(
    model: InferenceModel,
    layer: str,
    filters: str | Sequence[int] | None,
    out_dir: Path,
    size: int = TRACE_SIZE,
    settings: AscentSettings | None = None,
    seed: int = 0,
    default_count: int = 16,
) -> tuple[Path, Path]:
    """Visualise ``filters`` of ``layer`` (a name, ``first`` or ``last``) of a checkpoint; PNG and npz paths.

    ``filters`` is a list, a text such as ``"0-15"``, or None for the ``default_count`` filters
    that random starting fields excite most, on their own scale (:func:`most_excitable`). The input
    stays above the normalised physical floor of each channel (:func:`input_floor`). The files are
    ``filters_<layer>.png`` and ``.npz`` in ``out_dir``.
    """
    settings = settings or AscentSettings()
    in_channels = model.meta.in_channels
    layers = conv_layers(model.net, in_channels, size)
    info = resolve_layer(layers, layer)
    if info.part == "unused":
        raise ExplainError(f"layer {info.name!r} is not run by the network's forward pass")
    floors = input_floor(model.input_stats(), in_channels)
    if filters is None:
        chosen = most_excitable(model.net, info, in_channels, default_count, size, settings, seed, floors)
    elif isinstance(filters, str):
        chosen = parse_filters(filters, info.out_channels)
    else:
        chosen = [int(f) for f in filters]
    result = visualize_filters(model.net, info.name, chosen, in_channels, size, settings, seed, floors)
    result = replace(result, channel_names=tuple(channel_names_of(model.meta, in_channels)))
    flat = [f for f, ok in zip(result.filters, result.raised, strict=True) if not ok]
    if flat:
        log.warning("%s: filters %s do not rise clearly (>= %g sd of their response to random inputs) above "
                    "their response to a featureless input", info.name, flat, RISE_MARGIN)
    stem = f"filters_{_safe_stem(info.name)}"
    title = (f"{model.application} / {model.model_name}: {info.name} (depth {info.depth}"
             f"{', ' + info.mark if info.mark else ''}), {settings.steps} steps, seed {seed}")
    png = write_filter_grid(result, Path(out_dir) / f"{stem}.png", title)
    return png, save_filter_result(result, Path(out_dir) / f"{stem}.npz")


#: The demo's ascent: enough steps for the deep layers of its short-trained networks.
REPORT_SETTINGS = AscentSettings(steps=64)


def explain_for_report(ckpt: Path, out_dir: Path) -> list[Path]:
    """Filter grids of the first and last encoder convolutions (the 8 most excitable filters each): PNGs.

    Each PNG has its ``.npz`` beside it (the responses before and after).
    """
    model = load_inference_model(ckpt)
    size = default_size(model)
    first, last = encoder_ends(conv_layers(model.net, model.meta.in_channels, size))
    return [explain_filters(model, info.name, None, out_dir, size, REPORT_SETTINGS, seed=0, default_count=8)[0]
            for info in dict.fromkeys([first, last])]
