"""Explain a network: what each convolution filter responds to (activation maximisation).

Works on any registry model (U-Net, DeepLabV3+, Half-UNet, VGG, ResNet), trained or not.
Following Erhan et al. 2009 ("Visualizing higher-layer features of a deep network") and Olah et
al. 2017 ("Feature Visualization", Distill), the network stays frozen and an input that starts
as small noise is changed by gradient ascent until one filter of one convolution responds
strongly (the mean of its activation map, a border left out). Unregularised ascent finds
high-frequency noise, so every step rolls the input by a few pixels (jitter), every few steps
blurs it a little, decays it (L2) and clamps it to a plausible range of the normalised input
space; the gradient is divided by its RMS so the step size means the same on every layer.

Where a prediction looks (saliency) is :mod:`meteovision.pipeline.explain.saliency`; the
command line is :mod:`meteovision.pipeline.explain.cli`; :func:`explain_for_report` gives the
demo its figures.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, InferenceModel, load_inference_model
from meteovision.pipeline.inference.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "AscentSettings",
    "ExplainError",
    "FilterResult",
    "LayerInfo",
    "conv_layers",
    "default_size",
    "encoder_ends",
    "explain_filters",
    "explain_for_report",
    "frozen",
    "gaussian_blur",
    "parse_filters",
    "resolve_layer",
    "visualize_filters",
]

#: Name parts that put a convolution after the encoder (decoders, heads, classifiers).
DECODER_PARTS = frozenset({"decoder", "decoders", "head", "heads", "segmentation_head", "classifier",
                           "upsamplers", "aspp"})
#: Input side used to trace the layers of a dense model (``layers``) and for ``explain_for_report``.
TRACE_SIZE = 64
Part = Literal["encoder", "decoder", "unused"]


class ExplainError(MeteovisionError):
    """An explanation cannot be made as asked (unknown layer, filter, region, input)."""


class _StopForwardError(Exception):
    """Raised by the capture hook: nothing after the visualised layer needs computing."""


# ---------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerInfo:
    """One ``Conv2d`` of a network, as the ``layers`` listing shows it.

    ``depth`` is its position among the convolutions in the order the forward pass runs them;
    ``scale`` the side of its output over the side of the network's input (1/2 after a pooling).
    ``part`` is ``encoder``, ``decoder`` (decoders, heads, classifiers) or ``unused`` (built but not
    run by the forward pass, e.g. the deeper stages of a shallower smp encoder; scale NaN).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    depth: int
    scale: float
    part: Part
    mark: str = ""  # "first encoder", "last encoder", or both

    @property
    def scale_text(self) -> str:
        if self.scale >= 1:
            return f"{self.scale:g}"
        return f"1/{1 / self.scale:.3g}"


def _part(name: str) -> Part:
    return "decoder" if DECODER_PARTS & set(name.split(".")) else "encoder"


def conv_layers(net: nn.Module, in_channels: int, size: int = TRACE_SIZE) -> list[LayerInfo]:
    """Every ``Conv2d`` of ``net`` in forward order, the first and last encoder convolutions marked.

    One forward pass on a zero input of ``size`` x ``size`` finds the order and the scales; a
    convolution the pass does not reach is listed after the others as ``unused``.
    """
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ExplainError(f"{type(net).__name__} has no Conv2d layer to explain")
    order: list[str] = []
    sides: dict[str, int] = {}
    handles = []
    for name, module in convs.items():
        def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
            if name not in sides:
                order.append(name)
                sides[name] = int(out.shape[-1])
        handles.append(module.register_forward_hook(hook))
    try:
        with frozen(net), torch.no_grad():
            net(torch.zeros(1, in_channels, size, size, device=device_of(net)))
    except RuntimeError as err:
        raise ExplainError(f"{type(net).__name__} does not run on a {in_channels} x {size} x {size} input: "
                           f"{err}") from err
    finally:
        for handle in handles:
            handle.remove()
    order += [n for n in convs if n not in sides]
    infos = []
    for depth, name in enumerate(order):
        m = convs[name]
        k = m.kernel_size
        used = name in sides
        infos.append(LayerInfo(name, int(m.in_channels), int(m.out_channels), (int(k[0]), int(k[1])), depth,
                               sides[name] / size if used else math.nan, _part(name) if used else "unused"))
    encoder = [i for i, info in enumerate(infos) if info.part == "encoder"]
    if encoder:
        first, last = encoder[0], encoder[-1]
        marks = {first: "first encoder"} if first != last else {first: "first and last encoder"}
        if first != last:
            marks[last] = "last encoder"
        infos = [replace(info, mark=marks.get(i, "")) for i, info in enumerate(infos)]
    return infos


def encoder_ends(layers: Sequence[LayerInfo]) -> tuple[LayerInfo, LayerInfo]:
    """The first and the last encoder convolution (the same layer for a one-conv encoder)."""
    encoder = [info for info in layers if info.part == "encoder"]
    if not encoder:
        raise ExplainError("no encoder convolution: every Conv2d sits in a decoder or head")
    return encoder[0], encoder[-1]


def resolve_layer(layers: Sequence[LayerInfo], name: str) -> LayerInfo:
    """The layer called ``name``; ``first`` and ``last`` name the encoder's first and last convolution."""
    if name in ("first", "last"):
        first, last = encoder_ends(layers)
        return first if name == "first" else last
    for info in layers:
        if info.name == name:
            return info
    shown = ", ".join(info.name for info in layers[:12]) + (", ..." if len(layers) > 12 else "")
    raise ExplainError(f"no Conv2d layer named {name!r}; the layers are {shown} "
                       "(see `meteovision explain layers`), or use 'first' / 'last'")


def parse_filters(text: str, out_channels: int) -> list[int]:
    """``"0-15"``, ``"3"``, ``"0,4,8-11"`` -> filter indices, checked against ``out_channels``."""
    chosen: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ExplainError(f"filters {text!r}: {part!r} is not an index or a range like 0-15")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ExplainError(f"filters {text!r}: range {part} runs backwards")
        chosen.extend(i for i in range(lo, hi + 1) if i not in chosen)
    beyond = [i for i in chosen if i >= out_channels]
    if beyond:
        raise ExplainError(f"filters {beyond} do not exist: the layer has {out_channels} filters "
                           f"(0-{out_channels - 1})")
    return chosen


# ---------------------------------------------------------------------------- frozen network


def device_of(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def frozen(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode with every parameter's ``requires_grad`` off; both restored afterwards."""
    was_training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if any(p.requires_grad for p in net.parameters()):
            raise ExplainError("the network could not be frozen: a parameter still requires a gradient")
        yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        net.train(was_training)


def _capture(net: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """Output of ``module`` when ``net`` runs on ``x``; the forward pass stops right after it."""
    store: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> None:
        store.append(out)
        raise _StopForwardError

    handle = module.register_forward_hook(hook)
    try:
        net(x)
    except _StopForwardError:
        pass
    finally:
        handle.remove()
    if not store:
        raise ExplainError(f"the layer {type(module).__name__} is not used by the forward pass")
    return store[0]


# ---------------------------------------------------------------------------- activation maximisation


@dataclass(frozen=True)
class AscentSettings:
    """Gradient ascent and its regularisers (all in normalised input units).

    ``lr``: step per pixel (the gradient is divided by its RMS); ``jitter``: largest roll in
    pixels per step; ``blur_sigma`` every ``blur_every`` steps (0: never); ``l2_decay``: the
    input shrinks by this fraction each step; ``clamp``: values kept within +-clamp (standard
    deviations of the training data); ``border_fraction``: share of each side of the activation
    map left out of the objective (padding effects).
    """

    steps: int = 200
    lr: float = 0.1
    init_std: float = 0.1
    jitter: int = 2
    blur_every: int = 4
    blur_sigma: float = 0.5
    l2_decay: float = 1e-3
    clamp: float = 3.0
    border_fraction: float = 0.125

    def __post_init__(self) -> None:
        problems = [
            f"steps must be >= 1, got {self.steps}" if self.steps < 1 else "",
            f"lr must be > 0, got {self.lr}" if not self.lr > 0 else "",
            f"init_std must be > 0, got {self.init_std}" if not self.init_std > 0 else "",
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


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Optimised inputs of some filters of one layer, and how much each filter's response grew.

    ``inputs`` is ``[filters, in_channels, size, size]`` in normalised input space. ``gains`` is
    the mean activation of the optimised input over the mean absolute activation of the
    starting noise (the filter's typical response before the ascent).
    """

    layer: str
    filters: tuple[int, ...]
    inputs: np.ndarray
    initial_activation: np.ndarray
    initial_scale: np.ndarray
    final_activation: np.ndarray
    settings: AscentSettings
    seed: int
    channel_names: tuple[str, ...] = field(default=())

    @property
    def gains(self) -> np.ndarray:
        return (self.final_activation / np.maximum(self.initial_scale, 1e-12)).astype(np.float32)


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


def _crop(maps: Tensor, fraction: float) -> Tensor:
    h, w = maps.shape[-2:]
    dy, dx = min(int(h * fraction), (h - 1) // 2), min(int(w * fraction), (w - 1) // 2)
    return maps[..., dy : h - dy, dx : w - dx]


def _objective(net: nn.Module, module: nn.Module, x: Tensor, index: Tensor, fraction: float) -> Tensor:
    """Mean activation of filter ``index[i]`` on input ``i``, border left out: ``[N]``."""
    out = _capture(net, module, x)
    maps = out[torch.arange(out.shape[0], device=out.device), index]
    return _crop(maps, fraction).mean(dim=(-2, -1))


def visualize_filters(
    net: nn.Module,
    layer: str,
    filters: Sequence[int],
    in_channels: int,
    size: int,
    settings: AscentSettings,
    seed: int,
) -> FilterResult:
    """Inputs of ``size`` x ``size`` that maximise each of ``filters`` of Conv2d ``layer`` in ``net``.

    The filters are optimised together (one input each, in one batch; in eval mode the inputs
    do not interact). ``net`` is left as it was: its parameters are never changed, and its mode
    and ``requires_grad`` flags are restored. The same seed gives the same result.
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
    device = device_of(net)
    generator = torch.Generator().manual_seed(int(seed))
    x = (settings.init_std * torch.randn(len(chosen), in_channels, size, size, generator=generator)).to(device)
    index = torch.tensor(chosen, device=device)
    with frozen(net):
        with torch.no_grad():
            try:
                start = _capture(net, module, x)
            except RuntimeError as err:
                raise ExplainError(f"{type(net).__name__} does not run on a {in_channels} x {size} x {size} "
                                   f"input: {err}") from err
            start_maps = _crop(start[torch.arange(len(chosen), device=device), index], settings.border_fraction)
            initial = start_maps.mean(dim=(-2, -1))
            scale = start_maps.abs().mean(dim=(-2, -1))
        for step in range(settings.steps):
            shift = [int(s) for s in torch.randint(-settings.jitter, settings.jitter + 1, (2,),
                                                   generator=generator)]
            rolled = torch.roll(x, shifts=shift, dims=(2, 3)).requires_grad_(True)
            objective = _objective(net, module, rolled, index, settings.border_fraction)
            (grad,) = torch.autograd.grad(objective.sum(), rolled)
            with torch.no_grad():
                grad = torch.roll(grad, shifts=[-s for s in shift], dims=(2, 3))
                rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
                x = x + settings.lr * grad / rms
                x = x * (1.0 - settings.l2_decay)
                if settings.blur_every and (step + 1) % settings.blur_every == 0:
                    x = gaussian_blur(x, settings.blur_sigma)
                x = x.clamp(-settings.clamp, settings.clamp)
        with torch.no_grad():
            final = _objective(net, module, x, index, settings.border_fraction)
    result = FilterResult(
        layer=layer,
        filters=tuple(chosen),
        inputs=x.detach().cpu().numpy().astype(np.float32),
        initial_activation=initial.cpu().numpy().astype(np.float32),
        initial_scale=scale.cpu().numpy().astype(np.float32),
        final_activation=final.cpu().numpy().astype(np.float32),
        settings=settings,
        seed=int(seed),
    )
    log.info("%s: filters %s, gains %s", layer, list(chosen), ", ".join(f"{g:.3g}" for g in result.gains))
    return result


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
    """PNG: one row per filter, one column per input channel (named), a diverging scale per row."""
    n, c = result.inputs.shape[:2]
    names = list(result.channel_names) or [f"channel{i}" for i in range(c)]
    tile = 1.5
    fig = Figure(figsize=(max(4.5, 0.9 + tile * c), 0.9 + tile * n), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, c, squeeze=False)
    gains = result.gains
    for i in range(n):
        vmax = float(np.abs(result.inputs[i]).max()) or 1.0
        for j in range(c):
            ax = axes[i][j]
            ax.imshow(result.inputs[i, j], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"filter {result.filters[i]}\ngain {gains[i]:.3g}", fontsize=7)
    heading = title or f"{result.layer}: inputs that excite each filter"
    fig.suptitle(textwrap.fill(f"{heading} (normalised input units)", 60), fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def save_filter_result(result: FilterResult, path: Path) -> Path:
    """``.npz`` with the optimised inputs, the filters, the activations and gains, the settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            inputs=result.inputs,
            filters=np.asarray(result.filters, dtype=np.int64),
            initial_activation=result.initial_activation,
            initial_scale=result.initial_scale,
            final_activation=result.final_activation,
            gains=result.gains,
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

    ``filters`` is a list, a text such as ``"0-15"``, or None for the first ``default_count``.
    The files are ``filters_<layer>.png`` and ``.npz`` in ``out_dir``.
    """
    settings = settings or AscentSettings()
    in_channels = model.meta.in_channels
    layers = conv_layers(model.net, in_channels, size)
    info = resolve_layer(layers, layer)
    if info.part == "unused":
        raise ExplainError(f"layer {info.name!r} is not run by the network's forward pass")
    if filters is None:
        chosen = list(range(min(default_count, info.out_channels)))
    elif isinstance(filters, str):
        chosen = parse_filters(filters, info.out_channels)
    else:
        chosen = [int(f) for f in filters]
    result = visualize_filters(model.net, info.name, chosen, in_channels, size, settings, seed)
    result = replace(result, channel_names=tuple(channel_names_of(model.meta, in_channels)))
    stem = f"filters_{_safe_stem(info.name)}"
    title = (f"{model.application} / {model.model_name}: {info.name} (depth {info.depth}"
             f"{', ' + info.mark if info.mark else ''}), {settings.steps} steps, seed {seed}")
    png = write_filter_grid(result, Path(out_dir) / f"{stem}.png", title)
    return png, save_filter_result(result, Path(out_dir) / f"{stem}.npz")


def explain_for_report(ckpt: Path, out_dir: Path) -> list[Path]:
    """Filter grids of the first and last encoder convolutions (8 filters each, 48 steps): the PNGs."""
    model = load_inference_model(ckpt)
    size = default_size(model)
    first, last = encoder_ends(conv_layers(model.net, model.meta.in_channels, size))
    settings = AscentSettings(steps=48)
    return [explain_filters(model, info.name, None, out_dir, size, settings, seed=0, default_count=8)[0]
            for info in dict.fromkeys([first, last])]
