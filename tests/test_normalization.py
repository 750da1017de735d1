"""Normalisation: transform goldens, streaming statistics, round trips and persistence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from meteovision.datasets.normalization import (
    DBR_ZERO_VALUE,
    NormalizationError,
    NormalizationStats,
    apply_transform,
    compute_stats,
    invert_transform,
)


def _stats(**kw: object) -> NormalizationStats:
    base: dict[str, object] = {
        "channel_names": ("RATE", "DBZH"),
        "channel_units": ("mm h-1", "dBZ"),
        "transforms": ("log10_rain", "clip_dbz"),
        "mean": (-12.0, 10.0),
        "std": (4.0, 15.0),
    }
    base.update(kw)
    return NormalizationStats(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("as_torch", [False, True])
def test_transform_goldens(as_torch: bool) -> None:
    rain = np.array([0.0, 0.05, 0.1, 1.0, 10.0, np.nan], dtype=np.float32)
    dbz = np.array([-32.0, -10.0, 0.0, 35.5, 80.0, np.nan], dtype=np.float32)

    def run(x: np.ndarray, name: str) -> np.ndarray:
        if as_torch:
            return apply_transform(torch.from_numpy(x), name).numpy()
        return np.asarray(apply_transform(x, name))

    np.testing.assert_allclose(run(rain, "log10_rain"), [-15.0, -15.0, -10.0, 0.0, 10.0, np.nan], atol=1e-5)
    np.testing.assert_allclose(
        run(rain, "log1p"), [0, math.log(1.05), math.log(1.1), math.log(2), math.log(11), np.nan], rtol=1e-6
    )
    np.testing.assert_allclose(run(dbz, "clip_dbz"), [-10.0, -10.0, 0.0, 35.5, 70.0, np.nan])
    np.testing.assert_array_equal(run(dbz, "none"), dbz)
    assert pytest.approx(-15.0) == DBR_ZERO_VALUE


def test_inverse_transforms() -> None:
    z = np.array([-15.0, -10.0, 0.0, 10.0, 20.0])
    np.testing.assert_allclose(invert_transform(z, "log10_rain"), [0.0, 0.1, 1.0, 10.0, 100.0], rtol=1e-9)
    np.testing.assert_allclose(invert_transform(np.log1p([0.0, 3.0]), "log1p"), [0.0, 3.0])
    # a model may output a negative log1p value: the inverse stays a non-negative rain rate
    assert invert_transform(np.array([-0.5]), "log1p")[0] == 0.0
    tz = invert_transform(torch.tensor([-15.0, 10.0]), "log10_rain")
    np.testing.assert_allclose(tz.numpy(), [0.0, 10.0], rtol=1e-6)


@pytest.mark.parametrize("as_torch", [False, True])
def test_normalize_denormalize_round_trip(as_torch: bool) -> None:
    rng = np.random.default_rng(1)
    rain = rng.gamma(0.8, 3.0, (5, 7)) + 0.1  # above the dBR threshold: lossless
    rain[0, :3] = 0.0  # no rain maps to the zero value and back to 0
    dbz = rng.uniform(-10, 70, (5, 7))
    x = np.stack([rain, dbz]).astype(np.float32)
    stats = _stats()
    xin = torch.from_numpy(x) if as_torch else x
    z = stats.normalize(xin, channel_axis=0)
    back = stats.denormalize(z, channel_axis=0)
    back_np = back.numpy() if isinstance(back, torch.Tensor) else back
    z_np = z.numpy() if isinstance(z, torch.Tensor) else z
    assert z_np.dtype == np.float32
    np.testing.assert_allclose(back_np, x, rtol=2e-5, atol=1e-5)
    # hand-computed: R = 1 mm/h -> 0 dBR -> (0 - -12) / 4 = 3
    one = np.ones((2, 1, 1), dtype=np.float32)
    one[1] = 25.0
    np.testing.assert_allclose(stats.normalize(one)[:, 0, 0], [3.0, 1.0])


def test_nan_becomes_fill_value() -> None:
    x = np.array([[[np.nan, 1.0]], [[np.nan, 25.0]]], dtype=np.float32)
    z = _stats().normalize(x)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z[:, 0, 0], [0.0, 0.0])
    zt = _stats(fill_value=-3.0).normalize(torch.from_numpy(x))
    assert zt[0, 0, 0].item() == -3.0


def test_stacked_time_steps_repeat_the_statistics() -> None:
    stats = _stats()
    frames = np.random.default_rng(2).uniform(0.2, 30, (3, 2, 4, 4)).astype(np.float32)
    stacked = stats.normalize(frames.reshape(6, 4, 4), channel_axis=0)
    per_frame = np.stack([stats.normalize(f) for f in frames]).reshape(6, 4, 4)
    np.testing.assert_array_equal(stacked, per_frame)
    np.testing.assert_array_equal(stats.normalize(frames, channel_axis=1).reshape(6, 4, 4), per_frame)
    with pytest.raises(NormalizationError, match="multiple"):
        stats.normalize(np.zeros((3, 2, 2), dtype=np.float32))


def test_compute_stats_streams_and_ignores_nan() -> None:
    f1 = np.array([[[1.0, 2.0]], [[0.0, np.nan]]])
    f2 = np.array([[[3.0, np.nan]], [[np.e - 1, np.e**2 - 1]]])
    stats = compute_stats([f1, f2], ["a", "b"], ["1", "mm h-1"], ["none", "log1p"])
    # channel a: 1, 2, 3 -> mean 2, population std sqrt(2/3); channel b (log1p): 0, 1, 2 -> same
    assert stats.mean == pytest.approx((2.0, 1.0))
    assert stats.std == pytest.approx((math.sqrt(2 / 3), math.sqrt(2 / 3)))
    assert stats.counts == (3, 3)


def test_compute_stats_matches_one_pass_in_float64() -> None:
    rng = np.random.default_rng(3)
    frames = [1e6 + rng.normal(0, 0.01, (1, 50, 50)) for _ in range(20)]  # large offset, tiny spread
    stats = compute_stats(frames, ["t"], ["K"])
    every = np.concatenate([f.ravel() for f in frames])
    assert stats.mean[0] == pytest.approx(every.mean(), rel=1e-12)
    assert stats.std[0] == pytest.approx(every.std(), rel=1e-6)


def test_constant_channel_keeps_unit_std_and_empty_channel_fails() -> None:
    stats = compute_stats([np.full((1, 3, 3), 5.0)], ["q"], ["1"])
    assert stats.std == (1.0,) and stats.mean == (5.0,)
    with pytest.raises(NormalizationError, match="no valid value"):
        compute_stats([np.full((1, 3, 3), np.nan)], ["q"], ["1"])


def test_json_round_trip(tmp_path: Path) -> None:
    stats = _stats(counts=(10, 12))
    path = stats.save_json(tmp_path / "sub" / "normalization.json")
    loaded = NormalizationStats.load_json(path)
    assert loaded == stats
    assert loaded.to_dict() == stats.to_dict()
    assert NormalizationStats.from_dict(json.loads(path.read_text())) == stats
    assert not list((tmp_path / "sub").glob(".*"))  # no temporary file left behind


def test_select_reorders_channels() -> None:
    sub = _stats().select(["DBZH"])
    assert sub.channel_names == ("DBZH",) and sub.mean == (10.0,) and sub.transforms == ("clip_dbz",)
    with pytest.raises(NormalizationError, match="no statistics"):
        _stats().select(["TH"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": (1.0,)}, "mean has 1 entries"),
        ({"transforms": ("log1p", "sqrt")}, "unknown transform 'sqrt'"),
        ({"std": (1.0, 0.0)}, "not usable"),
    ],
)
def test_bad_statistics_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(NormalizationError, match=message):
        _stats(**change)


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(NormalizationError, match="not found"):
        NormalizationStats.load_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"channel_names": ["a"]}')
    with pytest.raises(NormalizationError, match=r"bad\.json.*lack"):
        NormalizationStats.load_json(bad)


def test_union_appends_the_new_channels_of_other_statistics() -> None:
    inputs = NormalizationStats(("RATE", "QIND"), ("mm h-1", "1"), ("log10_rain", "none"), (1.0, 0.5), (2.0, 0.1),
                                counts=(10, 10))
    target = NormalizationStats(("RATE", "DBZH"), ("mm h-1", "dBZ"), ("log1p", "none"), (9.0, 20.0), (9.0, 5.0))
    joint = inputs.union(target)
    assert joint.channel_names == ("RATE", "QIND", "DBZH")
    assert joint.transforms == ("log10_rain", "none", "none")  # RATE keeps the inputs' statistics
    assert joint.mean == (1.0, 0.5, 20.0) and joint.std == (2.0, 0.1, 5.0)
    assert joint.counts == ()
    assert inputs.union(inputs) == inputs and inputs.union(inputs).counts == (10, 10)
