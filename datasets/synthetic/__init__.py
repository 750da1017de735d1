"""Synthetic sample data for every application, written in the formats the readers consume.

``generate_sample_data(app, out_dir, seed, settings)`` writes one application's folder
(docs/CONTRACTS.md, "Sample-data layout"); ``meteovision sample-data`` is its command line.
"""

from meteovision.datasets.synthetic.common import APPS, SampleDataError, SampleSettings
from meteovision.datasets.synthetic.generate import generate_sample_data

__all__ = ["APPS", "SampleDataError", "SampleSettings", "generate_sample_data"]
