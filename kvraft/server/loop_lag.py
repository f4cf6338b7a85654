"""The event loop's lag: how late a timer fires. Everything a node owes its peers
(heartbeats, acks, votes, ticks) runs on one event loop, so a callback that blocks it —
a LevelDB write waiting out a compaction stall, a large apply — shows here first, long
before an election timeout turns it into a leader change (issue 11, item 8).

The probe sleeps `interval_s` again and again; the lag of one wake-up is how much later
than asked it woke. Each is observed in the `kvraft_event_loop_lag_seconds` histogram
and the largest so far is kept in `kvraft_event_loop_lag_max_seconds`; a lag above
`warn_s` is logged once per occurrence, with its length and how much of it the loop's
own thread spent running: nearly all of it means work on the loop blocked it; little
of it means the thread was waiting — for the GIL (another thread's long pure-Python
work) or for a CPU (a loaded machine).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .metrics import NodeMetrics

log = logging.getLogger("kvraft.server.node")

PROBE_INTERVAL_S = 0.05


class LoopLagProbe:
    def __init__(self, node_id: int, metrics: NodeMetrics, *, warn_s: float,
                 interval_s: float = PROBE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert interval_s > 0 and warn_s > 0
        self.node_id = node_id
        self.metrics = metrics
        self.warn_s = warn_s
        self.interval_s = interval_s
        self.clock = clock
        self.max_lag_s = 0.0     # the largest lag observed since start

    async def run(self) -> None:
        while True:
            asked_at = self.clock()
            cpu_at = time.thread_time()
            await asyncio.sleep(self.interval_s)
            self.observe(self.clock() - asked_at - self.interval_s,
                         time.thread_time() - cpu_at)

    def observe(self, lag_s: float, loop_cpu_s: float = 0.0) -> None:
        lag_s = max(0.0, lag_s)
        self.metrics.loop_lag.observe(lag_s)
        if lag_s > self.max_lag_s:
            self.max_lag_s = lag_s
            self.metrics.loop_lag_max.set(lag_s)
        if lag_s > self.warn_s:
            log.warning("node %d: the event loop was blocked for %.3f s (%.3f s of it "
                        "running on the loop's thread)", self.node_id, lag_s, loop_cpu_s)
