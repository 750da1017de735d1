"""Explain: filter visualisation raises the filter's response, finds a known pattern, leaves the network
alone and repeats itself; saliency is exactly the gradient and zero where the prediction cannot look.

Networks are tiny (random conv nets, two-level Half-UNets, depth-3 smp encoders) and the ascent
short, so the module runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from meteovision.datasets.datamodules import SegmentationDataModule
from meteovision.datasets.readers import open_dataset
from meteovision.datasets.synthetic import generate_sample_data
from meteovision.models import build_model
from meteovision.pipeline.checkpoints.loading import load_inference_model
from meteovision.pipeline.cli import main
from meteovision.pipeline.explain.cli import add_arguments
from meteovision.pipeline.explain.filters import (
    RISE_MARGIN,
    AscentSettings,
    ExplainError,
    clearly_raised,
    conv_layers,
    encoder_ends,
    explain_for_report,
    frozen,
    input_floor,
    parse_filters,
    resolve_layer,
    visualize_filters,
)
from meteovision.pipeline.explain.saliency import (
    Region,
    class_saliency,
    parse_region,
    region_saliency,
)
from meteovision.pipeline.inference.inputs import InputSpec, read_frames
from meteovision.pipeline.inference.outputs import output_path
from meteovision.pipeline.training.tasks import SegmentationTask
from tests.predict_helpers import SAMPLE, Trained, bow, fit_checkpoint, nowcast, webcam
from tests.product_helpers import run_cf_checker

__all__ = ["bow", "nowcast", "webcam"]  # module-scoped fixtures, shared (tests.predict_helpers)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = AscentSettings(steps=100)
#: A near-flat start: a single ReLU'd filter has no gradient where it does not respond yet.
EDGE = AscentSettings(steps=60, init_spread=0.02)
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def random_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1, bias=False),
    )


def registry_net(name: str) -> nn.Module:
    torch.manual_seed(1)
    settings: dict[str, dict[str, object]] = {
        "halfunet": {"num_filters": 4, "depth": 2},
        "unet": {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": (16, 8, 4)},
        "deeplabv3plus": {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": 16},
        "vgg11": {"hidden_features": 16},
        "resnet18": {},
    }
    return build_model(name, 2, 3, **settings[name])


def same_rms_noise_activation(net: nn.Module, layer: str, filters: list[int], inputs: np.ndarray) -> np.ndarray:
    """Mean activation (border left out as in the ascent) of white noise at the optimised inputs' RMS.

    Averaged over 8 draws: the spatial mean of one draw fluctuates about as much as it is large.
    """
    generator = torch.Generator().manual_seed(123)
    rms = torch.from_numpy(inputs).pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    store: list[torch.Tensor] = []
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda _m, _i, out: store.append(out))
    with frozen(net), torch.no_grad():
        for _ in range(8):
            noise = torch.randn(inputs.shape, generator=generator)
            net(noise / noise.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * rms)
    handle.remove()
    maps = torch.stack([out[torch.arange(len(filters)), torch.tensor(filters)] for out in store])
    h, w = maps.shape[-2:]
    dy, dx = min(h // 8, (h - 1) // 2), min(w // 8, (w - 1) // 2)
    return maps[..., dy : h - dy, dx : w - dx].mean(dim=(-2, -1)).mean(dim=0).numpy()


# ----------------------------------------------------------------------------- activation maximisation


@pytest.mark.parametrize("name", ["convnet", "halfunet", "unet"])
@pytest.mark.parametrize("end", ["first", "last"])
def test_ascent_raises_the_filter_activation(name: str, end: str) -> None:
    net = random_convnet() if name == "convnet" else registry_net(name)
    layer = resolve_layer(conv_layers(net, 2, 32), end).name
    filters = [0, 1, 2, 3]
    result = visualize_filters(net, layer, filters, 2, 32, FAST, seed=0)
    assert result.inputs.shape == (4, 2, 32, 32)
    assert np.abs(result.inputs).max() <= FAST.clamp + 1e-6
    np.testing.assert_allclose(result.rise, result.final_activation - result.initial_activation, rtol=1e-6)
    # A random network's responses are small in absolute terms (the clear-rise margin is asked of
    # trained checkpoints below); every filter must still rise, and beat louder noise.
    assert (result.final_activation > result.initial_activation).all()
    # Not just a louder input: white noise of the same RMS excites every filter less.
    control = same_rms_noise_activation(net, layer, filters, result.inputs)
    assert (result.final_activation > control).all(), (result.final_activation, control)


def sobel_net(kernel: torch.Tensor) -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1))
    with torch.no_grad():
        net[0].weight[0, 0] = kernel
        net[0].bias[0] = 0.0
    return net


def test_sobel_x_filter_gives_a_vertical_edge() -> None:
    """Known answer: a hand-set Sobel-x filter is excited by dark-left / bright-right (a vertical edge).

    Its centre neuron sees a 3 x 3 field; the optimum in the box [-clamp, clamp] is -clamp where a
    weight is negative, +clamp where positive (the middle column, weight 0, stays where it started);
    the input stays featureless (0) outside the field.
    """
    clamp = EDGE.clamp
    for kernel in (SOBEL_X, SOBEL_X.T):
        result = visualize_filters(sobel_net(kernel), "0", [0], 1, 32, EDGE, seed=0)
        y0, y1, x0, x1 = result.receptive_field
        assert (y0, y1, x0, x1) == (15, 18, 15, 18)
        image = result.inputs[0, 0]
        patch = image[y0:y1, x0:x1]
        signs = np.sign(kernel.numpy())
        np.testing.assert_allclose(patch[signs != 0], clamp * signs[signs != 0], atol=1e-3)
        assert np.abs(patch[signs == 0]).max() < 0.5
        outside = image.copy()
        outside[y0:y1, x0:x1] = 0
        assert not outside.any()
        # The response is the optimum: 4 clamp (|weights| sum to 8, half of them times +clamp, half -clamp).
        np.testing.assert_allclose(result.final_activation, [8 * clamp], rtol=1e-3)
        assert result.raised.all()


def test_network_stays_frozen_and_is_restored() -> None:
    net = registry_net("halfunet")
    net.train()
    params = dict(net.named_parameters())
    params["net.head.bias"].requires_grad_(False)  # a mixed set of flags must come back as it was
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {k: p.requires_grad for k, p in net.named_parameters()}
    seen: list[tuple[bool, bool]] = []

    def watch(module: nn.Module, _i: object) -> None:
        seen.append((module.training, any(p.requires_grad for p in net.parameters())))

    handle = net.net.encoders[1][1][0].register_forward_pre_hook(watch)  # the visualised conv
    visualize_filters(net, "net.encoders.1.1.0", [0, 1], 2, 16, AscentSettings(steps=5), seed=0)
    handle.remove()
    assert seen and all(state == (False, False) for state in seen)  # eval mode, nothing trainable
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers bitwise
    assert {k: p.requires_grad for k, p in net.named_parameters()} == flags
    assert net.training
    assert all(p.grad is None for p in net.parameters())


def test_same_seed_same_inputs() -> None:
    net = random_convnet()
    settings = AscentSettings(steps=10)
    a = visualize_filters(net, "2", [0, 5], 2, 24, settings, seed=3)
    b = visualize_filters(net, "2", [0, 5], 2, 24, settings, seed=3)
    c = visualize_filters(net, "2", [0, 5], 2, 24, settings, seed=4)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.final_activation, b.final_activation)
    assert not np.array_equal(a.inputs, c.inputs)


@pytest.mark.parametrize(
    ("name", "first", "last", "unused"),
    [
        ("halfunet", "net.encoders.0.0.0", "net.encoders.1.1.0", 0),
        ("unet", "net.encoder.conv1", "net.encoder.layer2.1.conv2", 10),
        ("deeplabv3plus", "net.encoder.conv1", "net.encoder.layer2.1.conv2", 10),
        ("vgg11", "features.0", "features.18", 0),
        ("resnet18", "conv1", "layer4.1.conv2", 0),
    ],
)
def test_every_registry_model_lists_and_visualises(name: str, first: str, last: str, unused: int) -> None:
    net = registry_net(name)
    layers = conv_layers(net, 2, 32)
    ends = encoder_ends(layers)
    assert (ends[0].name, ends[1].name) == (first, last)
    assert [info.mark for info in layers if info.mark] == ["first encoder", "last encoder"]
    assert sum(info.part == "unused" for info in layers) == unused
    assert [info.depth for info in layers] == list(range(len(layers)))
    assert layers[0].scale == (0.5 if "conv1" in first else 1.0)
    result = visualize_filters(net, last, [0, 1], 2, 32, AscentSettings(steps=3), seed=0)
    assert result.inputs.shape == (2, 2, 32, 32) and np.isfinite(result.final_activation).all()


def test_bad_requests_raise_clear_errors() -> None:
    net = random_convnet()
    assert parse_filters("0-2,5,1", 8) == [0, 1, 2, 5]
    with pytest.raises(ExplainError, match=r"filters \[8\] do not exist"):
        parse_filters("6-8", 8)
    with pytest.raises(ExplainError, match="not an index or a range"):
        parse_filters("a-b", 8)
    with pytest.raises(ExplainError, match="not a Conv2d layer"):
        visualize_filters(net, "1", [0], 2, 16, FAST, seed=0)  # the ReLU
    with pytest.raises(ExplainError, match="do not exist"):
        visualize_filters(net, "4", [4], 2, 16, FAST, seed=0)
    with pytest.raises(ExplainError, match="steps must be >= 1"):
        AscentSettings(steps=0)
    assert parse_region("3:7,:5", (10, 12)) == Region(3, 7, 0, 5)
    assert parse_region(None, (10, 12)) == Region(0, 10, 0, 12)
    with pytest.raises(ExplainError, match="leaves the 10 x 12 grid"):
        parse_region("3:11,0:5", (10, 12))
    with pytest.raises(ExplainError, match="expected y0:y1,x0:x1"):
        parse_region("3-7", (10, 12))


# ----------------------------------------------------------------------------- saliency


class WindowNet(nn.Module):
    """Looks at input channel 0 only, through one 3x3 filter, inside rows 8:24 and columns 6:20."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(1.0, 10.0).view(1, 1, 3, 3))
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., 8:24, 6:20] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, :1] * self.mask)


def test_saliency_is_the_gradient_and_zero_outside_the_receptive_field() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(2, 32, 32)).astype(np.float32)
    region = Region(10, 14, 10, 16)
    grad = region_saliency(WindowNet(), inputs, 0, region)
    # Hand-computed golden: d/dx[i, j] of sum over the region of sum_ab w[a, b] x[p + a - 1, q + b - 1].
    w = np.arange(1.0, 10.0).reshape(3, 3)
    expected = np.zeros((32, 32))
    for p in range(region.y0, region.y1):
        for q in range(region.x0, region.x1):
            expected[p - 1 : p + 2, q - 1 : q + 2] += w
    window = np.zeros((32, 32))
    window[8:24, 6:20] = 1.0
    np.testing.assert_allclose(grad[0], expected * window, rtol=1e-6)
    assert np.count_nonzero(grad[0]) == 6 * 8  # rows 9:15, columns 9:17
    assert not grad[1].any()  # channel 1 is never looked at
    # A region whose receptive field misses the window sees nothing at all.
    assert not region_saliency(WindowNet(), inputs, 0, Region(27, 32, 0, 32)).any()


def test_class_saliency_follows_the_predicted_class() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -2.0]]).view(2, 3, 1, 1))
    inputs = np.zeros((3, 4, 5), dtype=np.float32)
    inputs[2] = -1.0  # class 1's logit 2 beats class 0's 0
    grad, k, logits = class_saliency(net, inputs)
    assert k == 1 and np.allclose(logits, [0.0, 2.0])
    np.testing.assert_allclose(grad, np.stack([np.zeros((4, 5)), np.zeros((4, 5)), np.full((4, 5), -0.1)]))
    grad0, k0, _ = class_saliency(net, inputs, class_index=0)
    assert k0 == 0 and np.allclose(grad0[0], 0.05) and not grad0[1:].any()


# ----------------------------------------------------------------------------- command line on checkpoints


def test_cli_layers_lists_and_marks(bow: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "layers", "--checkpoint", str(bow.checkpoint)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line for line in lines[2:]}
    assert list(rows) == ["net.encoders.0.0.0", "net.encoders.0.1.0", "net.encoders.1.0.0", "net.encoders.1.1.0",
                          "net.decoder.0.0", "net.decoder.1.0", "net.head"]
    assert rows["net.encoders.0.0.0"].split()[:6] == ["0", "net.encoders.0.0.0", "1", "4", "3x3", "1"]
    assert rows["net.encoders.0.0.0"].endswith("encoder (first encoder)")
    assert rows["net.encoders.1.1.0"].split()[5] == "1/2" and rows["net.encoders.1.1.0"].endswith("(last encoder)")
    assert rows["net.head"].split()[3:5] == ["1", "1x1"] and rows["net.head"].endswith("decoder")


def test_cli_filters_writes_png_and_npz_reproducibly(bow: Trained, tmp_path: Path) -> None:
    args = ["explain", "filters", "--checkpoint", str(bow.checkpoint), "--layer", "last", "--filters", "0-2",
            "--size", "32", "--steps", "12", "--seed", "7"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    stem = "filters_net.encoders.1.1.0"
    png = (tmp_path / "a" / f"{stem}.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with np.load(tmp_path / "a" / f"{stem}.npz") as a, np.load(tmp_path / "b" / f"{stem}.npz") as b:
        assert a["inputs"].shape == (3, 1, 32, 32)
        assert a["filters"].tolist() == [0, 1, 2]
        assert a["channel_names"].tolist() == ["RATE"] and str(a["layer"]) == "net.encoders.1.1.0"
        np.testing.assert_array_equal(a["raised"], clearly_raised(a["initial_activation"], a["final_activation"],
                                                                     a["spread"]))
        for key in ("inputs", "raised", "initial_activation", "final_activation"):
            assert np.array_equal(a[key], b[key]), key
    # The npz holds what the Python API computes for the same checkpoint, layer and seed.
    model = load_inference_model(bow.checkpoint)
    direct = visualize_filters(model.net, "net.encoders.1.1.0", [0, 1, 2], 1, 32,
                               AscentSettings(steps=12), seed=7, floors=input_floor(model.input_stats(), 1))
    with np.load(tmp_path / "a" / f"{stem}.npz") as a:
        assert np.array_equal(a["inputs"], direct.inputs)


def test_cli_errors_exit_2(bow: Trained, webcam: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["explain", "filters", "--checkpoint", str(bow.checkpoint), "--out", str(tmp_path)]
    assert main([*base, "--layer", "nope"]) == 2
    assert "no Conv2d layer named 'nope'" in capsys.readouterr().err
    assert main([*base, "--layer", "first", "--filters", "0-9"]) == 2
    assert "do not exist: the layer has 4 filters" in capsys.readouterr().err
    image = webcam.inputs("images")[0]
    assert main(["explain", "saliency", "--checkpoint", str(webcam.checkpoint), "--input", str(image),
                 "--region", "0:4,0:4", "--out", str(tmp_path)]) == 2
    assert "--region does not apply" in capsys.readouterr().err
    assert main(["explain", "saliency", "--checkpoint", str(bow.checkpoint), "--input", str(tmp_path / "x.h5"),
                 "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_cli_saliency_segmentation(bow: Trained, tmp_path: Path) -> None:
    source = bow.inputs("radar")[4]
    out = tmp_path / "products"
    assert main(["explain", "saliency", "--checkpoint", str(bow.checkpoint), "--input", str(source),
                 "--region", "10:20,10:30", "--out", str(out)]) == 0
    model = load_inference_model(bow.checkpoint)
    frame, physical = read_frames(source, InputSpec.from_meta(model.meta))[0]
    product = output_path(model, frame.time, "netcdf", out)  # where `predict` writes this time's product
    nc_path = product.with_name(product.stem + "_saliency.nc")
    assert nc_path.is_file() and nc_path.with_suffix(".png").is_file()
    stats = model.input_stats()
    assert stats is not None
    expected = np.abs(region_saliency(model.net, stats.normalize(physical), 0, Region(10, 20, 10, 30)))[0]
    with xr.open_dataset(nc_path) as ds, open_dataset(source) as src:
        saliency = ds["saliency_RATE"]
        assert saliency.attrs["units"] == "1" and saliency.attrs["grid_mapping"] == "crs"
        assert "rows 10:20, columns 10:30" in saliency.attrs["long_name"]
        assert "of the logit of 'bow_echo_mask' with respect to normalised input channel 'RATE'" in \
            saliency.attrs["long_name"]
        np.testing.assert_array_equal(ds["x"].values, src["x"].values)
        np.testing.assert_array_equal(ds["y"].values, src["y"].values)
        assert ds["time"].values[0] == src["time"].values[0]
        values = saliency.values[0]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-9)
    assert values[10:20, 10:30].max() > 0
    # The two-level Half-UNet sees at most 11 pixels away: rows from 36 and columns from 46 are out of reach.
    assert not values[36:, :].any() and not values[:, 46:].any()


@pytest.mark.filterwarnings("ignore:The ioos_sos checker:DeprecationWarning")
def test_cli_saliency_nowcast_window_is_cf(nowcast: Trained, tmp_path: Path) -> None:
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    assert main(["explain", "saliency", "--checkpoint", str(nowcast.checkpoint), "--input",
                 str(nowcast.data / "radar"), "--output-channel", "1", "--out", str(tmp_path)]) == 0
    (nc_path,) = tmp_path.glob("*_saliency.nc")
    latest = nowcast.inputs("radar")[-1]
    with open_dataset(latest) as src:
        latest_time = src["time"].values[0]
    with netCDF4.Dataset(nc_path) as nc:
        names = [v for v in nc.variables if v.startswith("saliency_")]
        assert names == ["saliency_RATE_t_10min", "saliency_RATE_t_5min", "saliency_RATE_t_0min"]
        long_name = nc["saliency_RATE_t_0min"].long_name  # output channel 1 = the second lead time
        assert "the whole domain of the 'RATE_t+10min' in normalised target units" in long_name
        assert "input channel 'RATE_t+0min'" in long_name
        inputs = json.loads(nc.meteovision_input_files)
    assert inputs == [p.name for p in nowcast.inputs("radar")[-3:]]
    with xr.open_dataset(nc_path) as ds:
        assert ds["time"].values[0] == latest_time
        # Persistence is added to the last frame: its saliency is 1 in every pixel plus the learnt part.
        assert float(ds["saliency_RATE_t_0min"].mean()) > float(ds["saliency_RATE_t_10min"].mean())
    CheckSuite.load_all_available_checkers()
    passed, failures, _ = run_cf_checker(ComplianceChecker, nc_path)
    assert passed and not failures, failures


def test_cli_saliency_classifier(webcam: Trained, tmp_path: Path) -> None:
    image = webcam.inputs("images")[0]
    assert main(["explain", "saliency", "--checkpoint", str(webcam.checkpoint), "--input", str(image),
                 "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / f"{image.stem}_saliency.npz") as data:
        assert data["gradient"].shape == (3, 32, 32)
        assert int(data["class_index"]) == int(np.argmax(data["logits"]))
        assert np.array_equal(data["saliency"], np.abs(data["gradient"])) and data["saliency"].max() > 0
        assert data["channel_names"].tolist() == ["red", "green", "blue"]
    assert (tmp_path / f"{image.stem}_saliency.png").is_file()


def test_clearly_raised_golden() -> None:
    before = np.array([0.08, -1.19, 0.0, 1.0, 0.2, -5.0, 0.0])
    after = np.array([3.1, -1.08, 0.05, 2.1, 0.39, -2.9, 0.0])
    spread = np.array([1.0, 0.01, 0.1, 1.2, 0.1, 1.0, 0.0])
    # A rise of at least 2 spreads, whatever the sign or size of the response before: the second
    # (11 spreads, still negative) and sixth (2.1 spreads) qualify; a filter that random inputs do
    # not move (spread 0) only if it rises at all.
    assert clearly_raised(before, after, spread).tolist() == [True, True, False, False, False, True, False]
    assert RISE_MARGIN == 2.0
    # The command's help states the same rule.
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert f"(clear: >= {RISE_MARGIN:g})" in " ".join(str(sub.choices["filters"].description).split())


def test_explain_for_report_raises_every_filter_of_a_trained_net(tmp_path: Path) -> None:
    """On a trained checkpoint every chosen filter of the first and the last encoder layers rises clearly:
    by at least RISE_MARGIN standard deviations of its response to random plausible inputs."""
    data = tmp_path / "bow_echo"
    generate_sample_data("bow_echo", data, seed=1, settings=SAMPLE)
    torch.manual_seed(0)  # the same checkpoint every run (the rule holds on others too: 4-7 sd at the least)
    task = SegmentationTask(application="bow_echo", model="halfunet", model_settings={"num_filters": 16, "depth": 2},
                            baseline=None)
    dm = SegmentationDataModule(data_dir=str(data), patch_size=32, batch_size=4, input_variables=["RATE"],
                                target_variable="bow_echo_mask", transforms={"RATE": "log1p"})
    paths = explain_for_report(fit_checkpoint(task, dm, tmp_path / "bow.ckpt"), tmp_path)
    assert [p.name for p in paths] == ["filters_net.encoders.0.0.0.png", "filters_net.encoders.1.1.0.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    fields = []
    for path in paths:
        with np.load(path.with_suffix(".npz")) as arrays:
            assert len(arrays["filters"]) == 8  # the 8 of 16 that the starting fields excite most (in sd)
            before, after, spread = arrays["initial_activation"], arrays["final_activation"], arrays["spread"]
            assert (spread > 0).all()
            assert (after - before >= RISE_MARGIN * spread).all(), (path.name, before, after, spread)
            assert arrays["raised"].all() and np.array_equal(arrays["raised"], clearly_raised(before, after, spread))
            fields.append(arrays["receptive_field"].tolist())
    # 64 x 64 input: a 3 x 3 field for the first conv; two more convs, a pooling and two convs: 14 x 14.
    assert fields == [[31, 34, 31, 34], [26, 40, 26, 40]]
