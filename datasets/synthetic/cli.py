"""``meteovision sample-data``: write synthetic data for one application (or all of them)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from meteovision.datasets.synthetic.common import APPS, SampleSettings, default_settings

_DEFAULTS = SampleSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, choices=[*APPS, "all"], help="application ('all': DIR/<app>/ each)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument(
        "--size", type=int, default=None, metavar="N",
        help=f"grid side in cells (radar 1 km, satellite 3 km; default {_DEFAULTS.size})",
    )
    parser.add_argument("--events", type=int, default=None, metavar="E",
                        help=f"events, on separate days (default {_DEFAULTS.events}; radar nowcasts 40)")
    parser.add_argument("--frames-per-event", type=int, default=None, metavar="F",
                        help=f"frames per event (default {_DEFAULTS.frames_per_event}; radar nowcasts 12)")


def settings_for(app: str, args: argparse.Namespace) -> SampleSettings:
    """``app``'s default settings with the values given on the command line."""
    given = {name: getattr(args, name) for name in ("size", "events", "frames_per_event")
             if getattr(args, name) is not None}
    return dataclasses.replace(default_settings(app), **given)


def run(args: argparse.Namespace) -> int:
    from meteovision.datasets.errors import MeteovisionError
    from meteovision.datasets.synthetic.generate import generate_sample_data

    try:
        apps = list(APPS) if args.app == "all" else [args.app]
        for app in apps:
            out = args.out / app if args.app == "all" else args.out
            manifest = generate_sample_data(app, out, args.seed, settings_for(app, args))
            print(f"{app}: {manifest}")
    except MeteovisionError as exc:
        print(f"meteovision sample-data: error: {exc}", file=sys.stderr)
        return 2
    return 0
