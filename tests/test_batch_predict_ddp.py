"""``meteovision batch-predict`` under DDP: two CPU processes (gloo) share 5 inputs, each exactly once.

5 inputs over 2 ranks is the case where Lightning's ``DistributedSampler`` would pad rank 1 with a
duplicate of input 0; the run must instead give rank 0 inputs 0, 2, 4 and rank 1 inputs 1, 3.
The DDP run goes through ``python -m meteovision.pipeline.cli`` in a subprocess (Lightning's
launcher re-runs the command line for the second process), as in ``tests/test_ddp.py``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from meteovision.datasets.readers import open_dataset
from meteovision.pipeline.checkpoints.loading import load_inference_model
from meteovision.pipeline.cli import main
from meteovision.pipeline.inference.predict import PredictSettings, predict_file, predict_sequence
from meteovision.workflows.batch_predict import BatchPredictError, ShardSampler, predict_unit, read_records, shard
from tests.predict_helpers import bow_checkpoint, nowcast_checkpoint, with_meta
from tests.test_ddp import Result, run_meteovision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_INPUTS = 5


@dataclass(frozen=True)
class BatchRun:
    checkpoint: Path
    inputs: list[Path]
    output: Path
    first: Result
    second: Result


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory: pytest.TempPathFactory) -> BatchRun:
    root = tmp_path_factory.mktemp("batch")
    trained = bow_checkpoint(root)
    inputs_dir = root / "inputs"
    inputs_dir.mkdir()
    for path in trained.inputs("radar")[:N_INPUTS]:
        shutil.copy(path, inputs_dir / path.name)
    output = root / "products"
    argv = ["batch-predict", "--checkpoint", trained.checkpoint, "--input", inputs_dir, "--output", output,
            "--devices", "2", "--accelerator", "cpu"]
    first = run_meteovision(root, *argv)
    second = run_meteovision(root, *argv)  # every product exists now: all skipped
    return BatchRun(trained.checkpoint, sorted(inputs_dir.iterdir()), output, first, second)


def _runs(output: Path) -> list[Path]:
    return sorted((output / ".batch_predict").glob("run-*"))


def test_each_input_is_processed_exactly_once_by_one_rank(batch_run: BatchRun) -> None:
    assert batch_run.first.code == 0, batch_run.first.explain()
    first_run = _runs(batch_run.output)[0]
    by_rank = {}
    for rank in (0, 1):
        lines = (first_run / f"rank-{rank:05d}.jsonl").read_text().splitlines()
        by_rank[rank] = [json.loads(line) for line in lines]
    # strided shards, no padding: rank 0 takes 0, 2, 4 and rank 1 takes 1, 3 (not 1, 3, 0)
    assert [r["index"] for r in by_rank[0]] == [0, 2, 4]
    assert [r["index"] for r in by_rank[1]] == [1, 3]
    taken = [Path(r["input"]).name for rank in (0, 1) for r in by_rank[rank]]
    assert sorted(taken) == [p.name for p in batch_run.inputs]
    for record in by_rank[0] + by_rank[1]:
        assert [o["status"] for o in record["outcomes"]] == ["written"]
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary == {"checkpoint": str(batch_run.checkpoint), "world_size": 2, "inputs": 5, "written": 5,
                       "skipped": 0, "failed": 0, "exit_code": 0}
    # rank 0 alone prints the summary
    assert batch_run.first.stdout.count("batch-predict: 5 input(s) on 2 rank(s) (rank 0: 3, rank 1: 2)") == 1


def test_one_product_per_input_equal_to_the_single_process_engine(batch_run: BatchRun, tmp_path: Path) -> None:
    assert batch_run.first.code == 0, batch_run.first.explain()
    products = sorted(p for p in batch_run.output.iterdir() if not p.name.startswith("."))
    assert len(products) == N_INPUTS and all(p.suffix == ".nc" for p in products)
    model = load_inference_model(batch_run.checkpoint)
    for path in batch_run.inputs:
        time = open_dataset(path)["time"].values[0]
        reference = predict_file(model, path, PredictSettings(output_dir=tmp_path))
        (ref_out,) = reference.written[0].outputs
        ddp_out = batch_run.output / ref_out.name
        assert ddp_out in products
        with xr.open_dataset(ddp_out) as got, xr.open_dataset(ref_out) as want:
            assert got["time"].values[0] == time
            for name in want.data_vars:
                np.testing.assert_allclose(got[name].values, want[name].values, rtol=1e-5, atol=1e-6,
                                           equal_nan=True)
    assert not [p for p in batch_run.output.iterdir() if p.name.endswith(".tmp")]


def test_rerun_skips_every_existing_product(batch_run: BatchRun) -> None:
    assert batch_run.second.code == 3, batch_run.second.explain()
    assert "0 written, 5 skipped (output exists), 0 failed" in batch_run.second.stdout
    assert len(_runs(batch_run.output)) == 2  # one record folder per run


def test_shards_are_disjoint_and_cover_without_padding() -> None:
    for size in range(0, 12):
        for world in (1, 2, 3, 4, 7):
            shards = [list(ShardSampler(size, rank, world)) for rank in range(world)]
            flat = sorted(i for s in shards for i in s)
            assert flat == list(range(size))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert list(shard(5, 1, 2)) == [1, 3]
    with pytest.raises(BatchPredictError, match="rank 2 outside a world of 2"):
        shard(5, 2, 2)


def test_records_with_a_duplicate_or_a_gap_are_refused(tmp_path: Path) -> None:
    inputs = [Path(f"in{i}.h5") for i in range(3)]

    def record(i: int) -> str:
        return json.dumps({"index": i, "input": str(inputs[i]), "rank": 0, "outcomes": []})

    (tmp_path / "rank-00000.jsonl").write_text(record(0) + "\n" + record(1) + "\n")
    (tmp_path / "rank-00001.jsonl").write_text(record(1) + "\n")
    with pytest.raises(BatchPredictError, match=r"duplicated \['in1.h5'\], missing \['in2.h5'\]"):
        read_records(tmp_path, inputs)
    (tmp_path / "rank-00001.jsonl").write_text(record(2) + "\n")
    assert [r["index"] for r in read_records(tmp_path, inputs)] == [0, 1, 2]


def test_nowcast_unit_is_the_window_ending_at_its_file(tmp_path: Path) -> None:
    """Each input is the reference of one window: the first N - 1 files have none, the others exactly one."""
    trained = nowcast_checkpoint(tmp_path, n_in=3, n_out=2)
    files = trained.inputs("radar")[:5]
    model = load_inference_model(trained.checkpoint)
    settings = PredictSettings(output_dir=tmp_path / "sharded")
    whole = predict_sequence(model, files, PredictSettings(output_dir=tmp_path / "whole"))
    assert len(whole.written) == 3  # windows ending at files 2, 3, 4
    for index in (0, 1):
        assert predict_unit(model, files, index, settings).outcomes == ()
    for index, reference in zip((2, 3, 4), whole.written, strict=True):
        (outcome,) = predict_unit(model, files, index, settings).outcomes
        assert outcome.status == "written" and outcome.inputs == tuple(files[index - 2: index + 1])
        (got,) = outcome.outputs
        (want,) = reference.outputs
        assert got.name == want.name
        with xr.open_dataset(got) as a, xr.open_dataset(want) as b:
            for name in b.data_vars:
                np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_classification_checkpoint_is_refused_before_any_rank_starts(batch_run: BatchRun, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = with_meta(batch_run.checkpoint, tmp_path / "cls.ckpt", task_kind="classification")
    code = main(["batch-predict", "--checkpoint", str(ckpt), "--input", str(batch_run.inputs[0]),
                 "--output", str(tmp_path / "out"), "--devices", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "batch-predict runs segmentation, regression, nowcast checkpoints, not 'classification'" in err
    assert not (tmp_path / "out").exists()
