"""Queries first: the training thread steps aside while a query is answered in the same process.

On a robot's CPU the trainer and the query node share a few cores (and, in one process, the
interpreter). A query that runs while a training step runs takes about twice as long. Answers are
what a person or a robot waits for; training can wait a moment. ``QueryPriority.answering()`` wraps
a query; the training loop calls ``QueryPriority.wait`` between two steps. While any query is being
answered, ``wait`` blocks; the step in flight still finishes.

A flood of queries must not stop training. The time the training thread spends waiting is
therefore capped at ``share`` of the last ``window_s`` seconds: once it has waited that much, it
trains on and only waits again when older waits leave the window.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Deque, Iterator, Tuple

__all__ = ["QueryPriority"]


class QueryPriority:
    """Args:
    share: the most of its time the training thread may spend waiting for queries (0 = never).
    window_s: the sliding window over which ``share`` is held (s).
    """

    def __init__(self, share: float, window_s: float = 10.0) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"share must be in [0, 1), got {share}")
        if window_s <= 0.0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.share = float(share)
        self.window_s = float(window_s)
        self._cv = threading.Condition()
        self._answering = 0
        self._waits: Deque[Tuple[float, float]] = collections.deque()  # (start, end) of past waits
        self.waited_s = 0.0
        """Total seconds the training thread has waited for queries."""

    @property
    def answering_now(self) -> int:
        """Queries being answered right now."""
        return self._answering

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Wrap the answer to one query (any thread)."""
        with self._cv:
            self._answering += 1
        try:
            yield
        finally:
            with self._cv:
                self._answering -= 1
                if self._answering == 0:
                    self._cv.notify_all()

    def waited_in_window(self, now: float) -> float:
        """Seconds waited within the last ``window_s`` seconds."""
        start = now - self.window_s
        while self._waits and self._waits[0][1] <= start:
            self._waits.popleft()
        return sum(min(b, now) - max(a, start) for a, b in self._waits if b > start)

    def wait(self, stop: threading.Event) -> float:
        """For the training thread, between two steps: while a query is answered (and ``stop`` is
        not set), wait, within the share left in the window. Returns the seconds waited."""
        if self.share <= 0.0 or self._answering == 0:
            return 0.0
        t0 = time.monotonic()
        allowed = self.share * self.window_s - self.waited_in_window(t0)
        if allowed <= 0.0:
            return 0.0
        with self._cv:
            deadline = t0 + allowed
            while self._answering > 0 and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0.0:
                    break
                self._cv.wait(timeout=min(left, 0.05))  # 0.05: notice ``stop`` soon
        t1 = time.monotonic()
        self._waits.append((t0, t1))
        self.waited_s += t1 - t0
        return t1 - t0
