"""Linearizable reads: ReadIndex rounds (thesis §6.4).

A read waits until this node has applied everything committed when it began. The node
asks Raft for a read index (`RawNode.read_index`): the leader records its commit index,
confirms with a heartbeat round that it still leads, and answers with a ReadState; the
read is then served once the local applied index reaches that index. Reads queued
while one ReadIndex is out share the next one, so a read costs one heartbeat round per
batch, not one per read.

Raft drops a ReadIndex silently when no leader is known, or before the leader has
committed an entry of its term; rounds that got no answer are re-asked every quarter of
an election timeout until answered or until every waiter gave up.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

from kvraft.raft import RawNode, ReadState

from .waiters import NodeError, ReadRound, ReadWaiter, unavailable

PENDING_READS_MAX = 20_000


class Reads:
    """The reads waiting on this node.

    Holds, always:
    * `_queued`: waiters of reads not yet in a round (at most PENDING_READS_MAX);
    * `_rounds`: context -> round, for every ReadIndex asked and not yet served; a
      round's `index` is -1 until its ReadState arrives, and at most one round has
      index -1 at a time (the one "in flight": a round starts only when none is);
    * `in_flight`: linearizable reads that wait on this node (queued, in a round, or
      being served), counted by their calls — what the round pacing looks at;
    * every context is unique on this node across restarts (`_ctx_prefix` is random),
      so a ReadState for a round of an earlier incarnation never matches.
    """

    def __init__(self, ctx_prefix: bytes) -> None:
        self._queued: list[ReadWaiter] = []
        self._rounds: dict[bytes, ReadRound] = {}
        self._ctx = itertools.count(1)
        self._ctx_prefix = ctx_prefix
        self.in_flight = 0

    @property
    def full(self) -> bool:
        return len(self._queued) >= PENDING_READS_MAX

    def queue(self, w: ReadWaiter) -> None:
        self._queued.append(w)

    def needs_round(self) -> bool:
        """Reads are queued and no ReadIndex is out to carry them."""
        return bool(self._queued) and not self._round_in_flight()

    def _round_in_flight(self) -> bool:
        return any(rr.index < 0 for rr in self._rounds.values())

    def issue(self, raw: RawNode, tick_count: int) -> None:
        """In a round, after stepping: start a ReadIndex for the queued reads."""
        if self._queued and raw.raft.leader_id == 0:
            # Raft drops a ReadIndex when no leader is known: say so now, as for writes.
            for w in self._queued:
                w.fail(unavailable("no leader to confirm the read", retry_safe=True))
            self._queued.clear()
        if self.needs_round():
            waiters, self._queued = self._queued, []
            ctx = self._ctx_prefix + next(self._ctx).to_bytes(8, "big")
            self._rounds[ctx] = ReadRound(ctx, waiters, tick_count)
            raw.read_index(ctx)

    def retry(self, raw: RawNode, tick_count: int, retry_ticks: int) -> None:
        """After ticks: drop rounds nobody waits for, re-ask unanswered ones."""
        for rr in list(self._rounds.values()):
            if not rr.live():
                del self._rounds[rr.context]
            elif rr.index < 0 and tick_count - rr.issued_tick >= retry_ticks:
                rr.issued_tick = tick_count
                raw.read_index(rr.context)

    def on_read_states(self, read_states: Iterable[ReadState]) -> None:
        for rs in read_states:
            rr = self._rounds.get(rs.request_ctx)
            if rr is not None and rr.index < 0:
                rr.index = rs.index

    def serve(self, applied: int) -> None:
        """Complete the rounds whose read index this node has applied."""
        for ctx, rr in list(self._rounds.items()):
            if 0 <= rr.index <= applied:
                for w in rr.waiters:
                    w.resolve()
                del self._rounds[ctx]

    def fail_rounds(self, error: NodeError) -> None:
        """The leader is gone: no round out will be answered."""
        for rr in self._rounds.values():
            for w in rr.waiters:
                w.fail(error)
        self._rounds.clear()

    def fail_all(self, error: NodeError) -> None:
        for w in self._queued:
            w.fail(error)
        self._queued.clear()
        self.fail_rounds(error)
