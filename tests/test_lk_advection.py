"""The Lucas-Kanade-input nowcast head: motion turned with the frames, LK extrapolation at start, keys checked."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from meteovision.core.errors import ConfigError
from meteovision.datasets.motion import MOTION_INPUT_SCALE, augment_motion, lucas_kanade
from meteovision.pipeline.checkpoints.metadata import NetworkMetadata
from meteovision.pipeline.checkpoints.networks import LucasKanadeAdvection, build_network
from meteovision.pipeline.training.tasks import NowcastTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _moving_rain(shift: tuple[int, int], size: int = 96, frames: int = 3) -> np.ndarray:
    """Smooth rain cells (mm h-1) moving ``shift`` = (columns, rows) pixels per step."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.zeros((size, size))
    for _ in range(12):
        cy, cx = rng.uniform(20, size - 20, 2)
        base += rng.uniform(2, 8) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 6) ** 2))
    return np.stack([np.roll(base, (t * shift[1], t * shift[0]), axis=(0, 1)) for t in range(frames)]).astype("f4")


def _augment(frames: np.ndarray, k: int, flip_y: bool, flip_x: bool) -> np.ndarray:
    """As ArchiveSequenceDataset turns a sample: rot90, then flip along y, then along x."""
    out = np.rot90(frames, k, axes=(-2, -1))
    if flip_y:
        out = out[..., ::-1, :]
    if flip_x:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


@pytest.mark.parametrize(("k", "flip_y", "flip_x"), [(0, False, False), (1, False, False), (2, True, False),
                                                     (3, False, True), (1, True, True)])
def test_augmented_motion_is_the_motion_of_the_augmented_frames(k: int, flip_y: bool, flip_x: bool) -> None:
    pytest.importorskip("pysteps")
    pytest.importorskip("cv2")
    frames = _moving_rain((3, -2))
    motion = lucas_kanade(frames)
    assert np.median(motion[0]) == pytest.approx(3.0, abs=0.3)
    assert np.median(motion[1]) == pytest.approx(-2.0, abs=0.3)
    turned = augment_motion(motion, k, flip_y, flip_x)
    measured = lucas_kanade(_augment(frames, k, flip_y, flip_x))
    for axis in (0, 1):
        assert np.median(turned[axis]) == pytest.approx(np.median(measured[axis]), abs=0.3)


def test_untrained_head_is_extrapolation_along_the_given_motion() -> None:
    meta = NetworkMetadata(model_name="unet", in_channels=3, out_channels=3, nowcast_head="lk_advection",
                           model_settings={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
                           variables_per_frame=1, max_speed=1.0)
    net = build_network(meta).eval()
    assert isinstance(net, LucasKanadeAdvection)
    frames = torch.from_numpy(_moving_rain((0, 0), size=64))[None]
    motion = torch.zeros(1, 2, 64, 64)
    motion[:, 0] = 2.0 / MOTION_INPUT_SCALE  # 2 px per step eastward
    with torch.no_grad():
        out = net(torch.cat([frames, motion], dim=1))
    assert out.shape == (1, 3, 64, 64)
    last = frames[0, -1].numpy()
    for lead in range(3):
        expected = np.roll(last, 2 * (lead + 1), axis=1)
        interior = np.s_[:, 10:]  # columns whose source lies inside the frame
        np.testing.assert_allclose(out[0, lead].numpy()[interior], expected[interior], atol=1e-4)


def test_tiled_inference_carries_rain_across_tile_borders() -> None:
    """Tiles compute motion and corrections; one advection over the blended domain moves the rain.

    Rain moving 6 px per step crosses 72 px in 12 leads, more than a 64-px tile's 16-px context: advecting
    inside each tile would lose it at the borders. The split gives the whole-domain nowcast.
    """
    from meteovision.pipeline.inference.tiling import TilingSettings, predict_domain

    meta = NetworkMetadata(model_name="unet", in_channels=3, out_channels=3, nowcast_head="lk_advection",
                           model_settings={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
                           variables_per_frame=1, max_speed=1.0)
    net = build_network(meta).eval()
    x = torch.cat([torch.from_numpy(_moving_rain((0, 0), size=192))[None], torch.zeros(1, 2, 192, 192)], dim=1)
    x[:, 3] = 6.0 / MOTION_INPUT_SCALE
    tiling = TilingSettings.for_model(8, tile_size=64, overlap=16)
    with torch.no_grad():
        whole = net.extrapolate(x, 12)[0].numpy()
        fields = predict_domain(net.motion_fields, x[0].numpy(), tiling)
        tiled = net.advect_fields(torch.from_numpy(fields)[None], 12)[0].numpy()
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    per_tile = predict_domain(lambda t: net.extrapolate(t, 12), x[0].numpy(), tiling)  # the old way
    assert np.abs(per_tile - whole).max() > 0.5  # mm h-1 lost or misplaced at tile borders


@pytest.mark.parametrize(("head", "motion_input"), [("lk_advection", False), ("lagrangian", True)])
def test_head_and_datamodule_must_agree_on_the_motion_input(head: str, motion_input: bool) -> None:
    task = NowcastTask("nowcast_precip", nowcast_head=head, max_speed=1.0)
    with pytest.raises(ConfigError, match=r"nowcast_head .* data.init_args.motion_input is"):
        task.check_datamodule(SimpleNamespace(motion_input=motion_input))
    task.check_datamodule(SimpleNamespace(motion_input=not motion_input))


def test_every_method_of_a_skill_plot_has_its_own_colour() -> None:
    from meteovision.pipeline.verification.plots import method_colours

    colours = method_colours(["real", "synthetic", "persistence", "lk", "sprog"])
    assert len(set(colours.values())) == 5
    assert method_colours(["network", "lk"])["network"] != method_colours(["network", "lk"])["lk"]
