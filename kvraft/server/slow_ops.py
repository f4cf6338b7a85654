"""Warnings for slow storage work: one WARNING line when an fsync or an apply took
longer than its threshold, at most one line per `interval_s`, so that a sick disk —
where every write is slow — cannot flood the log. The line after a quiet spell says
how many slow operations it did not report and the slowest of them; the counters on
/metrics (kvraft_slow_fsyncs_total, kvraft_slow_applies_total) count every one.

etcd's equivalents: "slow fdatasync" above 1 s (wal.warnSyncDuration) and "apply
request took too long" above --warning-apply-duration (100 ms).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

# etcd's warnSyncDuration: an fsync of the Raft log slower than this is reported. A
# constant, as in etcd: a healthy disk syncs in milliseconds, one that takes a second
# delays every write (and the leader's acks) by that much whatever the threshold says.
SLOW_FSYNC_S = 1.0
# At most one warning line per kind per this many seconds (the rest are counted).
SLOW_LOG_INTERVAL_S = 10.0


class SlowOpLog:
    """Rate-limited warnings for one kind of operation, used from one thread only
    (the persistence lane for fsyncs, the apply lane for applies: storage_io.py).

    Holds, always:
    * `_last_logged_s`: the clock reading of the last line written, or None before
      the first; no line is written sooner than `interval_s` after it.
    * `_suppressed` slow operations since that line that were not written, and the
      longest of them, `_suppressed_max_s` (0.0 when `_suppressed` is 0).
    """

    def __init__(self, logger: logging.Logger, what: str, threshold_s: float,
                 counter: Callable[[], None], *, interval_s: float = SLOW_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert threshold_s > 0 and interval_s >= 0
        self.log = logger
        self.what = what
        self.threshold_s = threshold_s
        self._count = counter
        self.interval_s = interval_s
        self._clock = clock
        self._last_logged_s: float | None = None
        self._suppressed = 0
        self._suppressed_max_s = 0.0

    def observe(self, took_s: float, describe: Callable[[], str]) -> bool:
        """An operation took `took_s`; if that is slow, count it and warn (unless a
        line was written less than `interval_s` ago). `describe()` — what the
        operation was — is called only for a line. True when a line was written."""
        if took_s <= self.threshold_s:
            return False
        self._count()
        now = self._clock()
        if self._last_logged_s is not None and now - self._last_logged_s < self.interval_s:
            self._suppressed += 1
            self._suppressed_max_s = max(self._suppressed_max_s, took_s)
            return False
        since = ""
        if self._suppressed:
            since = (f"; {self._suppressed} more since the last warning, the slowest "
                     f"{self._suppressed_max_s:.3f}s")
        self.log.warning("%s: took %.3fs, expected at most %.3fs: %s%s", self.what,
                         took_s, self.threshold_s, describe(), since)
        self._last_logged_s = now
        self._suppressed = 0
        self._suppressed_max_s = 0.0
        return True
