"""Whole-domain sliding-window inference: exactness against full-frame forwards, layout, memory bound."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from meteovision.pipeline.inference.tiling import (
    TilingError,
    TilingSettings,
    TilingSettingsError,
    blend_window,
    estimate_peak_bytes,
    predict_domain,
    tile_grid,
    tile_shape,
)

BLENDS = ("hann", "linear", "none")


def _identity(x: Tensor) -> Tensor:
    return x


def _not_a_tensor(x: Tensor) -> tuple[Tensor]:
    return (x,)


class Recorder(nn.Module):
    """Wraps a model; records batch sizes, modes and the tiles it is given."""

    def __init__(self, inner: nn.Module | None = None, keep_tiles: bool = False) -> None:
        super().__init__()
        self.inner = inner if inner is not None else nn.Identity()
        self.keep_tiles = keep_tiles
        self.batches: list[int] = []
        self.tiles: list[np.ndarray] = []
        self.training_seen: set[bool] = set()
        self.inference_seen: set[bool] = set()
        self.channels_last_seen: set[bool] = set()
        self.nan_seen = False

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        self.training_seen.add(self.training)
        self.inference_seen.add(torch.is_inference_mode_enabled())
        self.channels_last_seen.add(x.is_contiguous(memory_format=torch.channels_last))
        self.nan_seen |= bool(torch.isnan(x).any())
        if self.keep_tiles:
            self.tiles.extend(t.clone().numpy() for t in x)
        return self.inner(x)


def _conv_stack(c_in: int, c_out: int, seed: int = 0) -> nn.Module:
    """Two random 3x3 convolutions with zero padding: receptive-field radius 2 (width 5)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(c_in, 6, 3, padding=1, padding_mode="zeros"),
        nn.Tanh(),
        nn.Conv2d(6, c_out, 3, padding=1, padding_mode="zeros"),
    ).eval()


def _full_frame(model: nn.Module, field: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(field)[None]).numpy()[0]


# ---------------------------------------------------------------------------- window and layout


def test_blend_window_goldens() -> None:
    # length 8, overlap 2: guard 1 pixel of 0, a 2-pixel ramp at x = 1/3, 2/3, then 1
    third = 1 / 3
    np.testing.assert_allclose(blend_window(8, 2, "linear"), [0, third, 2 * third, 1, 1, 2 * third, third, 0],
                               atol=1e-7)
    # sin^2(pi/6) = 0.25, sin^2(pi/3) = 0.75
    np.testing.assert_allclose(blend_window(8, 2, "hann"), [0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0], atol=1e-7)
    np.testing.assert_array_equal(blend_window(8, 2, "none"), [0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(blend_window(6, 0, "hann"), np.ones(6))
    assert blend_window(8, 2, "hann").dtype == np.float32


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("overlap", [1, 7, 16])
def test_blend_window_partition_of_unity(blend: str, overlap: int) -> None:
    length = 64
    stride = length - 2 * overlap
    w = blend_window(length, overlap, blend)  # type: ignore[arg-type]
    total = np.zeros(length + 3 * stride)
    for k in range(4):
        total[k * stride : k * stride + length] += w
    # away from the two outer ends, neighbouring windows sum to exactly one
    np.testing.assert_allclose(total[2 * overlap : 3 * stride], 1.0, atol=1e-6)


def test_tile_grid_hand_computed() -> None:
    s = TilingSettings(tile_size=128, overlap=16, divisibility=32)
    # rows: extended 700 + 32 = 732, stride 96, 8 tiles, the last flush with the extended end (604 - 16)
    rows = [-16, 80, 176, 272, 368, 464, 560, 588]
    cols = [-16, 80, 176, 188]  # extended 332
    assert tile_grid(700, 300, s) == [(r, c) for r in rows for c in cols]
    assert tile_shape(700, 300, s) == (128, 128)
    # smaller than a tile: one tile, the extended size rounded up to 32 (69 -> 96, 85 -> 96), centred
    assert tile_grid(37, 53, s) == [(-29, -21)]
    assert tile_shape(37, 53, s) == (96, 96)
    assert tile_grid(1, 1, s) == [(-31, -31)]
    assert tile_shape(1, 1, s) == (64, 64)
    # a domain exactly one stride beyond a tile, no overlap, one tile per batch: a regular grid
    assert tile_grid(256, 128, TilingSettings(tile_size=128, overlap=0, batch_size=1)) == [(0, 0), (128, 0)]


def test_domain_within_one_batch_runs_as_one_tile() -> None:
    """One tile over the domain (extended, rounded to 32) when it holds <= batch_size * tile_size**2 pixels."""
    # 640 x 710 with 512-pixel tiles and overlap 64: one 768 x 864 tile (663 552 px <= 4 * 512**2), not four
    s = TilingSettings(tile_size=512, overlap=64, batch_size=4)
    assert tile_grid(640, 710, s) == [(-64, -77)]
    assert tile_shape(640, 710, s) == (768, 864)
    # at batch 2 that tile (663 552 px) is more than 2 * 512**2: four overlapping 512-pixel tiles as before
    assert len(tile_grid(640, 710, TilingSettings(tile_size=512, overlap=64, batch_size=2))) == 4
    # the rule is on area: 256 x 128 at batch 2 is one 256 x 128 tile (32 768 = 2 * 128**2)
    assert tile_grid(256, 128, TilingSettings(tile_size=128, overlap=0, batch_size=2)) == [(0, 0)]
    assert tile_shape(256, 128, TilingSettings(tile_size=128, overlap=0, batch_size=2)) == (256, 128)


def test_settings_validation_and_for_model() -> None:
    with pytest.raises(TilingSettingsError, match=r"tile_size.*multiple of divisibility 32"):
        TilingSettings(tile_size=100)
    with pytest.raises(TilingSettingsError, match="overlap"):
        TilingSettings(tile_size=128, overlap=64)
    with pytest.raises(TilingSettingsError, match="blend"):
        TilingSettings(blend="gauss")  # type: ignore[arg-type]
    with pytest.raises(TilingSettingsError, match="pad_mode"):
        TilingSettings(pad_mode="wrap")
    with pytest.raises(TilingSettingsError, match="batch_size"):
        TilingSettings(batch_size=0)
    assert TilingSettings.for_model(48).tile_size == 528
    assert TilingSettings.for_model(1).tile_size == 512
    s = TilingSettings.for_model(16, tile_size=64, overlap=8, blend="none")
    assert (s.divisibility, s.tile_size, s.overlap, s.blend) == (16, 64, 8, "none")
    with pytest.raises(TilingSettingsError, match="tile_sise"):
        TilingSettings.for_model(16, tile_sise=64)
    with pytest.raises(TilingSettingsError, match="multiple"):
        TilingSettings.for_model(48, tile_size=512)


def test_bad_field_and_bad_model_output() -> None:
    s = TilingSettings(tile_size=64, overlap=8)
    with pytest.raises(TilingError, match=r"\[C, H, W\].*\(10, 10\)"):
        predict_domain(_identity, np.zeros((10, 10), np.float32), s)
    with pytest.raises(TilingError, match="width is 0"):
        predict_domain(_identity, np.zeros((1, 10, 0), np.float32), s)
    with pytest.raises(TilingError, match=r"returned \(1, 1, 32, 32\).*\[B, K, 64, 64\]"):
        predict_domain(lambda x: x[:, :, ::2, ::2], np.zeros((1, 40, 40), np.float32), s)
    with pytest.raises(TilingError, match="returned tuple"):
        predict_domain(_not_a_tensor, np.zeros((1, 40, 40), np.float32), s)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (700, 300), (129, 1)])
def test_identity_returns_input(blend: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    field = rng.normal(size=(2, *shape)).astype(np.float32)
    s = TilingSettings(tile_size=128, overlap=16, blend=blend)  # type: ignore[arg-type]
    out = predict_domain(_identity, field, s)
    assert out.shape == field.shape and out.dtype == np.float32
    if blend == "none":  # weights 0/1 (2 where the last tile overlaps more): bit-exact
        np.testing.assert_array_equal(out, field)
    else:
        np.testing.assert_allclose(out, field, rtol=1e-6, atol=1e-6)


def test_tensor_input_and_integer_input() -> None:
    field = torch.arange(3 * 50 * 70, dtype=torch.float32).reshape(3, 50, 70)
    s = TilingSettings(tile_size=32, overlap=4, divisibility=8, blend="none")
    np.testing.assert_array_equal(predict_domain(_identity, field, s), field.numpy())
    as_int = np.arange(50 * 70, dtype=np.int16).reshape(1, 50, 70)
    np.testing.assert_array_equal(predict_domain(_identity, as_int, s), as_int.astype(np.float32))


@pytest.mark.parametrize("blend", BLENDS)
def test_constant_model_gives_the_constant(blend: str) -> None:
    field = np.random.default_rng(2).normal(size=(3, 301, 517)).astype(np.float32)
    s = TilingSettings(tile_size=128, overlap=24, blend=blend)  # type: ignore[arg-type]

    def constant(x: Tensor) -> Tensor:
        return torch.full((x.shape[0], 2, *x.shape[2:]), 3.25)

    out = predict_domain(constant, field, s)
    assert out.shape == (2, 301, 517)
    np.testing.assert_allclose(out, 3.25, rtol=1e-6)


def _interior_error(model: nn.Module, field: np.ndarray, settings: TilingSettings, border: int) -> np.ndarray:
    full = _full_frame(model, field)
    tiled = predict_domain(model, field, settings)
    return np.abs(tiled - full)[:, border:-border, border:-border].max(axis=0)


@pytest.mark.parametrize(("blend", "overlap"),
                         [("hann", 4), ("hann", 8), ("linear", 6), ("none", 2), ("none", 8)])
def test_conv_model_tiled_equals_full_frame(blend: str, overlap: int) -> None:
    """Receptive-field radius 2: exact for overlap // 2 >= 2 (blended) or overlap >= 2 (hard cut)."""
    field = np.random.default_rng(3).normal(size=(3, 211, 173)).astype(np.float32)
    model = _conv_stack(3, 2)
    s = TilingSettings(tile_size=48, overlap=overlap, divisibility=16, blend=blend)  # type: ignore[arg-type]
    assert len(tile_grid(211, 173, s)) >= 20
    err = _interior_error(model, field, s, border=2)
    assert err.max() < 1e-5


def test_seams_appear_without_enough_overlap() -> None:
    """Same conv stack: overlap 0 leaves errors exactly at tile boundaries; overlap 8 removes them."""
    field = np.random.default_rng(4).normal(size=(3, 160, 160)).astype(np.float32)
    model = _conv_stack(3, 1, seed=5)
    no_overlap = TilingSettings(tile_size=64, overlap=0, blend="none")
    err0 = _interior_error(model, field, no_overlap, border=2)
    err8 = _interior_error(model, field, TilingSettings(tile_size=64, overlap=8, blend="none"), border=2)
    assert err8.max() < 1e-5
    assert err0.max() > 1e-2
    # overlap 0: rows 0, 64, 96 (last tile flush with 160) start tiles; errors only within 2 px of a tile edge
    starts = {r for r, _ in tile_grid(160, 160, no_overlap)}
    edges = starts | {r + 64 for r in starts}
    assert edges == {0, 64, 96, 128, 160}
    near = np.zeros(160, bool)
    for e in edges:
        near[max(e - 2, 0) : e + 2] = True
    near_rows = near[2:-2]  # the error map excludes a 2-pixel domain border
    assert err0[~near_rows][:, ~near_rows].max() < 1e-5
    assert err0[near_rows].max() > 1e-2
    # blended but with a guard band (overlap // 2 = 1) thinner than the radius: not exact either
    err_thin = _interior_error(model, field, TilingSettings(tile_size=64, overlap=2), border=2)
    assert err_thin.max() > 1e-4


def test_more_output_channels_than_inputs() -> None:
    field = np.random.default_rng(6).normal(size=(3, 150, 97)).astype(np.float32)
    torch.manual_seed(7)
    model = nn.Conv2d(3, 5, 1).eval()  # pointwise: exact everywhere, borders included
    out = predict_domain(model, field, TilingSettings(tile_size=64, overlap=8, divisibility=16))
    assert out.shape == (5, 150, 97)
    np.testing.assert_allclose(out, _full_frame(model, field), atol=1e-5)
    fewer = predict_domain(nn.Conv2d(3, 1, 1).eval(), field, TilingSettings(tile_size=64, overlap=8))
    assert fewer.shape == (1, 150, 97)


# ---------------------------------------------------------------------------- inputs the model sees


def test_nan_inputs_are_filled() -> None:
    field = np.random.default_rng(8).normal(size=(2, 90, 70)).astype(np.float32)
    field[0, :5, :] = np.nan  # the top border: also reflected into the padding
    field[1, 40:50, 30:33] = np.nan
    rec = Recorder()
    out = predict_domain(rec, field, TilingSettings(tile_size=64, overlap=8, nan_fill=-7.5, blend="none"))
    assert not rec.nan_seen
    expected = np.where(np.isnan(field), np.float32(-7.5), field)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("shape", "mode", "np_mode"), [((37, 53), "reflect", "reflect"),
                                                        ((1, 3), "reflect", "edge"),
                                                        ((37, 53), "replicate", "edge")])
def test_border_padding_matches_numpy_pad(shape: tuple[int, int], mode: str, np_mode: str) -> None:
    field = np.random.default_rng(9).normal(size=(2, *shape)).astype(np.float32)
    s = TilingSettings(tile_size=128, overlap=16, pad_mode=mode)
    (r0, c0), = tile_grid(*shape, s)
    th, tw = tile_shape(*shape, s)
    rec = Recorder(keep_tiles=True)
    predict_domain(rec, field, s)
    # reflect on (1, 3) needs more than the axes hold: both fall back to replicate (the "edge" of numpy)
    pads = ((0, 0), (-r0, th - shape[0] + r0), (-c0, tw - shape[1] + c0))
    padded = np.pad(field, pads, mode=np_mode)  # type: ignore[call-overload]
    np.testing.assert_array_equal(rec.tiles[0], padded)


def test_constant_padding_uses_nan_fill() -> None:
    field = np.ones((1, 20, 20), np.float32)
    s = TilingSettings(tile_size=64, overlap=8, pad_mode="constant", nan_fill=-1.0)
    rec = Recorder(keep_tiles=True)
    predict_domain(rec, field, s)
    tile = rec.tiles[0][0]
    (r0, c0), = tile_grid(20, 20, s)
    assert tile[-r0 : -r0 + 20, -c0 : -c0 + 20].min() == 1.0
    assert tile.sum() == 400 - (64 * 64 - 400)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batches_modes_and_layout(channels_last: bool) -> None:
    field = np.random.default_rng(10).normal(size=(3, 300, 260)).astype(np.float32)
    s = TilingSettings(tile_size=64, overlap=8, batch_size=3, channels_last=channels_last)
    n = len(tile_grid(300, 260, s))
    rec = Recorder().train()
    predict_domain(rec, field, s)
    assert sum(rec.batches) == n
    assert max(rec.batches) == 3 and len(rec.batches) == math.ceil(n / 3)
    assert rec.training_seen == {False} and rec.inference_seen == {True}
    assert rec.channels_last_seen == {channels_last}
    assert rec.training  # the caller's mode is restored


def test_model_on_another_device_is_refused() -> None:
    model = nn.Conv2d(1, 1, 1).to("meta")
    with pytest.raises(TilingError, match=r"meta.*cpu"):
        predict_domain(model, np.zeros((1, 8, 8), np.float32), TilingSettings(tile_size=32, overlap=4))


# ---------------------------------------------------------------------------- memory and progress


def test_memory_is_bounded_by_the_output_plus_a_batch() -> None:
    h = w = 2000
    field = np.random.default_rng(11).random((1, h, w), dtype=np.float32)
    s = TilingSettings(tile_size=256, overlap=32, batch_size=4)
    rec = Recorder()
    tracemalloc.start()
    try:
        out = predict_domain(rec, field, s)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(out, field, rtol=1e-6, atol=1e-6)
    # (2000 + 64 - 256) / 192 = 9.4 -> 10 strides, 11 tiles a side
    assert sum(rec.batches) == len(tile_grid(h, w, s)) == 121
    domain = h * w * 4  # the float32 output; the input existed before tracing started
    batch = s.batch_size * 256 * 256 * 4
    # the output (16 MB) is allocated; nothing else domain-sized (a padded copy would double it)
    assert domain <= peak <= estimate_peak_bytes(1, 1, h, w, s)
    assert estimate_peak_bytes(1, 1, h, w, s) < domain + 5 * batch


def test_estimate_grows_with_the_output_only() -> None:
    """Beyond the [K, H, W] output, the estimate is a fixed tile-batch cost, whatever the domain size."""
    s = TilingSettings()
    big = estimate_peak_bytes(4, 1, 7316, 4963, s)
    half = estimate_peak_bytes(4, 1, 3658, 4963, s)
    fixed = big - 7316 * 4963 * 4
    assert abs(fixed - (half - 3658 * 4963 * 4)) < 1e6
    # 4 tiles of 4 x 512 x 512 float32 in, twice (buffer + channels-last copy), and 4 x 1 out: ~38 MB
    assert 2 * 4 * 4 * 512 * 512 * 4 < fixed < 64e6
    assert estimate_peak_bytes(4, 2, 7316, 4963, s) - big > 7316 * 4963 * 4


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    field = np.zeros((1, 100, 100), np.float32)
    s = TilingSettings(tile_size=64, overlap=8, progress=True)
    n = len(tile_grid(100, 100, s))
    out = predict_domain(_identity, field, s)
    assert out.shape == (1, 100, 100)
    assert f"{n}/{n}" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_autocast_close_to_cpu() -> None:
    field = np.random.default_rng(12).normal(size=(3, 700, 500)).astype(np.float32)
    model = _conv_stack(3, 2)
    cpu = predict_domain(model, field, TilingSettings(tile_size=128, overlap=16))
    gpu = predict_domain(model.cuda(), field,
                         TilingSettings(tile_size=128, overlap=16, device="cuda",
                                        autocast_dtype=torch.bfloat16))
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=0.05)
    exact = predict_domain(model, torch.from_numpy(field).cuda(), TilingSettings(tile_size=128, overlap=16,
                                                                                  device="cuda"))
    np.testing.assert_allclose(exact, cpu, atol=1e-4)
