"""The shipped schedules are valid: systemd units, crontab lines and the ecFlow suite.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.operational_helpers import (
    WORKFLOWS,
    bow,
    nowcast,
)

__all__ = ["bow", "nowcast"]  # module-scoped fixtures, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- schedules


def _unit_file(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def test_systemd_units() -> None:
    folder = WORKFLOWS / "systemd"
    services = sorted(folder.glob("*.service"))
    timers = sorted(folder.glob("*.timer"))
    assert {p.name for p in timers} == {"meteovision-bow_echo.timer", "meteovision-nowcast_precip.timer"}
    for path in services:
        unit = _unit_file(path)
        assert unit["Unit"]["Description"], path
        service = unit["Service"]
        exec_start = shlex.split(service["ExecStart"])
        assert exec_start[1:4] == ["operational", "--config", exec_start[3]] and exec_start[0].endswith(
            "meteovision"
        )
        config_name = Path(exec_start[3]).name
        if "%i" not in config_name:
            assert (WORKFLOWS / "examples" / config_name).is_file(), f"{path.name} runs an unknown config"
        for key, value in (
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("KillSignal", "SIGTERM"),
        ):
            assert service[key] == value, (path.name, key)
        assert service["StateDirectory"].startswith("meteovision/")
        if service["Type"] == "oneshot":
            assert "3" in service["SuccessExitStatus"].split(), "exit 3 (nothing to do) must count as success"
        else:
            assert service["Type"] == "simple" and "--watch" in exec_start
            assert service["RestartPreventExitStatus"] == "2"
    for path in timers:
        timer = _unit_file(path)
        assert timer["Timer"]["OnCalendar"] == "*:0/5" and timer["Timer"]["Persistent"] == "true"
        assert (folder / timer["Timer"]["Unit"]).is_file()
        assert timer["Timer"]["Unit"] == path.with_suffix(".service").name
        assert timer["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze"):
        out = subprocess.run(
            ["systemd-analyze", "calendar", "*:0/5"], capture_output=True, text=True, check=True
        )
        assert "Normalized form: *-*-* *:00/5:00" in out.stdout
        for path in services + timers:
            res = subprocess.run(
                ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
            )
            problems = [
                line
                for line in (res.stdout + res.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "/opt/meteovision" not in line
            ]
            assert problems == [], problems


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?)(/\d+)?)*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _cron_field_ok(text: str, low: int, high: int) -> bool:
    if not _CRON_FIELD.match(text):
        return False
    numbers = [int(n) for n in re.findall(r"\d+", re.sub(r"/\d+", "", text))]
    return all(low <= n <= high for n in numbers)


def test_crontab_lines_parse() -> None:
    lines = [
        line
        for line in (WORKFLOWS / "cron" / "crontab.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    entries = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(entries) == 2
    for line in entries:
        fields = line.split(None, 5)
        assert len(fields) == 6, line
        assert all(_cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields[:5], _CRON_RANGES, strict=True)), (
            line
        )
        assert fields[0] == "*/5"
        words = shlex.split(fields[5])
        start = words.index("flock")
        assert words[start + 1] == "-n" and words[start + 2].endswith(".lock")
        command = words[start + 3 :]
        assert command[1:3] == ["operational", "--config"] and command[0].endswith("/meteovision")
        assert (WORKFLOWS / "examples" / Path(command[3]).name).is_file()
        assert "%" not in fields[5]  # cron turns % into newlines
    assert not _cron_field_ok("*/5x", 0, 59) and not _cron_field_ok("61", 0, 59)


def test_ecflow_suite() -> None:
    folder = WORKFLOWS / "ecflow"
    words = [
        line.split()
        for line in (folder / "meteovision.def").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    depth: list[str] = []
    edits: dict[str, str] = {}
    tasks: list[str] = []
    for word in words:
        if word[0] in ("suite", "family"):
            depth.append(word[0])
        elif word[0] in ("endsuite", "endfamily"):
            assert depth and depth.pop() == word[0][3:], f"unbalanced {word[0]}"
        elif word[0] == "edit":
            edits[word[1]] = word[2] if len(word) > 2 else ""
        elif word[0] == "task":
            tasks.append(word[1])
        elif word[0] == "cron":
            assert len(word) == 4 and all(re.fullmatch(r"\d\d:\d\d", w) for w in word[1:]), word
    assert depth == [] and tasks == ["tick", "tick"]
    assert {w[2] for w in words if w[0] == "edit" and w[1] == "APP"} == {"bow_echo", "nowcast_precip"}
    for app in ("bow_echo", "nowcast_precip"):
        assert (WORKFLOWS / "examples" / f"{app}.yaml").is_file()
    generated = {"ECF_PORT", "ECF_HOST", "ECF_NAME", "ECF_PASS", "ECF_TRYNO", "APP"}
    for script in [folder / "tick.ecf", *sorted((folder / "include").glob("*.h"))]:
        text = script.read_text()
        text = text.replace("%%", "")
        used = set(re.findall(r"%([A-Z_]+)%", text))
        assert used <= set(edits) | generated, (script.name, used - set(edits) - generated)
        includes = re.findall(r"^%include <([^>]+)>", text, flags=re.M)
        assert all((folder / "include" / name).is_file() for name in includes)
    assert (folder / "tick.ecf").is_file()
