"""Whole-domain sliding-window inference: run a dense model over a field far larger than a tile.

A national radar or satellite domain (e.g. 7316 x 4963 pixels) does not fit a network's
memory in one forward pass, so :func:`predict_domain` cuts it into overlapping tiles, runs
them ``batch_size`` at a time and blends the tile outputs into one ``[K, H, W]`` float32 array.

Layout (per axis, independently for rows and columns):

* The domain is extended by ``overlap`` pixels on both sides (reflect, or replicate where the
  domain is too small to reflect), so every domain pixel - border pixels included - sits in
  the *core* of some tile, ``overlap`` pixels or more away from that tile's edges, and the
  model always sees context around it.
* Tiles are ``tile_size`` long (a multiple of ``divisibility``) and step by
  ``tile_size - 2 * overlap``: neighbours share ``2 * overlap`` pixels. The last tile is
  pulled back to end flush with the extended domain, so nothing beyond it is computed.
  A domain smaller than a tile is one tile, shrunk to the smallest multiple of
  ``divisibility`` that holds the extended domain, the padding split evenly. So is a domain
  whose one such tile holds no more pixels than a batch of ``batch_size`` tiles: it costs the
  memory of one batch, has no seams, and computes fewer pixels than overlapping tiles would.
* The padding is never materialised for the whole domain: each tile is gathered with
  reflected/replicated indices, so the only domain-sized arrays are the caller's input and
  the ``[K, H, W]`` output (the blend weights are separable: two 1-D sums).

Blending (one separable window, the same for every tile; the 1-D window is
:func:`blend_window`):

* ``"hann"`` / ``"linear"``: weight 0 on the outer ``overlap // 2`` pixels of each tile edge
  (the guard band, where a tile's own zero padding spoils the output), then a raised-cosine
  (``hann``) or linear ("pyramid", ``linear``) ramp across the rest of the shared strip, 1 in
  the core. The two ramps of neighbouring tiles sum to exactly 1, so the blend is a partition
  of unity; the result is still divided by the summed weights (which matters where the last
  tile overlaps more). For a model that is translation-equivariant with receptive-field
  radius ``r`` (a stack of n 3x3 convolutions: ``r = n``), the tiled output equals the
  full-frame output wherever the full frame's own border does not reach, as soon as
  ``overlap // 2 >= r`` (i.e. ``overlap`` >= the receptive-field width ``2r + 1`` is enough).
* ``"none"``: each pixel is taken from the tile whose core holds it (weights 0/1, a hard cut
  in the middle of the shared strip): exact as soon as ``overlap >= r``, but a model that is
  not exactly equivariant (downsampling U-Nets) shows its tile boundaries.

No epsilon floor is needed on the weights: the ``overlap`` extension puts the tapered tile
margins outside the domain, so every domain pixel has a positive weight by construction.

NaN inputs are replaced by ``nan_fill`` before the model; masking the output is the caller's
job. Everything runs under ``torch.inference_mode()`` with the module in eval mode (its
previous mode is restored afterwards).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from meteovision.datasets.errors import MeteovisionError

log = logging.getLogger(__name__)

__all__ = [
    "BlendMode",
    "TilingError",
    "TilingSettings",
    "TilingSettingsError",
    "blend_window",
    "estimate_peak_bytes",
    "predict_domain",
    "tile_grid",
    "tile_shape",
]

BlendMode = Literal["hann", "linear", "none"]
PAD_MODES = ("reflect", "replicate", "constant")
_FLOAT32 = 4  # bytes


class TilingError(MeteovisionError, ValueError):
    """The field or the model's output does not fit whole-domain inference; the message says how."""


class TilingSettingsError(TilingError):
    """A tiling setting has a bad value; the message names the setting."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"tiling setting {key!r}: {problem}")


@dataclass(frozen=True)
class TilingSettings:
    """How :func:`predict_domain` cuts, runs and blends tiles.

    ``overlap`` is the context margin on *each* side of a tile (neighbours share twice it).
    ``pad_mode`` fills the border beyond the domain: "reflect" (falls back to "replicate" on
    an axis too short to reflect), "replicate", or "constant" (filled with ``nan_fill``,
    i.e. treated like missing data). ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the
    model under ``torch.autocast`` on ``device``; outputs are accumulated in float32.
    """

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4
    divisibility: int = 32
    blend: BlendMode = "hann"
    pad_mode: str = "reflect"
    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None
    device: str = "cpu"
    progress: bool = False
    nan_fill: float = 0.0

    def __post_init__(self) -> None:
        for key in ("tile_size", "batch_size", "divisibility"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TilingSettingsError(key, f"must be a positive integer, got {value!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise TilingSettingsError("overlap", f"must be an integer >= 0, got {self.overlap!r}")
        if self.tile_size % self.divisibility:
            raise TilingSettingsError(
                "tile_size", f"{self.tile_size} is not a multiple of divisibility {self.divisibility}"
            )
        if 2 * self.overlap >= self.tile_size:
            raise TilingSettingsError(
                "overlap",
                f"2 * overlap ({2 * self.overlap}) must be smaller than tile_size ({self.tile_size}), "
                "or tiles would not advance",
            )
        if self.blend not in get_args(BlendMode):
            raise TilingSettingsError("blend", f"expected one of {get_args(BlendMode)}, got {self.blend!r}")
        if self.pad_mode not in PAD_MODES:
            raise TilingSettingsError("pad_mode", f"expected one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.autocast_dtype is not None and not isinstance(self.autocast_dtype, torch.dtype):
            raise TilingSettingsError(
                "autocast_dtype", f"expected a torch.dtype or None, got {self.autocast_dtype!r}"
            )
        if not math.isfinite(float(self.nan_fill)):
            raise TilingSettingsError("nan_fill", f"must be a finite number, got {self.nan_fill!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise TilingSettingsError("device", f"not a torch device: {self.device!r} ({err})") from err

    @classmethod
    def for_model(cls, divisibility: int, **overrides: Any) -> TilingSettings:
        """Settings for a model needing multiples of ``divisibility``.

        Without a ``tile_size`` override, the default tile is rounded up to that multiple,
        so e.g. ``for_model(48)`` gives 528-pixel tiles instead of an error.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TilingSettingsError(unknown[0], f"unknown setting; known: {', '.join(sorted(known))}")
        if "divisibility" in overrides:
            raise TilingSettingsError("divisibility", "give it as the first argument, not as an override")
        if isinstance(divisibility, bool) or not isinstance(divisibility, int) or divisibility < 1:
            raise TilingSettingsError("divisibility", f"must be a positive integer, got {divisibility!r}")
        if "tile_size" not in overrides:
            default = cls.tile_size
            overrides["tile_size"] = -(-default // divisibility) * divisibility
        return cls(divisibility=divisibility, **overrides)


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Axis:
    """The tiling of one axis: tile length, tile origins in domain coordinates, padding."""

    size: int
    tile: int
    origins: tuple[int, ...]
    pad_before: int
    pad_after: int
    pad_mode: str


def _single_tile_side(size: int, settings: TilingSettings) -> int:
    """The side of one tile holding the whole axis and its context, rounded up to the divisibility."""
    div = settings.divisibility
    return -(-(size + 2 * settings.overlap) // div) * div


def _fits_one_batch(h: int, w: int, settings: TilingSettings) -> bool:
    """Whether one tile over the whole domain holds no more pixels than a batch of ``batch_size`` tiles.

    Such a domain runs as that single tile: the same memory as one batch, no seams, and fewer pixels
    than the overlapping tiles (640 x 710 at 512-pixel tiles: 0.66 M pixels in one tile, 1.05 M in four).
    """
    one_tile = _single_tile_side(h, settings) * _single_tile_side(w, settings)
    return one_tile <= settings.batch_size * settings.tile_size**2


def _axis_layout(size: int, settings: TilingSettings, name: str, whole: bool = False) -> _Axis:
    if size < 1:
        raise TilingError(f"the field's {name} is {size}; it needs at least one pixel")
    o = settings.overlap
    extended = size + 2 * o
    if whole or extended <= settings.tile_size:
        tile = _single_tile_side(size, settings)
        pad_before = (tile - size) // 2
        origins: tuple[int, ...] = (-pad_before,)
        pad_after = tile - size - pad_before
    else:
        tile, stride = settings.tile_size, settings.tile_size - 2 * o
        n = -(-(extended - tile) // stride) + 1
        padded = [i * stride for i in range(n - 1)] + [extended - tile]
        origins = tuple(p - o for p in padded)
        pad_before = pad_after = o
    mode = settings.pad_mode
    if mode == "reflect" and max(pad_before, pad_after) > size - 1:
        log.debug("%s %d too short to reflect a %d-pixel pad: replicating", name, size,
                  max(pad_before, pad_after))
        mode = "replicate"
    return _Axis(size, tile, origins, pad_before, pad_after, mode)


def _layout(h: int, w: int, settings: TilingSettings) -> tuple[_Axis, _Axis]:
    whole = _fits_one_batch(h, w, settings)
    return _axis_layout(h, settings, "height", whole), _axis_layout(w, settings, "width", whole)


def tile_grid(h: int, w: int, settings: TilingSettings) -> list[tuple[int, int]]:
    """Top-left corners ``(row, col)`` of every tile, row-major, in domain pixel coordinates.

    Corners may be negative or tiles may reach past ``h``/``w``: that part is border padding.
    Every tile has the shape :func:`tile_shape` gives.
    """
    rows, cols = _layout(h, w, settings)
    return [(r, c) for r in rows.origins for c in cols.origins]


def tile_shape(h: int, w: int, settings: TilingSettings) -> tuple[int, int]:
    """Height and width of the tiles for an ``h`` x ``w`` domain (shrunk for a domain under one tile)."""
    rows, cols = _layout(h, w, settings)
    return rows.tile, cols.tile


def blend_window(length: int, overlap: int, blend: BlendMode) -> np.ndarray:
    """1-D float32 weights of a tile of ``length`` pixels whose neighbours overlap it by ``overlap`` per side.

    ``none``: 1 on ``[overlap, length - overlap)``, 0 outside. ``hann``/``linear``: 0 on the
    ``overlap // 2`` outermost pixels, a ramp ``f((k + 1) / (L + 1))``, k = 0..L-1, over the next
    ``L = 2 * overlap - 2 * (overlap // 2)`` pixels (f = sin^2(pi x / 2) or x), then 1; opposite
    ramps of two tiles ``length - 2 * overlap`` apart sum to 1 pixel by pixel.
    """
    if blend not in get_args(BlendMode):
        raise TilingSettingsError("blend", f"expected one of {get_args(BlendMode)}, got {blend!r}")
    if overlap < 0 or 2 * overlap >= length:
        raise TilingSettingsError(
            "overlap", f"need 0 <= 2 * overlap < length, got overlap={overlap}, length={length}"
        )
    distance = np.minimum(np.arange(length), np.arange(length)[::-1])  # to the nearer tile edge
    if blend == "none":
        return (distance >= overlap).astype(np.float32)
    guard = overlap // 2
    ramp_len = 2 * overlap - 2 * guard

    def edge(d: np.ndarray) -> np.ndarray:
        x = np.clip((d - guard + 1) / (ramp_len + 1), 0.0, 1.0)
        x[d < guard] = 0.0
        return np.sin(np.pi * x / 2) ** 2 if blend == "hann" else x

    idx = np.arange(length)
    # product of the two edges' ramps: a short tile whose ramps meet stays smooth
    return (edge(idx) * edge(idx[::-1])).astype(np.float32)


def _axis_weight_sum(axis: _Axis, window: np.ndarray) -> np.ndarray:
    """Summed window weight of every domain pixel along one axis (the 2-D sum is the outer product)."""
    total = np.zeros(axis.size, dtype=np.float64)
    for origin in axis.origins:
        lo, hi = max(origin, 0), min(origin + axis.tile, axis.size)
        total[lo:hi] += window[lo - origin : hi - origin]
    return total


# ---------------------------------------------------------------------------- memory estimate


def estimate_peak_bytes(c: int, k: int, h: int, w: int, settings: TilingSettings) -> int:
    """Host bytes :func:`predict_domain` allocates at its peak for a ``[c, h, w]`` field and ``k`` outputs.

    Counted: the float32 ``[k, h, w]`` output, the 1-D weight sums, the 2-D window, the
    float32 input batch buffer (twice: NCHW buffer and its channels-last copy), the NaN mask
    of one tile, two tile-sized gather temporaries, the model's float32 output batch and the
    ``[k, tile]`` accumulation scratch. Not counted: the caller's input array, the model's
    weights and internal activations (model dependent), and device memory on a GPU.
    Only the output grows with the domain; the rest is bounded by ``batch_size`` tiles.
    """
    th, tw = tile_shape(h, w, settings)
    tile_px = th * tw
    b = min(settings.batch_size, len(tile_grid(h, w, settings)))
    output = k * h * w * _FLOAT32
    sums = (h + w) * 8 * 2
    window = tile_px * (_FLOAT32 + 8)
    batch_in = 2 * b * c * tile_px * _FLOAT32
    nan_mask = c * tile_px
    gather = 2 * c * tile_px * _FLOAT32
    batch_out = b * k * tile_px * _FLOAT32
    scratch = k * tile_px * _FLOAT32
    return output + sums + window + batch_in + nan_mask + gather + batch_out + scratch


# ---------------------------------------------------------------------------- tile gathering


def _indices(origin: int, axis: _Axis) -> slice | np.ndarray:
    """Domain indices of a tile's pixels along one axis: a slice inside, mapped indices at a border."""
    if origin >= 0 and origin + axis.tile <= axis.size:
        return slice(origin, origin + axis.tile)
    idx = np.arange(origin, origin + axis.tile)
    n = axis.size
    if axis.pad_mode == "reflect":
        idx = np.abs(idx)
        idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    else:  # replicate; "constant" overwrites the outside afterwards
        idx = np.clip(idx, 0, n - 1)
    return idx


def _gather(
    field: np.ndarray, r0: int, c0: int, rows: _Axis, cols: _Axis, out: np.ndarray, fill: float
) -> None:
    """Write the tile at ``(r0, c0)`` (border padding included, NaNs replaced) into ``out`` [C, th, tw]."""
    ri, ci = _indices(r0, rows), _indices(c0, cols)
    # narrow to the bounding box first, so no temporary spans a whole row or column of the domain
    if isinstance(ri, np.ndarray):
        lo = int(ri.min())
        sub = field[:, lo : int(ri.max()) + 1]
        ri = ri - lo
    else:
        sub = field[:, ri]
        ri = slice(None)
    if isinstance(ci, np.ndarray):
        lo = int(ci.min())
        sub = sub[:, :, lo : int(ci.max()) + 1]
        ci = ci - lo
    else:
        sub = sub[:, :, ci]
        ci = slice(None)
    if isinstance(ri, np.ndarray):
        sub = sub[:, ri]
    if isinstance(ci, np.ndarray):
        sub = sub[:, :, ci]
    np.copyto(out, sub, casting="unsafe")
    if rows.pad_mode == "constant" or cols.pad_mode == "constant":
        top, left = max(0, -r0), max(0, -c0)
        bottom, right = max(0, r0 + rows.tile - rows.size), max(0, c0 + cols.tile - cols.size)
        if rows.pad_mode == "constant":
            out[:, :top] = fill
            out[:, rows.tile - bottom :] = fill
        if cols.pad_mode == "constant":
            out[:, :, :left] = fill
            out[:, :, cols.tile - right :] = fill
    if np.issubdtype(field.dtype, np.floating):
        nan = np.isnan(out)
        if nan.any():
            out[nan] = fill


def _batches(origins: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for start in range(0, len(origins), size):
        yield origins[start : start + size]


# ---------------------------------------------------------------------------- inference


def _as_array(field: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(field, Tensor):
        # a CPU tensor is viewed, not copied; a device tensor is copied to the host once
        field = field.detach().cpu().numpy()
    if not isinstance(field, np.ndarray):
        raise TilingError(f"the field must be a numpy array or a torch tensor, got {type(field).__name__}")
    if field.ndim != 3:
        raise TilingError(f"the field must be [C, H, W], got shape {field.shape}")
    if field.shape[0] < 1:
        raise TilingError(f"the field has no channel: shape {field.shape}")
    if not (np.issubdtype(field.dtype, np.floating) or np.issubdtype(field.dtype, np.integer)
            or field.dtype == np.bool_):
        raise TilingError(f"the field must hold numbers, got dtype {field.dtype}")
    return field


def _check_model_device(model: Callable[[Tensor], Tensor] | nn.Module, device: torch.device) -> None:
    if not isinstance(model, nn.Module):
        return
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type != device.type:
        raise TilingError(
            f"the model's weights are on {param.device} but tiling runs on {device}; "
            "move the model or set TilingSettings.device"
        )


def predict_domain(
    model: Callable[[Tensor], Tensor] | nn.Module,
    field: np.ndarray | Tensor,
    settings: TilingSettings,
) -> np.ndarray:
    """Run a dense model over a whole ``[C, H, W]`` field by overlapping tiles; return ``[K, H, W]`` float32.

    ``model`` maps ``[B, C, th, tw]`` to ``[B, K, th, tw]`` (``K`` may differ from ``C``); it
    must already sit on ``settings.device``. At most ``batch_size`` tiles exist at a time.
    """
    arr = _as_array(field)
    c, h, w = arr.shape
    rows, cols = _layout(h, w, settings)
    th, tw = rows.tile, cols.tile
    origins = [(r, q) for r in rows.origins for q in cols.origins]
    device = torch.device(settings.device)
    _check_model_device(model, device)
    log.debug("tiling %dx%d (C=%d) into %d tiles of %dx%d (overlap %d, blend %s, pad %s/%s)",
              h, w, c, len(origins), th, tw, settings.overlap, settings.blend, rows.pad_mode, cols.pad_mode)

    win_r = blend_window(th, settings.overlap, settings.blend)
    win_c = blend_window(tw, settings.overlap, settings.blend)
    window = np.outer(win_r, win_c).astype(np.float32)
    row_sum, col_sum = _axis_weight_sum(rows, win_r), _axis_weight_sum(cols, win_c)
    if not (row_sum.min() > 0 and col_sum.min() > 0):  # impossible by construction (see module doc)
        raise RuntimeError("tiling left a domain pixel without weight; this is a bug in the layout")

    b_max = min(settings.batch_size, len(origins))
    if device.type == "cuda":
        batch_buf = torch.empty((b_max, c, th, tw), dtype=torch.float32, pin_memory=True).numpy()
    else:
        batch_buf = np.empty((b_max, c, th, tw), dtype=np.float32)
    out: np.ndarray | None = None
    scratch: np.ndarray | None = None

    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    autocast = (torch.autocast(device_type=device.type, dtype=settings.autocast_dtype)
                if settings.autocast_dtype is not None else contextlib.nullcontext())
    bar = tqdm(total=len(origins), disable=not settings.progress, unit="tile", desc="predict")
    try:
        with torch.inference_mode(), autocast:
            for batch in _batches(origins, b_max):
                n = len(batch)
                for i, (r0, c0) in enumerate(batch):
                    _gather(arr, r0, c0, rows, cols, batch_buf[i], settings.nan_fill)
                x = torch.from_numpy(batch_buf[:n]).to(device, non_blocking=True)
                if settings.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = model(x)
                dense = isinstance(y, Tensor) and y.ndim == 4 and y.shape[0] == n
                if not dense or tuple(y.shape[2:]) != (th, tw):
                    got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                    raise TilingError(
                        f"the model returned {got} for a tile batch of shape {tuple(x.shape)}; whole-domain "
                        f"inference needs a dense model giving [B, K, {th}, {tw}]"
                    )
                y_np = y.detach().to("cpu", torch.float32).numpy()
                if out is None:
                    out = np.zeros((y_np.shape[1], h, w), dtype=np.float32)
                    scratch = np.empty((y_np.shape[1], th, tw), dtype=np.float32)
                elif y_np.shape[1] != out.shape[0]:
                    raise TilingError(f"the model returned {y_np.shape[1]} channels, earlier {out.shape[0]}")
                assert scratch is not None
                for i, (r0, c0) in enumerate(batch):
                    _accumulate(out, scratch, y_np[i], window, r0, c0)
                bar.update(n)
    finally:
        bar.close()
        if was_training:
            assert isinstance(model, nn.Module)
            model.train()
    assert out is not None  # at least one tile always exists
    out /= row_sum.astype(np.float32)[None, :, None]
    out /= col_sum.astype(np.float32)[None, None, :]
    return out


def _accumulate(
    out: np.ndarray, scratch: np.ndarray, tile: np.ndarray, window: np.ndarray, r0: int, c0: int
) -> None:
    """Add ``tile * window``, cropped to the domain, into ``out`` at tile corner ``(r0, c0)``."""
    _, h, w = out.shape
    th, tw = window.shape
    ra, rb = max(0, -r0), min(th, h - r0)
    ca, cb = max(0, -c0), min(tw, w - c0)
    prod = scratch[:, ra:rb, ca:cb]
    np.multiply(tile[:, ra:rb, ca:cb], window[ra:rb, ca:cb], out=prod)
    out[:, r0 + ra : r0 + rb, c0 + ca : c0 + cb] += prod
