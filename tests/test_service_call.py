"""``call_service`` asks again when an answer is lost, and gives up with None after its timeout."""
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lerf_ros.ros.common import call_service  # noqa: E402

from ros_helpers import ros_context, unique_domain_id  # noqa: E402


def _serve(ctx, handler):
    """A Trigger server spun on its own thread; returns (stop, thread)."""
    server = rclpy.create_node("slow_server", context=ctx)
    server.create_service(Trigger, "/flaky", handler)
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
            resp = call_service(client, Trigger.Request(), lambda s: ex.spin_once(timeout_sec=s),
                                timeout=20.0, first_wait=0.5)
            assert resp is not None and resp.success
            assert len(calls) >= 2 and resp.message != "answer 1", (calls, resp.message)

            stop.set()
            t.join(10.0)
            t0 = time.monotonic()
            resp = call_service(client, Trigger.Request(), lambda s: ex.spin_once(timeout_sec=s),
                                timeout=1.5, first_wait=0.2)
            assert resp is None
            assert time.monotonic() - t0 < 5.0
        finally:
            stop.set()
            ex.remove_node(node)
            node.destroy_node()
            ex.shutdown(timeout_sec=0)
