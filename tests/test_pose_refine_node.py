"""Pose refinement seen from ROS: a trainer node fed by ``lerf-ros replay`` reports its learned pose
corrections on /lerf/status, and /lerf/keyframes shows the corrected keyframe poses (over DDS)."""

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseArray  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.msg import TrainingStatus  # noqa: E402

from ros_helpers import (  # noqa: E402
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


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=4, width=48, height=36, n_frames=12, nthreads=1)


def write_params(path, scene_dir, output_dir):
    path.write_text(
        "\n".join(
            [
                "/**:",
                "  ros__parameters:",
                "    preset: tiny",
                f"    output_dir: '{output_dir}'",
                "    teacher:",
                "      kind: ground_truth",
                f"      scene_dir: '{scene_dir}'",
                "    trainer:",
                "      checkpoint_every: 0",
                "      rays_per_batch: 256",
                "      pose_warmup_steps: 0",
                "    keyframes:",
                "      min_keyframes_to_train: 2",
                "lerf_trainer:",
                "  ros__parameters:",
                "    pose_source: pose",
                "    world_frame: map",
                "    status_rate_hz: 5.0",
            ]
        )
        + "\n"
    )
    return path


def test_status_reports_corrections_and_keyframes_show_corrected_poses(scene, tmp_path):
    scene_dir = tmp_path / "scene"
    scene.save(scene_dir, preview=False)
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    domain = unique_domain_id()
    env = ros_env(domain)
    argv = python_argv("-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params))
    trainer = start_process(argv, env=env)
    replay = None
    statuses, keyframes = {}, {}
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_pose_refine", context=ctx)
            node.create_subscription(
                TrainingStatus, "/lerf/status", lambda m: statuses.__setitem__(_stamp(m.header), m), 50
            )
            latched = QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
            )
            node.create_subscription(
                PoseArray, "/lerf/keyframes", lambda m: keyframes.__setitem__(_stamp(m.header), m), latched
            )
            assert spin_until(node, lambda: statuses or trainer.poll() is not None, 90.0), process_output(trainer)
            replay = start_process(lerf_ros_argv("replay", str(scene_dir), "--rate", "8", "--loop"), env=env)

            def corrected_pair():
                for stamp, kf in keyframes.items():
                    s = statuses.get(stamp)
                    if s is not None and s.step > 20 and s.pose_correction_max_m > 0 and len(kf.poses) >= 3:
                        return s, kf
                return None

            assert spin_until(node, lambda: corrected_pair() is not None, 240.0), (
                process_output(trainer),
                process_output(replay),
            )
            status, poses = corrected_pair()
            node.destroy_node()
    finally:
        if replay is not None:
            stop_process(replay, timeout=20.0)
        code = stop_process(trainer, timeout=30.0)
    assert code == 0, process_output(trainer)

    assert status.pose_correction_max_m >= status.pose_correction_mean_m > 0
    assert status.pose_correction_max_deg >= status.pose_correction_mean_deg > 0
    assert status.pose_correction_max_m < 0.05 and status.pose_correction_max_deg < 5.0
    # Each published pose is an input pose moved by its correction: the distance to the nearest
    # input camera is at most the largest correction, and some poses did move.
    inputs = np.stack([f.c2w[:3, 3] for f in scene.frames])
    shown = np.array([[p.position.x, p.position.y, p.position.z] for p in poses.poses])
    nearest = np.linalg.norm(shown[:, None] - inputs[None], axis=-1).min(axis=1)
    assert nearest.max() <= status.pose_correction_max_m + 1e-4
    assert nearest.max() > 1e-6


def _stamp(header):
    return (header.stamp.sec, header.stamp.nanosec)
