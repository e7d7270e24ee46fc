"""TF for the nodes: one shared buffer per process, fed on a thread of its own.

A robot's ``/tf`` is busy: a mobile manipulator publishes about a thousand transforms a second
(robot_state_publisher sends an arm's chain in one message at 50 Hz or more). Handled on the
executor that also ingests images, serves the control services and hands work to the training
thread, those callbacks delayed the transforms (lookups then failed with "extrapolation into the
future", the buffer seconds behind) and took the interpreter from training.

``TfFeed`` is the one TF buffer of a process (``acquire_tf_feed``: the trainer and the query node of
one process share it). A small node of its own (``<first user>_tf``, no parameter services) holds the
``tf2_ros.TransformListener`` subscriptions and spins on a single-threaded executor in the thread
``lerf_tf``: ``/tf`` callbacks never run on the nodes' executor. Lookups are thread-safe
(``tf2_ros.Buffer``); the ingest thread waits for a transform at an image's stamp without blocking
anything else.

Until the first ``/tf`` message arrives, a lookup fails with one plain reason (``NO_TF_YET``), not
with tf2's "frame does not exist", so the start-up drops of the trainer say what is missing.

``FrameResolver`` turns a query's ``frame_id`` into the world -> frame transform at the latest time
TF has for it, and says when that was: answers in a moving frame are stamped with that time.

tf2 is not on PyPI. Everything here imports it lazily: ``tf2_available()`` says whether it is
importable, and without it only the world frame is known (the trainer takes poses from a topic).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.time import Time

from lerf_ros.ros.convert import transform_to_matrix

NO_TF_YET = "no TF received yet on {topic} (is the robot's TF tree published?)"
"""Drop reason while no ``/tf`` message has arrived (``{topic}``: the resolved topic)."""

DEFAULT_CACHE_S = 10.0
"""TF history of a feed whose first user asks for none (tf2's own default)."""

SPIN_PERIOD_S = 0.1
"""Longest wait of the TF thread's executor before it checks whether the feed is closing."""


def tf2_available() -> bool:
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


class TfCounters:
    """What the TF thread received (read by any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.transforms = 0
        self.static_transforms = 0
        self.first_at: Optional[float] = None
        """``time.monotonic()`` of the first ``/tf`` message (None: none yet)."""

    def add(self, n: int, static: bool) -> None:
        with self._lock:
            if static:
                self.static_transforms += n
            else:
                self.messages += 1
                self.transforms += n
                if self.first_at is None:
                    self.first_at = time.monotonic()

    @property
    def received(self) -> bool:
        """Whether any ``/tf`` message (not only static transforms) arrived."""
        return self.first_at is not None


def _listener_class():
    """A ``tf2_ros.TransformListener`` that counts what it receives (defined on first use: tf2 may
    not be installed)."""
    import tf2_ros

    class CountingListener(tf2_ros.TransformListener):
        def __init__(self, buffer, node, counters: TfCounters, **kwargs) -> None:
            self.counters = counters
            super().__init__(buffer, node, **kwargs)

        def callback(self, data) -> None:
            super().callback(data)
            self.counters.add(len(data.transforms), static=False)

        def static_callback(self, data) -> None:
            super().static_callback(data)
            self.counters.add(len(data.transforms), static=True)

    return CountingListener


class TfFeed:
    """A TF buffer whose listener spins on its own thread and executor (see the module docstring).

    Use ``acquire_tf_feed`` (one per process and ROS context); ``release`` when done.

    Args:
        context: the ROS context of the nodes that look transforms up.
        name: name of the feed's own node (namespace ``namespace``).
        cache_s: TF history kept (s).
        tf_topic, tf_static_topic: the resolved topics (remappings of the first user applied).
    """

    def __init__(
        self,
        context,
        name: str,
        namespace: str = "",
        cache_s: float = DEFAULT_CACHE_S,
        tf_topic: str = "/tf",
        tf_static_topic: str = "/tf_static",
    ) -> None:
        import tf2_ros
        from rclpy.executors import SingleThreadedExecutor

        if not cache_s > 0:
            raise ValueError(f"TF cache of {cache_s} s: must be > 0")
        self.cache_s = float(cache_s)
        self.tf_topic = tf_topic
        self.counters = TfCounters()
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=self.cache_s))
        self.node = Node(name, namespace=namespace, context=context, start_parameter_services=False)
        self._listener = _listener_class()(
            self.buffer, self.node, self.counters, tf_topic=tf_topic, tf_static_topic=tf_static_topic
        )
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._closing = threading.Event()
        self._users = 0
        self._thread = threading.Thread(target=self._spin, name="lerf_tf", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._closing.is_set():
            try:
                self._executor.spin_once(timeout_sec=SPIN_PERIOD_S)
            except Exception:  # the context was shut down (or the executor): nothing more to receive
                if self._closing.is_set() or not self.node.context.ok():
                    return
                self._closing.wait(SPIN_PERIOD_S)

    @property
    def alive(self) -> bool:
        """Whether the TF thread is still receiving."""
        return self._thread.is_alive() and not self._closing.is_set()

    def no_tf_reason(self) -> str:
        """``NO_TF_YET`` for this feed's topic while nothing has arrived on it, else ''."""
        return "" if self.counters.received else NO_TF_YET.format(topic=self.tf_topic)

    def lookup(
        self, target: str, source: str, stamp, timeout_s: float = 0.0
    ) -> Tuple[Optional[np.ndarray], Optional[object], str]:
        """``source``'s pose in ``target`` at ``stamp`` (a ``builtin_interfaces/Time``, an
        ``rclpy.time.Time``, or None for the latest), waiting up to ``timeout_s``.

        Returns (4x4 matrix, the stamp of the transform used (``builtin_interfaces/Time``), '') or
        (None, None, reason): ``NO_TF_YET`` before any ``/tf`` arrived, else tf2's own words."""
        import tf2_ros

        from lerf_ros.ros.convert import ConversionError

        when = Time() if stamp is None else (stamp if isinstance(stamp, Time) else Time.from_msg(stamp))
        try:
            tf = self.buffer.lookup_transform(target, source, when, timeout=Duration(seconds=max(0.0, timeout_s)))
            return transform_to_matrix(tf.transform), tf.header.stamp, ""
        except (tf2_ros.TransformException, ConversionError) as exc:
            waiting = self.no_tf_reason()
            at = "" if stamp is None else f" at {when.nanoseconds * 1e-9:.3f}"
            return None, None, waiting or f"no TF from '{_short(target)}' to '{_short(source)}'{at}: {exc}"

    def release(self) -> None:
        """One user is done; the last one closes the feed (``close``)."""
        with _FEEDS_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            for key, feed in list(_FEEDS.items()):
                if feed is self:
                    del _FEEDS[key]
        self.close()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the TF thread and destroy the feed's node (bounded)."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        try:
            self._executor.shutdown(timeout_sec=0)
            self._listener.unregister()
            self.node.destroy_node()
        except Exception:  # the context is already gone at process exit: nothing left to release
            pass


_FEEDS: Dict[int, TfFeed] = {}
_FEEDS_LOCK = threading.Lock()


def acquire_tf_feed(node: Node, cache_s: float = DEFAULT_CACHE_S) -> TfFeed:
    """The process's TF feed for ``node``'s context, started on first use (its node is named
    ``<node>_tf`` in ``node``'s namespace, and ``/tf``, ``/tf_static`` are resolved with ``node``'s
    remappings). A later user shares it: its history stays that of the first user's ``cache_s``
    (the trainer, which needs the longest, is built first). Call ``release()`` when done."""
    with _FEEDS_LOCK:
        key = id(node.context)
        feed = _FEEDS.get(key)
        if feed is None or not feed.alive:
            feed = TfFeed(
                node.context,
                f"{node.get_name()}_tf",
                namespace=node.get_namespace(),
                cache_s=cache_s,
                tf_topic=node.resolve_topic_name("/tf"),
                tf_static_topic=node.resolve_topic_name("/tf_static"),
            )
            _FEEDS[key] = feed
        feed._users += 1
        return feed


def _short(text: str, limit: int = 48) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    only the world frame is known.

    ``stamp_now``: the node's clock, used for answers in frames that do not move."""

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
