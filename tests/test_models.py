"""Model registry and architectures: lazy imports, settings validation, shapes at any size,
Half-UNet parameter counts against hand counts, local weights, gradients, channels_last, ONNX."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meteovision.models import (
    ModelSettingsError,
    ModelWeightsError,
    UnknownModelError,
    build_model,
    get_model_spec,
    list_models,
)
from meteovision.models.padding import PadToMultiple
from meteovision.models.settings import settings_to_dict

#: Small settings so every model builds and runs in well under a second.
TINY: dict[str, dict[str, Any]] = {
    "halfunet": {"num_filters": 8, "depth": 3},
    "unet": {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]},
    "deeplabv3plus": {"encoder_name": "resnet18", "decoder_channels": 16, "decoder_atrous_rates": [2, 4, 6]},
    "vgg11": {"hidden_features": 32},
    "resnet18": {},
    "resnet50": {},
}
DENSE = ["halfunet", "unet", "deeplabv3plus"]
CLASSIFIERS = ["vgg11", "resnet18", "resnet50"]
HALFUNET_VARIANTS: list[dict[str, Any]] = [
    {"num_filters": 8, "depth": 3},
    {"num_filters": 8, "depth": 4, "use_ghost": True, "upsampling": "transposed"},
    {"num_filters": 6, "depth": 3, "upsampling": "nearest", "batch_norm": False, "activation": "gelu"},
    {"num_filters": 5, "depth": 2, "use_ghost": True, "pad_mode": "replicate"},  # odd: ghost trims
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- registry -------------------------------------------------------------------------------


def test_import_is_lazy_and_specs_need_no_optional_dependency() -> None:
    code = """
import json, sys
import meteovision.models as m
libs = ("torch", "torchvision", "segmentation_models_pytorch", "timm")
after_import = sorted(k for k in libs if k in sys.modules)
names = m.list_models()
specs = {n: m.get_model_spec(n).divisibility for n in names}
model = m.build_model("halfunet", 1, 1, num_filters=4, depth=2)
heavy = sorted(k for k in libs[1:] if k in sys.modules)
print(json.dumps({"after_import": after_import, "heavy": heavy, "specs": specs}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after_import"] == []
    assert result["heavy"] == []  # specs of smp/torchvision models and a halfunet build import neither
    assert result["specs"] == {
        "deeplabv3plus": 16,
        "halfunet": 8,
        "resnet18": 1,
        "resnet50": 1,
        "unet": 32,
        "vgg11": 1,
    }


def test_list_models() -> None:
    assert list_models() == ["deeplabv3plus", "halfunet", "resnet18", "resnet50", "unet", "vgg11"]


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        build_model("unet++", 1, 1)
    message = str(info.value)
    assert "'unet++'" in message
    for name in list_models():
        assert name in message
    assert isinstance(info.value, KeyError)
    assert get_model_spec("HalfUNet").name == "halfunet"  # names are case-insensitive


def test_unknown_setting_names_key_model_and_valid_keys() -> None:
    with pytest.raises(ModelSettingsError) as info:
        build_model("halfunet", 1, 1, num_filter=8)
    message = str(info.value)
    assert "'halfunet'" in message and "'num_filter'" in message and "num_filters" in message
    assert info.value.key == "num_filter" and info.value.model == "halfunet"


@pytest.mark.parametrize(
    ("name", "settings", "key", "fragment"),
    [
        ("halfunet", {"depth": "4"}, "depth", "expected int, got str"),
        ("halfunet", {"depth": True}, "depth", "expected int, got bool"),
        ("halfunet", {"use_ghost": 1}, "use_ghost", "expected bool"),
        ("halfunet", {"upsampling": "cubic"}, "upsampling", "'bilinear' | 'nearest' | 'transposed'"),
        ("halfunet", {"depth": 0}, "depth", "between 1 and 8"),
        ("halfunet", {"pad_mode": "zeros"}, "pad_mode", "'reflect' | 'replicate'"),
        ("unet", {"decoder_channels": [16, 8]}, "decoder_channels", "one entry per encoder level"),
        ("unet", {"encoder_weights": "imagenet"}, "encoder_weights", "encoder_weights_path"),
        ("unet", {"encoder_name": "no_such_net"}, "encoder_name", "no_such_net"),
        ("deeplabv3plus", {"encoder_output_stride": 32}, "encoder_output_stride", "8 | 16"),
        ("deeplabv3plus", {"decoder_atrous_rates": [1, 2]}, "decoder_atrous_rates", "list of 3"),
        ("resnet18", {"dropout": 1.5}, "dropout", "[0, 1)"),
        ("vgg11", {"weights_path": 3}, "weights_path", "str | None"),
    ],
)
def test_bad_settings_name_model_and_key(
    name: str, settings: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ModelSettingsError) as info:
        build_model(name, 1, 2, **settings)
    assert info.value.model == name
    assert info.value.key == key
    assert fragment in str(info.value)
    assert f"'{name}'" in str(info.value)


@pytest.mark.parametrize("channels", [(0, 1), (1, 0), (True, 1), (2.0, 1)])
def test_bad_channel_counts(channels: tuple[Any, Any]) -> None:
    with pytest.raises(ModelSettingsError, match="channels"):
        build_model("halfunet", channels[0], channels[1], num_filters=4, depth=2)


def test_settings_are_typed_frozen_and_round_trip_through_plain_dicts() -> None:
    spec = get_model_spec("unet", encoder_depth=3, decoder_channels=[16, 8, 4], decoder_attention_type="scse")
    assert spec.settings.decoder_channels == (16, 8, 4)  # YAML list -> tuple
    with pytest.raises(AttributeError):
        spec.settings.encoder_depth = 4
    plain = settings_to_dict(spec.settings)
    assert plain["decoder_channels"] == [16, 8, 4]
    assert get_model_spec("unet", **plain).settings == spec.settings
    assert get_model_spec("resnet18", dropout=0).settings.dropout == 0.0  # int accepted for float


def test_specs_declare_the_contract() -> None:
    half = get_model_spec("halfunet", depth=5)
    assert (half.divisibility, half.onnx_supported, half.is_dense) == (16, True, True)
    assert half.supported_num_spatial_dims == (2,)
    assert get_model_spec("unet", encoder_depth=3, decoder_channels=[8, 8, 8]).divisibility == 8
    assert get_model_spec("deeplabv3plus", encoder_output_stride=8).divisibility == 8
    assert get_model_spec("deeplabv3plus", encoder_depth=3).divisibility == 8
    vgg = get_model_spec("vgg11")
    assert vgg.task_kinds == frozenset({"classification"}) and not vgg.is_dense
    assert vgg.onnx_supported is False  # adaptive 7x7 pool: no dynamic-size export
    assert get_model_spec("resnet50").onnx_supported is True


# --- the pad-and-crop wrapper ----------------------------------------------------------------


class _Recorder(nn.Module):
    """Identity that keeps what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("reflect", [1, 0, 1, 2, 3, 4, 3, 2]), ("replicate", [0, 0, 1, 2, 3, 4, 4, 4])],
)
def test_pad_to_multiple_pads_evenly_and_crops_back(mode: str, expected: list[int]) -> None:
    rec = _Recorder()
    wrapper = PadToMultiple(rec, 8, mode)  # type: ignore[arg-type]
    x = torch.arange(5, dtype=torch.float32).repeat(1, 1, 8, 1)  # [1, 1, 8, 5]: width 5 -> 8
    y = wrapper(x)
    assert torch.equal(y, x)
    assert rec.seen[0].shape == (1, 1, 8, 8)
    assert rec.seen[0][0, 0, 0].tolist() == expected


def test_pad_to_multiple_falls_back_to_replicate_for_tiny_inputs() -> None:
    rec = _Recorder()
    x = torch.tensor([[[[1.0, 2.0]]]])  # 1 x 2 cannot be reflected up to 8 x 8
    y = PadToMultiple(rec, 8, "reflect")(x)
    assert torch.equal(y, x)
    padded = rec.seen[0][0, 0]
    assert padded.shape == (8, 8)
    assert padded[:, :4].eq(1.0).all() and padded[:, 4:].eq(2.0).all()


def test_pad_to_multiple_leaves_divisible_inputs_alone() -> None:
    rec = _Recorder()
    x = torch.randn(2, 3, 16, 24)
    PadToMultiple(rec, 8)(x)
    assert rec.seen[0].shape == x.shape


# --- shapes at odd sizes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", DENSE)
def test_dense_models_keep_any_height_and_width(name: str) -> None:
    model = build_model(name, 2, 3, **TINY[name]).eval()
    assert isinstance(model, PadToMultiple)
    with torch.no_grad():
        for h, w in [(37, 53), (33, 20)]:
            assert model(torch.randn(2, 2, h, w)).shape == (2, 3, h, w)


@pytest.mark.parametrize("settings", HALFUNET_VARIANTS)
def test_halfunet_variants_keep_odd_sizes(settings: dict[str, Any]) -> None:
    model = build_model("halfunet", 3, 2, **settings)
    assert model(torch.randn(2, 3, 37, 53)).shape == (2, 2, 37, 53)
    model.eval()  # batch norm cannot train on one 1 x 1 value per channel
    assert model(torch.randn(1, 3, 5, 3)).shape == (1, 2, 5, 3)  # smaller than the multiple


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_give_one_logit_per_class(name: str) -> None:
    model = build_model(name, 2, 4, **TINY[name]).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 64, 64)).shape == (2, 4)
        assert model(torch.randn(2, 2, 37, 53)).shape == (2, 4)
    assert first_conv(model).in_channels == 2
    assert not any(t.is_meta for t in model.state_dict().values())  # vgg11 builds from a meta skeleton


# --- Half-UNet parameter counts --------------------------------------------------------------


def conv_params(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def test_halfunet_parameter_count_matches_hand_count() -> None:
    # in=2, out=1, num_filters=8, depth=2, batch norm (so 3x3 convs carry no bias):
    # encoder level 1: conv 2->8 (144) + BN (16) + conv 8->8 (576) + BN (16)   =  752
    # encoder level 2: conv 8->8 (576) + BN + conv 8->8 (576) + BN             = 1184
    # bilinear upsampling: no parameters; fusion by sum: decoder reads 8 channels
    # decoder block: same as level 2                                          = 1184
    # head: 1x1 conv 8->1 with bias (8 + 1)                                    =    9
    plain = build_model("halfunet", 2, 1, num_filters=8, depth=2)
    assert n_params(plain) == 752 + 1184 + 1184 + 9 == 3129
    # Ghost module in->8: primary conv in->4 (+BN 8) and depthwise 4->4 (36, +BN 8).
    # ghost(2->8) = 72+8+36+8 = 124; ghost(8->8) = 288+8+36+8 = 340
    ghost = build_model("halfunet", 2, 1, num_filters=8, depth=2, use_ghost=True)
    assert n_params(ghost) == (124 + 340) + (340 + 340) * 2 + 9 == 1833
    # transposed upsampling adds one 2x2 stride-2 ConvTranspose 8->8 with bias: 256 + 8
    transposed = build_model("halfunet", 2, 1, num_filters=8, depth=2, upsampling="transposed")
    assert n_params(transposed) == 3129 + 264
    # without batch norm the convs carry a bias: 4 convs of 8 biases, minus 4 BN of 16
    no_bn = build_model("halfunet", 2, 1, num_filters=8, depth=2, batch_norm=False)
    assert n_params(no_bn) == 3129 - 6 * 16 + 6 * 8
    head = plain.get_submodule("net.head")
    assert isinstance(head, nn.Conv2d) and head.bias is not None


def classic_unet_params(in_channels: int, out_channels: int) -> int:
    """Ronneberger et al. (2015) U-Net, 5 levels of 64..1024 filters, biased convs, no BN."""
    widths = [64, 128, 256, 512, 1024]
    total = 0
    previous = in_channels
    for c in widths:  # contracting path: two 3x3 convs per level
        total += conv_params(previous, c, 3, True) + conv_params(c, c, 3, True)
        previous = c
    for c in reversed(widths[:-1]):  # expanding path: 2x2 up-conv, concat, two 3x3 convs
        total += 4 * (2 * c) * c + c + conv_params(2 * c, c, 3, True) + conv_params(c, c, 3, True)
    return total + conv_params(64, out_channels, 1, True)


def test_halfunet_has_far_fewer_parameters_than_unet() -> None:
    half = n_params(build_model("halfunet", 1, 1, num_filters=64, depth=5))
    # Hand count as above: level 1 = 576+128+36864+128, levels 2-5 and decoder = 73984 each, head 65.
    assert half == 37696 + 5 * 73984 + 65 == 407681
    classic = classic_unet_params(1, 1)
    assert classic == 31030593
    assert 1 - half / classic > 0.98  # Lu et al. (2022): 98.6 % fewer than U-Net; here 98.7 %
    smp_unet = n_params(build_model("unet", 1, 1, encoder_name="resnet34", encoder_depth=5))
    assert 1 - half / smp_unet > 0.98  # smp U-Net, ResNet-34 encoder, 5 levels: 24.4 M
    ghost = n_params(build_model("halfunet", 1, 1, num_filters=64, depth=5, use_ghost=True))
    assert ghost < 0.55 * half


# --- gradients and memory format -------------------------------------------------------------


@pytest.mark.parametrize("name", DENSE + CLASSIFIERS)
def test_gradient_reaches_the_first_layer(name: str) -> None:
    model = build_model(name, 2, 3, **TINY[name]).train()
    x = torch.randn(2, 2, 48, 48)
    out = model(x)
    loss = F.cross_entropy(out, torch.tensor([0, 2])) if name in CLASSIFIERS else (out - 1.0).pow(2).mean()
    loss.backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum().item() > 0


@pytest.mark.parametrize("name", ["halfunet", "unet", "resnet18"])
def test_channels_last_gives_the_same_output(name: str) -> None:
    model = build_model(name, 2, 3, **TINY[name]).eval()
    x = torch.randn(2, 2, 37, 53)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if name != "resnet18":
        assert got.stride(1) == 1  # channels stay innermost through pad, net and crop


# --- ONNX ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("halfunet", TINY["halfunet"]),
        ("halfunet", HALFUNET_VARIANTS[1]),
        ("unet", TINY["unet"]),
        ("deeplabv3plus", TINY["deeplabv3plus"]),
        ("resnet18", {}),
    ],
)
def test_onnx_export_with_dynamic_height_and_width(
    name: str, settings: dict[str, Any], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    assert get_model_spec(name, **settings).onnx_supported
    model = build_model(name, 2, 3, **settings).eval()
    path = tmp_path / f"{name}.onnx"
    dims = {0: "batch", 2: "height", 3: "width"}
    # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, not installed.
    torch.onnx.export(
        model,
        (torch.randn(1, 2, 37, 53),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": dims, "y": dims if name in DENSE else {0: "batch"}},
        opset_version=17,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 2, 37, 53), (2, 2, 40, 61)]:  # a second, unseen size: the padding stays dynamic
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape
        assert float(np.abs(got - expected).max()) < 1e-4


def test_vgg11_is_honestly_not_onnx_exportable_at_any_size(tmp_path: Path) -> None:
    model = build_model("vgg11", 2, 3, **TINY["vgg11"]).eval()
    with pytest.raises(torch.onnx.errors.SymbolicValueError, match="adaptive_avg_pool2d"):
        torch.onnx.export(model, (torch.randn(1, 2, 37, 53),), str(tmp_path / "vgg.onnx"), dynamo=False)


# --- local weights ---------------------------------------------------------------------------


def test_nothing_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    import segmentation_models_pytorch.encoders as smp_encoders

    monkeypatch.setattr(smp_encoders, "hf_hub_download", refuse)
    build_model("unet", 3, 1)  # smp's own default would fetch ImageNet weights
    build_model("deeplabv3plus", 3, 1)
    build_model("resnet18", 3, 2)


def test_encoder_weights_round_trip(tmp_path: Path) -> None:
    source = build_model("unet", 3, 1, **TINY["unet"])
    encoder = source.get_submodule("net.encoder")
    path = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), path)
    loaded = build_model("unet", 3, 1, **TINY["unet"], encoder_weights_path=str(path))
    got = loaded.get_submodule("net.encoder").state_dict()
    for key, value in encoder.state_dict().items():
        assert torch.equal(got[key], value), key
    # the decoder stays freshly initialised
    head = "net.segmentation_head.0.weight"
    assert not torch.equal(source.get_parameter(head), loaded.get_parameter(head))


def test_encoder_weights_adapt_rgb_kernels_to_other_channel_counts(tmp_path: Path) -> None:
    rgb = build_model("unet", 3, 1, **TINY["unet"])
    path = tmp_path / "encoder.pt"
    torch.save(rgb.get_submodule("net.encoder").state_dict(), path)
    two = build_model("unet", 2, 1, **TINY["unet"], encoder_weights_path=str(path))
    w_rgb = rgb.get_parameter("net.encoder.conv1.weight")
    w_two = two.get_parameter("net.encoder.conv1.weight")
    assert w_two.shape[1] == 2
    torch.testing.assert_close(w_two[:, 0], w_rgb.mean(dim=1) * 1.5)
    torch.testing.assert_close(w_two[:, 1], w_two[:, 0])


def test_torchvision_resnet_file_loads_into_smp_encoder(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)  # has fc.* keys, which the encoder drops
    model = build_model("unet", 3, 1, **TINY["unet"], encoder_weights_path=str(path))
    assert torch.equal(
        model.get_parameter("net.encoder.layer1.0.conv1.weight"), reference.layer1[0].conv1.weight
    )


def test_classifier_weights_adapt_first_conv_and_replace_head(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.resnet18(weights=None)  # 3 channels, 1000 classes
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 1, 3, weights_path=str(path)).eval()
    assert torch.equal(model.get_parameter("layer4.1.conv2.weight"), reference.layer4[1].conv2.weight)
    assert model.get_parameter("fc.1.weight").shape == (3, 512)
    # A grey image seen by the adapted 1-channel stem equals the RGB stem on R = G = B = grey.
    grey = torch.rand(2, 1, 32, 32)
    rgb_stem = F.conv2d(grey.repeat(1, 3, 1, 1), reference.conv1.weight, stride=2, padding=3)
    grey_stem = F.conv2d(grey, model.get_parameter("conv1.weight"), stride=2, padding=3)
    torch.testing.assert_close(grey_stem, rgb_stem, rtol=1e-5, atol=1e-5)


def test_vgg_weights_round_trip_and_mismatch(tmp_path: Path) -> None:
    source = build_model("vgg11", 3, 5, hidden_features=32)
    path = tmp_path / "vgg.pt"
    torch.save(source.state_dict(), path)
    loaded = build_model("vgg11", 3, 2, hidden_features=32, weights_path=str(path))
    for key in ["features.3.weight", "classifier.0.weight", "classifier.3.bias"]:
        assert torch.equal(loaded.get_parameter(key), source.get_parameter(key)), key
    assert loaded.get_parameter("classifier.6.weight").shape == (2, 32)
    with pytest.raises(ModelWeightsError, match=r"classifier\.0\.weight"):
        build_model("vgg11", 3, 2, hidden_features=16, weights_path=str(path))


def test_weights_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelWeightsError, match="does not exist") as info:
        build_model("unet", 3, 1, **TINY["unet"], encoder_weights_path=str(missing))
    assert info.value.path == missing
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelWeightsError, match="weights_only=True"):
        build_model("resnet18", 3, 2, weights_path=str(garbage))
    not_tensors = tmp_path / "not_tensors.pt"
    torch.save({"conv1.weight": 1}, not_tensors)
    with pytest.raises(ModelWeightsError, match="not tensors"):
        build_model("resnet18", 3, 2, weights_path=str(not_tensors))
    small = tmp_path / "resnet18_encoder.pt"
    torch.save(build_model("unet", 3, 1, **TINY["unet"]).get_submodule("net.encoder").state_dict(), small)
    resnet34 = dict(TINY["unet"], encoder_name="resnet34")
    with pytest.raises(ModelWeightsError, match=r"keys do not match.*layer1\.2"):
        build_model("unet", 3, 1, **resnet34, encoder_weights_path=str(small))
