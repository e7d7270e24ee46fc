"""Late pose corrections: a keyframe's input pose replaced after the fact (a SLAM loop closure).

ROS-free: ``KeyframeStore.set_pose`` (rigid poses only, nothing changed otherwise; the store version
and the slot's pose version move; training rays and snapshots follow) and ``Session.correct_poses``
(matched by stamp, updated only beyond the tolerance, bad poses skipped, counted).
Over DDS: the trainer node receives frames whose poses drifted, then a ``nav_msgs/Path`` of corrected
poses on ``corrected_path_topic``; ``/lerf/keyframes`` then shows the corrected poses and
``/lerf/status`` counts the corrections.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.frame import FrameError
from lerf_ros.data.synthetic import make_scene
from lerf_ros.geometry.poses import make_pose, pose_distance
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=6, n_objects=3, width=40, height=30, n_frames=8, nthreads=1)


def drift(c2w, i, per_frame_m=0.01, per_frame_deg=0.5):
    """``c2w`` moved by i * 1 cm along x and turned by i * 0.5 degrees about the world z axis."""
    a = math.radians(per_frame_deg * i)
    q = np.array([0.0, 0.0, math.sin(a / 2), math.cos(a / 2)])
    return make_pose(np.array([per_frame_m * i, 0.0, 0.0]), q) @ c2w


def test_set_pose_checks_and_replaces(scene):
    store = KeyframeStore(preset("tiny").keyframes, bounded=False, recency_boost=0.0)
    key, _ = store.add(scene.frames[0])
    slot = store.get(key).slot
    v0, (_, pose_versions) = store.version, store.slot_generations()
    bad = np.eye(4)
    bad[0, 0] = 2.0  # not a rotation
    for pose in (bad, np.full((4, 4), np.nan), np.eye(3)):
        with pytest.raises(FrameError):
            store.set_pose(key, pose)
    assert store.version == v0 and np.array_equal(store.get(key).c2w, scene.frames[0].c2w)

    new = drift(scene.frames[0].c2w, 5)
    assert store.set_pose(key, new)
    assert store.version > v0 and store.slot_generations()[1][slot] == pose_versions[slot] + 1
    np.testing.assert_array_equal(store.get(key).c2w, new)
    np.testing.assert_array_equal(store.cameras()[0].c2w, new)
    batch = store.sample(64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.origins, torch.as_tensor(new[:3, 3], dtype=torch.float32).expand(64, 3))
    assert not store.set_pose(key + 1, new)  # not stored: nothing to correct


def quiet_log(lines):
    return lambda level, text: lines.append((level, text))


def test_correct_poses_by_stamp_beyond_tolerance(scene, tmp_path):
    lines = []
    cfg = preset("tiny").override({"teacher.kind": "none", "output_dir": str(tmp_path), "trainer.rays_per_batch": 128})
    session = Session(cfg, online=False, log=quiet_log(lines))
    frames = scene.frames
    for i, f in enumerate(frames):
        session.add(dataclasses.replace(f, c2w=drift(f.c2w, i)))
    session.step()  # a model exists: corrections arrive while it trains
    truth = {f.stamp: f.c2w for f in frames}
    kfs = session.keyframes.keyframes()
    # Frames 0 (no drift) and 1 (1 cm, 0.5 deg: not beyond 2 cm / 1 deg) stay; 2..7 move.
    # Stamps slightly off still match; a stamp 1 s off matches nothing.
    corrections = [(f.stamp + 0.001, f.c2w) for f in frames[:6]] + [(frames[6].stamp + 1.0, frames[6].c2w)]
    bad = np.eye(4)
    bad[:3, :3] *= 2.0
    corrections.append((frames[7].stamp, bad))
    version = session.keyframes.version
    n = session.correct_poses(corrections, tolerance_m=0.02, tolerance_deg=1.0, stamp_tolerance_s=0.005)
    assert n == 4  # frames 2, 3, 4, 5
    assert session.pose_corrections == 4 and session.keyframes.version > version
    after = {kf.stamp: kf.c2w for kf in session.keyframes.keyframes()}
    for i, kf in enumerate(kfs):
        if 2 <= i <= 5:
            np.testing.assert_allclose(after[kf.stamp], truth[kf.stamp])
        else:
            np.testing.assert_array_equal(after[kf.stamp], kf.c2w)
    assert [t for lv, t in lines if lv == "warning"] == [
        "late pose corrections: 1 pose(s) are not rigid transforms with a finite stamp; skipped"
    ]
    # The snapshot's cameras are the corrected ones, and training goes on.
    snap_poses = np.stack([c.c2w for c in session.snapshot().cameras])
    dt, _ = pose_distance(snap_poses[2:6], np.stack([truth[kf.stamp] for kf in kfs[2:6]]))
    assert np.all(dt < 1e-6)
    assert np.isfinite(session.step()["rgb"])
    # Applying the same corrections again changes nothing; a mapping works as well as pairs.
    assert session.correct_poses(dict(corrections[:6]), tolerance_m=0.02, tolerance_deg=1.0) == 0
    assert session.correct_poses({}) == 0
    with pytest.raises(ValueError, match="tolerances"):
        session.correct_poses(corrections, tolerance_m=-1.0)


# ---------------------------------------------------------------------------------- over DDS
def test_corrected_path_over_dds_moves_the_keyframes(scene, tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from geometry_msgs.msg import PoseArray, PoseStamped
    from nav_msgs.msg import Path
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from lerf_ros.msg import TrainingStatus
    from lerf_ros.ros.convert import K_to_camera_info, matrix_to_pose, numpy_to_image, pose_to_matrix, sec_to_stamp

    from ros_helpers import (
        process_output,
        python_argv,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
    )

    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    preset: tiny\n"
        f"    output_dir: '{tmp_path / 'out'}'\n    world_frame: map\n"
        "    teacher:\n      kind: none\n"
        "    trainer:\n      max_steps: 5\n      checkpoint_every: 0\n"
        "    keyframes:\n      min_keyframes_to_train: 2\n      min_translation: 0.001\n      min_rotation_deg: 0.1\n"
        "lerf_trainer:\n  ros__parameters:\n    pose_source: pose\n    status_rate_hz: 5.0\n    resume: false\n"
        "    corrected_path_topic: /slam/corrected_path\n"
        "    input_qos_reliability: reliable\n    input_qos_depth: 50\n"  # every frame counts here
        "    pose_correction_tolerance_m: 0.01\n    pose_correction_tolerance_deg: 0.5\n"
    )
    domain = unique_domain_id()
    proc = start_process(
        python_argv("-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)), env=ros_env(domain)
    )
    frames = scene.frames[:6]
    stamps = [200.0 + i for i in range(len(frames))]
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("slam", context=ctx)
            got = {}
            node.create_subscription(TrainingStatus, "/lerf/status", lambda m: got.__setitem__("status", m), 10)
            latched = QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
            )
            node.create_subscription(PoseArray, "/lerf/keyframes", lambda m: got.__setitem__("kf", m), latched)
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            pub_img = node.create_publisher(Image, "image", qos)
            pub_info = node.create_publisher(CameraInfo, "camera_info", qos)
            pub_pose = node.create_publisher(PoseStamped, "pose", qos)
            pub_path = node.create_publisher(Path, "/slam/corrected_path", qos)
            assert spin_until(
                node,
                lambda: "status" in got and pub_img.get_subscription_count() and pub_path.get_subscription_count(),
                90.0,
            ), process_output(proc)

            # The odometry drifts: frame i is off by i cm and i * 0.5 degrees.
            for i, (f, t) in enumerate(zip(frames, stamps)):
                st = sec_to_stamp(t)
                info = K_to_camera_info(f.K, f.width, f.height)
                info.header.stamp, info.header.frame_id = st, "camera_optical_frame"
                pub_info.publish(info)
                ps = PoseStamped()
                ps.header.stamp, ps.header.frame_id = st, "map"
                ps.pose = matrix_to_pose(drift(f.c2w, i))
                pub_pose.publish(ps)
                spin_until(node, lambda: False, 0.15)  # the pose first
                pub_img.publish(numpy_to_image(f.rgb, "rgb8", st, "camera_optical_frame"))
            n = len(frames)
            assert spin_until(node, lambda: got["status"].frames_kept == n and "kf" in got, 60.0), (
                got["status"].frames_kept,
                got["status"].last_drop_reason,
                process_output(proc),
            )
            assert got["status"].pose_corrections == 0

            # The loop closes: the corrected path gives the true poses, at the stamps of frames 0, 2
            # and 4 and 0.3 s before and after those of frames 1, 3 and 5 (reached by interpolation
            # between two equal poses), plus one invalid and one foreign pose.
            path = Path()
            path.header.frame_id = "map"
            for i, (f, t) in enumerate(zip(frames, stamps)):
                for dt in (0.0,) if i % 2 == 0 else (-0.3, 0.3):
                    ps = PoseStamped()
                    ps.header.stamp, ps.header.frame_id = sec_to_stamp(t + dt), "map"
                    ps.pose = matrix_to_pose(f.c2w)
                    path.poses.append(ps)
            nan = PoseStamped()
            nan.header.stamp = sec_to_stamp(stamps[-1] + 5.0)
            nan.pose = matrix_to_pose(frames[0].c2w)
            nan.pose.orientation.x = float("nan")
            foreign = PoseStamped()
            foreign.header.stamp, foreign.header.frame_id = sec_to_stamp(stamps[-1] + 6.0), "odom"
            foreign.pose = matrix_to_pose(frames[0].c2w)
            path.poses += [nan, foreign]
            for _ in range(2):  # published twice: the second changes nothing
                pub_path.publish(path)
                spin_until(node, lambda: False, 0.5)

            def corrected():
                kf = got["kf"]
                if len(kf.poses) != n:
                    return False
                poses = np.stack([pose_to_matrix(p) for p in kf.poses])
                dt, ang = pose_distance(poses, np.stack([f.c2w for f in frames]))
                return bool(np.all(dt < 1e-4) and np.all(ang < 1e-4))

            assert spin_until(node, lambda: got["status"].pose_corrections == n - 1 and corrected(), 30.0), (
                got["status"].pose_corrections,
                process_output(proc),
            )
            spin_until(node, lambda: False, 1.0)
            assert got["status"].pose_corrections == n - 1  # the repeated path moved nothing
            assert proc.poll() is None, process_output(proc)
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    log = process_output(proc, tail=200000)
    assert code == 0, log
    assert log.count("late pose corrections (corrected path): 5 keyframe pose(s)") == 1, log
    assert log.count("corrected path: 1 invalid pose(s)") == 1, log
    assert log.count("not in the world frame 'map' skipped") == 1, log
