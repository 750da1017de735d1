"""Model registry and architectures: ``build_model(name, in_channels, out_channels, **settings)``.

Importing this package imports no deep-learning library; each model's module (and its
dependency: torch, segmentation-models-pytorch, torchvision) loads when the model is built.
"""

from meteovision.models.contract import ModelContract, ModelSpec
from meteovision.models.errors import (
    ModelDependencyError,
    ModelError,
    ModelSettingsError,
    ModelWeightsError,
    UnknownModelError,
)
from meteovision.models.registry import build_model, get_model_spec, list_models

__all__ = [
    "ModelContract",
    "ModelDependencyError",
    "ModelError",
    "ModelSettingsError",
    "ModelSpec",
    "ModelWeightsError",
    "UnknownModelError",
    "build_model",
    "get_model_spec",
    "list_models",
]
