"""Training from archives: split with held-out windows, conversions, and the Zarr store (same samples, append)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from meteovision.datasets.archive.conversions import convert
from meteovision.datasets.archive.datamodule import ArchiveDataModule
from meteovision.datasets.archive.events import DrySampling, sequence_windows, split_labels
from meteovision.datasets.archive.frames import StoredFrames
from meteovision.datasets.archive.sources import ArchiveError, Conversion, SourceSettings, TimeWindow
from meteovision.datasets.archive.store import COMMITTED, FORMAT_ATTR, append_source, build_store, load_store
from meteovision.datasets.archive.summaries import summarize
from meteovision.datasets.readers.coarsen import reduce_blocks
from tests.conftest import OdimField, OdimFile, OdimGrid, write_odim

GRID = OdimGrid(nx=36, ny=20)


def _times(n: int, step_min: int = 5) -> np.ndarray:
    return np.datetime64("2024-01-02T12:00", "ns") + np.arange(n) * np.timedelta64(step_min, "m")


def _series(folder: Path, n: int, start: int = 0) -> None:
    """``n`` 5-min ODIM RATE files: a rain blob moving east, nodata in the first two columns (no coverage)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : GRID.ny, 0 : GRID.nx]
    for k in range(start, start + n):
        rate = 8.0 * np.exp(-((yy - 10) ** 2 + (xx - 4 - k) ** 2) / 12.0)
        raw = np.round(rate * 10).astype(np.uint8)  # gain 0.1
        raw[:, :2] = 255
        t = (np.datetime64("2024-01-02T12:00") + np.timedelta64(5 * k, "m")).astype(object)
        write_odim(folder / f"r_{t:%Y%m%d%H%M}.h5",
                   OdimFile([OdimField("RATE", raw, gain=0.1, nodata=255, undetect=0)], grid=GRID,
                            date=f"{t:%Y%m%d}", time=f"{t:%H%M%S}"))


def test_split_puts_the_latest_block_in_test_and_never_trains_on_excluded_windows() -> None:
    times = _times(40)
    src = SourceSettings(name="s", glob="*", variable="RATE", test_from="2024-01-02T14:40:00Z",
                         exclude=(TimeWindow("2024-01-02T12:30:00Z", "2024-01-02T12:45:00Z"),))
    labels = split_labels(times, src, val_fraction=0.25, test_fraction=0.2, guard_minutes=10)
    # test: exactly 14:40..15:15 (frames 32..39); guard 14:30, 14:35 dropped
    assert list(np.flatnonzero(labels == "test")) == list(range(32, 40))
    assert labels[30] == labels[31] == ""
    # excluded 12:30..12:45 = frames 6..9: never train nor validation
    assert set(labels[6:10]) == {""}
    free = [i for i in range(30) if not 6 <= i <= 9]  # 26 candidates -> ceil(0.25 * 26) = 7 val frames
    assert list(np.flatnonzero(labels == "val")) == free[-7:]
    # train stops a guard (10 min = 2 frames) before the first validation frame (23)
    assert list(np.flatnonzero(labels == "train")) == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


def test_windows_at_a_coarser_common_step_use_every_phase() -> None:
    labels = np.array(["train"] * 10, dtype=object)
    w = sequence_windows(_times(10), labels, "train", 3, 15.0)
    # frames 0..9 every 5 min at a 15-min step: windows (0,3,6) .. (3,6,9)
    assert w.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8], [3, 6, 9]]


def test_conversions_by_hand() -> None:
    acc = SourceSettings(name="b", glob="*", variable="p", conversion=Conversion.ACCUMULATION, period_minutes=10)
    assert convert(np.array([1.0, np.nan]), acc, None).tolist()[0] == pytest.approx(6.0)
    zr = SourceSettings(name="z", glob="*", variable="DBZH", conversion="dbz_to_rate", zr_a=200.0, zr_b=1.6)
    # 23 dBZ: Z = 10**2.3 = 199.5 -> R = (199.5 / 200) ** (1 / 1.6) = 0.9984
    assert convert(np.array([23.0]), zr, None)[0] == pytest.approx(0.99844, rel=1e-4)
    # the readers' block mean (the archive's reads use it) is of linear Z:
    # 10 dBZ and 20 dBZ -> 10 log10((10 + 100) / 2) = 17.40 dBZ; an all-NaN block is NaN
    db = np.array([[10.0, 20.0, np.nan, np.nan]])
    out = reduce_blocks(np.vstack([db, db]).astype(np.float32), 2, "mean", linear_db=True)
    assert out[0, 0] == pytest.approx(17.4036, abs=1e-3) and np.isnan(out[0, 1])


def test_settings_errors_name_the_source_and_key() -> None:
    with pytest.raises(ArchiveError, match="source 'x': conversion 'furlongs'"):
        SourceSettings(name="x", glob="*", variable="R", conversion="furlongs")  # type: ignore[arg-type]
    with pytest.raises(ArchiveError, match="source 'x': coarsen"):
        SourceSettings(name="x", glob="*", variable="R", coarsen=0)
    with pytest.raises(ArchiveError, match="no file matches"):
        SourceSettings(name="x", glob="nothing/*.h5", variable="R").files(Path("/nonexistent"))


def _dm(root: Path, store: Path | None = None, *, transform: str = "log10_rain",
        sampling: DrySampling | None = None) -> ArchiveDataModule:
    src = SourceSettings(name="blob", glob="radar/*.h5", variable="RATE", coarsen=2)
    return ArchiveDataModule([src], str(root), store=None if store is None else str(store), time_step_minutes=10,
                             num_input_frames=2, num_output_frames=1, patch_size=8, batch_size=4,
                             val_fraction=0.25, test_fraction=0.25, guard_minutes=5, transform=transform,
                             sampling=sampling or DrySampling(min_wet_fraction=0.05, dry_share=0.0))


def _assert_same_samples(raw: ArchiveDataModule, stored: ArchiveDataModule) -> None:
    """Same split, windows, statistics and samples (every one, bit for bit) from raw files and the store."""
    raw.setup("fit")
    stored.setup("fit")
    assert raw.summary == stored.summary
    assert raw.stats == stored.stats and raw.stats.counts == stored.stats.counts
    for split in ("train", "val", "test"):
        a, b = raw.dataset(split), stored.dataset(split)
        assert len(a) == len(b)
        for i in range(len(a)):
            sa, sb = a[(1, i)] if split == "train" else a[i], b[(1, i)] if split == "train" else b[i]
            for key in ("inputs", "target", "mask", "time"):
                assert torch.equal(sa[key], sb[key]), (split, i, key)


def test_store_gives_the_same_samples_and_split_as_raw_files(tmp_path: Path) -> None:
    _series(tmp_path / "radar", 24)
    raw = _dm(tmp_path)
    src = raw.sources[0]
    assert build_store(tmp_path / "st", [src], tmp_path) == {"blob": 24}
    stored = _dm(tmp_path, tmp_path / "st")
    _assert_same_samples(raw, stored)
    assert raw.summary["windows"]["train"] > 0 and raw.summary["windows"]["test"] > 0
    # the store's path: setup takes the stored per-frame statistics and decodes no frame
    fresh = _dm(tmp_path, tmp_path / "st")
    fresh.setup("fit")
    series = fresh.series[0]
    assert isinstance(series.values, StoredFrames) and series.summaries is not None
    assert series.values.frames_held == 0
    # another transform, another stored threshold (every window dry: a seeded half kept), and a threshold
    # that is not stored (the frames are read instead): still identical
    _assert_same_samples(_dm(tmp_path, transform="log1p"), _dm(tmp_path, tmp_path / "st", transform="log1p"))
    halves = [_dm(tmp_path, store, sampling=DrySampling(min_wet_fraction=0.5, dry_share=0.5, wet_threshold=1.0))
              for store in (None, tmp_path / "st")]
    _assert_same_samples(*halves)
    assert halves[0].summary["sources"]["blob"]["train_dry_dropped"] > 0
    assert 0.15 not in series.summaries.thresholds
    unstored = DrySampling(min_wet_fraction=0.05, dry_share=0.0, wet_threshold=0.15)
    _assert_same_samples(_dm(tmp_path, sampling=unstored), _dm(tmp_path, tmp_path / "st", sampling=unstored))
    sample = raw.dataset("test")[0]
    assert sample["inputs"].shape == (2, 8, 8) and sample["target"].shape == (1, 8, 8)
    assert sample["mask"].dtype == torch.bool
    # the nodata columns (the first 2-km column once coarsened) are NaN, so masked in every sample
    series = load_store(tmp_path / "st", src)
    assert np.isnan(series.values[:, :, 0]).all() and np.isfinite(series.values[:, :, 1:]).all()
    tiles = [raw.dataset("test")[i] for i in range(len(raw.dataset("test")))]
    assert any(not t["mask"][:, :, 0].any() for t in tiles)


def test_stored_frames_index_like_the_array_they_replace(tmp_path: Path) -> None:
    import pickle

    _series(tmp_path / "radar", 6)
    src = SourceSettings(name="blob", glob="radar/*.h5", variable="RATE")
    build_store(tmp_path / "st", [src], tmp_path, tile=8)  # 20 x 36 cells in 8 x 8 chunks: patches span several
    from meteovision.datasets.archive.series import load_raw

    ref = load_raw(src, tmp_path).values
    lazy = load_store(tmp_path / "st", src, cache_mb=0).values  # a one-frame cache: buffers are dropped and reread
    assert lazy.shape == ref.shape
    for key in [np.s_[[4, 1], 3:17, 5:30], np.s_[2], np.s_[-1, :, 0], np.s_[:, 7, 2:9], np.s_[np.int64(3), -5:],
                np.s_[1:4, 0:20, 30:], np.s_[[0, 5]]]:
        np.testing.assert_array_equal(lazy[key], ref[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(lazy), ref)
    assert lazy.frames_held == 1
    again = pickle.loads(pickle.dumps(lazy))  # as a DataLoader worker gets it: reopened, nothing decoded
    assert again.frames_held == 0
    np.testing.assert_array_equal(again[[3], 2:10, 4:12], ref[[3], 2:10, 4:12])
    with pytest.raises(IndexError, match="step 1"):
        lazy[0, ::2]


def test_an_old_store_still_loads_identically_but_is_not_appended_to(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    _series(tmp_path / "radar", 24)
    raw = _dm(tmp_path)
    src = raw.sources[0]
    build_store(tmp_path / "st", [src], tmp_path)
    group = zarr.open_group(str(tmp_path / "st" / "blob"), mode="r+")
    for name in ("valid_count", "wet_count", "stat_count", "stat_mean", "stat_m2", "wet_threshold"):
        del group[name]  # what the format-1 code wrote: frames and times only
    for name in (FORMAT_ATTR, "stat_transforms", "stat_probe"):
        del group.attrs[name]
    with caplog.at_level("WARNING"):
        _assert_same_samples(raw, _dm(tmp_path, tmp_path / "st"))
    assert "without per-frame statistics" in caplog.text and "store build" in caplog.text
    with pytest.raises(ArchiveError, match=r"st/blob: written by an older meteovision.*store build"):
        append_source(tmp_path / "st", src, src.files(tmp_path))


def test_a_store_that_cannot_give_the_right_frames_is_refused(tmp_path: Path) -> None:
    _series(tmp_path / "radar", 4)
    src = SourceSettings(name="blob", glob="radar/*.h5", variable="RATE", coarsen=2)
    build_store(tmp_path / "st", [src], tmp_path)
    other = SourceSettings(name="blob", glob="radar/*.h5", variable="RATE", coarsen=1)
    with pytest.raises(ArchiveError, match=r"st/blob was built with other settings.*coarsen: store 2, source 1"):
        load_store(tmp_path / "st", other)
    zarr.open_group(str(tmp_path / "st" / "blob"), mode="r+").attrs[FORMAT_ATTR] = 99
    with pytest.raises(ArchiveError, match=r"st/blob: format 99 is newer"):
        load_store(tmp_path / "st", src)


def test_a_changed_transform_is_not_taken_from_the_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _series(tmp_path / "radar", 24)
    raw = _dm(tmp_path)
    build_store(tmp_path / "st", raw.sources, tmp_path)
    group = zarr.open_group(str(tmp_path / "st" / "blob"), mode="r+")
    probes = json.loads(str(group.attrs["stat_probe"]))
    probes["log10_rain"][-1] += 1.0  # as if log10_rain were defined otherwise when the store was built
    group.attrs["stat_probe"] = json.dumps(probes)
    stored = _dm(tmp_path, tmp_path / "st")
    with caplog.at_level("WARNING"):
        _assert_same_samples(raw, stored)
    assert "log10_rain" in caplog.text and stored.series[0].summaries is not None
    assert "log10_rain" not in stored.series[0].summaries.transforms


def test_append_is_idempotent_and_survives_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _series(tmp_path / "radar", 8)
    src = SourceSettings(name="blob", glob="radar/*.h5", variable="RATE")
    build_store(tmp_path / "st", [src], tmp_path)
    _series(tmp_path / "radar", 4, start=8)
    # an interruption after the new frames are written but before the commit: readers still see 8 frames
    import meteovision.datasets.archive.store as store_mod

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        append_source(tmp_path / "st", src, src.files(tmp_path))
    monkeypatch.undo()
    assert load_store(tmp_path / "st", src).times.size == 8
    assert append_source(tmp_path / "st", src, src.files(tmp_path)) == 4
    assert append_source(tmp_path / "st", src, src.files(tmp_path)) == 0  # nothing twice
    series = load_store(tmp_path / "st", src)
    assert series.times.tolist() == _times(12).tolist()
    assert int(zarr.open_group(str(tmp_path / "st" / "blob")).attrs[COMMITTED]) == 12
    from meteovision.datasets.archive.series import load_raw

    raw = load_raw(src, tmp_path)
    np.testing.assert_array_equal(raw.values, np.asarray(series.values))
    # the appended frames' statistics are those of their values, as for the built ones
    assert series.summaries is not None
    for t in range(12):
        expected = summarize(raw.values[t], series.summaries.thresholds)
        assert series.summaries.valid[t] == expected.valid
        np.testing.assert_array_equal(series.summaries.wet[t], expected.wet)
        np.testing.assert_array_equal(series.summaries.count[t], expected.count)
        np.testing.assert_array_equal(series.summaries.mean[t], expected.mean)
        np.testing.assert_array_equal(series.summaries.m2[t], expected.m2)


def test_store_command_builds_then_appends_only_new_files(tmp_path: Path) -> None:
    from meteovision.pipeline.cli import main

    _series(tmp_path / "radar", 6)
    argv = ["store", "build", str(tmp_path / "st"), "--glob", "radar/*.h5", "--root", str(tmp_path), "--name", "blob",
            "--workers", "1"]
    assert main(argv) == 0
    _series(tmp_path / "radar", 2, start=6)
    assert main(["store", "append", *argv[2:]]) == 0
    src = SourceSettings(name="blob", glob="radar/*.h5", variable="RATE")
    series = load_store(tmp_path / "st", src)
    assert series.times.tolist() == _times(8).tolist()
    group = zarr.open_group(str(tmp_path / "st" / "blob"))
    assert group.attrs["time_step_minutes"] == 5.0 and "crs_wkt" in group.attrs
    assert len(json.loads(str(group.attrs["files"]))) == 8


def test_missing_archive_root_is_a_clear_error(tmp_path: Path) -> None:
    from meteovision.datasets.archive.sources import resolve_root

    with pytest.raises(ArchiveError, match=r"archive root 'no/such/radar' is not a folder.*data.init_args.root"):
        resolve_root("no/such/radar", anchor=tmp_path)
    assert resolve_root(str(tmp_path)) == tmp_path.resolve()
