"""Pinhole back-projection and projection (``lerf_ros.geometry.camera``): pixel centres at u + 0.5."""

import numpy as np
import pytest

from lerf_ros.geometry.camera import backproject, project, scaled_intrinsics
from lerf_ros.geometry.poses import make_pose


def _pose(rng):
    q = rng.normal(size=4)
    return make_pose(rng.normal(size=3), q / np.linalg.norm(q))


def test_backproject_matches_the_pinhole_formula_and_project_inverts_it():
    rng = np.random.default_rng(4)
    K = np.array([[80.0, 1.5, 47.3], [0, 82.0, 35.9], [0, 0, 1]])  # with a skew term
    c2w = _pose(rng)
    depth = rng.uniform(0.5, 3.0, size=(7, 9))
    pts = backproject(depth, K, c2w)
    assert pts.shape == (7, 9, 3) and pts.dtype == np.float64
    # pixel (row 2, col 5): its centre (5.5, 2.5) through K^-1, scaled to z-depth, into the world
    y = (2.5 - K[1, 2]) / K[1, 1]
    x = (5.5 - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = depth[2, 5] * np.array([x, y, 1.0])
    np.testing.assert_allclose(pts[2, 5], c2w[:3, :3] @ cam + c2w[:3, 3], rtol=1e-12)
    col, row, z = project(pts.reshape(-1, 3), K, c2w)
    v, u = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
    np.testing.assert_array_equal(col, u.ravel())
    np.testing.assert_array_equal(row, v.ravel())
    np.testing.assert_allclose(z, depth.ravel(), rtol=1e-10)


def test_backproject_checks_shapes():
    with pytest.raises(ValueError, match=r"depth must be \(H, W\)"):
        backproject(np.ones(5), np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match=r"K must be \(3, 3\) and c2w \(4, 4\)"):
        backproject(np.ones((2, 2)), np.eye(4), np.eye(4))


def test_scaled_intrinsics_scale_continuous_image_coordinates():
    K = np.array([[100.0, 0, 64.0], [0, 100.0, 48.0], [0, 0, 1]])
    K2 = scaled_intrinsics(K, 128, 96, 32, 24)
    p = np.array([0.1, -0.05, 1.2])
    uv, uv2 = K @ p, K2 @ p
    np.testing.assert_allclose(uv2[:2] / uv2[2], (uv[:2] / uv[2]) / 4)
    # a pixel centre of the small image lands on the centre of the block of 4x4 pixels it covers
    depth = np.ones((24, 32))
    big = backproject(np.ones((96, 128)), K, np.eye(4))
    small = backproject(depth, K2, np.eye(4))
    np.testing.assert_allclose(small[3, 5], big[12:16, 20:24].reshape(-1, 3).mean(axis=0), atol=1e-12)
