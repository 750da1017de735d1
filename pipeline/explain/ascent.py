"""Activation maximisation: the input that raises one convolution filter's response most.

Works on any registry model (U-Net, DeepLabV3+, Half-UNet, VGG, ResNet), trained or not.
Following Erhan et al. 2009 ("Visualizing higher-layer features of a deep network") and Olah et
al. 2017 ("Feature Visualization", Distill), the network stays frozen and its input is changed
by gradient ascent until one filter of one convolution responds strongly.

The objective is one neuron's *pre-activation*: the filter's output at the centre of its map,
before any BatchNorm or ReLU that follows the convolution. (The mean over the map, tried before,
cannot move a zero-sum filter such as a derivative: its mean is the mean input times the sum of
its weights.) Only the layer's receptive field reaches that neuron: the input is held at the
training mean (featureless) outside it, so the picture shows the field and nothing else. The
input lives in the checkpoint's normalised input space, kept within a plausible range: at most
``clamp`` standard deviations above the training mean, and not below the normalised physical
floor (no rain, no reflectivity below the transform's clip) where the channel's transform has one.

Deep layers of a ReLU network are dead near a featureless input: a trained radar network's
deep filters ignore anything below moderate rain, so ascent from small noise never moves them.
The ascent therefore starts from smooth random fields spread over the plausible range
(:data:`PROBES` of them): the place where the filter responds most, on any of them, is rolled to
the centre (unless the field that excites the centre most as it is responds more: rolling wraps a
field round, which matters where the receptive field is as wide as the input). Adam (each
pixel's step scaled by its own gradient history) then raises the response, with a small roll
every step (jitter) and a light blur every few steps so that the picture stays smooth, both
scaled to the receptive field (none on a 3 x 3 field), and an optional L2 decay; the last
quarter of the steps is plain ascent, which the regularisers would otherwise hold below the
optimum.

The response reported *before* is the one to a featureless input (the training mean
everywhere); *after* the one to the optimised input. A rise is *clear* when it is at least
:data:`RISE_MARGIN` times the filter's spread, the standard deviation of its response over
random plausible inputs: a scale of the filter's own, so that a near-zero or negative response
before cannot make a small rise look large. A filter excited only by less than nothing (e.g. a
negative-sum first-layer filter, bounded by the no-rain floor) may rise less. When no filters
are named, those that the random fields excite most, each on its own scale, are drawn
(:func:`most_excitable`).

The figures and files, and the command's entry point, are :mod:`meteovision.pipeline.explain.filters`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meteovision.datasets.normalization import DBZ_CLIP, NormalizationStats
from meteovision.pipeline.explain.layers import ExplainError, LayerInfo, capture, device_of, frozen

log = logging.getLogger(__name__)

__all__ = [
    "BORDER",
    "PROBES",
    "RISE_MARGIN",
    "TRANSFORM_FLOOR",
    "AscentSettings",
    "FilterResult",
    "clearly_raised",
    "gaussian_blur",
    "input_floor",
    "most_excitable",
    "rise_text",
    "visualize_filters",
]

#: A filter's response is clearly raised when it grows by at least this many times the filter's
#: spread: the standard deviation of its pre-activation over random plausible inputs (the
#: candidate starting fields, every place of the map but its border). Measured on the filter's own
#: scale, the rule holds whatever the sign or size of the response before.
RISE_MARGIN = 2.0
#: Share of each side of an activation map left out of the spread and of the search for a start
#: (padding effects).
BORDER = 0.125
#: Candidate starting fields: each filter starts from the one it responds to most; they also rank a
#: layer's filters when none are named (:func:`most_excitable`).
PROBES = 8
#: Physical floor of a transform's input (rain rates are >= 0; reflectivity is clipped below).
TRANSFORM_FLOOR = {"log1p": 0.0, "log10_rain": 0.0, "clip_dbz": DBZ_CLIP[0]}

# ---------------------------------------------------------------------------- activation maximisation


@dataclass(frozen=True)
class AscentSettings:
    """Gradient ascent and its regularisers (all in normalised input units).

    ``steps`` and ``lr``: Adam's steps and step size; ``init_sigma``: smoothness (pixels) of the
    random starting fields and ``init_spread`` their standard deviation as a share of the plausible
    range; ``jitter``: largest roll in pixels per step (at most an eighth of the receptive field);
    ``blur_sigma`` every ``blur_every`` steps (0: never; only on a receptive field at least
    8 ``blur_sigma`` wide); jitter and blur stop for the last quarter of the steps; ``l2_decay``:
    the input shrinks towards the training mean by this fraction each step; ``clamp``: values kept
    below +clamp and above -clamp (or the physical floor, see :func:`input_floor`), in standard
    deviations of the training data.
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
        ]
        bad = [p for p in problems if p]
        if bad:
            raise ExplainError("ascent settings: " + "; ".join(bad))


def clearly_raised(before: np.ndarray, after: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Per filter: did the response rise by at least :data:`RISE_MARGIN` times its spread (and at all)?

    A filter that random inputs do not move (spread 0) counts as raised only if it rises.
    """
    rise = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    return (rise > 0) & (rise >= RISE_MARGIN * np.asarray(spread, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Optimised inputs of some filters of one layer, and each filter's response before and after.

    ``inputs`` is ``[filters, in_channels, size, size]`` in normalised input space.
    A filter's response is its pre-activation at the centre of its map. ``initial_activation`` is
    the response to a featureless input (the training mean everywhere), ``final_activation`` the
    response to the optimised input; ``spread`` the standard deviation of the pre-activation over
    random plausible inputs (:data:`RISE_MARGIN`). ``receptive_field`` is the layer's receptive
    field at the centre (rows ``y0:y1``, columns ``x0:x1`` of the input); the input is featureless
    outside it.
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
    receptive_field: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def rise(self) -> np.ndarray:
        return (self.final_activation - self.initial_activation).astype(np.float32)

    @property
    def rise_in_spreads(self) -> np.ndarray:
        """The rise over the spread (inf where random inputs do not move the filter)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.spread > 0, self.rise / self.spread, np.inf).astype(np.float32)

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


def _crop(maps: Tensor, fraction: float = BORDER) -> Tensor:
    h, w = maps.shape[-2:]
    dy, dx = min(int(h * fraction), (h - 1) // 2), min(int(w * fraction), (w - 1) // 2)
    return maps[..., dy : h - dy, dx : w - dx]


def _centre(maps: Tensor) -> Tensor:
    """The value at the centre of each map (``[..., H, W]`` -> ``[...]``)."""
    return maps[..., maps.shape[-2] // 2, maps.shape[-1] // 2]


def _objective(net: nn.Module, module: nn.Module, x: Tensor, index: Tensor) -> Tensor:
    """Pre-activation of filter ``index[i]`` at the centre of its map, on input ``i``: ``[N]``."""
    out = capture(net, module, x)
    return _centre(out[torch.arange(out.shape[0], device=out.device), index])


def _start(n: int, low: Tensor, high: Tensor, size: int, settings: AscentSettings,
           generator: torch.Generator) -> Tensor:
    """Smooth random fields centred in the plausible range, ``init_spread`` of it as standard deviation."""
    noise = torch.randn(n, low.shape[1], size, size, generator=generator).to(low.device)
    noise = gaussian_blur(noise, settings.init_sigma)
    noise = noise / noise.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return ((low + high) / 2 + noise * (high - low) * settings.init_spread).clamp(low, high)


@dataclass(frozen=True, eq=False)
class _Probe:
    """A layer's responses to the candidate starting fields (pre-activations).

    ``fields`` ``[P, in, H, W]``; ``maps`` ``[P, C, h, w]``; ``featureless`` ``[C]``: the centre
    response to the training mean everywhere; ``spread`` ``[C]``: the standard deviation of the
    pre-activation over the fields and the map (border left out); ``field_mask`` ``[1, 1, H, W]``:
    the input pixels that reach the centre of the layer's map (its receptive field).
    """

    fields: Tensor
    maps: Tensor
    featureless: Tensor
    spread: Tensor
    field_mask: Tensor


def _probe(net: nn.Module, module: nn.Module, low: Tensor, high: Tensor, size: int, settings: AscentSettings,
           seed: int) -> _Probe:
    """:data:`PROBES` starting fields, the layer's responses to them, and its receptive field.

    The receptive field is where the gradient of the layer's centre responses (all filters summed)
    is non-zero for some starting field.
    """
    fields = _start(PROBES, low, high, size, settings, torch.Generator().manual_seed(int(seed)))
    with torch.no_grad():
        featureless = _centre(capture(net, module, torch.zeros_like(fields[:1])))[0]
    x = fields.clone().requires_grad_(True)
    out = capture(net, module, x)
    (grad,) = torch.autograd.grad(_centre(out).sum(), x)
    maps = out.detach()
    mask = (grad.abs().amax(dim=(0, 1), keepdim=True) > 0).to(fields.dtype)
    return _Probe(fields, maps, featureless, _crop(maps).transpose(0, 1).flatten(1).std(dim=1), mask)


def _rolled_starts(probe: _Probe, index: Tensor) -> Tensor:
    """Per filter, the starting field where it responds most (border left out), rolled so that this
    place sits at the centre of its map: ``[F, in, H, W]``."""
    _, _, h, w = probe.maps.shape
    size_h, size_w = probe.fields.shape[-2:]
    inner = torch.full((h, w), -torch.inf, device=probe.maps.device)
    _crop(inner).fill_(0.0)
    scores = (probe.maps[:, index] + inner).transpose(0, 1).flatten(1)  # [F, P * h * w]
    starts = []
    for flat in scores.argmax(dim=1).tolist():
        k, rest = divmod(int(flat), h * w)
        i, j = divmod(rest, w)
        shift = ((h // 2 - i) * round(size_h / h), (w // 2 - j) * round(size_w / w))
        starts.append(torch.roll(probe.fields[k], shifts=shift, dims=(-2, -1)))
    return torch.stack(starts)


def _field_box(mask: Tensor, size: int) -> tuple[int, int, int, int]:
    """Rows ``y0:y1`` and columns ``x0:x1`` that hold the receptive field mask (the whole input if empty)."""
    rows, cols = np.nonzero(mask[0, 0].cpu().numpy())
    if not rows.size:
        return 0, size, 0, size
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


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
            probe = _probe(net, module, low, high, size, settings, seed)
        except RuntimeError as err:
            raise ExplainError(f"{type(net).__name__} does not run on a {in_channels} x {size} x {size} "
                               f"input: {err}") from err
        mask = probe.field_mask
        field = _field_box(mask, size)
        # Rolling wraps the field round: where the receptive field is as wide as the input, the
        # rolled place may respond less than the field that responds most at the centre as it is.
        rolled = _rolled_starts(probe, index) * mask
        as_is = probe.fields[_centre(probe.maps)[:, index].argmax(dim=0)] * mask
        with torch.no_grad():
            better = _objective(net, module, as_is, index) > _objective(net, module, rolled, index)
        side = min(field[1] - field[0], field[3] - field[2])
        jitter = min(settings.jitter, side // 8)
        blur_every = settings.blur_every if side >= 8 * settings.blur_sigma else 0
        x = torch.where(better.view(-1, 1, 1, 1), as_is, rolled).requires_grad_(True)
        optimiser = torch.optim.Adam([x], lr=settings.lr)
        regularised = settings.steps - settings.steps // 4  # then polish: plain ascent, no jitter or blur
        for step in range(settings.steps):
            shift = [int(s) for s in torch.randint(-jitter, jitter + 1, (2,), generator=generator)]
            shift = shift if step < regularised else [0, 0]
            optimiser.zero_grad()
            objective = _objective(net, module, torch.roll(x, shifts=shift, dims=(2, 3)), index)
            (-objective.sum()).backward()
            optimiser.step()
            with torch.no_grad():
                x.mul_(1.0 - settings.l2_decay)
                if blur_every and (step + 1) % blur_every == 0 and step < regularised:
                    x.copy_(gaussian_blur(x, settings.blur_sigma))
                x.copy_(torch.max(torch.min(x, high), low) * mask)
        with torch.no_grad():
            final = _objective(net, module, x, index)
    result = FilterResult(
        layer=layer,
        filters=tuple(chosen),
        inputs=x.detach().cpu().numpy().astype(np.float32),
        initial_activation=probe.featureless[index].cpu().numpy().astype(np.float32),
        final_activation=final.cpu().numpy().astype(np.float32),
        spread=probe.spread[index].cpu().numpy().astype(np.float32),
        settings=settings,
        seed=int(seed),
        receptive_field=field,
    )
    log.info("%s: responses before -> after, filter by filter: %s", layer, _before_after(result))
    return result


def rise_text(before: float, after: float, spread: float) -> str:
    """``0.03 -> 0.42 (+10.5 sd)``: a filter's response before and after, and the rise in spreads."""
    rise = after - before
    sds = f"{rise / spread:+.1f} sd" if spread > 0 else ("+inf sd" if rise > 0 else "no rise")
    return f"{before:.3g} -> {after:.3g} ({sds})"


def _before_after(result: FilterResult) -> str:
    return ", ".join(f"{f}: {rise_text(float(b), float(a), float(s))}" for f, b, a, s in
                     zip(result.filters, result.initial_activation, result.final_activation, result.spread,
                         strict=True))


def most_excitable(net: nn.Module, info: LayerInfo, in_channels: int, count: int, size: int,
                   settings: AscentSettings, seed: int, floors: Sequence[float | None] | None = None) -> list[int]:
    """The ``count`` filters that the ascent's candidate starts already excite most, in increasing order.

    One forward pass of the :data:`PROBES` candidate starting fields gives every filter's response
    at once; a filter's score is its best response anywhere on them (border left out) minus its
    featureless response, over its spread: how far random inputs already raise it on its own scale.
    Filters that random inputs barely raise above the featureless input score lowest: those
    inhibited by every input, and those excited only by less than nothing (a first-layer filter
    with negative weights, which the no-rain floor bounds); ``--filters`` still draws them.
    """
    if info.out_channels <= count:
        return list(range(info.out_channels))
    module = dict(net.named_modules())[info.name]
    low, high = _bounds(settings, floors if floors is not None else [None] * in_channels, device_of(net))
    with frozen(net):
        probe = _probe(net, module, low, high, size, settings, seed)
    best = _crop(probe.maps).amax(dim=(0, 2, 3)) - probe.featureless
    score = torch.where(probe.spread > 0, best / probe.spread, torch.full_like(best, -torch.inf))
    return sorted(int(i) for i in torch.argsort(score, descending=True, stable=True)[:count])
