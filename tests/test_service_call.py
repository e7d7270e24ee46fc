"""``call_service`` asks again when an answer is lost, and gives up with None after its timeout; the
``LerfClient`` built on it (``lerf-ros query --service``, ``lerf-ros demo``) against a real server."""

import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lerf_ros.ros.common import call_service  # noqa: E402

from ros_helpers import ros_context, unique_domain_id  # noqa: E402


def _spin_in_thread(ctx, server):
    """Spin ``server`` on a thread of its own until the returned event is set; returns (stop, thread).
    The node is destroyed when the thread ends."""
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(server)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)
        ex.remove_node(server)
        server.destroy_node()
        ex.shutdown(timeout_sec=0)

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    return stop, t


def _serve(ctx, handler):
    """A Trigger server spun on its own thread; returns (stop, thread)."""
    server = rclpy.create_node("slow_server", context=ctx)
    server.create_service(Trigger, "/flaky", handler)
    return _spin_in_thread(ctx, server)


def test_lost_answer_is_asked_again_and_a_dead_server_gives_none():
    calls = []

    def handler(req, resp):
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(1.5)  # the first answer comes after the client gave up on it: as if lost
        resp.success, resp.message = True, f"answer {len(calls)}"
        return resp

    with ros_context(unique_domain_id()) as ctx:
        stop, t = _serve(ctx, handler)
        node = rclpy.create_node("asker", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        client = node.create_client(Trigger, "/flaky")
        try:
            deadline = time.monotonic() + 30.0
            while not client.service_is_ready() and time.monotonic() < deadline:
                ex.spin_once(timeout_sec=0.05)
            assert client.service_is_ready()
            resp = call_service(
                client, Trigger.Request(), lambda s: ex.spin_once(timeout_sec=s), timeout=20.0, first_wait=0.5
            )
            assert resp is not None and resp.success
            assert len(calls) >= 2 and resp.message != "answer 1", (calls, resp.message)

            stop.set()
            t.join(10.0)
            t0 = time.monotonic()
            resp = call_service(
                client, Trigger.Request(), lambda s: ex.spin_once(timeout_sec=s), timeout=1.5, first_wait=0.2
            )
            assert resp is None
            assert time.monotonic() - t0 < 5.0
        finally:
            stop.set()
            ex.remove_node(node)
            node.destroy_node()
            ex.shutdown(timeout_sec=0)


def _canned_response():
    """A Query response as the query node packs it: 3 points, 2 grasps, step 7."""
    import numpy as np
    from geometry_msgs.msg import PoseStamped

    from lerf_ros.geometry.poses import make_pose
    from lerf_ros.ros.convert import matrix_to_pose, points_to_pointcloud2
    from lerf_ros.srv import Query

    xyz = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [-1.0, 0.0, 2.0]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    rel = np.array([0.9, 0.7, 0.55], np.float32)
    poses = [
        make_pose([0.1, -0.2, 0.3], [0.0, 0.0, 0.0, 1.0]),
        make_pose([0.5, 0.0, 0.1], [0.0, np.sin(0.4), 0.0, np.cos(0.4)]),
    ]
    resp = Query.Response(success=True, message="found it", model_step=7, scale=0.25, max_relevancy=0.9)
    resp.cloud = points_to_pointcloud2(xyz, rgb, {"relevancy": rel}, "map")
    resp.grasps = [PoseStamped(pose=matrix_to_pose(T)) for T in poses]
    resp.grasp_scores, resp.grasp_widths = [0.8, 0.3], [0.05, 0.07]
    return resp, xyz, rgb, rel, poses


def test_response_to_result_unpacks_what_the_node_packs():
    import numpy as np

    from lerf_ros.ros.client import response_to_result
    from lerf_ros.srv import Query

    resp, xyz, rgb, rel, poses = _canned_response()
    r = response_to_result(resp)
    assert r.success and r.message == "found it" and r.step == 7
    assert r.scale == pytest.approx(0.25) and r.max_relevancy == pytest.approx(0.9)
    np.testing.assert_array_equal(r.points, xyz)
    np.testing.assert_array_equal(r.colors, rgb)
    np.testing.assert_array_equal(r.relevancy, rel)
    assert [g.score for g in r.grasps] == pytest.approx([0.8, 0.3])
    assert [g.width for g in r.grasps] == pytest.approx([0.05, 0.07])
    for g, T in zip(r.grasps, poses):
        np.testing.assert_allclose(g.pose, T, atol=1e-12)
    failed = response_to_result(Query.Response(success=False, message="no model yet"))
    assert not failed.success and failed.message == "no model yet" and len(failed.points) == 0 and not failed.grasps


def _query_server(ctx, requests):
    """A /lerf/query server answering with the canned response, plus a /lerf/status publisher."""
    from lerf_ros.msg import TrainingStatus
    from lerf_ros.ros.common import QUERY_SERVICE, STATUS_QOS, STATUS_TOPIC
    from lerf_ros.srv import Query

    def handler(req, _resp):
        requests.append(req)
        return _canned_response()[0]

    server = rclpy.create_node("fake_lerf_query", context=ctx)
    server.create_service(Query, QUERY_SERVICE, handler)
    status = server.create_publisher(TrainingStatus, STATUS_TOPIC, STATUS_QOS)
    server.create_timer(0.05, lambda: status.publish(TrainingStatus(step=42, state_name="training")))
    return _spin_in_thread(ctx, server)


def test_lerf_client_queries_and_follows_status():
    import numpy as np

    from lerf_ros.ros.client import LerfClient

    requests = []
    with ros_context(unique_domain_id()) as ctx:
        stop, t = _query_server(ctx, requests)
        try:
            with LerfClient("client_under_test", follow_status=True, context=ctx) as client:
                assert client.wait_for_service(30.0)
                with pytest.raises(ValueError, match="control character"):
                    client.query("bot\x00tle")  # would be sent as "bot"
                with pytest.raises(ValueError, match="negative has a control character"):
                    client.query("bottle", negatives=["cup\x1b"])
                r = client.query("blue mug", negatives=["plate"], threshold=0.6, max_grasps=2, timeout=20.0)
                deadline = time.monotonic() + 10.0
                while client.status is None and time.monotonic() < deadline:
                    client.spin_once(0.05)
                assert client.status is not None and client.status.step == 42
        finally:
            stop.set()
            t.join(10.0)
    assert r is not None and r.success and r.step == 7 and len(r.grasps) == 2
    np.testing.assert_array_equal(r.relevancy, _canned_response()[3])
    req = requests[0]
    assert (req.text, list(req.negatives), req.max_grasps) == ("blue mug", ["plate"], 2)
    assert req.threshold == pytest.approx(0.6)


def test_query_command_against_a_running_service(tmp_path):
    """``lerf-ros query --service``: the command prints the answer and writes the PLY."""
    import subprocess

    from ros_helpers import lerf_ros_argv, ros_env

    domain = unique_domain_id()
    requests = []
    with ros_context(domain) as ctx:
        stop, t = _query_server(ctx, requests)
        try:
            out = subprocess.run(
                lerf_ros_argv("query", "blue mug", "--service", "--negatives", "plate", "--ply", str(tmp_path)),
                env=ros_env(domain),
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            stop.set()
            t.join(10.0)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "'blue mug': ok (" in out.stdout and "model step 7): found it" in out.stdout
    assert (
        "grasp 1: position (+0.100, -0.200, +0.300) m, quaternion xyzw (+0.000, +0.000, +0.000, +1.000), "
        "width 5.0 cm, score 0.80" in out.stdout
    )
    assert "grasp 2: position (+0.500, +0.000, +0.100) m" in out.stdout
    assert (tmp_path / "blue_mug.ply").is_file()
    assert [list(r.negatives) for r in requests] == [["plate"]]


def test_query_command_refuses_control_characters_before_calling():
    """A control character would be refused by the node (a NUL cut short on the way); the command
    says so itself, with a short excerpt, and calls nothing."""
    import subprocess

    from ros_helpers import lerf_ros_argv, ros_env

    for argv in (["blue\x1bmug"], ["mug", "--negatives", "plate", "tab\there"]):
        out = subprocess.run(
            lerf_ros_argv("query", *argv, "--service"),
            env=ros_env(unique_domain_id()),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stdout + out.stderr
        assert "control character" in out.stderr and "not available" not in out.stderr
