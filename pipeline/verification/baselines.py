"""Classic methods each network must beat, one interface for all (pysteps style: ``get_baseline(name)``).

Every baseline maps physical inputs ``[B, C, H, W]`` (the datamodule's de-normalised inputs)
and the checkpoint metadata (channel names) to a prediction in the space the task's metrics
score: a 0/1 probability map for segmentation, physical values for regression and nowcasts,
class indices for classification.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from meteovision.datasets.synthetic.sat2precip import gpi_rate
from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata

Baseline = Callable[[Tensor, CheckpointMetadata], Tensor]


def _channel(inputs: Tensor, meta: CheckpointMetadata, name: str) -> Tensor:
    """The last channel called ``name`` (the latest frame when several times are stacked)."""
    names = list(meta.channel_names)
    matches = [i for i, n in enumerate(names) if n == name or n.split("@")[0] == name or n.startswith(f"{name}_")]
    if not matches:
        raise KeyError(f"baseline needs input channel '{name}', the model has {names}")
    return inputs[:, matches[-1]]


# ---------------------------------------------------------------------------- nowcast
FramesT = TypeVar("FramesT", np.ndarray, Tensor)


def persist(frames: FramesT, n_leads: int) -> FramesT:
    """Eulerian persistence, the one definition: the last frame (axis -3) repeated for ``n_leads`` leads.

    numpy (T, H, W) for the evaluation's method, torch [B, T, H, W] for the training baseline.
    """
    last = frames[..., -1:, :, :]
    if isinstance(last, Tensor):
        return last.repeat_interleave(n_leads, dim=-3)
    return np.repeat(last, n_leads, axis=-3)


def persistence(inputs: Tensor, meta: CheckpointMetadata) -> Tensor:
    """Eulerian persistence: the last observed frame at every lead time."""
    return persist(inputs, meta.out_channels)


# ---------------------------------------------------------------------------- sat2precip
def gpi(inputs: Tensor, meta: CheckpointMetadata) -> Tensor:
    """GOES Precipitation Index (:func:`~meteovision.datasets.synthetic.sat2precip.gpi_rate`) of the IR_108 channel."""
    return gpi_rate(_channel(inputs, meta, "IR_108")).unsqueeze(1).to(inputs.dtype)


# ---------------------------------------------------------------------------- bow echo
BOW_CORE_MM_H = 20.0
BOW_MIN_LENGTH_PX = 12
BOW_MIN_BOWING = 0.12


def _is_bow(rows: np.ndarray, cols: np.ndarray) -> bool:
    """An arc: long along its main axis and bulging away from the chord joining its ends."""
    pts = np.stack([rows, cols], axis=1).astype(float)
    centred = pts - pts.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    along = centred @ vt[0]
    across = centred @ vt[1]
    length = float(along.max() - along.min())
    if length < BOW_MIN_LENGTH_PX:
        return False
    # chord between the two ends; the bulge is the mean offset of the middle third from it
    order = np.argsort(along)
    n = len(order)
    ends = np.concatenate([across[order[: max(1, n // 6)]], across[order[-max(1, n // 6) :]]]).mean()
    middle = across[order[n // 3 : 2 * n // 3]].mean() if n >= 3 else ends
    return abs(float(middle - ends)) / length >= BOW_MIN_BOWING


def bow_echo_rule(inputs: Tensor, meta: CheckpointMetadata) -> Tensor:
    """Threshold-and-shape rule: intense cores (>= 20 mm h-1) whose connected shape is a long arc."""
    rate = _channel(inputs, meta, "RATE").detach().cpu().numpy()
    out = np.zeros_like(rate, dtype=np.float32)
    for b in range(rate.shape[0]):
        cores = np.nan_to_num(rate[b], nan=0.0) >= BOW_CORE_MM_H
        labels, _ = ndimage.label(cores, structure=np.ones((3, 3)))
        for index, region in enumerate(ndimage.find_objects(labels), start=1):
            if region is None:
                continue
            rows, cols = np.nonzero(labels[region] == index)
            if len(rows) >= BOW_MIN_LENGTH_PX and _is_bow(rows, cols):
                out[b][region][labels[region] == index] = 1.0
    return torch.from_numpy(out).unsqueeze(1).to(inputs.device)


# ---------------------------------------------------------------------------- radar cleaning
TEXTURE_THRESHOLD_DB2 = 45.0
ECHO_DBZ = 5.0
SPECKLE_MIN_NEIGHBOURS = 3


def texture_filter(inputs: Tensor, meta: CheckpointMetadata) -> Tensor:
    """Gabella-type clutter filter: high reflectivity texture (TDBZ) or isolated speckle is artefact.

    TDBZ is the local mean of squared differences between neighbouring echo pixels (Hubbert et al. 2009);
    ground clutter and interference are far rougher than precipitation. Pixels with fewer than three
    echo neighbours in their 3 x 3 window are despeckled.
    """
    th = _channel(inputs, meta, "TH").detach().cpu().numpy().astype(np.float64)
    out = np.zeros_like(th, dtype=np.float32)
    for b in range(th.shape[0]):
        z = np.nan_to_num(th[b], nan=-32.0)
        echo = z > ECHO_DBZ
        # TDBZ over pairs of neighbouring echo pixels only: the edge of a rain area is not texture.
        pair_x = echo[:, 1:] & echo[:, :-1]
        pair_y = echo[1:, :] & echo[:-1, :]
        d2 = np.zeros_like(z)
        weight = np.zeros_like(z)
        d2[:, :-1] += np.where(pair_x, np.diff(z, axis=1) ** 2, 0.0)
        weight[:, :-1] += pair_x
        d2[:-1, :] += np.where(pair_y, np.diff(z, axis=0) ** 2, 0.0)
        weight[:-1, :] += pair_y
        num = ndimage.uniform_filter(d2, size=5, mode="constant")
        den = ndimage.uniform_filter(weight, size=5, mode="constant")
        tdbz = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        kernel = np.ones((3, 3), dtype=np.int32)
        neighbours = ndimage.convolve(echo.astype(np.int32), kernel, mode="constant") - 1
        speckle = echo & (neighbours < SPECKLE_MIN_NEIGHBOURS)
        out[b] = ((echo & (tdbz > TEXTURE_THRESHOLD_DB2)) | speckle).astype(np.float32)
    return torch.from_numpy(out).unsqueeze(1).to(inputs.device)


# ---------------------------------------------------------------------------- webcams
def _luminance(inputs: Tensor) -> Tensor:
    rgb = inputs[:, :3].clamp(0.0, 255.0)
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


SNOW_BRIGHT = 185.0
SNOW_PARTIAL_FRACTION = 0.15
SNOW_FULL_FRACTION = 0.55


def snow_rule(inputs: Tensor, meta: CheckpointMetadata) -> Tensor:
    """Bright, grey (unsaturated) pixels in the lower half of the image are snow on the ground."""
    rgb = inputs[:, :3].clamp(0.0, 255.0)
    h = rgb.shape[-2]
    lower = rgb[..., h // 2 :, :]
    lum = _luminance(lower)
    saturation = lower.max(dim=1).values - lower.min(dim=1).values
    snow = (lum >= SNOW_BRIGHT) & (saturation < 40.0)
    fraction = snow.float().mean(dim=(-2, -1))
    classes = torch.zeros_like(fraction, dtype=torch.long)
    classes[fraction >= SNOW_PARTIAL_FRACTION] = 1
    classes[fraction >= SNOW_FULL_FRACTION] = 2
    return classes


VISIBILITY_CONTRAST_BOUNDS = (0.04, 0.10, 0.20)


def visibility_rule(inputs: Tensor, meta: CheckpointMetadata) -> Tensor:
    """Koschmieder: apparent contrast of the distant band (around the horizon) falls as exp(-3 d / V).

    The RMS contrast of the upper-middle band of the image is binned into the four visibility classes
    (<200 m, 200-1000 m, 1-5 km, >5 km) by fixed bounds.
    """
    lum = _luminance(inputs)
    h = lum.shape[-2]
    band = lum[..., h // 4 : h // 2, :]
    contrast = band.std(dim=(-2, -1)) / band.mean(dim=(-2, -1)).clamp_min(1.0)
    bounds = torch.tensor(VISIBILITY_CONTRAST_BOUNDS, device=inputs.device, dtype=contrast.dtype)
    return torch.bucketize(contrast, bounds)


BASELINES: dict[str, Baseline] = {
    "persistence": persistence,
    "gpi": gpi,
    "bow_echo_rule": bow_echo_rule,
    "texture_filter": texture_filter,
    "snow_rule": snow_rule,
    "visibility_rule": visibility_rule,
}


def get_baseline(name: str) -> Baseline:
    """The baseline called ``name``; the error lists the known ones."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline '{name}'; known: {sorted(BASELINES)}") from None
