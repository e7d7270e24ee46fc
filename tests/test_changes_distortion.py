"""Change detection with a distorted camera: the frame is compared through its lens, and a stale
keyframe's retired pixels (``region_mask``) are where its lens puts the changed points."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from change_scenes import perfect_field

from lerf_ros.config import ChangeConfig
from lerf_ros.data.synthetic import intrinsics_from_fov, look_at, make_scene
from lerf_ros.data.synthetic.conditions import DEFAULT_LENSES, Conditions
from lerf_ros.geometry.camera import project_distorted
from lerf_ros.mapping.changes import ChangeDetector, backproject, point_sampled, region_mask, stale_keyframes

W, H = 96, 72


@pytest.mark.parametrize("model", sorted(DEFAULT_LENSES))
def test_region_mask_follows_the_lens(model):
    dist = DEFAULT_LENSES[model]
    K = intrinsics_from_fov(W, H, 70.0)
    c2w = look_at([1.0, 0.0, 0.0], [0, 0, 0])
    kf = SimpleNamespace(K=K, c2w=c2w, rgb=np.zeros((H, W, 3), np.uint8), distortion=dist)
    pin = SimpleNamespace(K=K, c2w=c2w, rgb=kf.rgb, distortion=None)
    # points towards the image's corners, where the lens moves them most
    for u0, v0 in ((10.5, 8.5), (85.5, 62.5), (12.5, 60.5)):
        ray = np.linalg.inv(K) @ np.array([u0, v0, 1.0])
        p = (c2w[:3, :3] @ ray + c2w[:3, 3])[None]  # 1 m in front, at pinhole pixel (u0, v0)
        u, v, _ = project_distorted(p, K, c2w, dist)
        assert np.hypot(u[0] - u0, v[0] - v0) > 3.5  # the lens moves this point by several pixels
        m = region_mask(p, kf, 0.03)
        rows, cols = np.nonzero(m)
        assert len(rows) >= 3
        # centred where the lens puts the point, not where a pinhole would
        assert np.hypot(cols.mean() + 0.5 - u[0], rows.mean() + 0.5 - v[0]) < 1.5
        assert m[int(v[0]), int(u[0])]
        assert not m[int(v0), int(u0)]
        assert not region_mask(p, pin, 0.03)[int(v[0]), int(u[0])]  # ignoring the lens misses it (can fail)
        # the disc's size follows the lens's local magnification: smaller than a pinhole's where it compresses
        assert m.sum() <= region_mask(p, pin, 0.03).sum() * 1.3
    # points behind the camera or far outside its view mark nothing
    assert not region_mask(np.array([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]]), kf, 0.05).any()


def test_backproject_through_the_lens():
    dist = DEFAULT_LENSES["plumb_bob"]
    K = intrinsics_from_fov(W, H, 70.0)
    c2w = look_at([0.8, 0.3, 0.5], [0, 0, 0])
    depth = np.full((H, W), 0.9, np.float32)
    v, u = np.nonzero(np.ones((H, W), bool))
    pts = backproject(depth, K, c2w, v, u, dist)
    pu, pv, z = project_distorted(pts, K, c2w, dist)
    np.testing.assert_allclose(pu, u + 0.5, atol=1e-4)
    np.testing.assert_allclose(pv, v + 0.5, atol=1e-4)
    np.testing.assert_allclose(z, 0.9, rtol=1e-6)


@pytest.fixture(scope="module")
def distorted():
    lens = DEFAULT_LENSES["plumb_bob"]
    return make_scene(
        seed=21, width=W, height=H, n_frames=12, hfov_deg=70.0, nthreads=1, conditions=Conditions(distortion=lens)
    )


def test_point_sampled_resamples_a_distorted_frame_onto_the_pinhole_rays(distorted):
    f = distorted.frames[4]
    assert f.distortion is not None
    rgb, depth, K, h, w, valid = point_sampled(f, 64)
    ref_rgb, ref_depth, _ = distorted.render_view(f.c2w, K=K, width=w, height=h)
    ok = valid & (ref_depth > 0)
    assert ok.mean() > 0.9
    near = np.abs(depth - ref_depth)[ok]
    # nearest sampling: within half a pixel of the ray, a few millimetres on the slanted table
    assert np.median(near) < 0.01 and np.mean(near < 0.05) > 0.95
    # the frame's pixels taken as they are (the lens ignored) disagree with the pinhole rays
    rgb0, depth0, *_ = point_sampled(dataclasses.replace(f, distortion=None), 64)
    far = np.abs(depth0 - ref_depth)[ok]
    assert np.median(far) > 3 * np.median(near) and np.mean(far < 0.05) < 0.8


def test_a_static_distorted_stream_shows_no_change(distorted):
    """Against a perfect field, a distorted static stream disagrees nowhere once the lens is honoured;
    the same frames with the lens ignored disagree at many pixels (the test can fail)."""
    render = perfect_field(distorted)
    cfg = ChangeConfig(check_every=1, min_frames=1)

    def run(frames):
        det = ChangeDetector(cfg)
        flagged = [det.observe(f, render, 10_000, lambda: []).flagged_pixels for f in frames]
        return flagged, det

    frames = distorted.frames
    flagged, det = run(frames)
    ignored, _ = run([dataclasses.replace(f, distortion=None) for f in frames])
    assert sum(flagged) <= 0.1 * sum(ignored) and sum(ignored) > 50
    assert det.stats()["changes_detected"] == 0


def test_stale_keyframes_project_through_the_lens(distorted):
    """A keyframe of the distorted camera judges changed points at the pixels its lens puts them."""
    f = distorted.frames[4]
    rgb, depth, K, h, w, valid = point_sampled(f, 64)
    # 'new' surface points 20 cm in front of the surface the keyframe saw: it saw past them (at 1.5 m
    # 10 cm is hardly beyond the tolerance of 6.5 cm, nor beyond a slanted table's next pixel)
    vv, uu = np.nonzero(valid & (depth > 0))
    pick = np.linspace(0, len(vv) - 1, 200).astype(int)
    vv, uu = vv[pick], uu[pick]
    surf = backproject(depth, K, f.c2w, vv, uu)
    centre = f.c2w[:3, 3]
    towards = (centre - surf) / np.linalg.norm(centre - surf, axis=1, keepdims=True)
    new_pts = surf + 0.2 * towards
    kf = SimpleNamespace(key=7, K=f.K, c2w=f.c2w, rgb=f.rgb, depth=f.depth, distortion=f.distortion)
    cfg = ChangeConfig()
    new_depth = depth.copy()
    new_depth[vv, uu] -= 0.2
    view = (new_depth, K, f.c2w)
    stale, seeing = stale_keyframes(new_pts, surf, rgb[vv, uu], [kf], cfg, 0.1, view)
    assert seeing == 1 and stale == [7]
    # the keyframe's points where they are: not stale
    stale, seeing = stale_keyframes(surf + 0.001 * towards, surf, rgb[vv, uu], [kf], cfg, 0.1, (depth, K, f.c2w))
    assert seeing == 1 and stale == []
