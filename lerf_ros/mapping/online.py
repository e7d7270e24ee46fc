"""The online trainer (ROS-free): a mapping ``Session`` plus its threads. Frames arrive while the
field learns and queries are answered.

Threads:
- the caller's (``submit``): validate the frame, select keyframes, add them to the bounded store
  and hand them to the feature worker (``Session.submit``);
- the feature worker's: teacher features (CLIP crop pyramid, DINO) for new keyframes;
- the training thread: collects finished features (and logs the progress of a backlog: counts,
  rate, ETA, at most every 30 s), takes optimiser steps once at least
  ``keyframes.min_keyframes_to_train`` keyframes have features, publishes an immutable snapshot for
  queries every ``snapshot_every`` steps, and writes periodic atomic checkpoints.

``close(save=True)`` (the node's shutdown on SIGINT/SIGTERM) stops the threads after the step in
flight and writes a checkpoint of the current step when it has steps not saved yet, so stopping a
node loses no training even with ``trainer.checkpoint_every`` 0.

Training samples rays from all keyframes with a bias toward the newest (see
``lerf_ros.mapping.keyframes``), so the field adapts to new views without forgetting old ones.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

from lerf_ros.config import LerfConfig
from lerf_ros.data.frame import Frame
from lerf_ros.mapping.priority import QueryPriority
from lerf_ros.mapping.progress import format_duration
from lerf_ros.mapping.session import LogFn, Session, SubmitResult, print_log

__all__ = ["OnlineStatus", "OnlineTrainer", "SubmitResult", "TrainerState"]

FEATURES_LOG_EVERY_S = 30.0
"""Default shortest time between two log lines about a teacher-feature backlog."""


class TrainerState(str, enum.Enum):
    WAITING = "waiting_for_frames"
    TRAINING = "training"
    PAUSED = "paused"
    ERROR = "error"
    IDLE = "idle"


@dataclass
class OnlineStatus:
    state: TrainerState
    step: int
    keyframes: int
    features_pending: int
    rays_per_second: float
    losses: Dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""
    message: str = ""
    store_mb: float = 0.0
    changes_detected: int = 0
    """Scene changes confirmed so far (``lerf_ros.mapping.changes``)."""
    keyframes_retired: int = 0
    """Keyframes retired because they showed a changed region as it was."""


class OnlineTrainer:
    """A mapping session trained by a background thread (see the module docstring).

    Args:
        cfg: the run's configuration.
        teacher: default ``make_teacher(cfg.teacher)``.
        log: ``log(level, text)``.
        snapshot_every: training steps between two snapshots for queries.
    """

    def __init__(self, cfg: LerfConfig, teacher=None, log: LogFn = print_log, snapshot_every: int = 100) -> None:
        self.session = Session(cfg, teacher, online=True, log=log)
        self.cfg = self.session.cfg
        self.log = log
        self.snapshot_every = max(1, int(snapshot_every))
        self.priority = QueryPriority(self.cfg.trainer.query_yield_share)
        """Queries answered in this process come first (``lerf_ros.mapping.priority``): wrap each in
        ``priority.answering()``."""
        self._paused = False
        # True once a pause has taken effect (the step in flight, if any, finished): what the status
        # reports, so that a status that says "paused" never precedes one more step.
        self._pause_effective = False
        self._closing = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error = ""
        self._rays_per_second = 0.0
        self._snapshot = None
        self._saved_step = -1  # step of the newest checkpoint written or resumed from
        self.features_log_every_s = FEATURES_LOG_EVERY_S
        """Shortest time between two log lines about teacher features still being computed."""
        self._features_done = 0  # features attached so far
        self._features_line: Optional[tuple] = None  # (monotonic time, features done) at the last line

    @property
    def teacher_description(self) -> str:
        return self.session.teacher_description

    @property
    def keyframes(self):
        """The session's keyframe store."""
        return self.session.keyframes

    # ------------------------------------------------------------------ frames in
    def submit(self, frame: Frame, selector=None) -> SubmitResult:
        """``Session.submit`` (``selector``: the frame's camera's own): never raises for bad input (the
        result says why it was not used)."""
        return self.session.submit(frame, selector)

    # ------------------------------------------------------------------ training thread
    def start(self) -> None:
        """Start (or, after ``stop``, restart) the training thread."""
        if self._thread is None:
            self._closing = threading.Event()  # each thread has its own: one still finishing a step stays stopped
            self._thread = threading.Thread(target=self._loop, args=(self._closing,), name="lerf_train", daemon=True)
            self._thread.start()

    def stop(self, save: bool = False, timeout_s: float = 3.0) -> Optional[str]:
        """Stop the training thread after the step in flight; the session (model, keyframes, feature
        worker) stays and ``start`` trains on. With ``save``, then write a checkpoint when the current
        step has not been saved yet. Returns that checkpoint's path, or None. Bounded by ``timeout_s``
        (a step that takes longer finishes on its own; no checkpoint is written then)."""
        deadline = time.monotonic() + timeout_s
        self._closing.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)
        return self._save_at_exit(max(0.0, deadline - time.monotonic())) if save else None

    def _loop(self, stop: threading.Event) -> None:
        s = self.session
        last_t, rays = time.perf_counter(), 0
        while not stop.is_set():
            try:
                self._features_done += s.collect_features()
                self._report_features()
                if self._paused or s.step_count >= self.cfg.trainer.max_steps or not s.can_train():
                    stop.wait(0.05)
                    continue
                # A query being answered, then a service call (save, pause, reset) waiting for the
                # lock, go before the next step.
                self.priority.wait(stop)
                s.lock.yield_to_waiters()
                with s.lock:
                    if stop.is_set():  # stopped while this thread waited: no step after stop()
                        break
                    if self._paused:  # paused while this thread waited for the lock
                        continue
                    out = s.step()
                    step = s.step_count
                    rays += int(out.get("rays", self.cfg.trainer.rays_per_batch))
                    if step % self.snapshot_every == 0 or self._snapshot is None:
                        self._snapshot = s.snapshot()
                    every = self.cfg.trainer.checkpoint_every
                    if (every and step % every == 0) or step == self.cfg.trainer.max_steps:
                        self.save_checkpoint()  # periodic, and once when the step budget is reached
                now = time.perf_counter()
                if now - last_t >= 2.0:
                    self._rays_per_second = rays / (now - last_t)
                    last_t, rays = now, 0
            except Exception as exc:  # keep the node alive; report the reason
                self._error = f"training stopped: {exc!r}"
                self.log("error", self._error)
                stop.wait(1.0)

    def _report_features(self) -> None:
        """While keyframes wait for teacher features (slow on a CPU: minutes for the first ones with
        CLIP), a log line at most every ``features_log_every_s`` with the counts, the rate and the ETA
        of the backlog, so the wait is visible in the log and not only on /lerf/status."""
        pending = self.session.features_pending
        now = time.monotonic()
        if pending == 0:
            self._features_line = None
            return
        if self._features_line is None:  # a backlog starts: the first line after one period
            self._features_line = (now, self._features_done)
            return
        t0, done0 = self._features_line
        if now - t0 < self.features_log_every_s:
            return
        rate = (self._features_done - done0) / (now - t0)
        eta = f"ETA {format_duration(pending / rate)}" if rate > 0 else "none finished in this period"
        self.log(
            "info",
            f"teacher features: {self.session.ready_keyframes()} keyframes ready, {pending} pending, "
            f"{rate:.3g} keyframes/s, {eta}",
        )
        self._features_line = (now, self._features_done)

    # ------------------------------------------------------------------ control
    @property
    def step(self) -> int:
        return self.session.step_count

    @property
    def latest_snapshot(self):
        """The newest immutable snapshot (None before the first training step)."""
        return self._snapshot

    def ready_keyframes(self) -> int:
        return self.session.ready_keyframes()

    def set_paused(self, paused: bool) -> None:
        """Pause or resume; when pausing, returns after the step in flight (if any) has finished."""
        self._paused = bool(paused)
        if not paused:
            self._pause_effective = False
            return
        with self.session.lock:
            self._pause_effective = self._paused

    def reset(self) -> None:
        """A fresh model at step 0 (scene bounds estimated again); keyframes and their features are kept."""
        with self.session.lock:
            self.session.reset()
            self._snapshot = None
            self._error = ""

    def save_checkpoint(self) -> str:
        """``Session.save_checkpoint`` of the current step; returns its path."""
        with self.session.lock:
            path = self.session.save_checkpoint()
            self._saved_step = self.session.step_count
            return path

    def resume_latest(self) -> Optional[str]:
        """Load the newest checkpoint in ``output_dir/checkpoints`` if there is one."""
        with self.session.lock:
            path = self.session.resume()
            if path is not None:
                self._saved_step = self.session.step_count
            return path

    @property
    def unsaved_steps(self) -> bool:
        """A model exists and its current step is in no checkpoint written or resumed from."""
        return self.session.trainer is not None and self.step > 0 and self.step != self._saved_step

    def status(self) -> OnlineStatus:
        s = self.session
        if self._error:
            state = TrainerState.ERROR
        elif self._pause_effective:
            state = TrainerState.PAUSED
        elif not s.can_train():
            state = TrainerState.WAITING
        elif self.step >= self.cfg.trainer.max_steps:
            state = TrainerState.IDLE
        else:
            state = TrainerState.TRAINING
        stats = s.keyframes.stats()
        changes = s.change_stats()
        msg = self._error or (
            f"{state.value}: step {self.step}, {stats['count']} keyframes "
            f"({stats['with_features']} with features, {s.features_pending} pending), "
            f"{self._rays_per_second:.0f} rays/s"
        )
        return OnlineStatus(
            state=state,
            step=self.step,
            keyframes=stats["count"],
            features_pending=s.features_pending,
            rays_per_second=self._rays_per_second,
            losses=dict(s.losses),
            checkpoint=s.last_checkpoint,
            message=msg,
            store_mb=stats["bytes"] / 2**20,
            changes_detected=int(changes["changes_detected"]),
            keyframes_retired=int(changes["keyframes_retired"]),
        )

    def close(self, save: bool = False, timeout_s: float = 3.0) -> Optional[str]:
        """Stop training and feature computation; with ``save``, first write a checkpoint of the
        current step when it has steps not saved yet (``unsaved_steps``). Returns that checkpoint's
        path, or None.

        Bounded: the step in flight gets what remains of ``timeout_s`` to finish (else no checkpoint
        is written, with a warning: the weights are mid-update), the feature worker half a second to
        finish its frame (queued frames are dropped). A failed save is logged, not raised, so a
        shutdown always completes."""
        path = self.stop(save=save, timeout_s=timeout_s)
        self.session.close(timeout=0.5)
        return path

    def _save_at_exit(self, timeout_s: float) -> Optional[str]:
        lock = self.session.lock
        if not lock.acquire(timeout=timeout_s):  # the step in flight (or the model's build) did not finish
            if self.unsaved_steps:  # read without the lock: only for the message
                self.log(
                    "warning", f"no checkpoint at exit: the training step after {self.step} did not finish in time"
                )
            return None
        try:
            if not self.unsaved_steps:
                return None
            path = self.save_checkpoint()
        except Exception as exc:  # disk full, folder not writable: say so, finish the shutdown
            self.log("error", f"could not write the checkpoint at exit: {exc}")
            return None
        finally:
            lock.release()
        self.log("info", f"saved the checkpoint at exit: step {self.step}")
        return path
