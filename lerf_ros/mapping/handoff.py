"""A re-entrant lock that a busy loop hands over to the threads waiting for it (ROS-free).

The training loop holds the session lock for one step at a time and takes it again microseconds
after releasing it. Python's locks are not fair: a service thread blocked in ``acquire`` is woken
when the lock is released, but it needs the interpreter first, and by the time it runs the loop
has usually taken the lock again. On a busy 2-core machine a ``/lerf/save_checkpoint`` or
``/lerf/pause`` call could wait minutes. ``HandoffLock.yield_to_waiters``, called by the loop
before it takes the lock again, waits while any other thread is blocked acquiring it.
"""

from __future__ import annotations

import threading
import time

__all__ = ["HandoffLock"]


class HandoffLock:
    """``threading.RLock`` semantics (``with``, ``acquire(blocking, timeout)``, ``release``) plus a
    count of the threads blocked in ``acquire`` and ``yield_to_waiters`` for the loop that would
    otherwise starve them."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._count_lock = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Threads blocked in ``acquire`` right now."""
        return self._waiting

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        with self._count_lock:
            self._waiting += 1
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            with self._count_lock:
                self._waiting -= 1

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "HandoffLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def yield_to_waiters(self, max_wait_s: float = 2.0, poll_s: float = 0.001) -> bool:
        """Wait (without holding the lock) while another thread is blocked acquiring it, at most
        ``max_wait_s``; True when nobody was or is left waiting. Call it without holding the lock."""
        deadline = time.monotonic() + max_wait_s
        while self._waiting > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True
