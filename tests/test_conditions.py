"""Real-camera conditions of synthetic scenes (``lerf_ros.data.synthetic.conditions``): each one
changes what the frames show or report as specified while the ground truth stays clean; all off is
the clean scene byte for byte; the lens rendering agrees with ``lerf_ros.geometry.camera``; the
files (scene folder, pose files, transforms.json) and ``lerf-ros replay`` carry them."""

import dataclasses
import json
import signal

import numpy as np
import pytest

from lerf_ros.data.synthetic import load_scene, make_scene, scene_digest
from lerf_ros.data.synthetic.conditions import (
    DEFAULT_LENSES,
    Conditions,
    ConditionsError,
    colour_gains,
    corrupt_poses,
    parse_distortion,
    rotation_from_vector,
)
from lerf_ros.data.synthetic.io import (
    GROUND_TRUTH_POSES_FILE,
    POSE_CORRECTIONS_FILE,
    SceneFormatError,
    read_poses,
    write_poses,
)
from lerf_ros.data.synthetic.scene import apply_conditions
from lerf_ros.geometry.camera import DistortionError, pixel_directions, project_distorted
from lerf_ros.geometry.poses import invert_pose, pose_distance

W, H, F = 64, 48, 8
HFOV = 70.0


@pytest.fixture(scope="module")
def clean():
    return make_scene(seed=4, width=W, height=H, n_frames=F, hfov_deg=HFOV, nthreads=1)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------- off = unchanged
@pytest.mark.parametrize("seed", [0, 9])
def test_all_off_is_the_clean_scene_byte_for_byte(seed, tmp_path):
    """No conditions, or conditions that are all off (a zero lens included), give exactly the scene
    made without them: the same arrays, and a saved folder with the same files and bytes."""
    kw = dict(seed=seed, width=32, height=24, n_frames=5, nthreads=1)
    ref = make_scene(**kw)
    off = make_scene(**kw, conditions=Conditions())
    zero_lens = make_scene(**kw, conditions=Conditions(distortion=DEFAULT_LENSES["plumb_bob"].create("plumb_bob", [])))
    assert scene_digest(off) == scene_digest(ref) == scene_digest(zero_lens)
    assert off.conditions is None and off.ground_truth_frames() is off.frames
    ref.save(tmp_path / "ref", preview=False)
    off.save(tmp_path / "off", preview=False)
    a, b = _files(tmp_path / "ref"), _files(tmp_path / "off")
    assert sorted(a) == sorted(b)
    assert a["scene.json"] == b["scene.json"]
    for name in a:
        if name.endswith(".npz"):
            ga, gb = _npz(tmp_path / "ref" / name), _npz(tmp_path / "off" / name)
            assert sorted(ga) == sorted(gb) and all(np.array_equal(ga[k], gb[k]) for k in ga), name
        else:
            assert a[name] == b[name], name
    assert "conditions" not in json.loads(a["scene.json"])


def test_each_condition_draws_from_its_own_stream(clean):
    """Conditions are seeded from the scene seed, one stream each: the same seed gives the same
    frames; adding exposure to pose noise leaves the noisy poses as they were; another seed differs."""
    c1 = Conditions(pose_noise_m=0.02, pose_noise_deg=1.0)
    c2 = dataclasses.replace(c1, exposure_stops=1.0)
    a, b, c = apply_conditions(clean, c1), apply_conditions(clean, c1), apply_conditions(clean, c2)
    assert scene_digest(a) == scene_digest(b)
    np.testing.assert_array_equal(np.stack([f.c2w for f in a]), np.stack([f.c2w for f in c]))
    other = corrupt_poses(clean.seed + 1, clean.true_poses(), c1)[0]
    assert not np.allclose(other, np.stack([f.c2w for f in a]))


# ---------------------------------------------------------------------------- lens distortion
def _surface_hits(scene, frames, poses, lens):
    """Over every object's surface points that a frame sees (camera z equals the raw pixel's depth):
    (points looked at, fraction whose raw pixel has the object's instance id)."""
    seen = match = 0
    for f, c2w in zip(frames, poses):
        for obj in scene.objects:
            u, v, z = project_distorted(obj.surface_points, f.K, c2w, lens)
            ok = (z > 0.05) & (u >= 0) & (u < f.width) & (v >= 0) & (v < f.height)
            c, r, z = np.floor(u[ok]).astype(int), np.floor(v[ok]).astype(int), z[ok]
            vis = np.abs(f.depth[r, c] - z) < 0.01
            seen += int(vis.sum())
            match += int((f.instance[r[vis], c[vis]] == obj.instance_id).sum())
    return seen, match / max(seen, 1)


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial", "equidistant"])
def test_lens_renders_each_raw_pixel_along_its_undistorted_ray(clean, model):
    """The raw image of each lens model agrees with ``lerf_ros.geometry.camera`` both ways:
    surface points projected through the lens (``project_distorted``) land on raw pixels whose depth
    equals their camera z and whose instance is their object; raw pixels back-projected along
    ``pixel_directions`` with their depth land on the geometry the clean view shows at the pinhole
    projection of that point. Projecting without the lens fails the same check."""
    lens = DEFAULT_LENSES[model]
    scene = apply_conditions(clean, Conditions(distortion=lens))
    poses = scene.true_poses()
    assert all(f.distortion == lens for f in scene.frames)
    assert scene.ground_truth_poses is None and scene.gains is None
    np.testing.assert_array_equal(poses, clean.true_poses())  # the lens alone leaves the poses alone
    assert lens.max_displacement_px(scene.K, W, H) > 8.0  # the lens moves rays by many pixels
    assert not np.array_equal(scene.frames[0].rgb, clean.frames[0].rgb)

    # as well as the clean pinhole views agree with the pinhole projection (thin objects lose some
    # points at their silhouettes at this size, hence rates)
    seen_clean, rate_clean = _surface_hits(clean, clean.frames, poses, None)
    seen, rate = _surface_hits(scene, scene.frames, poses, lens)
    assert seen > 0.9 * seen_clean and rate > rate_clean - 0.02 and rate > 0.84, (seen, rate, seen_clean, rate_clean)
    seen_pin, rate_pin = _surface_hits(scene, scene.frames, poses, None)
    assert seen_pin < 0.9 * seen and rate_pin < rate - 0.04, (seen_pin, rate_pin, seen, rate)

    # back-projection of raw pixels, compared with the clean pinhole view of the same pose: the
    # lens's rays land where the clean view sees the same surface (to within the clean pixel's
    # footprint), the pinhole rays of the same raw pixels do not
    f, g = scene.frames[0], clean.frames[0]
    err = {}
    for name, d in (("lens", pixel_directions(f.K, W, H, lens)), ("pinhole", pixel_directions(f.K, W, H, None))):
        d = d.astype(np.float64)
        z = f.depth.reshape(-1)
        hit = z > 0
        world = (d[hit] / d[hit, 2:3] * z[hit, None]) @ poses[0][:3, :3].T + poses[0][:3, 3]
        u, v, zc = project_distorted(world, g.K, poses[0], None)
        inside = (u >= 1) & (u < W - 1) & (v >= 1) & (v < H - 1)
        c, r = np.floor(u[inside]).astype(int), np.floor(v[inside]).astype(int)
        assert inside.sum() > 0.4 * W * H
        err[name] = (
            np.median(np.abs(g.depth[r, c] - zc[inside])),
            np.mean(g.instance[r, c] == f.instance.reshape(-1)[hit][inside]),
        )
    assert err["lens"][0] < 0.01 and err["lens"][1] > 0.97, err
    assert err["pinhole"][0] > 3 * err["lens"][0], err

    # the ground truth stays the clean pinhole views
    gt = scene.ground_truth_frames()
    for a, b in zip(gt, clean.frames):
        assert a.distortion is None
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.depth, b.depth)


def test_parse_distortion_and_bad_lenses():
    assert parse_distortion("equidistant") == DEFAULT_LENSES["equidistant"]
    d = parse_distortion("plumb_bob:-0.1,0.01")
    assert d.model == "plumb_bob" and d.coeffs == (-0.1, 0.01, 0.0, 0.0, 0.0)
    with pytest.raises(DistortionError, match="'fisheye' is not supported"):
        parse_distortion("fisheye")
    with pytest.raises(DistortionError, match="k2 is NaN"):
        parse_distortion("plumb_bob:0.1,nan")
    with pytest.raises(DistortionError, match="numbers"):
        parse_distortion("plumb_bob:0.1,abc")
    with pytest.raises(ConditionsError, match="distortion must be"):
        Conditions(distortion="plumb_bob")


# ---------------------------------------------------------------------------- poses
def test_rotation_from_vector():
    w = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.pi / 2], [0.3, -0.2, 0.1]])
    R = rotation_from_vector(w)
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-15)
    np.testing.assert_allclose(R[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(R[2] @ w[2], w[2], atol=1e-12)  # the axis is fixed
    _, ang = pose_distance(np.eye(4), np.pad(R[2], ((0, 1), (0, 1))) + np.diag([0, 0, 0, 1.0]))
    assert ang == pytest.approx(np.linalg.norm(w[2]), abs=1e-12)


def test_pose_noise_has_the_requested_spread():
    """Per-frame noise: translation with the given standard deviation per world axis, a rotation
    about the camera centre whose rotation vector has the given spread per axis; no drift."""
    rng = np.random.default_rng(0)
    n = 4000
    true = np.tile(np.eye(4), (n, 1, 1))
    true[:, :3, :3] = rotation_from_vector(rng.normal(size=(n, 3)))
    true[:, :3, 3] = rng.uniform(-1, 1, (n, 3))
    pub, corr = corrupt_poses(7, true, Conditions(pose_noise_m=0.02, pose_noise_deg=1.0))
    assert corr is None
    dt = pub[:, :3, 3] - true[:, :3, 3]
    np.testing.assert_allclose(dt.std(axis=0), 0.02, rtol=0.06)
    np.testing.assert_allclose(dt.mean(axis=0), 0.0, atol=0.002)
    dR = pub[:, :3, :3] @ np.swapaxes(true[:, :3, :3], 1, 2)  # world-frame rotation error
    _, ang = pose_distance(pub, true)
    # |w| of a 3-D Gaussian with sigma s per axis has RMS sqrt(3) s
    assert np.sqrt(np.mean(ang**2)) == pytest.approx(np.sqrt(3) * np.radians(1.0), rel=0.06)
    np.testing.assert_allclose(np.einsum("nii->n", dR), 1 + 2 * np.cos(ang), atol=1e-9)


def test_pose_drift_is_smooth_and_reaches_its_size(clean):
    """Drift alone: zero at the first frame, exactly the requested translation and yaw at the last,
    smooth in between; the images are untouched and the true poses kept apart."""
    cond = Conditions(pose_drift_m=0.05, pose_drift_deg=2.0)
    scene = apply_conditions(clean, cond)
    true = scene.ground_truth_poses
    np.testing.assert_array_equal(true, clean.true_poses())
    pub = np.stack([f.c2w for f in scene.frames])
    D = pub @ invert_pose(true)  # world-frame drift of each frame
    np.testing.assert_allclose(D[0], np.eye(4), atol=1e-12)
    _, yaw = pose_distance(D[-1], np.eye(4))
    assert np.degrees(yaw) == pytest.approx(2.0, abs=1e-9)
    assert abs(D[-1][2, 2] - 1.0) < 1e-12  # about world z
    # the translation part (the drift applied to the first camera position) reaches 5 cm
    p0 = true[0, :3, 3]
    moved = D[:, :3, :3] @ p0 + D[:, :3, 3] - p0
    assert np.linalg.norm(moved[-1]) == pytest.approx(0.05, abs=1e-12)
    steps = np.linalg.norm(np.diff(moved, axis=0), axis=1)
    assert steps.max() < 0.05 * 3.0 / (F - 1)  # smooth: no step much above the average
    dt, _ = pose_distance(pub, true)
    assert dt[0] == 0.0 and dt.max() > 0.04
    for a, b in zip(scene.frames, clean.frames):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        assert a.distortion is None


def test_late_correction_removes_the_drift_and_keeps_the_noise(clean, tmp_path):
    cond = Conditions(pose_noise_m=0.01, pose_noise_deg=0.5, pose_drift_m=0.05, late_correction=True)
    scene = apply_conditions(clean, cond)
    noise_only = apply_conditions(clean, Conditions(pose_noise_m=0.01, pose_noise_deg=0.5))
    np.testing.assert_allclose(scene.corrected_poses, np.stack([f.c2w for f in noise_only]), atol=1e-12)
    pub = np.stack([f.c2w for f in scene.frames])
    e_pub, _ = pose_distance(pub, scene.ground_truth_poses)
    e_cor, _ = pose_distance(scene.corrected_poses, scene.ground_truth_poses)
    assert e_cor[-1] < e_pub[-1] - 0.03  # the drift is gone
    drift_only = apply_conditions(clean, Conditions(pose_drift_m=0.05, late_correction=True))
    np.testing.assert_allclose(drift_only.corrected_poses, drift_only.ground_truth_poses, atol=1e-12)

    d = scene.save(tmp_path / "s", preview=False)
    stamps, T, header = read_poses(d / POSE_CORRECTIONS_FILE)
    assert header["kind"] == "late_correction" and header["available_after"] == scene.frames[-1].stamp
    np.testing.assert_array_equal(stamps, [f.stamp for f in scene.frames])
    np.testing.assert_array_equal(T, scene.corrected_poses)  # exact round trip
    stamps, T, header = read_poses(d / GROUND_TRUTH_POSES_FILE)
    assert header["kind"] == "ground_truth" and "available_after" not in header
    np.testing.assert_array_equal(T, scene.ground_truth_poses)
    with pytest.raises(ConditionsError, match="late_correction needs a pose drift"):
        Conditions(pose_noise_m=0.02, late_correction=True)


def test_pose_file_errors_name_the_problem(tmp_path):
    p = tmp_path / "p.json"
    write_poses(p, "ground_truth", [1.0, 2.0], np.tile(np.eye(4), (2, 1, 1)))
    doc = json.loads(p.read_text())
    doc["poses"][1]["c2w"][0][0] = 2.0
    p.write_text(json.dumps(doc))
    with pytest.raises(SceneFormatError, match=r"pose 1: .*not orthonormal"):
        read_poses(p)
    doc["poses"][1] = {"stamp": 2.0}
    p.write_text(json.dumps(doc))
    with pytest.raises(SceneFormatError, match="pose 1: malformed"):
        read_poses(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(SceneFormatError, match="not a pose file"):
        read_poses(p)
    with pytest.raises(ValueError, match="kind must be"):
        write_poses(p, "odometry", [1.0], np.eye(4)[None])


# ---------------------------------------------------------------------------- exposure
def test_exposure_and_white_balance_change_only_the_written_images(clean):
    cond = Conditions(exposure_stops=1.0, white_balance_stops=0.25)
    scene = apply_conditions(clean, cond)
    g = scene.gains
    assert g.shape == (F, 3)
    stops = np.log2(g)
    assert np.all(np.abs(stops[:, 1]) <= 1.0) and np.ptp(stops[:, 1]) > 0.5  # exposure, on green
    wb = stops[:, [0, 2]] - stops[:, 1:2]
    assert np.all(np.abs(wb) <= 0.25) and np.ptp(wb) > 0.1  # white balance: red and blue against green
    for f, c, gain in zip(scene.frames, clean.frames, g):
        want = np.clip(np.round(c.rgb.astype(np.float32) * gain.astype(np.float32)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(f.rgb, want)
        np.testing.assert_array_equal(f.c2w, c.c2w)
        np.testing.assert_array_equal(f.depth, c.depth)
    assert scene.ground_truth_poses is None
    for a, b in zip(scene.ground_truth_frames(), clean.frames):
        np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(colour_gains(clean.seed, F, cond), g)
    with pytest.raises(ConditionsError, match=r"exposure_stops must be in \[0, 3\]"):
        Conditions(exposure_stops=4.0)
    with pytest.raises(ConditionsError, match="pose_noise_m must be a finite number"):
        Conditions(pose_noise_m=float("nan"))


# ---------------------------------------------------------------------------- files
def test_conditioned_scene_round_trips_through_its_folder(clean, tmp_path):
    cond = Conditions(
        distortion=DEFAULT_LENSES["rational_polynomial"],
        pose_noise_m=0.02,
        pose_noise_deg=1.0,
        pose_drift_m=0.05,
        late_correction=True,
        exposure_stops=1.0,
        white_balance_stops=0.2,
    )
    scene = apply_conditions(clean, cond)
    with pytest.raises(ValueError, match="already has conditions"):
        apply_conditions(scene, cond)
    d = scene.save(tmp_path / "s", preview=False)
    back = load_scene(d)
    assert back.conditions == cond
    assert scene_digest(back) == scene_digest(scene)
    assert all(f.distortion == cond.distortion for f in back.frames)
    for name in ("ground_truth_poses", "corrected_poses", "gains"):
        np.testing.assert_array_equal(getattr(back, name), getattr(scene, name))
    # the ground truth of a loaded scene is rendered again from the seed: the same clean views
    for a, b in zip(back.ground_truth_frames(), clean.frames):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.c2w, b.c2w)
    gts = back.ground_truth_scene()
    assert gts.conditions is None and gts.objects is back.objects
    # a folder missing its ground-truth poses is refused naming the file
    (d / GROUND_TRUTH_POSES_FILE).unlink()
    with pytest.raises(SceneFormatError, match="ground_truth_poses.json: missing"):
        load_scene(d)


def test_scene_command_writes_conditions_and_transforms(tmp_path, capsys):
    from lerf_ros.cli import main
    from lerf_ros.data.transforms_json import read_transforms

    out = tmp_path / "cmd"
    args = ["scene", "--seed", "3", "--out", str(out), "--width", "32", "--height", "24", "--frames", "4"]
    extra = ["--distortion", "equidistant", "--pose-noise", "0.02,1", "--pose-drift", "0.05,1", "--late-correction"]
    assert main(args + extra + ["--exposure", "1", "--white-balance", "0.2", "--transforms"]) == 0
    text = capsys.readouterr().out
    assert "lens equidistant" in text and "late correction" in text and "colour gains" in text
    scene = load_scene(out)
    assert scene.conditions.pose_drift_deg == 1.0 and scene.conditions.white_balance_stops == 0.2
    tf = read_transforms(out / "transforms")
    assert len(tf) == 4
    for a, b in zip(tf, scene.frames):
        assert a.distortion == b.distortion == DEFAULT_LENSES["equidistant"]
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)  # the corrupted poses, as published
        np.testing.assert_array_equal(a.rgb, b.rgb)
    doc = json.loads((out / "transforms" / "transforms.json").read_text())
    assert doc["camera_model"] == "OPENCV_FISHEYE"

    for bad, message in [
        (["--distortion", "fisheye"], "'fisheye' is not supported"),
        (["--distortion", "plumb_bob:0.1,nan"], "k2 is NaN"),
        (["--late-correction"], "needs a pose drift"),
        (["--pose-noise", "0.02"], "expected 2 numbers"),
        (["--pose-drift", "-1"], "must be finite and >= 0"),
        (["--exposure", "5"], "exposure_stops"),
        (["--distortion", "rational_polynomial", "--transforms"], "no form of the rational_polynomial"),
    ]:
        assert main(args + bad) == 2, bad
        assert message in capsys.readouterr().err, bad


def test_replay_publishes_the_lens_and_the_corrupted_poses(tmp_path):
    """``lerf-ros replay`` of a conditioned scene folder, received over DDS: camera_info carries
    the lens (distortion_model and D) and the poses are the corrupted ones, not the ground truth."""
    rclpy = pytest.importorskip("rclpy")
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo

    from lerf_ros.ros.convert import pose_to_matrix

    from ros_helpers import (
        lerf_ros_argv,
        process_output,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
    )

    lens = DEFAULT_LENSES["rational_polynomial"]
    scene = make_scene(
        seed=6,
        width=32,
        height=24,
        n_frames=4,
        nthreads=1,
        conditions=Conditions(distortion=lens, pose_noise_m=0.03, pose_noise_deg=1.0),
    )
    d = scene.save(tmp_path / "s", preview=False)
    domain = unique_domain_id()
    infos, poses = [], []
    with ros_context(domain) as ctx:
        node = rclpy.create_node("conditions_replay_listener", context=ctx)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(CameraInfo, "cam/camera_info", infos.append, qos)
        node.create_subscription(PoseStamped, "cam/pose", poses.append, qos)
        proc = start_process(
            lerf_ros_argv("replay", str(d), "--rate", "10", "--topics", "cam", "--wait-for-subscribers", "1"),
            env=ros_env(domain),
        )
        try:
            ok = spin_until(node, lambda: (len(infos) >= 4 and len(poses) >= 4) or proc.poll() is not None, 60.0)
            assert ok and len(infos) >= 4, process_output(proc)
            stop_process(proc, timeout=15.0, sig=signal.SIGINT)
        finally:
            if proc.poll() is None:
                stop_process(proc, timeout=2.0, sig=signal.SIGKILL)
            node.destroy_node()
    for m in infos:
        assert m.distortion_model == "rational_polynomial"
        np.testing.assert_array_equal(np.asarray(m.d), lens.coeffs)
    got = np.stack([pose_to_matrix(p) for p in poses[:4]])
    np.testing.assert_allclose(got, np.stack([f.c2w for f in scene.frames]), atol=1e-9)
    dt, _ = pose_distance(got, scene.ground_truth_poses)
    assert dt.min() > 1e-3  # not the ground truth
