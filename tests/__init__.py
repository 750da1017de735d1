"""The test suite (not shipped in the wheel)."""
