"""Synthetic sample data for every application, written in the formats the readers consume.

``generate_sample_data(app, out_dir, seed, settings)`` writes one application's folder
(docs/CONTRACTS.md, "Sample-data layout"); ``meteovision sample-data`` is its command line.
The writers (h5py, netCDF4, xarray) load on first use, so the CLI parser stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meteovision.datasets.synthetic.common import APPS, SampleDataError, SampleSettings

if TYPE_CHECKING:
    from meteovision.datasets.synthetic.generate import generate_sample_data

__all__ = ["APPS", "SampleDataError", "SampleSettings", "generate_sample_data"]


def __getattr__(name: str) -> Any:
    if name == "generate_sample_data":
        from meteovision.datasets.synthetic.generate import generate_sample_data

        return generate_sample_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
