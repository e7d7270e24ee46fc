"""Teacher features for new keyframes, computed off the training thread.

``FeatureWorker`` owns one background thread and a bounded input queue. The trainer submits
keyframes (``submit``), keeps training, and collects finished features with ``poll``; a frame whose
features fail is reported (``take_errors``, the optional ``on_error`` callback, the log) and the
thread goes on with the next one.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Hashable, List, Optional, Tuple

from lerf_ros.config import TeacherConfig
from lerf_ros.data.frame import Frame
from lerf_ros.teachers.base import Teacher
from lerf_ros.teachers.features import FrameFeatures, compute_frame_features

_log = logging.getLogger(__name__)
_STOP = object()

ErrorCallback = Callable[[Hashable, Exception], None]
ComputeFn = Callable[[Teacher, Frame, TeacherConfig], FrameFeatures]


class FeatureWorker:
    """Background computation of ``FrameFeatures``; see the module docstring.

    Thread-safe: ``submit`` and ``poll`` may be called from different threads.
    """

    def __init__(
        self,
        teacher: Teacher,
        cfg: TeacherConfig,
        on_error: Optional[ErrorCallback] = None,
        max_queue: Optional[int] = None,
        compute: ComputeFn = compute_frame_features,
        name: str = "lerf_features",
    ) -> None:
        """
        Args:
            teacher: the teacher whose features are computed.
            cfg: the teacher configuration (pyramid layout, batch size, queue size).
            on_error: called as ``on_error(key, exception)`` from the worker thread when a frame fails.
            max_queue: input queue bound (default ``cfg.worker_queue_size``).
            compute: the per-frame computation (default ``compute_frame_features``).
        """
        size = int(max_queue if max_queue is not None else cfg.worker_queue_size)
        if size < 1:
            raise ValueError(f"max_queue must be >= 1, got {size}")
        self.teacher = teacher
        self.cfg = cfg
        self._on_error = on_error
        self._compute = compute
        self._queue: "queue.Queue" = queue.Queue(maxsize=size)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._done: List[Tuple[Hashable, FrameFeatures]] = []
        self._errors: List[Tuple[Hashable, Exception]] = []
        self._pending = 0
        self._closed = False
        self.num_done = 0
        self.num_failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def submit(self, key: Hashable, frame: Frame, block: bool = True, timeout: Optional[float] = None) -> bool:
        """Queue ``frame`` under ``key``. With a full queue, wait for room (``block``, up to ``timeout`` s);
        returns False when the frame was not queued. Raises RuntimeError after ``close``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("FeatureWorker is closed")
            self._pending += 1
        try:
            self._queue.put((key, frame), block=block, timeout=timeout)
        except queue.Full:
            with self._changed:
                self._pending -= 1
                self._changed.notify_all()
            return False
        return True

    # ------------------------------------------------------------------ consumer side
    def poll(self) -> List[Tuple[Hashable, FrameFeatures]]:
        """Finished (key, features) pairs since the last call, in completion order."""
        with self._lock:
            out, self._done = self._done, []
        return out

    def take_errors(self) -> List[Tuple[Hashable, Exception]]:
        """(key, exception) of frames that failed since the last call."""
        with self._lock:
            out, self._errors = self._errors, []
        return out

    @property
    def pending(self) -> int:
        """Frames submitted whose features are not finished yet (queued or being computed)."""
        with self._lock:
            return self._pending

    @property
    def ready(self) -> int:
        """Finished features waiting to be collected by ``poll``."""
        with self._lock:
            return len(self._done)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until nothing is pending; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout)

    def close(self, cancel: bool = False, timeout: Optional[float] = None) -> None:
        """Stop the thread after the queued frames (or drop them with ``cancel``). Idempotent."""
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            if cancel:
                self._drop_queued()
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> "FeatureWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)

    # ------------------------------------------------------------------ thread
    def _drop_queued(self) -> None:
        """Forget frames still queued (after the stop marker, or cancelled)."""
        dropped = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += item is not _STOP
        if dropped:
            with self._changed:
                self._pending -= dropped
                self._changed.notify_all()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._drop_queued()
                return
            key, frame = item
            try:
                feats = self._compute(self.teacher, frame, self.cfg)
            except Exception as exc:  # reported, never fatal to the thread
                _log.warning("teacher features failed for %r: %s", key, exc, exc_info=True)
                with self._lock:
                    self._errors.append((key, exc))
                    self.num_failed += 1
                if self._on_error is not None:
                    try:
                        self._on_error(key, exc)
                    except Exception:
                        _log.exception("on_error callback raised for %r", key)
            else:
                with self._lock:
                    self._done.append((key, feats))
                    self.num_done += 1
            finally:
                with self._changed:
                    self._pending -= 1
                    self._changed.notify_all()
