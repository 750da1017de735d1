"""Errors raised while building a model, so a bad config reads as a config problem, not a traceback.

They derive from :class:`meteovision.core.errors.MeteovisionError`, the base of every
error this package raises on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meteovision.core.errors import MeteovisionError


class ModelError(MeteovisionError):
    """A model could not be built as asked."""


class UnknownModelError(ModelError, KeyError):
    """No model of the registry has this name; carries the names that exist."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        self.message = f"unknown model {name!r}; known models: {', '.join(self.known)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError would print the repr of the message; keep it readable.
        return self.message


class ModelSettingsError(ModelError):
    """A setting (or in/out channel count) has an unknown key, a wrong type or a bad value.

    ``model`` is None while a settings dataclass checks itself; the registry fills the name in.
    """

    def __init__(self, model: str | None, key: str, problem: str) -> None:
        self.model = model
        self.key = key
        self.problem = problem
        where = f"model {model!r}" if model else "model settings"
        super().__init__(f"{where}: setting {key!r}: {problem}")

    def for_model(self, model: str) -> ModelSettingsError:
        """The same error, naming ``model``."""
        return ModelSettingsError(model, self.key, self.problem)


class ModelWeightsError(ModelError):
    """A local weights file is missing, unreadable, or does not fit the network."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelDependencyError(ModelError):
    """The optional library a model needs cannot be imported; other models still work."""

    def __init__(self, model: str, module: str, cause: BaseException) -> None:
        self.model = model
        self.module = module
        super().__init__(f"model {model!r} needs {module!r}, which cannot be imported: {cause}")
