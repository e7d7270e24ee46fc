"""/diagnostics: the level rules (``lerf_ros.mapping.health``) on a fake clock, then the real nodes.

Over DDS (the trainer and query nodes in one process, ``lerf_ros.ros.lerf_node``; this test process
publishes the camera stream and listens to /diagnostics): the trainer's input check warns before
any image arrives, is OK while a good stream flows, warns when the stream stops, and warns again
when a stream of unreadable images floods the drops; the query node reports its snapshot and
queries checks.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from lerf_ros.mapping.health import ERROR, OK, WARN, HealthLimits, TrainerCounters, TrainerHealth, query_checks


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def counters(**kw) -> TrainerCounters:
    base = dict(
        frames_received=0,
        drops=(),
        queue_depth=0,
        queue_size=4,
        state="waiting_for_frames",
        error="",
        step=0,
        rays_per_second=0.0,
        keyframes=0,
        max_keyframes=200,
        memory_mb=0.0,
        max_memory_mb=2048.0,
        teacher_backlog=0,
    )
    base.update(kw)
    return TrainerCounters(**base)


def by_name(checks):
    return {c.name: c for c in checks}


def test_input_warns_on_a_stall_and_on_a_flood_of_drops():
    clock = FakeClock()
    health = TrainerHealth(HealthLimits(stall_s=3.0, max_drop_fraction=0.5, min_drops=3, window_s=10.0), clock)
    c = by_name(health.checks(counters()))
    assert c["input"].level == OK and c["training"].level == OK and c["keyframes"].level == OK
    clock.t += 3.0
    c = by_name(health.checks(counters()))
    assert c["input"].level == WARN and "since start" in c["input"].message

    received = 0
    for _ in range(10):  # 5 images/s, all kept
        clock.t += 1.0
        received += 5
        c = by_name(health.checks(counters(frames_received=received, state="training", step=received)))
    assert c["input"].level == OK and c["input"].message.startswith("5.0 images/s"), c["input"].message
    assert float(c["training"].value("steps per second")) == pytest.approx(5.0)

    clock.t += 2.0  # below stall_s: still fine
    assert by_name(health.checks(counters(frames_received=received)))["input"].level == OK
    clock.t += 1.5
    c = by_name(health.checks(counters(frames_received=received)))
    assert c["input"].level == WARN and c["input"].message == "no image for 4 s"

    drops = 0
    for _ in range(10):  # 10 images/s, 8 of them unreadable
        clock.t += 1.0
        received += 10
        drops += 8
        c = by_name(health.checks(counters(frames_received=received, drops=(("unknown encoding 'x'", drops),))))
    assert c["input"].level == WARN and "unknown encoding" in c["input"].message, c["input"].message
    assert c["input"].value("drops: unknown encoding 'x'") == str(drops)
    for _ in range(11):  # the flood is over: the window forgets it
        clock.t += 1.0
        received += 10
        c = by_name(health.checks(counters(frames_received=received, drops=(("unknown encoding 'x'", drops),))))
    assert c["input"].level == OK, c["input"].message

    # a couple of drops are not a flood
    clock.t += 1.0
    c = by_name(health.checks(counters(frames_received=received + 2, drops=(("unknown encoding 'x'", drops + 2),))))
    assert c["input"].level == OK


def test_training_error_and_teacher_backlog():
    clock = FakeClock()
    health = TrainerHealth(HealthLimits(), clock)
    c = by_name(health.checks(counters(state="error", error="training stopped: RuntimeError('nan loss')")))
    assert c["training"].level == ERROR and "nan loss" in c["training"].message
    c = by_name(health.checks(counters(state="paused", teacher_backlog=101, keyframes=120)))
    assert c["training"].level == OK and c["keyframes"].level == WARN and "backlog 101" in c["keyframes"].message
    c = by_name(health.checks(counters(state="training", teacher_backlog=10, keyframes=120, memory_mb=300.0)))
    assert c["keyframes"].level == OK and c["keyframes"].message.startswith("120 of 200 keyframes, 300 of 2048 MB")


def test_query_checks_levels():
    none_yet = by_name(query_checks({"step": -1}))
    assert none_yet["snapshot"].level == OK and "no snapshot yet" in none_yet["snapshot"].message
    st = {
        "step": 300,
        "version": 2,
        "age_s": 4.2,
        "preparing_step": 400,
        "queries": 10,
        "latency_p50_ms": 20.0,
        "latency_p95_ms": 40.0,
    }
    c = by_name(query_checks(st))
    assert c["snapshot"].level == OK and c["snapshot"].message == (
        "answering from step 300 (snapshot #2, 4 s old); preparing step 400"
    )
    assert c["queries"].value("latency p95 ms") == "40.0"
    failed = by_name(query_checks(dict(st, error="preparing the model at step 400 failed: boom")))
    assert failed["snapshot"].level == WARN and "answering from step 300" in failed["snapshot"].message
    broken = by_name(query_checks({"step": -1}, engine_error="the text encoder could not be loaded: no weights"))
    assert broken["snapshot"].level == ERROR


# ---------------------------------------------------------------------------------- over DDS
W, H = 64, 48


@pytest.mark.timeout(600)
def test_diagnostics_levels_follow_the_input_over_dds(tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.ros.convert import K_to_camera_info, matrix_to_pose, numpy_to_image, sec_to_stamp

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

    scene = make_scene(seed=5, width=W, height=H, n_frames=12, nthreads=1)
    scene.save(tmp_path / "scene", preview=False)
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    preset: tiny\n"
        f"    output_dir: '{tmp_path / 'out'}'\n    resume: false\n"
        f"    teacher:\n      kind: ground_truth\n      scene_dir: '{tmp_path / 'scene'}'\n"
        "    trainer:\n      checkpoint_every: 0\n"
        "lerf_trainer:\n  ros__parameters:\n    pose_source: pose\n    diagnostics_stall_s: 2.0\n"
    )
    domain = unique_domain_id()
    proc = start_process(
        python_argv("-m", "lerf_ros.ros.lerf_node", "--ros-args", "--params-file", str(params)), env=ros_env(domain)
    )
    seen = []  # (monotonic time, {name: DiagnosticStatus})
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("diagnostics_listener", context=ctx)
            node.create_subscription(
                DiagnosticArray,
                "/diagnostics",
                lambda m: seen.append((time.monotonic(), {s.name: s for s in m.status})),
                10,
            )
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            pub_img = node.create_publisher(Image, "image", qos)
            pub_info = node.create_publisher(CameraInfo, "camera_info", qos)
            pub_pose = node.create_publisher(PoseStamped, "pose", qos)

            def latest(name):
                for _, statuses in reversed(seen):
                    if name in statuses:
                        return statuses[name]
                return None

            def wait_level(name, level, timeout, contains=""):
                def ok():
                    assert proc.poll() is None, process_output(proc)
                    s = latest(name)
                    return s is not None and s.level == bytes([level]) and contains in s.message

                assert spin_until(node, ok, timeout), (name, level, latest(name), process_output(proc)[-3000:])
                return latest(name)

            # No image yet: WARN once diagnostics_stall_s has passed since the start.
            s = wait_level("lerf_trainer: input", WARN, 120.0, "since start")
            # The query node publishes its own array (its first one may come a little later).
            wait_level("lerf_query: snapshot", OK, 60.0)
            assert spin_until(node, lambda: latest("lerf_query: queries") is not None, 30.0)
            assert latest("lerf_trainer: training") is not None

            # A good stream at about 5 images/s: OK.
            frames = scene.frames

            def send(i, rgb_encoding="rgb8"):
                f = frames[i % len(frames)]
                st = sec_to_stamp(time.time())
                info = K_to_camera_info(f.K, f.width, f.height)
                info.header.stamp, info.header.frame_id = st, "camera_optical_frame"
                pub_info.publish(info)
                ps = PoseStamped()
                ps.header.stamp, ps.header.frame_id = st, "map"
                ps.pose = matrix_to_pose(f.c2w)
                pub_pose.publish(ps)
                img = numpy_to_image(f.rgb, "rgb8", st, "camera_optical_frame")
                img.encoding = rgb_encoding
                spin_until(node, lambda: False, 0.1)
                pub_img.publish(img)
                spin_until(node, lambda: False, 0.1)

            t_end = time.monotonic() + 60.0
            k = 0
            while time.monotonic() < t_end:
                send(k)
                k += 1
                s = latest("lerf_trainer: input")
                if k > 10 and s is not None and s.level == bytes([OK]):
                    break
            assert s.level == bytes([OK]) and "images/s" in s.message, (s, process_output(proc)[-3000:])
            values = {kv.key: kv.value for kv in s.values}
            assert int(values["frames received"]) >= 5 and values["frames dropped"] == "0", values

            # The stream stops: WARN after diagnostics_stall_s.
            t_stop = time.monotonic()
            s = wait_level("lerf_trainer: input", WARN, 30.0, "no image for")
            assert time.monotonic() - t_stop >= 2.0

            # A flood of unreadable images: WARN naming the drops, the reason counted in the values.
            t_end = time.monotonic() + 60.0
            flood = None
            while time.monotonic() < t_end and flood is None:
                send(k, rgb_encoding="yuv422_yuy2")
                k += 1
                s = latest("lerf_trainer: input")
                if s is not None and s.level == bytes([WARN]) and "dropped" in s.message:
                    flood = s
            assert flood is not None, (latest("lerf_trainer: input"), process_output(proc)[-3000:])
            values = {kv.key: kv.value for kv in flood.values}
            reasons = [key for key in values if key.startswith("drops: ") and "encoding" in key]
            assert reasons and int(values[reasons[0]]) >= 3, values
            assert int(values["frames dropped"]) >= 3
            rates = [t for t, _ in seen]
            assert len(rates) > 5 and np.median(np.diff(rates)) < 1.6  # about 1 Hz per node
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)
