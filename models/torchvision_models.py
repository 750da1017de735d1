"""Image classifiers from torchvision (VGG11, ResNet18, ResNet50) for webcam snow and visibility.

Built with ``weights=None`` (torchvision never downloads here); pretrained weights load from
a local torchvision-format state dict (``weights_path``). The first conv is rebuilt for
``in_channels`` (RGB kernels averaged when weights are loaded) and the head for
``out_channels`` classes; the file's own head (1000 ImageNet classes) is ignored.
torchvision is imported only when one of these models is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from meteovision.models.contract import CLASSIFICATION, ModelContract, check
from meteovision.models.errors import ModelDependencyError
from meteovision.models.weights import RGB, load_weights_file


@dataclass(frozen=True, kw_only=True)
class VGGSettings:
    """VGG11 knobs. ``hidden_features`` is 4096 in the paper; smaller keeps the head (25088 x
    hidden weights) trainable on CPU, but then ImageNet weights no longer fit that head."""

    dropout: float = 0.5
    batch_norm: bool = False
    hidden_features: int = 4096
    weights_path: str | None = None

    def __post_init__(self) -> None:
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.hidden_features >= 1, "hidden_features", f"must be >= 1, got {self.hidden_features}")


@dataclass(frozen=True, kw_only=True)
class ResNetSettings:
    """ResNet knobs; ``dropout`` acts before the final linear layer."""

    dropout: float = 0.0
    zero_init_residual: bool = False
    weights_path: str | None = None

    def __post_init__(self) -> None:
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


def import_torchvision_models(model: str) -> Any:
    """``torchvision.models``, or an error naming the model that needs it."""
    try:
        return importlib.import_module("torchvision.models")
    except ImportError as err:
        raise ModelDependencyError(model, "torchvision", err) from err


def replace_input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A conv like ``conv`` reading ``in_channels`` channels (He init, as torchvision does)."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


class VGG11(ModelContract):
    """VGG11 (Simonyan & Zisserman 2015), optionally with batch norm."""

    settings_cls: ClassVar[type[VGGSettings]] = VGGSettings
    task_kinds: ClassVar[frozenset[str]] = frozenset({CLASSIFICATION})
    # Its 7x7 adaptive average pool exports to ONNX only at a fixed input size whose last feature
    # map divides into 7 x 7 (e.g. 224 x 224); never with a dynamic height and width.
    onnx_supported: ClassVar[bool] = False
    supported_num_spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    summary: ClassVar[str] = "VGG11 classifier (torchvision), input at least 32 x 32"

    HEAD = "classifier.6."

    @classmethod
    def create(cls, in_channels: int, out_channels: int, settings: VGGSettings) -> nn.Module:
        """torchvision VGG11 with the first conv, hidden width and head adapted."""
        tvm = import_torchvision_models("vgg11")
        factory = tvm.vgg11_bn if settings.batch_norm else tvm.vgg11
        with torch.device("meta"):  # skeleton only: its 120 M-weight head would be drawn for nothing
            net = factory(weights=None, dropout=settings.dropout)
        net.features.to_empty(device="cpu")
        for layer in net.features.modules():  # torchvision's VGG init
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.BatchNorm2d):
                layer.reset_parameters()  # weight 1, bias 0, fresh running statistics
        if in_channels != RGB:
            net.features[0] = replace_input_conv(net.features[0], in_channels)
        hidden = settings.hidden_features
        net.classifier = nn.Sequential(  # torchvision's layout and keys, any width
            nn.Linear(512 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=settings.dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=settings.dropout),
            nn.Linear(hidden, out_channels),
        )
        for layer in net.classifier:
            if isinstance(layer, nn.Linear):  # torchvision's VGG init for linear layers
                nn.init.normal_(layer.weight, 0, 0.01)
                nn.init.zeros_(layer.bias)
        if settings.weights_path is not None:
            load_weights_file(
                net, settings.weights_path, in_channels=in_channels, what="vgg11", skip_prefixes=(cls.HEAD,)
            )
        return net


class _ResNet(ModelContract):
    """A torchvision ResNet; subclasses name the depth."""

    settings_cls: ClassVar[type[ResNetSettings]] = ResNetSettings
    task_kinds: ClassVar[frozenset[str]] = frozenset({CLASSIFICATION})
    onnx_supported: ClassVar[bool] = True
    supported_num_spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    arch: ClassVar[str]

    HEAD = "fc."

    @classmethod
    def create(cls, in_channels: int, out_channels: int, settings: ResNetSettings) -> nn.Module:
        """torchvision ResNet with the stem conv and the head adapted."""
        tvm = import_torchvision_models(cls.arch)
        net = getattr(tvm, cls.arch)(weights=None, zero_init_residual=settings.zero_init_residual)
        if in_channels != RGB:
            net.conv1 = replace_input_conv(net.conv1, in_channels)
        net.fc = nn.Sequential(nn.Dropout(p=settings.dropout), nn.Linear(net.fc.in_features, out_channels))
        if settings.weights_path is not None:
            load_weights_file(
                net, settings.weights_path, in_channels=in_channels, what=cls.arch, skip_prefixes=(cls.HEAD,)
            )
        return net


class ResNet18(_ResNet):
    """ResNet-18 (He et al. 2016)."""

    arch: ClassVar[str] = "resnet18"
    summary: ClassVar[str] = "ResNet-18 classifier (torchvision)"


class ResNet50(_ResNet):
    """ResNet-50 (He et al. 2016), bottleneck blocks."""

    arch: ClassVar[str] = "resnet50"
    summary: ClassVar[str] = "ResNet-50 classifier (torchvision)"
