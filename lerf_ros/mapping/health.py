"""Health of the running nodes as levelled checks (what ``/diagnostics`` publishes). No ROS here.

Each node turns its counters into a few named checks once a second (``lerf_ros.ros.diagnostics``
publishes them as ``diagnostic_msgs/DiagnosticStatus``: level, message, key values). The rules:

Trainer (``TrainerHealth``), over the last ``HealthLimits.window_s`` seconds:
- ``input``: image rate, frames received, drops per reason, ingest queue depth. WARN when no image
  has arrived for ``stall_s`` (also before the first one, counted from the start), or when more than
  ``max_drop_fraction`` of the images received in the window were dropped (at least
  ``min_drops`` of them). OK otherwise.
- ``training``: state, step, steps/s, rays/s, losses. ERROR when training stopped on an error
  (the message says which); OK otherwise (waiting for frames, paused and idle are normal states).
- ``keyframes``: keyframes and their memory against their bounds, teacher backlog (keyframes
  waiting for teacher features). WARN when the backlog exceeds half the keyframe bound: keyframes
  are then likely evicted before the teacher reaches them.

Query node (``query_checks``):
- ``snapshot``: the answering snapshot's step, version, age, the step being prepared, the last
  preparation's duration. ERROR when the text encoder could not be loaded (no query can be
  answered); WARN when the newest snapshot could not be prepared (the previous one answers);
  OK otherwise, including before the first snapshot (the trainer has not produced one yet).
- ``queries``: queries answered in the recent window and their latency p50/p95. Always OK.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Mapping, Optional, Sequence, Tuple

OK, WARN, ERROR = 0, 1, 2
"""Levels, as diagnostic_msgs/DiagnosticStatus numbers them."""
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


@dataclass(frozen=True)
class Check:
    """One named check: a level, a one-line message and key values (strings, in order)."""

    name: str
    level: int
    message: str
    values: Tuple[Tuple[str, str], ...] = ()

    def value(self, key: str) -> str:
        """The value of ``key`` (KeyError when absent)."""
        for k, v in self.values:
            if k == key:
                return v
        raise KeyError(key)


@dataclass(frozen=True)
class HealthLimits:
    """When the trainer's checks warn (see the module docstring)."""

    stall_s: float = 5.0
    """Seconds without an image before ``input`` warns."""
    max_drop_fraction: float = 0.5
    """Share of the images received in the window that may be dropped before ``input`` warns."""
    min_drops: int = 3
    """Drops in the window below which ``input`` never warns (a single bad frame is not a flood)."""
    window_s: float = 10.0
    """Seconds the rates are computed over."""

    def check(self) -> "HealthLimits":
        for key in ("stall_s", "window_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} = {getattr(self, key)}: must be > 0")
        if not 0.0 <= self.max_drop_fraction <= 1.0:
            raise ValueError(f"max_drop_fraction = {self.max_drop_fraction}: must be in [0, 1]")
        if self.min_drops < 0:
            raise ValueError(f"min_drops = {self.min_drops}: must be >= 0")
        return self


@dataclass(frozen=True)
class TrainerCounters:
    """What the trainer node knows at one moment (counters are totals since start).

    Attributes:
        frames_received: image messages received.
        drops: (reason, count) of every drop reason so far.
        queue_depth: images waiting for ingestion now; queue_size: its bound.
        state: the trainer's state name ('training', 'error', ...); error: its error ("" if none).
        step: training steps taken; rays_per_second: training throughput.
        losses: the latest losses by name.
        keyframes, max_keyframes: keyframes held and their bound.
        memory_mb, max_memory_mb: keyframe store memory and its bound.
        teacher_backlog: keyframes waiting for teacher features.
        changes_detected, keyframes_retired: scene changes confirmed and the keyframes they retired.
    """

    frames_received: int
    drops: Sequence[Tuple[str, int]]
    queue_depth: int
    queue_size: int
    state: str
    error: str
    step: int
    rays_per_second: float
    keyframes: int
    max_keyframes: int
    memory_mb: float
    max_memory_mb: float
    teacher_backlog: int
    losses: Mapping[str, float] = field(default_factory=dict)
    changes_detected: int = 0
    keyframes_retired: int = 0


class TrainerHealth:
    """Rates over a sliding window and the trainer's checks (see the module docstring)."""

    def __init__(self, limits: HealthLimits = HealthLimits(), clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits.check()
        self._clock = clock
        self._start = clock()
        self._samples: Deque[Tuple[float, int, int, int]] = collections.deque()  # (t, received, drops, step)
        self._last_image_t: Optional[float] = None
        self._last_received = 0

    def checks(self, c: TrainerCounters) -> List[Check]:
        """The ``input``, ``training`` and ``keyframes`` checks for the counters ``c`` now."""
        now = self._clock()
        lim = self.limits
        drops_total = sum(n for _, n in c.drops)
        if c.frames_received > self._last_received:
            self._last_image_t = now
            self._last_received = c.frames_received
        self._samples.append((now, c.frames_received, drops_total, c.step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= lim.window_s:
            self._samples.popleft()
        t0, rec0, drop0, step0 = self._samples[0]
        span = now - t0
        received_w, dropped_w = c.frames_received - rec0, drops_total - drop0
        rate = received_w / span if span > 0 else 0.0
        steps_per_s = (c.step - step0) / span if span > 0 else 0.0

        # --- input
        since = now - (self._last_image_t if self._last_image_t is not None else self._start)
        level, message = OK, f"{rate:.1f} images/s"
        if since >= lim.stall_s:
            level = WARN
            message = (
                f"no image for {since:.0f} s"
                if self._last_image_t is not None
                else f"no image received in {since:.0f} s since start (check the image topic and its remapping)"
            )
        elif dropped_w >= max(1, lim.min_drops) and dropped_w > lim.max_drop_fraction * max(received_w, 1):
            level = WARN
            worst = max(c.drops, key=lambda rn: rn[1])[0] if c.drops else ""
            message = f"{dropped_w} of {received_w} images dropped in {span:.0f} s (most: {worst})"
        elif dropped_w:
            message += f", {dropped_w} dropped in {span:.0f} s"
        values = [
            ("images per second", f"{rate:.2f}"),
            ("frames received", str(c.frames_received)),
            ("seconds since last image", f"{since:.1f}" if self._last_image_t is not None else "none yet"),
            ("frames dropped", str(drops_total)),
            (f"dropped in last {lim.window_s:g} s", str(dropped_w)),
            ("ingest queue depth", f"{c.queue_depth} / {c.queue_size}"),
        ]
        values += [(f"drops: {reason}", str(n)) for reason, n in c.drops]
        out = [Check("input", level, message, tuple(values))]

        # --- training
        if c.state == "error" or c.error:
            level, message = ERROR, c.error or "training stopped on an error"
        else:
            level, message = OK, f"{c.state}: step {c.step}, {steps_per_s:.2f} steps/s"
        values = [
            ("state", c.state),
            ("step", str(c.step)),
            ("steps per second", f"{steps_per_s:.2f}"),
            ("rays per second", f"{c.rays_per_second:.0f}"),
        ]
        values += [(f"loss {k}", f"{v:.4g}") for k, v in c.losses.items()]
        out.append(Check("training", level, message, tuple(values)))

        # --- keyframes and teacher
        level = OK
        message = f"{c.keyframes} of {c.max_keyframes} keyframes, {c.memory_mb:.0f} of {c.max_memory_mb:.0f} MB"
        if c.teacher_backlog > max(1, c.max_keyframes // 2):
            level = WARN
            message = (
                f"teacher backlog {c.teacher_backlog} keyframes (more than half of keyframes.max_keyframes "
                f"{c.max_keyframes}): keyframes may be evicted before they get features"
            )
        elif c.teacher_backlog:
            message += f", {c.teacher_backlog} waiting for teacher features"
        values = [
            ("keyframes", str(c.keyframes)),
            ("max keyframes", str(c.max_keyframes)),
            ("memory MB", f"{c.memory_mb:.1f}"),
            ("max memory MB", f"{c.max_memory_mb:.1f}"),
            ("teacher backlog", str(c.teacher_backlog)),
            ("scene changes", str(c.changes_detected)),
            ("retired for changes", str(c.keyframes_retired)),
        ]
        out.append(Check("keyframes", level, message, tuple(values)))
        return out


def query_checks(status: Mapping[str, object], engine_error: str = "") -> List[Check]:
    """The query node's ``snapshot`` and ``queries`` checks from ``QueryNode.status()`` (the engine's
    status plus the latency window); ``engine_error``: why there is no engine ("" when there is)."""
    step = int(status.get("step", -1))
    preparing = int(status.get("preparing_step", -1))
    age = float(status.get("age_s", -1.0))
    error = str(status.get("error", ""))
    values = [
        ("answering step", str(step)),
        ("snapshot version", str(status.get("version", 0))),
        ("snapshot age s", f"{age:.1f}" if age >= 0 else "none yet"),
        ("preparing step", str(preparing) if preparing >= 0 else "none"),
        ("newest offered step", str(status.get("offered_step", -1))),
        ("last preparation ms", f"{float(status.get('prepared_ms', 0.0)):.0f}"),
        ("candidate points", str(status.get("candidates", 0))),
        ("features", str(status.get("features_note", "")) or f"rank {status.get('features_rank', 0)}"),
    ]
    if engine_error:
        snap = Check("snapshot", ERROR, engine_error, tuple(values))
    elif error:
        snap = Check("snapshot", WARN, f"{error} (answering from step {step})", tuple(values))
    elif step < 0:
        snap = Check("snapshot", OK, "no snapshot yet (the trainer has not produced one)", tuple(values))
    else:
        message = f"answering from step {step} (snapshot #{status.get('version', 0)}, {age:.0f} s old)"
        if preparing >= 0:
            message += f"; preparing step {preparing}"
        snap = Check("snapshot", OK, message, tuple(values))
    n = int(status.get("queries", 0))
    p50, p95 = float(status.get("latency_p50_ms", 0.0)), float(status.get("latency_p95_ms", 0.0))
    queries = Check(
        "queries",
        OK,
        f"{n} queries in the recent window, p50 {p50:.0f} ms, p95 {p95:.0f} ms" if n else "no queries recently",
        (("queries in window", str(n)), ("latency p50 ms", f"{p50:.1f}"), ("latency p95 ms", f"{p95:.1f}")),
    )
    return [snap, queries]


__all__ = [
    "OK",
    "WARN",
    "ERROR",
    "LEVEL_NAMES",
    "Check",
    "HealthLimits",
    "TrainerCounters",
    "TrainerHealth",
    "query_checks",
]
