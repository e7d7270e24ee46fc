"""The trainer's input side: stamps, poses and drop reasons.

- ``DropReporter`` logs each distinct reason once (again after a quiet period) and counts per reason;
- over DDS, against a real trainer process: one far-future pose and one far-future image do not stop
  learning, a real time jump (all stamps 1000 s back) is detected and learning goes on; every kind
  of bad input gets its own logged reason and count in the status; poses published a little after
  their images are all used.
"""

import time

import pytest

from lerf_ros.ros.trainer_node import DropReporter, reason_key

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from test_nodes import StatusWatcher, node_argv, write_params  # noqa: E402

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.ros.convert import K_to_camera_info, matrix_to_pose, numpy_to_image, sec_to_stamp  # noqa: E402

from ros_helpers import (  # noqa: E402
    process_output,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
    unique_domain_id,  # noqa: E402
)

W, H = 64, 48
CAMERA = "camera_optical_frame"


def test_drop_reporter_logs_each_distinct_reason_once_and_again_after_quiet():
    lines = []
    t = [0.0]
    rep = DropReporter(lines.append, quiet_s=30.0, max_reasons=4, clock=lambda: t[0])
    for k in range(3):
        rep.drop(f"bad pose at {100 + k}.000: quaternion has zero length")
        rep.drop(f"bad pose at {100 + k}.000: PoseStamped pose contains NaN or infinite values")
        t[0] += 1.0
    assert len(lines) == 2 and "zero length" in lines[0] and "NaN" in lines[1]
    assert rep.count == 6 and dict(rep.counts())[reason_key("bad pose at 1.0: quaternion has zero length")] == 3
    # Recurs after a quiet period: logged again, once.
    t[0] += 31.0
    rep.drop("bad pose at 200.000: quaternion has zero length")
    rep.drop("bad pose at 201.000: quaternion has zero length")
    assert len(lines) == 3 and "again" in lines[2] and "zero length" in lines[2]
    # Events are logged by the same rule but not counted as drops; reasons beyond the cap are pooled.
    rep.note("image stream time jumped")
    assert len(lines) == 4 and rep.count == 8
    for k in range(5):
        rep.drop(f"problem number {'x' * k}")
    assert len(rep.counts()) <= 4 and DropReporter.OTHER in dict(rep.counts())
    # Numbers do not make reasons distinct; different words do.
    assert reason_key("image is 32x24 but camera_info says 64x48") == reason_key(
        "image is 1x2 but camera_info says 3x4"
    )
    assert reason_key("zero image size (0x0)") != reason_key("step 5 < row 6")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=W, height=H, n_frames=16, nthreads=1)


@pytest.fixture(scope="module")
def scene_dir(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("input") / "scene"
    scene.save(d, preview=False)
    return d


class Streamer:
    """Publishes the scene's frames (camera_info, pose, image, optional depth) into the trainer."""

    def __init__(self, node, frames):
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.node, self.frames = node, frames
        self.image = node.create_publisher(Image, "image", qos)
        self.info = node.create_publisher(CameraInfo, "camera_info", qos)
        self.depth = node.create_publisher(Image, "depth", qos)
        self.pose = node.create_publisher(PoseStamped, "pose", qos)

    def ready(self):
        return self.image.get_subscription_count() > 0 and self.pose.get_subscription_count() > 0

    def pause(self, seconds):
        spin_until(self.node, lambda: False, seconds)

    def send_info(self, i, stamp=0.0):
        f = self.frames[i % len(self.frames)]
        msg = K_to_camera_info(f.K, f.width, f.height, stamp, CAMERA)
        self.info.publish(msg)
        return msg

    def send_pose(self, i, stamp, pose=None):
        ps = PoseStamped()
        ps.header.stamp, ps.header.frame_id = sec_to_stamp(stamp), "map"
        ps.pose = matrix_to_pose(self.frames[i % len(self.frames)].c2w) if pose is None else pose
        self.pose.publish(ps)

    def send_image(self, i, stamp, rgb=None, encoding="rgb8"):
        f = self.frames[i % len(self.frames)]
        img = numpy_to_image(f.rgb if rgb is None else rgb, encoding, stamp, CAMERA)
        self.image.publish(img)
        return img

    def send(self, i, stamp, pose=None, gap=0.05):
        self.send_info(i, stamp)
        self.send_pose(i, stamp, pose)
        self.pause(gap)
        self.send_image(i, stamp)


def start_trainer(scene_dir, tmp_path, **extra):
    # These tests count every frame they send: reliable input with room for a busy executor (the
    # default best-effort sensor QoS may lose a frame on a loaded machine, as a camera driver would).
    extra.setdefault("input_qos_reliability", "reliable")
    extra.setdefault("input_qos_depth", 50)
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out", **extra)
    domain = unique_domain_id()
    return domain, start_process(node_argv(params, "lerf_ros.ros.trainer_node"), env=ros_env(domain))


def connect(node, streamer, status, proc):
    ok = spin_until(node, lambda: status.last is not None and streamer.ready() or proc.poll() is not None, 90.0)
    assert ok and proc.poll() is None, process_output(proc)


def stream_until(streamer, status, first_index, stamp0, predicate, timeout, period=0.25):
    """Send frames first_index, first_index + 1, ... at stamp0 + k * period until predicate() or timeout;
    returns (ok, seconds taken, frames sent)."""
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < timeout:
        streamer.send(first_index + k, stamp0 + k * period)
        k += 1
        streamer.pause(period - 0.05)
        if predicate():
            return True, time.monotonic() - t0, k
    return bool(predicate()), time.monotonic() - t0, k


def test_far_stamps_do_not_stop_learning_and_a_real_jump_recovers(scene, scene_dir, tmp_path):
    domain, proc = start_trainer(scene_dir, tmp_path)
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_stamps", context=ctx)
            status = StatusWatcher(node)
            streamer = Streamer(node, scene.frames)
            connect(node, streamer, status, proc)
            t0 = 5000.0  # a recorded stream, far from the wall clock
            ok, _, sent = stream_until(streamer, status, 0, t0, lambda: status.last.frames_kept >= 3, 60.0)
            assert ok, process_output(proc)
            stamp = t0 + sent * 0.25

            # One poisoned pose 1e6 s ahead, one poisoned image 2e6 s ahead.
            streamer.send_pose(0, stamp + 1e6)
            streamer.pause(0.1)
            streamer.send_image(1, stamp + 2e6)
            streamer.pause(0.3)
            kept = status.last.frames_kept
            ok, took, n = stream_until(
                streamer, status, sent, stamp + 1.0, lambda: status.last.frames_kept >= kept + 2, 10.0
            )
            assert ok, (took, status.last.last_drop_reason, list(status.last.drop_reasons), process_output(proc))
            assert any("outlier" in r for r in status.last.drop_reasons), list(status.last.drop_reasons)
            stamp += 1.0 + n * 0.25

            # A real jump: every stamp 1000 s back (a bag restarted).
            kept = status.last.frames_kept
            # Until the jump is counted too: ``kept`` may come from a status already out of date, and a
            # jump needs three consistent stamps before it is taken for one.
            ok, took, _ = stream_until(
                streamer,
                status,
                sent + n,
                stamp - 1000.0,
                lambda: status.last.frames_kept >= kept + 2 and status.last.time_jumps >= 1,
                30.0,
            )
            assert ok, (took, status.last.last_drop_reason, list(status.last.drop_reasons), process_output(proc))
            assert spin_until(node, lambda: status.last.time_jumps >= 1, 5.0)
            assert proc.poll() is None
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    log = process_output(proc, tail=200000)
    assert code == 0, log
    assert "time jumped" in log, log


def test_each_bad_input_has_its_own_logged_reason_and_count(scene, scene_dir, tmp_path):
    domain, proc = start_trainer(scene_dir, tmp_path)
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_reasons", context=ctx)
            status = StatusWatcher(node)
            streamer = Streamer(node, scene.frames)
            connect(node, streamer, status, proc)
            now = time.time()
            f = scene.frames[0]

            def nan_pose():
                p = matrix_to_pose(f.c2w)
                p.position.y = float("nan")
                return p

            def zero_quat():
                p = matrix_to_pose(f.c2w)
                p.orientation.x = p.orientation.y = p.orientation.z = p.orientation.w = 0.0
                return p

            def far_pose():
                T = f.c2w.copy()
                T[:3, 3] = [1e12, 0.0, 0.0]
                return matrix_to_pose(T)

            def zero_size(stamp):
                img = streamer.send_image(0, stamp)
                img.height = img.width = img.step = 0
                img.data = b""
                streamer.image.publish(img)

            def short_step(stamp):
                img = numpy_to_image(f.rgb, "rgb8", stamp, CAMERA)
                img.step = W * 3 - 1
                img.data = img.data[: img.step * H]
                streamer.image.publish(img)

            def nan_k(stamp):
                info = K_to_camera_info(f.K, W, H, stamp, CAMERA)
                k = list(info.k)
                k[0] = float("nan")
                info.k = k
                streamer.info.publish(info)

            def zero_info(stamp):
                info = K_to_camera_info(f.K, W, H, stamp, CAMERA)
                info.width = info.height = 0
                streamer.info.publish(info)

            def rgb8_depth(stamp):
                streamer.send_info(0, stamp)
                streamer.send_pose(0, stamp)
                streamer.depth.publish(numpy_to_image(f.rgb, "rgb8", stamp, CAMERA))
                streamer.pause(0.1)
                streamer.send_image(0, stamp)

            cases = [
                ("zero size", lambda s: (streamer.send_info(0, s), streamer.send_pose(0, s), zero_size(s))),
                ("step", lambda s: (streamer.send_pose(0, s), short_step(s))),
                ("NaN or infinite", lambda s: streamer.send_pose(0, s, nan_pose())),
                ("zero length", lambda s: streamer.send_pose(0, s, zero_quat())),
                ("K contains NaN", nan_k),
                ("zero image size", zero_info),
                ("depth encoding 'rgb8'", rgb8_depth),
                ("max_pose_distance_m", lambda s: streamer.send_pose(0, s, far_pose())),
            ]
            stamp = now
            for _ in range(3):  # each case three times: logged once, counted three times
                for _, send in cases:
                    stamp += 0.2
                    send(stamp)
                    streamer.pause(0.15)

            def reasons():
                return dict(zip(status.last.drop_reasons, status.last.drop_counts))

            def counted(text):
                return sum(n for r, n in reasons().items() if text in r)

            ok = spin_until(node, lambda: all(counted(text) >= 3 for text, _ in cases), 30.0)
            assert ok, "\n".join(f"{n} {r}" for r, n in reasons().items()) + process_output(proc)
            assert proc.poll() is None
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    log = process_output(proc, tail=400000)
    assert code == 0, log
    warnings = [line for line in log.splitlines() if "dropping frame" in line]
    for text, _ in cases:
        hits = [line for line in warnings if text in line]
        assert len(hits) >= 1, (text, warnings)
    # "zero size" of the image and "zero image size" of camera_info are each one reason, logged once.
    assert len([w for w in warnings if "image has zero size" in w]) == 1, warnings
    assert len([w for w in warnings if "K contains NaN" in w]) == 1, warnings


def test_poses_arriving_after_their_images_are_used(scene, scene_dir, tmp_path):
    # An image waits up to pose_tolerance_s for its pose; the stamps lie farther apart than that, so
    # an image whose pose is late on a loaded machine can never take the previous frame's pose (it
    # would be skipped as no new view, neither kept nor dropped).
    domain, proc = start_trainer(scene_dir, tmp_path, pose_tolerance_s=0.9)
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_late_poses", context=ctx)
            status = StatusWatcher(node)
            streamer = Streamer(node, scene.frames)
            connect(node, streamer, status, proc)
            stamp = time.time()
            n = 12
            for i in range(n):
                stamp += 1.0
                streamer.send_info(i, stamp)
                streamer.pause(0.02)
                streamer.send_image(i, stamp)
                streamer.pause(0.1)  # the pose comes 0.1 s after its image
                streamer.send_pose(i, stamp)
                streamer.pause(0.2)
            ok = spin_until(node, lambda: status.last.frames_received >= n and status.last.frames_kept >= n, 60.0)
            assert ok, (
                status.last.frames_received,
                status.last.frames_kept,
                list(status.last.drop_reasons),
                process_output(proc),
            )
            assert status.last.frames_dropped == 0, list(status.last.drop_reasons)
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)
