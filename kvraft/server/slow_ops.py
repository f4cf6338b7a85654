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

from .log_rate import LogGate

# etcd's warnSyncDuration: an fsync of the Raft log slower than this is reported. A
# constant, as in etcd: a healthy disk syncs in milliseconds, one that takes a second
# delays every write (and the leader's acks) by that much whatever the threshold says.
SLOW_FSYNC_S = 1.0
# At most one warning line per kind per this many seconds (the rest are counted).
SLOW_LOG_INTERVAL_S = 10.0


class SlowOpLog:
    """Rate-limited warnings for one kind of operation, used from one thread only
    (the persistence lane for fsyncs, the apply lane for applies: storage_io.py).

    `_gate` (log_rate.LogGate) admits at most one line per `interval_s` and counts the
    slow operations it refused; `_suppressed_max_s` is the longest of those (0.0 when
    the gate has refused none since its last line)."""

    def __init__(self, logger: logging.Logger, what: str, threshold_s: float,
                 counter: Callable[[], None], *, interval_s: float = SLOW_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert threshold_s > 0 and interval_s >= 0
        self.log = logger
        self.what = what
        self.threshold_s = threshold_s
        self._count = counter
        self._gate = LogGate(interval_s, clock)
        self._suppressed_max_s = 0.0

    def observe(self, took_s: float, describe: Callable[[], str]) -> bool:
        """An operation took `took_s`; if that is slow, count it and warn (unless a
        line was written less than `interval_s` ago). `describe()` — what the
        operation was — is called only for a line. True when a line was written."""
        if took_s <= self.threshold_s:
            return False
        self._count()
        refused = self._gate.admit()
        if refused is None:
            self._suppressed_max_s = max(self._suppressed_max_s, took_s)
            return False
        since = ""
        if refused:
            since = (f"; {refused} more since the last warning, the slowest "
                     f"{self._suppressed_max_s:.3f}s")
        self.log.warning("%s: took %.3fs, expected at most %.3fs: %s%s", self.what,
                         took_s, self.threshold_s, describe(), since)
        self._suppressed_max_s = 0.0
        return True
