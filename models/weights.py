"""Load pretrained weights from a local file only: nothing in meteovision downloads.

A weights file is a PyTorch state dict read with ``weights_only=True`` (no pickled
code runs). When a network has other than 3 input channels, the file's RGB kernels of
the first convolution are averaged and spread over the channels (scaled by
3 / in_channels, so a grey image repeated on every channel gives the same response
as the RGB network on the grey image repeated on R, G and B).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from meteovision.models.errors import ModelWeightsError

LOG = logging.getLogger(__name__)

RGB = 3


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored at ``path``, read with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise ModelWeightsError(p, "weights file does not exist (weights load from a local file only)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise ModelWeightsError(
            p, f"not a PyTorch weights file readable with weights_only=True: {err}"
        ) from err
    if not isinstance(obj, Mapping):
        raise ModelWeightsError(
            p, f"expected a state dict (parameter name -> tensor), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelWeightsError(p, f"expected a state dict of tensors; entries {bad[:5]} are not tensors")
    return dict(obj)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB conv kernel [out, 3, kh, kw] spread over ``in_channels`` (mean of RGB * 3 / in_channels)."""
    mean = weight.mean(dim=1, keepdim=True)
    return (mean * (RGB / in_channels)).repeat(1, in_channels, 1, 1).contiguous()


def _adapt_first_conv(
    state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], in_channels: int
) -> dict[str, torch.Tensor]:
    """``state`` with every RGB conv kernel that meets an ``in_channels`` kernel adapted."""
    if in_channels == RGB:
        return state
    out = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if (
            target is not None
            and value.ndim == 4
            and target.ndim == 4
            and value.shape[1] == RGB
            and target.shape[1] == in_channels
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
        ):
            out[key] = adapt_input_conv(value, in_channels)
            LOG.info("adapted RGB kernel %s to %d input channels", key, in_channels)
    return out


def load_weights_file(
    module: nn.Module,
    path: str | Path,
    *,
    in_channels: int,
    what: str,
    skip_prefixes: tuple[str, ...] = (),
) -> None:
    """Load the state dict at ``path`` into ``module`` strictly, except keys under ``skip_prefixes``.

    Keys under ``skip_prefixes`` (a classifier head replaced for new classes) are dropped
    from the file and may be absent from it. ``what`` names the network in errors.
    """
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    own = module.state_dict()
    state = _adapt_first_conv(state, own, in_channels)
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise ModelWeightsError(
            path, f"{len(mismatched)} tensors do not fit {what}: {'; '.join(mismatched[:5])}"
        )
    wanted = {k for k in own if not k.startswith(skip_prefixes)}
    missing = sorted(wanted - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    key_problem = (
        f"keys do not match {what}: missing {len(missing)} {missing[:5]}, "
        f"unexpected {len(unexpected)} {unexpected[:5]}"
    )
    if skip_prefixes and (missing or unexpected):
        raise ModelWeightsError(path, key_problem)
    try:
        # Without skip_prefixes the load is strict; some encoders (smp) override load_state_dict
        # to drop their classifier's keys first, so "unexpected" alone is not yet an error.
        module.load_state_dict(state, strict=not skip_prefixes)
    except RuntimeError as err:
        raise ModelWeightsError(path, key_problem) from err
    LOG.info("loaded %d tensors from %s into %s", len(state), path, what)
