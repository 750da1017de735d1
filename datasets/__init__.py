"""Data in: file readers, synthetic sample data, torch datasets, splits, normalisation and DataModules.

Readers know nothing of torch; the torch side (``torch_datasets``, ``datamodules``) knows nothing of models.
"""
