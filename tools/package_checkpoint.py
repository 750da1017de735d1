"""Make a packaged checkpoint from a training one: float16 weights and metadata, at most 20 MB.

    python tools/package_checkpoint.py runs/nowcast_precip_real/checkpoints/best.ckpt nowcast_precip_real
    python tools/package_checkpoint.py <checkpoint> nowcast_precip_real --long-lead-smoothing 0.25

``--long-lead-smoothing`` records the inference-time smoothing of the leads past the trained ones (pixels
per step; see ``pipeline/inference/lead_smoothing.py``), a setting chosen on validation after training.
Writes ``pretrained/<name>.ckpt`` and prints what its model card (``pretrained/<name>.md``) must state:
the sha256, the size and the parameter count. Replace a shipped checkpoint at most once per issue, so the
repository's history stays small.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from meteovision.pipeline.checkpoints.loading import CheckpointError, file_sha256, load_checkpoint
from meteovision.pipeline.checkpoints.metadata import CHECKPOINT_KEY, CheckpointMetadata
from meteovision.pipeline.checkpoints.packaged import PACKAGED_CHECKPOINTS, write_packaged_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def with_long_lead_smoothing(ckpt: dict[str, Any], sigma: float, source: str) -> dict[str, Any]:
    """``ckpt`` with its network metadata recording ``sigma`` (0: none), read back through the metadata's checks."""
    if not sigma >= 0:
        raise CheckpointError(f"{source}: --long-lead-smoothing must be >= 0 pixels per step, got {sigma}")
    meta = CheckpointMetadata.from_checkpoint_dict(ckpt)
    network = dataclasses.replace(meta.network, long_lead_smoothing=sigma or None)
    updated = {**ckpt, CHECKPOINT_KEY: dataclasses.replace(meta, network=network).to_dict()}
    CheckpointMetadata.from_checkpoint_dict(updated)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="checkpoint written by `meteovision fit`")
    parser.add_argument("name", choices=PACKAGED_CHECKPOINTS, help="the packaged name it ships under")
    parser.add_argument("--long-lead-smoothing", type=float, default=None, metavar="PX_PER_STEP",
                        help="record this smoothing of the leads past the trained ones (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ckpt = load_checkpoint(args.source)
        if args.long_lead_smoothing is not None:
            ckpt = with_long_lead_smoothing(ckpt, args.long_lead_smoothing, str(args.source))
        target = write_packaged_checkpoint(ckpt, ROOT / "pretrained" / f"{args.name}.ckpt", str(args.source))
    except CheckpointError as err:
        print(f"package_checkpoint: {err}", file=sys.stderr)
        return 2
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("net.") and v.is_floating_point())
    print(f"{target}\nsha256 {file_sha256(target)}\nsize {target.stat().st_size / 1e6:.2f} MB\n"
          f"floating values (parameters and batch-norm statistics) {params / 1e6:.2f} M\nepoch {ckpt.get('epoch')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
