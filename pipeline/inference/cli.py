"""``meteovision predict``: run a checkpoint over files, a folder or a glob and write CF products.

Examples::

    meteovision predict --checkpoint bow.ckpt --input 'radar/*.h5' --output products/
    meteovision predict --checkpoint nowcast.ckpt --input radar/ --output nowcasts/ --latest --quicklook

Each input is tried on its own: a file that cannot be read (whatever the reader or its library
raised) fails alone and the others go on. Failures are listed on stdout (one line each: the unit
and why) before the summary; the exit code is one of :mod:`meteovision.pipeline.exit_codes`
(0 all written, 1 some failed, 3 nothing to do, 4 output folder full or read-only, 5 all failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.exit_codes import ExitCode, epilog
from meteovision.pipeline.inference.inputs import expand_inputs
from meteovision.pipeline.inference.outputs import OUTPUT_FORMATS
from meteovision.pipeline.inference.predict import PRECISIONS
from meteovision.pipeline.inference.write_errors import OutputWriteError

PRECISION_HELP = (
    "the network's arithmetic: auto (default) = bf16 autocast on CUDA, float32 on the CPU; 32 = float32 "
    "everywhere; bf16 = bf16 autocast on any device. On the CPU, bf16 is faster only on CPUs with native "
    "bf16 (AVX-512 BF16 or AMX; emulated, and slower, elsewhere) and changes outputs slightly "
    "(probabilities by ~1e-2); outputs are still accumulated and written as float32. The products record "
    "the precision used"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = epilog()
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="checkpoint written by `meteovision fit`, or the name of a packaged one "
                             "(nowcast_precip_real)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH|GLOB|DIR",
                        help="input files: paths, folders (their files) or quoted glob patterns")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the products")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="netcdf",
                        help="product format (classification always writes CSV + JSON)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (default: skip them)")
    parser.add_argument("--quicklook", action="store_true", help="also write PNG quicklooks")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="tile side in pixels (default 512 rounded up to the model's multiple)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="context margin per tile side in pixels (default 64, or tile-size/4 if smaller)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles (or images) per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (bf16 autocast on CUDA)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    parser.add_argument("--threshold", type=float, default=0.5, help="segmentation: probability for the mask")
    parser.add_argument("--ignore-grid-spacing", action="store_true",
                        help="run on inputs whose grid spacing differs from the checkpoint's (warn only)")
    parser.add_argument("--coarsen", type=int, default=1, metavar="K",
                        help="average K x K blocks of every input first (valid cells; linear Z for dBZ) to reach "
                             "the checkpoint's grid spacing, e.g. 2 for a 1 km composite and nowcast_precip_real")
    parser.add_argument("--latest", action="store_true",
                        help="nowcasts: only the latest complete window (operational use)")
    parser.add_argument("--max-gap-minutes", type=float, default=60.0,
                        help="nowcasts: a longer break between frames starts a new segment (no failure); "
                             "shorter gaps make the windows spanning them fail")
    parser.add_argument("--institution", default="meteovision", help="the products' institution attribute")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars over files and tiles (default: when stderr is a terminal)")


def _error(message: str) -> int:
    print(f"meteovision predict: error: {message}", file=sys.stderr)
    return int(ExitCode.USAGE_ERROR)


def run(args: argparse.Namespace) -> int:
    """Run the prediction; return the exit code."""
    from meteovision.pipeline.checkpoints.loading import load_inference_model
    from meteovision.pipeline.inference.predict import Outcome, PredictReport, PredictSettings, Status, run_prediction

    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    try:
        settings = PredictSettings(
            output_dir=args.output, format=args.format, overwrite=args.overwrite, quicklook=args.quicklook,
            tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            threshold=args.threshold, ignore_grid_spacing=args.ignore_grid_spacing, coarsen=args.coarsen,
            latest_only=args.latest,
            max_gap_minutes=args.max_gap_minutes,
            progress=progress, institution=args.institution, precision=args.precision,
        )
        model = load_inference_model(args.checkpoint)
        files, missing = expand_inputs(args.input)
        report = run_prediction(model, files, settings)
    except OutputWriteError as err:
        print(f"meteovision predict: error: {err}; products written before it stay, rerun once there "
              "is room (existing outputs are skipped)", file=sys.stderr)
        return int(ExitCode.OUTPUT_UNWRITABLE)
    except MeteovisionError as err:
        return _error(str(err))
    absent = tuple(Outcome(str(p), Status.FAILED, inputs=(p,), reason=f"{p}: no such file, folder or match")
                   for p in missing)
    report = PredictReport(absent) + report
    for outcome in report.failed:
        print(f"FAILED {outcome.unit}: {outcome.reason}")
    print(report.summary())
    return int(report.exit_code)
