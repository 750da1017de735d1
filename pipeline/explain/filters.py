"""Explain a network: what each convolution filter responds to (activation maximisation).

Works on any registry model (U-Net, DeepLabV3+, Half-UNet, VGG, ResNet), trained or not.
Following Erhan et al. 2009 ("Visualizing higher-layer features of a deep network") and Olah et
al. 2017 ("Feature Visualization", Distill), the network stays frozen and its input is changed
by gradient ascent until one filter of one convolution responds strongly.

The objective is the filter's *pre-activation*: the mean of the convolution's own output (before
any BatchNorm or ReLU that follows it) over its map, a border left out. The input lives in the
checkpoint's normalised input space, kept within a plausible range: at most ``clamp`` standard
deviations above the training mean, and not below the normalised physical floor (no rain, no
reflectivity below the transform's clip) where the channel's transform has one.

Deep layers of a ReLU network are dead near a featureless input: a trained radar network's
deep filters ignore anything below moderate rain, so ascent from small noise never moves them.
The ascent therefore starts from a smooth random field spread over the plausible range (the one
of :data:`PROBES` candidates that the filter responds to most), and uses
Adam (each pixel's step scaled by its own gradient history), with a small roll every step
(jitter), a light blur every few steps and an optional L2 decay so that the picture stays smooth.
The response reported *before* is the filter's response to a featureless input (the training
mean everywhere); *after* is its response to the optimised input. Some filters are inhibited by
every input: their largest response is the featureless one. When no filters are named, those
that a few random starting fields excite most are drawn (:func:`most_excitable`).

Layers and the frozen network are :mod:`meteovision.pipeline.explain.layers`; where a prediction
looks (saliency) is :mod:`meteovision.pipeline.explain.saliency`; the command line is
:mod:`meteovision.pipeline.explain.cli`; :func:`explain_for_report` gives the demo its figures.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.normalization import DBZ_CLIP, NormalizationStats
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, InferenceModel, load_inference_model
from meteovision.pipeline.explain.layers import (
    TRACE_SIZE,
    ExplainError,
    LayerInfo,
    capture,
    conv_layers,
    device_of,
    encoder_ends,
    frozen,
    parse_filters,
    resolve_layer,
)
from meteovision.pipeline.inference.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = [
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
    "parse_filters",
    "resolve_layer",
    "visualize_filters",
]

#: A filter counts as raised when its response grows by at least this many times its spread (the
#: standard deviation of its pre-activation over the candidate starting fields) ...
RISE_MARGIN = 1.0
#: ... and ends at least this many times the magnitude of its featureless response.
RISE_FACTOR = 2.0
#: Candidate starting fields: each filter starts from the one it responds to most; they also rank a
#: layer's filters when none are named (:func:`most_excitable`).
PROBES = 8
#: Physical floor of a transform's input (rain rates are >= 0; reflectivity is clipped below).
TRANSFORM_FLOOR = {"log1p": 0.0, "log10_rain": 0.0, "clip_dbz": DBZ_CLIP[0]}

# ---------------------------------------------------------------------------- activation maximisation


@dataclass(frozen=True)
class AscentSettings:
    """Gradient ascent and its regularisers (all in normalised input units).

    ``lr``: Adam's step; ``init_sigma``: smoothness (pixels) of the random starting field and
    ``init_spread`` its standard deviation as a share of the plausible range;
    ``jitter``: largest roll in pixels per step; ``blur_sigma`` every ``blur_every`` steps
    (0: never); ``l2_decay``: the input shrinks towards the training mean by this fraction each
    step; ``clamp``: values kept below +clamp and above -clamp (or the physical floor, see
    :func:`input_floor`), in standard deviations of the training data; ``border_fraction``: share
    of each side of the activation map left out of the objective (padding effects).
    """

    steps: int = 200
    lr: float = 0.1
    init_sigma: float = 2.0
    init_spread: float = 0.25
    jitter: int = 2
    blur_every: int = 4
    blur_sigma: float = 0.5
    l2_decay: float = 0.0
    clamp: float = 3.0
    border_fraction: float = 0.125

    def __post_init__(self) -> None:
        problems = [
            f"steps must be >= 1, got {self.steps}" if self.steps < 1 else "",
            f"lr must be > 0, got {self.lr}" if not self.lr > 0 else "",
            f"init_sigma must be > 0, got {self.init_sigma}" if not self.init_sigma > 0 else "",
            f"init_spread must be > 0, got {self.init_spread}" if not self.init_spread > 0 else "",
            f"jitter must be >= 0, got {self.jitter}" if self.jitter < 0 else "",
            f"blur_every must be >= 0, got {self.blur_every}" if self.blur_every < 0 else "",
            f"blur_sigma must be > 0, got {self.blur_sigma}" if not self.blur_sigma > 0 else "",
            f"l2_decay must lie in [0, 1), got {self.l2_decay}" if not 0 <= self.l2_decay < 1 else "",
            f"clamp must be > 0, got {self.clamp}" if not self.clamp > 0 else "",
            (f"border_fraction must lie in [0, 0.5), got {self.border_fraction}"
             if not 0 <= self.border_fraction < 0.5 else ""),
        ]
        bad = [p for p in problems if p]
        if bad:
            raise ExplainError("ascent settings: " + "; ".join(bad))


def clearly_raised(before: np.ndarray, after: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Per filter: did the response rise by :data:`RISE_MARGIN` spreads and reach :data:`RISE_FACTOR` x ``|before|``?"""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    return (after - before >= RISE_MARGIN * np.asarray(spread)) & (after >= RISE_FACTOR * np.abs(before))


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Optimised inputs of some filters of one layer, and each filter's response before and after.

    ``inputs`` is ``[filters, in_channels, size, size]`` in normalised input space.
    ``initial_activation`` is the response to a featureless input (the training mean everywhere),
    ``final_activation`` the response to the optimised input (both pre-activation means);
    ``spread`` the standard deviation of the pre-activation over the candidate starting fields.
    """

    layer: str
    filters: tuple[int, ...]
    inputs: np.ndarray
    initial_activation: np.ndarray
    final_activation: np.ndarray
    spread: np.ndarray
    settings: AscentSettings
    seed: int
    channel_names: tuple[str, ...] = field(default=())

    @property
    def rise(self) -> np.ndarray:
        return (self.final_activation - self.initial_activation).astype(np.float32)

    @property
    def raised(self) -> np.ndarray:
        return clearly_raised(self.initial_activation, self.final_activation, self.spread)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` per channel, edges reflected."""
    radius = max(1, math.ceil(2 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), vertical, groups=c)


def input_floor(stats: NormalizationStats | None, in_channels: int) -> list[float | None]:
    """Per input channel, the normalised value of the physical floor (None: the transform has none).

    A checkpoint's channels may repeat the statistics (stacked time steps of a nowcast).
    """
    if stats is None or in_channels % stats.num_channels:
        return [None] * in_channels
    floors: list[float | None] = []
    for k in range(in_channels):
        c = k % stats.num_channels
        floor = TRANSFORM_FLOOR.get(stats.transforms[c])
        if floor is None:
            floors.append(None)
            continue
        one = stats.select([stats.channel_names[c]])
        floors.append(float(one.normalize(np.full((1, 1, 1), floor, dtype=np.float32))[0, 0, 0]))
    return floors


def _bounds(settings: AscentSettings, floors: Sequence[float | None], device: torch.device) -> tuple[Tensor, Tensor]:
    lower = [-settings.clamp if f is None else max(-settings.clamp, min(f, 0.0)) for f in floors]
    low = torch.tensor(lower, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return low, torch.full_like(low, settings.clamp)


def _crop(maps: Tensor, fraction: float) -> Tensor:
    h, w = maps.shape[-2:]
    dy, dx = min(int(h * fraction), (h - 1) // 2), min(int(w * fraction), (w - 1) // 2)
    return maps[..., dy : h - dy, dx : w - dx]


def _objective(net: nn.Module, module: nn.Module, x: Tensor, index: Tensor, fraction: float) -> Tensor:
    """Mean pre-activation of filter ``index[i]`` on input ``i``, border left out: ``[N]``."""
    out = capture(net, module, x)
    maps = out[torch.arange(out.shape[0], device=out.device), index]
    return _crop(maps, fraction).mean(dim=(-2, -1))


def _start(n: int, low: Tensor, high: Tensor, size: int, settings: AscentSettings,
           generator: torch.Generator) -> Tensor:
    """Smooth random fields centred in the plausible range, ``init_spread`` of it as standard deviation."""
    noise = torch.randn(n, low.shape[1], size, size, generator=generator).to(low.device)
    noise = gaussian_blur(noise, settings.init_sigma)
    noise = noise / noise.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return ((low + high) / 2 + noise * (high - low) * settings.init_spread).clamp(low, high)


def _probe(net: nn.Module, module: nn.Module, low: Tensor, high: Tensor, size: int, settings: AscentSettings,
           seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:data:`PROBES` starting fields; every filter's response to them ``[P, C]``, to a featureless input ``[C]``,
    and the spread of its pre-activation over them ``[C]``."""
    probes = _start(PROBES, low, high, size, settings, torch.Generator().manual_seed(int(seed)))
    with torch.no_grad():
        featureless = _crop(capture(net, module, torch.zeros_like(probes[:1])), settings.border_fraction)
        responses = _crop(capture(net, module, probes), settings.border_fraction)
    spread = responses.transpose(0, 1).flatten(1).std(dim=1)
    return probes, responses.mean(dim=(-2, -1)), featureless.mean(dim=(-2, -1))[0], spread


def visualize_filters(
    net: nn.Module,
    layer: str,
    filters: Sequence[int],
    in_channels: int,
    size: int,
    settings: AscentSettings,
    seed: int,
    floors: Sequence[float | None] | None = None,
) -> FilterResult:
    """Inputs of ``size`` x ``size`` that maximise each of ``filters`` of Conv2d ``layer`` in ``net``.

    ``floors``: per input channel, the lowest plausible normalised value (None: ``-clamp``); see
    :func:`input_floor`. The filters are optimised together (one input each, in one batch; in
    eval mode the inputs do not interact). ``net`` is left as it was: its parameters are never
    changed, and its mode and ``requires_grad`` flags are restored. The same seed gives the
    same result.
    """
    modules = dict(net.named_modules())
    module = modules.get(layer)
    if not isinstance(module, nn.Conv2d):
        raise ExplainError(f"{layer!r} is not a Conv2d layer of {type(net).__name__}"
                           + ("" if module is None else f" (it is a {type(module).__name__})"))
    chosen = [int(f) for f in filters]
    if not chosen:
        raise ExplainError("no filter chosen")
    bad = [f for f in chosen if not 0 <= f < module.out_channels]
    if bad:
        raise ExplainError(f"filters {bad} do not exist in {layer!r} ({module.out_channels} filters)")
    if size < 8 or size <= 2 * settings.jitter:
        raise ExplainError(f"size {size} is too small: need >= 8 pixels and more than twice the jitter")
    floors = list(floors) if floors is not None else [None] * in_channels
    if len(floors) != in_channels:
        raise ExplainError(f"{len(floors)} input floors for {in_channels} input channels")
    device = device_of(net)
    generator = torch.Generator().manual_seed(int(seed))
    low, high = _bounds(settings, floors, device)
    index = torch.tensor(chosen, device=device)
    with frozen(net):
        try:
            probes, responses, featureless, spread = _probe(net, module, low, high, size, settings, seed)
        except RuntimeError as err:
            raise ExplainError(f"{type(net).__name__} does not run on a {in_channels} x {size} x {size} "
                               f"input: {err}") from err
        initial = featureless[index]
        x = probes[responses[:, index].argmax(dim=0)].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([x], lr=settings.lr)
        for step in range(settings.steps):
            shift = [int(s) for s in torch.randint(-settings.jitter, settings.jitter + 1, (2,),
                                                   generator=generator)]
            optimiser.zero_grad()
            objective = _objective(net, module, torch.roll(x, shifts=shift, dims=(2, 3)), index,
                                   settings.border_fraction)
            (-objective.sum()).backward()
            optimiser.step()
            with torch.no_grad():
                x.mul_(1.0 - settings.l2_decay)
                if settings.blur_every and (step + 1) % settings.blur_every == 0:
                    x.copy_(gaussian_blur(x, settings.blur_sigma))
                x.copy_(torch.max(torch.min(x, high), low))
        with torch.no_grad():
            final = _objective(net, module, x, index, settings.border_fraction)
    result = FilterResult(
        layer=layer,
        filters=tuple(chosen),
        inputs=x.detach().cpu().numpy().astype(np.float32),
        initial_activation=initial.cpu().numpy().astype(np.float32),
        final_activation=final.cpu().numpy().astype(np.float32),
        spread=spread[index].cpu().numpy().astype(np.float32),
        settings=settings,
        seed=int(seed),
    )
    log.info("%s: filters %s, responses %s", layer, list(chosen), _before_after(result))
    return result


def _before_after(result: FilterResult) -> str:
    return ", ".join(f"{b:.3g} -> {a:.3g}" for b, a in zip(result.initial_activation, result.final_activation,
                                                             strict=True))


def most_excitable(net: nn.Module, info: LayerInfo, in_channels: int, count: int, size: int,
                   settings: AscentSettings, seed: int, floors: Sequence[float | None] | None = None) -> list[int]:
    """The ``count`` filters that the ascent's candidate starts already excite most, in increasing order.

    One forward pass of the :data:`PROBES` candidate starting fields gives every filter's response
    at once; a filter's score is its best response over them minus its featureless response.
    Filters inhibited by every input (their best response is the featureless one) score lowest.
    """
    if info.out_channels <= count:
        return list(range(info.out_channels))
    module = dict(net.named_modules())[info.name]
    low, high = _bounds(settings, floors if floors is not None else [None] * in_channels, device_of(net))
    with frozen(net):
        _, responses, featureless, _ = _probe(net, module, low, high, size, settings, seed)
    score = responses.amax(dim=0) - featureless
    return sorted(int(i) for i in torch.argsort(score, descending=True, stable=True)[:count])


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
    """PNG: one row per filter (its response before -> after), one column per input channel (named)."""
    n, c = result.inputs.shape[:2]
    names = list(result.channel_names) or [f"channel{i}" for i in range(c)]
    tile = 1.5
    fig = Figure(figsize=(max(4.5, 1.2 + tile * c), 0.9 + tile * n), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, c, squeeze=False)
    raised = result.raised
    for i in range(n):
        vmax = float(np.abs(result.inputs[i]).max()) or 1.0
        before, after = float(result.initial_activation[i]), float(result.final_activation[i])
        for j in range(c):
            ax = axes[i][j]
            ax.imshow(result.inputs[i, j], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            if j == 0:
                note = "" if raised[i] else "\n(no clear rise)"
                ax.set_ylabel(f"filter {result.filters[i]}\n{before:.3g} -> {after:.3g}{note}", fontsize=7)
    heading = title or f"{result.layer}: inputs that excite each filter"
    fig.suptitle(textwrap.fill(f"{heading}; response to a featureless input -> to this one "
                               "(normalised input units)", 64), fontsize=8)
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
    that random starting fields excite most (:func:`most_excitable`). The input stays above the
    normalised physical floor of each channel (:func:`input_floor`). The files are
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
        log.warning("%s: filters %s do not rise clearly above their response to a featureless input",
                    info.name, flat)
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
