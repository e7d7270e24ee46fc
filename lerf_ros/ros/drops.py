"""Dropped input of the trainer node: each distinct reason counted and logged once.

A reason is its text with the numbers taken out (``reason_key``): drops that differ only in their
stamps, sizes or distances share one count and one log line (``DropReporter``).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable, Dict, List, Tuple

from lerf_ros.ros.common import STATUS_TOPIC

_SIZE = re.compile(r"\b\d+x\d+\b")
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_\d])")
_MAX_TEXT = 300
_MAX_QUOTED = 48


def excerpt(text: str, limit: int = _MAX_QUOTED) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis): bad input is echoed, never in full."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reason_key(reason: str) -> str:
    """The reason without its numbers (stamps, sizes, distances become '#'; names such as rgb8 or
    16UC1 stay): drops that differ only in their numbers share one key; different problems keep
    different keys."""
    return _NUMBER.sub("#", _SIZE.sub("#x#", excerpt(reason, _MAX_TEXT)))


class DropReporter:
    """Counts dropped frames per distinct reason and logs each reason once, and again (rate-limited)
    when it recurs after ``quiet_s`` seconds without it.

    A reason is its text with the numbers taken out (``reason_key``); at most ``max_reasons`` are
    kept apart, later ones are counted together as 'other reasons'.

    Args:
        warn: ``warn(text)`` writes one log line (the node's logger).
        quiet_s: a reason seen again after this long without it is logged again, at most once per
            ``quiet_s``.
        max_reasons: distinct reasons counted separately.
        clock: monotonic seconds (``time.monotonic``).
    """

    OTHER = "other reasons (too many distinct reasons to count apart)"

    def __init__(
        self,
        warn: Callable[[str], None],
        quiet_s: float = 30.0,
        max_reasons: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._warn = warn
        self.quiet_s = float(quiet_s)
        self.max_reasons = int(max_reasons)
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {}
        self._last_seen: Dict[str, float] = {}
        self._last_logged: Dict[str, float] = {}
        self._logged_count: Dict[str, int] = {}
        self.count = 0
        self.last_reason = ""

    def drop(self, reason: str) -> None:
        """Count a dropped frame (or message) and log its reason if it is new or back after a quiet period."""
        self._record(reason, "dropping frame", counted=True)

    def note(self, event: str) -> None:
        """Log an event (e.g. a time jump) with the same once-per-reason rule, without counting a drop."""
        self._record(event, "input", counted=False)

    def _record(self, text: str, prefix: str, counted: bool) -> None:
        text = excerpt(text, _MAX_TEXT)
        key = reason_key(text)
        now = self._clock()
        with self._lock:
            if key not in self._counts and len(self._counts) >= self.max_reasons:
                key = self.OTHER
            n = self._counts.get(key, 0) + 1
            if counted:
                self.count += 1
                self.last_reason = text
                self._counts[key] = n
            elif key not in self._counts:
                self._counts[key] = 0  # events are logged once like reasons, but not counted as drops
            last_seen = self._last_seen.get(key)
            last_logged = self._last_logged.get(key)
            self._last_seen[key] = now
            if last_logged is None:
                line = f"{prefix}: {text} (repeats are counted in {STATUS_TOPIC} drop_reasons/drop_counts"
                line += f"; logged again after {self.quiet_s:g} s without it)"
            elif now - last_seen >= self.quiet_s and now - last_logged >= self.quiet_s:
                since = n - self._logged_count.get(key, 0)
                line = f"{prefix} again after {now - last_seen:.0f} s: {text} ({since} since last logged)"
            else:
                return
            self._last_logged[key] = now
            self._logged_count[key] = n
        self._warn(line)

    def counts(self) -> List[Tuple[str, int]]:
        """(reason, count) of every drop reason so far, in the order they first occurred."""
        with self._lock:
            return [(k, n) for k, n in self._counts.items() if n > 0]
