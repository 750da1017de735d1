"""Trained checkpoints shipped in the package, each beside its model card (``<name>.md``).

Load one by name wherever a checkpoint path is taken (``predict --checkpoint nowcast_precip_real``);
:mod:`meteovision.pipeline.checkpoints.packaged` resolves the name. Weights only: no data ships here.
"""
