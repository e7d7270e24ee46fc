"""TF for the nodes: one shared TF buffer per process, kept by a listener process of its own.

A robot's ``/tf`` is busy: a mobile manipulator publishes about a thousand transforms a second
(robot_state_publisher sends an arm's chain in one message at 50 Hz or more). Every message is
turned into Python objects before tf2 sees it (about a millisecond for 20 transforms). Handled on
the executor that also ingests images and serves the control services, those callbacks fell behind
(lookups failed with "extrapolation into the future", the buffer up to a second late), and on a
thread of the trainer's process they still held the interpreter lock the training thread needs
(on a loaded machine, a thread preempted while holding it stalls the others).

So the buffer lives in a child process (``TfFeed``): ``python -m lerf_ros.ros.tf`` runs a node
``<first user>_tf`` (in the first user's namespace; ``/tf`` and ``/tf_static`` resolved with its
remappings) with a ``tf2_ros.Buffer`` and ``tf2_ros.TransformListener`` spun on its own executor, and
answers lookups over a socket pair: the camera pose at an image's stamp (waiting up to the
trainer's ``tf_timeout_s``), the keyframes looked up again for late corrections, and a query
frame's transform. A lookup costs the asking process a round trip of small pickled tuples; ``/tf``
costs it nothing. The nodes of one process share one feed (``acquire_tf_feed``; the last
``release`` ends the child). The child runs in a session of its own (where the kernel shares CPU
time between sessions, its work is not taken from the nodes' share), ignores SIGINT/SIGTERM and
ends when its parent closes the socket, also when the parent dies.

A listener process that dies (killed, out of memory) is seen at once (its end of the socket closes)
and started again by ``ListenerLink`` (``lerf_ros.ros.tf_link``): logged once, after a back-off
(``RESTART_BACKOFF_S``, doubling while starts fail), counted in ``TfFeed.restarts`` and in the
trainer's ``tf`` check of /diagnostics (``TfFeed.check``). Lookups waiting for it fail at once, and
lookups meanwhile fail with "TF listener restarting (<why>)". One that runs but stops answering
(stopped with SIGSTOP, stuck in a call that does not return) is found by its pings: not heard from
for ``LIVENESS_TIMEOUT_S`` (or its ROS thread not back for as long: it says so when pinged), it is
ended (killed) and started again the same way, "TF listener restarting (the TF listener process did
not answer for more than 10 s)" meanwhile. A lookup may be given up by its caller (``cancel``): a deactivated
trainer does not wait for a transform that may never come, and the listener process, told so, stops
waiting for it too (its workers are free again at once).

Until the first ``/tf`` message arrives, a lookup fails with one plain reason (``NO_TF_YET``), not
with tf2's "frame does not exist", so the start-up drops of the trainer say what is missing.

``FrameResolver`` turns a query's ``frame_id`` into the world -> frame transform at the latest time
TF has it, and says when that was: answers in a moving frame are stamped with that time.

tf2 is not on PyPI. It is imported lazily: ``tf2_available()`` says whether it is importable, and
without it only the world frame is known (the trainer takes poses from a topic).
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.node import Node

from lerf_ros.mapping.health import OK, WARN, Check
from lerf_ros.ros.tf_link import (  # noqa: F401  (re-exported: the link's names were defined here before)
    CANCEL_POLL_S,
    CANCELLED,
    LIVENESS_TIMEOUT_S,
    RESTART_BACKOFF_S,
    RESTARTING,
    START_TIMEOUT_S,
    ListenerLink,
)

NO_TF_YET = "no TF received yet on {topic} (is the robot's TF tree published?)"
"""Drop reason while no ``/tf`` message has arrived (``{topic}``: the resolved topic)."""

DEFAULT_CACHE_S = 10.0
"""TF history of a feed whose first user asks for none (tf2's own default)."""

REPLY_MARGIN_S = 10.0
"""A lookup's answer is given up this long after its own timeout (the listener process stalled)."""

WORKER_THREADS = 4
"""Lookups the listener process answers at once (one waiting for a late transform does not hold
the others)."""

LOOKUP_POLL_S = 0.02
"""How often a lookup waiting for its transform looks at the buffer again (tf2's own wait polls
as often) and at its cancel event."""

SPIN_PERIOD_S = 0.1


def tf2_available() -> bool:
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


class TfCounters:
    """What the listener received; ``snapshot``/``update`` carry it from the child to the parent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.transforms = 0
        self.static_transforms = 0

    def add(self, n: int, static: bool) -> None:
        with self._lock:
            if static:
                self.static_transforms += n
            else:
                self.messages += 1
                self.transforms += n

    @property
    def received(self) -> bool:
        """Whether any ``/tf`` message (not only static transforms) arrived."""
        return self.messages > 0

    def snapshot(self) -> Tuple[int, int, int]:
        with self._lock:
            return self.messages, self.transforms, self.static_transforms

    def update(self, values: Sequence[int]) -> None:
        with self._lock:
            self.messages, self.transforms, self.static_transforms = (int(v) for v in values)


# ---------------------------------------------------------------------------------------------- the buffer
class _LocalTf:
    """A ``tf2_ros.Buffer`` fed by a counting ``TransformListener`` on a node of its own, spun on its
    own single-threaded executor in the thread ``lerf_tf`` (the listener process's content)."""

    def __init__(self, context, name: str, namespace: str, cache_s: float, tf_topic: str, tf_static_topic: str):
        import tf2_ros
        from rclpy.duration import Duration
        from rclpy.executors import SingleThreadedExecutor

        counters = self.counters = TfCounters()
        self.tf_topic = tf_topic

        class CountingListener(tf2_ros.TransformListener):
            def callback(self, data) -> None:
                super().callback(data)
                counters.add(len(data.transforms), static=False)

            def static_callback(self, data) -> None:
                super().static_callback(data)
                counters.add(len(data.transforms), static=True)

        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=float(cache_s)))
        # tf2_ros takes the topic names as arguments from geometry2 0.39 on; older releases (Jazzy)
        # subscribe to /tf and /tf_static, which a remapping of the listener's node renames.
        takes_topics = "tf_topic" in inspect.signature(tf2_ros.TransformListener.__init__).parameters
        remaps = (
            [] if takes_topics else ["--ros-args", "-r", f"/tf:={tf_topic}", "-r", f"/tf_static:={tf_static_topic}"]
        )
        self.node = Node(
            name, namespace=namespace or "/", context=context, start_parameter_services=False, cli_args=remaps or None
        )
        topics = dict(tf_topic=tf_topic, tf_static_topic=tf_static_topic) if takes_topics else {}
        self._listener = CountingListener(self.buffer, self.node, **topics)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._closing = threading.Event()
        self._turned = time.monotonic()  # when the spinning thread last came round
        self._thread = threading.Thread(target=self._spin, name="lerf_tf", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._closing.is_set():
            self._turned = time.monotonic()
            try:
                self._executor.spin_once(timeout_sec=SPIN_PERIOD_S)
            except Exception:  # the context was shut down: nothing more to receive
                if self._closing.is_set() or not self.node.context.ok():
                    return
                self._closing.wait(SPIN_PERIOD_S)

    def stuck(self, limit_s: float) -> str:
        """Why the buffer is no longer fed ('' while it is): the thread that spins the listener's node
        has not come round for more than ``limit_s`` (stuck in a call), or has ended."""
        age = time.monotonic() - self._turned
        if not self._thread.is_alive():
            return "its ROS thread has ended"
        return f"its ROS thread has not come back for {age:.0f} s" if age > limit_s else ""

    def _reason(self, exc, target: str, source: str, at_ns: Optional[int]) -> str:
        if not self.counters.received:
            return NO_TF_YET.format(topic=self.tf_topic)
        at = "" if at_ns is None else f" at {at_ns * 1e-9:.3f}"
        return f"no TF from '{_short(target)}' to '{_short(source)}'{at}: {exc}"

    def lookup(
        self,
        target: str,
        source: str,
        stamp_ns: Optional[int],
        timeout_s: float,
        cancel: Optional[threading.Event] = None,
    ):
        """(4x4 matrix, stamp of the transform used in ns, '') or (None, None, reason), waiting up to
        ``timeout_s`` for the transform; given up (``CANCELLED``) as soon as ``cancel`` is set."""
        import tf2_ros
        from rclpy.time import Time

        from lerf_ros.ros.convert import ConversionError, stamp_to_ns, transform_to_matrix

        when = Time() if stamp_ns is None else Time(nanoseconds=int(stamp_ns))
        cancel = cancel or threading.Event()
        try:
            # tf2's own wait (``timeout=``) cannot be given up: wait here, as it does, by polling.
            deadline = time.monotonic() + max(0.0, float(timeout_s))
            while not self.buffer.can_transform(target, source, when):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if cancel.wait(min(LOOKUP_POLL_S, remaining)):
                    return None, None, CANCELLED
            tf = self.buffer.lookup_transform(target, source, when)
            used = stamp_to_ns(tf.header.stamp)
            return transform_to_matrix(tf.transform), used, ""
        except (tf2_ros.TransformException, ConversionError) as exc:
            return None, None, self._reason(exc, target, source, stamp_ns)

    def lookup_full(self, requests):
        """For each (target, source, source stamp ns, fixed frame): the 4x4 transform from ``source``
        at its stamp to ``target`` at the latest time through ``fixed``, or None; no waiting."""
        import tf2_ros
        from rclpy.duration import Duration
        from rclpy.time import Time

        from lerf_ros.ros.convert import ConversionError, transform_to_matrix

        out = []
        for target, source, source_ns, fixed in requests:
            try:
                tf = self.buffer.lookup_transform_full(
                    target, Time(), source, Time(nanoseconds=int(source_ns)), fixed, timeout=Duration(nanoseconds=0)
                )
                out.append(transform_to_matrix(tf.transform))
            except (tf2_ros.TransformException, ConversionError, ValueError):  # ValueError: a negative stamp
                out.append(None)
        return out

    def close(self) -> None:
        self._closing.set()
        if self._thread is not threading.current_thread():
            self._thread.join(1.0)
        try:
            self._executor.shutdown(timeout_sec=0)
            self._listener.unregister()
            self.node.destroy_node()
        except Exception:  # the context is already gone: nothing left to release
            pass


# ---------------------------------------------------------------------------------------------- the parent's side
class TfFeed:
    """The process's TF buffer, kept by a listener process (see the module docstring).

    Use ``acquire_tf_feed``; ``release`` when done. Thread-safe: the ingest thread, timers and
    service callbacks may look up at the same time. A listener process that dies is started again
    (``ListenerLink``: logged once, with back-off, counted in ``restarts``); lookups meanwhile fail
    with "TF listener restarting (...)".

    Args:
        name, namespace: of the listener's node.
        cache_s: TF history kept (s).
        tf_topic, tf_static_topic: the resolved topics.
        log: where the listener's exits and restarts are reported (a warning).
        liveness_s: a listener process not heard from for this long (or whose ROS thread is stuck as
            long) is ended and started again.
    """

    def __init__(
        self,
        name: str,
        namespace: str = "",
        cache_s: float = DEFAULT_CACHE_S,
        tf_topic: str = "/tf",
        tf_static_topic: str = "/tf_static",
        start_timeout_s: float = START_TIMEOUT_S,
        log: Optional[Callable[[str], None]] = None,
        backoff_s: Tuple[float, float] = RESTART_BACKOFF_S,
        liveness_s: float = LIVENESS_TIMEOUT_S,
    ) -> None:
        if not cache_s > 0:
            raise ValueError(f"TF cache of {cache_s} s: must be > 0")
        self.cache_s = float(cache_s)
        self.tf_topic = tf_topic
        self.counters = TfCounters()
        self.in_flight = 0
        """Calls the listener process was working on at its last answer (lookups waiting for a transform)."""
        self._users = 0

        def argv_for_fd(fd: int) -> List[str]:
            return [
                sys.executable, "-m", "lerf_ros.ros.tf", "--fd", str(fd), "--name", name,
                "--namespace", namespace, "--cache-s", repr(self.cache_s), "--tf-topic", tf_topic,
                "--tf-static-topic", tf_static_topic, "--stuck-s", repr(float(liveness_s)),
            ]  # fmt: skip

        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        self._link = ListenerLink(
            argv_for_fd,
            env=env,
            start_timeout_s=start_timeout_s,
            log=log,
            on_extra=self._on_extra,
            backoff_s=backoff_s,
            liveness_s=liveness_s,
        )

    def _on_extra(self, extra: Sequence[int]) -> None:
        """What each answer of the listener process carries: its counters, and its calls in flight."""
        self.counters.update(extra[:3])
        self.in_flight = int(extra[3])

    # -------------------------------------------------------------- state
    @property
    def alive(self) -> bool:
        """Whether the feed is open (also while its listener process is being restarted)."""
        return self._link.alive

    @property
    def down_reason(self) -> str:
        """Why lookups fail now ("TF listener restarting (...)", or closed); '' while the listener answers."""
        return self._link.down_reason

    @property
    def restarts(self) -> int:
        """Listener processes started again after one died or was ended for not answering."""
        return self._link.restarts

    @property
    def process(self) -> subprocess.Popen:
        """The newest listener process."""
        return self._link.process

    def no_tf_reason(self) -> str:
        """``NO_TF_YET`` for this feed's topic while nothing has arrived on it, else ''."""
        return "" if self.counters.received else NO_TF_YET.format(topic=self.tf_topic)

    def check(self) -> Check:
        """The ``tf`` check of /diagnostics: OK while the listener process answers, WARN while it is
        being restarted (it died, or stopped answering); the restarts so far, the lookups it is
        working on, and what it received."""
        messages, transforms, static = self.counters.snapshot()
        values = (
            ("listener restarts", str(self.restarts)),
            ("listener pid", str(self.process.pid)),
            ("listener lookups in flight", str(self.in_flight)),
            ("/tf messages", str(messages)),
            ("/tf transforms", str(transforms)),
            ("/tf_static transforms", str(static)),
        )
        down = self.down_reason
        if down:
            return Check("tf", WARN, down, values)
        if not self.counters.received:
            return Check("tf", WARN, self.no_tf_reason(), values)
        restarted = f" (restarted {self.restarts} time{'s' if self.restarts != 1 else ''})" if self.restarts else ""
        return Check("tf", OK, f"TF listener running{restarted}", values)

    # -------------------------------------------------------------- lookups
    def lookup(
        self, target: str, source: str, stamp=None, timeout_s: float = 0.0, cancel: Optional[threading.Event] = None
    ) -> Tuple[Optional[np.ndarray], Optional[object], str]:
        """``source``'s pose in ``target`` at ``stamp`` (a ``builtin_interfaces/Time``, an
        ``rclpy.time.Time``, nanoseconds, or None for the latest), waiting up to ``timeout_s``; given
        up at once when ``cancel`` is set (reason ``CANCELLED``).

        Returns (4x4 matrix, the stamp of the transform used (``builtin_interfaces/Time``), '') or
        (None, None, reason): ``NO_TF_YET`` before any ``/tf`` arrived, "TF listener restarting
        (...)" while the listener process is being restarted, else tf2's own words."""
        from rclpy.time import Time

        ns = None if stamp is None else _to_ns(stamp)
        answer, why = self._link.call(
            "lookup", (target, source, ns, float(timeout_s)), float(timeout_s) + REPLY_MARGIN_S, cancel
        )
        if answer is None:
            return None, None, why
        T, used_ns, reason = answer
        if T is None:
            return None, None, reason
        return np.asarray(T, float), Time(nanoseconds=int(used_ns)).to_msg(), ""

    def lookup_full_many(self, requests: Sequence[Tuple[str, str, int, str]]) -> List[Optional[np.ndarray]]:
        """For each (target, source, source stamp in ns, fixed frame): ``source`` at its stamp in
        ``target`` at the latest time, through ``fixed`` (held fixed in time); None where TF does not
        have it. No waiting: one round trip for all."""
        requests = [(str(t), str(s), int(ns), str(f)) for t, s, ns, f in requests]
        if not requests:
            return []
        answer, _ = self._link.call("full", requests, REPLY_MARGIN_S)
        return (
            [None] * len(requests) if answer is None else [None if T is None else np.asarray(T, float) for T in answer]
        )

    def clear(self) -> bool:
        """Forget the transforms of ``/tf`` (the ROS clock jumped back: a bag replayed again); those of
        ``/tf_static`` stay. Whether the listener did it."""
        return bool(self._link.call("clear", None, REPLY_MARGIN_S)[0])

    # -------------------------------------------------------------- lifetime
    def release(self) -> None:
        """One user is done; the last one ends the listener process (``close``)."""
        with _FEEDS_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            for key, feed in list(_FEEDS.items()):
                if feed is self:
                    del _FEEDS[key]
        self.close()

    def close(self, timeout_s: float = 2.0) -> None:
        """End the listener process (it exits when its socket closes; killed after ``timeout_s``)."""
        self._link.close(timeout_s)


def _to_ns(stamp) -> int:
    from lerf_ros.ros.convert import stamp_to_ns

    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return stamp_to_ns(stamp)


_FEEDS: Dict[int, TfFeed] = {}
_FEEDS_LOCK = threading.Lock()


def acquire_tf_feed(node: Node, cache_s: float = DEFAULT_CACHE_S) -> TfFeed:
    """The process's TF feed, started on first use (its node is named ``<node>_tf`` in ``node``'s
    namespace, and ``/tf``, ``/tf_static`` are resolved with ``node``'s remappings; its listener's
    exits and restarts are logged by ``node``). A later user shares it: its history stays that of
    the first user's ``cache_s`` (the trainer, which needs the longest, is built first). Call
    ``release()`` when done."""
    with _FEEDS_LOCK:
        key = id(node.context)
        feed = _FEEDS.get(key)
        if feed is None or not feed.alive:
            logger = node.get_logger()
            feed = TfFeed(
                f"{node.get_name()}_tf",
                namespace=node.get_namespace(),
                cache_s=cache_s,
                tf_topic=node.resolve_topic_name("/tf"),
                tf_static_topic=node.resolve_topic_name("/tf_static"),
                log=lambda text: logger.warning(text),
            )
            _FEEDS[key] = feed
        feed._users += 1
        return feed


def _short(text: str, limit: int = 48) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------- query frames
@dataclass(frozen=True)
class FrameAnswer:
    """How to express an answer in a requested frame."""

    world_to_frame: Optional[np.ndarray]
    """4x4 world -> frame transform; None for the world frame itself (or on error)."""
    stamp: Optional[object]
    """``builtin_interfaces/Time`` of the transform used; None when the frame does not move with
    time (the world frame, a frame joined by static transforms only): stamp the answer now."""
    error: str = ""
    """Why the frame cannot be used ('' when it can)."""


class FrameResolver:
    """world -> target transforms for query answers, from the process's shared TF feed. Without tf2
    only the world frame is known."""

    def __init__(self, node: Node, world_frame: str, timeout_s: float = 0.2) -> None:
        self.world_frame = world_frame
        self.timeout_s = float(timeout_s)
        self.feed: Optional[TfFeed] = acquire_tf_feed(node) if tf2_available() else None
        self._closed = False

    def resolve(self, frame_id: str) -> FrameAnswer:
        """The world -> ``frame_id`` transform at the latest time TF has it, and that time."""
        if frame_id == self.world_frame:
            return FrameAnswer(None, None)
        if self.feed is None and self._closed:
            return FrameAnswer(None, None, f"unknown frame '{frame_id}': TF is closed (the node is shutting down)")
        if self.feed is None:
            return FrameAnswer(
                None,
                None,
                f"unknown frame '{frame_id}': tf2 is not installed, so answers are only "
                f"available in the world frame '{self.world_frame}' (leave frame_id empty)",
            )
        T, stamp, reason = self.feed.lookup(frame_id, self.world_frame, None, self.timeout_s)
        if T is None:
            return FrameAnswer(
                None, None, f"unknown frame '{frame_id}': no transform from '{self.world_frame}' ({reason})"
            )
        moving = stamp is not None and (int(stamp.sec) != 0 or int(stamp.nanosec) != 0)
        return FrameAnswer(T, stamp if moving else None)

    def world_to(self, frame_id: str) -> Tuple[Optional[np.ndarray], str]:
        """(4x4 world->frame transform or None for the world frame itself, error message or '')."""
        answer = self.resolve(frame_id)
        return answer.world_to_frame, answer.error

    def close(self) -> None:
        """Release the shared TF feed (once)."""
        feed, self.feed = self.feed, None
        self._closed = True
        if feed is not None:
            feed.release()


def stamp_or(answer: FrameAnswer, now: Callable[[], object]):
    """The stamp for an answer in ``answer``'s frame: the transform's time, or ``now()``."""
    return answer.stamp if answer.stamp is not None else now()


# ---------------------------------------------------------------------------------------------- the listener process
def _serve(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lerf_ros.ros.tf --fd N ...``: the listener process (started by ``TfFeed``)."""
    from concurrent.futures import ThreadPoolExecutor

    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    p = argparse.ArgumentParser(prog="lerf_ros.ros.tf")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--namespace", default="")
    p.add_argument("--cache-s", type=float, default=DEFAULT_CACHE_S)
    p.add_argument("--tf-topic", default="/tf")
    p.add_argument("--tf-static-topic", default="/tf_static")
    p.add_argument("--stuck-s", type=float, default=LIVENESS_TIMEOUT_S)
    args = p.parse_args(argv)
    # The parent ends this process by closing the socket (also when it dies); a Ctrl-C or a launch
    # file's SIGINT to the process group is the parent's to handle.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    conn = Connection(args.fd)
    context = Context()
    try:
        rclpy.init(args=[sys.argv[0]], context=context, signal_handler_options=SignalHandlerOptions.NO)
        tf = _LocalTf(context, args.name, args.namespace, args.cache_s, args.tf_topic, args.tf_static_topic)
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return 1
    send_lock = threading.Lock()
    # The calls being worked on, each with the event that gives it up (the parent's "cancel"); an
    # entry lives from the call's arrival to its answer.
    in_flight: Dict[int, threading.Event] = {}
    table_lock = threading.Lock()

    def send(rid: int, result) -> None:
        with table_lock:
            n = len(in_flight)
        with send_lock:
            try:
                conn.send((rid, result, tf.counters.snapshot() + (n,)))
            except (OSError, ValueError):
                pass

    def answer(rid: int, kind: str, payload, cancel: threading.Event) -> None:
        try:
            if kind == "lookup":
                result = tf.lookup(*payload, cancel=cancel)
            elif kind == "full":
                result = tf.lookup_full(payload)
            else:  # "clear"
                tf.buffer.clear()
                result = True
        except Exception as exc:  # never leave the asker waiting
            result = {"lookup": (None, None, f"TF lookup failed: {exc!r}"), "full": [None] * len(payload or ())}.get(
                kind, False
            )
        finally:
            with table_lock:
                in_flight.pop(rid, None)
        send(rid, result)

    conn.send(("ready", os.getpid()))
    pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="lerf_tf_lookup")
    while True:
        try:
            rid, kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "ping":  # answered here, not by a worker: that this loop reads is what it asks
            send(0, tf.stuck(args.stuck_s))
        elif kind == "cancel":  # a call given up: its worker stops waiting (no entry made for one done)
            with table_lock:
                given_up = in_flight.get(payload)
            if given_up is not None:
                given_up.set()
        else:
            cancel = threading.Event()
            with table_lock:
                in_flight[rid] = cancel
            pool.submit(answer, rid, kind, payload, cancel)
    # The parent is gone or done: nothing to save, and lookups still waiting need no answer.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(_serve())
