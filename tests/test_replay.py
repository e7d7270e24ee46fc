"""``lerf-ros replay`` over real DDS: a replay process publishes a tiny synthetic scene, this
process subscribes with rclpy and checks what arrives; plus the in-process ``ReplayNode``."""

import re
import signal

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.ros.convert import camera_info_to_K, image_to_numpy, pose_to_matrix, stamp_to_sec  # noqa: E402

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


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=2, width=64, height=48, n_frames=N_FRAMES, nthreads=1)


@pytest.fixture(scope="module")
def scene_dir(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("replay") / "scene"
    scene.save(d, preview=False)
    return d


class Recorder:
    """Subscribes to the replay topics and keeps every message."""

    def __init__(self, node, prefix="", qos=None):
        qos = qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.msgs = {"image": [], "camera_info": [], "depth": [], "pose": []}
        types = {"image": Image, "camera_info": CameraInfo, "depth": Image, "pose": PoseStamped}
        p = prefix + "/" if prefix else ""
        self.subs = [node.create_subscription(types[k], p + k, self.msgs[k].append, qos) for k in self.msgs]

    def count(self, key):
        return len(self.msgs[key])


def match_index(frames, T):
    """Index of the source frame whose pose equals T (to float64 round-off), else -1."""
    errs = [np.abs(f.c2w - T).max() for f in frames]
    i = int(np.argmin(errs))
    return i if errs[i] < 1e-9 else -1


def check_stream(frames, rec, rate, n_min):
    """Every received message: increasing evenly spaced stamps, poses equal to consecutive source
    frames, and the image, camera_info and depth of the same stamp equal to that frame's."""
    poses, images, infos, depths = (rec.msgs[k] for k in ("pose", "image", "camera_info", "depth"))
    assert len(poses) >= n_min and len(images) >= n_min and len(infos) >= n_min and len(depths) >= n_min
    for key, msgs in rec.msgs.items():
        stamps = np.array([stamp_to_sec(m.header.stamp) for m in msgs])
        assert np.all(np.diff(stamps) > 0), f"{key} stamps do not increase: {stamps}"
        # stamps are start + i / rate: evenly spaced, whatever the wall-clock jitter
        np.testing.assert_allclose(np.diff(stamps), 1.0 / rate, atol=1e-6, err_msg=key)
    by_stamp = {stamp_to_sec(m.header.stamp): m for m in images}
    info_by_stamp = {stamp_to_sec(m.header.stamp): m for m in infos}
    depth_by_stamp = {stamp_to_sec(m.header.stamp): m for m in depths}
    indices = []
    for pose in poses:
        assert pose.header.frame_id == "map"
        T = pose_to_matrix(pose)
        i = match_index(frames, T)
        assert i >= 0, "a received pose matches no source pose"
        indices.append(i)
        t = stamp_to_sec(pose.header.stamp)
        if t in by_stamp:  # the image of the same frame carries the same stamp and the same pixels
            img = by_stamp[t]
            assert img.header.frame_id == "camera_optical_frame" and img.encoding == "rgb8"
            rgb, kind = image_to_numpy(img)
            np.testing.assert_array_equal(rgb, frames[i].rgb)
            K, w, h = camera_info_to_K(info_by_stamp[t])
            np.testing.assert_allclose(K, frames[i].K, atol=1e-9)
            assert (w, h) == (frames[i].width, frames[i].height)
            d, kind = image_to_numpy(depth_by_stamp[t])
            assert kind == "depth"
            np.testing.assert_array_equal(d, frames[i].depth)
    # consecutive source frames, wrapping around at the end when looping
    assert all((b - a) % len(frames) == 1 for a, b in zip(indices, indices[1:])), indices
    return indices


def test_replay_process_streams_scene_over_dds(scene, scene_dir):
    domain = unique_domain_id()
    rate = 10.0
    with ros_context(domain) as ctx:
        node = rclpy.create_node("replay_test_listener", context=ctx)
        rec = Recorder(node, prefix="cam")
        proc = start_process(
            lerf_ros_argv(
                "replay",
                str(scene_dir),
                "--rate",
                str(rate),
                "--loop",
                "--topics",
                "cam",
                "--wait-for-subscribers",
                "1",
                "--log-every",
                "0.5",
            ),
            env=ros_env(domain),
        )
        try:
            n_want = N_FRAMES + 4  # crosses the loop boundary
            ok = spin_until(
                node, lambda: min(rec.count(k) for k in rec.msgs) >= n_want or proc.poll() is not None, timeout=60.0
            )
            assert ok and proc.poll() is None, f"replay did not stream:\n{process_output(proc)}"
            code = stop_process(proc, timeout=15.0, sig=signal.SIGINT)
        finally:
            if proc.poll() is None:
                stop_process(proc, timeout=2.0, sig=signal.SIGKILL)
            node.destroy_node()
    out = process_output(proc)
    assert code == 0, f"replay exited with {code} after SIGINT:\n{out}"
    assert re.search(r"published \d+ frames \(pass \d, frame \d/6\) at [\d.]+ Hz \(target 10 Hz\)", out), out
    assert "stopped after" in out and "Traceback" not in out
    indices = check_stream(scene.frames, rec, rate, n_min=N_FRAMES + 4)
    # it waited for this subscriber, so the first frame was not lost
    assert indices[0] == 0


def test_replay_process_stops_on_sigterm(scene_dir):
    domain = unique_domain_id()
    with ros_context(domain) as ctx:
        node = rclpy.create_node("replay_sigterm_listener", context=ctx)
        rec = Recorder(node, qos=qos_profile_sensor_data)  # a best-effort subscriber works with the default QoS
        proc = start_process(
            lerf_ros_argv("replay", str(scene_dir), "--rate", "20", "--loop", "--no-depth"), env=ros_env(domain)
        )
        try:
            assert spin_until(node, lambda: rec.count("pose") >= 2 or proc.poll() is not None, timeout=60.0), (
                process_output(proc)
            )
            code = stop_process(proc, timeout=15.0, sig=signal.SIGTERM)
        finally:
            if proc.poll() is None:
                stop_process(proc, timeout=2.0, sig=signal.SIGKILL)
            node.destroy_node()
    assert code == 0, process_output(proc)
    assert rec.count("depth") == 0


def test_replay_node_in_process_loop_clock_and_max_frames(scene):
    from rosgraph_msgs.msg import Clock

    from lerf_ros.ros.replay_node import ReplayNode

    frames = scene.frames[:4]
    with ros_context(unique_domain_id()) as ctx:
        listener = rclpy.create_node("replay_inproc_listener", context=ctx)
        rec = Recorder(listener, prefix="inproc")
        clocks = []
        listener.create_subscription(Clock, "/clock", clocks.append, QoSProfile(depth=100))
        replay = ReplayNode(
            frames,
            rate=25.0,
            loop=True,
            publish_clock=True,
            topic_prefix="inproc",
            max_frames=10,
            start_stamp=50.0,
            wait_for_subscribers=1,
            wait_timeout=20.0,
            context=ctx,
        )
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(replay)
        ex.add_node(listener)
        try:
            assert spin_until(
                listener,
                lambda: replay.done and rec.count("image") >= 10 and len(clocks) >= 10,
                timeout=30.0,
                executor=ex,
            )
        finally:
            ex.shutdown(timeout_sec=1.0)
            replay.destroy_node()
            listener.destroy_node()
    assert replay.published == 10 and replay.passes == 3
    np.testing.assert_allclose(replay.stamps, 50.0 + np.arange(10) / 25.0)
    np.testing.assert_allclose([stamp_to_sec(c.clock) for c in clocks[:10]], replay.stamps)
    indices = check_stream(frames, rec, 25.0, n_min=10)
    assert indices == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_replay_rejects_bad_source(tmp_path, capsys):
    from lerf_ros.cli import main

    assert main(["replay", str(tmp_path / "nothing-here")]) == 2
    assert "cannot open" in capsys.readouterr().out
    assert main(["replay", "synthetic:colour=red"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().out
