"""Webcam sample data: rendered landscape photos with depth-aware fog and ground snow.

Each camera has its own scene (horizon, far and mid ridges, a ground plane seen in
perspective, a road, trees, a pole), so every pixel has a depth. Fog follows Koschmieder:
I = J t + A (1 - t) with transmission t = exp(-3 d / V) for visibility V, so a low V hides
the far ridge first and the near ground last. Snow lies on the ground plane (none / partial
patches off the road / full). Hard negatives: bright sun (bright, saturated whitish sky and
glare, never snow), overcast (low contrast without fog) and dusk (dark, noisy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np

from meteovision.core.applications import SNOW_CLASSES, VISIBILITY_BINS_M, VISIBILITY_CLASSES
from meteovision.datasets.synthetic.common import (
    Manifest,
    OutputFolder,
    SampleSettings,
    event_bounds,
    event_calendar,
    iso,
    make_rng,
    stamp,
)
from meteovision.datasets.synthetic.fields import powerlaw_noise, smoothstep
from meteovision.datasets.synthetic.writers import write_jpeg, write_labels_csv

LOG = logging.getLogger(__name__)

WEBCAM_STEP_MINUTES = 30
VISIBILITY_RANGE_M = (50.0, 20000.0)
CONDITIONS = ("normal", "bright_sun", "overcast", "dusk")
FOG_SKY_DEPTH_M = 2000.0  # the sky is seen through about this much fog

# material codes
SKY, FAR, MID, GROUND, ROAD, TREE, TRUNK, POLE = range(8)


def visibility_class(visibility_m: float) -> int:
    """Index into VISIBILITY_CLASSES."""
    return int(np.searchsorted(VISIBILITY_BINS_M, visibility_m, side="right"))


@dataclass(frozen=True)
class Tree:
    x_m: float
    depth_m: float
    height_m: float
    crown_m: float


@dataclass(frozen=True)
class CameraScene:
    """One fixed camera: its viewpoint and the objects in its view."""

    name: str
    height: int
    width: int
    horizon: float
    cam_height_m: float
    focal_px: float
    far_ridge: np.ndarray  # [W] top row of the far ridge
    far_depth_m: float
    mid_ridge: np.ndarray  # [W] top row of the mid ridge
    mid_depth_m: float
    road_x_m: float
    road_half_m: float
    road_drift: float  # lateral metres per metre of depth
    trees: tuple[Tree, ...]
    pole: Tree
    ground_rgb: tuple[float, float, float]
    texture: np.ndarray  # [H, W] N(0, 1), fixed surface texture
    snow_pattern: np.ndarray  # [H, W] N(0, 1), where patchy snow lies first

    @cached_property
    def geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """(material [H, W] int, depth [H, W] metres, inf for sky), painter's order far to near."""
        h, w = self.height, self.width
        rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
        cols = np.arange(w, dtype=np.float64)[None, :] + 0.5
        material = np.full((h, w), SKY, dtype=np.int8)
        depth = np.full((h, w), np.inf)
        far = rows >= self.far_ridge[None, :]
        material[far] = FAR
        depth[far] = self.far_depth_m
        mid = rows >= self.mid_ridge[None, :]
        material[mid] = MID
        depth[mid] = self.mid_depth_m
        below = rows > self.horizon
        ground_depth = np.where(
            below, self.cam_height_m * self.focal_px / np.maximum(rows - self.horizon, 1e-6), np.inf
        )
        ground_depth = np.broadcast_to(ground_depth, (h, w))
        ground = np.broadcast_to(below, (h, w)) & (ground_depth < self.mid_depth_m)
        material[ground] = GROUND
        depth[ground] = ground_depth[ground]
        finite_depth = np.where(ground, ground_depth, 0.0)
        lateral = (cols - w / 2.0) * finite_depth / self.focal_px
        road = ground & (np.abs(lateral - self.road_x_m - self.road_drift * finite_depth) < self.road_half_m)
        material[road] = ROAD
        for tree in sorted(self.trees, key=lambda tr: -tr.depth_m):
            self._draw_tree(material, depth, rows, cols, tree)
        self._draw_pole(material, depth, rows, cols, self.pole)
        return material, depth

    def _project(self, x_m: float, y_m: float, depth_m: float) -> tuple[float, float]:
        """Image (row, col) of the world point x across, y up, at depth."""
        return (
            self.horizon + (self.cam_height_m - y_m) * self.focal_px / depth_m,
            self.width / 2.0 + x_m * self.focal_px / depth_m,
        )

    def _draw_tree(
        self, material: np.ndarray, depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, tree: Tree
    ) -> None:
        scale = self.focal_px / tree.depth_m
        base_r, col_c = self._project(tree.x_m, 0.0, tree.depth_m)
        crown_r, _ = self._project(tree.x_m, 0.62 * tree.height_m, tree.depth_m)
        ry = max(0.38 * tree.height_m * scale, 0.8)
        rx = max(tree.crown_m * scale, 0.8)
        crown = ((rows - crown_r) / ry) ** 2 + ((cols - col_c) / rx) ** 2 <= 1.0
        trunk_half = max(0.25 * scale, 0.5)
        trunk = (np.abs(cols - col_c) <= trunk_half) & (rows >= crown_r) & (rows <= base_r)
        trunk = np.broadcast_to(trunk, material.shape) & ~crown
        crown = np.broadcast_to(crown, material.shape)
        material[trunk] = TRUNK
        depth[trunk] = tree.depth_m
        material[crown] = TREE
        depth[crown] = tree.depth_m

    def _draw_pole(
        self, material: np.ndarray, depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, pole: Tree
    ) -> None:
        base_r, col_c = self._project(pole.x_m, 0.0, pole.depth_m)
        top_r, _ = self._project(pole.x_m, pole.height_m, pole.depth_m)
        half = max(0.15 * self.focal_px / pole.depth_m, 0.5)
        body = (np.abs(cols - col_c) <= half) & (rows >= top_r) & (rows <= base_r)
        body = np.broadcast_to(body, material.shape)
        material[body] = POLE
        depth[body] = pole.depth_m


def make_camera(rng: np.random.Generator, name: str, height: int, width: int) -> CameraScene:
    horizon = height * rng.uniform(0.36, 0.48)
    focal = width * rng.uniform(0.9, 1.3)
    cam_h = rng.uniform(4.0, 12.0)
    x = np.linspace(0.0, 1.0, width)

    def ridge(amplitude: float, smooth: float) -> np.ndarray:
        profile = np.zeros(width)
        for k in range(1, 6):
            profile += rng.uniform(0.3, 1.0) / k**smooth * np.sin(2 * np.pi * (k * x + rng.uniform()))
        profile = (profile - profile.min()) / max(float(np.ptp(profile)), 1e-9)
        return horizon - amplitude * (0.25 + 0.75 * profile)

    far_ridge = ridge(height * rng.uniform(0.1, 0.22), 1.0)
    mid_ridge = np.maximum(ridge(height * rng.uniform(0.04, 0.12), 1.5), far_ridge + 1.0)
    # the ridge only spans part of the view: flat horizon elsewhere
    span = smoothstep((np.abs(x - rng.uniform(0.3, 0.7)) - rng.uniform(0.2, 0.4)) / -0.1)
    mid_ridge = horizon - (horizon - mid_ridge) * span
    trees = tuple(
        Tree(
            x_m=rng.uniform(-1.0, 1.0) * d * width / (2.2 * focal),
            depth_m=d,
            height_m=rng.uniform(6.0, 16.0),
            crown_m=rng.uniform(1.5, 3.5),
        )
        for d in np.exp(rng.uniform(np.log(25.0), np.log(400.0), int(rng.integers(3, 7))))
    )
    pole_d = rng.uniform(15.0, 60.0)
    pole = Tree(
        x_m=rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.8) * pole_d * width / (2.0 * focal),
        depth_m=pole_d,
        height_m=rng.uniform(6.0, 10.0),
        crown_m=0.0,
    )
    ground = (
        (rng.uniform(0.22, 0.32), rng.uniform(0.34, 0.44), rng.uniform(0.12, 0.2))
        if rng.random() < 0.6
        else (rng.uniform(0.36, 0.44), rng.uniform(0.3, 0.36), rng.uniform(0.18, 0.24))
    )
    return CameraScene(
        name=name,
        height=height,
        width=width,
        horizon=horizon,
        cam_height_m=cam_h,
        focal_px=focal,
        far_ridge=far_ridge,
        far_depth_m=rng.uniform(4000.0, 12000.0),
        mid_ridge=mid_ridge,
        mid_depth_m=rng.uniform(700.0, 2500.0),
        road_x_m=rng.uniform(-6.0, 6.0),
        road_half_m=rng.uniform(2.5, 4.0),
        road_drift=rng.uniform(-0.08, 0.08),
        trees=trees,
        pole=pole,
        ground_rgb=ground,
        texture=powerlaw_noise(rng, (height, width), beta=-2.2),
        snow_pattern=powerlaw_noise(rng, (height, width), beta=-3.0),
    )


@dataclass(frozen=True)
class Shot:
    """What one image shows: the labels plus the lighting it was taken in."""

    snow: int  # index into SNOW_CLASSES
    visibility_m: float
    condition: str
    light: float  # overall illumination multiplier
    sun: tuple[float, float]  # glare centre as fractions (of the horizon's row, of the width)
    noise_seed: int


SNOW_RGB = np.array([0.9, 0.92, 0.96])


def _albedo(cam: CameraScene, material: np.ndarray, snow: int) -> np.ndarray:
    """Surface colour [H, W, 3] before lighting and fog."""
    h, w = material.shape
    tex = cam.texture[..., None]
    colours = {
        FAR: np.array([0.34, 0.4, 0.44]),
        MID: np.array([0.16, 0.26, 0.14]),
        GROUND: np.array(cam.ground_rgb),
        ROAD: np.array([0.27, 0.27, 0.29]),
        TREE: np.array([0.07, 0.19, 0.07]),
        TRUNK: np.array([0.26, 0.18, 0.1]),
        POLE: np.array([0.32, 0.32, 0.34]),
    }
    out = np.zeros((h, w, 3))
    for code, rgb in colours.items():
        out[material == code] = rgb
    out = out * (1.0 + 0.18 * tex)
    ground = material == GROUND
    if snow == 2:
        white = SNOW_RGB * (0.95 + 0.04 * tex)
        out = np.where(ground[..., None], white, out)
        out = np.where((material == FAR)[..., None], 0.9 * white, out)
        out = np.where((material == MID)[..., None], 0.45 * out + 0.5 * white, out)
        flakes = (material == TREE) & (cam.texture > 0.6)
        out = np.where(flakes[..., None], 0.8 * white, out)
    elif snow == 1:
        patches = ground & (cam.snow_pattern > 0.0)
        out = np.where(patches[..., None], SNOW_RGB * (0.93 + 0.04 * tex), out)
        rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
        caps = (material == FAR) & (rows < cam.far_ridge[None, :] + 0.35 * (cam.horizon - cam.far_ridge[None, :]))
        out = np.where(caps[..., None], 0.85 * SNOW_RGB, out)
    return np.asarray(out)


def _sky(cam: CameraScene, condition: str, light: float) -> tuple[np.ndarray, np.ndarray]:
    """(sky colour [H, W, 3], airlight colour [3]) for the lighting condition."""
    h, w = cam.height, cam.width
    elevation = np.clip(1.0 - (np.arange(h, dtype=np.float64) + 0.5) / max(cam.horizon, 1.0), 0.0, 1.0)
    elevation = np.broadcast_to(elevation[:, None, None], (h, w, 1))
    if condition == "bright_sun":
        top, low, air = (0.72, 0.82, 0.97), (0.97, 0.97, 0.98), (0.92, 0.93, 0.95)
    elif condition == "overcast":
        top, low, air = (0.7, 0.72, 0.75), (0.76, 0.77, 0.79), (0.76, 0.77, 0.79)
    elif condition == "dusk":
        top, low, air = (0.12, 0.14, 0.3), (0.62, 0.38, 0.26), (0.45, 0.38, 0.38)
    else:
        top, low, air = (0.33, 0.52, 0.88), (0.72, 0.8, 0.92), (0.8, 0.82, 0.85)
    sky = np.array(low) + (np.array(top) - np.array(low)) * elevation
    scale = light if condition != "dusk" else 1.0
    return sky * scale, np.array(air) * light


def render(cam: CameraScene, shot: Shot) -> np.ndarray:
    """The photo as float RGB [H, W, 3] in [0, 1] (before sensor noise and JPEG)."""
    material, depth = cam.geometry
    albedo = _albedo(cam, material, shot.snow)
    sky, air = _sky(cam, shot.condition, shot.light)
    lit = albedo * shot.light
    if shot.condition == "overcast":
        # diffuse light, no shadows: the scene itself has little contrast
        lit = lit.mean(axis=(0, 1), keepdims=True) + 0.5 * (lit - lit.mean(axis=(0, 1), keepdims=True))
    elif shot.condition == "bright_sun":
        lit = lit * (1.0 + 0.25 * cam.texture[..., None])  # hard shadows and highlights
    is_sky = material == SKY
    t_ground = np.exp(-3.0 * np.where(is_sky, 0.0, depth) / shot.visibility_m)
    t_sky = np.exp(-3.0 * FOG_SKY_DEPTH_M / shot.visibility_m)
    image = np.where(
        is_sky[..., None],
        sky * t_sky + air * (1.0 - t_sky),
        lit * t_ground[..., None] + air * (1.0 - t_ground[..., None]),
    )
    if shot.condition == "bright_sun":
        rows = np.arange(cam.height, dtype=np.float64)[:, None] + 0.5
        cols = np.arange(cam.width, dtype=np.float64)[None, :] + 0.5
        r2 = (rows - shot.sun[0] * cam.horizon) ** 2 + (cols - shot.sun[1] * cam.width) ** 2
        glare = 0.9 * np.exp(-r2 / (2 * (0.1 * cam.width) ** 2)) + 0.25 * np.exp(-r2 / (2 * (0.4 * cam.width) ** 2))
        image = image + glare[..., None] * np.array([1.0, 0.97, 0.9])
    return np.asarray(np.clip(image, 0.0, 1.0))


def to_uint8(image: np.ndarray, shot: Shot) -> np.ndarray:
    """Add sensor noise (stronger in the dark) and quantise."""
    sigma = 0.025 if shot.condition == "dusk" else 0.01
    noise = np.random.default_rng(shot.noise_seed).normal(0.0, sigma, image.shape)
    return np.asarray(np.clip(np.rint((image + noise) * 255.0), 0, 255).astype(np.uint8))


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB image (any scale)."""
    return np.asarray(image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114, dtype=np.float64)


def rms_contrast(image: np.ndarray) -> float:
    """Standard deviation of luminance over the whole image."""
    return float(luminance(image).std())


def ground_contrast(image: np.ndarray, cam: CameraScene) -> float:
    """Mean horizontal luminance step between neighbouring ground/road pixels.

    Neighbours on one row of the ground plane share a depth, so fog scales their difference
    by exactly t = exp(-3 d / V): this contrast rises strictly with visibility.
    """
    material, _ = cam.geometry
    flat = (material == GROUND) | (material == ROAD)
    pair = flat[:, 1:] & flat[:, :-1]
    steps = np.abs(np.diff(luminance(image), axis=1))
    return float(steps[pair].mean())


def _reflect(value: float, low: float, high: float) -> float:
    span = high - low
    y = (value - low) % (2 * span)
    return low + (y if y <= span else 2 * span - y)


def plan_shots(
    rng: np.random.Generator, n_events: int, n_cameras: int, n_frames: int
) -> dict[tuple[int, int], list[Shot]]:
    """Label sequences per (event, camera).

    Snow persists and changes one class at a time (a Markov chain whose starts are balanced
    over the (event, camera) pairs); log-visibility is a reflecting random walk, which keeps
    it log-uniform on 50 m - 20 km; lighting is drawn per image, bright sun only without snow.
    """
    pairs = [(e, c) for e in range(n_events) for c in range(n_cameras)]
    starts = rng.permutation([i % len(SNOW_CLASSES) for i in range(len(pairs))])
    lo, hi = np.log10(VISIBILITY_RANGE_M[0]), np.log10(VISIBILITY_RANGE_M[1])
    plans: dict[tuple[int, int], list[Shot]] = {}
    for (e, c), start in zip(pairs, starts, strict=True):
        snow = int(start)
        log_v = rng.uniform(lo, hi)
        shots = []
        for _ in range(n_frames):
            if rng.random() < 0.12:
                snow = int(np.clip(snow + rng.choice([-1, 1]), 0, len(SNOW_CLASSES) - 1))
            log_v = _reflect(log_v + rng.normal(0.0, 0.3), lo, hi)
            vis = float(10.0**log_v)
            condition = str(rng.choice(["normal", "overcast", "dusk"], p=[0.55, 0.28, 0.17]))
            if snow == 0 and vis >= 1000.0 and rng.random() < 0.4:
                condition = "bright_sun"
            light = {
                "normal": rng.uniform(0.85, 1.1),
                "bright_sun": rng.uniform(1.3, 1.6),
                "overcast": rng.uniform(0.6, 0.8),
                "dusk": rng.uniform(0.15, 0.35),
            }[condition]
            shots.append(
                Shot(
                    snow=snow,
                    visibility_m=vis,
                    condition=condition,
                    light=float(light),
                    sun=(rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.9)),
                    noise_seed=int(rng.integers(0, 2**31)),
                )
            )
        plans[(e, c)] = shots
    return plans


def camera_names(n: int) -> list[str]:
    return [f"cam{i + 1:02d}" for i in range(n)]


def generate(app: str, folder: OutputFolder, seed: int, settings: SampleSettings) -> Manifest:
    if app not in ("webcam_snow", "webcam_visibility"):
        raise ValueError(f"webcam generator cannot write app {app!r}")
    names = camera_names(settings.cameras)
    cameras = [
        make_camera(make_rng(seed, app, "camera", i), name, settings.image_height, settings.image_width)
        for i, name in enumerate(names)
    ]
    calendar = event_calendar(
        make_rng(seed, app, "calendar"),
        settings.events,
        settings.frames_per_event,
        WEBCAM_STEP_MINUTES,
        first_day=datetime(2023, 1, 9),
        hours=(7, 18),
    )
    plans = plan_shots(make_rng(seed, app, "labels"), settings.events, settings.cameras, settings.frames_per_event)
    rows: list[dict[str, str]] = []
    for e, times in enumerate(calendar):
        for c, cam in enumerate(cameras):
            for time, shot in zip(times, plans[(e, c)], strict=True):
                image = to_uint8(render(cam, shot), shot)
                rel = f"images/{cam.name}_{stamp(time)}.jpg"
                write_jpeg(folder.file(*rel.split("/")), image, time, cam.name)
                rows.append(
                    {
                        "path": rel,
                        "camera": cam.name,
                        "time": iso(time),
                        "snow_class": SNOW_CLASSES[shot.snow],
                        "visibility_m": f"{shot.visibility_m:.0f}",
                    }
                )
        LOG.info("%s event %d: %d images", app, e, len(times) * len(cameras))
    rows.sort(key=lambda r: (r["time"], r["camera"]))
    write_labels_csv(folder.file("labels.csv"), rows)
    snow_app = app == "webcam_snow"
    return Manifest(
        app=app,
        seed=seed,
        time_step_minutes=WEBCAM_STEP_MINUTES,
        events=event_bounds(calendar),
        inputs=["images/*.jpg"],
        targets=None,
        labels_csv="labels.csv",
        input_variables=["R", "G", "B"],
        target_variable="snow_class" if snow_app else "visibility_m",
        class_names=list(SNOW_CLASSES if snow_app else VISIBILITY_CLASSES),
        settings=settings,
        extra={} if snow_app else {"class_edges_m": list(VISIBILITY_BINS_M)},
    )
