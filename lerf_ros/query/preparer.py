"""Preparing new snapshots on a background thread, so that queries never wait for one.

``SnapshotPreparer`` owns one thread. Every ``period_s`` (or at once after ``wake``) it asks
``fetch`` for a newer snapshot (the trainer's in-memory one, or the newest checkpoint), hands it to
the query engine (``QueryEngine.set_snapshot``) and prepares it there (``QueryEngine.prepare``:
surface points and projected language features, then an atomic swap). Queries keep being answered
from the previous prepared snapshot meanwhile.

The thread gives the CPU to training and to the queries in two ways:
- it lowers its own scheduling priority (``niceness``, Linux: a thread's nice value is its own,
  and the worker threads PyTorch starts from it inherit it);
- after each chunk of the preparation (a strip of a rendered view, a block of points through the
  field) it pauses so that it takes at most ``cpu_share`` of the wall time
  (``lerf_ros.query.cancel.PacedStop``), which also releases the interpreter lock.

Swaps are at least ``min_interval_s`` apart (each one costs a preparation). ``pause`` stops looking
for new snapshots (a preparation under way finishes) and ``resume`` looks again, on the same thread:
a managed node deactivated and activated again keeps one preparer. ``close`` stops a preparation in
progress at its next chunk and joins the thread (bounded).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, Optional

from lerf_ros.field.snapshot import FieldSnapshot
from lerf_ros.query.cancel import Cancelled

#: (snapshot, milliseconds per part of the preparation) after each swap
PreparedCallback = Callable[[FieldSnapshot, Dict[str, float]], None]


def lower_thread_priority(niceness: int) -> str:
    """Raise the calling thread's nice value by ``niceness`` (Linux; 0: nothing). Returns "" or why
    it could not (another OS, no permission)."""
    if niceness <= 0:
        return ""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return "thread priorities are not available on this system"
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(niceness)))
    except OSError as exc:
        return f"could not lower the preparation thread's priority: {exc}"
    return ""


class SnapshotPreparer:
    """Fetches and prepares new snapshots for a query engine on its own thread (see the module doc).

    Args:
        engine: returns the query engine to prepare for (None: not available, e.g. shutting down).
        fetch: returns a snapshot newer than the last one it returned, or None; may raise (reported
            through ``on_error``, tried again next period).
        period_s: how often to call ``fetch``.
        min_interval_s: shortest time between two swaps.
        cpu_share: share of the wall time the preparation may take, in (0, 1].
        niceness: how much to lower the thread's priority (0: not at all).
        on_prepared: called after each swap with the snapshot and the milliseconds it took.
        on_error: called with a message when fetching or preparing fails.
    """

    def __init__(
        self,
        engine: Callable[[], object],
        fetch: Callable[[], Optional[FieldSnapshot]],
        period_s: float,
        min_interval_s: float = 0.0,
        cpu_share: float = 1.0,
        niceness: int = 0,
        on_prepared: Optional[PreparedCallback] = None,
        on_error: Optional[Callable[[str], None]] = None,
        name: str = "lerf_prepare",
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s {period_s} must be > 0")
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError(f"cpu_share {cpu_share} is outside (0, 1]")
        self._engine = engine
        self._fetch = fetch
        self.period_s = float(period_s)
        self.min_interval_s = float(min_interval_s)
        self.cpu_share = float(cpu_share)
        self.niceness = int(niceness)
        self._on_prepared = on_prepared or (lambda snap, ms: None)
        self._on_error = on_error or (lambda message: None)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._paused = threading.Event()
        # Held from the last look at ``_paused`` to the start of a preparation: once ``pause`` returns,
        # a preparation has either started (and finishes) or will not start.
        self._start_lock = threading.Lock()
        self._last_swap = -float("inf")
        self._last_step: Optional[int] = None
        self.preparing_step: Optional[int] = None
        """Step of the snapshot being prepared now (None when idle)."""
        self.priority_note = ""
        """Why the thread's priority could not be lowered ("" when it was, or was not asked to be)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "SnapshotPreparer":
        self._thread.start()
        return self

    def wake(self) -> None:
        """Look for a newer snapshot now instead of at the end of the period."""
        self._wake.set()

    def pause(self) -> None:
        """Stop looking for new snapshots (a preparation under way finishes and is swapped in; none
        starts after this returns, a snapshot fetched meanwhile is dropped); the thread waits for
        ``resume`` or ``close``."""
        with self._start_lock:
            self._paused.set()

    def resume(self) -> None:
        """Look for new snapshots again (at once)."""
        self._paused.clear()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def alive(self) -> bool:
        """Whether the thread is running (started and not ended)."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 2.0) -> bool:
        """Stop the thread (the engine's own ``close`` stops a preparation in progress at its next
        chunk); waits up to ``timeout_s``. Returns whether the thread has ended."""
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        self.priority_note = lower_thread_priority(self.niceness)
        if self.priority_note:
            self._on_error(self.priority_note)
        while not self._closing.is_set():
            if not self._paused.is_set():
                try:
                    self.run_once()
                except Cancelled:
                    return
            self._wake.wait(self.period_s)
            self._wake.clear()

    def run_once(self) -> bool:
        """One round on the calling thread: fetch, and prepare what is newer. Returns whether a new
        snapshot was swapped in. Raises ``Cancelled`` when the engine is closed meanwhile. A snapshot
        fetched while paused (or closing) is dropped."""
        if self._last_step is not None and time.monotonic() - self._last_swap < self.min_interval_s:
            return False
        try:
            snap = self._fetch()
        except Exception as exc:  # an unreadable checkpoint, a trainer in a bad state
            self._on_error(f"could not get a model snapshot: {exc}")
            return False
        if snap is None or (self._last_step is not None and int(snap.step) == self._last_step):
            return False
        engine = self._engine()
        with self._start_lock:
            if engine is None or self._closing.is_set() or self._paused.is_set():
                return False
            engine.set_snapshot(snap)
            self._last_step = int(snap.step)
            self.preparing_step = int(snap.step)
        try:
            ms = engine.prepare(cpu_share=self.cpu_share)
        except Cancelled:
            raise
        except Exception as exc:  # the previous snapshot keeps answering; the status says why
            self._on_error(f"could not prepare the model at step {snap.step}: {exc}")
            return False
        finally:
            self.preparing_step = None
        self._last_swap = time.monotonic()
        self._on_prepared(snap, ms)
        return True
