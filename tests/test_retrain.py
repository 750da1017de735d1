"""Retraining and promotion: the versioned model folder, its atomic ``current`` pointer, rollback, model cards.

The end-to-end steps train the tiny segmentation config (``tests/configs/tiny_seg.yaml``) for one
short epoch; such a model's skill is arbitrary, so the "current" model a candidate must beat is
made deterministic: the first model with its output bias set to -1e4 predicts no event anywhere,
hence a CSI of exactly 0, which any candidate with a hit beats in ``max`` mode and loses to in
``min`` mode.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from meteovision.datasets.synthetic import SampleSettings, generate_sample_data
from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata
from meteovision.pipeline.cli import main
from meteovision.workflows.model_registry import ModelRegistry, ModelVersion, RegistryError
from meteovision.workflows.retrain import RetrainResult, RetrainSettings, is_better, retrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = Path(__file__).resolve().parent / "configs" / "tiny_seg.yaml"
SAMPLE = SampleSettings(size=32, events=5, frames_per_event=8)
METRIC = "cont/csi@0.5"


def fake_checkpoint(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- registry alone (no training)


def test_versions_pointer_history_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert registry.current() is None and registry.versions() == []
    v1 = registry.add_version(fake_checkpoint(tmp_path / "a.ckpt", "A"), {"metric": METRIC}, "# card A\n")
    assert v1.name == "v0001" and registry.current() is None  # stored, not yet current
    registry.promote(v1)
    v2 = registry.add_version(fake_checkpoint(tmp_path / "b.ckpt", "B"), {"metric": METRIC}, "# card B\n")
    registry.promote(v2)
    root = registry.root
    assert os.readlink(root / "current") == "v0002"  # relative: the folder can move as a whole
    assert (root / "current" / "model.ckpt").read_text() == "B"
    assert (root / "v0001" / "MODEL_CARD.md").read_text() == "# card A\n"
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"]
    assert [(e["event"], e["version"], e["previous"]) for e in registry.history()] == [
        ("promote", "v0001", None), ("promote", "v0002", "v0001")]
    assert registry.rollback() == ModelVersion(root / "v0001")
    assert (root / "current" / "model.ckpt").read_text() == "A"
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback()
    assert registry.current() == ModelVersion(root / "v0001")  # the refused rollback changed nothing
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_rollback_follows_the_promotion_stack(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    versions = [registry.add_version(fake_checkpoint(tmp_path / f"{c}.ckpt", c), {}, "") for c in "ABC"]
    registry.promote(versions[0])
    registry.promote(versions[1])
    assert registry.rollback().name == "v0001"
    registry.promote(versions[2])  # stack v0001, v0003: v0002 was rolled back
    assert registry.rollback().name == "v0001"


def test_current_is_never_missing_while_it_is_switched(tmp_path: Path) -> None:
    """os.replace of a temporary symlink: a reader resolving current/model.ckpt always finds a complete file."""
    registry = ModelRegistry(tmp_path)
    v1 = registry.add_version(fake_checkpoint(tmp_path / "a.ckpt", "A"), {}, "")
    v2 = registry.add_version(fake_checkpoint(tmp_path / "b.ckpt", "B"), {}, "")
    registry.promote(v1)
    stop = threading.Event()
    seen: list[str] = []
    failures: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append((tmp_path / "current" / "model.ckpt").read_text())
            except OSError as err:
                failures.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            registry._point_to(v2 if i % 2 == 0 else v1)  # the switch alone, without the history
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert set(seen) <= {"A", "B"} and seen
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".current")) == []


def test_a_current_that_is_not_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "current").mkdir()
    with pytest.raises(RegistryError, match="current: exists but is not a symlink"):
        ModelRegistry(tmp_path).current()


def test_is_better_is_strict_and_follows_the_mode() -> None:
    assert is_better(0.5, 0.4, "max") and not is_better(0.4, 0.5, "max") and not is_better(0.5, 0.5, "max")
    assert is_better(1.2, 1.5, "min") and not is_better(1.5, 1.2, "min") and not is_better(1.5, 1.5, "min")
    assert is_better(0.1, None, "max") and is_better(0.1, float("nan"), "min")
    assert not is_better(float("nan"), 0.1, "max") and not is_better(float("nan"), None, "max")


# ----------------------------------------------------------------------------- end to end (tiny training)


@dataclass(frozen=True)
class Flow:
    root: Path
    models: Path
    first: RetrainResult
    bad: ModelVersion
    better: RetrainResult
    worse_code: int


def silenced(checkpoint: Path, out: Path) -> Path:
    """``checkpoint`` whose output bias is -1e4: it predicts no event anywhere (CSI exactly 0)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    key = [k for k, v in ckpt["state_dict"].items() if k.startswith("net.") and k.endswith("bias")
           and tuple(v.shape) == (1,)][-1]
    ckpt["state_dict"][key] = torch.full((1,), -1e4)
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Flow:
    root = tmp_path_factory.mktemp("retrain")
    d0, d1, models = root / "d0", root / "d1", root / "models"
    generate_sample_data("bow_echo", d0, seed=0, settings=SAMPLE)
    generate_sample_data("bow_echo", d1, seed=1, settings=SAMPLE)
    torch.set_num_threads(1)
    first = retrain(RetrainSettings(config=CONFIG, data=d0, models=models))
    registry = ModelRegistry(models)
    assert first.version is not None
    bad = registry.add_version(silenced(first.version.checkpoint, root / "bad.ckpt"), {"metric": METRIC}, "# bad\n")
    registry.promote(bad)  # an operator promoted a broken model by hand
    better = retrain(RetrainSettings(config=CONFIG, data=d1, models=models, init_from=first.version.checkpoint))
    assert registry.rollback() == bad  # back to the broken one, to try a candidate that is worse in min mode
    code = main(["retrain", "--config", str(CONFIG), "--data", str(d0), "--models", str(models),
                 "--mode", "min", "--workdir", str(root / "worse_run")])
    return Flow(root, models, first, bad, better, code)


def test_first_candidate_is_promoted_with_card_and_metrics(flow: Flow) -> None:
    first = flow.first
    assert first.promoted and first.current_score is None and first.metric == METRIC and first.mode == "max"
    assert first.version is not None and first.version.name == "v0001"
    metrics = json.loads((flow.models / "v0001" / "metrics.json").read_text())
    assert metrics["metric"] == METRIC and metrics["candidate"][METRIC] == pytest.approx(first.candidate_score)
    assert metrics["baseline_name"] == "bow_echo_rule" and METRIC in metrics["baseline"]
    assert metrics["previous"] is None and metrics["fine_tuned_from"] is None
    assert (flow.models / "v0001" / "model.ckpt").read_bytes() == first.candidate_checkpoint.read_bytes()
    ckpt = torch.load(first.candidate_checkpoint, map_location="cpu", weights_only=True)
    test_split = CheckpointMetadata.from_checkpoint_dict(ckpt).data_description["splits"]["test"]
    card = (flow.models / "v0001" / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: bow_echo (halfunet)\n")
    for section in ("## Data", "## Metrics (test split)", "## Intended use", "## Limits"):
        assert section in card
    assert f"| test | {test_split['start']} | {test_split['end']} | 8 | 8 |" in card
    row = f"| **{METRIC}** | {first.candidate_score:.4g} | {metrics['baseline'][METRIC]:.4g} | - |"
    assert row in card
    assert "| metric | this model | bow_echo_rule | previous model (none) |" in card
    assert f"folder `{flow.root / 'd0'}`" in card


def test_better_candidate_is_promoted_over_the_current_model(flow: Flow) -> None:
    better = flow.better
    assert better.current_score == 0.0  # the silenced model: no hit, no false alarm
    assert better.candidate_score > 0.0 and better.promoted
    assert better.version is not None and better.version.name == "v0003"
    metrics = better.version.metrics()
    assert metrics["previous"]["version"] == "v0002" and metrics["previous"]["scores"][METRIC] == 0.0
    assert metrics["fine_tuned_from"] == str(flow.models / "v0001" / "model.ckpt")
    assert "fine-tuned from" in better.version.card.read_text()
    assert "| previous model v0002 |" in better.version.card.read_text()


def test_worse_candidate_is_refused_and_current_is_unchanged(flow: Flow) -> None:
    assert flow.worse_code == 3
    registry = ModelRegistry(flow.models)
    assert registry.current() == flow.bad  # still v0002 after the refusal
    assert [v.name for v in registry.versions()] == ["v0001", "v0002", "v0003"]  # no new version
    report = json.loads(next((flow.root / "worse_run" / "test_current").glob("logs/version_*/test_metrics.json"))
                        .read_text())
    assert report["model_scores"][METRIC] == 0.0


def test_models_cli_lists_and_rolls_back(flow: Flow, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--models", str(flow.models)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["v0001", "*", "v0003"]
    assert listed[1].startswith("* v0002")
    # the stack is v0001, v0002 (v0003 was rolled back): one command goes back to v0001
    assert main(["models", "rollback", "--models", str(flow.models)]) == 0
    assert capsys.readouterr().out.startswith("current -> v0001")
    assert os.readlink(flow.models / "current") == "v0001"
    assert main(["models", "rollback", "--models", str(flow.models)]) == 2
    assert "no earlier version to roll back to" in capsys.readouterr().err
