"""The apply task: committed entries into the state machine, off the event loop.

Each Ready's committed entries are handed out (`hand_out`) into the apply backlog
(apply_backlog.py) — they are durable here already, RaftLog hands out only
min(committed, persisted) — and the apply task applies them one bounded batch at a
time on the apply lane (storage_io.py), while the loop goes on stepping, ticking and
persisting. After each batch the node completes its waiters, serves reads, and looks
at compaction and the pushback (`AppliedFn`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import RawNode
from kvraft.raft.errors import CompactedError
from kvraft.storage import ApplyResult

from .apply_backlog import ApplyBacklog, ApplyBatch
from .membership import Membership
from .metrics import NodeMetrics
from .slow_ops import SlowOpLog
from .storage_adapter import Store
from .storage_io import StorageLanes

# The apply task's batches: one state-machine write each; the reads waiting for an
# applied index wait for the batch. ~4 bulk-load entries of 2,000 puts, ~0.1 s of apply.
APPLY_BATCH_BYTES_MAX = 1 << 20
APPLY_BATCH_ENTRIES_MAX = 1_024
# Committed entries waiting to be applied are held in memory up to this much; beyond
# it they are read back from the Raft log when their turn comes (apply_backlog.py).
APPLY_BACKLOG_HELD_BYTES_MAX = 16 << 20

log = logging.getLogger("kvraft.server.node")

# Called on the loop after a batch: (the entries it covered, their apply results).
AppliedFn = Callable[[list[eraftpb.Entry], list[ApplyResult]], None]


class Applier:
    """The apply backlog and the task that drains it.

    Holds, always: `backlog` (its own invariants: apply_backlog.py) has at most one
    batch on the apply lane, and this task is the only one that takes batches;
    `_stopping`: the task finishes the batch it runs and returns.
    """

    def __init__(self, store: Store, io: StorageLanes, membership: Membership,
                 metrics: NodeMetrics, applied: AppliedFn, *, node_id: int,
                 warning_apply_s: float, clock: Callable[[], float] = time.perf_counter
                 ) -> None:
        self.store = store
        self.io = io
        self.membership = membership
        self.metrics = metrics
        self._applied = applied
        # Times each batch's apply (and paces the warnings); a test's clock makes an
        # apply slow without waiting. `_slow` is used on the apply lane only.
        self._clock = clock
        self._slow = SlowOpLog(log, f"node {node_id}: apply request took too long",
                               warning_apply_s, metrics.slow_applies.inc, clock=clock)
        self.backlog = ApplyBacklog(
            store.sm.applied_index, held_bytes_max=APPLY_BACKLOG_HELD_BYTES_MAX,
            batch_bytes_max=APPLY_BATCH_BYTES_MAX, batch_entries_max=APPLY_BATCH_ENTRIES_MAX)
        self._wake = asyncio.Event()
        self._stopping = False

    def hand_out(self, raw: RawNode, committed: list[eraftpb.Entry]) -> None:
        """Give committed entries to the apply task. A conf change takes effect in Raft
        now, in log order (only the loop touches the RawNode); the state machine writes
        its ConfState when it applies the entry."""
        if not committed:
            return
        for entry in committed:
            if entry.entry_type != eraftpb.EntryNormal:
                self.membership.hand_out(raw, entry)
        self.backlog.add(committed)
        self._wake.set()

    def reset(self, snapshot_index: int) -> None:
        """A snapshot replaces everything handed out so far (it is older)."""
        self.backlog.reset(snapshot_index)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            batch = self.backlog.next_batch()
            if batch is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            entries, results = await self.io.apply(self.apply_batch, batch)
            self.backlog.complete(batch, entries)
            self.membership.forget_applied(self.backlog.applied)
            self._applied(entries, results)

    def apply_batch(self, batch: ApplyBatch) -> tuple[list[eraftpb.Entry], list[ApplyResult]]:
        """On the apply lane: (the batch's entries, their apply results)."""
        entries = batch.entries
        if not entries:
            try:
                entries = self.store.log.entries(batch.read_from, batch.read_to + 1,
                                                 batch.read_bytes_max)
            except CompactedError:
                # A snapshot installed meanwhile replaced these entries (and the log).
                assert self.store.sm.applied_index >= batch.read_from
                return [], []
        t0 = self._clock()
        results = self.store.sm.apply(entries, self.membership.conf_state_of)
        took_s = self._clock() - t0
        self.metrics.apply_duration.observe(took_s)
        self._slow.observe(took_s, lambda: _batch_summary(entries))
        return entries, results


def _batch_summary(entries: list[eraftpb.Entry]) -> str:
    """What one apply batch held, for its slow-apply warning."""
    if not entries:
        return "applying no entries"
    return f"applying {len(entries)} entries, index {entries[0].index}-{entries[-1].index}"
