"""No real-archive training config may train or validate on a window that an evaluate config scores.

Reads the packaged YAMLs only (no data): for every source of ``nowcast_precip_real*.yaml`` whose folder an
``evaluate_*.yaml`` scores, the source's test block must start no later than the evaluation window, or the
whole evaluation window must be excluded. A new evaluate config or source that breaks this fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINING_CONFIGS = sorted(CONFIGS.glob("nowcast_precip_real*.yaml"))


def _utc(value: object) -> datetime:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _folder(glob: str) -> str:
    return Path(glob).parts[-2]


def evaluation_windows() -> dict[str, datetime | None]:
    """Series folder -> start of its evaluation window (None: the last frames, i.e. a window we cannot date)."""
    windows: dict[str, datetime | None] = {}
    for path in sorted(CONFIGS.glob("evaluate_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        windows[_folder(cfg["inputs"])] = _utc(cfg["test_from"]) if "test_from" in cfg else None
    return windows


def test_the_evaluate_configs_name_their_windows() -> None:
    assert {"opera_20180824", "fmi_geotiff_20160928", "rmi_radqpe_20210704"} <= set(evaluation_windows())


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_every_evaluated_window_is_held_out_of_training_and_validation(config: Path) -> None:
    windows = evaluation_windows()
    sources = yaml.safe_load(config.read_text())["data"]["init_args"]["sources"]
    checked = 0
    for source in sources:
        folder = _folder(source["glob"])
        if folder not in windows:
            continue
        checked += 1
        start = windows[folder]
        excluded = [(_utc(w["start"]), _utc(w["end"])) for w in source.get("exclude", [])]
        if start is not None and any(a <= start for a, _ in excluded):
            continue  # the window (from its start on) lies in an excluded span
        if start is None:
            assert excluded, f"{config.name}: {source['name']} is scored by its last frames; exclude them"
            continue
        assert "test_from" in source, f"{config.name}: {source['name']} has no test_from; evaluation starts {start}"
        assert _utc(source["test_from"]) <= start, (
            f"{config.name}: {source['name']} tests from {source['test_from']}, after the evaluation window {start}")
    assert checked >= 2
