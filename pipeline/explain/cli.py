"""``meteovision explain``: what each convolution filter responds to, and where a prediction looks.

Examples::

    meteovision explain layers --checkpoint bow.ckpt
    meteovision explain filters --checkpoint bow.ckpt --layer first --filters 0-15 --out explain/
    meteovision explain saliency --checkpoint bow.ckpt --input radar/201808241800.h5 \\
        --region 100:160,40:120 --out products/

``filters`` writes ``filters_<layer>.png`` (a tile per filter and input channel) and
``filters_<layer>.npz`` (the optimised inputs, the responses before and after, their spreads and
the receptive field); ``saliency`` writes a PNG and a CF NetCDF named like the prediction's
product with ``_saliency`` added (classifiers: a PNG and an ``.npz``). The methods:
:mod:`meteovision.pipeline.explain.ascent` (filters) and :mod:`meteovision.pipeline.explain.saliency`
(saliency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.exit_codes import ExitCode

DEFAULT_FILTERS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"exit codes: {int(ExitCode.OK)} written; {int(ExitCode.USAGE_ERROR)} cannot be made as asked "
                     "(checkpoint, layer, filters, region or input)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    layers = sub.add_parser("layers", help="list the convolution layers that can be visualised",
                            description="List every Conv2d in forward order: name, channels, kernel, "
                                        "scale, part; the first and last encoder convolutions are marked.")
    layers.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `meteovision fit`")
    layers.add_argument("--size", type=int, default=None,
                        help="input side used to trace the network (default 64; classifiers: their image size)")

    filters = sub.add_parser("filters", help="activation maximisation: inputs that excite chosen filters",
                             description="Gradient ascent (Adam, jitter, blur, clamp to a plausible range) on the "
                                         "input of the frozen network for each chosen filter's pre-activation at "
                                         "the centre of its map; the grid shows each response to a featureless "
                                         "input -> to the optimised one, and the rise in standard deviations of "
                                         "the response to random inputs (clear: >= 2).")
    filters.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `meteovision fit`")
    filters.add_argument("--layer", required=True,
                         help="Conv2d name from `explain layers`, or 'first' / 'last' (encoder ends)")
    filters.add_argument("--filters", default=None, metavar="LIST",
                         help=f"indices and ranges, e.g. 0-15 or 0,3,8-11 (default: the {DEFAULT_FILTERS} that random "
                              "starting fields excite most, each on its own scale)")
    filters.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the PNG and npz")
    filters.add_argument("--size", type=int, default=None,
                         help="side of the optimised input in pixels (default 64; classifiers: their image size)")
    filters.add_argument("--steps", type=int, default=200, help="gradient ascent steps")
    filters.add_argument("--lr", type=float, default=0.1,
                         help="Adam's step per pixel in normalised units")
    filters.add_argument("--seed", type=int, default=0, help="seed of the starting noise and the jitter")
    filters.add_argument("--jitter", type=int, default=2,
                         help="largest random roll per step, in pixels (at most 1/8 of the receptive field)")
    filters.add_argument("--blur-every", type=int, default=4,
                         help="blur every N steps (0: never; not on a receptive field under 8 sigma wide)")
    filters.add_argument("--blur-sigma", type=float, default=0.5, help="Gaussian blur sigma in pixels")
    filters.add_argument("--l2-decay", type=float, default=0.0,
                         help="fraction the input shrinks towards the training mean each step")
    filters.add_argument("--clamp", type=float, default=3.0,
                         help="keep the input below +CLAMP and above -CLAMP or the physical floor (standard "
                              "deviations of the training data)")

    saliency = sub.add_parser("saliency", help="gradient of a prediction with respect to its input",
                              description="Where a prediction looks: |d prediction / d input| per input "
                                          "channel, as a PNG and a CF NetCDF on the input's grid.")
    saliency.add_argument("--checkpoint", required=True, type=Path,
                          help="checkpoint written by `meteovision fit`")
    saliency.add_argument("--input", required=True, nargs="+", metavar="PATH|GLOB|DIR",
                          help="the input file (nowcasts: the files of the window, or a folder holding them); "
                               "the latest prediction they allow is explained")
    saliency.add_argument("--region", default=None, metavar="Y0:Y1,X0:X1",
                          help="rows and columns (pixel indices, end excluded) whose output is summed "
                               "(default: the whole domain; not for classifiers)")
    saliency.add_argument("--output-channel", type=int, default=None, metavar="K",
                          help="output channel explained (default 0; classifiers: the predicted class)")
    saliency.add_argument("--out", required=True, type=Path, metavar="DIR",
                          help="folder for the PNG and NetCDF (the predict output folder puts them beside "
                               "the product)")
    saliency.add_argument("--ignore-grid-spacing", action="store_true",
                          help="run on inputs whose grid spacing differs from the checkpoint's (warn only)")


def _error(message: str) -> int:
    print(f"meteovision explain: error: {message}", file=sys.stderr)
    return int(ExitCode.USAGE_ERROR)


def _layers(args: argparse.Namespace) -> int:
    from meteovision.pipeline.checkpoints.loading import load_inference_model
    from meteovision.pipeline.explain.filters import conv_layers, default_size

    model = load_inference_model(args.checkpoint)
    layers = conv_layers(model.net, model.meta.in_channels, args.size or default_size(model))
    width = max(len("layer"), *(len(info.name) for info in layers))
    print(f"{model.application} / {model.model_name}: {len(layers)} convolution layers")
    print(f"{'depth':>5}  {'layer':<{width}}  {'in':>5}  {'out':>5}  {'kernel':>6}  {'scale':>6}  part")
    for info in layers:
        kernel = f"{info.kernel_size[0]}x{info.kernel_size[1]}"
        scale = "-" if info.part == "unused" else info.scale_text
        part = info.part + (f" ({info.mark})" if info.mark else "")
        print(f"{info.depth:>5}  {info.name:<{width}}  {info.in_channels:>5}  {info.out_channels:>5}  "
              f"{kernel:>6}  {scale:>6}  {part}")
    return int(ExitCode.OK)


def _filters(args: argparse.Namespace) -> int:
    from meteovision.pipeline.checkpoints.loading import load_inference_model
    from meteovision.pipeline.explain.filters import AscentSettings, default_size, explain_filters

    settings = AscentSettings(steps=args.steps, lr=args.lr, jitter=args.jitter, blur_every=args.blur_every,
                              blur_sigma=args.blur_sigma, l2_decay=args.l2_decay, clamp=args.clamp)
    model = load_inference_model(args.checkpoint)
    png, npz = explain_filters(model, args.layer, args.filters, args.out, args.size or default_size(model),
                               settings, args.seed, default_count=DEFAULT_FILTERS)
    print(f"wrote {png} and {npz}")
    return int(ExitCode.OK)


def _saliency(args: argparse.Namespace) -> int:
    from meteovision.pipeline.checkpoints.loading import load_inference_model
    from meteovision.pipeline.explain.saliency import explain_saliency

    model = load_inference_model(args.checkpoint)
    result = explain_saliency(model, args.input, args.out, args.region, args.output_channel,
                              args.ignore_grid_spacing)
    print(f"wrote {' and '.join(str(p) for p in result.paths)}")
    return int(ExitCode.OK)


def run(args: argparse.Namespace) -> int:
    """Run the chosen explanation; 0 when written, 2 when it cannot run as asked."""
    actions = {"layers": _layers, "filters": _filters, "saliency": _saliency}
    try:
        return actions[args.action](args)
    except MeteovisionError as err:
        return _error(str(err))
