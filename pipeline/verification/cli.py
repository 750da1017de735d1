"""``meteovision evaluate``: score every nowcast method on a radar series, per lead time, on one shared mask.

Examples::

    meteovision evaluate --config configs/evaluate_opera.yaml
    meteovision evaluate --config evaluate_fmi --checkpoint runs/nowcast_precip/checkpoints/last.ckpt \\
        --data-root ../shared/data --output evaluation/fmi
    meteovision evaluate --config evaluate_opera --config evaluate_fmi --workers 2 \\
        --checkpoint unet=runs/a/last.ckpt --checkpoint runs/b/best.ckpt --output evaluation/all

Several ``--checkpoint`` (``name=path`` or ``path``, named by the file stem) are separate method
columns; a lone unnamed one is ``network``. Several ``--config`` print a table per window and one
pooled table whose counts are summed over every window before any ratio (``pooled.md``); each
window's outputs go to ``--output``/<config name> (or the config's ``output_dir``).

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
    parser.add_argument("--config", required=True, action="append", metavar="YAML|NAME",
                        help="evaluation config: a path, or a packaged name such as evaluate_opera; repeat it to "
                             "pool several test windows")
    parser.add_argument("--checkpoint", action="append", default=None, metavar="[NAME=]CKPT",
                        help="a nowcast checkpoint from `meteovision fit`, a method column named NAME (default: "
                             "'network' for one, else the file stem); repeatable")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes scoring analysis times in parallel (same scores as 1); default 1")
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


def _output_dirs(args: argparse.Namespace, configs: list[str]) -> list[Path | None]:
    """Each config's output folder: --output itself for one config, --output/<config stem> for several
    (``<stem>_<n>`` when stems repeat), else None (the config's own ``output_dir``)."""
    if args.output is None or len(configs) == 1:
        return [args.output] * len(configs)
    stems = [Path(c).stem for c in configs]
    unique = len(set(stems)) == len(stems)
    return [Path(args.output) / (stem if unique else f"{stem}_{i + 1}") for i, stem in enumerate(stems)]


def run(args: argparse.Namespace) -> int:
    """Run the evaluation(s), print the tables, write the outputs; return the exit code."""
    from meteovision.pipeline.verification.evaluate import check_networks_fit, checkpoint_names, run_evaluation
    from meteovision.pipeline.verification.evaluate_config import load_config
    from meteovision.pipeline.verification.evaluation_outputs import markdown_table, table_caption, write_outputs
    from meteovision.pipeline.verification.pooled import pooled_table, sums_table, window_sums

    configs = list(args.config)
    several = len(configs) > 1
    results = []
    try:
        checkpoints = checkpoint_names(args.checkpoint or [])
        argv = sys.argv[sys.argv.index("evaluate") + 1 :] if "evaluate" in sys.argv else []
        command = "meteovision evaluate " + " ".join(shlex.quote(a) for a in argv) if argv else ""
        cfgs = []
        for config, output_dir in zip(configs, _output_dirs(args, configs), strict=True):
            cfg = load_config(config, data_root=args.data_root, output_dir=output_dir,
                              methods=tuple(args.methods) if args.methods else None,
                              max_lead_minutes=args.max_lead_minutes, maps=args.maps)
            if args.device is not None:
                settings = {**cfg.method_settings, "network": {**cfg.method_settings.get("network", {}),
                                                               "device": args.device}}
                cfg = cfg.model_copy(update={"method_settings": settings})
            check_networks_fit(cfg, checkpoints)  # every config and checkpoint, before any window is scored
            cfgs.append(cfg)
        for cfg in cfgs:
            result = run_evaluation(cfg, checkpoints, command=command, workers=args.workers)
            write_outputs(result, cfg.output_dir)
            results.append(result)
        if several:
            pooled = pooled_table(results)
            pooled_dir = Path(args.output) if args.output is not None else Path("evaluation") / "pooled"
            pooled_dir.mkdir(parents=True, exist_ok=True)
            (pooled_dir / "pooled.md").write_text(pooled + "\n")
    except MeteovisionError as err:
        return _error(str(err))
    if not several:
        print(table_caption(results[0]))
        print()
        print(markdown_table(results[0]))
        print(f"\nscores, plots and maps in {results[0].config.output_dir}")
        return int(ExitCode.OK)
    for result in results:
        print(f"## {table_caption(result)}\n")
        print(sums_table(window_sums(result)))
        print(f"\nscores, plots and maps in {result.config.output_dir}\n")
    print(f"## {pooled}")
    print(f"\npooled table in {pooled_dir / 'pooled.md'}")
    return int(ExitCode.OK)
