"""Task-level wrappers around registry models, shared by training and inference.

They live in the network module itself, so a checkpoint's weights, the predict stage and the
exported ONNX/TorchScript graph all compute the same thing.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from meteovision.models import build_model


class LastFrameResidual(nn.Module):
    """Nowcast as a correction of persistence: output = last input frame (every lead) + net(x).

    Inputs are N frames of V variables stacked frame-major; outputs are M frames of the same V
    variables in the same normalised space, so the last frame can be added directly. An
    untrained network (output 0) is exactly Eulerian persistence; training learns motion,
    growth and decay on top of it.
    """

    def __init__(self, net: nn.Module, variables_per_frame: int, lead_times: int) -> None:
        super().__init__()
        if variables_per_frame < 1 or lead_times < 1:
            raise ValueError(f"need >= 1 variable and lead time, got {variables_per_frame}, {lead_times}")
        self.net = net
        self.variables_per_frame = variables_per_frame
        self.lead_times = lead_times

    def forward(self, x: Tensor) -> Tensor:
        last = x[:, -self.variables_per_frame :]
        return self.net(x) + last.repeat(1, self.lead_times, 1, 1)


def build_network(meta: dict[str, Any]) -> nn.Module:
    """The network described by checkpoint metadata (model, channels, settings, wrappers)."""
    in_ch, out_ch = int(meta["in_channels"]), int(meta["out_channels"])
    net = build_model(str(meta["model_name"]), in_ch, out_ch, **dict(meta.get("model_settings") or {}))
    if meta.get("residual_on_last_frame"):
        variables = int(meta.get("variables_per_frame") or 1)
        net = LastFrameResidual(net, variables, out_ch // variables)
    return net

