"""The link to a supervised child process that answers calls over a socket pair (``ListenerLink``).

``lerf_ros.ros.tf`` keeps the process's TF buffer in such a child (the TF listener process); this
module is what keeps the child running: it starts it (a session of its own), waits for its first
message, reads its answers on a thread of its own, matches them to the calls waiting for them,
serialises the sends, pings it and ends one that stops answering (stopped, stuck), tells it of the
calls given up, and starts a child that died or was ended again after a back-off (logged once,
counted). It knows nothing of TF or ROS: the child's command line and what its answers carry are
the caller's.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import subprocess
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable, Dict, List, Optional, Tuple

START_TIMEOUT_S = 60.0
"""Longest wait for the listener process to start (imports on a loaded machine)."""

RESTART_BACKOFF_S = (0.5, 30.0)
"""First and longest wait (s) before a listener process that died is started again (doubling while
starts fail or the new one dies within the longest wait)."""

RESTARTING = "{what} restarting ({why})"
"""Why a lookup failed while the listener process is being restarted ("TF listener restarting (...)")."""

CANCELLED = "the lookup was cancelled"
"""Why a lookup failed when its ``cancel`` event was set while it waited."""

CANCEL_POLL_S = 0.05
"""How often a waiting lookup looks at its ``cancel`` event."""

LIVENESS_TIMEOUT_S = 10.0
"""A listener process that has not answered a ping (sent every second) for this long, while it runs,
is ended and started again (stopped, or stuck in a call that does not return); also the longest a
child may find a part of itself stuck before it says so in its answer to a ping. Far above anything
the child may legitimately block for between two reads of its socket (a few milliseconds)."""

PING_PERIOD_S = 1.0
"""How often the link pings its child (at most; a quarter of the liveness timeout when that is shorter)."""

END_GRACE_S = 0.5
"""How long a child that stopped answering is given to exit after its socket is shut down, before
it is killed (SIGKILL: the listener ignores SIGTERM, and a stopped process takes no other signal)."""


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
        self.heard = self.started
        """When the child was last heard from (``time.monotonic``): its ready, any answer."""
        self.unwell = ""
        """Why the child says it is stuck (its answer to a ping), '' while it is well."""

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
        self.heard = time.monotonic()

    def start_reader(self, on_message: Callable[["_Child", tuple], None], on_exit: Callable[["_Child"], None]) -> None:
        def read() -> None:
            try:
                while True:
                    try:
                        message = self.conn.recv()
                    except (EOFError, OSError):
                        break
                    self.heard = time.monotonic()
                    on_message(self, message)
            finally:  # whatever ended the loop, the link learns of it (and restarts the child)
                on_exit(self)

        threading.Thread(target=read, name="lerf_tf_reader", daemon=True).start()

    def try_send(self, message: tuple, send_lock: threading.Lock, wait_s: float) -> bool:
        """Send a small ``message`` unless that could block: the send lock is not free within
        ``wait_s`` (a call is being sent), or the socket has no room (the child stopped reading).
        Whether it was sent."""
        if not send_lock.acquire(timeout=wait_s):
            return False
        try:
            if not select.select([], [self.conn.fileno()], [], 0)[1]:
                return False
            self.conn.send(message)
            return True
        except (OSError, ValueError, TypeError):  # closed meanwhile
            return False
        finally:
            send_lock.release()

    def has_unread(self) -> bool:
        """Whether the child's messages (or its end) wait unread in the socket (the reader is late)."""
        try:
            return bool(select.select([self.conn.fileno()], [], [], 0)[0])
        except (OSError, ValueError):
            return False

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
    """Calls answered by a child process over a socket pair; the child is restarted when it dies or
    stops answering.

    The child (``argv_for_fd(fd)``: its command line, given the descriptor of its end of the pair)
    first sends ``("ready", pid)`` (or ``("error", why)``), then answers each ``(id, kind, payload)``
    (ids from 1) with ``(id, result, extra)``; ``on_extra`` receives each answer's ``extra``. Two
    messages have the id 0: ``(0, "ping", None)``, sent every ``PING_PERIOD_S``, which the child
    answers at once with ``(0, why, extra)`` (``why``: '' while it is well, else why a part of it is
    stuck), and ``(0, "cancel", id)``, sent when a call is given up, which needs no answer (the child
    may stop working on that call).

    A child that exits (its end of the socket closes) is logged once (``log``), the calls waiting for
    it fail, and it is started again after ``backoff_s[0]`` seconds, the wait doubling up to
    ``backoff_s[1]`` while starts fail or the new child dies within ``backoff_s[1]``; calls meanwhile
    fail at once with ``RESTARTING``. A child that runs but has not been heard from for
    ``liveness_s`` (stopped, stuck) or says it is stuck is ended (its socket shut down, killed after
    ``END_GRACE_S``) and then handled the same way. ``restarts`` counts the children started again.
    The first start's failure is raised by the constructor. Thread-safe.
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
        liveness_s: float = LIVENESS_TIMEOUT_S,
    ) -> None:
        if not liveness_s > 0:
            raise ValueError(f"liveness timeout of {liveness_s} s: must be > 0")
        self.what = what
        self._argv_for_fd, self._env, self._start_timeout_s = argv_for_fd, env, float(start_timeout_s)
        self._log = log or (lambda text: None)
        self._on_extra = on_extra or (lambda extra: None)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self.liveness_s = float(liveness_s)
        self._ping_period_s = min(PING_PERIOD_S, self.liveness_s / 4.0)
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
        """Children started again after one died or was ended for not answering."""
        self._child: Optional[_Child] = self._start()
        self.process: subprocess.Popen = self._child.proc
        """The newest child process (kept after ``close``)."""
        self._child.start_reader(self._on_message, self._child_exited)
        threading.Thread(target=self._watch, name="lerf_tf_watch", daemon=True).start()

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

    @property
    def calls_waiting(self) -> int:
        """Calls sent to the child and waiting for its answer."""
        with self._lock:
            return len(self._pending)

    # -------------------------------------------------------------- calls
    def call(self, kind: str, payload, wait_s: float, cancel: Optional[threading.Event] = None) -> Tuple[object, str]:
        """(the child's answer, '') or (None, why not): the child is being restarted, did not answer
        within ``wait_s``, died or was ended meanwhile, or ``cancel`` was set while waiting
        (``CANCELLED``). A call given up (cancelled, or no answer in time) is then told to the child
        (``(0, "cancel", id)``), so it can stop working on it."""
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
                gone = self._pending.pop(rid, None) is None
            if not gone:  # the child may still work on it: it can stop (best effort, never blocks long)
                child.try_send((0, "cancel", rid), self._send_lock, CANCEL_POLL_S)
            return None, why
        if slot[1] is _NO_ANSWER:
            return None, self._down or f"the {self.what} process is gone"
        return slot[1], ""

    def _on_message(self, child: _Child, message) -> None:
        try:
            rid, result, extra = message
            self._on_extra(extra)
        except Exception as exc:  # a malformed answer or a failing ``on_extra``: keep reading
            if not self._bad_message_logged:
                self._bad_message_logged = True
                self._say(f"an answer of the {self.what} process could not be taken: {exc!r} (logged once)")
            return
        if rid == 0:  # a ping's answer: '' while the child is well, else why it is stuck
            child.unwell = result if isinstance(result, str) else ""
            return
        with self._lock:
            slot = self._pending.pop(rid, None)
        if slot is not None:
            slot[1] = result
            slot[0].set()

    # -------------------------------------------------------------- supervision
    def _child_exited(self, child: _Child) -> None:
        """The reader saw the end of ``child``'s socket: unless closing (or the child was already
        ended by ``_watch``), fail its calls, log once and restart it (``_lose``)."""
        if self._closed.is_set():
            return
        code = child.exit_code(2.0)
        self._lose(child, f"the {self.what} process exited" + (f" (code {code})" if code is not None else ""))

    def _watch(self) -> None:
        """Ping the child every ``_ping_period_s``; end one not heard from for ``liveness_s`` or that
        says it is stuck (``_lose``: restarted like one that died)."""
        period, last = self._ping_period_s, time.monotonic()
        while not self._closed.wait(period):
            now = time.monotonic()
            late, last = now - last - period, now
            with self._lock:
                child = self._child
            if child is None:  # being restarted: its start has a timeout of its own
                continue
            if late > self.liveness_s / 2:  # this process did not run (suspended, starved): not the child's silence
                child.heard = max(child.heard, now)
            silent = now - child.heard
            if child.unwell:
                self._lose(child, f"the {self.what} process is stuck ({child.unwell})", ended=True)
            elif silent > self.liveness_s and not child.has_unread():
                self._lose(
                    child, f"the {self.what} process did not answer for more than {self.liveness_s:g} s", ended=True
                )
            else:
                child.try_send((0, "ping", None), self._send_lock, 0.0)

    def _lose(self, child: _Child, why: str, ended: bool = False) -> None:
        """``child`` exited, or is to be ended (``ended``: it stopped answering): unless closing or it
        is no longer the link's child, fail its calls, end it, log once and restart it (``_supervise``)."""
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
            child.end(END_GRACE_S)
        except Exception:  # already reaped: the restart does not depend on it
            pass
        ending = f": ended it (pid {child.proc.pid})," if ended else ":"
        self._say(f"{why}{ending} restarting it in {delay:g} s (lookups fail meanwhile: {self._down})")

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
