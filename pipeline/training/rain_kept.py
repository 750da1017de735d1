"""Radar cleaning's second score: the share of true precipitation echoes a cleaning leaves in place.

A mask that flags every echo scores a perfect artefact POD; this metric shows the rain it threw away.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata


class RainKept(Metric):
    """Share of true precipitation echoes that a cleaning method leaves in place (higher is better)."""

    full_state_update = False
    kept: Tensor
    total: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("kept", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, kept: Tensor, true_echo: Tensor) -> None:
        self.kept += (kept & true_echo).sum()
        self.total += true_echo.sum()

    def compute(self) -> dict[str, Tensor]:
        total = self.total.double()
        share = self.kept.double() / total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return {"rain_kept": share, "n": self.total}


def channel_of(inputs: Tensor, meta: CheckpointMetadata, name: str) -> Tensor:
    """Channel ``name`` of ``inputs`` [B, C, H, W], by the checkpoint metadata's channel names."""
    names = list(meta.channel_names)
    if name not in names:
        raise KeyError(f"rain_kept_channel '{name}' is not an input channel; inputs are {names}")
    return inputs[:, names.index(name)]
