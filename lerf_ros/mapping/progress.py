"""Progress of long work as log lines: counts, rate and ETA, at a bounded rate.

A progress bar is invisible in a log file and to a node's logger; ``ProgressLog`` writes ordinary
lines instead, e.g.

    teacher features: 24/120 frames (20%), 0.81 frames/s, 30 s elapsed, ETA 1 min 59 s

A line is written when the work starts, whenever another ``every_fraction`` of it is done or
``every_s`` seconds have passed since the last line (whichever comes first, but never two lines
within ``min_interval_s``), and when it is finished. So a slow job still reports every ``every_s``
seconds, and a fast one writes about ``1 / every_fraction`` lines, whatever its length.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

__all__ = ["ProgressLog", "format_duration"]


def format_duration(seconds: float) -> str:
    """'12.3 s', '4 min 05 s', '2 h 03 min'; '?' when unknown (not finite or negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class ProgressLog:
    """Reports ``done`` of ``total`` units of work as log lines (module docstring).

    Args:
        what: what is being done, e.g. 'teacher features' (starts each line).
        total: units of work in all (> 0).
        unit: name of a unit, plural ('frames', 'steps').
        log: writes one line (default ``print`` with flush).
        every_s: the longest time between two lines while work goes on.
        every_fraction: a line each time another fraction of the work is done.
        min_interval_s: the shortest time between two lines (the final line excepted).
        initial: units already done when this starts (a resumed run); the rate counts only new ones.
        clock: monotonic seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        log: Optional[Callable[[str], None]] = None,
        every_s: float = 10.0,
        every_fraction: float = 0.1,
        min_interval_s: float = 1.0,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if int(total) < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        if not every_s > 0 or not 0 < every_fraction <= 1 or min_interval_s < 0:
            raise ValueError(
                f"every_s must be > 0, every_fraction in (0, 1] and min_interval_s >= 0, got "
                f"{every_s}, {every_fraction}, {min_interval_s}"
            )
        self.what = what
        self.total = int(total)
        self.unit = unit
        self._log = log if log is not None else (lambda line: print(line, flush=True))
        self.every_s = float(every_s)
        self.every_fraction = float(every_fraction)
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._initial = max(0, min(int(initial), self.total))
        self.done = self._initial
        self._t0: Optional[float] = None
        self._last_line = -math.inf
        self._last_bucket = -1
        self.lines = 0
        """Lines written so far."""

    def start(self, note: str = "") -> None:
        """Write the first line (the work and its size) and start the clock."""
        self._t0 = self._clock()
        self._last_bucket = self._bucket(self.done)
        self._emit(f"{self.what}: {self.done}/{self.total} {self.unit}" + (f"; {note}" if note else ""))

    def update(self, done: int, note: str = "") -> bool:
        """``done`` units are finished now (absolute count); writes a line when one is due (module
        docstring) and returns whether it did. ``note`` is appended to that line (e.g. losses)."""
        if self._t0 is None:
            self.start()
        self.done = max(0, min(int(done), self.total))
        now = self._clock()
        bucket = self._bucket(self.done)
        finished = self.done >= self.total
        due = finished or bucket > self._last_bucket or now - self._last_line >= self.every_s
        if not due or (not finished and now - self._last_line < self.min_interval_s):
            return False
        self._last_bucket = bucket
        self._emit(self.line(now) + (f"; {note}" if note else ""))
        return True

    def line(self, now: Optional[float] = None) -> str:
        """The progress line for the current count: done/total (percent), rate, elapsed, ETA."""
        now = self._clock() if now is None else now
        elapsed = max(0.0, now - (self._t0 if self._t0 is not None else now))
        new = self.done - self._initial
        rate = new / elapsed if elapsed > 0 else math.nan
        left = self.total - self.done
        eta = 0.0 if left == 0 else (left / rate if rate > 0 else math.inf)
        pct = 100.0 * self.done / self.total
        rate_text = f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"
        text = f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate_text}, "
        text += f"{format_duration(elapsed)} elapsed"
        return text + ("" if left == 0 else f", ETA {format_duration(eta)}")

    def _bucket(self, done: int) -> int:
        return int(math.floor(done / self.total / self.every_fraction + 1e-9))

    def _emit(self, text: str) -> None:
        self._last_line = self._clock()
        self.lines += 1
        self._log(text)
