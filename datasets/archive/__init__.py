"""Training from real radar archives as they are: sources, conversions, time split, Zarr store, DataModule."""
