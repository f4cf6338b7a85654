"""The node runtime: one asyncio event loop owns the RawNode and drives its Ready loop.

The loop sleeps until something happens — a tick is due, peer messages arrived, a
client queued a proposal or a read — and then runs one *round*:

1. step every inbound message, tick as often as due, propose every queued write (all
   writes queued since the last round land in the same Ready, so they share one fsync),
   issue one ReadIndex for every read queued since the last round;
2. take the Ready: send `messages()` at once (thesis §10.2.1: the leader may send
   AppendEntries before its own write is durable); queue its writes for the persister;
   hand its committed entries to the apply task; advance.

A round never waits for storage: nothing that can block for long — a LevelDB write,
which stalls while compaction is behind; a large apply — runs on the event loop (issue
11, item 8). Three tasks share the loop, each awaiting its own storage lane
(storage_io.py):

* the persister writes queued Readys (entries + hard state, + snapshot) in ONE synced
  batch and then sends their `persisted_messages()` — append acks and votes only after
  the write is durable (thesis §3.8); messages that acknowledge nothing unwritten
  (heartbeat responses at a durable term, forwarded proposals and reads) leave at once,
  so a member whose disk stalls still answers its leader's heartbeats;
* the apply task applies committed entries in bounded batches (apply_backlog.py) and
  completes their waiters;
* the ticker.

A member that falls behind — committed entries waiting to be applied, or (leader) its
entries waiting for a quorum's disks — holds new writes back for up to half their
deadline, then refuses them with RESOURCE_EXHAUSTED (retry-safe: never proposed).

Client calls never touch Raft directly: they queue work and await a waiter (waiters.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from kvraft import raft
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import Config, RawNode, StateRole
from kvraft.raft.errors import CompactedError

from . import storage_adapter as sa
from .apply_backlog import ApplyBacklog, ApplyBatch
from .config import MIB, NodeConfig
from .loop_lag import LoopLagProbe
from .metrics import NodeMetrics
from .storage_io import StorageIO
from .transport import PeerTransport
from .waiters import NodeError, Proposal, ReadRound, ReadWaiter, expire, unavailable

log = logging.getLogger("kvraft.server.node")

PENDING_PROPOSALS_MAX = 20_000
PENDING_READS_MAX = 20_000
INBOUND_MESSAGES_MAX = 50_000
SNAPSHOT_HANDLES_KEPT = 2
# Staged snapshots whose MsgSnapshot waits to be stepped. Each new leader (one per term)
# sends at most one at a time, so a few cover every leader change between two rounds;
# beyond that a snapshot is refused (its sender retries, as for any lost message).
STAGED_SNAPSHOTS_MAX = 4
MAX_SIZE_PER_MSG_BYTES = 1 << 20
MAX_INFLIGHT_MSGS = 256
COMMIT_PERSIST_LAG_ENTRIES = 1_000
# The apply task's batches: one state-machine write each; the reads waiting for an
# applied index wait for the batch. ~4 bulk-load entries of 2,000 puts, ~0.1 s of apply.
APPLY_BATCH_BYTES_MAX = 1 << 20
APPLY_BATCH_ENTRIES_MAX = 1_024
# Committed entries waiting to be applied are held in memory up to this much; beyond
# it they are read back from the Raft log when their turn comes (apply_backlog.py).
APPLY_BACKLOG_HELD_BYTES_MAX = 16 << 20
# Messages that acknowledge nothing the pending writes hold: they may leave before the
# persister is done, if their term is durable (no message may carry a term its sender
# could forget, thesis §3.8). Append acks and votes always wait for the write.
EARLY_MESSAGE_TYPES = frozenset({
    eraftpb.MsgHeartbeatResponse, eraftpb.MsgPropose, eraftpb.MsgReadIndex,
    eraftpb.MsgTransferLeader,
})
TICKS_PER_ROUND_MAX = 2   # ticks owed after a slow round; more are dropped (see _ticker)
# Round pacing under load (thesis §10.2, batching): while at least BUSY_ENTRIES_MIN writes
# or BUSY_READS_MIN linearizable reads wait on the node, rounds start at most every
# BUSY_ROUND_INTERVAL_S, so each Ready carries more entries, each ReadIndex more reads and
# each peer write more messages; a lone request never waits. Reads pace from
# BUSY_READS_MIN waiting on the node, not 2: a read crosses ~5 rounds, so pacing costs
# latency that pays off only when there is enough concurrent work to batch. 3 nodes,
# linearizable get, median reads/s of 2 clusters x 2 runs, pacing from 2 / 8 queued /
# 8 waiting / never: 16 clients 1,329 / 2,345 / 2,304 / 2,411; 64 clients 4,034 /
# 3,558-3,870 / 3,279-3,362 / 3,714; 256 clients 5,438 (8 queued) / 5,982 (8 waiting);
# server CPU per read at 64 clients 260 µs (from 2) / 354 / 306 / 389 µs. Writes, on
# a loaded 2-core box (3 nodes, 64 clients, put): server CPU per write 1117 -> 884 µs at
# 2 ms, 739 µs at 5 ms; 1-client latency unchanged. Pacing from 2 writes in flight rather
# than 4: +18% writes/s at 16 clients, +20% at 64 (A/B, 2 x 3 runs).
BUSY_ROUND_INTERVAL_S = 0.003
BUSY_ENTRIES_MIN = 2
BUSY_READS_MIN = 8

ROLE_NAMES = {
    StateRole.Leader: "leader",
    StateRole.Follower: "follower",
    StateRole.Candidate: "candidate",
    StateRole.PreCandidate: "pre-candidate",
}


@dataclass
class PersistJob:
    """One Ready's writes, queued for the persister."""

    number: int
    entries: list[eraftpb.Entry]
    hs: eraftpb.HardState | None
    snapshot: eraftpb.Snapshot | None
    staged: Any
    persisted_messages: list[eraftpb.Message]


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


class Node:
    """One member of the cluster: Raft + storage + transport, owned by the event loop."""

    def __init__(self, config: NodeConfig, store: sa.Store, metrics: NodeMetrics, *,
                 io: StorageIO | None = None) -> None:
        self.config = config
        self.id = config.node_id
        self.store = store
        self.metrics = metrics
        self.cluster_id = store.datadir.cluster_id
        raft_config = Config(
            id=self.id,
            election_tick=config.election_tick,
            heartbeat_tick=config.heartbeat_tick,
            applied=store.sm.applied_index,
            max_size_per_msg=MAX_SIZE_PER_MSG_BYTES,
            max_inflight_msgs=MAX_INFLIGHT_MSGS,
            # Thesis §9.6 (pre-vote) keeps a partitioned node from disrupting the
            # cluster when it returns; §6.2 (check-quorum) makes a leader that lost
            # its majority step down, so clients are told UNAVAILABLE, not left waiting.
            pre_vote=True,
            check_quorum=True,
            # The hard limit behind the leader's pushback (_admission_refusal), which
            # holds back writes at half of it; this one also stops forwarded proposals.
            max_uncommitted_size=2 * config.uncommitted_bytes_max,
        )
        self.raw = RawNode(raft_config, store.log)
        self.io = io or StorageIO()
        self.transport = PeerTransport(
            self.id, config.peer_address, lambda: self.cluster_id, self, metrics,
            queue_messages_max=config.peer_queue_messages_max,
            queue_bytes_max=config.peer_queue_bytes_max,
            batch_bytes_max=config.peer_batch_bytes_max,
            incarnation=store.datadir.incarnation,
            peer_incarnation=sa.incarnation_lookup(store),
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._ticks_due = 0
        self._tick_count = 0
        self._inbound: list[eraftpb.Message] = []
        self._unreachable: set[int] = set()
        self._snapshot_reports: list[tuple[int, bool]] = []
        self._queued: list[Proposal] = []
        self._queued_bytes = 0     # data of the writes in _queued (not yet proposed)
        self._proposals: dict[int, Proposal] = {}          # request id -> waiter
        self._conf_proposals: dict[int, Proposal] = {}     # ConfChange.id -> waiter
        self._by_index: dict[int, Proposal] = {}           # leader-side log index -> waiter
        self._reads_queued: list[ReadWaiter] = []
        self._reads_in_flight = 0          # linearizable reads waiting on this node
        self._read_rounds: dict[bytes, ReadRound] = {}
        self._read_ctx = itertools.count(1)
        self._read_ctx_prefix = secrets.token_bytes(8)
        # Staged snapshot files by (index, term). Pending: delivered, their MsgSnapshot
        # is in _inbound, not yet stepped (Raft may still restore any of them); at most
        # STAGED_SNAPSHOTS_MAX. Stepped: only during a round, those whose message this
        # round stepped; Raft restored at most one of them, which this round's Ready
        # carries; the others were ignored (older than the commit index, thesis §5.3) and
        # are discarded when the round's Ready has been taken. Empty between rounds.
        self._staged_pending: dict[tuple[int, int], Any] = {}
        self._staged_stepped: dict[tuple[int, int], Any] = {}
        self._refused_conf_changes: dict[int, str] = {}
        self._transfers: list[int] = []
        self._leader_id = 0
        self._role = self.raw.raft.state
        self._published = False
        self._next_publish_tick = 0
        self._members_version_seen = store.sm.members_version
        self._persisted_commit = store.log.hard_state().commit
        self._deferred_hs: eraftpb.HardState | None = None
        self._persist_queue: list[PersistJob] = []
        self._persisting = False      # a write of popped jobs is running on the thread
        self._persist_wake = asyncio.Event()
        # The term of the hard state on disk: a message may leave before the pending
        # writes only if its term is at most this (EARLY_MESSAGE_TYPES).
        self._durable_term = store.log.hard_state().term
        self._backlog = ApplyBacklog(
            store.sm.applied_index, held_bytes_max=APPLY_BACKLOG_HELD_BYTES_MAX,
            batch_bytes_max=APPLY_BATCH_BYTES_MAX, batch_entries_max=APPLY_BATCH_ENTRIES_MAX)
        self._apply_wake = asyncio.Event()
        # Conf changes take effect in Raft when handed out (on the loop, which owns the
        # RawNode), in log order; the state machine writes the resulting ConfState when
        # it applies the entry: index -> ConfState, for handed-out conf changes whose
        # apply has not completed. _raft_conf_state is Raft's configuration after the
        # last one handed out (or restored).
        self._conf_states: dict[int, eraftpb.ConfState] = {}
        self._raft_conf_state: eraftpb.ConfState = store.log.initial_state().conf_state
        # Writes held back by the pushback wait on this event; it is set (and replaced)
        # whenever what the pushback measures went down.
        self._admission_event = asyncio.Event()
        self._admission_waiters = 0
        self._compact_due = False
        self._fatal: BaseException | None = None
        self._last_round_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        # Warn well before a blocked loop could cost an election (a quarter of it).
        self.loop_lag = LoopLagProbe(self.id, metrics, warn_s=self._election_timeout_s() / 4)
        self._conf_state: eraftpb.ConfState = store.log.initial_state().conf_state
        self._conf_ids = _ids_of(self._conf_state)
        self._extra_addresses: dict[int, str] = dict(config.initial_cluster)
        self._leader_waiters: list[ReadWaiter] = []
        self.store.log.set_snapshot_provider(store.sm.raft_snapshot)
        self._refresh_addresses()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name="raft-ticker"),
            loop.create_task(self._run(), name="raft-loop"),
            loop.create_task(self._persister(), name="raft-persister"),
            loop.create_task(self._applier(), name="raft-applier"),
            loop.create_task(self.loop_lag.run(), name="loop-lag-probe"),
        ]

    @property
    def fatal(self) -> BaseException | None:
        return self._fatal

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Fail every waiter UNAVAILABLE, stop the loop after its current round."""
        if not self._stopping:
            self._stopping = True
            self._fail_all(unavailable("the node is shutting down"))
        self._wake.set()
        self._persist_wake.set()   # the persister finishes its queue, then returns
        self._apply_wake.set()     # the apply task finishes its batch, then returns
        self._notify_admission()
        for task in self._tasks:
            if task.get_name() in ("raft-ticker", "loop-lag-probe"):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()
        self.io.shutdown()
        self._stopped.set()

    async def _ticker(self) -> None:
        interval_s = self.config.tick_interval_s
        next_at = time.monotonic()
        while True:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            if now - next_at > interval_s:
                # The process was starved (a loaded machine, a pause): drop the missed
                # ticks, as a Go ticker does, instead of firing them in a burst that
                # would time out an election before any heartbeat could be stepped.
                next_at = now
            self._ticks_due += 1
            self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                # Let the callbacks already due run first (arriving RPCs and peer
                # messages), so they join this round instead of each starting one.
                await asyncio.sleep(0)
                if self._busy():
                    wait_s = self._last_round_at + BUSY_ROUND_INTERVAL_S - time.monotonic()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)
                self._last_round_at = time.monotonic()
                self._wake.clear()
                if self._stopping:
                    break
                await self._round()
        except Exception as e:
            self._fail_fatally(e)

    def _busy(self) -> bool:
        """Enough work in flight that batching it beats answering each at once: write
        waiters on this node, linearizable reads waiting on this node, or (on the
        leader) entries appended but not committed."""
        if len(self._proposals) >= BUSY_ENTRIES_MIN or \
                self._reads_in_flight >= BUSY_READS_MIN:
            return True
        raft_log = self.raw.raft.raft_log
        return raft_log.last_index() - raft_log.committed >= BUSY_ENTRIES_MIN

    # ------------------------------------------------------- inputs (event loop only)
    def deliver(self, messages: list[eraftpb.Message]) -> None:
        if len(self._inbound) + len(messages) > INBOUND_MESSAGES_MAX:
            return  # overloaded: drop; Raft retransmits
        self._inbound.extend(messages)
        self._wake.set()

    def report_unreachable(self, peer_id: int) -> None:
        self._unreachable.add(peer_id)
        self._wake.set()

    def report_snapshot(self, peer_id: int, ok: bool) -> None:
        self._snapshot_reports.append((peer_id, ok))
        self._wake.set()

    def deliver_snapshot(self, msg: eraftpb.Message, staged: Any) -> bool:
        """Queue a received MsgSnapshot with its staged file; False (file discarded)
        when too many wait already — the leader sends it again later."""
        meta = msg.snapshot.metadata
        key = (meta.index, meta.term)
        previous = self._staged_pending.pop(key, None)
        if previous is not None:
            # The same snapshot twice (a retry): Raft restores it at most once, from
            # either message; keep the newer file.
            sa.discard_staged(previous)
        elif len(self._staged_pending) >= STAGED_SNAPSHOTS_MAX:
            log.warning("node %d: refused snapshot at index %d term %d: %d snapshots "
                        "already wait to be stepped", self.id, meta.index, meta.term,
                        len(self._staged_pending))
            sa.discard_staged(staged)
            return False
        self._staged_pending[key] = staged
        self.deliver([msg])
        return True

    def is_member(self, peer_id: int) -> bool:
        return peer_id in self._conf_ids

    def accept_cluster(self, cluster_id: int) -> bool:
        """A joining node adopts the cluster id of the first member that talks to it."""
        if self.cluster_id == 0 and cluster_id != 0:
            if not self.config.join:
                return False
            self.cluster_id = cluster_id
            self.store.datadir.set_cluster_id(cluster_id)
            log.info("node %d: joined cluster %016x", self.id, cluster_id)
        return cluster_id == self.cluster_id

    def learn_address(self, peer_id: int, address: str) -> None:
        if address and self.transport.address_of(peer_id) is None and peer_id != self.id:
            self._extra_addresses[peer_id] = address
            self._refresh_addresses()

    # ------------------------------------------------------- client-facing API
    def header(self) -> tuple[int, int, int, int]:
        r = self.raw.raft
        return self.id, r.leader_id, r.term, self.store.sm.applied_index

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def propose(self, request_id: int, data: bytes, timeout_s: float) -> Any:
        """Replicate a command; return its ApplyResult once applied on this node."""
        if self._stopping:
            raise unavailable("the node is shutting down", retry_safe=True)
        if len(self._proposals) >= PENDING_PROPOSALS_MAX:
            raise unavailable("too many writes in flight", retry_safe=True)
        if self._admission_refusal() is not None:
            timeout_s = await self._admit(timeout_s)
        p = Proposal(request_id=request_id, data=data)
        assert request_id not in self._proposals
        self._proposals[request_id] = p
        self._queued.append(p)
        self._queued_bytes += len(data)
        self._wake.set()
        return await self._await(p, timeout_s, self._forget_proposal)

    def _admission_refusal(self) -> str | None:
        """Why this member holds new writes back now, or None (cheap: every write)."""
        backlog = self._backlog.bytes
        if backlog > self.config.apply_backlog_bytes_max:
            return (f"member {self.id} is behind: {backlog / MIB:.1f} MiB of committed "
                    f"writes wait to be applied (limit "
                    f"{self.config.apply_backlog_bytes_max / MIB:.0f} MiB)")
        r = self.raw.raft
        if r.state == StateRole.Leader:
            # Writes admitted but not yet proposed count too: held-back writes released
            # together must not overshoot the limit.
            uncommitted = r.uncommitted_state.uncommitted_size + self._queued_bytes
            if uncommitted > self.config.uncommitted_bytes_max:
                return (f"leader {self.id} is behind: {uncommitted / MIB:.1f} MiB of writes "
                        f"wait for a quorum to make them durable (limit "
                        f"{self.config.uncommitted_bytes_max / MIB:.0f} MiB)")
        return None

    async def _admit(self, timeout_s: float) -> float:
        """Hold a write back while this member is behind (slower acceptance) for at
        most half its time, so that a refusal reaches the client before its deadline;
        returns the time left for the write itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        give_up = loop.time() + timeout_s / 2
        self.metrics.proposals_held_back.inc()
        self._admission_waiters += 1
        try:
            while (reason := self._admission_refusal()) is not None:
                if self._stopping:
                    raise unavailable("the node is shutting down", retry_safe=True)
                remaining = give_up - loop.time()
                if remaining <= 0:
                    self.metrics.proposals_refused.inc()
                    raise NodeError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"{reason}; the write was not proposed: retry later",
                                    retry_safe=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._admission_event.wait(), remaining)
        finally:
            self._admission_waiters -= 1
        return max(0.0, deadline - loop.time())

    def _notify_admission(self) -> None:
        if self._admission_waiters:
            event, self._admission_event = self._admission_event, asyncio.Event()
            event.set()

    async def propose_conf_change(self, cc: eraftpb.ConfChange, timeout_s: float) -> Any:
        if self._stopping:
            raise unavailable("the node is shutting down", retry_safe=True)
        p = Proposal(request_id=cc.id, conf_change=cc)
        self._conf_proposals[cc.id] = p
        self._queued.append(p)
        self._wake.set()
        return await self._await(p, timeout_s, self._forget_proposal)

    async def read_index(self, timeout_s: float) -> None:
        """Return once this node has applied everything committed when the read began."""
        if self._stopping:
            raise unavailable("the node is shutting down", retry_safe=True)
        if len(self._reads_queued) >= PENDING_READS_MAX:
            raise unavailable("too many reads in flight", retry_safe=True)
        w = ReadWaiter()
        self._reads_queued.append(w)
        self.metrics.reads_in_flight.inc()
        self._reads_in_flight += 1
        self._wake.set()
        try:
            await self._await(w, timeout_s, None)
        finally:
            self.metrics.reads_in_flight.dec()
            self._reads_in_flight -= 1

    async def transfer_leader(self, to: int, timeout_s: float) -> None:
        if to not in self._conf_ids or to in self._learners():
            raise NodeError(grpc.StatusCode.FAILED_PRECONDITION, f"{to} is not a voting member")
        deadline = time.monotonic() + timeout_s
        while self.raw.raft.leader_id != to:
            if self._stopping:
                raise unavailable("the node is shutting down", retry_safe=True)
            if self.raw.raft.leader_id != 0:
                self._transfers.append(to)
                self._wake.set()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise unavailable(f"leadership did not move to {to} before the deadline")
            w = ReadWaiter()
            self._leader_waiters.append(w)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.future, min(remaining, self._election_timeout_s()))
            finally:
                if w in self._leader_waiters:
                    self._leader_waiters.remove(w)

    def status(self) -> dict[str, Any]:
        r = self.raw.raft
        role = ROLE_NAMES.get(r.state, str(r.state))
        if self.id in self._learners():
            role = "learner"
        return {
            "role": role,
            "commit_index": r.raft_log.committed,
            "last_index": r.raft_log.last_index(),
        }

    def members(self) -> list[Any]:
        return self.store.sm.members()

    def member_ids(self) -> set[int]:
        return set(self._conf_ids)

    def learner_ids(self) -> set[int]:
        return self._learners()

    def pending_conf_change(self) -> bool:
        r = self.raw.raft
        pending = getattr(r, "pending_conf_index", 0)
        return r.state == StateRole.Leader and pending > r.raft_log.applied

    async def _await(self, w: Any, timeout_s: float, forget: Any) -> Any:
        # One timer per call and the waiter's own future awaited directly: a cancelled
        # call cancels the future, which every completion path treats as done. (This is
        # wait_for(shield(...)) without its two extra futures and callbacks per request.)
        deadline = asyncio.get_running_loop().call_later(timeout_s, expire, w)
        try:
            return await w.future
        finally:
            deadline.cancel()
            if not w.future.done():
                w.fail(unavailable("abandoned"))
            if forget is not None:
                forget(w)

    def _forget_proposal(self, p: Proposal) -> None:
        if p.conf_change is not None:
            self._conf_proposals.pop(p.request_id, None)
        else:
            self._proposals.pop(p.request_id, None)
        if p.index and self._by_index.get(p.index) is p:
            del self._by_index[p.index]
        self.metrics.proposals_in_flight.set(len(self._proposals))

    def _fail_all(self, error: NodeError) -> None:
        never_proposed = unavailable(error.message, retry_safe=True)
        for p in self._queued:
            p.fail(never_proposed)
        for p in itertools.chain(self._proposals.values(), self._conf_proposals.values()):
            p.fail(error)
        for w in self._reads_queued:
            w.fail(error)
        for rr in self._read_rounds.values():
            for w in rr.waiters:
                w.fail(error)
        for w in self._leader_waiters:
            w.resolve()
        self._queued.clear()
        self._queued_bytes = 0
        self._reads_queued.clear()
        self._read_rounds.clear()
        self._leader_waiters.clear()

    # ------------------------------------------------------------------ the round
    async def _round(self) -> None:
        raw = self.raw
        inbound, self._inbound = self._inbound, []
        # Every pending snapshot's message is in `inbound` (deliver_snapshot queues both).
        self._staged_stepped, self._staged_pending = self._staged_pending, {}
        for msg in inbound:
            try:
                raw.step(msg)
            except raft.RaftError as e:
                log.debug("node %d: dropped %s from %d: %s", self.id, msg.msg_type, msg.from_, e)
        for peer_id in self._unreachable:
            raw.report_unreachable(peer_id)
        self._unreachable.clear()
        for peer_id, ok in self._snapshot_reports:
            raw.report_snapshot(
                peer_id, raft.SnapshotStatus.Finish if ok else raft.SnapshotStatus.Failure
            )
        self._snapshot_reports.clear()

        transfers, self._transfers = self._transfers, []
        for to in transfers:
            raw.transfer_leader(to)

        ticks, self._ticks_due = self._ticks_due, 0
        for _ in range(min(ticks, TICKS_PER_ROUND_MAX)):
            raw.tick()
        if ticks:
            self._tick_count += ticks
            self._on_ticks()

        queued, self._queued = self._queued, []
        self._queued_bytes = 0
        for p in queued:
            if p.future.done():
                continue
            self._propose_one(p)
        self.metrics.proposals_in_flight.set(len(self._proposals))

        if self._reads_queued and raw.raft.leader_id == 0:
            # Raft drops a ReadIndex when no leader is known: say so now, as for writes.
            for w in self._reads_queued:
                w.fail(unavailable("no leader to confirm the read", retry_safe=True))
            self._reads_queued.clear()
        if self._reads_queued and not self._read_index_in_flight():
            # One ReadIndex at a time (thesis §6.4): every read that arrives while it
            # is out shares the next one, so a read costs a heartbeat round per batch.
            waiters, self._reads_queued = self._reads_queued, []
            ctx = self._read_ctx_prefix + next(self._read_ctx).to_bytes(8, "big")
            self._read_rounds[ctx] = ReadRound(ctx, waiters, self._tick_count)
            raw.read_index(ctx)

        if raw.has_ready():
            self._handle_ready()
            if raw.has_ready():
                self._wake.set()
        self._discard_ignored_snapshots()
        self._serve_reads()
        if self._reads_queued and not self._read_index_in_flight():
            self._wake.set()
        self._update_gauges()

    def _read_index_in_flight(self) -> bool:
        return any(rr.index < 0 for rr in self._read_rounds.values())

    def _propose_one(self, p: Proposal) -> None:
        raw = self.raw
        try:
            if p.conf_change is not None:
                raw.propose_conf_change(b"", p.conf_change)
            else:
                raw.propose(b"", p.data)
        except raft.ProposalDropped:
            p.fail(unavailable("no leader to take the write" if raw.raft.leader_id == 0
                               else "the leader dropped the write", retry_safe=True))
            return
        if raw.raft.state == StateRole.Leader:
            # On the leader the entry was appended at the tail: remember where, so a
            # different entry applied at that index (a new leader truncated ours)
            # fails this waiter at once instead of at its deadline.
            p.index = raw.raft.raft_log.last_index()
            old = self._by_index.get(p.index)
            if old is not None and old is not p:
                old.fail(unavailable("the write was overwritten by a new leader"))
            self._by_index[p.index] = p

    def _on_ticks(self) -> None:
        # ReadIndex requests are dropped silently when there is no leader or the leader
        # has not yet committed an entry of its term (thesis §6.4); re-ask for rounds
        # that got no answer within a quarter of an election timeout.
        retry_ticks = max(2, self.config.election_tick // 4)
        for rr in list(self._read_rounds.values()):
            if not rr.live():
                del self._read_rounds[rr.context]
            elif rr.index < 0 and self._tick_count - rr.issued_tick >= retry_ticks:
                rr.issued_tick = self._tick_count
                self.raw.read_index(rr.context)
        self._maybe_publish_self()

    def _hard_state_to_write(self, rd: Any, entries: list[eraftpb.Entry]
                             ) -> eraftpb.HardState | None:
        hs = rd.hs()
        if hs is not None and not rd.must_sync() and \
                hs.commit - self._persisted_commit < COMMIT_PERSIST_LAG_ENTRIES:
            # Only the commit index moved: Raft re-learns it after a restart (and startup
            # raises it to the applied index), so it rides along with the next synced
            # write instead of costing an fsync on every commit (raft-rs must_sync).
            self._deferred_hs = hs
            return None
        if hs is None and entries and self._deferred_hs is not None:
            hs = self._deferred_hs
        if hs is not None:
            self._deferred_hs = None
            self._persisted_commit = hs.commit
        return hs

    def _take_ready_head(self, rd: Any) -> tuple[eraftpb.Snapshot | None, Any]:
        """Soft state, read states and messages of a Ready; returns its snapshot (None
        when empty) and that snapshot's staged data."""
        ss = rd.ss()
        if ss is not None:
            self._on_soft_state(ss.leader_id, ss.raft_state)
        for rs in rd.take_read_states():
            rr = self._read_rounds.get(rs.request_ctx)
            if rr is not None and rr.index < 0:
                rr.index = rs.index
        self.transport.send(rd.take_messages())
        snapshot = rd.snapshot()
        if snapshot is not None and snapshot.metadata.index == 0:
            snapshot = None
        staged = None
        if snapshot is not None:
            key = (snapshot.metadata.index, snapshot.metadata.term)
            staged = self._staged_stepped.pop(key, None)
            assert staged is not None, f"snapshot {key} in Ready was never staged"
        return snapshot, staged

    def _discard_ignored_snapshots(self) -> None:
        """After the round's Ready was taken: the snapshots whose messages this round
        stepped and Raft did not restore can never be restored (their messages are
        gone); delete their files."""
        for staged in self._staged_stepped.values():
            sa.discard_staged(staged)
        self._staged_stepped.clear()

    def _take_ready_writes(
        self, rd: raft.Ready
    ) -> tuple[eraftpb.Snapshot | None, Any, list[eraftpb.Entry], eraftpb.HardState | None,
               list[eraftpb.Entry]]:
        """What a Ready asks to make durable and to apply: (snapshot, its staged data,
        entries, hard state to write, committed entries)."""
        snapshot, staged = self._take_ready_head(rd)
        entries = rd.take_entries()
        hs = self._hard_state_to_write(rd, entries)
        return snapshot, staged, entries, hs, rd.take_committed_entries()

    def _on_snapshot_installed(self, snapshot: eraftpb.Snapshot) -> None:
        self.metrics.snapshots_installed.inc()
        self._set_conf_state(snapshot.metadata.conf_state)
        log.info("node %d: installed snapshot at index %d term %d (term %d)",
                 self.id, snapshot.metadata.index, snapshot.metadata.term, self.raw.raft.term)
        self._refresh_addresses()

    def _handle_ready(self) -> None:
        """Async persistence (raft-rs advance_append_async / on_persist_ready): the
        Ready's writes go to the persister and its committed entries to the apply task;
        the loop moves on — stepping acks, ticking, serving reads — while both run."""
        raw = self.raw
        rd = raw.ready()
        snapshot, staged, entries, hs, committed = self._take_ready_writes(rd)
        persisted_messages = rd.take_persisted_messages()
        raw.advance_append_async(rd)
        if not (entries or hs is not None or snapshot is not None) and \
                not self._persist_queue and not self._persisting:
            # Nothing to write and nothing ahead of it: done now (a follower's
            # heartbeat and ReadIndex replies need not wait for the persister).
            raw.on_persist_ready(rd.number())
            self.transport.send(persisted_messages)
        else:
            early, held = self._split_early(persisted_messages)
            self.transport.send(early)
            # Queued even with nothing to write, so the held messages leave in Ready
            # order (an ack never overtakes the write it follows).
            self._persist_queue.append(PersistJob(rd.number(), entries, hs, snapshot,
                                                  staged, held))
            self._persist_wake.set()
        if snapshot is not None:
            # Everything handed out so far is older than the snapshot, which replaces it.
            self._backlog.reset(snapshot.metadata.index)
            self._raft_conf_state = snapshot.metadata.conf_state
        # Committed entries handed out are durable here already (RaftLog only hands
        # out min(committed, persisted)), so they apply while the write runs.
        self._hand_out(committed)
        raw.advance_apply()
        self._notify_admission()

    def _split_early(self, messages: list[eraftpb.Message]
                     ) -> tuple[list[eraftpb.Message], list[eraftpb.Message]]:
        """(messages that may leave now, messages that wait for the queued writes)."""
        early: list[eraftpb.Message] = []
        held: list[eraftpb.Message] = []
        durable_term = self._durable_term
        for m in messages:
            if m.msg_type in EARLY_MESSAGE_TYPES and m.term <= durable_term:
                early.append(m)
            else:
                held.append(m)
        return early, held

    # ------------------------------------------------------------------ applying
    def _hand_out(self, committed: list[eraftpb.Entry]) -> None:
        """Give committed entries to the apply task. A conf change takes effect in Raft
        now, in log order (only the loop touches the RawNode); the state machine writes
        its ConfState when it applies the entry."""
        if not committed:
            return
        for entry in committed:
            if entry.entry_type != eraftpb.EntryNormal:
                self._conf_states[entry.index] = self._apply_conf_change_to_raft(entry)
        self._backlog.add(committed)
        self._apply_wake.set()

    def _apply_conf_change_to_raft(self, entry: eraftpb.Entry) -> eraftpb.ConfState:
        if entry.entry_type == eraftpb.EntryConfChange:
            cc: Any = eraftpb.ConfChange.FromString(entry.data)
        else:
            cc = eraftpb.ConfChangeV2.FromString(entry.data)
        try:
            self._raft_conf_state = self.raw.apply_conf_change(cc)
        except raft.RaftError as e:
            # Every node refuses the same change the same way (it is deterministic).
            self._refused_conf_changes[entry.index] = str(e)
        return self._raft_conf_state

    async def _applier(self) -> None:
        """The apply task: one bounded batch at a time on the apply lane; waiters,
        reads and compaction follow on the loop."""
        try:
            while not self._stopping:
                batch = self._backlog.next_batch()
                if batch is None:
                    self._apply_wake.clear()
                    await self._apply_wake.wait()
                    continue
                entries, results = await self.io.apply(self._apply_batch, batch)
                self._backlog.complete(batch, entries)
                last = self._backlog.applied
                for index in [i for i in self._conf_states if i <= last]:
                    del self._conf_states[index]
                self._on_applied(entries, results)
                self._serve_reads()
                self._maybe_compact()
                self._notify_admission()
        except Exception as e:
            self._fail_fatally(e)

    def _apply_batch(self, batch: ApplyBatch) -> tuple[list[eraftpb.Entry], list[Any]]:
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
        t0 = time.perf_counter()
        results = self.store.sm.apply(entries, self._conf_state_of)
        self.metrics.apply_latency.observe(time.perf_counter() - t0)
        return entries, results

    def _conf_state_of(self, entry: eraftpb.Entry) -> eraftpb.ConfState:
        """KVStateMachine.apply's callback (apply lane): the ConfState Raft reached when
        the entry was handed out, written with the applied index."""
        cs = self._conf_states.get(entry.index)
        assert cs is not None, f"conf change at {entry.index} was never handed out"
        return cs

    async def _persister(self) -> None:
        try:
            await self._persist_loop()
        except Exception as e:
            self._fail_fatally(e)

    def _fail_fatally(self, e: BaseException) -> None:
        # A failed round or write (disk error, broken invariant) must not leave a
        # half-alive node answering clients: record it, fail everyone, let run_node exit.
        log.critical("node %d: event loop failed: %s", self.id, e, exc_info=e)
        self._fatal = e
        self._stopping = True
        self._fail_all(unavailable("the node failed"))
        self._persist_wake.set()
        self._stopped.set()

    # --------------------------------------------- asked by the peer service (seam)
    @property
    def incarnation(self) -> int:
        """This data directory's incarnation (META), sent on every peer batch."""
        return self.store.datadir.incarnation

    def replaced_member(self, member_id: int, incarnation: int) -> str | None:
        """The refusal line if `member_id` presents another incarnation than its
        replicated record holds, else None."""
        return sa.replaced_member(self.store, member_id, incarnation)

    def snapshot_receiver(self, snapshot: eraftpb.Snapshot) -> sa.SnapshotReceiver:
        """Where an inbound snapshot's chunks are staged."""
        return sa.snapshot_receiver(self.store, snapshot)

    def exit_with_error(self, message: str) -> None:
        """The fatal path for what only the operator can resolve (a peer refused this
        node's replaced data directory): ONE clear log line, no traceback; every
        waiter fails, the loop stops and run_node returns 1."""
        if self._fatal is not None:
            return
        log.critical("node %d: exiting: %s", self.id, message)
        self._fatal = RuntimeError(message)
        self._stopping = True
        self._fail_all(unavailable(message))
        self._wake.set()
        self._persist_wake.set()
        self._stopped.set()

    async def _persist_loop(self) -> None:
        """Drains the persist queue: all jobs waiting when a write starts go into ONE
        synced LevelDB batch (group commit); a snapshot job is written on its own."""
        while True:
            if not self._persist_queue:
                if self._stopping:
                    return
                if self._compact_due:
                    self._compact_due = False
                    await self.io.persist(self._compact)
                    continue
                self._persist_wake.clear()
                await self._persist_wake.wait()
                continue
            jobs = [self._persist_queue.pop(0)]
            if jobs[0].snapshot is None:
                while self._persist_queue and self._persist_queue[0].snapshot is None:
                    jobs.append(self._persist_queue.pop(0))
            if any(j.entries or j.hs is not None or j.snapshot is not None for j in jobs):
                self._persisting = True
                try:
                    await self.io.persist(self._write_jobs, jobs)
                finally:
                    self._persisting = False
                self._durable_term = self.store.log.hard_state().term
            self.raw.on_persist_ready(jobs[-1].number)
            for job in jobs:
                if job.snapshot is not None:
                    self._on_snapshot_installed(job.snapshot)
                self.transport.send(job.persisted_messages)
            self._wake.set()   # the leader's own ack may commit; followers may apply

    def _write_jobs(self, jobs: list[PersistJob]) -> None:
        """On the persistence lane: install a snapshot, or persist merged entries."""
        assert jobs[0].snapshot is None or len(jobs) == 1
        entries, hs = merge_jobs(jobs)
        self._write_durable(jobs[0].snapshot, jobs[0].staged, entries, hs)

    def _write_durable(
        self,
        snapshot: eraftpb.Snapshot | None,
        staged: Any,
        entries: list[eraftpb.Entry],
        hs: eraftpb.HardState | None,
    ) -> None:
        """On the persistence lane: install a Ready's snapshot, then write its entries
        and hard state in one synced batch."""
        if snapshot is not None:
            # Replaces the data and the Raft log together, crash-atomically (storage
            # snapshot.py); the log part of this Ready's snapshot is then in place.
            self.store.sm.install_snapshot(staged, self.store.log)
        if entries or hs is not None:
            t0 = time.perf_counter()
            self.store.log.persist(entries, hs)
            self.metrics.fsync_latency.observe(time.perf_counter() - t0)
            self.metrics.ready_entries.observe(len(entries))

    # ------------------------------------------------------------ after apply
    def _on_applied(self, committed: list[eraftpb.Entry], results: list[Any]) -> None:
        by_index = {r.index: r for r in results}
        for entry in committed:
            waiter = self._by_index.pop(entry.index, None)
            result = by_index.get(entry.index)
            if result is None:
                continue  # applied before a restart
            if entry.entry_type == eraftpb.EntryNormal:
                p = self._proposals.get(result.request_id) if result.request_id else None
                if p is not None:
                    p.resolve(result)
            else:
                p = self._conf_proposals.get(result.request_id) if result.request_id else None
                self._on_conf_change_applied(entry, result, p)
            if waiter is not None and waiter is not p:
                if waiter.conf_change is not None:
                    waiter.fail(NodeError(grpc.StatusCode.FAILED_PRECONDITION,
                                          "another member change was in progress"))
                else:
                    waiter.fail(unavailable("the write was overwritten by a new leader"))

    def _on_conf_change_applied(self, entry: eraftpb.Entry, result: Any,
                                p: Proposal | None) -> None:
        refused = self._refused_conf_changes.pop(entry.index, None)
        if refused is not None:
            log.warning("node %d: member change at index %d refused: %s",
                        self.id, entry.index, refused)
            if p is not None:
                p.fail(NodeError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"member change refused: {refused}"))
            return
        cs = result.conf_state if result.conf_state is not None else self._conf_state
        self._set_conf_state(cs)
        self._refresh_addresses()
        if entry.entry_type == eraftpb.EntryConfChange:
            cc = eraftpb.ConfChange.FromString(entry.data)
            what = {eraftpb.AddNode: "voter", eraftpb.RemoveNode: "removed",
                    eraftpb.AddLearnerNode: "learner"}.get(cc.change_type, "changed")
            log.info("node %d: member change at index %d: node %d %s (term %d);"
                     " voters %s learners %s", self.id, entry.index, cc.node_id, what,
                     self.raw.raft.term, sorted(cs.voters), sorted(cs.learners))
            if cc.change_type == eraftpb.RemoveNode and cc.node_id == self.id:
                log.warning("node %d: this node was removed from the cluster", self.id)
        if p is not None:
            p.resolve(cs)

    def _on_soft_state(self, leader_id: int, role: Any) -> None:
        term = self.raw.raft.term
        if role != self._role:
            if role == StateRole.Leader:
                log.info("node %d: election won, leader at term %d", self.id, term)
            elif self._role in (StateRole.Candidate, StateRole.PreCandidate) and \
                    role == StateRole.Follower:
                log.info("node %d: election lost at term %d", self.id, term)
            elif self._role == StateRole.Leader:
                log.info("node %d: stepped down at term %d", self.id, term)
            self._role = role
        if leader_id != self._leader_id:
            log.info("node %d: leader changed %d -> %d at term %d",
                     self.id, self._leader_id, leader_id, term)
            self.metrics.leader_changes.inc()
            if leader_id == 0:
                # No leader: nothing queued will be committed soon. Tell clients now
                # (UNAVAILABLE) rather than at their deadline. The outcome of a write
                # that already reached a log stays unknown, as after any timeout.
                self._fail_in_flight(unavailable("lost the leader"))
            self._leader_id = leader_id
            for w in self._leader_waiters:
                w.resolve()
            self._leader_waiters.clear()

    def _fail_in_flight(self, error: NodeError) -> None:
        for p in list(self._proposals.values()) + list(self._conf_proposals.values()):
            p.fail(error)
        for rr in self._read_rounds.values():
            for w in rr.waiters:
                w.fail(error)
        self._read_rounds.clear()

    def _serve_reads(self) -> None:
        applied = self.store.sm.applied_index
        for ctx, rr in list(self._read_rounds.items()):
            if 0 <= rr.index <= applied:
                for w in rr.waiters:
                    w.resolve()
                del self._read_rounds[ctx]

    def _update_gauges(self) -> None:
        r = self.raw.raft
        m = self.metrics
        m.term.set(r.term)
        m.commit_index.set(r.raft_log.committed)
        m.applied_index.set(self.store.sm.applied_index)
        m.is_leader.set(1 if r.state == StateRole.Leader else 0)
        m.apply_backlog_entries.set(self._backlog.entries)
        m.apply_backlog_bytes.set(self._backlog.bytes)

    def _election_timeout_s(self) -> float:
        return self.config.election_tick * self.config.tick_interval_s

    # ------------------------------------------------------ membership & addresses
    def _set_conf_state(self, cs: eraftpb.ConfState) -> None:
        self._conf_state = cs
        self._conf_ids = _ids_of(cs)

    def _learners(self) -> set[int]:
        return set(self._conf_state.learners) | set(self._conf_state.learners_next)

    def _refresh_addresses(self) -> None:
        addresses = dict(self._extra_addresses)
        for m in self.store.sm.members():
            if m.peer_address:
                addresses[m.id] = m.peer_address
        self.transport.set_addresses(addresses)

    def _maybe_publish_self(self) -> None:
        """Once a leader exists, make sure the replicated member record of this node
        carries its current client and peer addresses (founding members start with
        peer addresses only; an operator may restart a node with a new --listen) and
        its data directory's incarnation (issue 11, item 7: if the record already
        holds another one, this directory replaced the member's: exit).

        The publish is a normal entry (storage MemberUpdate), never a conf change: it
        updates the record's addresses and nothing else, so a publish proposed before
        this member was promoted or demoted and applied after cannot change its role
        back (issue 11, item 5). Called every tick, it also hands the transport the
        addresses other members published (normal entries do not pass through
        _on_conf_change_applied)."""
        version = self.store.sm.members_version
        if version != self._members_version_seen:
            self._members_version_seen = version
            self._refresh_addresses()
        if self._published or self._leader_id == 0 or self._stopping:
            return
        if self._tick_count < self._next_publish_tick:
            return
        # Founding members publish at once; retries (the publish was lost with a
        # leader) are spread out with jitter so the members do not all retry together.
        self._next_publish_tick = self._tick_count + self.config.election_tick + \
            secrets.randbelow(self.config.election_tick)
        if self.id not in self._conf_ids:
            return
        incarnation = self.store.datadir.incarnation
        mine = self.store.sm.member(self.id)
        if mine is not None:
            replaced = sa.replaced_member(self.store, self.id, incarnation)
            if replaced is not None:  # the cluster's log knows another data directory
                self.exit_with_error(replaced)
                return
            if (mine.client_address, mine.peer_address, mine.incarnation) == (
                    self.config.client_address, self.config.peer_address, incarnation):
                self._published = True
                return
        request_id = sa.new_request_id()
        p = Proposal(request_id=request_id, data=sa.publish_self_command(
            request_id, self.id, self.config.peer_address, self.config.client_address,
            incarnation))
        self._proposals[request_id] = p
        self._queued.append(p)
        loop = asyncio.get_running_loop()

        def forget() -> None:
            if not p.future.done():
                p.fail(unavailable("publish timed out"))
            self._forget_proposal(p)

        loop.call_later(self._election_timeout_s() * 2, forget)

    # ----------------------------------------------------------------- snapshots
    def snapshot_chunks(self, msg: eraftpb.Message) -> Iterator[bytes]:
        meta = msg.snapshot.metadata
        handle = self.store.sm.snapshot_handle(meta.index, meta.term)
        if handle is None:
            raise RuntimeError(f"no snapshot image at index {meta.index} term {meta.term}")
        return iter(handle.chunks(self.config.snapshot_chunk_bytes))

    def _maybe_compact(self) -> None:
        """Thesis §5.1: once the state machine holds the effect of the log up to
        `applied`, entries well behind it can go; a trailing window stays so a follower
        a little behind catches up from the log instead of a full snapshot."""
        applied = self.store.sm.applied_index
        # By entries or by bytes (large entries: bulk-load batches), as the policy says.
        if self.store.log.compaction_target(applied, self.store.policy) is not None:
            # Compaction writes (synced) and deletes: the persister does it between
            # Ready writes, off the loop.
            self._compact_due = True
            self._persist_wake.set()

    def _compact(self) -> None:
        """On the persistence lane."""
        applied = self.store.sm.applied_index
        first = self.store.log.maybe_compact(applied, self.store.policy)
        if first is not None:
            self.metrics.snapshots_created.inc()
            log.info("node %d: compacted the log: first index now %d (applied %d)",
                     self.id, first, applied)


def _ids_of(cs: eraftpb.ConfState) -> set[int]:
    return set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing) | set(cs.learners_next)
