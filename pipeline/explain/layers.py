"""The convolutions of a network that can be visualised, and running it frozen up to one of them.

:mod:`meteovision.pipeline.explain.filters` (activation maximisation) and
:mod:`meteovision.pipeline.explain.saliency` build on these: the ``layers`` listing (forward
order, scale, encoder or decoder, the first and last encoder convolutions marked), the filter
indices a user asks for, and a network frozen so that nothing in it changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from meteovision.datasets.errors import MeteovisionError

#: Name parts that put a convolution after the encoder (decoders, heads, classifiers).
DECODER_PARTS = frozenset({"decoder", "decoders", "head", "heads", "segmentation_head", "classifier",
                           "upsamplers", "aspp"})
#: Input side used to trace the layers of a dense model (``layers``) and for ``explain_for_report``.
TRACE_SIZE = 64
Part = Literal["encoder", "decoder", "unused"]


class ExplainError(MeteovisionError):
    """An explanation cannot be made as asked (unknown layer, filter, region, input)."""


class _StopForwardError(Exception):
    """Raised by the capture hook: nothing after the visualised layer needs computing."""


# ---------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerInfo:
    """One ``Conv2d`` of a network, as the ``layers`` listing shows it.

    ``depth`` is its position among the convolutions in the order the forward pass runs them;
    ``scale`` the side of its output over the side of the network's input (1/2 after a pooling).
    ``part`` is ``encoder``, ``decoder`` (decoders, heads, classifiers) or ``unused`` (built but not
    run by the forward pass, e.g. the deeper stages of a shallower smp encoder; scale NaN).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    depth: int
    scale: float
    part: Part
    mark: str = ""  # "first encoder", "last encoder", or both

    @property
    def scale_text(self) -> str:
        if self.scale >= 1:
            return f"{self.scale:g}"
        return f"1/{1 / self.scale:.3g}"


def _part(name: str) -> Part:
    return "decoder" if DECODER_PARTS & set(name.split(".")) else "encoder"


def conv_layers(net: nn.Module, in_channels: int, size: int = TRACE_SIZE) -> list[LayerInfo]:
    """Every ``Conv2d`` of ``net`` in forward order, the first and last encoder convolutions marked.

    One forward pass on a zero input of ``size`` x ``size`` finds the order and the scales; a
    convolution the pass does not reach is listed after the others as ``unused``.
    """
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ExplainError(f"{type(net).__name__} has no Conv2d layer to explain")
    order: list[str] = []
    sides: dict[str, int] = {}
    handles = []
    for name, module in convs.items():
        def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
            if name not in sides:
                order.append(name)
                sides[name] = int(out.shape[-1])
        handles.append(module.register_forward_hook(hook))
    try:
        with frozen(net), torch.no_grad():
            net(torch.zeros(1, in_channels, size, size, device=device_of(net)))
    except RuntimeError as err:
        raise ExplainError(f"{type(net).__name__} does not run on a {in_channels} x {size} x {size} input: "
                           f"{err}") from err
    finally:
        for handle in handles:
            handle.remove()
    order += [n for n in convs if n not in sides]
    infos = []
    for depth, name in enumerate(order):
        m = convs[name]
        k = m.kernel_size
        used = name in sides
        infos.append(LayerInfo(name, int(m.in_channels), int(m.out_channels), (int(k[0]), int(k[1])), depth,
                               sides[name] / size if used else math.nan, _part(name) if used else "unused"))
    encoder = [i for i, info in enumerate(infos) if info.part == "encoder"]
    if encoder:
        first, last = encoder[0], encoder[-1]
        marks = {first: "first encoder"} if first != last else {first: "first and last encoder"}
        if first != last:
            marks[last] = "last encoder"
        infos = [replace(info, mark=marks.get(i, "")) for i, info in enumerate(infos)]
    return infos


def encoder_ends(layers: Sequence[LayerInfo]) -> tuple[LayerInfo, LayerInfo]:
    """The first and the last encoder convolution (the same layer for a one-conv encoder)."""
    encoder = [info for info in layers if info.part == "encoder"]
    if not encoder:
        raise ExplainError("no encoder convolution: every Conv2d sits in a decoder or head")
    return encoder[0], encoder[-1]


def resolve_layer(layers: Sequence[LayerInfo], name: str) -> LayerInfo:
    """The layer called ``name``; ``first`` and ``last`` name the encoder's first and last convolution."""
    if name in ("first", "last"):
        first, last = encoder_ends(layers)
        return first if name == "first" else last
    for info in layers:
        if info.name == name:
            return info
    shown = ", ".join(info.name for info in layers[:12]) + (", ..." if len(layers) > 12 else "")
    raise ExplainError(f"no Conv2d layer named {name!r}; the layers are {shown} "
                       "(see `meteovision explain layers`), or use 'first' / 'last'")


def parse_filters(text: str, out_channels: int) -> list[int]:
    """``"0-15"``, ``"3"``, ``"0,4,8-11"`` -> filter indices, checked against ``out_channels``."""
    chosen: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ExplainError(f"filters {text!r}: {part!r} is not an index or a range like 0-15")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ExplainError(f"filters {text!r}: range {part} runs backwards")
        chosen.extend(i for i in range(lo, hi + 1) if i not in chosen)
    beyond = [i for i in chosen if i >= out_channels]
    if beyond:
        raise ExplainError(f"filters {beyond} do not exist: the layer has {out_channels} filters "
                           f"(0-{out_channels - 1})")
    return chosen


# ---------------------------------------------------------------------------- frozen network


def device_of(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def frozen(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode with every parameter's ``requires_grad`` off; both restored afterwards."""
    was_training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if any(p.requires_grad for p in net.parameters()):
            raise ExplainError("the network could not be frozen: a parameter still requires a gradient")
        yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        net.train(was_training)


def capture(net: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """Output of ``module`` when ``net`` runs on ``x``; the forward pass stops right after it."""
    store: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> None:
        store.append(out)
        raise _StopForwardError

    handle = module.register_forward_hook(hook)
    try:
        net(x)
    except _StopForwardError:
        pass
    finally:
        handle.remove()
    if not store:
        raise ExplainError(f"the layer {type(module).__name__} is not used by the forward pass")
    return store[0]
