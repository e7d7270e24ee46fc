"""Stopping long preparation work (surface extraction, projected features) at a chunk boundary.

Preparing a snapshot for queries can take seconds to minutes on a CPU. The work runs in bounded
chunks (a strip of a rendered view, a block of points through the language field); between two
chunks it calls ``StopFlag.check``, which lets other threads run and raises ``Cancelled`` once the
owner (the query node at shutdown) has set the flag. A shutdown then waits for one chunk, not for
the whole preparation.
"""

from __future__ import annotations

import threading
import time
from typing import Optional


class Cancelled(RuntimeError):
    """The work was stopped because its owner is shutting down."""


class StopFlag:
    """A thread-safe flag that long work checks between chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Ask every holder of this flag to stop at its next chunk boundary."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Call between two chunks of work: yields the CPU to other threads (the executor, a signal
        being handled), then raises Cancelled if the flag is set."""
        time.sleep(0)
        if self._event.is_set():
            raise Cancelled("stopped: shutting down")


def check(stop: Optional[StopFlag]) -> None:
    """``stop.check()`` when there is a flag; nothing otherwise."""
    if stop is not None:
        stop.check()


class PacedStop(StopFlag):
    """A ``StopFlag`` view for background work that must leave the CPU to others (training, queries).

    It shares the stop state of ``flag``; its ``check`` also pauses after each chunk so that the
    work takes at most ``share`` of the wall time (a chunk of t seconds is followed by a pause of
    ``t * (1 - share) / share``, at most ``max_pause_s``). The pause releases the GIL, so threads of
    the same process run meanwhile."""

    def __init__(self, flag: StopFlag, share: float, max_pause_s: float = 0.5) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share {share} is outside (0, 1]")
        self._event = flag._event
        self.share = float(share)
        self.max_pause_s = float(max_pause_s)
        self.paused_s = 0.0
        """Seconds paused so far."""
        self._since = time.perf_counter()

    def check(self) -> None:
        if self.share < 1.0:
            work = time.perf_counter() - self._since
            pause = min(work * (1.0 - self.share) / self.share, self.max_pause_s)
            if pause > 0 and not self._event.wait(pause):
                self.paused_s += pause
        super().check()
        self._since = time.perf_counter()
