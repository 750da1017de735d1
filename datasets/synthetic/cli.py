"""``meteovision sample-data``: write synthetic data for one application (or all of them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meteovision.datasets.synthetic.common import APPS, SampleSettings

_DEFAULTS = SampleSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, choices=[*APPS, "all"], help="application ('all': DIR/<app>/ each)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument(
        "--size", type=int, default=_DEFAULTS.size, metavar="N", help="grid side in cells (radar 1 km, satellite 3 km)"
    )
    parser.add_argument("--events", type=int, default=_DEFAULTS.events, metavar="E", help="events (separate days)")
    parser.add_argument(
        "--frames-per-event", type=int, default=_DEFAULTS.frames_per_event, metavar="F", help="frames per event"
    )


def run(args: argparse.Namespace) -> int:
    from meteovision.datasets.errors import MeteovisionError
    from meteovision.datasets.synthetic.generate import generate_sample_data

    try:
        settings = SampleSettings(size=args.size, events=args.events, frames_per_event=args.frames_per_event)
        apps = list(APPS) if args.app == "all" else [args.app]
        for app in apps:
            out = args.out / app if args.app == "all" else args.out
            manifest = generate_sample_data(app, out, args.seed, settings)
            print(f"{app}: {manifest}")
    except MeteovisionError as exc:
        print(f"meteovision sample-data: error: {exc}", file=sys.stderr)
        return 2
    return 0
