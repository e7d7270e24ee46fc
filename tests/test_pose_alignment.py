"""The real-cameras benchmark's evaluation in the map's world (``bench/real_cameras.py``): a map
trained from drifting poses sits in their world, so held-out views and objects are read through the
best rigid alignment of the training keyframes' true camera centres onto the map's."""

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import real_cameras as rc  # noqa: E402  (bench/real_cameras.py)

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.mapping.camera_opt import so3_exp  # noqa: E402


def rigid(rotvec_deg, shift_m) -> np.ndarray:
    T = np.eye(4)
    w = torch.as_tensor(np.radians(rotvec_deg), dtype=torch.float64)[None]
    T[:3, :3] = so3_exp(w)[0].numpy()
    T[:3, 3] = shift_m
    return T


def orbit(n: int = 28) -> np.ndarray:
    """Camera-to-world poses on a tilted ring around the origin (the synthetic scenes' trajectory)."""
    out = np.tile(np.eye(4), (n, 1, 1))
    for i, a in enumerate(np.linspace(0, 1.5 * np.pi, n)):
        out[i, :3, 3] = [0.8 * np.cos(a), 0.8 * np.sin(a), 0.4 + 0.05 * np.sin(3 * a)]
        out[i, :3, :3] = rigid([0.0, 0.0, np.degrees(a)], 0)[:3, :3]
    return out


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=32, height=24, n_frames=4, nthreads=1)


def test_alignment_recovers_the_map_world_of_drifting_noisy_poses():
    truth = orbit()
    T = rigid([0.4, -0.3, 1.5], [0.025, -0.01, 0.004])
    rng = np.random.default_rng(3)
    noisy = T @ truth
    noisy[:, :3, 3] += rng.normal(scale=0.004, size=(len(truth), 3))  # the residual of a refined map
    est = rc.map_alignment(noisy, truth)
    assert np.linalg.norm(est[:3, 3] - T[:3, 3]) < 0.004
    cos = (np.trace(est[:3, :3] @ T[:3, :3].T) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 0.3
    # the map's poses are the truth: exactly the identity (the bench then scores once)
    np.testing.assert_allclose(rc.map_alignment(truth, truth), np.eye(4), atol=1e-12)
    # a drift that is not rigid is not taken away whole: the alignment takes only its rigid part
    drift = truth.copy()
    drift[:, 0, 3] += np.linspace(0.0, 0.05, len(truth))
    left = rc.map_alignment(drift, truth) @ truth
    assert 0.005 < np.abs(left[:, :3, 3] - drift[:, :3, 3]).max() < 0.05


def test_scene_in_map_moves_poses_objects_and_table_together(scene):
    T = rigid([0.5, 0.2, -3.0], [0.03, -0.02, 0.01])
    moved = rc.scene_in_map(scene, T)
    for f, g in zip(scene.frames, moved.frames):
        np.testing.assert_allclose(g.c2w, T @ f.c2w, atol=1e-12)
        assert g.rgb is f.rgb  # the images are the truth's, seen from the moved poses
    R, t = T[:3, :3], T[:3, 3]
    rng = np.random.default_rng(0)
    for o, m in zip(scene.objects, moved.objects):
        np.testing.assert_allclose(m.center, R @ o.center + t, atol=1e-12)
        np.testing.assert_allclose(m.surface_points, o.surface_points @ R.T + t, atol=1e-12)
        # a point is inside the moved box exactly when its preimage is inside the original one
        pts = o.center + rng.uniform(-1, 1, size=(200, 3)) * o.size
        np.testing.assert_array_equal(m.contains(pts @ R.T + t, 0.01), o.contains(pts, 0.01))
        assert o.contains(pts, 0.01).any() and not o.contains(pts, 0.01).all()
    assert moved.table_height == pytest.approx(scene.table_height + t[2])
    # the original scene is left as it was
    assert scene.frames[0].c2w is not moved.frames[0].c2w
    assert not np.allclose(scene.objects[0].center, moved.objects[0].center)
