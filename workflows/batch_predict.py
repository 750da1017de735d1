"""``meteovision batch-predict``: the predict stage over many files, spread over GPUs and nodes.

Lightning runs the ranks (``Trainer(strategy="ddp", devices=N, num_nodes=M).predict``); each
rank loads the checkpoint once and runs :func:`~meteovision.pipeline.inference.predict.predict_file` (or,
for nowcasts, the window ending at each file) on its share of the inputs. Products are written
atomically by the predict stage, so ranks never see each other's partial files.

Every input is processed **exactly once**: Lightning's ``DistributedSampler`` pads the last round
with duplicates when the input count is not a multiple of the world size, so it is switched off
(``use_distributed_sampler=False``) and :class:`ShardSampler` gives rank ``r`` the inputs
``r, r + W, r + 2W, ...`` (disjoint, no padding, no gap). Each rank records its outcomes, one JSON
line per input, in ``<log-dir>/<run>/rank-NNNNN.jsonl``; after a barrier rank 0 checks that the
records cover every input once, writes ``summary.json`` and prints the summary.

Examples::

    meteovision batch-predict --checkpoint bow.ckpt --input 'radar/*.h5' --output products/ --devices 2
    srun meteovision batch-predict ... --accelerator gpu --devices 4 --num-nodes 2   (workflows/slurm)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch.utils.data import Dataset, Sampler

from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.checkpoints.packaged import resolve_checkpoint
from meteovision.pipeline.exit_codes import ExitCode, epilog
from meteovision.pipeline.inference.cli import PRECISION_HELP
from meteovision.pipeline.inference.outputs import OUTPUT_FORMATS
from meteovision.pipeline.inference.predict import PRECISIONS, Status
from meteovision.pipeline.inference.write_errors import OutputWriteError

if TYPE_CHECKING:
    from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, InferenceModel
    from meteovision.pipeline.inference.predict import PredictReport, PredictSettings

log = logging.getLogger(__name__)

__all__ = [
    "BatchPredictError",
    "BatchSummary",
    "ShardSampler",
    "add_arguments",
    "predict_unit",
    "read_records",
    "run",
    "run_batch",
    "shard",
]

RECORD_GLOB = "rank-*.jsonl"
SUPPORTED_KINDS = (TaskKind.SEGMENTATION, TaskKind.REGRESSION, TaskKind.NOWCAST)


class BatchPredictError(MeteovisionError):
    """The batch prediction cannot run as asked, or its ranks did not cover the inputs exactly once."""


def shard(size: int, rank: int, world_size: int) -> range:
    """Indices of rank ``rank`` among ``world_size``: strided, disjoint, covering ``range(size)``, no padding."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise BatchPredictError(f"rank {rank} outside a world of {world_size} process(es)")
    return range(rank, size, world_size)


class ShardSampler(Sampler[int]):
    """This rank's inputs (see :func:`shard`); used instead of Lightning's padding ``DistributedSampler``."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = shard(size, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _unit_kind(model: InferenceModel) -> TaskKind:
    return _check_kind(model.meta, model.path)


def _check_kind(meta: CheckpointMetadata, path: Path) -> TaskKind:
    kind = meta.task_kind
    if kind not in SUPPORTED_KINDS:
        raise BatchPredictError(
            f"{path}: batch-predict runs {', '.join(SUPPORTED_KINDS)} checkpoints, not {kind.value!r} "
            "(classification writes one table for all images: use `meteovision predict`)"
        )
    return kind


def predict_unit(
    model: InferenceModel, files: Sequence[Path], index: int, settings: PredictSettings
) -> PredictReport:
    """The unit of work of input ``files[index]``: its analyses, or the nowcast window ending at it.

    A nowcast unit reads the file and the ``num_input_frames - 1`` files before it (the inputs are
    sorted by name, hence by time) and makes the one window ending at the file's time; a file
    without enough history before it gives no window (an empty report), one whose window has a gap
    a failure (as in :func:`~meteovision.pipeline.inference.predict.predict_sequence`).
    """
    from meteovision.pipeline.inference.predict import predict_file, predict_sequence

    if _unit_kind(model) is not TaskKind.NOWCAST:
        return predict_file(model, files[index], settings)
    n_in = model.meta.num_input_frames
    window = files[max(0, index - n_in + 1): index + 1]
    return predict_sequence(model, window, replace(settings, latest_only=True))


@dataclass(frozen=True)
class BatchSummary:
    """Outcomes of all ranks: per input, the rank that took it and what became of it."""

    run_dir: Path
    world_size: int
    records: tuple[dict[str, Any], ...]

    def count(self, status: Status) -> int:
        return sum(1 for r in self.records for o in r["outcomes"] if o["status"] == status)

    @property
    def exit_code(self) -> ExitCode:
        """As ``meteovision predict``: 0 all written, 1 some failed, 3 nothing written nor failed, 5 all failed."""
        if self.count(Status.FAILED):
            done = self.count(Status.WRITTEN) + self.count(Status.SKIPPED)
            return ExitCode.PARTIAL_FAILURE if done else ExitCode.ALL_FAILED
        return ExitCode.OK if self.count(Status.WRITTEN) else ExitCode.NOTHING_TO_DO

    def line(self) -> str:
        per_rank = {rank: sum(1 for r in self.records if r["rank"] == rank) for rank in range(self.world_size)}
        code = self.exit_code
        return (f"batch-predict: {len(self.records)} input(s) on {self.world_size} rank(s) "
                f"({', '.join(f'rank {k}: {v}' for k, v in per_rank.items())}); "
                f"{self.count(Status.WRITTEN)} written, {self.count(Status.SKIPPED)} skipped (output exists), "
                f"{self.count(Status.FAILED)} failed; exit code {int(code)} ({code.description})")


def read_records(run_dir: Path, inputs: Sequence[Path]) -> tuple[dict[str, Any], ...]:
    """Every rank's records of ``run_dir``, checked to cover each of ``inputs`` exactly once."""
    records: list[dict[str, Any]] = []
    for path in sorted(run_dir.glob(RECORD_GLOB)):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BatchPredictError(f"{path}: line {n} is not JSON: {err}") from err
    taken = [int(r["index"]) for r in records]
    duplicated = sorted({i for i in taken if taken.count(i) > 1})
    missing = sorted(set(range(len(inputs))) - set(taken))
    if duplicated or missing:
        raise BatchPredictError(
            f"{run_dir}: the ranks did not process each input once: "
            f"duplicated {[str(inputs[i]) for i in duplicated]}, missing {[str(inputs[i]) for i in missing]}"
        )
    return tuple(sorted(records, key=lambda r: int(r["index"])))


def _new_run_name() -> str:
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _identity(batch: list[int]) -> list[int]:
    return batch


def _lightning_classes() -> tuple[type, type]:
    """The LightningModule and LightningDataModule of a batch run (built lazily: Lightning is heavy)."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    class InputFiles(L.LightningDataModule):
        """Input indices, each rank's share drawn by :class:`ShardSampler` (built once the ranks exist)."""

        def __init__(self, size: int) -> None:
            super().__init__()
            self.size = size

        def predict_dataloader(self) -> DataLoader[int]:
            trainer = self.trainer
            assert trainer is not None  # Lightning attaches itself before asking for loaders
            sampler = ShardSampler(self.size, trainer.global_rank, trainer.world_size)
            indices = cast("Dataset[int]", list(range(self.size)))  # indexable, as a Dataset
            return DataLoader(indices, batch_size=1, sampler=sampler, num_workers=0,
                              collate_fn=_identity)

    class PredictStage(L.LightningModule):
        """The predict stage as a LightningModule: one input file per step, records as JSON lines."""

        def __init__(self, checkpoint: Path, files: Sequence[Path], settings: PredictSettings,
                     log_dir: Path) -> None:
            super().__init__()
            self.checkpoint = checkpoint
            self.files = list(files)
            self.settings = settings
            self.log_dir = log_dir
            self.run_dir: Path | None = None
            self._model: InferenceModel | None = None

        def setup(self, stage: str) -> None:
            from meteovision.pipeline.checkpoints.loading import load_inference_model

            name = self.trainer.strategy.broadcast(_new_run_name(), src=0)  # one run folder for all ranks
            self.run_dir = self.log_dir / str(name)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.record_path.write_text("")
            device = self.trainer.strategy.root_device
            self.settings = replace(self.settings, device=str(device) if device.type == "cuda" else "cpu")
            self._model = load_inference_model(self.checkpoint)
            _unit_kind(self._model)

        @property
        def record_path(self) -> Path:
            assert self.run_dir is not None
            return self.run_dir / f"rank-{self.trainer.global_rank:05d}.jsonl"

        def predict_step(self, batch: list[int], batch_idx: int) -> None:
            assert self._model is not None
            for index in batch:
                report = predict_unit(self._model, self.files, index, self.settings)
                record = {
                    "index": index,
                    "input": str(self.files[index]),
                    "rank": self.trainer.global_rank,
                    "host": os.uname().nodename,
                    "outcomes": [{"unit": o.unit, "status": o.status, "outputs": [str(p) for p in o.outputs],
                                  "reason": o.reason} for o in report.outcomes],
                }
                with self.record_path.open("a") as handle:  # one line per input, flushed as it goes
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                log.info("rank %d: %s: %s", self.trainer.global_rank, self.files[index].name, report.summary())

    return PredictStage, InputFiles


def run_batch(
    checkpoint: Path,
    files: Sequence[Path],
    settings: PredictSettings,
    *,
    log_dir: Path,
    accelerator: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
) -> BatchSummary | None:
    """Run the predict stage over ``files`` on ``devices`` x ``num_nodes`` ranks.

    Returns the summary on rank 0 (after every rank finished), None on the other ranks.
    """
    import lightning.pytorch as L

    if devices < 1 or num_nodes < 1:
        raise BatchPredictError(f"devices ({devices}) and num-nodes ({num_nodes}) must be >= 1")
    if not files:
        raise BatchPredictError("no input file to process")
    from meteovision.pipeline.checkpoints.loading import load_metadata

    _check_kind(load_metadata(checkpoint), checkpoint)  # refused before any rank starts
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    stage_cls, data_cls = _lightning_classes()
    stage = stage_cls(checkpoint, files, settings, log_dir)
    distributed = devices * num_nodes > 1
    trainer: L.Trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy="ddp" if distributed else "auto",
        use_distributed_sampler=False,  # ShardSampler: no padding duplicates
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=log_dir,
    )
    trainer.predict(stage, datamodule=data_cls(len(files)), return_predictions=False)
    trainer.strategy.barrier("batch_predict_done")  # every rank's records are complete
    if not trainer.is_global_zero:
        return None
    run_dir = stage.run_dir
    summary = BatchSummary(run_dir, trainer.world_size, read_records(run_dir, files))
    doc = {"checkpoint": str(checkpoint), "world_size": summary.world_size, "inputs": len(files),
           "written": summary.count(Status.WRITTEN), "skipped": summary.count(Status.SKIPPED),
           "failed": summary.count(Status.FAILED), "exit_code": int(summary.exit_code)}
    tmp = run_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, run_dir / "summary.json")
    return summary


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = epilog()
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `meteovision fit`")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH|GLOB|DIR",
                        help="input files: paths, folders (their files) or quoted glob patterns")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the products")
    parser.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes) per node")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (under SLURM: the job's node count)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: one rank per GPU, bf16 autocast")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="per-rank records and summary (default: OUTPUT/.batch_predict)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="netcdf", help="product format")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    parser.add_argument("--quicklook", action="store_true", help="also write PNG quicklooks")
    parser.add_argument("--tile-size", type=int, default=None, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=None, help="context margin per tile side in pixels")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--threshold", type=float, default=0.5, help="segmentation: probability for the mask")
    parser.add_argument("--institution", default="meteovision", help="the products' institution attribute")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)


def run(args: argparse.Namespace) -> int:
    """Run the batch prediction; rank 0 prints the summary. Returns the exit code."""
    from meteovision.pipeline.inference.inputs import expand_inputs
    from meteovision.pipeline.inference.predict import PredictSettings

    try:
        settings = PredictSettings(
            output_dir=args.output, format=args.format, overwrite=args.overwrite, quicklook=args.quicklook,
            tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
            threshold=args.threshold, institution=args.institution, precision=args.precision,
        )
        if not resolve_checkpoint(args.checkpoint).is_file():
            raise BatchPredictError(f"{args.checkpoint}: no such checkpoint file (nor a packaged checkpoint)")
        files, missing = expand_inputs(args.input)
        if missing:
            raise BatchPredictError(f"no such input: {', '.join(str(p) for p in missing)}")
        files = sorted(files)  # every rank lists the same inputs in the same order
        summary = run_batch(args.checkpoint, files, settings, log_dir=args.log_dir or args.output / ".batch_predict",
                            accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes)
    except OutputWriteError as err:  # before MeteovisionError: the output's fault, not the configuration's
        print(f"meteovision batch-predict: error: {err}", file=sys.stderr)
        return int(ExitCode.OUTPUT_UNWRITABLE)
    except MeteovisionError as err:
        print(f"meteovision batch-predict: error: {err}", file=sys.stderr)
        return int(ExitCode.USAGE_ERROR)
    if summary is None:
        return int(ExitCode.OK)
    for record in summary.records:
        for outcome in record["outcomes"]:
            if outcome["status"] == Status.FAILED:
                print(f"FAILED {outcome['unit']} (rank {record['rank']}): {outcome['reason']}")
    print(summary.line())
    print(f"records: {summary.run_dir}")
    return int(summary.exit_code)
