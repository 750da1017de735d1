"""``meteovision export``: write a checkpoint's network as ONNX or TorchScript plus a JSON sidecar.

Example::

    meteovision export --checkpoint bow.ckpt --format onnx --output models/bow.onnx

The sidecar (``models/bow.onnx.json``) holds the channel names, units and normalisation a
consumer needs; see :mod:`meteovision.pipeline.inference.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.exit_codes import ExitCode, epilog
from meteovision.pipeline.inference.export import EXPORT_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = epilog()
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="checkpoint written by `meteovision fit`")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="export format")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE",
                        help="exported file; the sidecar is FILE.json")


def run(args: argparse.Namespace) -> int:
    """Export; return the exit code (0, or 2 when the checkpoint cannot be exported)."""
    from meteovision.pipeline.checkpoints.loading import load_inference_model
    from meteovision.pipeline.inference.export import export_model

    try:
        model = load_inference_model(args.checkpoint)
        result = export_model(model, args.format, args.output)
    except MeteovisionError as err:
        print(f"meteovision export: error: {err}", file=sys.stderr)
        return int(ExitCode.USAGE_ERROR)
    diff = result.max_abs_diff
    parity = "unverified" if diff is None else f"max abs diff {diff:.2e} vs torch"
    print(f"wrote {result.path} ({result.format}, {parity}) and {result.sidecar}")
    return int(ExitCode.OK)
