"""Task-level network wrappers and the classic baselines, on values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from meteovision.core.task_kinds import TaskKind
from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata, NetworkMetadata
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast, LastFrameResidual, build_network
from meteovision.pipeline.verification.baselines import bow_echo_rule, get_baseline, gpi, persistence, texture_filter


class _Zero(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:])



def _meta(out_channels: int = 1, channel_names: list[str] | None = None) -> CheckpointMetadata:
    """The metadata a baseline reads (channel names, output count), for a network never trained."""
    names = tuple(channel_names or ())
    return CheckpointMetadata("x", TaskKind.SEGMENTATION, NetworkMetadata("halfunet", max(len(names), 1), out_channels),
                              channel_names=names)

def test_untrained_residual_nowcast_is_exactly_persistence() -> None:
    x = torch.arange(2 * 6 * 3 * 4, dtype=torch.float32).reshape(2, 6, 3, 4)  # 3 frames x 2 variables
    net = LastFrameResidual(_Zero(8), variables_per_frame=2, lead_times=4)
    out = net(x)
    assert out.shape == (2, 8, 3, 4)
    for lead in range(4):
        torch.testing.assert_close(out[:, 2 * lead : 2 * lead + 2], x[:, 4:6])


def test_build_network_wraps_only_when_asked_and_keeps_shapes() -> None:
    meta = {"model_name": "halfunet", "in_channels": 4, "out_channels": 6,
            "model_settings": {"num_filters": 4, "depth": 2}, "nowcast_head": "residual", "variables_per_frame": 1}
    net = build_network(NetworkMetadata(**meta))
    assert isinstance(net, LastFrameResidual)
    assert net(torch.zeros(1, 4, 21, 19)).shape == (1, 6, 21, 19)
    assert not isinstance(build_network(NetworkMetadata(**{**meta, "nowcast_head": "direct"})), LastFrameResidual)
    advection = build_network(NetworkMetadata(**{**meta, "nowcast_head": "advection"}))
    assert isinstance(advection, AdvectionNowcast)
    assert advection(torch.zeros(1, 4, 21, 19)).shape == (1, 6, 21, 19)
    with pytest.raises(ValueError, match="advection"):
        build_network(NetworkMetadata(**{**meta, "nowcast_head": "warp"}))


class _ConstantFlow(nn.Module):
    """Backbone stand-in: motion atanh(u/6) everywhere (so u pixels per step after tanh * 6), no correction."""

    def __init__(self, u: float, v: float, leads: int) -> None:
        super().__init__()
        self.uv = (float(np.arctanh(u / 6.0)), float(np.arctanh(v / 6.0)))
        self.leads = leads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2 + self.leads, *x.shape[2:])
        out[:, 0], out[:, 1] = self.uv
        return out


def test_advection_head_with_zero_motion_is_persistence() -> None:
    x = torch.rand(2, 3, 16, 20)
    net = AdvectionNowcast(_ConstantFlow(0.0, 0.0, 4), variables_per_frame=1, lead_times=4)
    torch.testing.assert_close(net(x), x[:, 2:3].repeat(1, 4, 1, 1))


def test_advection_head_moves_the_last_frame_k_steps_along_the_motion() -> None:
    x = torch.zeros(1, 2, 16, 24)
    x[0, 1, 6:9, 3:6] = 1.0  # a 3 x 3 cell in the last frame
    net = AdvectionNowcast(_ConstantFlow(2.0, 1.0, 3), variables_per_frame=1, lead_times=3)
    out = net(x)
    for k in (1, 2, 3):  # 2 px east and 1 px south per step
        expected = torch.zeros(16, 24)
        expected[6 + k : 9 + k, 3 + 2 * k : 6 + 2 * k] = 1.0
        torch.testing.assert_close(out[0, k - 1], expected, atol=1e-5, rtol=0)


def test_motion_bound_comes_from_the_checkpoint_and_old_checkpoints_keep_6_px() -> None:
    meta = {"model_name": "halfunet", "in_channels": 4, "out_channels": 3,
            "model_settings": {"num_filters": 4, "depth": 2}, "nowcast_head": "lagrangian", "variables_per_frame": 1}
    old = build_network(NetworkMetadata(**meta))  # written before max_speed was recorded
    fast = build_network(NetworkMetadata(**{**meta, "max_speed": 12.0}))
    assert isinstance(old, AdvectionNowcast) and isinstance(fast, AdvectionNowcast)
    assert (old.max_speed, fast.max_speed) == (6.0, 12.0)
    with torch.no_grad():  # saturate the backbone's motion channels: the flow reaches the bound and no further
        for net in (old, fast):
            last = [m for m in net.net.modules() if isinstance(m, nn.Conv2d)][-1]
            last.bias[:2] = 50.0
    x = torch.zeros(1, 4, 32, 32)
    assert torch.allclose(old.motion(x)[0], torch.full((1, 2, 32, 32), 6.0))
    assert torch.allclose(fast.motion(x)[0], torch.full((1, 2, 32, 32), 12.0))
    with pytest.raises(ValueError, match="max_speed"):
        build_network(NetworkMetadata(**{**meta, "max_speed": -1.0}))


def test_persistence_repeats_last_frame() -> None:
    x = torch.rand(1, 3, 5, 5)
    out = persistence(x, _meta(out_channels=2))
    torch.testing.assert_close(out, x[:, 2:3].repeat(1, 2, 1, 1))


def test_gpi_is_3_mm_below_235_k() -> None:
    ir = torch.tensor([[[[230.0, 235.0], [240.0, 200.0]]]])
    out = gpi(torch.cat([ir, ir + 1.0], dim=1), _meta(channel_names=["IR_108", "IR_120"]))
    assert out.squeeze().tolist() == [[3.0, 0.0], [0.0, 3.0]]


def test_bow_rule_keeps_an_intense_arc_and_drops_a_straight_line_of_equal_intensity() -> None:
    field = np.zeros((64, 64), dtype=np.float32)
    for col in range(10, 54):  # straight squall line, 40 mm/h
        field[8:10, col] = 40.0
    for col in range(10, 54):  # arc bulging downwards by 10 px at its centre
        row = round(40 + 10 * (1 - ((col - 32) / 22.0) ** 2))
        field[row : row + 2, col] = 40.0
    out = bow_echo_rule(torch.from_numpy(field)[None, None], _meta(channel_names=["RATE"])).squeeze().numpy()
    assert out[8:10].sum() == 0, "a straight line is not a bow"
    assert out[40:53].sum() > 0.8 * (field[40:53] > 0).sum(), "the arc is a bow"


def test_texture_filter_flags_rough_clutter_and_speckle_but_keeps_smooth_rain() -> None:
    rng = np.random.default_rng(0)
    z = np.full((40, 40), -32.0)
    yy, xx = np.mgrid[:40, :40]
    z[(yy - 12) ** 2 + (xx - 12) ** 2 < 64] = 30.0 + 0.3 * (yy - 12)[(yy - 12) ** 2 + (xx - 12) ** 2 < 64]
    z[28:36, 26:34] = rng.choice([10.0, 55.0], size=(8, 8))  # ground clutter: +-22 dB from pixel to pixel
    z[2, 37] = 40.0  # speckle
    out = texture_filter(torch.from_numpy(z)[None, None].float(), _meta(channel_names=["TH"])).squeeze().numpy()
    rain = (yy - 12) ** 2 + (xx - 12) ** 2 < 49
    assert out[rain].mean() < 0.05, "smooth rain (also at its edge) is kept"
    assert out[28:36, 26:34].mean() > 0.8
    assert out[2, 37] == 1.0


def test_unknown_baseline_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="persistence"):
        get_baseline("magic")


def test_wrapped_registry_backbone_starts_as_persistence() -> None:
    meta = {"model_name": "deeplabv3plus", "in_channels": 3, "out_channels": 4, "variables_per_frame": 1,
            "model_settings": {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": 16,
                               "encoder_output_stride": 8}}
    x = torch.randn(2, 3, 32, 40)
    for head in ("advection", "residual"):
        net = build_network(NetworkMetadata(**{**meta, "nowcast_head": head})).eval()
        torch.testing.assert_close(net(x), x[:, 2:3].repeat(1, 4, 1, 1), atol=1e-5, rtol=0)
