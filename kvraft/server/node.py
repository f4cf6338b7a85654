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
(storage_io.py): the persister (persist.py), the apply task (applier.py), the ticker.
Messages that acknowledge nothing the pending writes hold (heartbeat responses at a
durable term, forwarded proposals and reads) leave at once, so a member whose disk
stalls still answers its leader's heartbeats; append acks and votes wait for the write.

This module is the facade and the round; each concern has its own module, with the
invariants of its state written beside it:
    persist.py      the persist queue and its task (group commit, compaction)
    applier.py      the apply backlog and its task
    proposals.py    write and member-change waiters, the pushback
    reads.py        ReadIndex rounds
    membership.py   the configuration, conf changes, addresses, the self-publish
    snapshots.py    received snapshots staged until installed; sent ones streamed

Client calls never touch Raft directly: they queue work and await a waiter (waiters.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass

import grpc

from kvraft import raft
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import Config, RawNode, StateRole
from kvraft.storage import ApplyResult, MemberRecord, StagedSnapshot

from . import storage_adapter as sa
from .applier import Applier
from .auth.context import entry_context
from .cluster_version import ClusterVersionRaise
from .config import NodeConfig
from .loop_lag import LoopLagProbe
from .membership import Membership
from .metrics import NodeMetrics
from .persist import Persister, PersistJob
from .proposals import Proposals
from .reads import Reads
from .snapshots import SnapshotStaging, snapshot_chunks
from .storage_io import StorageIO, StorageLanes
from .tls import peer_channel_credentials
from .transport import PeerTransport, Transport
from .waiters import NodeError, Proposal, ReadWaiter, expire, leader_lost, unavailable

log = logging.getLogger("kvraft.server.node")

INBOUND_MESSAGES_MAX = 50_000
MAX_SIZE_PER_MSG_BYTES = 1 << 20
MAX_INFLIGHT_MSGS = 256
# Messages that acknowledge nothing the pending writes hold: they may leave before the
# persister is done, if their term is durable (no message may carry a term its sender
# could forget, thesis §3.8). Append acks and votes always wait for the write.
EARLY_MESSAGE_TYPES = frozenset({
    eraftpb.MsgHeartbeatResponse, eraftpb.MsgPropose, eraftpb.MsgReadIndex,
    eraftpb.MsgTransferLeader,
})
TICKS_PER_ROUND_MAX = 2   # ticks owed after a slow round; more are dropped (see _ticker)
# Lease mode (kvraft/raft/read_only.py): the ticks a leader owes its tick clock after a
# pause are delivered at once at the start of the next round, at most this many more
# than an election timeout — enough to end any lease and reach a check-quorum.
LEASE_CATCH_UP_EXTRA_TICKS = 1
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


Clock = Callable[[], float]   # monotonic seconds, on the event loop's time scale
ApplyListener = Callable[[list[eraftpb.Entry], list[ApplyResult]], None]
RoleListener = Callable[[int, StateRole], None]   # (leader id, this node's role)
TransportFactory = Callable[["Node"], Transport]


@dataclass(frozen=True)
class NodeStatus:
    """What `Node.status()` reports: this node's role (a ROLE_NAMES value, or "learner")
    and its log's commit and last index."""

    role: str
    commit_index: int
    last_index: int


class Node:
    """One member of the cluster: Raft + storage + transport, owned by the event loop.

    The loop's own state (the parts keep theirs):
    * `_inbound`, `_unreachable`, `_snapshot_reports`, `_transfers`, `_ticks_due`:
      inputs that arrived since the last round began; each round takes them all
      (at most INBOUND_MESSAGES_MAX messages wait: beyond, they are dropped, and Raft
      retransmits, thesis §3.5). `_wake` is set whenever one of them is non-empty or a
      part has work for a round.
    * `_tick_count`: ticks taken since start (dropped ones included).
    * `_leader_id`, `_role`: those of the last SoftState taken from a Ready.
    * `_stopping`: set once (stop, a fatal error, an exit); from then on no new work is
      accepted and every waiter has failed. `_fatal`: why the node stopped on its own.

    What it takes from outside (the production ones are the defaults; a simulation or
    a test passes its own, issue 15): `io`, where storage work runs (storage_io.py);
    `transport`, a factory of its outbound transport, given the node (which receives
    what the transport reports, TransportEvents); `clock`, the time its ticker and
    pacing read — it must be the event loop's time scale, since the node also sleeps
    and sets deadlines through the loop; `rng`, every random choice the node and its
    Raft make (election timeouts, publish jitter and request ids, read contexts), so
    that a seeded one makes a run repeatable.
    """

    def __init__(self, config: NodeConfig, store: sa.Store, metrics: NodeMetrics, *,
                 io: StorageLanes | None = None, transport: TransportFactory | None = None,
                 clock: Clock = time.monotonic, rng: random.Random | None = None) -> None:
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
            # `--read-mode lease`: thesis §6.4.1 lease reads (kvraft/raft/read_only.py).
            read_only_option=(raft.ReadOnlyOption.LeaseBased if config.read_mode == "lease"
                              else raft.ReadOnlyOption.Safe),
            # The hard limit behind the leader's pushback (proposals.py), which holds
            # back writes at half of it; this one also stops forwarded proposals.
            max_uncommitted_size=2 * config.uncommitted_bytes_max,
        )
        self.rng = rng if rng is not None else random.Random(secrets.randbits(128))
        self.clock = clock
        self.raw = RawNode(raft_config, store.log, self.rng)
        self.io: StorageLanes = io or StorageIO()
        self.transport: Transport = (transport or Node._peer_transport)(self)
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._ticks_due = 0
        self._tick_count = 0
        # Lease mode: (raft tick_count, clock()) at the start of the last round that
        # found this node not leading, so that while it leads, tick_count can be kept
        # no further behind real time than the ticks since then (_keep_lease_clock).
        # None in safe mode.
        self._lease_clock_base: tuple[int, float] | None = None
        self._inbound: list[eraftpb.Message] = []
        self._unreachable: set[int] = set()
        self._snapshot_reports: list[tuple[int, bool]] = []
        self._transfers: list[int] = []
        self._leader_id = 0
        self._role = self.raw.raft.state
        self._leader_waiters: list[ReadWaiter] = []   # transfer_leader calls
        # Called on the loop, in log order, after each applied batch (the watch hub,
        # the lessor): they must not block. Snapshot installs call them with no
        # entries, so a listener that tracks the state re-reads it from the store.
        self.apply_listeners: list[ApplyListener] = []
        # Called on the loop when this node's (leader id, role) changes (the lessor).
        self.role_listeners: list[RoleListener] = []
        self._fatal: BaseException | None = None
        self._last_round_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        # Warn well before a blocked loop could cost an election (a quarter of it).
        self.loop_lag = LoopLagProbe(self.id, metrics, warn_s=self._election_timeout_s() / 4,
                                     clock=clock)
        self.snapshots = SnapshotStaging(self.id)
        self.cluster_version = ClusterVersionRaise(self.id, self.propose_own)
        self.reads = Reads(self.rng.randbytes(8))
        self.proposals = Proposals(self.id, config, metrics)
        self.membership = Membership(config, store, self.transport, self.rng,
                                     self._new_request_id)
        self.applier = Applier(store, self.io, self.membership, metrics, self._on_applied,
                               node_id=self.id,
                               warning_apply_s=config.warning_apply_duration_s)
        self.persister = Persister(self.id, store, self.io, metrics, self._on_persisted)
        self.store.log.set_snapshot_provider(store.sm.raft_snapshot)
        self.membership.refresh_addresses()

    def _peer_transport(self) -> Transport:
        """The production transport: gRPC streams to the peers (transport.py)."""
        return PeerTransport(
            self.id, self.config.peer_address, lambda: self.cluster_id, self, self.metrics,
            queue_messages_max=self.config.peer_queue_messages_max,
            queue_bytes_max=self.config.peer_queue_bytes_max,
            batch_bytes_max=self.config.peer_batch_bytes_max,
            incarnation=self.store.datadir.incarnation,
            peer_incarnation=sa.incarnation_lookup(self.store),
            tls=peer_channel_credentials(self.config),
        )

    def _new_request_id(self) -> int:
        """A random 63-bit id for the node's own proposals (sa.new_request_id's range)."""
        return self.rng.getrandbits(63) or 1

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name="raft-ticker"),
            loop.create_task(self._guard(self._run()), name="raft-loop"),
            loop.create_task(self._guard(self.persister.run()), name="raft-persister"),
            loop.create_task(self._guard(self.applier.run()), name="raft-applier"),
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
        self.persister.stop()   # it finishes its queue, then returns
        self.applier.stop()     # it finishes its batch, then returns
        self.proposals.notify_admission()
        for task in self._tasks:
            if task.get_name() in ("raft-ticker", "loop-lag-probe"):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()
        self.io.shutdown()
        self._stopped.set()

    async def _guard(self, work: Coroutine[object, object, None]) -> None:
        try:
            await work
        except Exception as e:
            self._fail_fatally(e)

    def _fail_fatally(self, e: BaseException) -> None:
        # A failed round or write (disk error, broken invariant) must not leave a
        # half-alive node answering clients: record it, fail everyone, let run_node exit.
        log.critical("node %d: event loop failed: %s", self.id, e, exc_info=e)
        self._fatal = e
        self._stop_on_own(unavailable("the node failed"))

    def exit_with_error(self, message: str) -> None:
        """The fatal path for what only the operator can resolve (a peer refused this
        node's replaced data directory): ONE clear log line, no traceback; every
        waiter fails, the loop stops and run_node returns 1."""
        if self._fatal is not None:
            return
        log.critical("node %d: exiting: %s", self.id, message)
        self._fatal = RuntimeError(message)
        self._stop_on_own(unavailable(message))

    def _stop_on_own(self, error: NodeError) -> None:
        self._stopping = True
        self._fail_all(error)
        self._wake.set()
        self.persister.stop()
        self.applier.stop()
        self._stopped.set()

    async def _ticker(self) -> None:
        interval_s = self.config.tick_interval_s
        clock = self.clock
        next_at = clock()
        while True:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - clock()))
            now = clock()
            if now - next_at > interval_s:
                # The process was starved (a loaded machine, a pause): drop the missed
                # ticks, as a Go ticker does, instead of firing them in a burst that
                # would time out an election before any heartbeat could be stepped.
                next_at = now
            self._ticks_due += 1
            self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            # Let the callbacks already due run first (arriving RPCs and peer
            # messages), so they join this round instead of each starting one.
            await asyncio.sleep(0)
            if self._busy():
                wait_s = self._last_round_at + BUSY_ROUND_INTERVAL_S - self.clock()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
            self._last_round_at = self.clock()
            self._wake.clear()
            if self._stopping:
                break
            self._round()

    def _busy(self) -> bool:
        """Enough work in flight that batching it beats answering each at once: write
        waiters on this node, linearizable reads waiting on this node, or (on the
        leader) entries appended but not committed."""
        if len(self.proposals.writes) >= BUSY_ENTRIES_MIN or \
                self.reads.in_flight >= BUSY_READS_MIN:
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

    def deliver_snapshot(self, msg: eraftpb.Message, staged: StagedSnapshot) -> bool:
        """Queue a received MsgSnapshot with its staged file; False (file discarded)
        when too many wait already — the leader sends it again later."""
        if not self.snapshots.stage(msg, staged):
            return False
        self.deliver([msg])
        return True

    def snapshot_chunks(self, msg: eraftpb.Message) -> Iterator[bytes]:
        return snapshot_chunks(self.store, msg, self.config.snapshot_chunk_bytes)

    def is_member(self, peer_id: int) -> bool:
        return self.membership.is_member(peer_id)

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
        self.membership.learn_address(peer_id, address)

    def learn_cluster_version_max(self, peer_id: int, version_max: int) -> None:
        """What a peer's kvraft applies (its peer stream says): cluster_version.py."""
        self.cluster_version.learn(peer_id, version_max)

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

    # ------------------------------------------------------- client-facing API
    def header(self) -> tuple[int, int, int, int]:
        r = self.raw.raft
        return self.id, r.leader_id, r.term, self.store.sm.applied_index

    @property
    def leader_id(self) -> int:
        """The leader this node knows of (0: none)."""
        return self._leader_id

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def propose(self, request_id: int, data: bytes, timeout_s: float) -> ApplyResult:
        """Replicate a command; return its ApplyResult once applied on this node."""
        if self._stopping:
            raise unavailable("the node is shutting down", retry_safe=True)
        if self.proposals.full:
            raise NodeError(grpc.StatusCode.UNAVAILABLE, "too many writes in flight",
                            retry_safe=True, overloaded=True)
        if self._admission_refusal() is not None:
            timeout_s = await self.proposals.admit(timeout_s, self._admission_refusal,
                                                   lambda: self._stopping)
        # Who the client's request was admitted for: re-checked at apply (auth/).
        p = Proposal(request_id=request_id, data=data, context=entry_context())
        self.proposals.add_write(p)
        self._wake.set()
        result = await self._await(p, timeout_s, lambda: self.proposals.forget(p))
        assert isinstance(result, ApplyResult)
        return result

    def _admission_refusal(self) -> str | None:
        return self.proposals.refusal(self.applier.backlog.bytes, self.raw.raft)

    async def propose_conf_change(self, cc: eraftpb.ConfChange, timeout_s: float
                                  ) -> eraftpb.ConfState:
        if self._stopping:
            raise unavailable("the node is shutting down", retry_safe=True)
        p = Proposal(request_id=cc.id, conf_change=cc)
        self.proposals.add_conf_change(p)
        self._wake.set()
        cs = await self._await(p, timeout_s, lambda: self.proposals.forget(p))
        assert isinstance(cs, eraftpb.ConfState)
        return cs

    async def read_index(self, timeout_s: float) -> None:
        """Return once this node has applied everything committed when the read began."""
        if self._stopping:
            raise unavailable("the node is shutting down", retry_safe=True)
        if self.reads.full:
            raise unavailable("too many reads in flight", retry_safe=True)
        w = ReadWaiter()
        self.reads.queue(w)
        self.metrics.reads_in_flight.inc()
        self.reads.in_flight += 1
        self._wake.set()
        try:
            await self._await(w, timeout_s, None)
        finally:
            self.metrics.reads_in_flight.dec()
            self.reads.in_flight -= 1

    async def transfer_leader(self, to: int, timeout_s: float) -> None:
        if not self.membership.is_member(to) or to in self.membership.learner_ids():
            raise NodeError(grpc.StatusCode.FAILED_PRECONDITION, f"{to} is not a voting member")
        deadline = self.clock() + timeout_s
        while self.raw.raft.leader_id != to:
            if self._stopping:
                raise unavailable("the node is shutting down", retry_safe=True)
            if self.raw.raft.leader_id != 0:
                self._transfers.append(to)
                self._wake.set()
            remaining = deadline - self.clock()
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

    @property
    def is_learner(self) -> bool:
        """This member is a learner in the configuration it applied."""
        return self.membership.is_learner(self.id)

    def status(self) -> NodeStatus:
        r = self.raw.raft
        role = ROLE_NAMES.get(r.state, str(r.state))
        if self.is_learner:
            role = "learner"
        return NodeStatus(
            role=role,
            commit_index=r.raft_log.committed,
            last_index=r.raft_log.last_index(),
        )

    def members(self) -> list[MemberRecord]:
        return self.membership.members()

    def member_ids(self) -> set[int]:
        return self.membership.member_ids()

    def learner_ids(self) -> set[int]:
        return self.membership.learner_ids()

    def pending_conf_change(self) -> bool:
        r = self.raw.raft
        pending = getattr(r, "pending_conf_index", 0)
        return r.state == StateRole.Leader and pending > r.raft_log.applied

    async def _await(self, w: Proposal | ReadWaiter, timeout_s: float,
                     forget: Callable[[], None] | None) -> object:
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
                forget()

    def _fail_all(self, error: NodeError) -> None:
        self.proposals.fail_all(error)
        self.reads.fail_all(error)
        for w in self._leader_waiters:
            w.resolve()
        self._leader_waiters.clear()

    # ------------------------------------------------------------------ the round
    def _keep_lease_clock(self) -> None:
        """Lease mode, at the start of a round, before anything is stepped: the lease
        is counted in ticks (thesis §6.4.1), but the ticker and the round drop ticks
        when the loop is starved or the process was paused (SIGSTOP), which would make
        a leader's lease outlive real time. A leader whose tick clock is behind the
        ticks of real time since it began leading ticks the difference now (bounded),
        so an expired lease is seen expired before any read — a forwarded one included
        — is answered. Followers keep dropping ticks: a slow follower clock only
        lengthens the promise it keeps."""
        raft_ = self.raw.raft
        now = self.clock()
        base = self._lease_clock_base
        if raft_.state is not StateRole.Leader or base is None:
            self._lease_clock_base = (raft_.tick_count, now)
            return
        base_ticks, base_at = base
        owed = int((now - base_at) / self.config.tick_interval_s) - (raft_.tick_count - base_ticks)
        if owed <= 0:
            return
        limit = self.config.election_tick + LEASE_CATCH_UP_EXTRA_TICKS
        if owed > TICKS_PER_ROUND_MAX:
            log.warning("node %d: leader's tick clock %d ticks behind (a pause?); "
                        "catching up %d before serving reads", self.id, owed,
                        min(owed, limit))
        for _ in range(min(owed, limit)):
            self.raw.tick()
        if owed > limit:
            # Any lease has ended; count the next from here.
            self._lease_clock_base = (raft_.tick_count, now)

    def _round(self) -> None:
        raw = self.raw
        if self.config.read_mode == "lease":
            self._keep_lease_clock()
        inbound, self._inbound = self._inbound, []
        # Every pending snapshot's message is in `inbound` (deliver_snapshot queues both).
        self.snapshots.begin_round()
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

        self.proposals.propose_queued(raw)
        self.reads.issue(raw, self._tick_count)

        if raw.has_ready():
            self._handle_ready()
            if raw.has_ready():
                self._wake.set()
        self.snapshots.end_round()
        self.reads.serve(self.store.sm.applied_index)
        if self.reads.needs_round():
            self._wake.set()
        self._update_gauges()

    def _on_ticks(self) -> None:
        self.reads.retry(self.raw, self._tick_count, max(2, self.config.election_tick // 4))
        self._maybe_publish_self()
        if not self._stopping:
            self.cluster_version.maybe_raise(
                is_leader=self.raw.raft.state == StateRole.Leader,
                current=self.store.sm.cluster_version, members=self.member_ids(),
                tick=self._tick_count, retry_ticks=2 * self.config.election_tick)

    def _maybe_publish_self(self) -> None:
        """Once a leader exists, make sure the replicated member record of this node
        carries its current client and peer addresses (founding members start with
        peer addresses only; an operator may restart a node with a new --listen) and
        its data directory's incarnation (membership.py). Called every tick."""
        self.membership.refresh_if_records_changed()
        if self._leader_id == 0 or self._stopping:
            return
        step = self.membership.publish(self._tick_count, self.config.election_tick)
        if isinstance(step, str):   # the cluster's log knows another data directory
            self.exit_with_error(step)
            return
        if step is None:
            return
        self._propose_in_background(step, "publish")

    def _propose_in_background(self, p: Proposal, what: str) -> None:
        """Propose a write of the node's own that no client waits for; forgotten after
        two election timeouts (its caller proposes again if it still needs it)."""
        self.proposals.add_write(p)
        self._wake.set()

        def forget() -> None:
            if not p.future.done():
                p.fail(unavailable(f"{what} timed out"))
            self.proposals.forget(p)

        asyncio.get_running_loop().call_later(self._election_timeout_s() * 2, forget)

    def propose_own(self, encode: Callable[[int], bytes], what: str) -> None:
        """Propose a command of the node's own (a cluster version raise, an alarm, an
        automatic compaction): `encode(request_id)` makes it; nobody waits for it, and
        it is forgotten after two election timeouts (the caller proposes it again if it
        is still needed). Call it on the event loop."""
        if self._stopping:
            return
        request_id = self._new_request_id()
        self._propose_in_background(Proposal(request_id=request_id, data=encode(request_id)),
                                    what)

    def _handle_ready(self) -> None:
        """Async persistence (raft-rs advance_append_async / on_persist_ready): the
        Ready's writes go to the persister and its committed entries to the apply task;
        the loop moves on — stepping acks, ticking, serving reads — while both run."""
        raw = self.raw
        rd = raw.ready()
        ss = rd.ss()
        if ss is not None:
            self._on_soft_state(ss.leader_id, ss.raft_state)
        self.reads.on_read_states(rd.take_read_states())
        self.transport.send(rd.take_messages())
        snapshot: eraftpb.Snapshot | None = rd.snapshot()   # None: no snapshot this round
        if snapshot is not None and snapshot.metadata.index == 0:
            snapshot = None
        staged = self.snapshots.take(snapshot) if snapshot is not None else None
        entries = rd.take_entries()
        hs = self.persister.hard_state_to_write(rd, entries)
        committed = rd.take_committed_entries()
        persisted_messages = rd.take_persisted_messages()
        raw.advance_append_async(rd)
        if not (entries or hs is not None or snapshot is not None) and self.persister.idle:
            # Nothing to write and nothing ahead of it: done now (a follower's
            # heartbeat and ReadIndex replies need not wait for the persister).
            raw.on_persist_ready(rd.number())
            self.transport.send(persisted_messages)
        else:
            early, held = self._split_early(persisted_messages)
            self.transport.send(early)
            # Queued even with nothing to write, so the held messages leave in Ready
            # order (an ack never overtakes the write it follows).
            self.persister.enqueue(PersistJob(rd.number(), entries, hs, snapshot, staged,
                                              held))
        if snapshot is not None:
            # Everything handed out so far is older than the snapshot, which replaces it.
            self.applier.reset(snapshot.metadata.index)
            self.membership.on_snapshot_restored(snapshot)
        # Committed entries handed out are durable here already (RaftLog only hands
        # out min(committed, persisted)), so they apply while the write runs.
        self.applier.hand_out(raw, committed)
        raw.advance_apply()
        self.proposals.notify_admission()

    def _split_early(self, messages: list[eraftpb.Message]
                     ) -> tuple[list[eraftpb.Message], list[eraftpb.Message]]:
        """(messages that may leave now, messages that wait for the queued writes).
        The durable term is RawNode's (it tracks the HardStates reported persisted)."""
        early: list[eraftpb.Message] = []
        held: list[eraftpb.Message] = []
        durable_term = self.raw.durable_term
        for m in messages:
            if m.msg_type in EARLY_MESSAGE_TYPES and m.term <= durable_term:
                early.append(m)
            else:
                held.append(m)
        return early, held

    # --------------------------------------------------- what the tasks report
    def _on_persisted(self, jobs: list[PersistJob]) -> None:
        """The persister made `jobs` durable: tell Raft, then send what waited."""
        self.raw.on_persist_ready(jobs[-1].number)
        for job in jobs:
            if job.snapshot is not None:
                self._on_snapshot_installed(job.snapshot)
            self.transport.send(job.persisted_messages)
        self._wake.set()   # the leader's own ack may commit; followers may apply

    def _on_snapshot_installed(self, snapshot: eraftpb.Snapshot) -> None:
        self.metrics.snapshots_installed.inc()
        log.info("node %d: installed snapshot at index %d term %d (term %d)",
                 self.id, snapshot.metadata.index, snapshot.metadata.term, self.raw.raft.term)
        self.membership.on_snapshot_installed(snapshot)
        for listener in self.apply_listeners:
            listener([], [])

    def _on_applied(self, entries: list[eraftpb.Entry], results: list[ApplyResult]) -> None:
        """The apply task applied a batch: complete waiters, serve reads, and look at
        compaction and the pushback."""
        self.proposals.on_applied(entries, results, self._on_conf_change_applied)
        self.reads.serve(self.store.sm.applied_index)
        if results and results[-1].revision:
            self.metrics.revision.set(results[-1].revision)
        for listener in self.apply_listeners:
            listener(entries, results)
        self.persister.maybe_compact()
        self.proposals.notify_admission()

    def _on_conf_change_applied(self, entry: eraftpb.Entry, result: ApplyResult,
                                p: Proposal | None) -> None:
        self.membership.on_conf_change_applied(entry, result, p, self.raw.raft.term)

    def _on_soft_state(self, leader_id: int, role: StateRole) -> None:
        term = self.raw.raft.term
        changed = role != self._role or leader_id != self._leader_id
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
                error = leader_lost("lost the leader")
                self.proposals.fail_in_flight(error)
                self.reads.fail_rounds(error)
            self._leader_id = leader_id
            for w in self._leader_waiters:
                w.resolve()
            self._leader_waiters.clear()
        if changed:
            for role_listener in self.role_listeners:
                role_listener(leader_id, role)

    def _update_gauges(self) -> None:
        r = self.raw.raft
        m = self.metrics
        m.term.set(r.term)
        m.commit_index.set(r.raft_log.committed)
        m.applied_index.set(self.store.sm.applied_index)
        m.cluster_version.set(self.store.sm.cluster_version)
        m.is_leader.set(1 if r.state == StateRole.Leader else 0)
        m.has_leader.set(1 if r.leader_id else 0)
        m.apply_backlog_entries.set(self.applier.backlog.entries)
        m.apply_backlog_bytes.set(self.applier.backlog.bytes)

    def _election_timeout_s(self) -> float:
        return self.config.election_tick * self.config.tick_interval_s


