"""``meteovision fit|test`` as a scientist uses them: one YAML, dotted overrides, clear errors, resume.

Every run goes through the console-script entry point (``meteovision.pipeline.cli.main``) in this
process, from a temporary working folder (the tiny configs in ``tests/configs`` use relative paths),
on small synthetic sample data (32 x 32 cells, 5 events of 8 frames).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from meteovision.datasets.datamodules import datamodule_from_config
from meteovision.datasets.readers import open_series
from meteovision.datasets.synthetic import SampleSettings, generate_sample_data
from meteovision.models import build_model
from meteovision.models.errors import ModelSettingsError
from meteovision.pipeline.checkpoints.metadata import CheckpointMetadata
from meteovision.pipeline.cli import main
from meteovision.pipeline.training.cli import RUN_KEY, build_cli, package_error, resolve_config_path
from meteovision.pipeline.training.losses import LossConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).resolve().parent / "configs"
SEG_CONFIG = CONFIGS / "tiny_seg.yaml"
NOWCAST_CONFIG = CONFIGS / "tiny_nowcast.yaml"
#: small sample data: 5 events of 8 frames on a 32 x 32 grid (chronological split: 3 / 1 / 1 events)
SAMPLE = SampleSettings(size=32, events=5, frames_per_event=8)
TRAIN_BATCHES = 2  # limit_train_batches of the tiny configs


# --------------------------------------------------------------------------- helpers


def run_cli(workdir: Path, *argv: str | Path) -> tuple[int, str]:
    """``meteovision ARGV`` run from ``workdir``; returns the exit code and what it printed on stdout."""
    out = io.StringIO()
    with contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def strict_json(path: Path) -> dict[str, Any]:
    """Parse as standard JSON: NaN/Infinity (Python's extension) would fail here."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path}: non-standard JSON constant {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert isinstance(data, dict)
    return data


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def train_loss_steps(rows: list[dict[str, str]]) -> list[tuple[int, int]]:
    """(epoch, step) of every logged training loss."""
    return [(int(r["epoch"]), int(r["step"])) for r in rows if r.get("train/loss")]


def tb_steps(path: Path, tag: str) -> list[int]:
    """Steps of scalar ``tag`` in a TensorBoard event file or folder."""
    acc = EventAccumulator(str(path))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], f"{path}: no scalar {tag}; has {acc.Tags()['scalars']}"
    return [e.step for e in acc.Scalars(tag)]


def contingency_total(scores: dict[str, float], prefix: str, threshold: str) -> float:
    """hits + misses + false alarms + correct negatives: the number of pixels scored."""
    keys = ("hits", "misses", "false_alarms", "correct_negatives")
    return sum(scores[f"{prefix}{k}@{threshold}"] for k in keys)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for app in ("bow_echo", "nowcast_precip"):
        generate_sample_data(app, root / app, seed=0, settings=SAMPLE)
    return root


def valid_test_pixels(config: Path, data_dir: Path, lead: int = 0) -> int:
    """Valid target pixels of the whole test split (channel ``lead``), from the config's datamodule."""
    dm = datamodule_from_config(read_yaml(config)["data"], data_dir=str(data_dir))
    ds = dm.dataset("test")
    return int(sum(int(ds[i]["mask"][lead].sum()) for i in range(len(ds))))  # type: ignore[arg-type]


@dataclass(frozen=True)
class SegRun:
    """``fit`` (1 epoch) then ``test`` of the tiny segmentation config, in ``workdir``."""

    workdir: Path
    data_dir: Path
    fit_code: int
    test_code: int
    test_stdout: str

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> SegRun:
    workdir = tmp_path_factory.mktemp("seg")
    data_dir = data_root / "bow_echo"
    fit_code, _ = run_cli(workdir, "fit", "--config", SEG_CONFIG, "--data.init_args.data_dir", data_dir)
    test_code, out = run_cli(workdir, "test", "--config", SEG_CONFIG, "--data.init_args.data_dir", data_dir,
                             "--ckpt_path", "run/checkpoints/last.ckpt")
    return SegRun(workdir, data_dir, fit_code, test_code, out)


# --------------------------------------------------------------------------- fit: outputs


def test_fit_writes_checkpoint_config_csv_and_tensorboard(seg_run: SegRun) -> None:
    assert seg_run.fit_code == 0
    ckpt = torch.load(seg_run.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0
    assert ckpt["global_step"] == TRAIN_BATCHES
    assert ckpt[RUN_KEY] == {"log_version": 0}
    # CSV and TensorBoard share save_dir/name: both loggers write into the one folder of this run
    fit_dir = seg_run.run_dir / "logs" / "version_0"
    assert (fit_dir / "config.yaml").is_file()
    rows = csv_rows(fit_dir / "metrics.csv")
    assert train_loss_steps(rows) == [(0, 0), (0, 1)]
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 1 and np.isfinite(float(val[0]["val/loss"]))
    events = list(fit_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert tb_steps(events[0], "train/loss") == [0, 1]
    assert tb_steps(events[0], "val/loss") == [1]


def test_saved_config_is_the_resolved_config(seg_run: SegRun) -> None:
    saved = read_yaml(seg_run.run_dir / "logs" / "version_0" / "config.yaml")
    given = read_yaml(SEG_CONFIG)
    assert saved["trainer"]["max_epochs"] == given["trainer"]["max_epochs"] == 1
    assert saved["model"]["class_path"] == "meteovision.pipeline.training.tasks.SegmentationTask"
    assert saved["model"]["init_args"]["model_settings"] == {"num_filters": 8, "depth": 3}
    assert saved["model"]["init_args"]["loss"] == {"name": "bce_dice", "pos_weight": 5.0}
    # the command-line override, not the YAML's relative path
    assert saved["data"]["init_args"]["data_dir"] == str(seg_run.data_dir)
    # resolved: defaults the YAML left out are written too
    assert saved["data"]["init_args"]["split"]["val_fraction"] == 0.15
    assert saved["seed_everything"] == 7


def test_dotted_overrides_reach_the_model_and_the_saved_config(tmp_path: Path, data_root: Path) -> None:
    code, _ = run_cli(
        tmp_path, "fit", "--config", SEG_CONFIG, "--data.init_args.data_dir", data_root / "bow_echo",
        "--model.init_args.model_settings.num_filters", "4", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3",
    )
    assert code == 0
    saved = read_yaml(tmp_path / "run" / "logs" / "version_0" / "config.yaml")
    # a dotted key changes one setting of the mapping and keeps the others
    assert saved["model"]["init_args"]["model_settings"] == {"num_filters": 4, "depth": 3}
    assert saved["trainer"]["limit_train_batches"] == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3  # of the 6 batches of the training split
    assert CheckpointMetadata.from_checkpoint_dict(ckpt).network.model_settings == {"num_filters": 4, "depth": 3}
    weights = {k.removeprefix("net."): tuple(v.shape) for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    four = {k: tuple(v.shape) for k, v in build_model("halfunet", 1, 1, num_filters=4, depth=3).state_dict().items()}
    eight = {k: tuple(v.shape) for k, v in build_model("halfunet", 1, 1, num_filters=8, depth=3).state_dict().items()}
    assert weights == four
    assert weights != eight


def test_config_by_application_name_resolves_to_the_packaged_file() -> None:
    path = Path(resolve_config_path("bow_echo"))
    assert path.name == "bow_echo.yaml" and path.is_file()
    assert read_yaml(path)["model"]["init_args"]["application"] == "bow_echo"
    assert resolve_config_path(str(SEG_CONFIG)) == str(SEG_CONFIG)


# --------------------------------------------------------------------------- fit: errors


def _fit_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> str:
    """stderr of a ``fit`` that jsonargparse refuses (exit status 2 before anything runs)."""
    with pytest.raises(SystemExit) as info:
        run_cli(tmp_path, "fit", "--config", config, *extra)
    assert info.value.code == 2
    assert not (tmp_path / "run").exists()
    return capsys.readouterr().err


def test_unknown_key_on_the_command_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fit_error(tmp_path, capsys, SEG_CONFIG, "--model.init_args.nonexistent", "3")
    assert "Option 'nonexistent' is not accepted" in err


def test_wrong_type_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fit_error(tmp_path, capsys, SEG_CONFIG, "--trainer.max_epochs", "abc")
    assert 'Parser key "trainer.max_epochs"' in err and "Given value: abc" in err


@pytest.mark.parametrize(
    ("good", "bad", "named"),
    [
        ("  max_epochs: 1", "  max_epoch: 1", "does not accept option 'trainer.max_epoch'"),
        ("    model_settings:", "    model_setings:", "Option 'model_setings.num_filters' is not accepted"),
    ],
)
def test_misspelt_key_in_yaml_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], good: str, bad: str, named: str
) -> None:
    text = SEG_CONFIG.read_text()
    assert text.count(good) == 1
    config = tmp_path / "misspelt.yaml"
    config.write_text(text.replace(good, bad))
    err = _fit_error(tmp_path, capsys, config)
    assert named in err


def test_bad_model_setting_is_refused_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "never_generated"
    code, _ = run_cli(tmp_path, "fit", "--config", SEG_CONFIG, "--data.init_args.data_dir", data_dir,
                      "--model.init_args.model_settings", "{num_filterz: 8}")
    assert code == 2
    err = capsys.readouterr().err
    assert "meteovision fit: error:" in err
    assert "'halfunet'" in err and "'num_filterz'" in err and "num_filters" in err  # the valid names listed
    assert "Traceback" not in err
    assert not data_dir.exists() and not (tmp_path / "run").exists()


def test_unknown_loss_is_named_with_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli(tmp_path, "fit", "--config", SEG_CONFIG, "--model.init_args.loss", "{name: dicee}")
    assert code == 2
    err = capsys.readouterr().err
    assert "loss.name 'dicee' is unknown" in err and "bce_dice" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "value", "named"),
    [
        ("--model.init_args.optimizer", "{name: adamx, lr: 0.001}", "optimizer.name 'adamx' is unknown"),
        ("--model.init_args.optimizer", "{name: adamw, lrr: 0.001}", "optimizer 'adamw': unknown setting(s) ['lrr']"),
        ("--model.init_args.optimizer", "{name: adamw, lr: -1.0}", "optimizer.lr must be a number > 0, got -1.0"),
        ("--model.init_args.scheduler", "{name: cosinus}", "scheduler.name 'cosinus' is unknown"),
    ],
)
def test_optimizer_typo_is_refused_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, value: str, named: str
) -> None:
    """Like a loss typo, a bad optimiser or scheduler is refused when the task is built: no data read."""
    data_dir = tmp_path / "never_generated"
    code, _ = run_cli(tmp_path, "fit", "--config", SEG_CONFIG, "--data.init_args.data_dir", data_dir, override, value)
    assert code == 2
    err = capsys.readouterr().err
    assert "meteovision fit: error:" in err and named in err and "Traceback" not in err
    assert not data_dir.exists() and not (tmp_path / "run").exists()


def test_in_process_errors_keep_the_package_error(tmp_path: Path) -> None:
    """build_cli (run=False: no subcommand) raises what jsonargparse wraps; package_error finds ours."""
    with contextlib.chdir(tmp_path), pytest.raises(Exception) as info:
        build_cli(["--config", str(SEG_CONFIG), "--model.init_args.model_settings", "{depth: 0}"], run=False)
    found = package_error(info.value)
    assert isinstance(found, ModelSettingsError) and "depth" in str(found)
    with contextlib.chdir(tmp_path), pytest.raises(Exception) as info:
        build_cli(["--config", str(SEG_CONFIG), "--model.init_args.loss", "{name: nope}"], run=False)
    assert isinstance(package_error(info.value), LossConfigError)
    assert package_error(RuntimeError("not ours")) is None


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["usage: meteovision", "fit", "test", "sample-data"]),
        (["fit", "--help"], ["usage: meteovision", "--trainer.max_epochs", "--ckpt_path", "--model", "--data"]),
        (["test", "--help"], ["usage: meteovision", "--ckpt_path", "--trainer.devices"]),
    ],
)
def test_help_exits_zero_with_usage(tmp_path: Path, argv: list[str], expected: list[str]) -> None:
    out = io.StringIO()
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    text = out.getvalue()
    for word in expected:
        assert word in text


# --------------------------------------------------------------------------- test subcommand


def test_test_scores_segmentation_model_and_bow_echo_rule(seg_run: SegRun, data_root: Path) -> None:
    assert seg_run.test_code == 0
    assert "### bow_echo: halfunet vs bow_echo_rule" in seg_run.test_stdout
    assert "| metric | model | baseline | better |" in seg_run.test_stdout
    assert "| seg/iou_macro |" in seg_run.test_stdout
    # the test run has its own log folder (both loggers), next to the fit's version_0
    report_path = seg_run.run_dir / "logs" / "version_1" / "test_metrics.json"
    report = strict_json(report_path)
    assert report["application"] == "bow_echo" and report["model"] == "halfunet"
    assert report["baseline"] == "bow_echo_rule"
    model, baseline = report["model_scores"], report["baseline_scores"]
    assert model and baseline
    assert set(model) == set(baseline)
    # every valid pixel of the whole test split was scored once, for the model and for the baseline
    total = valid_test_pixels(SEG_CONFIG, data_root / "bow_echo")
    assert total == 8 * 32 * 32  # one test event of 8 whole 32 x 32 frames, no nodata
    assert contingency_total(model, "cont/", "0.5") == total
    assert contingency_total(baseline, "cont/", "0.5") == total
    assert report["data"]["splits"]["test"]["frames"] == 8
    assert list((seg_run.run_dir / "logs" / "version_1").glob("events.out.tfevents.*"))


def test_test_scores_nowcast_model_and_persistence(tmp_path: Path, data_root: Path) -> None:
    data_dir = data_root / "nowcast_precip"
    code, _ = run_cli(tmp_path, "fit", "--config", NOWCAST_CONFIG, "--data.init_args.data_dir", data_dir)
    assert code == 0
    code, out = run_cli(tmp_path, "test", "--config", NOWCAST_CONFIG, "--data.init_args.data_dir", data_dir,
                        "--ckpt_path", "run/checkpoints/last.ckpt")
    assert code == 0
    assert "### nowcast_precip: halfunet vs persistence" in out
    assert "| lead005_reg/mae |" in out and "| lead010_reg/mae |" in out
    report = strict_json(tmp_path / "run" / "logs" / "version_1" / "test_metrics.json")
    model, baseline = report["model_scores"], report["baseline_scores"]
    assert model and baseline and set(model) == set(baseline)

    # persistence by hand from the radar files: the test event's frames, rates below the dBR
    # threshold (0.1 mm h-1) read back as 0 after the log10_rain round trip
    test = report["data"]["splits"]["test"]
    series = open_series(sorted((data_dir / "radar").glob("*.h5")))
    rate = series["RATE"].sel(time=slice(test["start"].rstrip("Z"), test["end"].rstrip("Z"))).values
    assert rate.shape == (8, 32, 32)
    rate = np.where(rate < 0.1, 0.0, rate)
    windows = 8 - 3 - 2 + 1  # 3 inputs, 2 outputs
    for lead in (1, 2):
        tag = f"lead{5 * lead:03d}"
        forecast = rate[2 : 2 + windows]
        observed = rate[2 + lead : 2 + lead + windows]
        valid = np.isfinite(forecast) & np.isfinite(observed)
        assert baseline[f"{tag}_reg/count"] == valid.sum() == valid_test_pixels(NOWCAST_CONFIG, data_dir, lead - 1)
        assert baseline[f"{tag}_reg/mae"] == pytest.approx(np.abs(forecast - observed)[valid].mean(), rel=1e-5)
        assert baseline[f"{tag}_cont/hits@1"] == np.sum((forecast >= 1) & (observed >= 1) & valid)
        assert contingency_total(model, f"{tag}_cont/", "1") == contingency_total(baseline, f"{tag}_cont/", "1")
        assert contingency_total(model, f"{tag}_cont/", "1") == valid.sum()


# --------------------------------------------------------------------------- resume


def test_resume_continues_steps_epochs_and_log_folder(seg_run: SegRun, tmp_path: Path) -> None:
    """fit 1 epoch -> test -> ``fit --trainer.max_epochs 2 --ckpt_path last``: the second epoch only."""
    workdir = tmp_path / "resume"
    shutil.copytree(seg_run.workdir, workdir)
    run_dir = workdir / "run"
    fit_dir = run_dir / "logs" / "version_0"
    old_events = set(fit_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "logs" / "version_1" / "test_metrics.json").is_file()  # the test run came last

    code, _ = run_cli(workdir, "fit", "--config", SEG_CONFIG, "--data.init_args.data_dir", seg_run.data_dir,
                      "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert code == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert ckpt["global_step"] == 2 * TRAIN_BATCHES
    assert ckpt[RUN_KEY] == {"log_version": 0}
    # the fit's folder continues (not the test's version_1, not a new version_2), CSV history kept
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["version_0", "version_1"]
    rows = csv_rows(fit_dir / "metrics.csv")
    assert train_loss_steps(rows) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert [int(r["epoch"]) for r in rows if r.get("val/loss")] == [0, 1]
    # the resumed process trained epoch 1 only, from step 2 on (a restart would log steps 0..3)
    new_events = set(fit_dir.glob("events.out.tfevents.*")) - old_events
    assert len(new_events) == 1
    assert tb_steps(new_events.pop(), "train/loss") == [2, 3]
    assert tb_steps(fit_dir, "train/loss") == [0, 1, 2, 3]
    saved = read_yaml(fit_dir / "config.yaml")
    assert saved["trainer"]["max_epochs"] == 2
