"""The storage lanes of a simulated node: its persistence and apply jobs, run inline on
the loop at virtual times the simulation draws, one job at a time per lane, in order
(what the node relies on of any StorageLanes, kvraft/server/storage_io.py).

The disk can be made to misbehave:
* `stall(seconds)`: no job starts before then (LevelDB stalls every writer while its
  compaction is behind — issue 11, item 8);
* `fail_next_persist(written=...)`: the next persistence job raises as a failed fsync
  would, after or before its write reached the store; the node fails (fail-stop), and
  the simulation restarts it as a supervisor would;
* `crash()`: the jobs still queued — including the one "running", whose time has not
  come — are dropped, never written: a crash before their fsync.
"""
from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

PERSIST = "persist"
APPLY = "apply"


class InjectedFsyncError(OSError):
    """The simulation's failed fsync: the node fails on it, and is restarted."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


@dataclass
class DiskTiming:
    """Latency of one job, in seconds: uniform in [min, max], with a `slow_share`
    of the jobs `slow_factor` times slower."""

    persist_min_s: float
    persist_max_s: float
    apply_min_s: float
    apply_max_s: float
    slow_share: float = 0.02
    slow_factor: float = 20.0


class SimLanes:
    """StorageLanes for one incarnation of one simulated node.

    Holds, always: each lane's queue holds the jobs submitted and not yet run, in
    submission order; exactly the head of a non-empty queue has a timer (`_timers`) at
    which it runs; after `crash()` both are empty and stay so (new jobs never run).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random,
                 timing: DiskTiming) -> None:
        self._loop = loop
        self._rng = rng
        self._timing = timing
        self._queues: dict[str, deque[_Job]] = {PERSIST: deque(), APPLY: deque()}
        self._timers: dict[str, asyncio.TimerHandle | None] = {PERSIST: None, APPLY: None}
        self._stalled_until = 0.0
        self._fail_next: bool | None = None   # None: no failure armed; else `written`
        self.crashed = False
        # Called once, at the next persistence job's submission (before it can run):
        # the simulation crashes the node there, after the Ready's messages() left and
        # before its write is durable.
        self.on_persist_submitted: Callable[[], None] | None = None
        self.jobs_run = 0
        self.jobs_dropped = 0

    # ------------------------------------------------------------- StorageLanes
    async def persist(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(PERSIST, fn, args)  # type: ignore[no-any-return]

    async def apply(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(APPLY, fn, args)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        """A clean stop: the node awaited every job it submitted."""

    # ------------------------------------------------------------------- faults
    def stall(self, seconds: float) -> None:
        self._stalled_until = max(self._stalled_until, self._loop.time() + seconds)

    def heal(self) -> None:
        """No more stalls nor failures (the end of the chaos)."""
        self._stalled_until = 0.0
        self._fail_next = None
        self.on_persist_submitted = None

    def fail_next_persist(self, written: bool) -> None:
        self._fail_next = written

    def crash(self) -> int:
        """Drop every queued job; returns how many persistence jobs were lost."""
        self.crashed = True
        lost = len(self._queues[PERSIST])
        for lane, queue in self._queues.items():
            self.jobs_dropped += len(queue)
            queue.clear()
            timer = self._timers[lane]
            if timer is not None:
                timer.cancel()
            self._timers[lane] = None
        return lost

    # ----------------------------------------------------------------- running
    def _submit(self, lane: str, fn: Callable[..., Any], args: tuple[Any, ...]
                ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.crashed:
            return future   # a dead process's work never completes
        queue = self._queues[lane]
        queue.append(_Job(fn, args, future))
        if len(queue) == 1:
            self._schedule(lane)
        if lane == PERSIST and self.on_persist_submitted is not None:
            hook, self.on_persist_submitted = self.on_persist_submitted, None
            self._loop.call_soon(hook)
        return future

    @property
    def persist_queued(self) -> int:
        return len(self._queues[PERSIST])

    def _latency(self, lane: str) -> float:
        t = self._timing
        lo, hi = (t.persist_min_s, t.persist_max_s) if lane == PERSIST else (
            t.apply_min_s, t.apply_max_s)
        latency = self._rng.uniform(lo, hi)
        if self._rng.random() < t.slow_share:
            latency *= t.slow_factor
        return latency

    def _schedule(self, lane: str) -> None:
        start = max(self._loop.time(), self._stalled_until)
        self._timers[lane] = self._loop.call_at(start + self._latency(lane), self._run_head, lane)

    def _run_head(self, lane: str) -> None:
        self._timers[lane] = None
        if self._loop.time() < self._stalled_until:   # a stall began while it waited
            self._schedule(lane)
            return
        queue = self._queues[lane]
        job = queue.popleft()
        self.jobs_run += 1
        failing = lane == PERSIST and self._fail_next is not None
        try:
            if failing:
                written, self._fail_next = self._fail_next, None
                if written:
                    job.fn(*job.args)
                raise InjectedFsyncError(
                    f"injected fsync failure ({'after' if written else 'before'} the write)")
            result = job.fn(*job.args)
        except Exception as e:
            if not job.future.done():
                job.future.set_exception(e)
        else:
            if not job.future.done():
                job.future.set_result(result)
        if queue and not self.crashed:
            self._schedule(lane)
