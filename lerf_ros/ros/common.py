"""Shared pieces of the nodes: QoS profiles, topic names, and running nodes with a clean shutdown.

Shutdown on SIGINT or SIGTERM (``spin_nodes``, ``main_for``), within ``SHUTDOWN_BUDGET_S`` (what
``ros2 launch`` allows before it escalates):

1. the signal only sets a flag (``ShutdownRequest``): the ROS context stays valid, so a callback
   that is publishing at that moment does not fail ("publisher's context is invalid");
2. the executor dispatches nothing more and every node's timers are cancelled;
3. every node's ``close()`` ends its own work: long preparation stops, threads are joined, the
   trainer writes a checkpoint of its current step;
4. callbacks still running are waited for (bounded), so no node is destroyed under one
   ("cannot use Destroyable");
5. the nodes are destroyed and the context shut down; the exit code is 0. The interpreter's own
   teardown is skipped (``exit_process``): with torch loaded it takes seconds on a busy CPU, and
   everything the nodes wrote is closed and synced by then.

A second signal during this sequence is ignored (``ros2 launch`` and a terminal's Ctrl-C may
both deliver one): the sequence is bounded anyway.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, List, Optional, Protocol, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions

from lerf_ros.ros.lifecycle import all_finalized

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

#: Seconds from SIGINT/SIGTERM to the end of a process (``ros2 launch`` escalates after 5 s).
SHUTDOWN_BUDGET_S = 5.0
#: Seconds the executor waits for callbacks still running after the nodes are closed.
CALLBACK_WAIT_S = 1.0


class ClosableNode(Protocol):
    """What ``spin_nodes`` runs: a node with ``close()``, which ends the node's own work (threads,
    long preparation, a final checkpoint) in bounded time, before the node is destroyed."""

    timers: Iterable

    def close(self) -> None: ...

    def get_logger(self): ...

    def destroy_node(self) -> None: ...


class ShutdownRequest:
    """SIGINT and SIGTERM set a flag instead of shutting the ROS context down at once.

    ``install()`` (main thread only) replaces the handlers; ``is_set()`` / ``wait()`` read the flag;
    ``signal_number`` is the first signal received. While ``interrupting`` is true (nodes being
    built), the first signal also raises KeyboardInterrupt, so a slow start-up is abandoned."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_number: Optional[int] = None
        self.interrupting = False

    @classmethod
    def install(cls) -> "ShutdownRequest":
        """A request whose flag the process's SIGINT and SIGTERM set from now on."""
        request = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in cls.SIGNALS:
                signal.signal(sig, request._handle)
        return request

    def _handle(self, signum, _frame) -> None:
        if self._event.is_set():
            return  # already shutting down
        self.signal_number = signum
        self._event.set()
        if self.interrupting:
            raise KeyboardInterrupt

    def set(self) -> None:
        """Ask for a shutdown as a signal would."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)


def init_without_signal_handlers(args=None) -> ShutdownRequest:
    """``rclpy.init`` for a node executable, with this module's signal handling (``ShutdownRequest``)
    instead of rclpy's, which shuts the context down while callbacks may still publish."""
    request = ShutdownRequest.install()
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    request.interrupting = not request.is_set()
    return request


def spin_nodes(nodes: Sequence[ClosableNode], num_threads: int = 4, request: Optional[ShutdownRequest] = None) -> int:
    """Spin nodes on one multi-threaded executor until SIGINT/SIGTERM (``request``) or until every node
    has been shut down through its lifecycle, then shut down in order (see the module docstring).
    Returns a process exit code (0 on a requested shutdown)."""
    if request is None:
        request = ShutdownRequest.install()
    request.interrupting = False
    executor = MultiThreadedExecutor(num_threads=num_threads, context=nodes[0].context if nodes else None)
    for n in nodes:
        executor.add_node(n)
    try:
        # Managed nodes shut down through their lifecycle (``shutdown`` transition) end the process too.
        while not request.is_set() and executor.context.ok() and not all_finalized(nodes):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        _shut_down(executor, nodes)
    return 0


def _shut_down(executor: MultiThreadedExecutor, nodes: Sequence[ClosableNode]) -> None:
    for n in nodes:
        for timer in list(n.timers):
            timer.cancel()
    for n in reversed(nodes):  # the last built may use the ones before (the in-process query node)
        try:
            n.close()
        except Exception as exc:  # one node's failure must not keep the others running
            n.get_logger().error(f"error while closing: {exc!r}")
    # Callbacks dispatched before the signal (a query, a status message) finish; the executor's
    # own wait is unbounded, so it runs beside this thread.
    waiter = threading.Thread(target=executor.shutdown, name="lerf_executor_shutdown", daemon=True)
    waiter.start()
    waiter.join(CALLBACK_WAIT_S)
    if waiter.is_alive():
        # A callback is still running: destroying its node under it would fail loudly, and the
        # interpreter would wait for it at exit. The nodes are closed (checkpoint written): leave now.
        for n in nodes[:1]:
            n.get_logger().warning(f"a callback was still running {CALLBACK_WAIT_S:g} s after closing; exiting")
        exit_process(0)
    for n in nodes:
        n.destroy_node()
    rclpy.try_shutdown()


def exit_process(code: int) -> None:
    """End the process now with ``code``: Python's and C's output streams and the logging module
    are flushed first; atexit handlers and module teardown are skipped (see the module docstring)."""
    import ctypes
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # the ROS log's stdio buffers
    except (OSError, AttributeError):
        pass
    os._exit(code)


def run_nodes(build: Callable[[List[ClosableNode]], None], args=None) -> int:
    """``main()`` of a node executable: init, ``build(nodes)`` (appends the nodes it makes, in order),
    spin, and exit cleanly on SIGINT/SIGTERM, also when one arrives while the nodes are built.
    After a requested shutdown the process ends here (``exit_process``); otherwise returns the exit
    code (2: the nodes could not be built)."""
    request = init_without_signal_handlers(args)
    nodes: List[ClosableNode] = []

    def close_built() -> None:
        for n in reversed(nodes):
            n.close()
            n.destroy_node()
        rclpy.try_shutdown()

    try:
        build(nodes)
    except KeyboardInterrupt:  # a signal during start-up: close what was built
        request.interrupting = False
        close_built()
        exit_process(0)
    except Exception as exc:  # a bad configuration: say why and exit non-zero, no traceback spam
        request.interrupting = False
        print(f"[lerf_ros] failed to start: {exc}", file=sys.stderr)
        close_built()
        return 2
    exit_process(spin_nodes(nodes, request=request))
    return 0  # not reached


def main_for(factories: List[Callable[[], ClosableNode]], args=None) -> int:
    """``run_nodes`` of nodes that do not depend on each other, built by ``factories`` in order."""

    def build(nodes: List[ClosableNode]) -> None:
        for f in factories:
            nodes.append(f())

    return run_nodes(build, args)


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
