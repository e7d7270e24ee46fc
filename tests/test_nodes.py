"""The trainer and query nodes as real processes, talked to over DDS from this test process.

- both nodes start, publish /lerf/status and answer /lerf/query with clear failures before a model
  exists and for bad requests;
- a replay process streams a synthetic scene into the trainer: keyframes are kept, the step
  increases, a checkpoint is saved on request, pause works, and a restarted trainer resumes;
- bad messages of each kind are dropped with their reason reported (and logged once), and the node
  survives them;
- each node declares its own part of the configuration: ``query.*`` on the query node (described, set
  from the params file), not on the trainer, in one process and as separate processes.
"""

import math
import os
import re
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.msg import TrainingStatus  # noqa: E402
from lerf_ros.ros.convert import K_to_camera_info, matrix_to_pose, numpy_to_image, sec_to_stamp  # noqa: E402
from lerf_ros.srv import Query  # noqa: E402

from ros_helpers import (  # noqa: E402
    call,
    lerf_ros_argv,
    process_output,
    python_argv,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
    unique_domain_id,
    wait_for_service,
    write_node_params,
)

W, H = 64, 48


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=W, height=H, n_frames=16, nthreads=1)


@pytest.fixture(scope="module")
def scene_dir(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("nodes") / "scene"
    scene.save(d, preview=False)
    return d


def write_params(path, scene_dir, output_dir, **trainer):
    """The nodes' params file (``query.threshold`` 0.6 for every node); ``trainer``: more values of
    lerf_trainer."""
    return write_node_params(path, scene_dir, output_dir, common={"query": {"threshold": 0.6}}, trainer=trainer)


class StatusWatcher:
    def __init__(self, node):
        self.last = None
        self.all = []
        node.create_subscription(TrainingStatus, "/lerf/status", self._cb, 10)

    def _cb(self, msg):
        self.last = msg
        self.all.append(msg)


def wait_service_of(node, client, proc, timeout=90.0):
    """Wait for the service while the node process is alive (fail fast if it died)."""
    ok = spin_until(node, lambda: client.service_is_ready() or proc.poll() is not None, timeout)
    assert ok and proc.poll() is None, process_output(proc)


def wait_status(node, status, proc, timeout=90.0):
    ok = spin_until(node, lambda: status.last is not None or proc.poll() is not None, timeout)
    assert ok and proc.poll() is None, process_output(proc)


def node_argv(params, module="lerf_ros.ros.lerf_node"):
    return python_argv("-m", module, "--ros-args", "--params-file", str(params))


class ParameterClient:
    """``ros2 param list / describe / get`` of one node, over DDS."""

    def __init__(self, node, target):
        self.node = node
        self.clients = {
            kind: node.create_client(srv, f"/{target}/{name}")
            for kind, srv, name in (
                ("list", ListParameters, "list_parameters"),
                ("describe", DescribeParameters, "describe_parameters"),
                ("get", GetParameters, "get_parameters"),
            )
        }
        for client in self.clients.values():
            assert wait_for_service(client, 60.0), f"no parameter services on /{target}"

    def names(self):
        return set(call(self.node, self.clients["list"], ListParameters.Request()).result.names)

    def description(self, name):
        return call(self.node, self.clients["describe"], DescribeParameters.Request(names=[name])).descriptors[0]

    def value(self, name):
        return call(self.node, self.clients["get"], GetParameters.Request(names=[name])).values[0]


def check_query_parameters(node, separate):
    """``query.*`` is declared on /lerf_query (described, with the params file's value), not on
    /lerf_trainer; the trainer keeps its own sections."""
    query = ParameterClient(node, "lerf_query")
    names = query.names()
    assert {"query.threshold", "query.max_points", "world_frame", "checkpoint_dir"} <= names
    desc = query.description("query.threshold")
    assert desc.name == "query.threshold" and "relevancy" in desc.description and desc.read_only
    assert query.value("query.threshold").double_value == pytest.approx(0.6)
    # As its own process the query node reads its text encoder's settings; in the trainer's process
    # it shares the trainer's.
    assert ("teacher.kind" in names) == separate and ("preset" in names) == separate
    assert not {n for n in names if n.split(".")[0] in ("model", "trainer", "keyframes")}
    trainer = ParameterClient(node, "lerf_trainer")
    names = trainer.names()
    assert not {n for n in names if n.startswith("query.")}, "query parameters declared on the trainer"
    assert {
        "preset",
        "seed",
        "device",
        "model.hidden_dim",
        "teacher.kind",
        "trainer.max_steps",
        "keyframes.max_keyframes",
        "world_frame",
        "pose_source",
    } <= names
    assert trainer.description("model.hidden_dim").description


def test_nodes_start_report_status_and_refuse_bad_queries(scene_dir, tmp_path):
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    domain = unique_domain_id()
    proc = start_process(node_argv(params), env=ros_env(domain))
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_client", context=ctx)
            status = StatusWatcher(node)
            client = node.create_client(Query, "/lerf/query")
            wait_service_of(node, client, proc)
            wait_status(node, status, proc)
            assert status.last.state == TrainingStatus.STATE_WAITING_FOR_FRAMES
            assert status.last.step == 0 and status.last.frames_received == 0
            check_query_parameters(node, separate=False)

            resp = call(node, client, Query.Request(text="mug"))
            assert not resp.success and "no model yet" in resp.message
            for req, expected in [
                (Query.Request(text=""), "empty"),
                (Query.Request(text="   "), "empty"),
                (Query.Request(text="x" * 5000), "long"),
                (Query.Request(text="mug", threshold=7.0), "threshold"),
                (Query.Request(text="mug", threshold=float("nan")), "threshold"),
                (Query.Request(text="mug", frame_id="no_such_frame"), "unknown frame"),
            ]:
                resp = call(node, client, req)
                assert not resp.success, req
                assert expected in resp.message.lower(), (req.text[:20], resp.message)
            assert proc.poll() is None, "the node died answering bad requests"
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)


def test_streamed_frames_train_checkpoint_pause_and_resume(scene_dir, tmp_path):
    out = tmp_path / "out"
    params = write_params(tmp_path / "params.yaml", scene_dir, out)
    domain = unique_domain_id()
    env = ros_env(domain)
    trainer = start_process(node_argv(params), env=env)
    replay = None
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_client", context=ctx)
            status = StatusWatcher(node)
            wait_status(node, status, trainer)
            replay = start_process(lerf_ros_argv("replay", str(scene_dir), "--rate", "8", "--loop"), env=env)
            assert spin_until(node, lambda: status.last.frames_kept >= 3 and status.last.step > 0, 180.0), (
                process_output(trainer),
                process_output(replay),
            )
            s1 = status.last.step
            assert spin_until(node, lambda: status.last.step > s1 + 5, 120.0), process_output(trainer)
            assert status.last.state == TrainingStatus.STATE_TRAINING
            assert status.last.frames_received >= status.last.frames_kept
            assert status.last.rays_per_second > 0 and math.isfinite(status.last.loss_rgb)

            save = node.create_client(Trigger, "/lerf/save_checkpoint")
            assert wait_for_service(save, 30.0)
            resp = call(node, save, Trigger.Request())
            assert resp.success, resp.message
            path = re.search(r"saved (\S+)", resp.message).group(1)
            assert os.path.isfile(path) and path.startswith(str(out))
            saved_step = int(re.search(r"step (\d+)", resp.message).group(1))
            assert saved_step > 0

            pause = node.create_client(SetBool, "/lerf/pause")
            assert call(node, pause, SetBool.Request(data=True)).success
            assert spin_until(node, lambda: status.last.state == TrainingStatus.STATE_PAUSED, 30.0)
            paused_step = status.last.step
            t_end = time.monotonic() + 2.0
            spin_until(node, lambda: time.monotonic() > t_end, 5.0)
            assert status.last.step == paused_step, "training went on while paused"
            assert call(node, pause, SetBool.Request(data=False)).success
            assert spin_until(node, lambda: status.last.step > paused_step, 60.0)
            node.destroy_node()
    finally:
        if replay is not None:
            stop_process(replay, timeout=20.0)
        code = stop_process(trainer, timeout=30.0)
    assert code == 0, process_output(trainer)

    # A restarted trainer with the same output folder resumes from the newest checkpoint.
    trainer = start_process(node_argv(params), env=env)
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_client2", context=ctx)
            status = StatusWatcher(node)
            wait_status(node, status, trainer)
            assert status.last.step >= saved_step
            assert "resumed from checkpoint" in process_output(trainer)
            node.destroy_node()
    finally:
        code = stop_process(trainer, timeout=30.0)
    assert code == 0, process_output(trainer)


def test_bad_messages_are_dropped_with_reasons_and_the_node_survives(scene, scene_dir, tmp_path):
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    domain = unique_domain_id()
    proc = start_process(node_argv(params, "lerf_ros.ros.trainer_node"), env=ros_env(domain))
    frames = scene.frames
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_publisher", context=ctx)
            status = StatusWatcher(node)
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            pub_img = node.create_publisher(Image, "image", qos)
            pub_info = node.create_publisher(CameraInfo, "camera_info", qos)
            pub_depth = node.create_publisher(Image, "depth", qos)
            pub_pose = node.create_publisher(PoseStamped, "pose", qos)
            assert spin_until(
                node,
                lambda: (
                    status.last is not None
                    and pub_img.get_subscription_count() > 0
                    and pub_pose.get_subscription_count() > 0
                ),
                90.0,
            ), process_output(proc)

            def send(i, stamp, rgb=None, encoding="rgb8", pose=None, info=True, depth=None):
                f = frames[i]
                st = sec_to_stamp(stamp)
                if info:
                    msg = K_to_camera_info(f.K, f.width, f.height)
                    msg.header.stamp, msg.header.frame_id = st, "camera_optical_frame"
                    pub_info.publish(msg)
                ps = PoseStamped()
                ps.header.stamp, ps.header.frame_id = st, "map"
                ps.pose = matrix_to_pose(f.c2w) if pose is None else pose
                pub_pose.publish(ps)
                if depth is not None:
                    pub_depth.publish(numpy_to_image(depth, "32FC1", st, "camera_optical_frame"))
                img = numpy_to_image(f.rgb if rgb is None else rgb, encoding, st, "camera_optical_frame")
                spin_until(node, lambda: False, 0.15)  # let the pose arrive first
                pub_img.publish(img)

            def expect_drop(reason, before):
                ok = spin_until(
                    node,
                    lambda: status.last.frames_dropped > before and reason in status.last.last_drop_reason.lower(),
                    30.0,
                )
                assert ok, (reason, status.last.last_drop_reason, process_output(proc))
                return status.last.frames_dropped

            # No camera_info yet.
            send(0, 100.0, info=False)
            n = expect_drop("camera_info", 0)
            # Unknown encoding (published as raw bytes with an encoding the node cannot read).
            bad = numpy_to_image(frames[0].rgb, "rgb8", sec_to_stamp(100.1), "camera_optical_frame")
            bad.encoding = "yuv422_yuy2"
            pub_info.publish(K_to_camera_info(frames[0].K, W, H))
            spin_until(node, lambda: False, 0.2)
            pub_img.publish(bad)
            n = expect_drop("encoding", n)
            # Image and camera_info sizes disagree.
            send(0, 100.2, rgb=np.zeros((H // 2, W // 2, 3), np.uint8))
            n = expect_drop("camera_info says", n)
            # NaN pose and a non-rigid pose.
            nan_pose = matrix_to_pose(frames[0].c2w)
            nan_pose.orientation.x = float("nan")
            send(0, 100.3, pose=nan_pose)
            n = expect_drop("pose", n)
            scaled = matrix_to_pose(frames[0].c2w)
            scaled.orientation.w *= 3.0  # not a unit quaternion: not a rotation
            send(0, 100.4, pose=scaled)
            n = expect_drop("pose", n)
            # Depth of the wrong size.
            send(0, 100.5, depth=np.ones((H // 2, W // 2), np.float32))
            n = expect_drop("depth", n)
            # A good frame is kept; then a stamp going backwards is dropped.
            send(0, 101.0)
            assert spin_until(node, lambda: status.last.frames_kept >= 1, 30.0), process_output(proc)
            send(1, 100.9)
            n = expect_drop("backwards", n)
            # The same bad input again: counted, not logged again.
            for k in range(3):
                send(0, 102.0 + 0.1 * k, rgb=np.zeros((H // 2, W // 2, 3), np.uint8))
            assert spin_until(node, lambda: status.last.frames_dropped >= n + 3, 30.0)
            assert proc.poll() is None, "the trainer died on bad input"
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    log = process_output(proc, tail=200000)
    assert code == 0, log
    assert log.count("camera_info says") == 1, log


def test_separate_query_node_declares_the_query_parameters(scene_dir, tmp_path):
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    domain = unique_domain_id()
    env = ros_env(domain)
    procs = [
        start_process(node_argv(params, f"lerf_ros.ros.{name}"), env=env) for name in ("trainer_node", "query_node")
    ]
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_params", context=ctx)
            check_query_parameters(node, separate=True)
            assert all(p.poll() is None for p in procs), [process_output(p) for p in procs]
            node.destroy_node()
    finally:
        codes = [stop_process(p, timeout=30.0) for p in procs]
    assert codes == [0, 0], [process_output(p) for p in procs]
