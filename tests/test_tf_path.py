"""The TF path: one shared TF buffer per process, fed on its own thread; answers in moving frames.

Without tf2 (it is not on PyPI): the reasons and the client's frame/stamp helpers, and the command
line's ``--frame-id``. Where tf2 is importable (``pytest.importorskip``):

- ``acquire_tf_feed`` gives the nodes of one process one feed, whose /tf callbacks run on its own
  thread: transforms arrive while no executor spins the nodes; before any /tf the lookup says so
  plainly; the last user's release closes it;
- ``FrameResolver`` gives a moving frame's transform with the stamp of the transform used, and no
  stamp for a frame joined by static transforms only;
- a real process with both nodes (trainer with ``pose_source: tf``): images before any /tf are
  dropped with the plain reason, then, with a mobile manipulator's TF tree (an arm of 20 transforms
  at 50 Hz beside it), frames are kept and training runs; the two nodes share one listener process,
  an answer in ``base_link`` is stamped with the time of the transform used (also through
  ``lerf-ros query --frame-id``), and a moved ``map -> odom`` corrects the keyframes (TF re-lookup).
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from lerf_ros.ros.tf import NO_TF_YET, FrameAnswer, TfCounters, stamp_or  # noqa: E402

from ros_helpers import (  # noqa: E402
    REPO_ROOT,
    call,
    process_output,
    python_argv,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
    unique_domain_id,
    write_node_params,
)


# ---------------------------------------------------------------------------------------------- no tf2 needed
def test_no_tf_reason_is_plain_and_counters_record_the_first_message():
    reason = NO_TF_YET.format(topic="/tf")
    assert reason == "no TF received yet on /tf (is the robot's TF tree published?)"
    c = TfCounters()
    assert not c.received
    c.add(3, static=True)
    assert not c.received and c.static_transforms == 3  # static mounts alone are not a TF tree
    c.add(20, static=False)
    assert c.received and c.messages == 1 and c.transforms == 20


def test_answer_stamp_is_the_transforms_or_now():
    from builtin_interfaces.msg import Time as TimeMsg

    t = TimeMsg(sec=12, nanosec=5)
    assert stamp_or(FrameAnswer(np.eye(4), t), lambda: "now") is t
    assert stamp_or(FrameAnswer(None, None), lambda: "now") == "now"


def test_answer_frame_reads_the_response_header():
    from geometry_msgs.msg import PoseStamped

    from lerf_ros.ros.client import answer_frame
    from lerf_ros.srv import Query

    resp = Query.Response()
    assert answer_frame(resp) == ("", 0.0)
    resp.grasps.append(PoseStamped())
    resp.grasps[0].header.frame_id = "base_link"
    resp.grasps[0].header.stamp.sec, resp.grasps[0].header.stamp.nanosec = 7, 500_000_000
    assert answer_frame(resp) == ("base_link", 7.5)
    resp.cloud.header.frame_id = "tool0"
    assert answer_frame(resp)[0] == "tool0"


def test_cli_frame_id_needs_the_service(tmp_path):
    out = subprocess.run(
        python_argv("-m", "lerf_ros.cli", "query", "mug", "--checkpoint", str(tmp_path), "--frame-id", "base_link"),
        cwd=str(REPO_ROOT),
        env=ros_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--frame-id needs --service" in out.stderr


# ---------------------------------------------------------------------------------------------- with tf2
def _tf2():
    pytest.importorskip("tf2_ros")
    return pytest.importorskip("tf2_msgs.msg")


def _transform(T, parent, child, stamp):
    from lerf_ros.ros.convert import matrix_to_transform_stamped

    return matrix_to_transform_stamped(T, parent, child, stamp)


def _yaw(deg, x=0.0, y=0.0, z=0.0):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = (x, y, z)
    return T


def test_one_feed_per_process_kept_by_a_listener_process():
    tf2_msgs = _tf2()
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from rclpy.time import Time

    from lerf_ros.ros.tf import FrameResolver, acquire_tf_feed

    with ros_context() as ctx:
        a = rclpy.create_node("tf_user_a", context=ctx)
        b = rclpy.create_node("tf_user_b", context=ctx)
        pub_node = rclpy.create_node("tf_pub", context=ctx)
        feed = acquire_tf_feed(a, cache_s=30.0)
        assert acquire_tf_feed(b) is feed and feed.cache_s == 30.0
        resolver = FrameResolver(b, "map")
        assert resolver.feed is feed

        # Before any /tf: the plain reason, for the trainer's drops and for queries.
        T, stamp, reason = feed.lookup("map", "camera", Time(seconds=5).to_msg(), 0.0)
        assert T is None and stamp is None and reason == NO_TF_YET.format(topic="/tf")
        assert "no TF received yet" in resolver.resolve("base_link").error

        tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
        static_pub = pub_node.create_publisher(
            tf2_msgs.TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        )
        map_to_base = _yaw(30.0, 1.0, 2.0)
        t1, t2 = Time(seconds=100).to_msg(), Time(seconds=101).to_msg()
        static_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(_yaw(0.0, 0, 0, 0.5), "map", "mast", t1)]))
        # Nobody spins a, b or the publisher: the feed's own thread receives.
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and feed.lookup("map", "base_link", t2, 0.0)[0] is None:
            tf_pub.publish(
                tf2_msgs.TFMessage(
                    transforms=[
                        _transform(map_to_base, "map", "base_link", t1),
                        _transform(map_to_base, "map", "base_link", t2),
                    ]
                )
            )
            time.sleep(0.1)
        T, stamp, reason = feed.lookup("map", "base_link", t2, 0.0)
        assert T is not None, reason
        np.testing.assert_allclose(T, map_to_base, atol=1e-6)
        assert feed.counters.received and feed.no_tf_reason() == ""
        # The buffer lives in a listener process of its own: this process only asked.
        assert feed._proc.poll() is None and feed._proc.pid != os.getpid()

        # A moving frame: the world -> frame transform at the latest time, stamped with that time.
        answer = resolver.resolve("base_link")
        assert answer.error == "" and (answer.stamp.sec, answer.stamp.nanosec) == (101, 0)
        np.testing.assert_allclose(answer.world_to_frame, np.linalg.inv(map_to_base), atol=1e-6)
        # A frame joined by static transforms only does not move: no stamp (the answer is stamped now).
        assert spin_until(pub_node, lambda: resolver.resolve("mast").error == "", 20.0)
        assert resolver.resolve("mast").stamp is None
        assert resolver.resolve("map") == FrameAnswer(None, None)
        assert "unknown frame 'nowhere'" in resolver.resolve("nowhere").error

        # A clock jump clears /tf's transforms; /tf_static's stay.
        assert feed.clear()
        assert feed.lookup("map", "base_link", t2, 0.0)[0] is None
        assert resolver.resolve("mast").error == ""

        # The last user closes it; a new user gets a new one.
        resolver.close()
        feed.release()  # b's
        assert feed.alive
        feed.release()  # a's: the last
        assert not feed.alive
        assert feed._proc.wait(10.0) == 0  # the listener process ended with its socket
        again = acquire_tf_feed(a)
        assert again is not feed
        again.release()
        for n in (a, b, pub_node):
            n.destroy_node()


ORPHAN = """
import os, sys, time, rclpy
from lerf_ros.ros.tf import acquire_tf_feed
rclpy.init()
feed = acquire_tf_feed(rclpy.create_node("orphan_user"))
print(feed._proc.pid, flush=True)
time.sleep(600)
"""


def test_listener_process_ends_when_its_parent_is_killed():
    _tf2()
    import signal

    p = subprocess.Popen(
        python_argv("-c", ORPHAN), cwd=str(REPO_ROOT), env=ros_env(), stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        child = int(p.stdout.readline())
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10.0)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{child}") or "Z" in _state(child), "the listener process outlived its parent"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group: a listener left behind by a failure too
        except ProcessLookupError:
            pass


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ---------------------------------------------------------------------------------------------- trainer process
W, H = 64, 48
CAMERA = "camera_optical_frame"


@pytest.fixture(scope="module")
def scene():
    from lerf_ros.data.synthetic import make_scene

    return make_scene(seed=11, width=W, height=H, n_frames=16, nthreads=1)


def _params(path, scene_dir, out_dir):
    trainer = {
        "pose_source": "tf",
        "odom_frame": "odom",
        "status_rate_hz": 4.0,
        "input_qos_reliability": "reliable",
        "input_qos_depth": 50,
        "tf_timeout_s": 0.3,
        "tf_relookup_period_s": 1.0,
    }
    return write_node_params(path, scene_dir, out_dir, common={"trainer": {"snapshot_every": 10}}, trainer=trainer)


def _listener_processes(pid):
    """Children of ``pid`` that run the TF listener (``python -m lerf_ros.ros.tf``)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    if b"lerf_ros.ros.tf" in c.read():
                        found.append(int(child))
    return found


def test_trainer_says_no_tf_yet_then_trains_beside_a_busy_arm_and_answers_in_a_moving_frame(scene, tmp_path):
    """Both nodes in one process (the default launch): one TF listener process for the two."""
    tf2_msgs = _tf2()
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image

    from lerf_ros.msg import TrainingStatus
    from lerf_ros.ros.convert import K_to_camera_info, numpy_to_image
    from lerf_ros.srv import Query

    scene_dir = tmp_path / "scene"
    scene.save(scene_dir, preview=False)
    domain = unique_domain_id()
    params = _params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    proc = start_process(
        python_argv("-m", "lerf_ros.ros.lerf_node", "--ros-args", "--params-file", str(params)), env=ros_env(domain)
    )
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("tf_streamer", context=ctx)
            qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
            image_pub = node.create_publisher(Image, "image", qos)
            info_pub = node.create_publisher(CameraInfo, "camera_info", qos)
            tf_pub = node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
            static_pub = node.create_publisher(
                tf2_msgs.TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            )
            last = []
            node.create_subscription(TrainingStatus, "/lerf/status", last.append, 10)
            ok = spin_until(
                node,
                lambda: (last and image_pub.get_subscription_count() > 0) or proc.poll() is not None,
                120.0,
            )
            assert ok and proc.poll() is None, process_output(proc)

            def send_image(i, ns):
                f = scene.frames[i % len(scene.frames)]
                stamp = Time(nanoseconds=ns).to_msg()
                info_pub.publish(K_to_camera_info(f.K, f.width, f.height, stamp, CAMERA))
                image_pub.publish(numpy_to_image(f.rgb, "rgb8", stamp, CAMERA))

            def now_ns():
                return node.get_clock().now().nanoseconds

            # Images with no TF at all: dropped, and the reason says what is missing.
            for i in range(3):
                send_image(i, now_ns())
                spin_until(node, lambda: False, 0.3)
            assert spin_until(node, lambda: last[-1].frames_dropped >= 1, 30.0), process_output(proc)
            assert any("no TF received yet on /tf" in r for r in last[-1].drop_reasons), list(last[-1].drop_reasons)
            assert "no TF received yet on /tf (is the robot's TF tree published?)" in process_output(proc)

            # The tree: map -> odom (ahead, 10 Hz), odom -> base_link at the image stamps, static mounts,
            # and an arm of 20 transforms in one message at 50 Hz.
            optical = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
            mount = _yaw(0.0, 0.1, 0.0, 0.8)
            map_to_odom = _yaw(15.0, 0.3, -0.2)
            static_pub.publish(
                tf2_msgs.TFMessage(
                    transforms=[
                        _transform(mount, "base_link", "camera_link", Time().to_msg()),
                        _transform(optical, "camera_link", CAMERA, Time().to_msg()),
                    ]
                )
            )
            camera_to_base = np.linalg.inv(mount @ optical)
            dropped_before = last[-1].frames_dropped
            t0 = time.monotonic()
            next_image = next_odom = t0
            i = 0
            while time.monotonic() - t0 < 90.0 and not (last[-1].frames_kept >= 4 and last[-1].step >= 20):
                now = time.monotonic()
                ns = now_ns()
                arm = []
                parent = "base_link"
                for j in range(20):
                    arm.append(
                        _transform(
                            _yaw(10 * math.sin(now + j), 0, 0, 0.05), parent, f"arm_{j}", Time(nanoseconds=ns).to_msg()
                        )
                    )
                    parent = f"arm_{j}"
                tf_pub.publish(tf2_msgs.TFMessage(transforms=arm))
                if now >= next_odom:
                    ahead = Time(nanoseconds=ns + 200_000_000).to_msg()
                    tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(map_to_odom, "map", "odom", ahead)]))
                    next_odom += 0.1
                if now >= next_image and now - t0 > 0.5:
                    f = scene.frames[i % len(scene.frames)]
                    base = np.linalg.inv(map_to_odom) @ f.c2w @ camera_to_base
                    tf_pub.publish(
                        tf2_msgs.TFMessage(
                            transforms=[_transform(base, "odom", "base_link", Time(nanoseconds=ns).to_msg())]
                        )
                    )
                    send_image(i, ns)
                    last_base_ns = ns
                    i += 1
                    next_image += 0.25
                spin_until(node, lambda: False, 0.02)
            s = last[-1]
            assert s.frames_kept >= 4 and s.step >= 20, (
                s.frames_kept,
                s.step,
                list(s.drop_reasons),
                process_output(proc),
            )
            # Frames sent with the tree: (almost) all found their pose.
            tf_drops = s.frames_dropped - dropped_before
            assert tf_drops <= max(2, i // 4), (tf_drops, i, list(s.drop_reasons), list(s.drop_counts))
            # One listener process serves the trainer and the query node.
            assert len(_listener_processes(proc.pid)) == 1, _listener_processes(proc.pid)

            # An answer in base_link (it moves: odom -> base_link at each image) is stamped with the time
            # of the transform used: the last base_link sent (the streaming has stopped).
            client = node.create_client(Query, "/lerf/query")
            assert spin_until(node, lambda: client.service_is_ready(), 60.0)
            text = scene.objects[0].class_name
            resp = None
            deadline = time.monotonic() + 120.0
            while time.monotonic() < deadline:
                resp = call(node, client, Query.Request(text=text, threshold=0.01, frame_id="base_link"))
                if resp.success or "unknown frame" in resp.message:
                    break
                spin_until(node, lambda: False, 2.0)  # the first snapshot is still being prepared
            assert resp is not None and resp.success, resp.message
            assert resp.cloud.header.frame_id == "base_link"
            stamp = resp.cloud.header.stamp
            assert stamp.sec * 1_000_000_000 + stamp.nanosec == last_base_ns, (stamp, last_base_ns)

            # The command line asks the same and prints the frame and that stamp.
            argv = ["query", text, "--service", "--threshold", "0.01", "--frame-id", "base_link"]
            out = subprocess.run(
                python_argv("-m", "lerf_ros.cli", *argv),
                cwd=str(REPO_ROOT),
                env=ros_env(domain),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"positions in frame 'base_link', stamp {last_base_ns * 1e-9:.3f} s" in out.stdout, out.stdout

            # A loop closure: map -> odom moves 20 cm; the keyframes, looked up again at their own stamps
            # through odom (one request to the listener for all), take the corrected poses.
            assert last[-1].pose_corrections == 0
            moved = _yaw(15.0, 0.5, -0.2)

            def corrected():
                ahead = Time(nanoseconds=now_ns() + 200_000_000).to_msg()
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(moved, "map", "odom", ahead)]))
                return last[-1].pose_corrections >= 1

            assert spin_until(node, corrected, 30.0), (last[-1].pose_corrections, process_output(proc))
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
