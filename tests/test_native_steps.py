"""Native-step training: one nowcast network on series of 5, 10 and 15 min, with the step as an input.

A source k leads per step gives windows of N past frames k leads apart; its frames fill leads k, 2k, ...
of the M targets and the other leads are masked; its Lucas-Kanade motion is divided by k (per lead);
the step is a constant channel between the frames and the motion, which the network's heads skip when
they take the last frame. Evaluation feeds a 10-min series to such a network as k = 2 and keeps its
even leads; a network without the step input refuses frames at another step.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from meteovision.core.errors import ConfigError
from meteovision.datasets.archive.datamodule import ArchiveDataModule
from meteovision.datasets.archive.events import MISSING, lead_windows
from meteovision.datasets.archive.sources import ArchiveError, SourceSettings
from meteovision.datasets.motion import MOTION_INPUT_SCALE, STEP_INPUT_SCALE_MINUTES
from meteovision.pipeline.checkpoints.metadata import NetworkMetadata
from meteovision.pipeline.checkpoints.networks import AdvectionNowcast, LucasKanadeAdvection, build_network
from meteovision.pipeline.training.tasks import NowcastTask
from meteovision.pipeline.verification.nowcast_methods import NetworkNowcast, NowcastError, NowcastInput
from tests.conftest import OdimField, OdimFile, OdimGrid, write_odim

GRID = OdimGrid(nx=24, ny=16)


def _times(n: int, step_min: int) -> np.ndarray:
    return np.datetime64("2024-01-02T12:00", "ns") + np.arange(n) * np.timedelta64(step_min, "m")


def test_lead_windows_keep_short_futures_and_mark_what_the_split_lacks() -> None:
    labels = np.array(["train"] * 6 + ["val"] * 2, dtype=object)
    rows = lead_windows(_times(8, 10), labels, "train", num_past=2, num_future=3, step_minutes=10.0, min_future=2)
    # frames 0..5 are train: past (0, 1) has futures 2, 3, 4; past (2, 3) has 4, 5 and 6 is validation
    assert rows.tolist() == [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, MISSING]]
    with pytest.raises(ValueError, match=r"min_future must be in 1\.\.3"):
        lead_windows(_times(8, 10), labels, "train", 2, 3, 10.0, 0)


def _series(folder: Path, n: int, step_min: int) -> None:
    """``n`` ODIM RATE files every ``step_min`` minutes; frame j holds j + 1 mm h-1 everywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        raw = np.full((GRID.ny, GRID.nx), 10 * (j + 1), dtype=np.uint8)  # gain 0.1
        t = (np.datetime64("2024-01-02T12:00") + np.timedelta64(step_min * j, "m")).astype(object)
        write_odim(folder / f"r_{t:%Y%m%d%H%M}.h5",
                   OdimFile([OdimField("RATE", raw, gain=0.1, nodata=255, undetect=0)], grid=GRID,
                            date=f"{t:%Y%m%d}", time=f"{t:%H%M%S}"))


def _dm(root: Path, *names: str, leads: int = 4, min_lead: float | None = 10.0) -> ArchiveDataModule:
    sources = [SourceSettings(name=n, glob=f"{n}/*.h5", variable="RATE") for n in names]
    return ArchiveDataModule(sources, str(root), time_step_minutes=5, num_input_frames=2, num_output_frames=leads,
                             patch_size=8, batch_size=2, val_fraction=0.2, test_fraction=0.2, guard_minutes=0,
                             transform="log1p", native_steps=True, min_lead_minutes=min_lead, flips=False,
                             rot90=False)


def test_a_ten_minute_source_fills_the_even_leads_and_gives_its_step(tmp_path: Path) -> None:
    _series(tmp_path / "five", 12, 5)
    _series(tmp_path / "ten", 12, 10)
    dm = _dm(tmp_path, "five", "ten")
    dm.setup("fit")
    assert [dm.summary["sources"][n]["step_minutes"] for n in ("five", "ten")] == [5.0, 10.0]
    ds = dm.dataset("train")
    ten = next(w for w, (src, _) in enumerate(ds.windows) if src == 1)
    _, frames = ds.windows[ten]
    sample = ds[(0, ten * ds.patches_per_window)]
    assert sample["inputs"].shape == (3, 8, 8)  # 2 frames + the step
    assert torch.all(sample["inputs"][2] == 10.0 / STEP_INPUT_SCALE_MINUTES)
    mask = sample["mask"][:, 0, 0].tolist()
    assert mask == [False, True, False, frames[3] != MISSING]  # leads +10 and +20 min only
    observed = dm.stats.denormalize(sample["target"][1:2, None], channel_axis=1)[0, 0]
    np.testing.assert_allclose(observed.numpy(), float(frames[2] + 1), rtol=1e-5)  # the frame after the past
    five = next(w for w, (src, _) in enumerate(ds.windows) if src == 0)
    assert torch.all(ds[(0, five * ds.patches_per_window)]["inputs"][2] == 5.0 / STEP_INPUT_SCALE_MINUTES)


def test_motion_is_given_per_lead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lucas-Kanade gives pixels per frame step; a 10-min source's are halved into pixels per 5-min lead."""
    import meteovision.datasets.archive.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "lucas_kanade", lambda past, what: np.full((2, *past.shape[1:]), 3.0))
    _series(tmp_path / "ten", 12, 10)
    dm = _dm(tmp_path, "ten")
    dm.motion_input = True
    dm.setup("fit")
    ds = dm.dataset("train")
    np.testing.assert_array_equal(ds.window_motion(0), 1.5)
    inputs = ds[(0, 0)]["inputs"]
    assert inputs.shape == (5, 8, 8)  # frames, step, motion
    np.testing.assert_allclose(inputs[3:].numpy(), 1.5 / MOTION_INPUT_SCALE)


@pytest.mark.parametrize(("step", "leads"), [(15, 4), (7, 12)])
def test_a_step_that_is_not_a_whole_number_of_leads_is_refused_by_name(tmp_path: Path, step: int,
                                                                        leads: int) -> None:
    _series(tmp_path / "odd", 12, step)
    with pytest.raises(ArchiveError, match=rf"source 'odd': its {step}-min step is not a whole multiple"):
        _dm(tmp_path, "odd", leads=leads).setup("fit")


def _step_network(head: str) -> AdvectionNowcast:
    meta = NetworkMetadata(model_name="unet", in_channels=2, out_channels=4, nowcast_head=head,
                           model_settings={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
                           variables_per_frame=1, max_speed=1.0, step_input=True)
    net = build_network(meta).eval()
    assert isinstance(net, AdvectionNowcast)
    return net


def test_the_heads_take_the_last_frame_not_the_step_channel() -> None:
    frames = torch.rand(1, 2, 32, 32) + 1.0
    step = torch.full((1, 1, 32, 32), 1.0)
    motion = torch.zeros(1, 2, 32, 32)
    motion[:, 0] = 2.0 / MOTION_INPUT_SCALE  # 2 px per lead eastward
    lk = _step_network("lk_advection")
    assert isinstance(lk, LucasKanadeAdvection)
    with torch.no_grad():
        out = lk(torch.cat([frames, step, motion], dim=1))
    np.testing.assert_allclose(out[0, 1, :, 8:].numpy(), np.roll(frames[0, 1].numpy(), 4, axis=1)[:, 8:], atol=1e-4)
    with torch.no_grad():  # untrained advection head: persistence of the last frame
        out = _step_network("advection")(torch.cat([frames, step], dim=1))
    np.testing.assert_allclose(out[0, 3].numpy(), frames[0, 1].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="cannot take the time step as input"):
        build_network(NetworkMetadata(model_name="unet", in_channels=2, out_channels=4, nowcast_head="residual",
                                      model_settings={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
                                      step_input=True))


def _nowcast(step_input: bool) -> NetworkNowcast:
    meta = SimpleNamespace(time_step_minutes=5.0, network=SimpleNamespace(step_input=step_input))
    return NetworkNowcast(SimpleNamespace(meta=meta, path=Path("net.ckpt")), tiling=None)  # type: ignore[arg-type]


def test_evaluation_feeds_a_coarser_series_as_whole_lead_steps() -> None:
    past = NowcastInput(np.ones((3, 4, 4), np.float32), time_step_minutes=10.0, pixel_size_m=2000.0)
    assert _nowcast(True).leads_per_step(past) == 2
    assert _nowcast(False).leads_per_step(past) == 1  # a 5-min network keeps its warning, as before
    odd = NowcastInput(np.ones((3, 4, 4), np.float32), time_step_minutes=7.0, pixel_size_m=2000.0)
    with pytest.raises(NowcastError, match=r"net\.ckpt makes leads every 5 min; frames every 7 min"):
        _nowcast(True).leads_per_step(odd)


def test_task_and_datamodule_must_agree_on_native_steps() -> None:
    task = NowcastTask("nowcast_precip", nowcast_head="lk_advection", max_speed=1.0, step_input=True)
    with pytest.raises(ConfigError, match=r"step_input is True but data.init_args.native_steps is False"):
        task.check_datamodule(SimpleNamespace(motion_input=True, native_steps=False))
    task.check_datamodule(SimpleNamespace(motion_input=True, native_steps=True))
