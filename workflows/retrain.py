"""``meteovision retrain``: train (or fine-tune) on new data, score it against the current model, promote if better.

1. **Train** through the LightningCLI path (:func:`meteovision.pipeline.training.cli.build_cli`) with
   the config's data folder replaced by the new one; ``--from CKPT`` fine-tunes instead: the
   network starts from CKPT's weights (same architecture, checked) and the data are normalised with
   CKPT's statistics, so the weights see inputs on the scale they were trained on.
2. **Evaluate** the candidate and the current model (``DIR/current/model.ckpt``) on the same
   held-out test split of the new data (the ``test`` stage, each checkpoint with its own
   normalisation statistics; the split depends on the data only), reading ``test_metrics.json``.
3. **Promote** only when the candidate is strictly better on the metric (default per task kind,
   :data:`DEFAULT_METRICS`): a new version ``DIR/vNNNN`` with checkpoint, metrics and model card,
   and ``current`` switched atomically (:mod:`~meteovision.workflows.model_registry`).

Exit codes: 0 promoted, 3 not promoted (the current model stays), 2 error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import secrets
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from meteovision.core.applications import APPLICATIONS
from meteovision.core.task_kinds import TaskKind
from meteovision.datasets.errors import MeteovisionError
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.workflows.model_registry import ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_METRICS", "RetrainError", "RetrainResult", "RetrainSettings", "add_arguments", "is_better",
           "retrain", "run"]

Mode = Literal["max", "min"]
#: metric key of test_metrics.json ``model_scores`` and its direction, per task kind, for a checkpoint of an
#: application outside the table; the table's ``headline_metric`` comes first (meteovision.core.applications)
DEFAULT_METRICS: dict[TaskKind, tuple[str, Mode]] = {
    TaskKind.SEGMENTATION: ("cont/csi@0.5", "max"),
    TaskKind.REGRESSION: ("reg/rmse", "min"),
    TaskKind.NOWCAST: ("lead030_cont/csi@1", "max"),
    TaskKind.CLASSIFICATION: ("cls/f1_macro", "max"),
}


class RetrainError(MeteovisionError):
    """Retraining cannot run or compare as asked (missing data, unknown metric, mismatched checkpoint)."""


@dataclass(frozen=True)
class RetrainSettings:
    """What to train on, where the versioned models live, and how candidates are judged."""

    config: Path
    data: Path
    models: Path
    init_from: Path | None = None
    metric: str | None = None
    mode: Mode | None = None
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if not Path(self.data).is_dir():
            raise RetrainError(f"{self.data}: the new data folder does not exist")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise RetrainError(f"{self.init_from}: no such checkpoint to fine-tune from")
        if self.mode not in (None, "max", "min"):
            raise RetrainError(f"mode must be max or min, got {self.mode!r}")


@dataclass(frozen=True)
class RetrainResult:
    """The decision: scores of both models on the metric, and the new version when promoted."""

    promoted: bool
    metric: str
    mode: Mode
    candidate_score: float
    current_score: float | None
    candidate_checkpoint: Path
    version: ModelVersion | None
    reason: str


def is_better(candidate: float, current: float | None, mode: Mode) -> bool:
    """Strictly better in ``mode``; any finite score beats no current model or an undefined (NaN) score."""
    if not math.isfinite(candidate):
        return False
    if current is None or not math.isfinite(current):
        return True
    return candidate > current if mode == "max" else candidate < current


def _logger(root: Path) -> str:
    return json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(root), "name": "logs"}})


def _common(settings: RetrainSettings, root: Path) -> list[str]:
    from meteovision.pipeline.training.cli import resolve_config_path

    return ["--config", resolve_config_path(str(settings.config)),
            "--data.init_args.data_dir", str(settings.data),
            "--trainer.default_root_dir", str(root), "--trainer.logger", _logger(root)]


def checkpoint_stats_file(checkpoint: Path, out: Path) -> Path:
    """The checkpoint's joint input (+ target) statistics as a ``normalization_path`` JSON."""
    from meteovision.pipeline.checkpoints.loading import load_metadata

    meta = load_metadata(checkpoint)
    stats = [s for s in (meta.normalization, meta.target_normalization) if s is not None]
    if not stats:
        raise RetrainError(f"{checkpoint}: records no normalisation statistics")
    return stats[0].union(*stats[1:]).save_json(out)


def _initial_weights_callback(checkpoint: Path) -> Any:
    """A callback loading ``checkpoint``'s network weights when fitting starts (fine-tuning)."""
    import lightning.pytorch as L

    from meteovision.pipeline.checkpoints.loading import CheckpointMetadata, load_checkpoint

    class InitialWeights(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            ckpt = load_checkpoint(checkpoint)
            net = CheckpointMetadata.from_checkpoint_dict(ckpt, str(checkpoint)).network
            mine = (getattr(pl_module, "model_name", None), getattr(pl_module, "model_settings", None))
            if (net.model_name, dict(net.model_settings)) != mine:
                raise RetrainError(f"{checkpoint}: model {net.model_name} {dict(net.model_settings)} "
                                   f"differs from the config's {mine[0]} {mine[1]}; fine-tuning needs the same "
                                   "architecture")
            weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
            try:
                result = pl_module.load_state_dict(weights, strict=False)
            except RuntimeError as err:
                raise RetrainError(f"{checkpoint}: weights do not fit the config's network: {err}") from err
            missing = [k for k in result.missing_keys if k.startswith("net.")]
            if missing or result.unexpected_keys:
                raise RetrainError(f"{checkpoint}: weights do not fit the config's network (missing {missing}, "
                                   f"unexpected {result.unexpected_keys})")
            log.info("fine-tuning from %s", checkpoint)

    return InitialWeights()


def _build_cli(argv: list[str]) -> Any:
    """LightningCLI (``run=False``) for ``argv``; its note about ``args`` beside ``sys.argv`` does not apply."""
    from meteovision.pipeline.training.cli import build_cli

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        return build_cli(argv, run=False)


def train_candidate(settings: RetrainSettings, root: Path) -> Path:
    """Fit through LightningCLI on the new data; the best checkpoint (else the last)."""
    argv = _common(settings, root)
    if settings.init_from is not None:
        argv += ["--data.init_args.normalization_path",
                 str(checkpoint_stats_file(settings.init_from, root / "init_normalization.json"))]
    cli = _build_cli(argv)
    if settings.init_from is not None:
        cast(Any, cli.trainer).callbacks.append(_initial_weights_callback(settings.init_from))
    cli.before_fit()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    callback = cli.trainer.checkpoint_callback
    best = Path(callback.best_model_path) if callback is not None and callback.best_model_path else None  # type: ignore[attr-defined]
    if best is not None and best.is_file():
        return best
    last = root / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RetrainError(f"{root}: training wrote no checkpoint")
    return last


def evaluate(settings: RetrainSettings, checkpoint: Path, root: Path) -> dict[str, Any]:
    """``test_metrics.json`` of ``checkpoint`` on the new data's test split, with its own statistics."""
    root.mkdir(parents=True, exist_ok=True)
    stats = checkpoint_stats_file(checkpoint, root / "normalization.json")
    cli = _build_cli([*_common(settings, root), "--data.init_args.normalization_path", str(stats)])
    cli.before_test()
    try:
        with warnings.catch_warnings():  # the training run's checkpoint folder is irrelevant to a test
            warnings.filterwarnings("ignore", message="The dirpath has changed", category=UserWarning)
            cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoint))
    except RuntimeError as err:  # a state dict of another architecture
        raise RetrainError(f"{checkpoint}: cannot be tested with the config's model: {err}") from err
    path = Path(cli.trainer.log_dir or root) / "test_metrics.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise RetrainError(f"{path}: the test wrote no readable report: {err}") from err


def _score(report: dict[str, Any], metric: str, what: str) -> float:
    scores = report.get("model_scores", {})
    if metric not in scores:
        raise RetrainError(f"metric {metric!r} is not among the {what}'s test scores: {sorted(scores)}")
    value = scores[metric]
    return float("nan") if value is None else float(value)


def _headline_metric(application: str | None) -> tuple[str, Mode] | None:
    """The application table's headline metric of the checkpoint's application (None: not in the table)."""
    if not application or application not in APPLICATIONS:
        return None
    headline = APPLICATIONS[application].headline_metric
    return headline.key, "max" if headline.higher_is_better else "min"


INTENDED_USE = {
    TaskKind.SEGMENTATION: "Detecting the target feature ({targets}) on {inputs} fields, as a probability and a mask, "
                    "to draw forecasters' attention; not a warning on its own.",
    TaskKind.REGRESSION: "Estimating {targets} from {inputs} where no direct measurement is available.",
    TaskKind.NOWCAST: "Extrapolating {inputs} over the next {lead} (nowcasting), as guidance beside the observations.",
    TaskKind.CLASSIFICATION: "Classifying images ({targets}) to support observations; not a replacement for them.",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def model_card(meta: CheckpointMetadata, metrics: dict[str, Any], report: dict[str, Any]) -> str:
    """The Markdown model card of a promoted candidate: data, period, metrics beside the baseline, use, limits."""
    data = meta.data_description  # the datamodule's own description, shown as written
    kind = meta.task_kind
    inputs = ", ".join(f"{n} ({u})" for n, u in zip(meta.channel_names, meta.channel_units, strict=False)) or "-"
    targets = ", ".join(meta.target_names or meta.class_names) or "-"
    n_out = meta.num_output_frames or 0
    step = meta.time_step_minutes or 0
    lead = f"{float(n_out) * float(step):g} min" if n_out and step else "the trained lead times"
    previous = metrics.get("previous") or {}
    source = metrics.get("fine_tuned_from")
    origin = f"fine-tuned from {source}" if source else "trained from scratch"
    split_mode = (data.get("split") or {}).get("mode", "-")
    lines = [
        f"# Model card: {meta.application} ({meta.model_name})",
        "",
        f"- Task: {kind.value}; network `{meta.model_name}` {json.dumps(dict(meta.network.model_settings))}, "
        f"{meta.in_channels} input channel(s), {meta.out_channels} output channel(s)",
        f"- Inputs: {inputs}; frames per sample: {meta.num_input_frames}",
        f"- Targets: {targets}",
        f"- Promoted: {metrics.get('time')}; {origin}",
        f"- Decision: `{metrics.get('metric')}` ({metrics.get('mode')} is better) on the test split of "
        f"`{metrics.get('evaluated_on')}`",
        "",
        "## Data",
        "",
        f"- Application: {data.get('app', meta.application)}; folder `{data.get('data_dir', '-')}`; "
        f"seed {_fmt(data.get('seed'))}; created by {_fmt(data.get('created_by'))}",
        f"- Time step: {_fmt(data.get('time_step_minutes'))} min; split by `{split_mode}`",
        "",
        "| split | period start | period end | frames | samples |",
        "|---|---|---|---|---|",
    ]
    for name, part in (data.get("splits") or {}).items():
        lines.append(f"| {name} | {_fmt(part.get('start'))} | {_fmt(part.get('end'))} | {_fmt(part.get('frames'))} "
                     f"| {_fmt(part.get('samples'))} |")
    baseline = report.get("baseline") or "baseline"
    lines += [
        "",
        "## Metrics (test split)",
        "",
        f"| metric | this model | {baseline} | previous model {previous.get('version', '(none)')} |",
        "|---|---|---|---|",
    ]
    base_scores = metrics.get("baseline") or {}
    prev_scores = previous.get("scores") or {}
    for key, value in sorted((metrics.get("candidate") or {}).items()):
        mark = f"**{key}**" if key == metrics.get("metric") else key
        lines.append(f"| {mark} | {_fmt(value)} | {_fmt(base_scores.get(key))} | {_fmt(prev_scores.get(key))} |")
    use = INTENDED_USE.get(kind, "As trained; see the metrics.").format(inputs=inputs, targets=targets, lead=lead)
    test = (data.get("splits") or {}).get("test") or {}
    train = (data.get("splits") or {}).get("train") or {}
    lines += [
        "",
        "## Intended use",
        "",
        use,
        "",
        "## Limits",
        "",
        f"- Trained on {_fmt(train.get('start'))} to {_fmt(train.get('end'))} only: other seasons, regions, "
        "sensors or processing chains were not seen and may degrade it.",
        f"- Scored on {_fmt(test.get('frames'))} test frame(s) ({_fmt(test.get('start'))} to {_fmt(test.get('end'))}); "
        "scores on so few cases are uncertain.",
        f"- Inputs must have the channels and units above and grid spacing {_fmt(meta.grid_spacing_m)} m; "
        "the predict stage refuses other inputs.",
        "- Check the baseline column: a model that does not beat it should not be used.",
        "",
    ]
    return "\n".join(lines)


def retrain(settings: RetrainSettings) -> RetrainResult:
    """Train, evaluate both models on the same test split, promote the candidate if strictly better."""
    registry = ModelRegistry(settings.models)
    current = registry.current()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = settings.workdir or registry.root / ".retrain" / f"run-{stamp}-{secrets.token_hex(3)}"
    candidate = train_candidate(settings, work / "train")
    from meteovision.pipeline.checkpoints.loading import load_metadata

    candidate_meta = load_metadata(candidate)
    kind = candidate_meta.task_kind
    default = _headline_metric(candidate_meta.application) or DEFAULT_METRICS.get(kind)
    metric, mode = default if default is not None else (None, None)
    metric = settings.metric or metric
    mode = settings.mode or mode or "max"
    if metric is None:
        raise RetrainError(f"{candidate}: no default metric for task kind {kind.value!r}; give --metric")
    cand_report = evaluate(settings, candidate, work / "test_candidate")
    cand_score = _score(cand_report, metric, "candidate")
    cur_report: dict[str, Any] | None = None
    cur_score: float | None = None
    if current is not None:
        cur_report = evaluate(settings, current.checkpoint, work / "test_current")
        cur_score = _score(cur_report, metric, f"current model {current.name}")
    better = is_better(cand_score, cur_score, mode)
    versus = f"current {current.name} {cur_score:.6g}" if current is not None and cur_score is not None \
        else "no current model"
    if not better:
        reason = f"candidate {metric} = {cand_score:.6g} is not better ({mode}) than {versus}: not promoted"
        log.warning(reason)
        return RetrainResult(False, metric, mode, cand_score, cur_score, candidate, None, reason)
    metrics = {
        "metric": metric, "mode": mode, "candidate": cand_report.get("model_scores", {}),
        "baseline": cand_report.get("baseline_scores", {}), "baseline_name": cand_report.get("baseline"),
        "previous": None if current is None or cur_report is None else
        {"version": current.name, "scores": cur_report.get("model_scores", {})},
        "evaluated_on": str(settings.data), "fine_tuned_from": str(settings.init_from) if settings.init_from else None,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card = model_card(candidate_meta, metrics, cand_report)
    version = registry.add_version(candidate, metrics, card)
    registry.promote(version, metric=metric, score=cand_score, previous_score=cur_score)
    reason = f"candidate {metric} = {cand_score:.6g} beats {versus} ({mode}): promoted as {version.name}"
    log.info(reason)
    return RetrainResult(True, metric, mode, cand_score, cur_score, candidate, version, reason)


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config (path or application name)")
    parser.add_argument("--data", required=True, type=Path, metavar="NEW_DIR", help="the new data folder")
    parser.add_argument("--from", dest="init_from", type=Path, default=None, metavar="CKPT",
                        help="fine-tune from this checkpoint (same architecture) instead of training from scratch")
    parser.add_argument("--models", required=True, type=Path, metavar="DIR", help="the versioned model folder")
    parser.add_argument("--metric", default=None,
                        help="test score deciding promotion (default per task kind, e.g. cont/csi@0.5)")
    parser.add_argument("--mode", choices=("max", "min"), default=None, help="whether higher or lower is better")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="training and test runs (default: DIR/.retrain/run-<UTC>-<id>)")


def run(args: argparse.Namespace) -> int:
    """Retrain and decide; 0 promoted, 3 kept the current model, 2 error."""
    from meteovision.pipeline.training.cli import package_error

    try:
        settings = RetrainSettings(config=Path(args.config), data=args.data.resolve(), models=args.models,
                                   init_from=args.init_from, metric=args.metric, mode=args.mode,
                                   workdir=args.workdir)
        result = retrain(settings)
    except Exception as err:  # jsonargparse wraps errors of ours raised while it builds the classes
        ours = package_error(err)
        if ours is None:
            raise
        print(f"meteovision retrain: error: {ours}", file=sys.stderr)
        return int(ExitCode.USAGE_ERROR)
    print(result.reason)
    return int(ExitCode.OK if result.promoted else ExitCode.NOTHING_TO_DO)
