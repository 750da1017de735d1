"""Let a dense model take any height and width: pad up to its spatial multiple, crop back.

U-Net-like networks halve the grid several times, so they need a height and width
divisible by 2**levels. Radar and satellite domains rarely are; padding here keeps
the rule out of datasets and the predict stage. The pad is split evenly between the
two sides so the border effect is symmetric.

Under ONNX export the pad amounts stay symbolic (the graph pads any size), but the
exported graph always uses the configured mode: with "reflect" it needs inputs larger
than half the multiple, where eager PyTorch would fall back to "replicate".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meteovision.models.contract import PadMode
from meteovision.models.errors import ModelSettingsError


def pad_amounts(size: int, divisibility: int) -> tuple[int, int]:
    """(before, after) pad that brings ``size`` to the next multiple of ``divisibility``.

    Plain arithmetic, so under ONNX tracing ``size`` stays symbolic and the exported graph
    pads any height and width.
    """
    total = (divisibility - size % divisibility) % divisibility
    return total // 2, total - total // 2


class PadToMultiple(nn.Module):
    """Wrap ``net``: pad the input to a multiple of ``divisibility``, run it, crop to the input size."""

    def __init__(self, net: nn.Module, divisibility: int, pad_mode: PadMode = "reflect") -> None:
        super().__init__()
        if divisibility < 1:
            raise ModelSettingsError(None, "divisibility", f"must be >= 1, got {divisibility}")
        if pad_mode not in ("reflect", "replicate"):
            raise ModelSettingsError(None, "pad_mode", f"expected 'reflect' or 'replicate', got {pad_mode!r}")
        self.net = net
        self.divisibility = divisibility
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``net`` on the padded input, cropped to the input's height and width."""
        h, w = x.shape[-2], x.shape[-1]
        top, bottom = pad_amounts(h, self.divisibility)
        left, right = pad_amounts(w, self.divisibility)
        mode = self.pad_mode
        if not torch.jit.is_tracing():
            # Shape-dependent branches; a trace (ONNX export) must not freeze them, so it always
            # pads (possibly by 0) with the configured mode.
            if top == bottom == left == right == 0:
                return self.net(x)
            if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
                mode = "replicate"  # reflect cannot pad by the size of the input or more
        y = self.net(F.pad(x, (left, right, top, bottom), mode=mode))
        return y[..., top : top + h, left : left + w]

    def extra_repr(self) -> str:
        return f"divisibility={self.divisibility}, pad_mode={self.pad_mode!r}"
