"""Where a prediction looks: the gradient of a prediction with respect to its input (saliency).

Simonyan et al. 2014 ("Deep inside convolutional networks"): for a dense model (segmentation,
regression, nowcast) the prediction is the sum of one raw output channel (a logit, or the
normalised target) over a region the user picks, the whole domain by default; for a classifier,
the logit of the predicted (or a chosen) class. The gradient is taken with respect to the
normalised input, so channels of different units compare; pixels outside the receptive field
of the region get exactly zero. The network is frozen while it is explained.

Gridded inputs give a PNG (each input channel beside its |gradient|, the region outlined) and a
CF-1.10 NetCDF of ``saliency_<channel>`` on the input's grid, named like the prediction's
product with ``_saliency`` added so it sits beside it; webcam images give a PNG and an ``.npz``.
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import SeriesError
from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, InferenceModel
from meteovision.pipeline.explain.filters import (
    ExplainError,
    channel_names_of,
    default_size,
    device_of,
    frozen,
    save_png,
)
from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.inference.inputs import (
    Frame,
    InputSpec,
    expand_inputs,
    grid_problem,
    iso_minutes,
    read_frames,
    utc_datetime,
)
from meteovision.pipeline.inference.products import Product, ProductVariable, Provenance, product_filename

log = logging.getLogger(__name__)

__all__ = [
    "Region",
    "SaliencyResult",
    "class_saliency",
    "explain_saliency",
    "output_names",
    "parse_region",
    "region_saliency",
    "saliency_product",
]


def variable_token(text: str) -> str:
    """A NetCDF variable name made of ``text`` (letters, digits, _; starts with a letter)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return name if name and name[0].isalpha() else f"c_{name}"


def _unique(names: Sequence[str]) -> list[str]:
    """``names`` with any repeated one suffixed by its position, so every name is unique."""
    return [name if names.count(name) == 1 else f"{name}_c{i}" for i, name in enumerate(names)]


@dataclass(frozen=True)
class Region:
    """Rows ``y0:y1`` and columns ``x0:x1`` (Python slices, end excluded) of the input grid."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def text(self) -> str:
        return f"{self.y0}:{self.y1},{self.x0}:{self.x1}"

    def describe(self) -> str:
        return f"rows {self.y0}:{self.y1}, columns {self.x0}:{self.x1}"


def parse_region(text: str | None, shape: tuple[int, int]) -> Region:
    """``"y0:y1,x0:x1"`` (either end may be left out, as in a slice) -> :class:`Region`; None: the domain."""
    ny, nx = shape
    if text is None:
        return Region(0, ny, 0, nx)
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*,\s*(\d*)\s*:\s*(\d*)\s*", text)
    if match is None:
        raise ExplainError(f"region {text!r}: expected y0:y1,x0:x1 (rows, then columns; e.g. 10:40,0:64)")
    y0, y1, x0, x1 = (int(v) if v else None for v in match.groups())
    region = Region(y0 or 0, ny if y1 is None else y1, x0 or 0, nx if x1 is None else x1)
    if not (0 <= region.y0 < region.y1 <= ny and 0 <= region.x0 < region.x1 <= nx):
        raise ExplainError(f"region {text!r} is empty or leaves the {ny} x {nx} grid")
    return region


def _gradient(net: nn.Module, inputs: np.ndarray, target: Callable[[Tensor], Tensor]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of ``target(output)`` with respect to a normalised ``[C, H, W]`` input, and the output."""
    device = device_of(net)
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[None].to(device).requires_grad_(True)
    with frozen(net):
        out = net(x)
        (grad,) = torch.autograd.grad(target(out), x)
    return grad[0].cpu().numpy().astype(np.float32), out.detach()[0].cpu().numpy().astype(np.float32)


def region_saliency(net: nn.Module, inputs: np.ndarray, output_channel: int, region: Region) -> np.ndarray:
    """d(sum of output channel ``output_channel`` over ``region``) / d(input): ``[C, H, W]``, signed.

    ``inputs`` is one normalised ``[C, H, W]`` array; the network must return ``[1, K, H, W]``.
    """
    if inputs.ndim != 3:
        raise ExplainError(f"saliency needs one [C, H, W] input, got shape {inputs.shape}")

    def target(out: Tensor) -> Tensor:
        if out.ndim != 4 or out.shape[-2:] != inputs.shape[-2:]:
            raise ExplainError(f"the network returns shape {tuple(out.shape)}, not a field on the input's "
                               f"{inputs.shape[-2]} x {inputs.shape[-1]} grid")
        if not 0 <= output_channel < out.shape[1]:
            raise ExplainError(f"output channel {output_channel} does not exist (the network has "
                               f"{out.shape[1]}: 0-{out.shape[1] - 1})")
        return out[0, output_channel, region.y0 : region.y1, region.x0 : region.x1].sum()

    return _gradient(net, inputs, target)[0]


def class_saliency(net: nn.Module, inputs: np.ndarray, class_index: int | None = None
                   ) -> tuple[np.ndarray, int, np.ndarray]:
    """d(logit of ``class_index``, default the predicted class) / d(input); also the class and the logits."""
    if inputs.ndim != 3:
        raise ExplainError(f"saliency needs one [C, H, W] input, got shape {inputs.shape}")
    chosen: list[int] = []

    def target(logits: Tensor) -> Tensor:
        if logits.ndim != 2:
            raise ExplainError(f"a classifier returns [1, classes]; this network returns {tuple(logits.shape)}")
        k = int(logits[0].argmax()) if class_index is None else int(class_index)
        if not 0 <= k < logits.shape[1]:
            raise ExplainError(f"class {k} does not exist (the network has {logits.shape[1]}: "
                               f"0-{logits.shape[1] - 1})")
        chosen.append(k)
        return logits[0, k]

    grad, logits = _gradient(net, inputs, target)
    return grad, chosen[0], logits


# ---------------------------------------------------------------------------- saliency of a checkpoint


@dataclass(frozen=True, eq=False)
class SaliencyResult:
    """The saliency of one prediction and the files written."""

    gradient: np.ndarray  # [C, H, W], signed, normalised input space
    physical: np.ndarray  # [C, H, W] the input in physical units (NaN = nodata)
    channel_names: tuple[str, ...]
    output_name: str  # e.g. "bow_echo_mask", "RATE_t+10min", a class name
    output_description: str  # e.g. "logit of 'bow_echo_mask'"
    region: Region | None  # None: the whole domain (or a classifier's whole image)
    paths: tuple[Path, ...]


def output_names(meta: CheckpointMetadata) -> list[str]:
    """Names of the network's raw output channels (classes, or targets), ``output0..`` when unknown."""
    n = meta.out_channels
    for names in (meta.class_names, meta.target_names):
        if len(names) == n:
            return list(names)
    return [f"output{k}" for k in range(n)]


def output_description(meta: CheckpointMetadata, k: int) -> str:
    """What raw output channel ``k`` is: a logit (segmentation, classification) or a normalised target."""
    name = output_names(meta)[k]
    kind = meta.task_kind
    if kind is TaskKind.CLASSIFICATION or (kind is TaskKind.SEGMENTATION and meta.out_channels > 1):
        return f"logit of class {name!r}"
    if kind is TaskKind.SEGMENTATION:
        return f"logit of {name!r}"
    return f"{name!r} in normalised target units"


def _ns(t: np.datetime64) -> int:
    return int(t.astype("datetime64[ns]").astype(np.int64))


def _window(model: InferenceModel, paths: Sequence[Path], spec: InputSpec) -> tuple[list[Frame], np.ndarray]:
    """Frames and physical ``[C, H, W]`` data of the latest prediction the inputs allow.

    An analysis explains the latest time step; a nowcast the window of its N frames ending at
    the latest time, at the checkpoint's step. Only the frames that window can use are kept
    while the files are read, so a folder of a whole day costs the memory of N frames.
    """
    nowcast = model.meta.task_kind is TaskKind.NOWCAST
    n_in = model.meta.num_input_frames if nowcast else 1
    step_minutes = model.meta.time_step_minutes or 0.0
    if nowcast and not step_minutes > 0:
        raise ExplainError(f"{model.path}: the nowcast checkpoint records no time_step_minutes")
    step = np.timedelta64(round(step_minutes * 60e9), "ns")
    kept: dict[int, tuple[Frame, np.ndarray]] = {}
    first: Frame | None = None
    count = 0
    for path in paths:
        for frame, data in read_frames(path, spec):
            count += 1
            first = first or frame
            problem = grid_problem(first.grid, frame.grid)
            if problem is not None:
                raise SeriesError(f"{frame.path}: {problem} of {first.path.name}")
            twin = kept.get(_ns(frame.time))
            if twin is not None:
                raise SeriesError(f"{frame.path}: time {iso_minutes(frame.time)} is also that of {twin[0].label}")
            kept[_ns(frame.time)] = (frame, data)
            oldest = max(kept) - (n_in - 1) * int(step.astype(np.int64)) if nowcast else max(kept)
            kept = {t: fd for t, fd in kept.items() if t >= oldest}
    if not kept:
        raise ExplainError("the inputs hold no time step")
    reference = kept[max(kept)][0]
    if not nowcast:
        if count > 1:
            log.info("%d time steps given; explaining the latest, %s", count, reference.label)
        return [reference], kept[max(kept)][1]
    wanted = [reference.time - k * step for k in range(n_in - 1, -1, -1)]
    missing = [w for w in wanted if _ns(w) not in kept]
    if missing:
        raise SeriesError(f"the window of {n_in} frames {step_minutes:g} min apart ending "
                          f"{iso_minutes(reference.time)} lacks {', '.join(iso_minutes(w) for w in missing)}")
    chosen = [kept[_ns(w)] for w in wanted]
    return [f for f, _ in chosen], np.concatenate([d for _, d in chosen], axis=0)


def write_saliency_png(result: SaliencyResult, path: Path, title: str) -> Path:
    """PNG: one row per input channel; the input (physical) and |gradient| side by side, region outlined."""
    c = result.gradient.shape[0]
    h, w = result.gradient.shape[1:]
    panel = 3.6
    fig = Figure(figsize=(2 * panel + 1.2, 0.6 + panel * c * min(max(h / w, 0.4), 2.5)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(c, 2, squeeze=False)
    magnitude = np.abs(result.gradient)
    for i in range(c):
        for j, (data, cmap, label) in enumerate(((result.physical[i], "viridis", "input"),
                                                 (magnitude[i], "magma", "|gradient|"))):
            ax = axes[i][j]
            image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, interpolation="nearest")
            fig.colorbar(image, ax=ax, shrink=0.8)
            ax.set_title(f"{result.channel_names[i]}: {label}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if result.region is not None:
                r = result.region
                ax.add_patch(Rectangle((r.x0 - 0.5, r.y0 - 0.5), r.x1 - r.x0, r.y1 - r.y0, fill=False,
                                       edgecolor="cyan", linewidth=1.2))
    fig.suptitle(textwrap.fill(title, 90), fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def saliency_product(model: InferenceModel, result: SaliencyResult, frames: Sequence[Frame]) -> Product:
    """CF product of ``saliency_<channel>`` = |gradient| per input channel, on the input's grid."""
    reference = frames[-1]
    names = _unique([variable_token(f"saliency_{n}") for n in result.channel_names])
    where = "the whole domain" if result.region is None else result.region.describe()
    variables = tuple(
        ProductVariable(
            name, np.abs(result.gradient[i]), "1", None,
            f"saliency: absolute gradient of the sum over {where} of the {result.output_description} "
            f"with respect to normalised input channel {result.channel_names[i]!r}",
        )
        for i, name in enumerate(names)
    )
    config = {
        "explanation": "saliency (gradient of the prediction with respect to the normalised input)",
        "output": result.output_name,
        "region": None if result.region is None else result.region.text,
        "input_channels": list(result.channel_names),
        "checkpoint": model.path.name,
    }
    provenance = Provenance(
        application=model.application,
        model_name=model.model_name,
        model_version=f"checkpoint {model.path.name} (sha256 {model.sha256[:12]})",
        checkpoint_sha256=model.sha256,
        config=config,
        input_files=tuple(str(f.path) for f in frames),
    )
    return Product(
        variables=variables,
        grid=reference.grid,
        reference_time=utc_datetime(reference.time),
        lead_times=None,
        provenance=provenance,
        title=f"meteovision {model.application} saliency of {model.model_name}",
        institution="meteovision",
        comment=("where the prediction looks: zero outside the receptive field of the region; "
                 "values are d(prediction)/d(normalised input), one variable per input channel"),
    )


def explain_saliency(
    model: InferenceModel,
    inputs: Sequence[str | Path],
    out_dir: Path,
    region: str | None = None,
    output_channel: int | None = None,
    ignore_grid_spacing: bool = False,
) -> SaliencyResult:
    """Saliency of a checkpoint's prediction on ``inputs``; writes a PNG and (gridded inputs) a CF NetCDF.

    Dense checkpoints: the latest prediction the inputs allow (the latest time step; for a
    nowcast, the window of the last N frames), the sum of ``output_channel`` (default 0) over
    ``region`` (default: the whole domain). The NetCDF is named like the prediction's product
    with ``_saliency`` added, so it sits beside it in the same folder. Classifiers: one image,
    the logit of ``output_channel`` (default the predicted class); a PNG and an ``.npz``.
    """
    files, missing = expand_inputs(inputs)
    if missing:
        raise ExplainError(f"{missing[0]}: no such file, folder or match")
    if not files:
        raise ExplainError(f"no input file in {[str(p) for p in inputs]}")
    out_dir = Path(out_dir)
    if model.meta.task_kind is TaskKind.CLASSIFICATION:
        return _classifier_saliency(model, files, out_dir, region, output_channel)
    spec = InputSpec.from_meta(model.meta, ignore_grid_spacing)
    frames, physical = _window(model, files, spec)
    stats = model.input_stats()
    normalised = stats.normalize(physical, channel_axis=0) if stats is not None else physical
    area = parse_region(region, frames[-1].grid.shape)
    shown = None if region is None else area
    k = 0 if output_channel is None else int(output_channel)
    outputs = output_names(model.meta)
    if not 0 <= k < len(outputs):
        raise ExplainError(f"output channel {k} does not exist: the checkpoint has {len(outputs)} "
                           f"({', '.join(f'{i}={n}' for i, n in enumerate(outputs))})")
    gradient = region_saliency(model.net, normalised, k, area)
    names = tuple(channel_names_of(model.meta, physical.shape[0]))
    described = output_description(model.meta, k)
    result = SaliencyResult(gradient, physical, names, outputs[k], described, shown, ())
    stem = product_filename(model.application, model.model_name, utc_datetime(frames[-1].time), suffix="")
    where = "the whole domain" if shown is None else area.describe()
    title = (f"{model.application} / {model.model_name}, {iso_minutes(frames[-1].time)}: where the "
             f"{described}, summed over {where}, looks")
    png = write_saliency_png(result, out_dir / f"{stem}_saliency.png", title)
    from meteovision.pipeline.inference.netcdf_writer import write_product_netcdf

    nc = write_product_netcdf(saliency_product(model, result, frames), out_dir / f"{stem}_saliency.nc",
                              overwrite=True)
    return replace(result, paths=(png, nc))


def _classifier_saliency(model: InferenceModel, files: Sequence[Path], out_dir: Path, region: str | None,
                         class_index: int | None) -> SaliencyResult:
    from meteovision.pipeline.inference.images import read_image

    if region is not None:
        raise ExplainError("a classifier explains a whole image: --region does not apply")
    if len(files) != 1:
        raise ExplainError(f"a classifier's saliency explains one image; {len(files)} were given")
    image = read_image(files[0], default_size(model))
    physical = image.pixels.astype(np.float32)
    stats = model.input_stats()
    normalised = stats.normalize(physical, channel_axis=0) if stats is not None else physical
    gradient, k, logits = class_saliency(model.net, normalised, class_index)
    outputs = output_names(model.meta)
    names = tuple(channel_names_of(model.meta, physical.shape[0]))
    result = SaliencyResult(gradient, physical, names, outputs[k], output_description(model.meta, k), None, ())
    stem = f"{files[0].stem}_saliency"
    title = f"{model.application} / {model.model_name}, {files[0].name}: where the {result.output_description} looks"
    png = write_saliency_png(result, out_dir / f"{stem}.png", title)
    npz = out_dir / f"{stem}.npz"
    with atomic_write(npz) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, gradient=gradient, saliency=np.abs(gradient), logits=logits, class_index=k,
                 class_name=np.asarray(outputs[k]), channel_names=np.asarray(names, dtype=str))
    log.info("wrote %s", npz)
    return replace(result, paths=(png, npz))
