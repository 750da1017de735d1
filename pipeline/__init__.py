"""The stages after the data: training, inference, verification, explanation, and the ``meteovision`` command.

One subpackage per stage, so a change goes where its folder name says:

- ``checkpoints``: what a trained network carries (typed metadata) and how it is loaded back;
- ``training``: Lightning tasks, losses, optimisers, training metrics, the ``fit``/``test`` command;
- ``inference``: predict over whole domains, products, NetCDF/GeoTIFF writers, quicklooks, export;
- ``verification``: the scoring kernel, baselines and nowcast methods by name, ``evaluate``;
- ``explain``: what a filter responds to (activation maximisation), saliency;
- ``cli.py``: the ``meteovision`` dispatcher; ``demo.py``: the whole chain on sample data.
"""
