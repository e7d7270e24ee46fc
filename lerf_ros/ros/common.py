"""Shared pieces of the nodes: QoS profiles, topic names, and running nodes with a clean shutdown."""

from __future__ import annotations

import sys
import time
from typing import Callable, List, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

STATUS_TOPIC = "/lerf/status"
QUERY_SERVICE = "/lerf/query"

#: Sensor inputs: best effort, keep last 5 (works with reliable and best-effort publishers).
SENSOR_QOS = qos_profile_sensor_data

#: Map-like outputs (last relevancy cloud, grasp markers, scene cloud): a late RViz still gets them.
LATCHED_QOS = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

#: Status: reliable, volatile.
STATUS_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


def spin_nodes(nodes: Sequence[Node], num_threads: int = 4) -> int:
    """Spin nodes on one multi-threaded executor until SIGINT/SIGTERM; then destroy and shut down.

    Returns a process exit code (0 on a requested shutdown).
    """
    executor = MultiThreadedExecutor(num_threads=num_threads)
    for n in nodes:
        executor.add_node(n)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for n in nodes:
            close = getattr(n, "close", None)
            if callable(close):
                close()
            executor.remove_node(n)
            n.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


def main_for(factories: List[Callable[[], Node]], args=None) -> int:
    """``main()`` of a node executable: init, build nodes, spin, exit cleanly on SIGINT/SIGTERM."""
    # rclpy's default signal handlers turn SIGINT and SIGTERM into a context shutdown, which
    # ends spin() with ExternalShutdownException.
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        nodes = [f() for f in factories]
    except Exception as exc:  # a bad configuration: say why and exit non-zero, no traceback spam
        print(f"[lerf_ros] failed to start: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    return spin_nodes(nodes)


def call_service(client, request, spin_once: Callable[[float], None], timeout: float = 60.0, first_wait: float = 5.0):
    """Call a service and wait for its answer, asking again when an answer is lost.

    Right after discovery a server can take a request before it has matched the client's reply
    reader; its reply is then dropped ("failed to send response") and the call would wait forever.
    A call that has no answer after ``first_wait`` s is withdrawn and asked again, with the wait
    doubling each time, until ``timeout`` s have passed. Only for idempotent services (a query is).
    ``spin_once(seconds)`` spins whatever executor the client's node is on. Returns the response,
    or None when no answer came within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    wait = first_wait
    while True:
        future = client.call_async(request)
        give_up = min(time.monotonic() + wait, deadline)
        while not future.done() and time.monotonic() < give_up:
            spin_once(0.05)
        if future.done():
            return future.result()
        client.remove_pending_request(future)
        if time.monotonic() >= deadline:
            return None
        wait *= 2.0
