"""``meteovision predict`` over several inputs when one of them, or the output folder, is bad.

A file with a bad attribute fails alone, with its reason, and the files after it are still made;
an exception raised by our own code outside the read is not taken for a bad input; a full or
read-only output folder stops the run with exit 4 and names the folder, whatever the format
library said (netCDF4 says ``NetCDF: HDF error`` for a full disk).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import h5py
import pytest

from meteovision.core.errors import MeteovisionError
from meteovision.datasets.read_guard import UnexpectedReadError, reading
from meteovision.pipeline.checkpoints.loading import load_inference_model
from meteovision.pipeline.cli import main
from meteovision.pipeline.exit_codes import ExitCode
from meteovision.pipeline.inference import netcdf_writer, predict, write_errors
from meteovision.pipeline.inference.predict import PredictSettings, predict_files
from meteovision.pipeline.inference.write_errors import MIN_FREE_BYTES, OutputWriteError, output_problem
from tests.operational_helpers import PRODUCT, name_time
from tests.predict_helpers import Trained, bow

__all__ = ["bow"]  # module-scoped fixture, shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def corrupt(source: Path, target: Path, group: str, name: str, value: Any) -> Path:
    """A copy of ``source`` with one attribute overwritten (a producer's bad release)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    os.chmod(target, 0o644)
    with h5py.File(target, "r+") as f:
        f[group].attrs[name] = value
    return target


def predict_cli(trained: Trained, inputs: list[Path], output: Path) -> int:
    return main(["predict", "--checkpoint", str(trained.checkpoint), "--input", *map(str, inputs),
                 "--output", str(output)])


# ----------------------------------------------------------------------------- a bad file among good ones


@pytest.mark.parametrize(("group", "name", "value", "reason"), [
    ("dataset1/data1/what", "gain", b"abc", "attribute dataset1/data1/what/gain = 'abc' is not a number"),
    ("where", "xsize", b"1900 px", "attribute where/xsize = '1900 px' is not a number"),
], ids=["gain", "xsize"])
def test_a_bad_attribute_fails_alone_and_the_later_files_are_made(
    bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], group: str, name: str, value: bytes,
    reason: str
) -> None:
    a, b, c = bow.inputs("radar")[:3]
    bad = corrupt(b, tmp_path / "in" / b.name, group, name, value)
    code = predict_cli(bow, [a, bad, c], tmp_path / "out")
    out = capsys.readouterr().out
    assert code == ExitCode.PARTIAL_FAILURE == 1
    assert f"FAILED {bad.name}: {bad}: {reason}" in out
    assert "2 written, 0 skipped (output exists), 1 failed; exit code 1" in out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nc")) == [PRODUCT.format(name_time(p)) for p in (a, c)]


def test_a_bad_real_opera_file_fails_alone(
    bow: Trained, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = sorted((shared_data / "radar" / "opera_20180824").glob("*.hdf"))[0]
    bad = corrupt(source, tmp_path / "in" / source.name, "dataset1/what", "gain", b"abc")
    good = bow.inputs("radar")[:2]
    code = predict_cli(bow, [bad, *good], tmp_path / "out")
    out = capsys.readouterr().out
    assert code == ExitCode.PARTIAL_FAILURE
    assert f"FAILED {bad.name}: {bad}: attribute " in out and "is not a number" in out
    assert len(list((tmp_path / "out").glob("*.nc"))) == 2


def test_every_input_bad_exits_5_with_every_reason(
    bow: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = bow.inputs("radar")[:2]
    bad = [corrupt(a, tmp_path / "in" / a.name, "dataset1/data1/what", "gain", b"abc"),
           corrupt(b, tmp_path / "in" / b.name, "where", "xsize", b"1900 px")]
    assert predict_cli(bow, bad, tmp_path / "out") == ExitCode.ALL_FAILED == 5
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("FAILED")] == [
        f"FAILED {p.name}" for p in bad]
    assert "0 written, 0 skipped (output exists), 2 failed; exit code 5" in out


def test_the_guard_names_library_errors_and_keeps_ours(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="meteovision.datasets.read_guard"), \
            pytest.raises(UnexpectedReadError) as caught, reading("x.h5"):
        float("abc")
    assert str(caught.value) == "x.h5: unreadable: ValueError while reading: could not convert string to float: 'abc'"
    assert isinstance(caught.value.__cause__, ValueError)
    assert "Traceback" in caplog.text  # the traceback is in the debug log
    with pytest.raises(MeteovisionError, match=r"^ours$") as ours, reading("x.h5"):
        raise MeteovisionError("ours")
    assert type(ours.value) is MeteovisionError


def test_a_bug_outside_the_read_is_not_taken_for_a_bad_input(
    bow: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise TypeError("a bug in our own code")

    monkeypatch.setattr(predict, "infer_field", broken)
    model = load_inference_model(bow.checkpoint)
    with pytest.raises(TypeError, match="a bug in our own code"):
        predict_files(model, bow.inputs("radar")[:2], PredictSettings(tmp_path))


# ----------------------------------------------------------------------------- the output folder


def test_a_full_disk_stops_predict_with_exit_4_and_names_the_folder(
    bow: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(netcdf_writer, "_write", full)
    output = tmp_path / "out"
    assert predict_cli(bow, bow.inputs("radar")[:3], output) == ExitCode.OUTPUT_UNWRITABLE == 4
    err = capsys.readouterr().err
    assert f"meteovision predict: error: no space left on {output} (" in err
    assert list(output.iterdir()) == []  # the partial file is gone


Statvfs = namedtuple("Statvfs", "f_flag f_bavail f_frsize f_files f_favail")


def test_netcdf_hdf_error_on_a_full_folder_is_the_folders_fault(
    bow: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """netCDF4 reports a full disk as ``RuntimeError: NetCDF: HDF error``, with no errno."""
    def hdf_error(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("NetCDF: HDF error")

    monkeypatch.setattr(netcdf_writer, "_write", hdf_error)
    monkeypatch.setattr(write_errors.os, "statvfs", lambda folder: Statvfs(0, 3, 4096, 100, 50))
    model = load_inference_model(bow.checkpoint)
    with pytest.raises(OutputWriteError) as caught:
        predict_files(model, bow.inputs("radar")[:2], PredictSettings(tmp_path))
    assert caught.value.errno == errno.ENOSPC and caught.value.folder == tmp_path
    assert str(caught.value).startswith(f"no space left on {tmp_path} (")
    assert "NetCDF: HDF error" in str(caught.value)


def test_write_failures_are_classified_by_errno_then_by_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapped = MeteovisionError("writing NetCDF failed")
    wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied")
    assert output_problem(tmp_path, wrapped).errno == errno.EACCES  # type: ignore[union-attr]
    assert output_problem(tmp_path, RuntimeError("NetCDF: HDF error")) is None  # a roomy, writable folder
    states = {
        errno.EROFS: Statvfs(os.ST_RDONLY, 10**6, 4096, 100, 50),
        errno.ENOSPC: Statvfs(0, MIN_FREE_BYTES // 4096 - 1, 4096, 100, 50),
    }
    for code, state in states.items():
        monkeypatch.setattr(write_errors.os, "statvfs", lambda folder, s=state: s)
        problem = output_problem(tmp_path, RuntimeError("NetCDF: HDF error"))
        assert problem is not None and problem.errno == code
    monkeypatch.setattr(write_errors.os, "statvfs", lambda folder: Statvfs(0, 10**6, 4096, 100, 0))
    assert output_problem(tmp_path, RuntimeError("x")).errno == errno.ENOSPC  # type: ignore[union-attr]
