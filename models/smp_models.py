"""U-Net and DeepLabV3+ from segmentation-models-pytorch, with any smp encoder, and no download.

smp fetches ImageNet weights by default; here ``encoder_weights`` must stay None and
pretrained encoders load from a local file (``encoder_weights_path``). smp is imported
only when one of these models is built, so a broken smp never breaks other models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from meteovision.models.contract import DENSE, DenseSettings, ModelContract, check
from meteovision.models.errors import ModelDependencyError, ModelSettingsError
from meteovision.models.weights import load_weights_file

if TYPE_CHECKING:
    from torch import nn

NormName = Literal["batchnorm", "identity", "layernorm", "instancenorm"]
Interpolation = Literal["nearest", "nearest-exact", "bilinear", "bicubic", "area"]


@dataclass(frozen=True, kw_only=True)
class SmpEncoderSettings(DenseSettings):
    """The encoder settings every smp model shares."""

    encoder_name: str = "resnet34"
    encoder_depth: int = 5
    encoder_weights: str | None = None
    encoder_weights_path: str | None = None

    def __post_init__(self) -> None:
        check(
            self.encoder_weights is None,
            "encoder_weights",
            f"must be None (got {self.encoder_weights!r}): meteovision never downloads weights; "
            "save them to a local file and set encoder_weights_path",
        )
        check(bool(self.encoder_name), "encoder_name", "must not be empty")


@dataclass(frozen=True, kw_only=True)
class UnetSettings(SmpEncoderSettings):
    """smp Unet: ``decoder_channels`` has one entry per encoder level (``encoder_depth``)."""

    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    decoder_use_norm: NormName | bool = "batchnorm"
    decoder_attention_type: Literal["scse"] | None = None
    decoder_interpolation: Interpolation = "nearest"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.encoder_depth <= 5, "encoder_depth", f"must be 1..5, got {self.encoder_depth}")
        check(
            len(self.decoder_channels) == self.encoder_depth,
            "decoder_channels",
            f"needs one entry per encoder level ({self.encoder_depth}), got {list(self.decoder_channels)}",
        )
        check(
            all(c >= 1 for c in self.decoder_channels),
            "decoder_channels",
            f"entries must be >= 1, got {list(self.decoder_channels)}",
        )


@dataclass(frozen=True, kw_only=True)
class DeepLabV3PlusSettings(SmpEncoderSettings):
    """smp DeepLabV3+. Its final upsampling is fixed at 4 (the decoder works at 1/4 resolution),
    the only value that gives back the input size."""

    encoder_output_stride: Literal[8, 16] = 16
    decoder_channels: int = 256
    decoder_atrous_rates: tuple[int, int, int] = (12, 24, 36)
    decoder_aspp_separable: bool = True
    decoder_aspp_dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(3 <= self.encoder_depth <= 5, "encoder_depth", f"must be 3..5, got {self.encoder_depth}")
        check(self.decoder_channels >= 1, "decoder_channels", f"must be >= 1, got {self.decoder_channels}")
        check(
            0.0 <= self.decoder_aspp_dropout < 1.0,
            "decoder_aspp_dropout",
            f"must be in [0, 1), got {self.decoder_aspp_dropout}",
        )


def import_smp(model: str) -> Any:
    """The smp module, or an error naming the model that needs it."""
    try:
        return importlib.import_module("segmentation_models_pytorch")
    except ImportError as err:
        raise ModelDependencyError(model, "segmentation_models_pytorch", err) from err


def finish(net: nn.Module, in_channels: int, settings: SmpEncoderSettings, divisibility: int) -> nn.Module:
    """Check the encoder's real stride against ``divisibility``; load local encoder weights."""
    encoder: nn.Module = net.encoder  # type: ignore[assignment]
    stride = int(getattr(encoder, "output_stride", divisibility))
    check(
        divisibility % stride == 0,
        "encoder_name",
        f"encoder {settings.encoder_name!r} has output stride {stride}, which does not divide {divisibility}",
    )
    if settings.encoder_weights_path is not None:
        load_weights_file(
            encoder,
            settings.encoder_weights_path,
            in_channels=in_channels,
            what=f"the {settings.encoder_name!r} encoder (depth {settings.encoder_depth})",
        )
    return net


def build_smp(arch: str, in_channels: int, out_channels: int, settings: SmpEncoderSettings, **kw: Any) -> Any:
    """smp model ``arch`` with random weights; an unknown encoder is a settings error."""
    smp = import_smp(arch.lower())
    try:
        return getattr(smp, arch)(
            encoder_name=settings.encoder_name,
            encoder_depth=settings.encoder_depth,
            encoder_weights=None,
            in_channels=in_channels,
            classes=out_channels,
            activation=None,
            **kw,
        )
    except KeyError as err:
        raise ModelSettingsError(None, "encoder_name", f"smp does not know it: {err}") from err


class SmpUnet(ModelContract):
    """U-Net (Ronneberger et al. 2015) with an smp encoder."""

    settings_cls: ClassVar[type[UnetSettings]] = UnetSettings
    task_kinds: ClassVar[frozenset[str]] = frozenset({DENSE})
    onnx_supported: ClassVar[bool] = True
    supported_num_spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    summary: ClassVar[str] = "U-Net with any segmentation-models-pytorch encoder"

    @classmethod
    def divisibility(cls, settings: UnetSettings) -> int:
        """Every encoder level halves the grid: 2**encoder_depth."""
        return int(2**settings.encoder_depth)

    @classmethod
    def create(cls, in_channels: int, out_channels: int, settings: UnetSettings) -> nn.Module:
        """smp.Unet with these settings."""
        net = build_smp(
            "Unet",
            in_channels,
            out_channels,
            settings,
            decoder_channels=settings.decoder_channels,
            decoder_use_norm=settings.decoder_use_norm,
            decoder_attention_type=settings.decoder_attention_type,
            decoder_interpolation=settings.decoder_interpolation,
        )
        return finish(net, in_channels, settings, cls.divisibility(settings))


class SmpDeepLabV3Plus(ModelContract):
    """DeepLabV3+ (Chen et al. 2018) with an smp encoder."""

    settings_cls: ClassVar[type[DeepLabV3PlusSettings]] = DeepLabV3PlusSettings
    task_kinds: ClassVar[frozenset[str]] = frozenset({DENSE})
    onnx_supported: ClassVar[bool] = True
    supported_num_spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    summary: ClassVar[str] = "DeepLabV3+ (atrous spatial pyramid pooling) with any smp encoder"

    @classmethod
    def divisibility(cls, settings: DeepLabV3PlusSettings) -> int:
        """The encoder's output stride: min(encoder_output_stride, 2**encoder_depth)."""
        return int(min(settings.encoder_output_stride, 2**settings.encoder_depth))

    @classmethod
    def create(cls, in_channels: int, out_channels: int, settings: DeepLabV3PlusSettings) -> nn.Module:
        """smp.DeepLabV3Plus with these settings."""
        net = build_smp(
            "DeepLabV3Plus",
            in_channels,
            out_channels,
            settings,
            encoder_output_stride=settings.encoder_output_stride,
            decoder_channels=settings.decoder_channels,
            decoder_atrous_rates=settings.decoder_atrous_rates,
            decoder_aspp_separable=settings.decoder_aspp_separable,
            decoder_aspp_dropout=settings.decoder_aspp_dropout,
            upsampling=4,
        )
        return finish(net, in_channels, settings, cls.divisibility(settings))
