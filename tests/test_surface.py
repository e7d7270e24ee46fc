"""Surface points of a snapshot: back-projection, voxels, normals, visibility filter, cache refresh."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.field.snapshot import CameraView
from lerf_ros.query.surface import (
    SurfaceCache,
    SurfaceError,
    backproject,
    extract_surface,
    project,
    scaled_intrinsics,
    select_views,
)
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

from analytic_field import AnalyticSnapshot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=0, n_frames=16, width=96, height=72)


@pytest.fixture(scope="module")
def snap(scene):
    return AnalyticSnapshot(scene, GroundTruthTeacher(scene).encode_text, step=10)


def qcfg(**kw):
    base = dict(surface_stride=1, surface_max_views=16, max_candidate_points=50000)
    base.update(kw)
    return dataclasses.replace(preset("tiny").query, **base).check()


def test_backproject_then_project_returns_the_pixel_and_depth():
    rng = np.random.default_rng(0)
    K = np.array([[80.0, 0, 47.3], [0, 82.0, 35.9], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * np.array([1, 1, 1])
    if np.linalg.det(c2w[:3, :3]) < 0:
        c2w[:3, 0] *= -1
    c2w[:3, 3] = [0.3, -0.2, 1.0]
    depth = rng.uniform(0.5, 3.0, size=(7, 9))
    pts = backproject(depth, K, c2w).reshape(-1, 3)
    col, row, z = project(pts, K, c2w)
    v, u = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
    np.testing.assert_array_equal(col, u.ravel())
    np.testing.assert_array_equal(row, v.ravel())
    np.testing.assert_allclose(z, depth.ravel(), rtol=1e-10)


def test_scaled_intrinsics_scale_continuous_image_coordinates():
    K = np.array([[100.0, 0, 64.0], [0, 100.0, 48.0], [0, 0, 1]])
    K2 = scaled_intrinsics(K, 128, 96, 32, 24)
    p = np.array([0.1, -0.05, 1.2])
    uv = K @ p
    uv2 = K2 @ p
    np.testing.assert_allclose(uv2[:2] / uv2[2], (uv[:2] / uv[2]) / 4)


def test_select_views_spreads_and_bounds():
    cams = [None] * 50
    idx = select_views(cams, 5)
    assert idx == [0, 12, 24, 37, 49]
    assert select_views(cams[:3], 5) == [0, 1, 2]


def test_surface_beyond_the_scene_box_is_not_scored(scene):
    """A snapshot that knows its scene box keeps only the points within surface_max_box half-extents
    of its centre; 0 keeps them all."""
    snap = AnalyticSnapshot(scene, GroundTruthTeacher(scene).encode_text, step=10)
    everything = extract_surface(snap, qcfg())
    center = everything.xyz.mean(0).astype(np.float64)
    half = 0.5 * float(np.abs(everything.xyz - center).max())  # so that a good share lies outside
    snap.scene_center, snap.scene_scale = center, half / 1.5
    boxed = extract_surface(snap, qcfg(surface_max_box=1.5))
    assert 0 < len(boxed) < len(everything)
    assert np.all(np.abs(boxed.xyz - center) <= half + 1e-4)
    assert boxed.stats["in_box_points"] < boxed.stats["rendered_points"]
    assert len(extract_surface(snap, qcfg(surface_max_box=0.0))) == len(everything)


def test_surface_lies_on_the_true_geometry_with_camera_facing_normals(scene, snap):
    cfg = qcfg()
    surf = extract_surface(snap, cfg)
    assert 2000 < len(surf) <= cfg.max_candidate_points
    assert surf.xyz.dtype == np.float32 and surf.rgb.dtype == np.uint8 and surf.views.dtype == np.int32
    assert np.all(surf.views >= cfg.min_views)
    # Every point agrees with the exact depth of some camera that sees it: check with a full-resolution
    # render of camera 0 for the points that project inside it, unoccluded.
    cam = snap.cameras[0]
    _, depth, _ = scene.render_view(cam.c2w, K=cam.K, width=cam.width, height=cam.height, shadows=False)
    col, row, z = project(surf.xyz.astype(np.float64), cam.K, cam.c2w)
    inside = (z > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
    d = depth[row[inside], col[inside]]
    front = np.abs(d - z[inside]) < 0.05  # points on surfaces this camera sees
    assert front.mean() > 0.5
    err = np.abs(d - z[inside])[front]
    assert np.median(err) < cfg.voxel_size  # voxel centroids sit on the surface
    # Normals are unit and face the cameras that see them; the table top's normals point up.
    np.testing.assert_allclose(np.linalg.norm(surf.normals, axis=1), 1.0, atol=1e-5)
    to_cam = cam.c2w[:3, 3] - surf.xyz[inside][front]
    assert np.mean(np.sum(surf.normals[inside][front] * to_cam, axis=1) > 0) > 0.95
    obj_pts = np.zeros(len(surf), bool)
    for o in scene.objects:
        obj_pts |= o.contains(surf.xyz, margin=0.02)
    table_top = (
        (np.abs(surf.xyz[:, 2]) < 0.004) & ~obj_pts & (np.abs(surf.xyz[:, 0]) < 0.55) & (np.abs(surf.xyz[:, 1]) < 0.35)
    )
    assert table_top.sum() > 100
    assert np.median(surf.normals[table_top, 2]) > 0.95
    # Colours come from the renders (the table is not black).
    assert surf.rgb[table_top].mean() > 20


def test_visibility_filter_keeps_points_seen_by_min_views(snap):
    few = extract_surface(snap, qcfg(min_views=1, max_candidate_points=10**6))
    many = extract_surface(snap, qcfg(min_views=6, max_candidate_points=10**6))
    assert np.all(many.views >= 6)
    assert np.any(few.views < 6)
    assert len(many) < len(few)
    # Every point kept at min_views=6 is also kept at min_views=1, with the same count of views.
    key = lambda s: {tuple(np.round(p, 5)): v for p, v in zip(s.xyz.tolist(), s.views.tolist())}  # noqa: E731
    kf, km = key(few), key(many)
    assert set(km) <= set(kf)
    assert all(kf[p] == v for p, v in km.items())


def test_occluded_points_are_not_counted():
    """Two cameras look at a wall behind a box; the box hides part of the wall from one of them."""

    class TwoBoxes:
        step, clip_dim, device = 0, 4, torch.device("cpu")

        def __init__(self):
            K = np.array([[40.0, 0, 32.0], [0, 40.0, 32.0], [0, 0, 1]])
            # Camera looking along +x (OpenCV: z forward = world +x, x right = world -y, y down = world -z).
            R = np.stack([[0, -1, 0], [0, 0, -1], [1, 0, 0]], axis=1).astype(float)
            self.cameras = []
            for y in (0.0, 0.6):
                c2w = np.eye(4)
                c2w[:3, :3], c2w[:3, 3] = R, [0.0, y, 0.0]
                self.cameras.append(CameraView(K, c2w, 64, 64))

        def render(self, K, c2w, height, width):
            # Wall: plane x = 2. Box: x in [1, 1.2], |y| <= 0.15, |z| <= 0.15 (blocks camera 0 only).
            u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
            d = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ c2w[:3, :3].T  # world dirs
            o = c2w[:3, 3]
            t_wall = (2.0 - o[0]) / d[..., 0]
            t_box = (1.0 - o[0]) / d[..., 0]
            hit = t_box[..., None] * d + o
            in_box = (np.abs(hit[..., 1]) <= 0.15) & (np.abs(hit[..., 2]) <= 0.15)
            t = np.where(in_box, t_box, t_wall)  # z-depth: direction has camera z = 1
            return {
                "depth": torch.tensor(t, dtype=torch.float32),
                "rgb": torch.full((height, width, 3), 0.5),
                "accumulation": torch.ones(height, width),
            }

        def language(self, xyz, scale):
            raise AssertionError("not used")

    s = TwoBoxes()
    cfg = qcfg(min_views=2, voxel_size=0.02, visibility_tolerance=0.02, visibility_tolerance_rel=0.0)
    surf = extract_surface(s, cfg)
    wall = np.abs(surf.xyz[:, 0] - 2.0) < 0.01
    # Wall points right behind the box (as seen from camera 0) are seen by camera 1 only: dropped.
    behind = wall & (np.abs(surf.xyz[:, 1]) < 0.2) & (np.abs(surf.xyz[:, 2]) < 0.2)
    assert not np.any(behind)
    assert wall.sum() > 50 and np.all(surf.views == 2)
    one = extract_surface(s, dataclasses.replace(cfg, min_views=1))
    w1 = np.abs(one.xyz[:, 0] - 2.0) < 0.01
    assert np.any(w1 & (np.abs(one.xyz[:, 1]) < 0.2) & (np.abs(one.xyz[:, 2]) < 0.2))


def test_candidate_bound_keeps_the_best_observed_points_reproducibly(snap):
    cfg = qcfg(max_candidate_points=1500)
    a, b = extract_surface(snap, cfg), extract_surface(snap, cfg)
    assert len(a) == 1500
    np.testing.assert_array_equal(a.xyz, b.xyz)
    full = extract_surface(snap, qcfg(max_candidate_points=10**6))
    assert len(full) > 1500
    views = {p: v for p, v in zip(map(tuple, full.xyz.tolist()), full.views.tolist())}
    assert all(p in views for p in map(tuple, a.xyz.tolist()))
    # Nothing dropped was seen by more views than anything kept.
    kept = set(map(tuple, a.xyz.tolist()))
    dropped_max = max(v for p, v in views.items() if p not in kept)
    assert a.views.min() >= dropped_max


def test_no_cameras_is_an_error(snap):
    class NoCams:
        step, clip_dim, device, cameras = 0, 4, torch.device("cpu"), []

    with pytest.raises(SurfaceError, match="no keyframe cameras"):
        extract_surface(NoCams(), qcfg())


def test_cache_refreshes_only_when_training_moved_on(scene, snap):
    cfg = qcfg(refresh_every_steps=500, surface_max_views=4, surface_stride=2)
    cache = SurfaceCache(cfg)
    teacher = GroundTruthTeacher(scene)

    def at(step):
        return AnalyticSnapshot(scene, teacher.encode_text, step=step)

    s0, built = cache.get(at(100))
    assert built and s0.step == 100
    s1, built = cache.get(at(199))  # young field: keep until the step count doubles
    assert not built and s1 is s0
    s1, built = cache.get(at(200))  # doubled: refresh
    assert built and s1.step == 200
    s1, built = cache.get(at(400))
    assert built and s1.step == 400
    s1, built = cache.get(at(799))
    assert not built and s1.step == 400
    s1, built = cache.get(at(800))
    assert built and s1.step == 800
    s1, built = cache.get(at(1299))  # from here every refresh_every_steps: keep
    assert not built and s1.step == 800
    s2, built = cache.get(at(1300))  # 500 steps later: refresh
    assert built and s2.step == 1300 and s2 is not s1
    s3, built = cache.get(at(20))  # trainer reset: refresh
    assert built and s3.step == 20
    assert cache.peek() is s3
    t = cache.xyz_tensor(s3, torch.device("cpu"))
    assert t.shape == (len(s3), 3) and cache.xyz_tensor(s3, torch.device("cpu")) is t
