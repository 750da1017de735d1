"""The small typed contract every model declares at class level (the mfai style).

A contract says, before anything is built, what a model supports: the tasks it
serves, the spatial multiple its input needs, whether it exports to ONNX, and the
frozen dataclass of settings it accepts. The registry reads it to validate a
config and to wrap dense models in the pad-and-crop layer. This module imports
no torch, so listing models and reading specs stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from meteovision.models.errors import ModelSettingsError

if TYPE_CHECKING:
    from torch import nn

DENSE = "dense"
CLASSIFICATION = "classification"
TASK_KINDS = frozenset({DENSE, CLASSIFICATION})

PadMode = Literal["reflect", "replicate"]


@dataclass(frozen=True, kw_only=True)
class DenseSettings:
    """Settings every dense (per-pixel) model shares.

    ``pad_mode`` fills the border added to reach the model's spatial multiple; "reflect"
    falls back to "replicate" for an input too small to reflect.
    """

    pad_mode: PadMode = "reflect"


def check(ok: bool, key: str, problem: str) -> None:
    """Raise a settings error on ``key`` unless ``ok``; used in ``__post_init__`` checks."""
    if not ok:
        raise ModelSettingsError(None, key, problem)


class ModelContract(ABC):
    """What a registered model declares. Subclasses set the class variables and ``create``.

    ``onnx_supported`` means: ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``) of
    the built model succeeds with dynamic batch, height and width, and onnxruntime reproduces
    torch's output (tested for every model that claims it).
    """

    settings_cls: ClassVar[type[Any]]
    task_kinds: ClassVar[frozenset[str]]
    onnx_supported: ClassVar[bool]
    supported_num_spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    summary: ClassVar[str]

    @classmethod
    def divisibility(cls, settings: Any) -> int:
        """The multiple the input height and width must be for these settings (1: any size)."""
        return 1

    @classmethod
    @abstractmethod
    def create(cls, in_channels: int, out_channels: int, settings: Any) -> nn.Module:
        """The bare network (no padding wrapper) for validated ``settings``."""


@dataclass(frozen=True)
class ModelSpec:
    """A model's contract resolved for one set of settings, as ``get_model_spec`` returns it."""

    name: str
    summary: str
    target: str
    task_kinds: frozenset[str]
    divisibility: int
    onnx_supported: bool
    supported_num_spatial_dims: tuple[int, ...]
    settings: Any

    @property
    def is_dense(self) -> bool:
        """True for per-pixel models (output has the input's height and width)."""
        return DENSE in self.task_kinds
