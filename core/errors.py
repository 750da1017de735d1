"""The root of every error meteovision raises on purpose, so a caller can catch ours and not a bug's."""

from __future__ import annotations


class MeteovisionError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(MeteovisionError, ValueError):
    """A configuration value is unknown, missing or of the wrong type; the message names its key."""
