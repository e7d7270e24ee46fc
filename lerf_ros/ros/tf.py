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
and started again by ``ListenerLink``: logged once, after a back-off (``RESTART_BACKOFF_S``, doubling
while starts fail), counted in ``TfFeed.restarts`` and in the trainer's ``tf`` check of
/diagnostics (``TfFeed.check``). Lookups waiting for it fail at once, and lookups meanwhile fail with
"TF listener restarting (<why>)". A lookup may be given up by its caller (``cancel``): a deactivated
trainer does not wait for a transform that may never come.

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
import itertools
import os
import signal
import socket
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

NO_TF_YET = "no TF received yet on {topic} (is the robot's TF tree published?)"
"""Drop reason while no ``/tf`` message has arrived (``{topic}``: the resolved topic)."""

DEFAULT_CACHE_S = 10.0
"""TF history of a feed whose first user asks for none (tf2's own default)."""

START_TIMEOUT_S = 60.0
"""Longest wait for the listener process to start (imports on a loaded machine)."""

REPLY_MARGIN_S = 10.0
"""A lookup's answer is given up this long after its own timeout (the listener process stalled)."""

WORKER_THREADS = 4
"""Lookups the listener process answers at once (one waiting for a late transform does not hold
the others)."""

SPIN_PERIOD_S = 0.1

RESTART_BACKOFF_S = (0.5, 30.0)
"""First and longest wait (s) before a listener process that died is started again (doubling while
starts fail or the new one dies within the longest wait)."""

RESTARTING = "{what} restarting ({why})"
"""Why a lookup failed while the listener process is being restarted ("TF listener restarting (...)")."""

CANCELLED = "the lookup was cancelled"
"""Why a lookup failed when its ``cancel`` event was set while it waited."""

CANCEL_POLL_S = 0.05
"""How often a waiting lookup looks at its ``cancel`` event."""


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
        self._thread = threading.Thread(target=self._spin, name="lerf_tf", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._closing.is_set():
            try:
                self._executor.spin_once(timeout_sec=SPIN_PERIOD_S)
            except Exception:  # the context was shut down: nothing more to receive
                if self._closing.is_set() or not self.node.context.ok():
                    return
                self._closing.wait(SPIN_PERIOD_S)

    def _reason(self, exc, target: str, source: str, at_ns: Optional[int]) -> str:
        if not self.counters.received:
            return NO_TF_YET.format(topic=self.tf_topic)
        at = "" if at_ns is None else f" at {at_ns * 1e-9:.3f}"
        return f"no TF from '{_short(target)}' to '{_short(source)}'{at}: {exc}"

    def lookup(self, target: str, source: str, stamp_ns: Optional[int], timeout_s: float):
        """(4x4 matrix, stamp of the transform used in ns, '') or (None, None, reason)."""
        import tf2_ros
        from rclpy.duration import Duration
        from rclpy.time import Time

        from lerf_ros.ros.convert import ConversionError, transform_to_matrix

        when = Time() if stamp_ns is None else Time(nanoseconds=int(stamp_ns))
        try:
            tf = self.buffer.lookup_transform(target, source, when, timeout=Duration(seconds=max(0.0, timeout_s)))
            used = int(tf.header.stamp.sec) * 1_000_000_000 + int(tf.header.stamp.nanosec)
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


# ---------------------------------------------------------------------------------------------- a supervised child
class _Child:
    """One listener process and this process's end of its socket pair (see ``ListenerLink``)."""

    def __init__(self, argv_for_fd: Callable[[int], List[str]], env, what: str) -> None:
        """Start the process; ``wait_ready`` then waits for its first message."""
        self.what = what
        ours, theirs = socket.socketpair()
        try:
            # A session of its own: where the kernel shares CPU time between sessions (autogroup), the
            # listener's work is then not taken from the share of the nodes' process.
            self.proc = subprocess.Popen(
                argv_for_fd(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.started = time.monotonic()
        # The socket is kept to shut it down on close: closing the descriptor alone would not end a
        # read blocked on it in the reader thread, and the child would never see the end.
        self.sock = ours
        self.conn = Connection(os.dup(ours.fileno()))

    def wait_ready(self, start_timeout_s: float) -> None:
        """Wait for the child's ``("ready", pid)``; raises (the child ended) when it does not come
        within ``start_timeout_s``, says why not, or the child is ended meanwhile (``end``)."""
        what = self.what
        try:
            if not self.conn.poll(start_timeout_s):
                raise RuntimeError(f"the {what} process did not start within {start_timeout_s:g} s")
            hello = self.conn.recv()
        except EOFError:
            self.end()
            raise RuntimeError(f"the {what} process exited at start (code {self.proc.returncode})") from None
        except BaseException:
            self.end()
            raise
        if hello[0] != "ready":
            self.end()
            raise RuntimeError(f"the {what} process could not start: {hello[1]}")

    def start_reader(self, on_message: Callable[[tuple], None], on_exit: Callable[["_Child"], None]) -> None:
        def read() -> None:
            try:
                while True:
                    try:
                        message = self.conn.recv()
                    except (EOFError, OSError):
                        break
                    on_message(message)
            finally:  # whatever ended the loop, the link learns of it (and restarts the child)
                on_exit(self)

        threading.Thread(target=read, name="lerf_tf_reader", daemon=True).start()

    def exit_code(self, wait_s: float) -> Optional[int]:
        """The process's exit code, waiting up to ``wait_s`` for it to end (None: still running)."""
        try:
            return self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None

    def end(self, timeout_s: float = 2.0) -> None:
        """Close the socket (the child exits when it sees the end; killed after ``timeout_s``) and reap it."""
        for end in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.sock.close, self.conn.close):
            try:
                end()
            except OSError:
                pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)


class ListenerLink:
    """Calls answered by a child process over a socket pair; the child is restarted when it dies.

    The child (``argv_for_fd(fd)``: its command line, given the descriptor of its end of the pair)
    first sends ``("ready", pid)`` (or ``("error", why)``), then answers each ``(id, kind, payload)``
    with ``(id, result, extra)``; ``on_extra`` receives each answer's ``extra``. A child that exits
    (its end of the socket closes) is logged once (``log``), the calls waiting for it fail, and it is
    started again after ``backoff_s[0]`` seconds, the wait doubling up to ``backoff_s[1]`` while
    starts fail or the new child dies within ``backoff_s[1]``; calls meanwhile fail at once with
    ``RESTARTING``. ``restarts`` counts the children started again. The first start's failure is
    raised by the constructor. Thread-safe.
    """

    def __init__(
        self,
        argv_for_fd: Callable[[int], List[str]],
        what: str = "TF listener",
        env: Optional[Dict[str, str]] = None,
        start_timeout_s: float = START_TIMEOUT_S,
        log: Optional[Callable[[str], None]] = None,
        on_extra: Optional[Callable[[object], None]] = None,
        backoff_s: Tuple[float, float] = RESTART_BACKOFF_S,
    ) -> None:
        self.what = what
        self._argv_for_fd, self._env, self._start_timeout_s = argv_for_fd, env, float(start_timeout_s)
        self._log = log or (lambda text: None)
        self._on_extra = on_extra or (lambda extra: None)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self._lock = threading.Lock()
        # Sends are serialised by a lock of their own: a child that stops reading blocks its sender
        # (until the child dies or ``close`` shuts the socket down), not the link.
        self._send_lock = threading.Lock()
        self._starting: Optional[_Child] = None  # a child started again, not ready yet
        self._bad_message_logged = False
        self._pending: Dict[int, list] = {}
        self._ids = itertools.count(1)
        self._closed = threading.Event()
        self._down = ""  # why calls fail now ('' while a child answers)
        self._delay = self.backoff_s[0]  # the wait before the next restart
        self.restarts = 0
        """Children started again after one died."""
        self._child: Optional[_Child] = self._start()
        self.process: subprocess.Popen = self._child.proc
        """The newest child process (kept after ``close``)."""
        self._child.start_reader(self._on_message, self._child_exited)

    def _start(self) -> _Child:
        child = _Child(self._argv_for_fd, self._env, self.what)
        child.wait_ready(self._start_timeout_s)
        return child

    # -------------------------------------------------------------- state
    @property
    def alive(self) -> bool:
        """Not closed (while a child is being restarted too)."""
        return not self._closed.is_set()

    @property
    def down_reason(self) -> str:
        """Why calls fail now: ``RESTARTING`` while the child is being restarted, or that the link is
        closed; '' while a child answers."""
        return self._down

    # -------------------------------------------------------------- calls
    def call(self, kind: str, payload, wait_s: float, cancel: Optional[threading.Event] = None) -> Tuple[object, str]:
        """(the child's answer, '') or (None, why not): the child is being restarted, did not answer
        within ``wait_s``, died meanwhile, or ``cancel`` was set while waiting (``CANCELLED``)."""
        if cancel is not None and cancel.is_set():
            return None, CANCELLED
        slot = [threading.Event(), _NO_ANSWER]
        deadline = time.monotonic() + float(wait_s)
        with self._lock:
            child = self._child
            if child is None:
                return None, self._down
            rid = next(self._ids)
            self._pending[rid] = slot
        if not self._send_lock.acquire(timeout=max(0.0, float(wait_s))):
            with self._lock:
                self._pending.pop(rid, None)
            return None, f"the {self.what} process did not take the call within {wait_s:g} s"
        try:
            child.conn.send((rid, kind, payload))
        except (OSError, ValueError, TypeError):  # TypeError: closed by ``close`` mid-send
            with self._lock:
                self._pending.pop(rid, None)
            return None, self._down or f"the {self.what} process is gone"
        finally:
            self._send_lock.release()
        while True:
            remaining = deadline - time.monotonic()
            step = max(0.0, remaining) if cancel is None else min(max(0.0, remaining), CANCEL_POLL_S)
            if slot[0].wait(step):
                break
            if cancel is not None and cancel.is_set():
                why = CANCELLED
            elif remaining <= 0:
                why = f"the {self.what} process did not answer within {wait_s:g} s"
            else:
                continue
            with self._lock:
                self._pending.pop(rid, None)
            return None, why
        if slot[1] is _NO_ANSWER:
            return None, self._down or f"the {self.what} process is gone"
        return slot[1], ""

    def _on_message(self, message) -> None:
        try:
            rid, result, extra = message
            self._on_extra(extra)
        except Exception as exc:  # a malformed answer or a failing ``on_extra``: keep reading
            if not self._bad_message_logged:
                self._bad_message_logged = True
                self._say(f"an answer of the {self.what} process could not be taken: {exc!r} (logged once)")
            return
        with self._lock:
            slot = self._pending.pop(rid, None)
        if slot is not None:
            slot[1] = result
            slot[0].set()

    # -------------------------------------------------------------- supervision
    def _child_exited(self, child: _Child) -> None:
        """The reader saw the end of ``child``'s socket: unless closing, fail its calls, log once and
        restart it (``_supervise``)."""
        if self._closed.is_set():
            return
        code = child.exit_code(2.0)
        why = f"the {self.what} process exited" + (f" (code {code})" if code is not None else "")
        with self._lock:
            if self._closed.is_set() or child is not self._child:
                return
            self._child = None
            self._down = RESTARTING.format(what=self.what, why=why)
            pending, self._pending = list(self._pending.values()), {}
            # A child that lived long resets the back-off; one that died soon after its start keeps it.
            if time.monotonic() - child.started > self.backoff_s[1]:
                self._delay = self.backoff_s[0]
        for slot in pending:
            slot[0].set()
        delay = self._delay
        threading.Thread(target=self._supervise, name="lerf_tf_restart", daemon=True).start()
        try:
            child.end(0.5)
        except Exception:  # already reaped: the restart does not depend on it
            pass
        self._say(f"{why}: restarting it in {delay:g} s (lookups fail meanwhile: {self._down})")

    def _say(self, text: str) -> None:
        try:
            self._log(text)
        except Exception:  # a logger already gone must not stop the supervision
            pass

    def _supervise(self) -> None:
        failures = 0
        while not self._closed.wait(self._delay):
            self._delay = min(2.0 * self._delay, self.backoff_s[1])
            try:
                child = _Child(self._argv_for_fd, self._env, self.what)
                with self._lock:
                    closed = self._closed.is_set()
                    if not closed:
                        self._starting = child  # ``close`` ends it while it starts
                if closed:
                    child.end(0.5)
                    return
                try:
                    child.wait_ready(self._start_timeout_s)
                finally:
                    with self._lock:
                        self._starting = None
            except Exception as exc:  # imports failing, no memory: try again later
                if self._closed.is_set():
                    return
                failures += 1
                if failures == 1:
                    self._say(
                        f"could not restart the {self.what} process: {exc}; trying again (every "
                        f"{self.backoff_s[1]:g} s at most)"
                    )
                continue
            with self._lock:
                closed = self._closed.is_set()
                if not closed:
                    self._child, self._down, self.process = child, "", child.proc
                    self.restarts += 1
                n = self.restarts
            if closed:  # closed while it started: ended outside the lock
                child.end(0.5)
                return
            child.start_reader(self._on_message, self._child_exited)
            tries = f" after {failures + 1} attempts" if failures else ""
            self._say(f"the {self.what} process restarted{tries} (restart {n}, pid {child.proc.pid})")
            return

    # -------------------------------------------------------------- lifetime
    def close(self, timeout_s: float = 2.0) -> None:
        """End the child, and one being started again (each exits when its socket closes; killed after
        ``timeout_s``); no restart. Returns when they have ended."""
        self._closed.set()
        with self._lock:
            children = [c for c in (self._child, self._starting) if c is not None]
            self._child = self._starting = None
            self._down = f"the {self.what} is closed"
            pending, self._pending = list(self._pending.values()), {}
        for slot in pending:
            slot[0].set()
        for child in children:  # outside the lock: a send blocked on the socket ends when it shuts down
            child.end(timeout_s)


_NO_ANSWER = object()


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
    ) -> None:
        if not cache_s > 0:
            raise ValueError(f"TF cache of {cache_s} s: must be > 0")
        self.cache_s = float(cache_s)
        self.tf_topic = tf_topic
        self.counters = TfCounters()
        self._users = 0

        def argv_for_fd(fd: int) -> List[str]:
            return [
                sys.executable, "-m", "lerf_ros.ros.tf", "--fd", str(fd), "--name", name,
                "--namespace", namespace, "--cache-s", repr(self.cache_s), "--tf-topic", tf_topic,
                "--tf-static-topic", tf_static_topic,
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
            on_extra=self.counters.update,
            backoff_s=backoff_s,
        )

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
        """Listener processes started again after one died."""
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
        being restarted; the restarts so far and what it received."""
        messages, transforms, static = self.counters.snapshot()
        values = (
            ("listener restarts", str(self.restarts)),
            ("listener pid", str(self.process.pid)),
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
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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

    def answer(rid: int, kind: str, payload) -> None:
        try:
            if kind == "lookup":
                result = tf.lookup(*payload)
            elif kind == "full":
                result = tf.lookup_full(payload)
            else:  # "clear"
                tf.buffer.clear()
                result = True
        except Exception as exc:  # never leave the asker waiting
            result = {"lookup": (None, None, f"TF lookup failed: {exc!r}"), "full": [None] * len(payload or ())}.get(
                kind, False
            )
        with send_lock:
            try:
                conn.send((rid, result, tf.counters.snapshot()))
            except (OSError, ValueError):
                pass

    conn.send(("ready", os.getpid()))
    pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="lerf_tf_lookup")
    while True:
        try:
            rid, kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        pool.submit(answer, rid, kind, payload)
    # The parent is gone or done: nothing to save, and lookups still waiting need no answer.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(_serve())
