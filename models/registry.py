"""One place to find and build every model by name (the pysteps ``get_method`` idea).

Names map to ``"module:ContractClass"`` strings and the module is imported only when the
model is asked for, so ``import meteovision.models`` costs nothing and one model's
optional dependency (smp, torchvision) never breaks another model.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meteovision.models.contract import DENSE, ModelContract, ModelSpec
from meteovision.models.errors import ModelDependencyError, ModelSettingsError, UnknownModelError
from meteovision.models.settings import parse_settings

if TYPE_CHECKING:
    from torch import nn

#: model name -> "module:ContractClass"; the module is imported on first use.
MODELS: Mapping[str, str] = {
    "halfunet": "meteovision.models.halfunet:HalfUNet",
    "unet": "meteovision.models.smp_models:SmpUnet",
    "deeplabv3plus": "meteovision.models.smp_models:SmpDeepLabV3Plus",
    "vgg11": "meteovision.models.torchvision_models:VGG11",
    "resnet18": "meteovision.models.torchvision_models:ResNet18",
    "resnet50": "meteovision.models.torchvision_models:ResNet50",
}


def list_models() -> list[str]:
    """Names ``build_model`` accepts, sorted."""
    return sorted(MODELS)


def _canonical(name: str) -> str:
    """Registry key for ``name`` (case-insensitive), or UnknownModelError listing the names."""
    key = name.strip().lower() if isinstance(name, str) else ""
    if key not in MODELS:
        raise UnknownModelError(str(name), list_models())
    return key


def _contract(key: str) -> type[ModelContract]:
    """Import the module of model ``key`` and return its contract class."""
    module_name, _, attr = MODELS[key].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelDependencyError(key, err.name or module_name, err) from err
    contract: type[ModelContract] = getattr(module, attr)
    return contract


def _check_channels(model: str, key: str, value: int) -> None:
    """``in_channels`` / ``out_channels`` must be a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelSettingsError(model, key, f"must be an int >= 1, got {value!r}")


def get_model_spec(name: str, **settings: Any) -> ModelSpec:
    """The contract of model ``name`` resolved for ``settings`` (defaults when none are given).

    Validates the settings like ``build_model`` does, without building anything; the
    model's own dependency (smp, torchvision) is not imported.
    """
    key = _canonical(name)
    contract = _contract(key)
    parsed = parse_settings(key, contract.settings_cls, settings)
    return ModelSpec(
        name=key,
        summary=contract.summary,
        target=MODELS[key],
        task_kinds=contract.task_kinds,
        divisibility=contract.divisibility(parsed),
        onnx_supported=contract.onnx_supported,
        supported_num_spatial_dims=contract.supported_num_spatial_dims,
        settings=parsed,
    )


def build_model(name: str, in_channels: int, out_channels: int, **settings: Any) -> nn.Module:
    """Model ``name`` for ``in_channels`` inputs and ``out_channels`` outputs (classes for classifiers).

    Dense models come wrapped in :class:`~meteovision.models.padding.PadToMultiple`, so they take
    any height and width and return the input's height and width. Bad names and settings
    raise errors that name the model and the key.
    """
    spec = get_model_spec(name, **settings)
    _check_channels(spec.name, "in_channels", in_channels)
    _check_channels(spec.name, "out_channels", out_channels)
    contract = _contract(spec.name)
    try:
        net = contract.create(in_channels, out_channels, spec.settings)
    except ModelSettingsError as err:
        raise (err.for_model(spec.name) if err.model is None else err) from None
    if DENSE not in spec.task_kinds:
        return net
    from meteovision.models.padding import PadToMultiple

    return PadToMultiple(net, spec.divisibility, spec.settings.pad_mode)
