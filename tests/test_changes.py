"""Change detection and forgetting (lerf_ros.mapping.changes).

The detector is tested first against a perfect "field": the synthetic scene's own renderer of the
scene as it was, so what it finds is what the frames show, not what a field has learnt. Then a
trained session: a removal is detected, its stale keyframes retired and the object's relevancy
drops; the same stream without the removal detects nothing.
"""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from change_scenes import as_keyframes, perfect_field

from lerf_ros.config import ChangeConfig, ConfigError, preset
from lerf_ros.data.synthetic.events import make_changing_scene, objects_at
from lerf_ros.mapping.changes import (
    ChangeDetector,
    backproject,
    connected_regions,
    gain_normalise,
    neighbourhood_residual,
    region_mask,
    robust_threshold,
    stale_keyframes,
    voxel_clusters,
)

SEED = 21  # mug, teapot, potted plant, computer mouse, phone, bowl
N = 24


# ---------------------------------------------------------------------------- kernels
def test_gain_normalise_recovers_channel_gains():
    rng = np.random.default_rng(0)
    ren = rng.uniform(0.1, 0.7, (20, 30, 3)).astype(np.float32)
    obs = ren * np.array([1.3, 0.8, 1.1], np.float32)
    g = gain_normalise(obs, ren, np.ones((20, 30), bool))
    np.testing.assert_allclose(g, [1.3, 0.8, 1.1], rtol=1e-5)


def test_neighbourhood_residual_forgives_a_pixel_of_shift_not_a_change():
    rng = np.random.default_rng(1)
    ren = rng.uniform(0, 0.5, (16, 16, 3)).astype(np.float32)
    depth = np.tile(np.linspace(1.0, 1.3, 16, dtype=np.float32), (16, 1))
    obs, obs_d = np.roll(ren, 1, axis=1).copy(), np.roll(depth, 1, axis=1).copy()
    obs[5:8, 5:8] = 1.0  # a changed patch: colour and depth far from every neighbour
    obs_d[5:8, 5:8] += 0.5
    col, dep = neighbourhood_residual(obs, ren, obs_d, depth)
    inner = np.zeros((16, 16), bool)
    inner[1:-1, 2:-1] = True
    inner[4:9, 4:9] = False
    assert col[inner].max() < 1e-6 and dep[inner].max() < 1e-6
    assert col[6, 6] > 0.2 and dep[6, 6] > 0.3
    col2, none = neighbourhood_residual(obs, ren, None, depth)
    assert none is None and np.array_equal(col, col2)


def test_robust_threshold_and_regions():
    v = np.concatenate([np.full(99, 0.01), [5.0]])
    thr, med = robust_threshold(v, 5.0, 0.1)
    assert med == pytest.approx(0.01) and thr == pytest.approx(0.1)  # the floor: MAD is 0
    v = np.random.default_rng(2).normal(0.2, 0.05, 10000)
    thr, _ = robust_threshold(v, 3.0, 0.0)
    assert thr == pytest.approx(0.35, abs=0.01)
    m = np.zeros((8, 8), bool)
    m[0:2, 0:2] = True  # 4 pixels
    m[5, 5] = m[6, 6] = True  # 2 pixels, diagonal neighbours
    assert connected_regions(m, 3).sum() == 4 and connected_regions(m, 2).sum() == 6
    assert connected_regions(m, 5).sum() == 0


def test_backproject_inverts_projection():
    from lerf_ros.data.synthetic import intrinsics_from_fov, look_at

    K = intrinsics_from_fov(32, 24)
    c2w = look_at([1.0, -0.5, 0.6], [0, 0, 0])
    v, u = np.array([3, 10, 20]), np.array([4, 16, 30])
    depth = np.full((24, 32), 1.5, np.float32)
    p = backproject(depth, K, c2w, v, u)
    cam = (p - c2w[:3, 3]) @ c2w[:3, :3]
    np.testing.assert_allclose(cam[:, 2], 1.5)
    np.testing.assert_allclose(cam[:, 0] / cam[:, 2] * K[0, 0] + K[0, 2], u + 0.5)


def test_voxel_clusters_separate_objects():
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 0.08, (30, 3))  # one object: touching 5 cm voxels
    b = rng.uniform(0, 0.08, (20, 3)) + [0.5, 0.0, 0.0]  # another, 40 cm away
    lab = voxel_clusters(np.concatenate([a, b]), 0.05)
    assert len(set(lab[:30])) == 1 and len(set(lab[30:])) == 1 and lab[0] != lab[30]
    assert voxel_clusters(np.zeros((0, 3)), 0.05).shape == (0,)


def test_region_mask_covers_the_points_and_no_more():
    from lerf_ros.data.synthetic import intrinsics_from_fov, look_at

    K = intrinsics_from_fov(64, 48)
    c2w = look_at([1.0, 0.0, 0.0], [0, 0, 0])
    kf = SimpleNamespace(K=K, c2w=c2w, rgb=np.zeros((48, 64, 3), np.uint8))
    m = region_mask(np.array([[0.0, 0.0, 0.0]]), kf, 0.05)
    r = 0.05 * K[0, 0]  # radius in pixels at 1 m
    assert np.pi * r**2 * 0.6 < m.sum() < np.pi * (r + 1.5) ** 2
    v, u = np.nonzero(m)
    assert abs(u.mean() + 0.5 - K[0, 2]) < 1.0 and abs(v.mean() + 0.5 - K[1, 2]) < 1.0
    assert region_mask(np.array([[2.0, 0.0, 0.0]]), kf, 0.05).sum() == 0  # behind the camera


def _region_mask_reference(points, kf, radius):
    """Every pixel's ray against every point (slow, plain): the pixels whose rays pass within
    ``radius`` of a point in front of the camera, plus the pixel each point falls in. No disc window."""
    H, W = kf.rgb.shape[:2]
    K, c2w = np.asarray(kf.K, float), np.asarray(kf.c2w, float)
    v, u = np.mgrid[0:H, 0:W]
    d = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32).astype(np.float64)
    mask = np.zeros((H, W), bool)
    for p in points:
        c = (p - c2w[:3, 3]) @ c2w[:3, :3]
        if c[2] <= 1e-3:
            continue
        along = d @ c
        mask |= (np.linalg.norm(c - along[..., None] * d, axis=-1) <= radius) & (along > 0)
        pu, pv = K[0, 0] * c[0] / c[2] + K[0, 2], K[1, 1] * c[1] / c[2] + K[1, 2]
        if 0 <= pu < W and 0 <= pv < H:
            mask[int(pv), int(pu)] = True
    return mask


def test_region_mask_matches_every_ray_against_every_point():
    from lerf_ros.data.synthetic import intrinsics_from_fov, look_at

    K = intrinsics_from_fov(80, 60)
    kf = SimpleNamespace(K=K, c2w=look_at([1.5, 0.2, 0.3], [0, 0, 0]), rgb=np.zeros((60, 80, 3), np.uint8))
    rng = np.random.default_rng(3)
    pts = rng.uniform(-0.4, 0.4, (300, 3))
    pts[0] = [3.0, 0.0, 0.0]  # behind the camera
    m = region_mask(pts, kf, 0.04)
    ref = _region_mask_reference(pts, kf, 0.04)
    assert m.any() and np.array_equal(m, ref)


def test_region_mask_memory_is_bounded():
    """4096 points in a 640 x 480 keyframe: the ray test used to build (points, window, 3) float64
    arrays (616 MB); in chunks it stays well under 60 MB."""
    import tracemalloc

    from lerf_ros.data.synthetic import intrinsics_from_fov, look_at

    K = intrinsics_from_fov(640, 480)
    kf = SimpleNamespace(K=K, c2w=look_at([1.0, 0.0, 0.0], [0, 0, 0]), rgb=np.zeros((480, 640, 3), np.uint8))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.3, 0.3, (4096, 3))
    region_mask(pts[:8], kf, 0.05)
    tracemalloc.start()
    try:
        m = region_mask(pts, kf, 0.05)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m.any() and peak < 60e6, f"region_mask peak {peak / 1e6:.0f} MB"


def test_all_neighbours_changed_does_not_count_the_frame_border():
    from lerf_ros.mapping.change_kernels import shifted_copies

    flag = np.ones((6, 7), bool)
    inner = shifted_copies(flag, 1, fill=False).all(0)
    assert not inner[0].any() and not inner[-1].any() and not inner[:, 0].any() and not inner[:, -1].any()
    assert inner[1:-1, 1:-1].all()
    assert shifted_copies(flag, 1).all(0).all()  # edge-replicated copies (the residual's use) are unchanged


def test_retired_pixels_are_never_drawn_and_are_not_judged():
    from lerf_ros.mapping.keyframes import KeyframeStore

    scene = make_changing_scene(seed=SEED, width=32, height=24, n_frames=3)
    store = KeyframeStore(preset("tiny").keyframes, torch.device("cpu"))
    for f in scene.frames:
        store.add(f)
    left = np.zeros((24, 32), bool)
    left[:, :16] = True
    assert store.retire_pixels(0, left) == 24 * 16
    assert store.retire_pixels(0, left) == 24 * 16  # idempotent
    top = np.zeros((24, 32), bool)
    top[:12] = True
    assert store.retire_pixels(0, top) == 12 * 16  # retirements add up
    assert store.retire_pixels(1, np.ones((24, 32), bool)) == 0 and 1 not in store  # nothing left: removed
    assert store.retire_pixels(99, left) is None
    with pytest.raises(ValueError, match="mask"):
        store.retire_pixels(0, np.ones((5, 5), bool))
    batch = store.sample(6000, torch.Generator().manual_seed(0))
    first = batch.view_index == 0
    assert first.sum() > 500
    assert batch.u[first].min() > 16 and batch.v[first].min() > 12  # only the trusted quarter
    assert batch.u[~first].min() < 1  # the untouched keyframe: every pixel
    # a keyframe judges changed points only on its trusted pixels
    kf = store.get(0)
    v, u = np.nonzero(np.ones((24, 32), bool))
    pts = backproject(scene.frames[0].depth, kf.K, kf.c2w, v, u)
    view = (scene.frames[0].depth, kf.K, kf.c2w)
    _, seeing_all = stale_keyframes(
        pts,
        pts,
        np.zeros((len(pts), 3)),
        [SimpleNamespace(**{**vars(kf), "trusted": None})],
        ChangeConfig(min_stale_points=500),
        0.1,
        view,
    )
    _, seeing_part = stale_keyframes(
        pts, pts, np.zeros((len(pts), 3)), [kf], ChangeConfig(min_stale_points=500), 0.1, view
    )
    assert seeing_all == 1 and seeing_part == 0  # 192 trusted pixels < 500 points needed


def test_change_config_is_checked():
    with pytest.raises(ConfigError, match="changes.min_frames"):
        preset("tiny").override({"changes.min_frames": 0})
    with pytest.raises(ConfigError, match="changes.memory_checks"):
        preset("tiny").override({"changes.min_frames": 5, "changes.memory_checks": 3})
    with pytest.raises(ConfigError, match="changes.retire"):
        preset("tiny").override({"changes.retire": "rays"})
    with pytest.raises(ConfigError, match="changes.min_stale_share"):
        preset("tiny").override({"changes.min_stale_share": 1.5})


# ---------------------------------------------------------------------------- against a perfect field
@pytest.fixture(scope="module")
def scenes():
    kw = dict(seed=SEED, width=64, height=48, n_frames=N, cycles=2)
    return make_changing_scene(events=[f"remove:mug@{N}"], **kw), make_changing_scene(**kw)


def _stream(detector, scene, frames, keyframes, render):
    checks = []
    for f in frames:
        checks.append(detector.observe(f, render, 10_000, lambda: keyframes))
    return checks


def test_stale_keyframes_are_those_that_show_the_removed_object(scenes):
    removed, _ = scenes
    before, after = removed[3], removed[N + 3]  # the same pose, mug there / gone
    mug = removed.objects[0].instance_id
    v, u = np.nonzero(before.instance == mug)
    assert len(v) > 15
    new_pts = backproject(after.depth, after.K, after.c2w, v, u)
    old_pts = backproject(before.depth, before.K, before.c2w, v, u)
    cfg = ChangeConfig()
    kfs_before = as_keyframes(removed.frames[:N])
    kfs_after = as_keyframes(removed.frames[N:], first_key=100)
    col_new = after.rgb[v, u] / 255.0
    view = (after.depth, after.K, after.c2w)
    stale, seeing = stale_keyframes(new_pts, old_pts, col_new, kfs_before + kfs_after, cfg, 0.12, view)
    sees_mug = {i for i, f in enumerate(removed.frames[:N]) if np.count_nonzero(f.instance == mug) >= 8}
    assert stale and all(k < 100 for k in stale)  # no view of the new state is stale
    assert set(stale) <= sees_mug and len(stale) >= 0.5 * len(sees_mug)
    assert seeing > len(stale)  # the views of the new state saw the region too
    # without depth the colours decide
    no_depth = [SimpleNamespace(**{**vars(k), "depth": None}) for k in kfs_before + kfs_after]
    stale_c, _ = stale_keyframes(new_pts, old_pts, col_new, no_depth, cfg, 0.12, view)
    assert set(stale_c) & set(stale)  # weaker: occlusions are unknown without depth
    assert sum(k < 100 for k in stale_c) > 2 * sum(k >= 100 for k in stale_c)


def test_detector_finds_a_removal_and_nothing_in_the_static_stream(scenes):
    removed, static = scenes
    render = perfect_field(static)  # the field holds the scene before the removal
    kfs = as_keyframes(removed.frames[:N])
    cfg = ChangeConfig(check_every=1)
    # the static stream: with an exposure change and a pose error of a few millimetres
    det = ChangeDetector(cfg)
    rng = np.random.default_rng(3)
    frames = []
    for f in static.frames[N:]:
        c2w = f.c2w.copy()
        c2w[:3, 3] += rng.normal(0, 0.003, 3)
        rgb = np.clip(f.rgb.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
        frames.append(dataclasses.replace(f, rgb=rgb, c2w=c2w))
    checks = _stream(det, static, frames, kfs, render)
    assert [c.status for c in checks].count("change") == 0
    assert det.stats()["changes_detected"] == 0 and det.changed_points()[0].shape == (0, 3)
    assert det.stats()["last_change_step"] == -1  # snapshots tell the query nothing changed
    # the stream after the removal
    det = ChangeDetector(cfg)
    checks = _stream(det, removed, removed.frames[N:], kfs, render)
    found = [c for c in checks if c.status == "change"]
    assert found and det.stats()["changes_detected"] >= 1
    assert det.stats()["last_change_step"] == 10_000  # the step of the change, for the query's surface
    mug = [o for o in objects_at(removed, N - 1) if o.class_name == "mug"][0]
    pts, kinds = det.changed_points()
    gone = pts[kinds == 0]
    assert len(gone) and mug.contains(gone, 0.03).mean() > 0.7  # the vanished surface is the mug's
    assert set(kinds.tolist()) == {0.0, 1.0}
    # the first confirmation needed a second frame
    assert checks[0].status != "change"


def test_detector_finds_a_moved_and_an_added_object():
    kw = dict(seed=SEED, width=64, height=48, n_frames=N, cycles=2)
    changed = make_changing_scene(events=[f"move:teapot@{N}", f"add:banana@{N}"], **kw)
    static = make_changing_scene(**kw)
    det = ChangeDetector(ChangeConfig(check_every=1))
    checks = _stream(det, changed, changed.frames[N:], as_keyframes(changed.frames[:N]), perfect_field(static))
    assert any(c.status == "change" for c in checks)
    pts, kinds = det.changed_points()
    before = {o.class_name: o for o in objects_at(changed, N - 1)}
    after = {o.class_name: o for o in objects_at(changed, 2 * N - 1)}
    new, gone = pts[kinds == 1], pts[kinds == 0]
    # the teapot's old place is a vanished surface, its new place and the banana new surfaces
    assert before["teapot"].contains(gone, 0.03).sum() >= 3
    assert after["teapot"].contains(new, 0.03).sum() >= 3
    assert after["banana"].contains(new, 0.03).sum() >= 3
    # nothing else changed: (almost) every changed point is at one of the three places
    near = (
        before["teapot"].contains(pts, 0.08) | after["teapot"].contains(pts, 0.08) | after["banana"].contains(pts, 0.08)
    )
    assert near.mean() > 0.9
    # where each change is reported: on the changed object (its pixels' nearer surface), not between
    # it and what it hid or revealed behind it
    places = [before["teapot"], after["teapot"], after["banana"]]
    centres = np.array([c.centre for c in checks if c.status == "change"])
    on = np.zeros(len(centres), bool)
    for o in places:
        on |= o.contains(centres, 0.05)
    assert on.mean() > 0.7, centres
    assert all("near (" in c.reason for c in checks if c.status == "change")  # each object's own place


def test_detector_waits_for_the_field():
    det = ChangeDetector(ChangeConfig(check_every=2, min_steps=100))

    def render(*a):
        raise AssertionError("must not render before min_steps")

    frame = SimpleNamespace()
    assert det.observe(frame, render, 50, list).status == "not_ready"
    assert det.observe(frame, render, 50, list).status == "skipped"
    assert det.observe(frame, render, 50, list).status == "not_ready"


# ---------------------------------------------------------------------------- a trained session
TN = 16  # frames per pass of the trained tests (48x36: every pixel is compared)


def _session(scene, tmp, **changes):
    from lerf_ros.mapping.session import Session
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    over = {
        "teacher.kind": "ground_truth",
        "output_dir": str(tmp),
        "trainer.rays_per_batch": 512,
        "changes.enabled": True,
        "changes.min_steps": 200,
        "changes.check_every": 2,
    }
    over.update({f"changes.{k}": v for k, v in changes.items()})
    return Session(preset("tiny").override(over), GroundTruthTeacher(scene), online=True, log=lambda *a: None)


def _feed(session, frames, steps_per_frame):
    import time

    for f in frames:
        session.submit(f)
        while session.features_pending:
            session.collect_features()
            time.sleep(0.01)
        session.collect_features()
        if session.can_train():
            for _ in range(steps_per_frame):
                session.step()


def _relevancy(session, text):
    from lerf_ros.query import QueryEngine

    engine = QueryEngine(session.cfg.query, session.teacher.encode_text)
    engine.set_snapshot(session.snapshot())
    engine.prepare()
    return engine.query(text).max_relevancy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A session trained on two passes of the static scene (checkpoint and its keyframes' frames),
    shared by the removal and the static continuation."""
    kw = dict(seed=SEED, width=48, height=36, n_frames=TN, cycles=3)
    removed = make_changing_scene(events=[f"remove:mug@{2 * TN}"], **kw)
    static = make_changing_scene(**kw)
    tmp = tmp_path_factory.mktemp("trained")
    s = _session(static, tmp)
    _feed(s, static.frames[: 2 * TN], 10)
    path = s.save_checkpoint(str(tmp / "pre.ckpt"))
    kept = [kf.index for kf in s.keyframes.keyframes()]
    before = _relevancy(s, "mug")
    s.close()
    return SimpleNamespace(removed=removed, static=static, path=path, kept=kept, before=before)


def _continue(trained, scene, tmp):
    s = _session(scene, tmp)
    s.changes, detector = None, s.changes  # the stored keyframes come back without a comparison
    _feed(s, [scene.frames[i] for i in trained.kept], 0)
    s.resume(trained.path)
    s.changes = detector
    _feed(s, scene.frames[2 * TN :], 10)
    return s


@pytest.mark.timeout(1200)  # the shared trained field is built in the first test that asks
def test_trained_session_forgets_a_removed_object(trained, tmp_path):
    assert trained.before > 0.55  # the mug was found before it went
    s = _continue(trained, trained.removed, tmp_path)
    stats = s.change_stats()
    after = _relevancy(s, "mug")
    teapot = _relevancy(s, "teapot")
    trusted = [kf.trusted for kf in s.keyframes.keyframes()]
    s.close()
    assert stats["changes_detected"] >= 1 and stats["keyframes_retired"] >= 1, stats
    assert after < 0.55 and after < trained.before - 0.1, (trained.before, after)
    # only the pixels near the mug were retired: the keyframes stay and the teapot is still found
    assert any(t is not None for t in trusted)
    assert teapot > 0.55, teapot


@pytest.mark.timeout(1200)  # the shared trained field is built in the first test that asks
def test_trained_session_static_stream_detects_nothing(trained, tmp_path):
    s = _continue(trained, trained.static, tmp_path)
    stats = s.change_stats()
    after = _relevancy(s, "mug")
    s.close()
    assert stats["frames_compared"] >= 4  # it did compare
    assert stats["changes_detected"] == 0 and stats["keyframes_retired"] == 0, stats
    assert after > 0.55  # the mug is still there


# ---------------------------------------------------------------------------- over DDS
@pytest.mark.timeout(1200)  # the shared trained field is built in the first test that asks
def test_trainer_node_publishes_changes_after_a_removal(trained, tmp_path):
    """The trainer node (a real process) resumes the trained field, a replay process streams the
    removal over DDS, and /lerf/changes and /lerf/status report the change."""
    import shutil

    pytest.importorskip("rclpy")
    import rclpy
    from sensor_msgs.msg import PointCloud2

    from lerf_ros.mapping.checkpoint import checkpoint_name, read_checkpoint
    from lerf_ros.msg import TrainingStatus
    from lerf_ros.ros.common import LATCHED_QOS
    from lerf_ros.ros.convert import pointcloud2_to_numpy

    from ros_helpers import (
        lerf_ros_argv,
        process_output,
        python_argv,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
    )

    scene_dir = tmp_path / "scene"
    trained.removed.save(scene_dir, preview=False)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    step = int(read_checkpoint(trained.path)["step"])
    shutil.copy(trained.path, out / "checkpoints" / checkpoint_name(step))
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    preset: tiny\n"
        f"    output_dir: '{out}'\n    world_frame: map\n"
        f"    teacher:\n      kind: ground_truth\n      scene_dir: '{scene_dir}'\n"
        "    trainer:\n      checkpoint_every: 0\n      rays_per_batch: 512\n"
        "    changes:\n      enabled: true\n      min_steps: 200\n      check_every: 2\n"
        "lerf_trainer:\n  ros__parameters:\n    pose_source: pose\n    status_rate_hz: 5.0\n    resume: true\n"
    )
    domain = unique_domain_id()
    env = ros_env(domain)
    trainer = start_process(
        python_argv("-m", "lerf_ros.ros.lerf_node", "--ros-args", "--params-file", str(params)), env=env
    )
    replay = None
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_changes", context=ctx)
            statuses, clouds = [], []
            node.create_subscription(TrainingStatus, "/lerf/status", statuses.append, 10)
            node.create_subscription(PointCloud2, "/lerf/changes", clouds.append, LATCHED_QOS)
            assert spin_until(node, lambda: statuses or trainer.poll() is not None, 90.0), process_output(trainer)
            assert trainer.poll() is None and statuses[-1].step >= step, process_output(trainer)
            replay = start_process(lerf_ros_argv("replay", str(scene_dir), "--rate", "3"), env=env)
            ok = spin_until(node, lambda: clouds and statuses[-1].changes_detected >= 1, 300.0)
            assert ok, (statuses[-1].changes_detected if statuses else None, process_output(trainer))
            pts = pointcloud2_to_numpy(clouds[-1])
            xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1)
            mug = [o for o in objects_at(trained.removed, 2 * TN - 1) if o.class_name == "mug"][0]
            gone = xyz[pts["kind"] == 0]
            assert len(gone) and mug.contains(gone, 0.05).mean() > 0.5
            assert statuses[-1].keyframes_retired >= 1
            node.destroy_node()
    finally:
        if replay is not None:
            stop_process(replay, timeout=20.0)
        code = stop_process(trainer, timeout=30.0)
    assert code == 0, process_output(trainer)
