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
