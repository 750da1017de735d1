"""Inference: a checkpoint over whole input files to CF-1.10 products.

Inputs and their checks, sliding-window tiling, the product model, atomic NetCDF/GeoTIFF writers,
PNG quicklooks, ONNX/TorchScript export, and the ``predict``/``export`` commands.
"""
