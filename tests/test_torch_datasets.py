"""Torch datasets on small sample folders written in the real formats (ODIM_H5, CF NetCDF, JPEG + CSV).

The ``write_*_folder`` helpers build folders in the sample-data layout of docs/CONTRACTS.md with
chosen content, so values can be checked by hand; test_datamodules.py reuses them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from meteovision.datasets.catalog import Manifest, frame_index, image_records
from meteovision.datasets.normalization import NormalizationStats, compute_stats
from meteovision.datasets.readers import open_dataset
from meteovision.datasets.splits import group_events, sequence_windows
from meteovision.datasets.synthetic.grids import radar_grid, satellite_grid
from meteovision.datasets.synthetic.writers import (
    CfVariable,
    write_cf_netcdf,
    write_jpeg,
    write_labels_csv,
    write_odim_composite,
)
from meteovision.datasets.torch_datasets import (
    AugmentSettings,
    ClassificationDataset,
    EpochSampler,
    FrameStore,
    ImageStore,
    PatchSettings,
    PixelRegressionDataset,
    SamplingError,
    SegmentationDataset,
    SequenceDataset,
    class_indices,
    patch_counts,
    tile_origins,
    visibility_classes,
)

T0 = datetime(2024, 5, 1, 12, 0)
SIZE = 24


# ----------------------------------------------------------------------------------------- folder writers
def event_times(n_events: int, frames: int, step_minutes: int = 5, spacing_days: int = 1) -> list[datetime]:
    """Frames of ``n_events`` events, each ``frames`` long, one every ``spacing_days`` days."""
    return [
        T0 + timedelta(days=spacing_days * e, minutes=step_minutes * k) for e in range(n_events) for k in range(frames)
    ]


def _stamp(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M")


def write_manifest(root: Path, app: str, times: Sequence[datetime], step_minutes: int, **entries: object) -> None:
    ordered = np.array(sorted(times), dtype="datetime64[s]")
    ids = group_events(ordered, timedelta(hours=1))
    events = [[str(ordered[ids == e][0]), str(ordered[ids == e][-1])] for e in np.unique(ids)]
    doc = {
        "app": app,
        "seed": 7,
        "created_by": "tests",
        "time_step_minutes": step_minutes,
        "events": events,
        "targets": None,
        "labels_csv": None,
        "target_variable": None,
        "class_names": None,
    }
    doc.update(entries)
    (root / "manifest.json").write_text(json.dumps(doc, indent=2))


def write_radar_folder(
    root: Path,
    times: Sequence[datetime],
    fields: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray] | None = None,
    quality: Mapping[str, np.ndarray] | None = None,
    app: str = "bow_echo",
    step_minutes: int = 5,
) -> Path:
    """ODIM composites ``radar/YYYYmmddHHMM.h5`` (+ CF targets): arrays are [time, y, x] physical values."""
    grid = radar_grid(next(iter(fields.values())).shape[-1])
    for k, t in enumerate(times):
        write_odim_composite(
            root / "radar" / f"{_stamp(t)}.h5",
            t,
            grid,
            {q: a[k] for q, a in fields.items()},
            quality={q: a[k] for q, a in (quality or {}).items()} or None,
        )
        if masks:
            variables = [CfVariable(name, a[k].astype(np.float32), "1", name) for name, a in masks.items()]
            write_cf_netcdf(root / "targets" / f"{_stamp(t)}.nc", t, grid, variables, "test targets", "tests")
    write_manifest(
        root,
        app,
        times,
        step_minutes,
        inputs=["radar/*.h5"],
        targets="targets/*.nc" if masks else None,
        input_variables=list(fields) + list(quality or {}),
        target_variable=next(iter(masks)) if masks else None,
    )
    return root


def write_satellite_folder(
    root: Path, times: Sequence[datetime], channels: Mapping[str, np.ndarray], rate: np.ndarray
) -> Path:
    """CF NetCDF ``satellite/*.nc`` (one variable per channel) and ``targets/*.nc`` with RATE (NaN allowed)."""
    grid = satellite_grid(rate.shape[-1])
    units = {"VIS_006": "1"}
    for k, t in enumerate(times):
        variables = [CfVariable(n, a[k], units.get(n, "K"), n) for n, a in channels.items()]
        write_cf_netcdf(root / "satellite" / f"{_stamp(t)}.nc", t, grid, variables, "test satellite", "tests")
        write_cf_netcdf(
            root / "targets" / f"{_stamp(t)}.nc",
            t,
            grid,
            [CfVariable("RATE", rate[k], "mm h-1", "rain rate", "rainfall_rate")],
            "test",
            "tests",
        )
    write_manifest(
        root,
        "sat2precip",
        times,
        15,
        inputs=["satellite/*.nc"],
        targets="targets/*.nc",
        input_variables=list(channels),
        target_variable="RATE",
    )
    return root


def write_webcam_folder(
    root: Path, times: Sequence[datetime], cameras: int = 2, size: tuple[int, int] = (20, 28)
) -> Path:
    """JPEGs ``images/<camera>_YYYYmmddHHMM.jpg`` + ``labels.csv``: brightness encodes the snow class."""
    rows = []
    snow = ["none", "partial", "full"]
    vis = [150.0, 700.0, 3000.0, 20000.0]
    for k, t in enumerate(times):
        for c in range(cameras):
            cls = (k + c) % 3
            rgb = np.full((*size, 3), 60 + 80 * cls, dtype=np.uint8)
            rgb[: size[0] // 2, :, 2] = 250  # a blue sky on top, no blue in the ground
            rgb[size[0] // 2 :, :, 2] = 0
            name = f"images/cam{c}_{_stamp(t)}.jpg"
            write_jpeg(root / name, rgb, t, f"cam{c}")
            rows.append(
                {
                    "path": name,
                    "camera": f"cam{c}",
                    "time": t.isoformat() + "Z",
                    "snow_class": snow[cls],
                    "visibility_m": str(vis[(k + c) % 4]),
                }
            )
    write_labels_csv(root / "labels.csv", rows)
    write_manifest(
        root,
        "webcam_snow",
        times,
        60,
        inputs=["images/*.jpg"],
        labels_csv="labels.csv",
        input_variables=["image"],
        class_names=snow,
    )
    return root


def bow_arrays(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rain rates and a rare 3x3 positive blob per frame; a few nodata pixels in both."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.7, 2.0, (n, size, size)).round(2)
    rate[:, :, :3] = 0.0
    mask = np.zeros((n, size, size), dtype=np.float32)
    for k in range(n):
        y, x = rng.integers(2, size - 5, 2)
        mask[k, y : y + 3, x : x + 3] = 1.0
    rate[:, 0, -2:] = np.nan  # not scanned
    mask[:, -1, :4] = np.nan  # target unknown
    return rate, mask


@pytest.fixture(scope="module")
def bow_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    times = event_times(2, 6)
    rate, mask = bow_arrays(len(times))
    rate[0, 5, 5] = 1.0  # golden pixel: log1p(1) = ln 2
    return write_radar_folder(tmp_path_factory.mktemp("bow"), times, {"RATE": rate}, {"bow_echo_mask": mask})


def _store(folder: Path, cache: int = 64) -> FrameStore:
    return FrameStore(frame_index(Manifest.load(folder)), cache_frames=cache)


def _stats_for(
    store: FrameStore, variables: Sequence[str], transforms: Sequence[str], source: str = "inputs"
) -> NormalizationStats:
    frames = (store.read(i, variables, source) for i in range(len(store)))
    return compute_stats(frames, variables, store.units(variables, source), transforms)


# ----------------------------------------------------------------------------------------- helpers
def test_patch_counts_match_brute_force() -> None:
    mask = np.random.default_rng(0).random((9, 11)) > 0.7
    counts = patch_counts(mask, 4, 3)
    assert counts.shape == (6, 9)
    for y in range(6):
        for x in range(9):
            assert counts[y, x] == mask[y : y + 4, x : x + 3].sum()


def test_tile_origins_cover_the_frame() -> None:
    assert tile_origins(10, 4) == [0, 4, 6]
    assert tile_origins(8, 4) == [0, 4]
    with pytest.raises(SamplingError):
        tile_origins(3, 4)


def test_epoch_sampler_is_reproducible_per_epoch() -> None:
    s = EpochSampler(10, shuffle=True, seed=3)
    e0, e1 = list(s), list(s)
    assert [e for e, _ in e0] == [0] * 10 and [e for e, _ in e1] == [1] * 10
    assert sorted(i for _, i in e0) == list(range(10)) and [i for _, i in e0] != [i for _, i in e1]
    s.set_epoch(0)
    assert list(s) == e0


def test_label_helpers() -> None:
    v = np.array([100.0, 200.0, 999.0, 1000.0, 4999.0, 5000.0, np.nan])
    np.testing.assert_array_equal(visibility_classes(v), [0, 1, 1, 2, 2, 3, -1])
    np.testing.assert_array_equal(
        class_indices(["full", "none", "", "mist"], ["none", "partial", "full"]), [2, 0, -1, -1]
    )


# ----------------------------------------------------------------------------------------- segmentation
def test_segmentation_samples(bow_folder: Path) -> None:
    store = _store(bow_folder)
    stats = _stats_for(store, ["RATE"], ["log1p"])
    ds = SegmentationDataset(
        store, np.arange(len(store)), ["RATE"], ["bow_echo_mask"], stats, patch=PatchSettings(patch_size=16)
    )
    # fixed tiling of a 24x24 frame with 16-pixel tiles: origins (0, 8) x (0, 8) -> 4 tiles per frame
    assert len(ds) == 12 * 4
    s = ds[0]
    assert set(s) == {"inputs", "target", "mask", "time"}
    assert s["inputs"].dtype == torch.float32 and s["inputs"].shape == (1, 16, 16)
    assert s["target"].dtype == torch.float32 and s["target"].shape == (1, 16, 16)
    assert s["mask"].dtype == torch.bool and s["mask"].shape == (1, 16, 16)
    assert s["time"].dtype == torch.float64 and s["time"].shape == ()
    assert s["time"].item() == (T0 - datetime(1970, 1, 1)).total_seconds()
    # golden pixel: RATE 1 mm/h -> (ln 2 - mean) / std
    expected = (math.log(2.0) - stats.mean[0]) / stats.std[0]
    assert s["inputs"][0, 5, 5].item() == pytest.approx(expected, rel=1e-5)
    # every input pixel equals the reader's value, transformed and standardised
    with open_dataset(store.index.input_files[0][0]) as raw:
        rate = raw["RATE"].values[0, :16, :16]
    ref = np.where(np.isfinite(rate), (np.log1p(rate) - stats.mean[0]) / stats.std[0], 0.0)
    np.testing.assert_allclose(s["inputs"][0].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert set(np.unique(s["target"].numpy())) <= {0.0, 1.0}


def test_mask_false_where_target_or_input_missing(bow_folder: Path) -> None:
    store = _store(bow_folder)
    stats = _stats_for(store, ["RATE"], ["log1p"])
    ds = SegmentationDataset(store, [0], ["RATE"], ["bow_echo_mask"], stats, patch=PatchSettings(patch_size=None))
    s = ds[0]
    assert s["inputs"].shape == (1, SIZE, SIZE)
    mask = s["mask"][0].numpy()
    assert not mask[-1, :4].any()  # target NaN
    assert not mask[0, -2:].any()  # input nodata
    assert mask.sum() == SIZE * SIZE - 4 - 2
    assert (s["target"][0].numpy()[~mask] == 0).all()
    assert s["inputs"][0, 0, -1].item() == 0.0  # NaN input -> fill value 0 (the mean)


def test_min_positive_fraction_is_respected(bow_folder: Path) -> None:
    store = _store(bow_folder)
    stats = _stats_for(store, ["RATE"], ["log1p"])
    patch = PatchSettings(patch_size=8, patches_per_frame=5, min_positive_fraction=0.1, positive_patch_probability=0.4)
    ds = SegmentationDataset(
        store,
        np.arange(len(store)),
        ["RATE"],
        ["bow_echo_mask"],
        stats,
        train=True,
        patch=patch,
        augment=AugmentSettings(flips=True, rot90=True),
        seed=1,
    )
    need = math.ceil(0.1 * 64)  # 7 of the 9 blob pixels
    for epoch in range(2):
        fractions = np.array([ds[(epoch, i)]["target"].sum().item() for i in range(len(ds))])
        assert (fractions >= need).mean() >= 0.4
    # without the requirement rare positives are seldom sampled: the setting is what makes the share
    plain = SegmentationDataset(
        store,
        np.arange(len(store)),
        ["RATE"],
        ["bow_echo_mask"],
        stats,
        train=True,
        patch=PatchSettings(patch_size=8, patches_per_frame=5),
        seed=1,
    )
    plain_share = np.mean([plain[(0, i)]["target"].sum().item() >= need for i in range(len(plain))])
    assert plain_share < 0.3
    with pytest.raises(SamplingError, match="positive"):
        SegmentationDataset(
            store,
            [0],
            ["RATE"],
            ["bow_echo_mask"],
            stats,
            train=True,
            patch=PatchSettings(patch_size=8, min_positive_fraction=0.5, positive_patch_probability=0.5),
        )


def test_training_patches_are_deterministic_per_epoch(bow_folder: Path) -> None:
    store = _store(bow_folder)
    stats = _stats_for(store, ["RATE"], ["log1p"])
    make = lambda: SegmentationDataset(  # noqa: E731
        store,
        np.arange(len(store)),
        ["RATE"],
        ["bow_echo_mask"],
        stats,
        train=True,
        patch=PatchSettings(patch_size=8, patches_per_frame=3),
        augment=AugmentSettings(True, True),
        seed=5,
    )
    a, b = make(), make()
    for i in (0, 7, 20):
        torch.testing.assert_close(a[(2, i)], b[(2, i)])
    assert [a.locate((0, i)) for i in range(len(a))] != [a.locate((1, i)) for i in range(len(a))]


def test_augmentation_moves_inputs_target_and_mask_together(bow_folder: Path) -> None:
    store = _store(bow_folder)
    stats = _stats_for(store, ["RATE"], ["log1p"])
    ds = SegmentationDataset(store, [0], ["RATE"], ["bow_echo_mask"], stats, patch=PatchSettings(patch_size=16))
    plain = ds.sample(0, (2, 3, 16, 16))
    aug = ds.sample(0, (2, 3, 16, 16), k=1, flip_y=True, flip_x=False)
    for key in ("inputs", "target", "mask"):
        expected = np.flip(np.rot90(plain[key].numpy(), 1, axes=(-2, -1)), axis=-2)
        np.testing.assert_array_equal(aug[key].numpy(), expected)


def test_frame_store_caches_decoded_frames(bow_folder: Path) -> None:
    store = _store(bow_folder, cache=2)
    a = store.read(0, ["RATE"])
    store.read(0, ["RATE"], window=(0, 0, 4, 4))
    assert store.misses == 1 and store.hits >= 1
    store.read(1, ["RATE"])
    store.read(2, ["RATE"])  # evicts frame 0 (capacity 2)
    store.read(0, ["RATE"])
    assert store.misses == 4
    np.testing.assert_array_equal(store.read(0, ["RATE"]), a)
    assert store.units(["RATE"]) == ["mm h-1"]


# ----------------------------------------------------------------------------------------- sequences
@pytest.fixture(scope="module")
def nowcast_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    times = event_times(1, 14)
    rng = np.random.default_rng(2)
    dbz = rng.uniform(-32, 60, (len(times), 16, 16)).round(1)
    for k in range(len(times)):
        dbz[k, 0, 0] = 10.0 + k  # the frame number is readable in pixel (0, 0)
    root = write_radar_folder(tmp_path_factory.mktemp("nowcast"), times, {"DBZH": dbz}, app="nowcast_reflectivity")
    (root / "radar" / f"{_stamp(times[6])}.h5").unlink()  # a gap in the middle
    return root


def test_sequences_refuse_gaps(nowcast_folder: Path) -> None:
    store = _store(nowcast_folder)
    assert len(store) == 13
    stats = _stats_for(store, ["DBZH"], ["clip_dbz"])
    ds = SequenceDataset(
        store, np.arange(len(store)), ["DBZH"], 3, 2, normalization=stats, patch=PatchSettings(patch_size=None)
    )
    # frames 0-5 and 7-13 (store indices 0-5, 6-12): windows of 5 fit 2 + 3 times
    assert len(ds) == 5
    step = np.timedelta64(5, "m")
    for w in range(ds.num_windows):
        frames = np.concatenate([ds.input_frames[w], ds.target_frames[w]])
        assert (np.diff(store.times[frames]) == step).all()
    s = ds[0]
    assert s["inputs"].shape == (3, 16, 16) and s["target"].shape == (2, 16, 16) and s["mask"].shape == (2, 16, 16)
    assert s["inputs"].dtype == torch.float32 and s["target"].dtype == torch.float32
    # frame numbers in pixel (0, 0): inputs 0, 1, 2 and targets 3, 4, back through the target transform
    back = stats.denormalize(s["target"][:, :1, :1].numpy())
    np.testing.assert_allclose(back[:, 0, 0], [13.0, 14.0], atol=1e-4)
    np.testing.assert_allclose(
        stats.denormalize(s["inputs"][:, :1, :1].numpy())[:, 0, 0], [10.0, 11.0, 12.0], atol=1e-4
    )
    assert s["time"].item() == (T0 + timedelta(minutes=10) - datetime(1970, 1, 1)).total_seconds()
    assert ds.channel_names == ["DBZH_t-10min", "DBZH_t-5min", "DBZH_t+0min"]
    assert ds.target_names == ["DBZH_t+5min", "DBZH_t+10min"]
    # windows never leave the frames given (one split)
    assert len(sequence_windows(store.times, np.arange(3), 5, step)) == 0


# ----------------------------------------------------------------------------------------- regression
def test_pixel_regression_samples(tmp_path: Path) -> None:
    times = event_times(1, 3, step_minutes=15)
    rng = np.random.default_rng(4)
    chans = {c: rng.uniform(200, 290, (3, 16, 16)) for c in ("IR_108", "WV_062", "IR_120")}
    chans["VIS_006"] = rng.uniform(0, 1, (3, 16, 16))
    rate = rng.gamma(0.5, 2.0, (3, 16, 16))
    rate[:, :, 12:] = np.nan  # outside radar coverage
    root = write_satellite_folder(tmp_path, times, chans, rate)
    store = _store(root)
    names = list(chans)
    stats = _stats_for(store, names, ["none"] * 4)
    tstats = _stats_for(store, ["RATE"], ["log1p"], source="targets")
    ds = PixelRegressionDataset(
        store, [0, 1, 2], names, ["RATE"], stats, target_normalization=tstats, patch=PatchSettings(patch_size=None)
    )
    s = ds[1]
    assert s["inputs"].shape == (4, 16, 16) and s["target"].shape == (1, 16, 16)
    assert s["target"].dtype == torch.float32
    np.testing.assert_array_equal(s["mask"][0].numpy(), np.isfinite(rate[1]))
    back = tstats.denormalize(s["target"].numpy())[0]
    np.testing.assert_allclose(back[:, :12], rate[1][:, :12], rtol=1e-5, atol=1e-5)
    assert store.units(names) == ["K", "K", "K", "1"]


# ----------------------------------------------------------------------------------------- classification
def test_classification_samples(tmp_path: Path) -> None:
    root = write_webcam_folder(tmp_path, event_times(1, 3, step_minutes=60))
    rec = image_records(root / "labels.csv")
    labels = class_indices(rec.snow_class, ["none", "partial", "full"])
    stats = NormalizationStats(("red", "green", "blue"), ("1", "1", "1"), ("none",) * 3, (128.0,) * 3, (64.0,) * 3)
    store = ImageStore(rec, image_size=16, cache_images=4)
    ds = ClassificationDataset(store, np.arange(len(rec)), labels, stats, train=True, flips=True)
    assert len(ds) == 6
    s = ds[(0, 3)]
    assert set(s) == {"inputs", "target", "time"}
    assert s["inputs"].shape == (3, 16, 16) and s["inputs"].dtype == torch.float32
    assert s["target"].dtype == torch.int64 and s["target"].shape == () and s["target"].item() == labels[3]
    # red channel of record 3: grey level 60 + 80 * class, JPEG-compressed
    red = s["inputs"][0].numpy() * 64.0 + 128.0
    assert abs(red.mean() - (60 + 80 * labels[3])) < 4
    # the sky stays on top (no vertical flip)
    blue = s["inputs"][2].numpy() * 64.0 + 128.0
    assert blue[:6].mean() > blue[-6:].mean() + 150
