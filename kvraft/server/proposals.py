"""Proposals: the writes and member changes waiting on this node, and the pushback.

A client's write is queued (`add_write`), proposed to Raft by the next round (every
write queued since the last round lands in the same Ready, so they share one fsync),
and completed when its entry is applied on this node (`on_applied`), matched by its
request id (entries carry it; the apply result names it). On the leader the log index
of each proposal is known at once: if a different entry is applied there (a new leader
truncated ours, thesis §5.3), the waiter fails at once instead of at its deadline.

Pushback (issue 11, item 8): a member that falls behind — committed entries waiting to
be applied, or (leader) its entries waiting for a quorum's disks — holds new writes
back for up to half their deadline, then refuses them with RESOURCE_EXHAUSTED
(retry-safe: never proposed) instead of queueing without bound.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import grpc

from kvraft import raft
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import RawNode, StateRole
from kvraft.storage import ApplyResult

from .config import MIB, NodeConfig
from .metrics import NodeMetrics
from .waiters import NodeError, Proposal, leader_lost, unavailable

PENDING_PROPOSALS_MAX = 20_000

# Called for each applied conf-change entry with its result and its waiter (if any).
ConfChangeAppliedFn = Callable[[eraftpb.Entry, ApplyResult, Proposal | None], None]


def _failed(p: Proposal) -> bool:
    """`p` ended in an error (not resolved, nor cancelled by its client going away)."""
    return p.future.done() and not p.future.cancelled() and p.future.exception() is not None


class Proposals:
    """Every write and member change this node waits on.

    Holds, always:
    * `writes`: request id -> waiter of every write accepted here and not yet ended
      (at most PENDING_PROPOSALS_MAX); `conf_changes`: ConfChange.id -> waiter, the
      same for member changes. A waiter leaves its map when its call ends, however.
    * `_queued`: waiters accepted since the last round, not yet proposed, each also in
      `writes` or `conf_changes`; `queued_bytes` is the data of the writes among them.
    * `_by_index`: leader-side log index -> the waiter proposed at that index in this
      term or an earlier one; an index maps to at most one waiter, and a waiter is in
      it at its own `index` only.
    * `_admission_waiters`: writes held back by the pushback, waiting on
      `_admission_event`, which is set (and replaced) whenever what the pushback
      measures went down.
    """

    def __init__(self, node_id: int, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.node_id = node_id
        self.config = config
        self.metrics = metrics
        self.writes: dict[int, Proposal] = {}
        self.conf_changes: dict[int, Proposal] = {}
        self._queued: list[Proposal] = []
        self.queued_bytes = 0
        self._by_index: dict[int, Proposal] = {}
        self._admission_event = asyncio.Event()
        self._admission_waiters = 0

    # --------------------------------------------------------------- accepting
    @property
    def full(self) -> bool:
        return len(self.writes) >= PENDING_PROPOSALS_MAX

    def add_write(self, p: Proposal) -> None:
        assert p.request_id not in self.writes
        self.writes[p.request_id] = p
        self._queued.append(p)
        self.queued_bytes += len(p.data)

    def add_conf_change(self, p: Proposal) -> None:
        self.conf_changes[p.request_id] = p
        self._queued.append(p)

    def forget(self, p: Proposal) -> None:
        """The call of `p` ended: drop it from every index (and count it in
        kvraft_proposals_failed_total if it ended in an error)."""
        waiting = self.conf_changes if p.conf_change is not None else self.writes
        # Counted once: a second forget of `p` finds it gone.
        if waiting.pop(p.request_id, None) is p and _failed(p):
            self.metrics.proposals_failed.inc()
        if p.index and self._by_index.get(p.index) is p:
            del self._by_index[p.index]
        self.metrics.proposals_in_flight.set(len(self.writes))

    # --------------------------------------------------------------- in a round
    def propose_queued(self, raw: RawNode) -> None:
        queued, self._queued = self._queued, []
        self.queued_bytes = 0
        for p in queued:
            if not p.future.done():
                self._propose_one(raw, p)
        self.metrics.proposals_in_flight.set(len(self.writes))

    def _propose_one(self, raw: RawNode, p: Proposal) -> None:
        try:
            if p.conf_change is not None:
                raw.propose_conf_change(b"", p.conf_change)
            else:
                raw.propose(p.context, p.data)
        except raft.ProposalDropped:
            p.fail(unavailable("no leader to take the write" if raw.raft.leader_id == 0
                               else "the leader dropped the write", retry_safe=True))
            return
        if raw.raft.state == StateRole.Leader:
            # On the leader the entry was appended at the tail: remember where.
            p.index = raw.raft.raft_log.last_index()
            old = self._by_index.get(p.index)
            if old is not None and old is not p:
                old.fail(leader_lost("the write was overwritten by a new leader"))
            self._by_index[p.index] = p

    # ----------------------------------------------------------- after applying
    def on_applied(self, committed: list[eraftpb.Entry], results: list[ApplyResult],
                   conf_change_applied: ConfChangeAppliedFn) -> None:
        by_index = {r.index: r for r in results}
        for entry in committed:
            waiter = self._by_index.pop(entry.index, None)
            result = by_index.get(entry.index)
            if result is None:
                continue  # applied before a restart
            p: Proposal | None
            if entry.entry_type == eraftpb.EntryNormal:
                p = self.writes.get(result.request_id) if result.request_id else None
                if p is not None:
                    p.resolve(result)
            else:
                p = self.conf_changes.get(result.request_id) if result.request_id else None
                conf_change_applied(entry, result, p)
            if waiter is not None and waiter is not p:
                if waiter.conf_change is not None:
                    waiter.fail(NodeError(grpc.StatusCode.FAILED_PRECONDITION,
                                          "another member change was in progress"))
                else:
                    waiter.fail(leader_lost("the write was overwritten by a new leader"))

    # ------------------------------------------------------------------ failing
    def fail_in_flight(self, error: NodeError) -> None:
        """Fail every waiter accepted here (the leader is gone; outcome unknown)."""
        for p in list(self.writes.values()) + list(self.conf_changes.values()):
            p.fail(error)

    def fail_all(self, error: NodeError) -> None:
        never_proposed = unavailable(error.message, retry_safe=True)
        for p in self._queued:
            p.fail(never_proposed)
        for p in itertools.chain(self.writes.values(), self.conf_changes.values()):
            p.fail(error)
        self._queued.clear()
        self.queued_bytes = 0

    # ----------------------------------------------------------------- pushback
    def refusal(self, backlog_bytes: int, r: raft.Raft) -> str | None:
        """Why this member holds new writes back now, or None (cheap: every write)."""
        if backlog_bytes > self.config.apply_backlog_bytes_max:
            return (f"member {self.node_id} is behind: {backlog_bytes / MIB:.1f} MiB of "
                    f"committed writes wait to be applied (limit "
                    f"{self.config.apply_backlog_bytes_max / MIB:.0f} MiB)")
        if r.state == StateRole.Leader:
            # Writes admitted but not yet proposed count too: held-back writes released
            # together must not overshoot the limit.
            uncommitted = r.uncommitted_state.uncommitted_size + self.queued_bytes
            if uncommitted > self.config.uncommitted_bytes_max:
                return (f"leader {self.node_id} is behind: {uncommitted / MIB:.1f} MiB of "
                        f"writes wait for a quorum to make them durable (limit "
                        f"{self.config.uncommitted_bytes_max / MIB:.0f} MiB)")
        return None

    async def admit(self, timeout_s: float, refusal: Callable[[], str | None],
                    stopping: Callable[[], bool]) -> float:
        """Hold a write back while `refusal()` names a reason (slower acceptance), for
        at most half its time, so that a refusal reaches the client before its
        deadline; returns the time left for the write itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        give_up = loop.time() + timeout_s / 2
        self.metrics.proposals_held_back.inc()
        self._admission_waiters += 1
        try:
            while (reason := refusal()) is not None:
                if stopping():
                    raise unavailable("the node is shutting down", retry_safe=True)
                remaining = give_up - loop.time()
                if remaining <= 0:
                    self.metrics.proposals_refused.inc()
                    raise NodeError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"{reason}; the write was not proposed: retry later",
                                    retry_safe=True, overloaded=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._admission_event.wait(), remaining)
        finally:
            self._admission_waiters -= 1
        return max(0.0, deadline - loop.time())

    def notify_admission(self) -> None:
        """What the pushback measures went down: let held-back writes look again."""
        if self._admission_waiters:
            event, self._admission_event = self._admission_event, asyncio.Event()
            event.set()
