"""Operational guarantees that need real processes: SIGKILL mid-write, overlapping ticks, SIGTERM.

Each test starts ``meteovision operational`` in a fresh Python process. The crash test wraps
``os.replace`` in that process (test code only, nothing in the package) so that the atomic
writer pauses after its hidden temporary file is complete and before the rename; the test then
SIGKILLs the process in that pause, the worst moment for a writer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference.atomic import is_valid_netcdf
from meteovision.workflows.operational import run_tick
from meteovision.workflows.operational_config import load_config
from tests.operational_helpers import (
    BOW_NOW,
    PRODUCT,
    bow,
    config_dict,
    copy_inputs,
    ledger_rows,
    name_time,
    products,
    radar_files,
)
from tests.predict_helpers import Trained

__all__ = ["bow"]  # fixture shared with test_operational

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Runs the CLI after the imports; pauses the n-th atomic rename (argv: marker, n, go-file, CLI args...).
WRAPPER = r"""
import os, sys, time
from pathlib import Path
marker, pause_on, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
real_replace = os.replace
renames = 0

def paused_replace(src, dst, *args, **kwargs):
    global renames
    name = os.path.basename(os.fspath(src))
    if name.startswith(".") and name.endswith(".tmp"):
        renames += 1
        if renames == pause_on:
            marker.write_text(os.fspath(src))
            time.sleep(600)
    return real_replace(src, dst, *args, **kwargs)

os.replace = paused_replace
import meteovision.pipeline.inference.predict, meteovision.workflows.operational_cli  # noqa: F401  (warm imports)
from meteovision.pipeline.cli import main
marker.with_suffix(".ready").write_text("ready")
while not go.exists():
    time.sleep(0.01)
sys.exit(main(sys.argv[4:]))
"""


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start wrapped ``meteovision`` processes (stderr, the JSON log, to ``<tag>.log``); kill leftovers."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(tag: str, cli: list[str], pause_on: int = 0, go: Path | None = None) -> subprocess.Popen[bytes]:
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        gate = go if go is not None else tmp_path / f"{tag}.go"
        if go is None:
            gate.write_text("go")
        log = open(tmp_path / f"{tag}.log", "wb")  # noqa: SIM115  (closed at teardown)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, str(tmp_path / f"{tag}.marker"), str(pause_on), str(gate), *cli],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def json_log(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def write_config(tmp: Path, trained: Trained, inputs: Path, **changes: Any) -> Path:
    path = tmp / "ops.yaml"
    path.write_text(json.dumps(config_dict(tmp, trained.checkpoint, inputs, **changes)))
    return path


def cli_args(config: Path, *extra: str, now: datetime = BOW_NOW) -> list[str]:
    return [
        "operational",
        "--config",
        str(config),
        "--now",
        now.strftime("%Y-%m-%dT%H:%M"),
        "--log-format",
        "json",
        *extra,
    ]


def test_sigkill_mid_write_leaves_no_partial_output(bow: Trained, tmp_path: Path, spawn: Spawn) -> None:
    inputs = copy_inputs(radar_files(bow, "20220603")[:3], tmp_path / "in")  # 23:25 23:30 23:35
    path = write_config(
        tmp_path,
        bow,
        tmp_path / "in",
        retry={"max_attempts": 3, "backoff_seconds": 60, "stale_temp_seconds": 0},
    )
    config = load_config(path)
    # newest first: 23:35 is written, then the tick is killed while 23:30 waits for its rename
    proc = spawn("crash", cli_args(path), pause_on=2)
    marker = tmp_path / "crash.marker"
    wait_for(marker.exists, "the writer's pause before os.replace")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    killed_target = config.output.folder / PRODUCT.format(name_time(inputs[1]))
    temp = Path(marker.read_text())
    assert temp.parent == config.output.folder and temp.name.startswith(f".{killed_target.name}.")
    assert temp.name.endswith(".tmp") and temp.is_file()
    assert not killed_target.exists()  # nothing partial under the final name
    assert products(config) == [PRODUCT.format(name_time(inputs[2]))]  # what a consumer's *.nc glob sees
    states = {r["label"]: (r["state"], r["attempts"]) for r in ledger_rows(config)}
    assert states == {
        inputs[0].name: ("pending", 0),
        inputs[1].name: ("claimed", 1),
        inputs[2].name: ("done", 1),
    }
    (claimed,) = [r for r in ledger_rows(config) if r["state"] == "claimed"]
    assert claimed["claim_pid"] == proc.pid

    again = run_tick(config, now=BOW_NOW)  # the dead process's claim is taken over at once
    assert (again.reclaimed, again.done, again.failed, again.exit_code) == (1, 2, 0, ExitCode.OK)
    assert products(config) == [PRODUCT.format(name_time(p)) for p in inputs]  # exactly one per input
    for name in products(config):
        assert is_valid_netcdf(config.output.folder / name, ["bow_echo_probability", "bow_echo_mask"])
    assert not temp.exists() and list(config.output.folder.glob(".*.tmp")) == []  # left-over cleaned
    states = {r["label"]: (r["state"], r["attempts"]) for r in ledger_rows(config)}
    assert states == {inputs[0].name: ("done", 1), inputs[1].name: ("done", 2), inputs[2].name: ("done", 1)}
    assert run_tick(config, now=BOW_NOW).exit_code == ExitCode.NOTHING_TO_DO


def test_overlapping_ticks_never_process_the_same_input(bow: Trained, tmp_path: Path, spawn: Spawn) -> None:
    inputs = copy_inputs(radar_files(bow, "20220603") + radar_files(bow, "20220608"), tmp_path / "in")
    assert len(inputs) == 12
    path = write_config(
        tmp_path,
        bow,
        tmp_path / "in",
        input={"folder": str(tmp_path / "in"), "pattern": "*.h5", "window_hours": None, "min_age_seconds": 0},
    )
    config = load_config(path)
    go = tmp_path / "go"
    later = datetime(2022, 6, 9, tzinfo=UTC)  # after both days (no window, but nothing from the future)
    procs = [spawn(tag, cli_args(path, now=later), go=go) for tag in ("a", "b")]
    wait_for(lambda: all((tmp_path / f"{t}.ready").exists() for t in ("a", "b")), "both ticks to be ready")
    go.write_text("go")  # both start their tick now
    codes = [p.wait(timeout=120) for p in procs]
    summaries = []
    for tag in ("a", "b"):
        (summary,) = [d for d in json_log(tmp_path / f"{tag}.log") if d.get("event") == "tick_summary"]
        summaries.append(summary)
    assert all(code in (ExitCode.OK, ExitCode.NOTHING_TO_DO) for code in codes), codes
    assert sum(s["done"] for s in summaries) == 12 and all(s["failed"] == 0 for s in summaries)

    rows = ledger_rows(config)
    assert len(rows) == 12 and {r["state"] for r in rows} == {"done"}
    assert {r["attempts"] for r in rows} == {1}  # nobody claimed a unit twice
    assert sorted(r["label"] for r in rows) == sorted(p.name for p in inputs)
    owners = [r["claimed_by"] for r in rows]
    by_pid = {p.pid: sum(1 for o in owners if o.split(":")[1] == str(p.pid)) for p in procs}
    assert sorted(by_pid.values()) == sorted(s["done"] for s in summaries)  # each unit done by one tick
    assert products(config) == sorted(PRODUCT.format(name_time(p)) for p in inputs)


def test_sigterm_stops_the_watch_loop(bow: Trained, tmp_path: Path, spawn: Spawn) -> None:
    copy_inputs(radar_files(bow, "20220603")[:2], tmp_path / "in")
    path = write_config(tmp_path, bow, tmp_path / "in")
    proc = spawn("watch", cli_args(path, "--watch", "--every", "1h"))
    log = tmp_path / "watch.log"
    wait_for(lambda: any(d.get("event") == "tick_summary" for d in json_log(log)), "the first tick")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - sent < 10  # not the hour of --every
    messages = [d["message"] for d in json_log(log)]
    assert "SIGTERM received: stopping after the current unit" in messages
    assert "watch loop ended after 1 tick(s)" in messages
    (summary,) = [d for d in json_log(log) if d.get("event") == "tick_summary"]
    assert (summary["done"], summary["exit_code"]) == (2, 0)
    assert datetime.fromisoformat(json_log(log)[0]["time"]).tzinfo == UTC
