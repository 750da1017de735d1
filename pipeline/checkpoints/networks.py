"""Task-level wrappers around registry models, shared by training and inference.

They live in the network module itself, so a checkpoint's weights, the predict stage and the
exported ONNX/TorchScript graph all compute the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meteovision.datasets.motion import MOTION_INPUT_SCALE
from meteovision.models import build_model
from meteovision.pipeline.checkpoints.metadata import MOTION_INPUT_HEADS, NOWCAST_HEADS, NetworkMetadata


def zero_last_conv(net: nn.Module) -> None:
    """Zero the output convolution, so a wrapped network starts as exactly its baseline.

    Standard zero-initialisation of a residual branch: training then departs from persistence
    instead of from a random field that first has to be unlearned. Loading trained weights
    overwrites it, so inference is unaffected.
    """
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    if not convs:  # a functional stand-in (tests) has nothing to initialise
        return
    nn.init.zeros_(convs[-1].weight)
    if convs[-1].bias is not None:
        nn.init.zeros_(convs[-1].bias)


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
        zero_last_conv(net)
        self.net = net
        self.variables_per_frame = variables_per_frame
        self.lead_times = lead_times

    def forward(self, x: Tensor) -> Tensor:
        last = x[:, -self.variables_per_frame :]
        return self.net(x) + last.repeat(1, self.lead_times, 1, 1)


class AdvectionNowcast(nn.Module):
    """Nowcast by learned semi-Lagrangian extrapolation plus a learned correction.

    The backbone reads the N past frames and outputs a motion field (u, v, in pixels per time
    step, bounded by ``max_speed``) and one correction per lead time and variable. Lead k is the
    last observed frame advected backwards along k steps of that motion (bilinear, values at
    the border held where air comes in from outside the domain) plus its correction. With zero
    motion and zero correction it is exactly Eulerian persistence, so training starts from the
    baseline and learns motion first: the physics pysteps' extrapolation encodes by hand.
    Without corrections (head ``lagrangian``) it is Lagrangian persistence with learned motion:
    intensities are kept, only positions move, so a short training cannot drift towards dry.
    """

    extra_channels = 2
    #: Channels appended to the frames as input (none here; see :class:`LucasKanadeAdvection`).
    motion_channels = 0

    def __init__(
        self, net: nn.Module, variables_per_frame: int, lead_times: int, max_speed: float = 6.0,
        corrections: bool = True,
        flow_smoothing: int = 8,
        step_channels: int = 0,
    ) -> None:
        super().__init__()
        if variables_per_frame < 1 or lead_times < 1:
            raise ValueError(f"need >= 1 variable and lead time, got {variables_per_frame}, {lead_times}")
        if not max_speed > 0:
            raise ValueError(f"max_speed must be > 0 pixels per step, got {max_speed}")
        zero_last_conv(net)
        self.net = net
        self.variables_per_frame = variables_per_frame
        self.lead_times = lead_times
        self.max_speed = max_speed
        self.corrections = corrections
        self.flow_smoothing = flow_smoothing
        #: 1 when the input holds the frames' time step (native-step training) after the frames, else 0
        self.step_channels = step_channels

    def motion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Motion (pixels per step, [B, 2, H, W]: u eastward along x, v along rows) and corrections."""
        out = self.net(x)
        flow = torch.tanh(out[:, :2]) * self.max_speed
        r = self.flow_smoothing
        if r > 0:
            # Motion fields are smooth: a box mean over (2r+1)^2 pixels keeps the network from steering
            # single pixels towards dry sources, which a pixel-wise loss would otherwise reward. Separable
            # (rows, then columns) and on a contiguous tensor: the same mean, 15-30 x faster on CPU than one
            # square kernel on the channels-last output of a network run by `predict`.
            padded = F.pad(flow.contiguous(), (r, r, r, r), mode="replicate")
            flow = F.avg_pool2d(F.avg_pool2d(padded, kernel_size=(1, 2 * r + 1), stride=1),
                                kernel_size=(2 * r + 1, 1), stride=1)
        return flow, out[:, 2:]

    def forward(self, x: Tensor) -> Tensor:
        return self.extrapolate(x, self.lead_times)

    def frames(self, x: Tensor) -> Tensor:
        """The past frames of the input (all of it here, but the step channel of a native-step network)."""
        return x[:, : x.shape[1] - self.step_channels]

    def extrapolate(self, x: Tensor, n_leads: int) -> Tensor:
        """Leads 1..n_leads: the trained leads, then the same advection continued for longer nowcasts.

        Up to ``lead_times`` this is :meth:`forward`. Beyond, no correction was learned: lead k is the
        last frame advected k steps plus lead M's correction advected the k - M steps after it (its
        growth or decay carried along), so a lagrangian head gives Lagrangian persistence at any lead.
        """
        return self.advect_fields(self.motion_fields(x), n_leads)

    def motion_fields(self, x: Tensor) -> Tensor:
        """What the network computes locally: motion, corrections and the last frame, stacked as channels.

        Whole-domain inference runs this part tile by tile and :meth:`advect_fields` once over the
        blended domain, so the advection reaches across tile borders at every lead.
        """
        flow, corrections = self.motion(x)
        last = self.frames(x)[:, -self.variables_per_frame :]
        return torch.cat([flow, corrections, last], dim=1)  # a lagrangian head's corrections go unused

    def advect_fields(self, fields: Tensor, n_leads: int) -> Tensor:
        """Leads 1..n_leads from :meth:`motion_fields` (see :meth:`extrapolate`)."""
        if n_leads < 1:
            raise ValueError(f"n_leads must be >= 1, got {n_leads}")
        v, m = self.variables_per_frame, self.lead_times
        flow, last = fields[:, :2], fields[:, -v:]
        corrections = fields[:, 2:-v]
        frames = []
        for k in range(1, n_leads + 1):
            advected = self._advect(last, flow, k)
            if self.corrections:
                j = min(k, m)
                advected = advected + self._advect(corrections[:, (j - 1) * v : j * v], flow, k - j)
            frames.append(advected)
        return torch.cat(frames, dim=1)

    @staticmethod
    def _advect(field: Tensor, flow: Tensor, steps: int) -> Tensor:
        """``field`` taken ``steps`` steps back along ``flow`` (bilinear, border values held)."""
        if steps == 0:
            return field
        h, w = field.shape[-2:]
        rows = torch.arange(h, device=field.device, dtype=field.dtype).view(1, h, 1)
        cols = torch.arange(w, device=field.device, dtype=field.dtype).view(1, 1, w)
        src_x = cols - steps * flow[:, 0]
        src_y = rows - steps * flow[:, 1]
        grid = torch.stack((2.0 * src_x / max(w - 1, 1) - 1.0, 2.0 * src_y / max(h - 1, 1) - 1.0), dim=-1)
        return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)


class LucasKanadeAdvection(AdvectionNowcast):
    """Semi-Lagrangian extrapolation along pysteps' Lucas-Kanade motion, refined by the network.

    The input is the N past frames followed by the Lucas-Kanade motion of those frames (two
    channels, pixels per step divided by :data:`MOTION_INPUT_SCALE`, computed by
    :func:`meteovision.datasets.motion.lucas_kanade` in training, prediction and evaluation alike).
    The network adds a smooth motion residual (bounded by ``max_speed``) and one correction per lead.
    Zero-initialised, it is exactly Lucas-Kanade extrapolation of the last frame, so training starts
    from the optical-flow baseline and learns what it misses: growth, decay and the smoothing of
    scales that cannot be predicted, as S-PROG does by hand.
    """

    motion_channels = 2

    def frames(self, x: Tensor) -> Tensor:
        return x[:, : x.shape[1] - self.motion_channels - self.step_channels]

    def motion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        residual, corrections = super().motion(x)
        return x[:, -self.motion_channels :] * MOTION_INPUT_SCALE + residual, corrections


def build_network(meta: NetworkMetadata) -> nn.Module:
    """The network described by checkpoint metadata (model, channels, settings, nowcast head)."""
    in_ch, out_ch = meta.in_channels, meta.out_channels
    settings = dict(meta.model_settings)
    head = meta.nowcast_head
    if head not in NOWCAST_HEADS:
        raise ValueError(f"nowcast_head '{head}' is unknown; known: {list(NOWCAST_HEADS)}")
    variables = meta.variables_per_frame
    steps = 1 if meta.step_input else 0
    if steps and head not in (*MOTION_INPUT_HEADS, "advection", "lagrangian"):
        raise ValueError(f"nowcast_head '{head}' cannot take the time step as input (native-step training); "
                         "use an advection head")
    if head in MOTION_INPUT_HEADS:
        backbone = build_model(meta.model_name, in_ch + steps + LucasKanadeAdvection.motion_channels,
                               out_ch + AdvectionNowcast.extra_channels, **settings)
        return LucasKanadeAdvection(backbone, variables, out_ch // variables, max_speed=meta.max_speed or 2.0,
                                    step_channels=steps)
    if head in ("advection", "lagrangian"):
        backbone = build_model(meta.model_name, in_ch + steps, out_ch + AdvectionNowcast.extra_channels, **settings)
        # checkpoints written before max_speed was configurable were trained with the old bound, 6 px/step
        max_speed = meta.max_speed or 6.0
        return AdvectionNowcast(backbone, variables, out_ch // variables, max_speed=max_speed,
                                corrections=head == "advection", step_channels=steps)
    net = build_model(meta.model_name, in_ch, out_ch, **settings)
    if head == "residual":
        return LastFrameResidual(net, variables, out_ch // variables)
    return net
