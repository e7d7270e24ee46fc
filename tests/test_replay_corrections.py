"""``lerf-ros replay`` of a scene made with a late pose correction: the scene's
``pose_corrections.json`` arrives as a ``nav_msgs/Path`` once the last frame is out, each pose with
the stamp its frame was published with (over DDS, replay in its own process); and the pose topic and
/tf can each be left out."""

import signal

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Path  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.data.synthetic.conditions import Conditions  # noqa: E402
from lerf_ros.geometry.poses import pose_distance  # noqa: E402
from lerf_ros.ros.convert import pose_to_matrix, stamp_to_sec  # noqa: E402

from ros_helpers import (  # noqa: E402
    lerf_ros_argv,
    process_output,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
    unique_domain_id,
)

N_FRAMES = 6
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def scene():
    cond = Conditions(pose_noise_m=0.01, pose_noise_deg=0.5, pose_drift_m=0.08, late_correction=True)
    return make_scene(seed=4, width=48, height=36, n_frames=N_FRAMES, nthreads=1, conditions=cond)


@pytest.fixture(scope="module")
def scene_dir(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("replay_corrections") / "scene"
    scene.save(d, preview=False)
    return d


def path_poses(msg):
    return np.stack([pose_to_matrix(p.pose) for p in msg.poses]), [stamp_to_sec(p.header.stamp) for p in msg.poses]


def test_replay_process_publishes_the_late_correction_after_the_last_frame(scene, scene_dir):
    assert scene.corrected_poses is not None
    # the correction really moves the poses (else the test could not tell them apart)
    dt, _ = pose_distance(scene.corrected_poses, np.stack([f.c2w for f in scene.frames]))
    assert dt[-1] > 0.05
    domain = unique_domain_id()
    rate, start = 10.0, 500.0
    got = {"image": [], "pose": [], "path": []}
    with ros_context(domain) as ctx:
        node = rclpy.create_node("replay_corrections_listener", context=ctx)
        node.create_subscription(Image, "cam/image", got["image"].append, RELIABLE)
        node.create_subscription(PoseStamped, "cam/pose", got["pose"].append, RELIABLE)
        node.create_subscription(Path, "cam/slam_path", got["path"].append, LATCHED)
        proc = start_process(
            lerf_ros_argv(
                "replay",
                str(scene_dir),
                "--rate",
                str(rate),
                "--topics",
                "cam",
                "--no-tf",
                "--corrected-path-topic",
                "slam_path",
                "--start-stamp",
                str(start),
                "--wait-for-subscribers",
                "1",
            ),
            env=ros_env(domain),
        )
        try:
            ok = spin_until(
                node,
                lambda: (got["path"] and len(got["image"]) >= N_FRAMES) or proc.poll() is not None,
                timeout=90.0,
            )
            assert ok and got["path"], f"no corrected path arrived:\n{process_output(proc)}"
            assert node.count_publishers("/tf") == 0  # --no-tf
            assert node.count_publishers("cam/pose") == 1
            code = proc.wait(timeout=30.0)  # the replay ends by itself after the last frame
        finally:
            if proc.poll() is None:
                stop_process(proc, timeout=2.0, sig=signal.SIGKILL)
            node.destroy_node()
    out = process_output(proc)
    assert code == 0, out
    assert "late pose corrections on cam/slam_path after frame 5" in out, out
    assert "published late pose corrections of 6 frame(s)" in out, out
    assert len(got["path"]) == 1  # once: one pass
    path = got["path"][0]
    assert path.header.frame_id == "map" and all(p.header.frame_id == "map" for p in path.poses)
    frame_stamps = start + np.arange(N_FRAMES) / rate
    # known from the last frame's stamp on, and each pose carries the stamp its frame was published with
    assert stamp_to_sec(path.header.stamp) == pytest.approx(frame_stamps[-1], abs=1e-6)
    poses, stamps = path_poses(path)
    np.testing.assert_allclose(stamps, frame_stamps, atol=1e-6)
    dt, ang = pose_distance(poses, scene.corrected_poses)
    assert dt.max() < 1e-6 and ang.max() < 1e-6
    # the pose topic carried the drifting poses with the same stamps
    by_stamp = {round(stamp_to_sec(m.header.stamp), 6): pose_to_matrix(m.pose) for m in got["pose"]}
    for i, t in enumerate(frame_stamps):
        if round(t, 6) in by_stamp:
            np.testing.assert_allclose(by_stamp[round(t, 6)], scene.frames[i].c2w, atol=1e-6)


def test_replay_node_without_pose_topic_publishes_the_path_every_pass(scene):
    from lerf_ros.ros.replay_node import ReplayNode

    frames = scene.frames[:4]
    corrected = scene.corrected_poses[:4]
    got = {"image": [], "path": []}
    with ros_context(unique_domain_id()) as ctx:
        listener = rclpy.create_node("replay_nopose_listener", context=ctx)
        listener.create_subscription(Image, "image", got["image"].append, RELIABLE)
        listener.create_subscription(Path, "corrected_path", got["path"].append, RELIABLE)
        replay = ReplayNode(
            frames,
            rate=25.0,
            loop=True,
            max_frames=9,
            start_stamp=50.0,
            wait_for_subscribers=1,
            wait_timeout=20.0,
            publish_pose=False,
            corrected_poses=corrected,
            corrections_after=3,
            context=ctx,
        )
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(replay)
        ex.add_node(listener)
        try:
            assert spin_until(listener, lambda: replay.done and len(got["path"]) >= 2, timeout=30.0, executor=ex), (
                replay.published,
                len(got["path"]),
            )
            assert listener.count_publishers("pose") == 0
            assert listener.count_publishers("image") == 1
        finally:
            ex.shutdown(timeout_sec=1.0)
            replay.destroy_node()
            listener.destroy_node()
    # passes 1 and 2 ended (frames 0-3 and 4-7); the third pass stopped at max_frames before its end
    assert replay.paths_published == 2 and replay.passes == 3
    for k, msg in enumerate(got["path"][:2]):
        poses, stamps = path_poses(msg)
        np.testing.assert_allclose(stamps, 50.0 + (4 * k + np.arange(4)) / 25.0, atol=1e-6)
        dt, ang = pose_distance(poses, corrected)
        assert dt.max() < 1e-6 and ang.max() < 1e-6


def test_replay_node_checks_the_corrections(scene):
    from lerf_ros.ros.replay_node import ReplayNode

    with ros_context(unique_domain_id()) as ctx:
        with pytest.raises(ValueError, match="corrected_poses must be"):
            ReplayNode(scene.frames, corrected_poses=scene.corrected_poses[:2], context=ctx)
        with pytest.raises(ValueError, match="corrections_after"):
            ReplayNode(scene.frames, corrected_poses=scene.corrected_poses, corrections_after=99, context=ctx)


def test_replay_refuses_no_poses_at_all(scene_dir, capsys):
    from lerf_ros.cli import main

    assert main(["replay", str(scene_dir), "--no-pose-topic", "--no-tf"]) == 2
    assert "no poses at all" in capsys.readouterr().out
