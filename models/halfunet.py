"""Half-UNet (Lu et al. 2022, "Half-UNet: A Simplified U-Net Architecture for Medical Image
Segmentation"): U-Net accuracy with a small fraction of the parameters.

Three simplifications of U-Net, all kept here:

* the encoder keeps the same number of channels (``num_filters``) at every level;
* the decoder is one full-scale fusion: each level's output is upsampled straight to full
  resolution and the maps are SUMMED (not concatenated), then one conv block;
* optionally, Ghost modules (Han et al. 2020, GhostNet) replace the 3x3 convolutions: a
  primary conv makes half of the channels, a cheap depthwise conv derives the other half.

The 1x1 output conv has a bias: regression targets (rain rates) are not zero-mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
from torch import nn

from meteovision.models.contract import DENSE, DenseSettings, ModelContract, check

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu"]
Upsampling = Literal["bilinear", "nearest", "transposed"]


@dataclass(frozen=True, kw_only=True)
class HalfUNetSettings(DenseSettings):
    """Half-UNet knobs. ``depth`` counts resolution levels (depth - 1 poolings)."""

    num_filters: int = 64
    depth: int = 4
    use_ghost: bool = False
    upsampling: Upsampling = "bilinear"
    batch_norm: bool = True
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        check(self.num_filters >= 1, "num_filters", f"must be >= 1, got {self.num_filters}")
        check(1 <= self.depth <= 8, "depth", f"must be between 1 and 8, got {self.depth}")


def make_activation(name: Activation) -> nn.Module:
    """The activation layer called ``name``."""
    layers: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }
    return layers[name]()


def conv_norm_act(
    in_channels: int, out_channels: int, *, groups: int, batch_norm: bool, activation: Activation
) -> nn.Sequential:
    """3x3 conv (bias only without batch norm, which has its own shift), [batch norm], activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class GhostModule(nn.Module):
    """GhostNet module with ratio 2: primary 3x3 conv to ceil(out/2) channels, cheap depthwise
    3x3 conv of those to as many more, concatenated and trimmed to ``out_channels``."""

    def __init__(
        self, in_channels: int, out_channels: int, *, batch_norm: bool, activation: Activation
    ) -> None:
        super().__init__()
        primary = math.ceil(out_channels / 2)
        self.out_channels = out_channels
        self.trim = 2 * primary != out_channels  # odd out_channels: one ghost too many
        self.primary = conv_norm_act(
            in_channels, primary, groups=1, batch_norm=batch_norm, activation=activation
        )
        self.cheap = conv_norm_act(
            primary, primary, groups=primary, batch_norm=batch_norm, activation=activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Primary features and their cheap "ghosts", stacked on channels."""
        primary = self.primary(x)
        out = torch.cat([primary, self.cheap(primary)], dim=1)
        return out[:, : self.out_channels] if self.trim else out


def conv_block(
    in_channels: int, out_channels: int, *, use_ghost: bool, batch_norm: bool, activation: Activation
) -> nn.Sequential:
    """Two conv stages (plain conv-norm-act, or Ghost modules), the unit of every Half-UNet level."""
    if use_ghost:
        return nn.Sequential(
            GhostModule(in_channels, out_channels, batch_norm=batch_norm, activation=activation),
            GhostModule(out_channels, out_channels, batch_norm=batch_norm, activation=activation),
        )
    return nn.Sequential(
        conv_norm_act(in_channels, out_channels, groups=1, batch_norm=batch_norm, activation=activation),
        conv_norm_act(out_channels, out_channels, groups=1, batch_norm=batch_norm, activation=activation),
    )


def make_upsampler(channels: int, level: int, mode: Upsampling) -> nn.Module:
    """Upsample by 2**level to full resolution: interpolation, or ``level`` stride-2 transposed convs."""
    if level == 0:
        return nn.Identity()
    if mode == "transposed":
        return nn.Sequential(
            *[nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2) for _ in range(level)]
        )
    if mode == "bilinear":
        return nn.Upsample(scale_factor=2**level, mode="bilinear", align_corners=False)
    return nn.Upsample(scale_factor=2**level, mode="nearest")


class HalfUNet(ModelContract, nn.Module):
    """Half-UNet for per-pixel segmentation or regression; input divisible by 2**(depth-1)."""

    settings_cls: ClassVar[type[HalfUNetSettings]] = HalfUNetSettings
    task_kinds: ClassVar[frozenset[str]] = frozenset({DENSE})
    onnx_supported: ClassVar[bool] = True
    supported_num_spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    summary: ClassVar[str] = "Half-UNet (Lu et al. 2022): constant-width encoder, summed full-scale fusion"

    def __init__(self, in_channels: int, out_channels: int, settings: HalfUNetSettings | None = None) -> None:
        super().__init__()
        s = settings if settings is not None else HalfUNetSettings()
        self.settings = s
        nf = s.num_filters
        block = partial(conv_block, use_ghost=s.use_ghost, batch_norm=s.batch_norm, activation=s.activation)
        self.encoders = nn.ModuleList(
            [block(in_channels if level == 0 else nf, nf) for level in range(s.depth)]
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.upsamplers = nn.ModuleList([make_upsampler(nf, level, s.upsampling) for level in range(s.depth)])
        self.decoder = block(nf, nf)
        self.head = nn.Conv2d(nf, out_channels, kernel_size=1, bias=True)

    @classmethod
    def divisibility(cls, settings: HalfUNetSettings) -> int:
        """Each pooling halves the grid: 2**(depth - 1)."""
        return int(2 ** (settings.depth - 1))

    @classmethod
    def create(cls, in_channels: int, out_channels: int, settings: HalfUNetSettings) -> HalfUNet:
        """A Half-UNet with these settings."""
        return cls(in_channels, out_channels, settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in, H, W] -> [N, out, H, W] (H and W multiples of 2**(depth-1))."""
        features = self.encoders[0](x)
        fused = features
        for encoder, upsample in zip(self.encoders[1:], self.upsamplers[1:], strict=True):
            features = encoder(self.pool(features))
            fused = fused + upsample(features)
        return self.head(self.decoder(fused))
