"""The persister: the node's task that makes Readys durable, off the event loop.

A round hands every Ready's writes (entries, hard state, snapshot) to the persister as
a `PersistJob` and moves on (raft-rs `advance_append_async`). The persister drains its
queue on the persistence lane (storage_io.py): every job waiting when a write starts
goes into ONE synced LevelDB batch (group commit); a snapshot job is written on its
own. When a write is done it hands the jobs back to the node (`PersistedFn`), which
reports them to Raft (`on_persist_ready`) and only then sends their
`persisted_messages` — append acks and votes leave after the write is durable (thesis
§3.8). Log compaction (thesis §5.1) also writes the Raft log, so it runs here too,
between Ready writes.

A hard state whose only change is the commit index is not written on its own: Raft
re-learns the commit index after a restart (and startup raises it to the applied
index), so it rides along with the next synced write instead of costing an fsync per
commit (raft-rs `must_sync`), up to COMMIT_PERSIST_LAG_ENTRIES behind.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import Ready
from kvraft.storage import StagedSnapshot

from .metrics import NodeMetrics
from .slow_ops import SLOW_FSYNC_S, SlowOpLog
from .storage_adapter import Store
from .storage_io import StorageLanes

log = logging.getLogger("kvraft.server.node")

# A commit-only hard state is deferred while the durable commit index is less than
# this many entries behind (it is written with the next synced write).
COMMIT_PERSIST_LAG_ENTRIES = 1_000


@dataclass
class PersistJob:
    """One Ready's writes, queued for the persister.

    `staged` is the received snapshot file of `snapshot` (both None, or both set);
    `persisted_messages` leave once this job and every job before it are durable."""

    number: int
    entries: list[eraftpb.Entry]
    hs: eraftpb.HardState | None
    snapshot: eraftpb.Snapshot | None
    staged: StagedSnapshot | None
    persisted_messages: list[eraftpb.Message]

    @property
    def writes(self) -> bool:
        return bool(self.entries) or self.hs is not None or self.snapshot is not None


def merge_jobs(jobs: list[PersistJob]) -> tuple[list[eraftpb.Entry], eraftpb.HardState | None]:
    """The entries and hard state of consecutive Readys as ONE write: later entries
    replace the suffix they overlap (a new leader's log wins, thesis §5.3), the last
    hard state wins."""
    entries: list[eraftpb.Entry] = []
    hs = None
    for job in jobs:
        if job.entries:
            first = job.entries[0].index
            if entries and first <= entries[-1].index:
                del entries[max(0, first - entries[0].index):]
            assert not entries or entries[-1].index + 1 == first, (
                f"Ready entries not contiguous: {entries[-1].index} then {first}")
            entries.extend(job.entries)
        if job.hs is not None:
            hs = job.hs
    return entries, hs


# Called on the event loop when `jobs` (consecutive, in Ready order) are durable.
PersistedFn = Callable[[list[PersistJob]], None]


class Persister:
    """The persist queue and the task that drains it.

    Holds, always:
    * `_queue`: jobs of Readys handed back to Raft (advance_append_async) whose write
      has not started, in Ready order; their `number`s increase. A job is in exactly
      one of `_queue`, the write running now, or done.
    * `_writing`: a write of jobs popped from `_queue` runs on the persistence lane;
      while it does, `idle` is False, so a Ready with nothing to write still queues
      behind it (its messages never overtake the write they follow).
    * `_persisted_commit`: the commit index of the last hard state written (or found
      on disk at start); `_deferred_hs`: a commit-only hard state not yet written,
      whose commit is above `_persisted_commit`, or None.
    * `_compact_due`: a compaction was asked for and has not run; it runs when the
      queue is empty, so it never delays a Ready's write by more than one compaction.
    * `_stopping`: no new jobs come; the task writes what is queued, then returns.
    """

    def __init__(self, node_id: int, store: Store, io: StorageLanes, metrics: NodeMetrics,
                 persisted: PersistedFn, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.node_id = node_id
        self.store = store
        self.io = io
        self.metrics = metrics
        self._persisted = persisted
        # Times each synced write (and paces its slow-write warnings); a test's clock
        # makes a write slow without waiting.
        self._clock = clock
        # Used on the persistence lane only (its invariants: slow_ops.py).
        self._slow = SlowOpLog(log, f"node {node_id}: slow fdatasync", SLOW_FSYNC_S,
                               metrics.slow_fsyncs.inc, clock=clock)
        self._queue: deque[PersistJob] = deque()
        self._writing = False
        self._wake = asyncio.Event()
        self._persisted_commit = store.log.hard_state().commit
        self._deferred_hs: eraftpb.HardState | None = None
        self._compact_due = False
        self._stopping = False

    # ------------------------------------------------------------- on the loop
    @property
    def idle(self) -> bool:
        """No write queued or running: a Ready with nothing to write is done now."""
        return not self._queue and not self._writing

    def hard_state_to_write(self, rd: Ready, entries: list[eraftpb.Entry]
                            ) -> eraftpb.HardState | None:
        """The hard state a Ready's job must write: None when it may wait (commit-only
        change), the deferred one when the job writes entries anyway."""
        hs = rd.hs()
        if hs is not None and not rd.must_sync() and \
                hs.commit - self._persisted_commit < COMMIT_PERSIST_LAG_ENTRIES:
            self._deferred_hs = hs
            return None
        if hs is None and entries and self._deferred_hs is not None:
            hs = self._deferred_hs
        if hs is not None:
            self._deferred_hs = None
            self._persisted_commit = hs.commit
        return hs

    def enqueue(self, job: PersistJob) -> None:
        assert not self._queue or self._queue[-1].number < job.number
        self._queue.append(job)
        self._wake.set()

    def maybe_compact(self) -> None:
        """Thesis §5.1: once the state machine holds the effect of the log up to
        `applied`, entries well behind it can go (by entries or by bytes, as the policy
        says); a trailing window stays so a follower a little behind catches up from
        the log instead of a full snapshot. Compaction writes (synced) and deletes, so
        it runs here, between Ready writes, off the loop."""
        applied = self.store.sm.applied_index
        if self.store.log.compaction_target(applied, self.store.policy) is not None:
            self._compact_due = True
            self._wake.set()

    def stop(self) -> None:
        """Write what is queued, then end the task."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Drains the queue (group commit); a snapshot job is written on its own."""
        queue = self._queue
        while True:
            if not queue:
                if self._stopping:
                    return
                if self._compact_due:
                    self._compact_due = False
                    await self.io.persist(self._compact)
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = [queue.popleft()]
            if jobs[0].snapshot is None:
                while queue and queue[0].snapshot is None:
                    jobs.append(queue.popleft())
            if any(j.writes for j in jobs):
                self._writing = True
                try:
                    await self.io.persist(self._write_jobs, jobs)
                finally:
                    self._writing = False
            self._persisted(jobs)

    # ------------------------------------------------- on the persistence lane
    def _write_jobs(self, jobs: list[PersistJob]) -> None:
        """Install a snapshot (crash-atomically with the log, storage snapshot.py), or
        persist the merged entries and hard state in one synced batch."""
        assert jobs[0].snapshot is None or len(jobs) == 1
        first = jobs[0]
        if first.snapshot is not None:
            assert first.staged is not None
            self.store.sm.install_snapshot(first.staged, self.store.log)
        entries, hs = merge_jobs(jobs)
        if entries or hs is not None:
            t0 = self._clock()
            self.store.log.persist(entries, hs)
            took_s = self._clock() - t0
            self.metrics.fsync_duration.observe(took_s)
            self.metrics.ready_entries.observe(len(entries))
            self._slow.observe(took_s, lambda: _write_summary(len(jobs), entries, hs))

    def _compact(self) -> None:
        applied = self.store.sm.applied_index
        first = self.store.log.maybe_compact(applied, self.store.policy)
        if first is not None:
            self.metrics.snapshots_created.inc()
            log.info("node %d: compacted the log: first index now %d (applied %d)",
                     self.node_id, first, applied)


def _write_summary(readys: int, entries: list[eraftpb.Entry],
                   hs: eraftpb.HardState | None) -> str:
    """What one synced write held, for its slow-write warning."""
    parts = []
    if entries:
        parts.append(f"{len(entries)} entries, index {entries[0].index}-{entries[-1].index}")
    if hs is not None:
        parts.append(f"hard state term {hs.term} commit {hs.commit}")
    return f"writing {' and '.join(parts)} of {readys} Ready(s)"
