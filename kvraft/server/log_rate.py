"""The gate behind the server's rate-limited warnings (slow storage work in slow_ops.py,
requests that do not parse in parse_guard.py): at most one line per `interval_s`, with
the events refused in between counted for the next line, so that an event that repeats
(a sick disk, a flood of garbage) cannot flood the log."""
from __future__ import annotations

import time
from collections.abc import Callable


class LogGate:
    """Holds, always:
    * `last_line_at`: the clock reading of the last line admitted, or None before the
      first; no line is admitted sooner than `interval_s` after it.
    * `suppressed`: the events refused since that line.
    Used from one thread at a time (its owner's)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert interval_s >= 0
        self.interval_s = interval_s
        self.clock = clock
        self.last_line_at: float | None = None
        self.suppressed = 0

    def admit(self) -> int | None:
        """One event: None when its line must not be written (it is counted), else the
        number of events refused since the last line (and the count starts again)."""
        now = self.clock()
        if self.last_line_at is not None and now - self.last_line_at < self.interval_s:
            self.suppressed += 1
            return None
        refused, self.suppressed = self.suppressed, 0
        self.last_line_at = now
        return refused
