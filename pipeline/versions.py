"""Package versions recorded in checkpoints and products, so a result can be traced to its software."""

from __future__ import annotations

from importlib import metadata

_TRACKED = ("meteovision", "torch", "lightning", "segmentation-models-pytorch", "torchvision", "numpy", "xarray")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a model's numbers."""
    out: dict[str, str] = {}
    for name in _TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def meteovision_version() -> str:
    return package_versions()["meteovision"]
