"""Verification: the scoring kernel, the classic baselines and nowcast methods by name, and ``evaluate``."""
