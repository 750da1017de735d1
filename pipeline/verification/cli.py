"""``meteovision evaluate``: score every nowcast method on a radar series, per lead time, on one shared mask.

Examples::

    meteovision evaluate --config configs/evaluate_opera.yaml
    meteovision evaluate --config evaluate_fmi --checkpoint runs/nowcast_precip/checkpoints/last.ckpt \\
        --data-root ../shared/data --output evaluation/fmi

Prints a Markdown table of all methods per lead time on stdout and writes ``scores.json``,
``scores.csv``, ``scores.md``, ``skill_vs_lead_<metric>.png`` and ``maps_<time>_+<lead>min.png``
into the output folder. Exit status 0 when done, 2 for a bad config, file or checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.exit_codes import ExitCode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("The config (YAML) names the files, the crop, the coarsening, the test window, the leads, "
                     "thresholds, FSS scales and methods: see configs/evaluate_opera.yaml. Every method is scored "
                     "on the same pixels: observed, with a Lagrangian source inside the domain and the radar "
                     "coverage, and forecast by every method.")
    parser.add_argument("--config", required=True, metavar="YAML|NAME",
                        help="evaluation config: a path, or a packaged name such as evaluate_opera")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a nowcast checkpoint from `meteovision fit`: adds the 'network' method")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder the config's input glob is relative to (overrides data_root)")
    parser.add_argument("--output", type=Path, default=None, metavar="DIR",
                        help="folder for scores and plots (overrides output_dir)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help="baselines to run instead of the config's (persistence, lk, sprog)")
    parser.add_argument("--max-lead-minutes", type=float, default=None,
                        help="longest lead time to score (overrides max_lead_minutes)")
    parser.add_argument("--maps", choices=("none", "last", "all"), default=None,
                        help="map figures for no, the last or every analysis time (overrides maps)")
    parser.add_argument("--device", default=None, help="device of the network (cpu, cuda); default cpu")


def _error(message: str) -> int:
    print(f"meteovision evaluate: error: {message}", file=sys.stderr)
    return int(ExitCode.USAGE_ERROR)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table, write the outputs; return the exit code."""
    from meteovision.pipeline.verification.evaluate import run_evaluation
    from meteovision.pipeline.verification.evaluate_config import load_config
    from meteovision.pipeline.verification.evaluation_outputs import markdown_table, table_caption, write_outputs

    try:
        cfg = load_config(args.config, data_root=args.data_root, output_dir=args.output,
                          methods=tuple(args.methods) if args.methods else None,
                          max_lead_minutes=args.max_lead_minutes, maps=args.maps)
        if args.device is not None:
            settings = {**cfg.method_settings, "network": {**cfg.method_settings.get("network", {}),
                                                           "device": args.device}}
            cfg = cfg.model_copy(update={"method_settings": settings})
        argv = sys.argv[sys.argv.index("evaluate") + 1 :] if "evaluate" in sys.argv else []
        command = "meteovision evaluate " + " ".join(shlex.quote(a) for a in argv) if argv else ""
        result = run_evaluation(cfg, args.checkpoint, command=command)
        write_outputs(result, cfg.output_dir)
    except MeteovisionError as err:
        return _error(str(err))
    print(table_caption(result))
    print()
    print(markdown_table(result))
    print(f"\nscores, plots and maps in {cfg.output_dir}")
    return int(ExitCode.OK)
