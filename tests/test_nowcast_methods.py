"""Nowcast methods behind one interface, on fields whose future is known exactly.

Rain is a set of Gaussian cells translated by a whole number of pixels per step, so the true
motion and every future frame are known: LK must recover the motion and forecast the moved
cells, S-PROG must move them too, an untrained advection network must be persistence at any
lead, and the source mask must cut exactly the band that rain enters from outside.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meteovision.pipeline.checkpoints.loading import CHECKPOINT_KEY, CheckpointMetadata
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast, build_network
from meteovision.pipeline.inference.lead_smoothing import smooth_extrapolated_leads
from meteovision.pipeline.inference.predict import infer_field
from meteovision.pipeline.verification.nowcast_methods import (
    LucasKanadeNowcast,
    NetworkNowcast,
    NowcastDependencyError,
    NowcastError,
    NowcastInput,
    NowcastMethod,
    Persistence,
    SprogNowcast,
    build_method,
    lucas_kanade_motion,
    source_inside_mask,
)
from tests.predict_helpers import nowcast_checkpoint, with_meta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 96
DX, DY = 2.0, 1.0  # pixels per step, eastward and southward
#: (row, col, sigma px, peak mm h-1) of the cells at t = 0
CELLS = ((30.0, 22.0, 7.0, 12.0), (58.0, 32.0, 5.0, 6.0), (40.0, 48.0, 4.0, 20.0))
LEADS = 4


def cells(t: float, size: int = SIZE) -> np.ndarray:
    """Rain (mm h-1) of the Gaussian cells at time step ``t``, moved t * (DX, DY) pixels."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    rate = np.zeros((size, size))
    for r0, c0, sigma, peak in CELLS:
        rate += peak * np.exp(-((rows - r0 - DY * t) ** 2 + (cols - c0 - DX * t) ** 2) / (2.0 * sigma**2))
    return rate.astype(np.float32)


def past_of(frames: np.ndarray, step: float = 5.0, spacing: float = 1000.0) -> NowcastInput:
    return NowcastInput(frames=frames, time_step_minutes=step, pixel_size_m=spacing)


def centroid(rate: np.ndarray) -> np.ndarray:
    """Rain-weighted (row, col) centre; NaN counts as dry."""
    r = np.nan_to_num(rate, nan=0.0)
    rows, cols = np.mgrid[0 : r.shape[0], 0 : r.shape[1]]
    return np.array([(r * rows).sum(), (r * cols).sum()]) / r.sum()


MIDDLE = ((SIZE - 1) / 2.0, (SIZE - 1) / 2.0)


def disc_coverage(radius: float = 44.0, centre: tuple[float, float] = MIDDLE) -> np.ndarray:
    """Radar coverage: True inside a disc of ``radius`` pixels."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


@pytest.fixture(scope="module")
def moving() -> NowcastInput:
    return past_of(np.stack([cells(t) for t in range(3)]))


# ----------------------------------------------------------------------------- persistence and input


def test_persistence_repeats_the_last_frame_nan_included() -> None:
    rng = np.random.default_rng(0)
    frames = rng.gamma(0.5, 2.0, size=(2, 12, 10)).astype(np.float32)
    frames[1, :3, :4] = np.nan
    out = build_method("persistence").forecast(past_of(frames), 3)
    assert out.shape == (3, 12, 10) and out.dtype == np.float32
    for lead in out:
        np.testing.assert_array_equal(lead, frames[1])
    assert np.isnan(out[:, :3, :4]).all()


def test_input_and_lead_errors_are_the_package_s() -> None:
    with pytest.raises(NowcastError, match=r"\(T, H, W\)"):
        past_of(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(NowcastError, match="time_step_minutes"):
        past_of(np.zeros((3, 8, 8)), step=0.0)
    with pytest.raises(NowcastError, match="infinite"):
        past_of(np.full((3, 8, 8), np.inf))
    with pytest.raises(NowcastError, match="n_leads"):
        Persistence().forecast(past_of(np.zeros((1, 8, 8))), 0)
    two = past_of(np.stack([cells(0), cells(1)]))
    for method in (build_method("lk"), build_method("sprog")):
        with pytest.raises(NowcastError, match="needs the last 3 frames, got 2"):
            method.forecast(two, 2)
    with pytest.raises(NowcastError, match="unknown nowcast method 'steps'"):
        build_method("steps")
    with pytest.raises(NowcastError, match="needs a checkpoint"):
        build_method("network")
    with pytest.raises(NowcastError, match=r"no setting\(s\) \['levels'\]"):
        build_method("sprog", levels=8)


def test_missing_pysteps_names_the_extra(monkeypatch: pytest.MonkeyPatch, moving: NowcastInput) -> None:
    monkeypatch.setitem(sys.modules, "pysteps", None)  # import pysteps now raises ImportError
    with pytest.raises(NowcastDependencyError, match=r"pip install meteovision\[baselines\]"):
        build_method("lk")
    with pytest.raises(NowcastDependencyError, match="pysteps"):
        lucas_kanade_motion(moving)
    assert build_method("persistence").forecast(moving, 1).shape == (1, SIZE, SIZE)  # no pysteps needed


# ----------------------------------------------------------------------------- LK and S-PROG


def test_lk_recovers_the_motion_and_forecasts_the_moved_cells(moving: NowcastInput) -> None:
    motion = lucas_kanade_motion(moving)
    assert motion.shape == (2, SIZE, SIZE)
    rain = moving.frames[-1] > 0.1
    assert abs(motion[0][rain].mean() - DX) < 0.3 and abs(motion[1][rain].mean() - DY) < 0.3

    method = build_method("lk")
    assert isinstance(method, LucasKanadeNowcast) and method.name == "lk"
    out = method.forecast(moving, LEADS)
    assert out.shape == (LEADS, SIZE, SIZE) and out.dtype == np.float32
    for k in range(1, LEADS + 1):
        truth, lead = cells(2 + k), out[k - 1]
        ok = np.isfinite(lead)
        assert ok.mean() > 0.8  # the upwind band (k * 2 columns, k rows) has no source
        assert np.corrcoef(lead[ok], truth[ok])[0, 1] > 0.9
        assert np.abs(centroid(lead) - centroid(truth)).max() < 1.0
        # and it is not persistence: the last frame is k * (1, 2) px away from the truth
        assert np.abs(centroid(moving.frames[-1]) - centroid(truth)).max() > 1.5 * k
    # pysteps' threshold: nothing between 0 and 0.1 mm h-1
    finite = out[np.isfinite(out)]
    assert finite.min() == 0.0 and not ((finite > 0) & (finite < 0.1)).any()


def test_sprog_moves_the_rain_in_mm_per_hour(moving: NowcastInput) -> None:
    method = build_method("sprog")
    assert isinstance(method, SprogNowcast) and (method.n_cascade_levels, method.ar_order) == (6, 2)
    out = method.forecast(moving, LEADS)
    assert out.shape == (LEADS, SIZE, SIZE) and out.dtype == np.float32
    finite = out[np.isfinite(out)]
    assert finite.min() >= 0.0 and finite.max() <= 1.01 * float(np.nanmax(moving.frames[-1]))
    start = centroid(moving.frames[-1])
    for k in range(1, LEADS + 1):
        lead = out[k - 1]
        assert np.isfinite(lead).mean() > 0.8
        moved = centroid(lead) - start
        assert np.abs(moved - k * np.array([DY, DX])).max() < 1.0, (k, moved)
        # the CDF matching keeps the wet area of the last frame
        wet_now, wet_then = (moving.frames[-1] > 0.1).mean(), (np.nan_to_num(lead) > 0.1).mean()
        assert abs(wet_then - wet_now) < 0.2 * wet_now


# ----------------------------------------------------------------------------- source mask and coverage


def test_source_mask_cuts_the_upwind_band_exactly() -> None:
    past = past_of(np.ones((3, 40, 50), dtype=np.float32))
    east = np.zeros((2, 40, 50))
    east[0] = 2.0  # 2 px per step towards +x: rain at column c came from c - 2k
    mask = source_inside_mask(past, 3, east)
    assert mask.shape == (3, 40, 50) and mask.dtype == bool
    for k in (1, 2, 3):
        assert not mask[k - 1][:, : 2 * k].any()
        assert mask[k - 1][:, 2 * k :].all()
    north = np.zeros((2, 40, 50))
    north[1] = -1.5  # towards row 0: rain at row r came from r + 1.5 k
    mask = source_inside_mask(past, 2, north)
    for k in (1, 2):
        last_inside = int(np.floor(39 - 1.5 * k))
        assert mask[k - 1][: last_inside + 1].all() and not mask[k - 1][last_inside + 1 :].any()
    with pytest.raises(NowcastError, match=r"motion must be \(2, H, W\)"):
        source_inside_mask(past, 1, np.zeros((2, 5, 5)))


def test_source_mask_from_lk_motion_and_radar_coverage(moving: NowcastInput) -> None:
    mask = source_inside_mask(moving, LEADS)  # motion from LK: about (2, 1) px per step over the rain
    k = LEADS
    assert not mask[k - 1][:, : int(DX * k) - 1].any(), "west band: the air comes from outside"
    assert mask[k - 1][40:60, 20:90].all(), "downstream, over the rain, the source is inside"
    for name in ("lk", "sprog"):  # the extrapolations have no value exactly where the mask is False
        np.testing.assert_array_equal(np.isnan(build_method(name).forecast(moving, LEADS)), ~mask)

    covered = disc_coverage()
    frames = np.where(covered, moving.frames, np.nan).astype(np.float32)
    gappy = past_of(frames)
    east = np.zeros((2, SIZE, SIZE))
    east[0] = DX
    mask = source_inside_mask(gappy, 2, east)
    row = SIZE // 2
    inside_cols = np.flatnonzero(covered[row])
    west_edge = inside_cols[0]
    # along the middle row, lead 2: the first 4 covered pixels take their rain from outside the disc
    assert not mask[1][row, west_edge : west_edge + 4].any()
    assert mask[1][row, west_edge + 4 : inside_cols[-1] + 1].all()


def test_methods_keep_nan_where_the_source_is_not_covered(moving: NowcastInput) -> None:
    # coverage cuts the lower-right corner, clear of the rain: the gaps must change nothing where it is seen
    covered = disc_coverage(60.0, (40.0, 40.0))
    assert (~covered).mean() > 0.05 and not (moving.frames[:, ~covered] > 0.01).any()
    gappy = past_of(np.where(covered, moving.frames, np.nan).astype(np.float32))
    mask = source_inside_mask(gappy, LEADS)
    assert mask.mean() > 0.4
    scored = mask & covered  # the evaluator also needs an observation (the coverage does not move)
    clear = build_method("lk").forecast(moving, LEADS)
    for name in ("persistence", "lk", "sprog"):
        out = build_method(name).forecast(gappy, LEADS)
        assert np.isfinite(out[scored]).all(), name  # every pixel the evaluator scores has a value
        # deeper in the gap than 4 leads of (2, 1) px carry: no value
        assert np.isnan(out[:, ~disc_coverage(70.0, (40.0, 40.0))]).all(), name
    lk = build_method("lk").forecast(gappy, LEADS)
    # the gaps change neither the motion nor the values where the source is covered
    np.testing.assert_allclose(lucas_kanade_motion(gappy), lucas_kanade_motion(moving), atol=1e-6)
    np.testing.assert_allclose(lk[mask], clear[mask], rtol=1e-5, atol=1e-6)
    assert not mask[:, ~disc_coverage(70.0, (40.0, 40.0))].any()


# ----------------------------------------------------------------------------- network


class _Flow(torch.nn.Module):
    """Backbone stand-in: constant motion (u, v) px per step after tanh * 6, and constant corrections."""

    def __init__(self, u: float, v: float, corrections: tuple[float, ...]) -> None:
        super().__init__()
        self.uv = (float(np.arctanh(u / 6.0)), float(np.arctanh(v / 6.0)))
        self.corrections = corrections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2 + len(self.corrections), *x.shape[2:])
        out[:, 0], out[:, 1] = self.uv
        for i, c in enumerate(self.corrections):
            out[:, 2 + i] = c
        return out


def test_advection_head_extrapolates_past_its_trained_leads() -> None:
    x = torch.zeros(1, 2, 20, 30)
    x[0, 1, 4:7, 2:5] = 1.0  # a 3 x 3 cell in the last frame
    net = AdvectionNowcast(_Flow(2.0, 1.0, (0.0, 0.0)), variables_per_frame=1, lead_times=2, corrections=False,
                           flow_smoothing=0)
    out = net.extrapolate(x, 5)
    assert out.shape == (1, 5, 20, 30)
    torch.testing.assert_close(out[:, :2], net(x))
    for k in range(1, 6):  # 2 px east and 1 px south per step, at every lead
        expected = torch.zeros(20, 30)
        expected[4 + k : 7 + k, 2 + 2 * k : 5 + 2 * k] = 1.0
        torch.testing.assert_close(out[0, k - 1], expected, atol=1e-5, rtol=0)
    # with corrections: lead M's (uniform) correction is carried on past M
    corrected = AdvectionNowcast(_Flow(2.0, 1.0, (0.5, -0.25)), 1, 2, corrections=True, flow_smoothing=0)
    out = corrected.extrapolate(x, 4)
    torch.testing.assert_close(out[:, :2], corrected(x))
    for k, c in ((1, 0.5), (2, -0.25), (3, -0.25), (4, -0.25)):
        assert float(out[0, k - 1, 0, 29]) == pytest.approx(c)  # far from the cell: only the correction
        assert float(out[0, k - 1, 5 + k, 3 + 2 * k]) == pytest.approx(1.0 + c)  # the cell, moved k steps
    with pytest.raises(ValueError, match="n_leads"):
        net.extrapolate(x, 0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fitted lagrangian nowcast (3 -> 2 frames, tiny Half-UNet), the same untrained, and a direct head."""
    root = tmp_path_factory.mktemp("nowcast_methods")
    trained = nowcast_checkpoint(root).checkpoint
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    meta = CheckpointMetadata.from_checkpoint_dict(ckpt)
    assert meta.network.nowcast_head == "lagrangian"
    out = {"trained": trained}
    for name, head in (("untrained", "lagrangian"), ("direct", "direct"), ("lk_untrained", "lk_advection")):
        torch.manual_seed(0)
        other = dataclasses.replace(meta, network=dataclasses.replace(meta.network, nowcast_head=head))
        net = build_network(other.network)
        state = {f"net.{k}": v for k, v in net.state_dict().items()}
        path = root / f"{name}.ckpt"
        torch.save({**ckpt, "state_dict": state, CHECKPOINT_KEY: other.to_dict()}, path)
        out[name] = path
    return out


def network_input(size: int = 40, step: float = 5.0, spacing: float = 1000.0) -> NowcastInput:
    """Rain that is 0 or >= 0.2 mm h-1 (clear of the 0.1 threshold), a gap in the last frame."""
    rng = np.random.default_rng(3)
    frames = rng.gamma(0.6, 3.0, size=(4, size, size)).astype(np.float32)
    frames[frames < 0.2] = 0.0
    frames[-1, :5, -6:] = np.nan
    return past_of(frames, step, spacing)


def test_untrained_lagrangian_network_is_persistence_at_every_lead(checkpoints: dict[str, Path]) -> None:
    method = build_method("network", checkpoint=checkpoints["untrained"])
    assert isinstance(method, NetworkNowcast) and method.name == "network"
    assert (method.min_frames, method.trained_leads, method.extends_leads) == (3, 2, True)
    past = network_input()
    out = method.forecast(past, 5)
    assert out.shape == (5, 40, 40) and out.dtype == np.float32
    persistence = Persistence().forecast(past, 5)
    np.testing.assert_allclose(out, persistence, rtol=1e-4, atol=0.0)
    assert np.isnan(out[:, :5, -6:]).all() and (out[np.isfinite(out)] == 0).mean() > 0.2


def test_network_runs_as_predict_and_continues_past_its_leads(
    checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    method = build_method("network", checkpoint=checkpoints["trained"], tile_size=32, overlap=8)
    assert isinstance(method, NetworkNowcast)
    past = network_input(step=15.0, spacing=2000.0)  # OPERA's spacing; trained on 5 min, 1 km
    with caplog.at_level(logging.WARNING, logger="meteovision.pipeline.verification.nowcast_methods"):
        two = method.forecast(past, 2)
        method.forecast(past, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "warned once per spacing"
    assert "time step 5 min" in warnings[0] and "time step 15 min" in warnings[0]
    assert "grid spacing 2000 m" in warnings[0]
    # what predict computes: the last N frames through infer_field, NaN where the last frame is NaN
    window = past.frames[-3:]
    expected = infer_field(method.model, window, method.tiling, np.isnan(window[-1]))
    np.testing.assert_array_equal(two, expected)
    five = method.forecast(past, 5)
    np.testing.assert_allclose(five[:2], two, rtol=1e-5, atol=1e-6)
    assert np.isfinite(five[:, 5:, :]).all() and (five >= 0)[np.isfinite(five)].all()
    assert method.forecast(past, 1).shape == (1, 40, 40)


def test_long_lead_smoothing_is_recorded_and_smooths_only_past_the_trained_leads(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A checkpoint recording ``long_lead_smoothing`` gives the same trained leads and, past them, the
    unsmoothed leads smoothed by sigma = j x its value (no data kept as NaN), in predict and evaluate alike."""
    ckpt = torch.load(checkpoints["trained"], map_location="cpu", weights_only=True)
    meta = CheckpointMetadata.from_checkpoint_dict(ckpt)
    smoothed_meta = dataclasses.replace(meta, network=dataclasses.replace(meta.network, long_lead_smoothing=0.7))
    path = tmp_path / "smoothed.ckpt"
    torch.save({**ckpt, CHECKPOINT_KEY: smoothed_meta.to_dict()}, path)
    plain = build_method("network", checkpoint=checkpoints["trained"])
    smoothed = build_method("network", checkpoint=path)
    assert isinstance(smoothed, NetworkNowcast) and isinstance(plain, NetworkNowcast)
    assert smoothed.model.meta.network.long_lead_smoothing == 0.7
    assert plain.model.meta.network.long_lead_smoothing is None
    past = network_input()
    want = plain.forecast(past, 5)
    got = smoothed.forecast(past, 5)
    np.testing.assert_array_equal(got[:2], want[:2])  # the 2 trained leads
    expected = want.copy()
    smooth_extrapolated_leads(expected, trained_leads=2, variables=1, sigma_per_step=0.7)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.nanstd(got[4]) < np.nanstd(want[4])
    np.testing.assert_array_equal(smoothed.forecast(past, 2), want[:2])


def test_network_in_bf16_runs_under_autocast_close_to_float32(checkpoints: dict[str, Path]) -> None:
    """``precision: bf16`` (the predict stage's setting) reaches the tiles; the nowcast moves by bf16 rounding only."""
    single = build_method("network", checkpoint=checkpoints["trained"], precision="32")
    half = build_method("network", checkpoint=checkpoints["trained"], precision="bf16")
    assert isinstance(single, NetworkNowcast) and isinstance(half, NetworkNowcast)
    assert single.tiling.autocast_dtype is None and half.tiling.autocast_dtype is torch.bfloat16
    past = network_input()
    a, b = single.forecast(past, 4), half.forecast(past, 4)
    finite = np.isfinite(a)
    np.testing.assert_array_equal(finite, np.isfinite(b))
    assert np.abs(a - b)[finite].max() <= 0.05 * max(1.0, float(np.abs(a[finite]).max()))


def test_network_refusals(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    direct = build_method("network", checkpoint=checkpoints["direct"])
    past = network_input()
    assert direct.forecast(past, 2).shape == (2, 40, 40)
    with pytest.raises(NowcastError, match="trained for 2 leads and its 'direct' head cannot extrapolate to 3"):
        direct.forecast(past, 3)
    with pytest.raises(NowcastError, match="needs the last 3 frames, got 2"):
        direct.forecast(past_of(past.frames[-2:]), 1)
    dbz = with_meta(checkpoints["trained"], tmp_path / "dbz.ckpt", channel_units=["dBZ"] * 3,
                    input_variables=["DBZH"])
    with pytest.raises(NowcastError, match="one rain-rate variable in mm h-1"):
        build_method("network", checkpoint=dbz)
    with pytest.raises(NowcastError, match=r"no setting\(s\) \[.colour.\]; it takes \[.device.,"):
        build_method("network", checkpoint=checkpoints["trained"], colour="red")


def test_every_method_fits_the_protocol(checkpoints: dict[str, Path]) -> None:
    methods: list[NowcastMethod] = [build_method(n) for n in ("persistence", "lk", "sprog")]
    methods.append(build_method("network", checkpoint=checkpoints["untrained"]))
    assert [m.name for m in methods] == ["persistence", "lk", "sprog", "network"]
    past = past_of(np.stack([cells(t, 40) for t in range(3)]))
    for m in methods:
        out = m.forecast(past, 3)
        assert out.shape == (3, 40, 40) and out.dtype == np.float32, m.name


def test_untrained_lk_head_is_lk_extrapolation_with_the_shared_motion(
    checkpoints: dict[str, Path], moving: NowcastInput
) -> None:
    """Zero-initialised, the lk_advection head moves the rain as pysteps' LK does, along the very same motion."""
    method = build_method("network", checkpoint=checkpoints["lk_untrained"])
    assert isinstance(method, NetworkNowcast) and method.extends_leads
    out = method.forecast(moving, LEADS)
    lk = build_method("lk").forecast(moving, LEADS)
    for k in range(LEADS):
        both = np.isfinite(out[k]) & np.isfinite(lk[k])
        assert np.corrcoef(out[k][both], lk[k][both])[0, 1] > 0.97
        assert np.abs(centroid(out[k]) - centroid(cells(3 + k))).max() < 1.0
    # the motion the evaluator shares (computed once per analysis time) gives the same nowcast
    shared = dataclasses.replace(moving, motion=lucas_kanade_motion(moving))
    np.testing.assert_array_equal(method.forecast(shared, LEADS), out)
