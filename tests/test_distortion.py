"""Lens distortion (``lerf_ros.geometry.camera.Distortion``) and the rays of distorted frames."""

import dataclasses

import numpy as np
import pytest
import torch

from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.field.sampling import image_rays
from lerf_ros.geometry.camera import (
    Distortion,
    DistortionError,
    denormalise,
    normalise,
    pixel_directions,
    project_distorted,
)
from lerf_ros.geometry.poses import make_pose
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.selection import downscale_frame

W, H = 160, 120
K = np.array([[130.0, 0.0, 81.3], [0.0, 128.0, 59.1], [0.0, 0.0, 1.0]])
K_FISHEYE = np.array([[72.0, 0.0, 80.0], [0.0, 72.0, 60.0], [0.0, 0.0, 1.0]])

# Realistic strong lenses: a wide plumb_bob (about 20 px at the corners here), a rational model as
# a phone/ RealSense calibration writes it, and a fisheye seeing beyond 100 degrees.
MODELS = [
    (Distortion.create("plumb_bob", [-0.3, 0.09, 1.2e-3, -8e-4, -0.01]), K),
    (Distortion.create("rational_polynomial", [0.6, -0.05, 1e-3, -5e-4, 0.01, 0.9, 0.1, 0.01]), K),
    (Distortion.create("equidistant", [0.04, -0.012, 0.003, -6e-4]), K_FISHEYE),
]
IDS = [d.model for d, _ in MODELS]


def _grid(w=W, h=H):
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return u.ravel(), v.ravel()


@pytest.mark.parametrize("dist,K", MODELS, ids=IDS)
def test_distort_then_undistort_round_trips_below_a_hundredth_of_a_pixel(dist, K):
    u, v = _grid()
    # distort -> undistort: every pixel's undistorted point, distorted and undistorted again
    x, y = normalise(K, u, v)
    xu, yu = dist.undistort(*dist.distort(x, y))
    pu, pv = denormalise(K, xu, yu)
    assert np.max(np.hypot(pu - u, pv - v)) < 0.01
    # undistort -> distort: every raw pixel comes back to itself
    xu, yu = dist.undistort(x, y)
    pu, pv = denormalise(K, *dist.distort(xu, yu))
    assert np.max(np.hypot(pu - u, pv - v)) < 0.01
    # and the distortion is not negligible (the test would pass trivially otherwise)
    assert dist.max_displacement_px(K, W, H) > 5.0


def test_equidistant_matches_its_closed_form():
    d = Distortion.create("equidistant", [0.1, 0.0, 0.0, 0.0])
    x, y = np.array([0.3, 0.0]), np.array([0.4, 0.0])
    xd, yd = d.distort(x, y)
    th = np.arctan(0.5)
    np.testing.assert_allclose(np.hypot(xd[0], yd[0]), th * (1 + 0.1 * th**2), rtol=1e-12)
    np.testing.assert_allclose([xd[1], yd[1]], [0.0, 0.0])


def test_fisheye_rays_beyond_ninety_degrees():
    d = Distortion.create("equidistant", [0.0, 0.0, 0.0, 0.0])
    th = np.array([0.3, 1.5, 2.0, 2.8])  # the last two look backwards
    dirs = d.ray_directions(th, np.zeros_like(th))
    np.testing.assert_allclose(np.arccos(dirs[:, 2]), th, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0)
    Kw = np.array([[30.0, 0.0, 80.0], [0.0, 30.0, 60.0], [0.0, 0.0, 1.0]])  # about 190 degrees across
    table = pixel_directions(Kw, W, H, Distortion.create("equidistant", [0.01, 0.0, 0.0, 0.0]))
    assert table[:, 2].min() < 0 and np.all(np.isfinite(table))


def test_plumb_bob_matches_the_opencv_formula():
    k1, k2, p1, p2, k3 = -0.2, 0.05, 0.001, 0.002, 0.01
    d = Distortion.create("plumb_bob", [k1, k2, p1, p2, k3])
    x, y = 0.3, -0.2
    r2 = x * x + y * y
    a = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    want = (x * a + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * a + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
    np.testing.assert_allclose(d.distort(np.array(x), np.array(y)), want, rtol=1e-12)


def test_unknown_model_and_bad_coefficients_are_refused_with_clear_messages():
    with pytest.raises(DistortionError, match="'kannala_brandt' is not supported.*plumb_bob"):
        Distortion.create("kannala_brandt", [0.1, 0.0, 0.0, 0.0])
    with pytest.raises(DistortionError, match="k2 is NaN or infinite"):
        Distortion.create("plumb_bob", [0.1, float("nan"), 0.0, 0.0, 0.0])
    with pytest.raises(DistortionError, match="non-zero extras"):
        Distortion.create("plumb_bob", [0.1, 0.0, 0.0, 0.0, 0.0, 0.3])
    with pytest.raises(DistortionError, match="needs 4 coefficients"):
        Distortion("equidistant", (0.1,))
    # ROS drivers pad D: zero extras and short lists are fine
    assert Distortion.create("plumb_bob", [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).coeffs == (0.1, 0, 0, 0, 0)
    assert Distortion.create("plumb_bob", [0.1, 0.2, 0.0, 0.0]).coeffs == (0.1, 0.2, 0, 0, 0)
    rgb = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(FrameError, match="distortion must be"):
        Frame(rgb=rgb, K=K, c2w=np.eye(4), distortion=(0.1, 0.0)).validate()


def _pose():
    q = np.array([0.1, -0.2, 0.05, 1.0])
    return make_pose(np.array([0.4, -0.3, 1.2]), q / np.linalg.norm(q))


@pytest.mark.parametrize("dist,K", MODELS, ids=IDS)
def test_rays_of_a_distorted_frame_pass_through_the_world_points_they_image(dist, K):
    """Project known 3D points through the lens into the raw image, take that pixel's ray (image
    renders and the keyframe store's sampler), and check it passes through the point."""
    rng = np.random.default_rng(3)
    c2w = _pose()
    # world points whose raw projections land exactly on pixel centres
    cols, rows = rng.integers(0, W, 200), rng.integers(0, H, 200)
    x, y = dist.undistort(*normalise(K, cols + 0.5, rows + 0.5))
    depth = rng.uniform(0.5, 3.0, 200)
    cam = np.stack([x * depth, y * depth, depth], axis=-1)
    pts = cam @ c2w[:3, :3].T + c2w[:3, 3]
    u, v, z = project_distorted(pts, K, c2w, dist)
    np.testing.assert_allclose(u, cols + 0.5, atol=1e-6)
    np.testing.assert_allclose(v, rows + 0.5, atol=1e-6)

    def miss(o, d, idx):
        rel = pts - o[idx]
        along = (rel * d[idx]).sum(-1)
        return np.linalg.norm(rel - along[:, None] * d[idx], axis=-1), along

    o, d, dz = (t.numpy().astype(np.float64) for t in image_rays(K, c2w, H, W, torch.device("cpu"), dist))
    err, along = miss(o, d, rows * W + cols)
    assert err.max() < 1e-5 * depth.max() * 10
    np.testing.assert_allclose(along * dz[rows * W + cols], z, rtol=1e-5)  # z-depth = distance * dir_z
    # the same rays ignoring the distortion miss the points (the test can fail)
    o0, d0, _ = (t.numpy().astype(np.float64) for t in image_rays(K, c2w, H, W, torch.device("cpu")))
    assert miss(o0, d0, rows * W + cols)[0].max() > 0.01

    # the keyframe store's sampler: every sampled ray of this frame is its pixel's ray
    store = KeyframeStore(bounded=False)
    store.add(Frame(rgb=np.zeros((H, W, 3), np.uint8), K=K, c2w=c2w, distortion=dist))
    batch = store.sample(4096, torch.Generator().manual_seed(0))
    pix = (batch.v.long() * W + batch.u.long()).numpy()
    np.testing.assert_allclose(batch.directions.numpy(), d[pix], atol=1e-6)
    np.testing.assert_allclose(batch.origins.numpy(), o[pix], atol=1e-6)


def test_sampler_mixes_pinhole_and_distorted_keyframes():
    dist, _ = MODELS[0]
    c2w = _pose()
    store = KeyframeStore(bounded=False)
    store.add(Frame(rgb=np.zeros((H, W, 3), np.uint8), K=K, c2w=c2w, distortion=dist))
    store.add(Frame(rgb=np.zeros((H, W, 3), np.uint8), K=K, c2w=c2w, stamp=1.0))
    batch = store.sample(2048, torch.Generator().manual_seed(1))
    pix = (batch.v.long() * W + batch.u.long()).numpy()
    R = c2w[:3, :3]
    for view, d in ((0, dist), (1, None)):
        sel = (batch.view_index == view).numpy()
        assert sel.sum() > 100
        want = pixel_directions(K, W, H, d)[pix[sel]] @ R.T
        np.testing.assert_allclose(batch.directions.numpy()[sel], want, atol=1e-5)


def test_pixel_directions_are_cached_per_camera_and_pinhole_matches_the_formula():
    dist, _ = MODELS[0]
    a = pixel_directions(K, W, H, dist)
    assert pixel_directions(K.copy(), W, H, dist) is a  # once per camera
    assert not a.flags.writeable
    zero = Distortion.create("plumb_bob", [0.0] * 5)
    np.testing.assert_allclose(pixel_directions(K, W, H, zero), pixel_directions(K, W, H, None))
    o, d, _ = image_rays(K, np.eye(4), H, W, torch.device("cpu"), zero)
    np.testing.assert_allclose(d.numpy(), pixel_directions(K, W, H, None), atol=1e-6)


def test_downscaling_keeps_the_distortion_and_the_rays():
    dist, _ = MODELS[0]
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    f = Frame(rgb=rgb, K=K, c2w=np.eye(4), distortion=dist)
    g = downscale_frame(f, 80)
    assert g.distortion == dist and (g.width, g.height) == (80, 60)
    # pixel (2c+1, 2r+1)'s corner area: the downscaled pixel (c, r) centre is the full-size point
    # (2c + 1, 2r + 1) in continuous coordinates: the same ray
    d_small = pixel_directions(g.K, 80, 60, g.distortion).reshape(60, 80, 3)
    x, y = dist.undistort(*normalise(K, np.array([2 * 7 + 1.0]), np.array([2 * 5 + 1.0])))
    want = np.array([x[0], y[0], 1.0]) / np.linalg.norm([x[0], y[0], 1.0])
    np.testing.assert_allclose(d_small[5, 7], want, atol=1e-6)
    assert dataclasses.replace(g).distortion is dist
