"""The ``meteovision`` console script: one dispatcher, one module per subcommand.

Subcommand modules are imported only when chosen, so a missing optional
dependency of one command (pysteps, onnx) never breaks the others.
Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``; commands
that wrap LightningCLI (``fit``, ``test``) expose ``run_argv(argv) -> int`` instead
and receive their arguments untouched, the subcommand first.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str
    passthrough: bool = False  # True: the module parses its own argv (LightningCLI)


COMMANDS: dict[str, Command] = {
    "demo": Command("meteovision.pipeline.demo", "the whole chain on built-in sample data, every application"),
    "sample-data": Command("meteovision.datasets.synthetic.cli", "write synthetic sample data for an application"),
    "store": Command("meteovision.datasets.archive.cli", "radar files -> one Zarr training store (build, append)"),
    "summary": Command("meteovision.datasets.summary", "read files or a sample folder and print a tensor summary"),
    "fit": Command("meteovision.pipeline.training.cli", "train a model from a YAML config (LightningCLI)", True),
    "validate": Command("meteovision.pipeline.training.cli", "validate a checkpoint (LightningCLI)", True),
    "test": Command("meteovision.pipeline.training.cli", "score a checkpoint on the held-out test split (LightningCLI)",
                    True),
    "predict": Command("meteovision.pipeline.inference.cli", "run a checkpoint over inputs, write CF products"),
    "export": Command("meteovision.pipeline.inference.export_cli", "export a network to ONNX or TorchScript"),
    "evaluate": Command("meteovision.pipeline.verification.cli",
                        "score nowcast methods (network, persistence, LK, S-PROG) per lead time on radar data"),
    "explain": Command("meteovision.pipeline.explain.cli", "what conv filters respond to, where a prediction looks"),
    "operational": Command("meteovision.workflows.operational_cli",
                           "one operational tick (or a --watch loop): new inputs -> ledger -> products"),
    "batch-predict": Command("meteovision.workflows.batch_predict",
                             "the predict stage over many files on several GPUs/nodes (Lightning DDP)"),
    "retrain": Command("meteovision.workflows.retrain",
                       "retrain on new data, compare with the current model, promote if better"),
    "models": Command("meteovision.workflows.model_registry", "list versioned models, roll back the current one"),
}


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Lightning prints its own messages through its own handler; do not print them twice.
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Parser with every subcommand listed; only ``chosen`` gets its arguments (and its import)."""
    parser = argparse.ArgumentParser(prog="meteovision", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        if cmd.passthrough:
            sub.add_parser(name, help=cmd.help, add_help=False)
            continue
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if name == chosen:
            importlib.import_module(cmd.module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((t for t in args_list if t in COMMANDS), None)
    for i, token in enumerate(args_list):
        if token in COMMANDS and COMMANDS[token].passthrough:
            _configure_logging(1)
            module = importlib.import_module(COMMANDS[token].module)
            return int(module.run_argv(args_list[i:]))
        if not token.startswith("-"):
            break
    parser = build_parser(chosen)
    args = parser.parse_args(args_list)
    _configure_logging(args.verbose)
    module = importlib.import_module(COMMANDS[args.command].module)
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
