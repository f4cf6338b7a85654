"""Your own replicated state machine on kvraft's Raft core, log store and peer transport.

`ReplicatedNode` runs one member of a fixed group of nodes: it drives a
`kvraft.raft.RawNode` over the LevelDB Raft log (`kvraft.storage.LevelDBStorage`),
talks to the other members through the gRPC peer transport (`PeerTransport` outbound,
the `Peer` service inbound), and hands every committed command to *your* `apply`
function, in log order, on every member:

    counter = 0

    def apply(index: int, data: bytes) -> int:
        global counter
        counter += int(data)
        return counter

    config = ReplicaConfig(node_id=1, data_dir="data-1",
                           peers={1: "127.0.0.1:7001", 2: "127.0.0.1:7002",
                                  3: "127.0.0.1:7003"})
    async with ReplicatedNode(config, apply) as node:
        total = await node.propose(b"5")      # apply's result, once applied here
        await node.read_barrier()             # then read `counter` linearizably

What it does not do, to stay small: membership changes (the group is the founding
`peers`, for ever), log compaction and snapshots (the log grows; on restart the whole
log is replayed into `apply` unless `ReplicaConfig.applied_index` says your state
machine already holds a prefix of it). The `kvraft serve` node (`kvraft.server.node`)
is the full runtime that does all of these for the key-value store.

Rules `apply` must follow: it is deterministic (every member computes the same state
from the same commands), it runs on the event loop (keep it short), and it may be
called again for an index it already saw before a restart, unless `applied_index` is
kept durable alongside the state.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from kvraft import raft
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import peer_pb2_grpc
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage

from .config import ServeError, cluster_id_for, parse_address
from .metrics import NodeMetrics
from .parse_guard import ParseGuard
from .peer_service import PeerService
from .transport import CHANNEL_OPTIONS, PeerTransport

log = logging.getLogger("kvraft.server.replicated")

ApplyFn = Callable[[int, bytes], Any]
"""`apply(index, data) -> result`: called once per committed command, in log order."""

PENDING_PROPOSALS_MAX = 10_000
PENDING_READS_MAX = 10_000
INBOUND_MESSAGES_MAX = 50_000
PEER_QUEUE_MESSAGES_MAX = 4096
PEER_QUEUE_BYTES_MAX = 64 << 20
PEER_BATCH_BYTES_MAX = 16 << 20
MAX_SIZE_PER_MSG_BYTES = 1 << 20
PEER_SERVER_GRACE_S = 0.2
# Proposals are identified by their entry's context: this node's random prefix, then a
# counter, so ids never repeat across members or restarts.
CONTEXT_PREFIX_BYTES = 8


class ReplicaError(Exception):
    """A proposal or read barrier failed. str(e) is one line.

    `retry_safe` is True when the command was certainly not proposed (no leader known,
    too much in flight, the node stopping before it proposed), so sending it again
    cannot apply it twice; otherwise its outcome is unknown."""

    def __init__(self, message: str, *, retry_safe: bool = False) -> None:
        super().__init__(message)
        self.retry_safe = retry_safe


@dataclass
class ReplicaConfig:
    """One member of a fixed group. Every member is given the same `peers`."""

    node_id: int
    """This member's id: positive, a key of `peers`."""
    data_dir: str | Path
    """Where the Raft log lives (a kvraft data directory: META, LOCK, db/)."""
    peers: dict[int, str]
    """Every member's peer address HOST:PORT, this one's included. The ids are fixed
    when the data directory is created; the addresses may change between restarts."""
    listen: str | None = None
    """Where this member's peer service listens; default `peers[node_id]`."""
    tick_interval_s: float = 0.1
    """One Raft tick. Thesis §3.4: the election timeout (election_tick ticks, randomized
    up to twice that) must be well above a round trip and a disk write."""
    election_tick: int = 10
    heartbeat_tick: int = 2
    applied_index: int = 0
    """The index up to which your state machine already holds the log's effect (kept
    durable by you); 0 replays the whole log into `apply` on start."""
    pending_proposals_max: int = field(default=PENDING_PROPOSALS_MAX)
    """Proposals waiting to be applied on this node, at most; more fail retry-safe."""

    def validate(self) -> None:
        """Raise ServeError (one line) on a bad value."""
        if not isinstance(self.node_id, int) or self.node_id <= 0:
            raise ServeError(f"node id must be a positive integer, got {self.node_id!r}")
        if self.node_id not in self.peers:
            raise ServeError(f"peers does not list this node's id {self.node_id}")
        for member_id, address in self.peers.items():
            if not isinstance(member_id, int) or member_id <= 0:
                raise ServeError(f"peer ids must be positive integers, got {member_id!r}")
            parse_address(address, f"peer address of node {member_id}")
        parse_address(self.listen_address, "listen address")
        if self.tick_interval_s <= 0 or self.heartbeat_tick <= 0:
            raise ServeError("tick interval and heartbeat ticks must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ServeError("election ticks must exceed heartbeat ticks")
        if self.applied_index < 0 or self.pending_proposals_max <= 0:
            raise ServeError("applied_index must be >= 0 and pending_proposals_max > 0")

    @property
    def listen_address(self) -> str:
        return self.listen or self.peers[self.node_id]


@dataclass(eq=False)
class _Waiter:
    """A proposal or a read barrier: ends once, with a result or a ReplicaError."""

    future: asyncio.Future[Any]
    data: bytes = b""
    proposed: bool = False        # handed to Raft (its outcome is unknown once true)
    read_index: int = -1          # read barrier: the ReadIndex, -1 until Raft answers

    def resolve(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, error: ReplicaError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()   # a caller that gave up must not trigger a warning


class ReplicatedNode:
    """One member running your state machine; see the module documentation.

    Use it from one asyncio event loop: `await start()` (or `async with`), then
    `propose` and `read_barrier` from any task of that loop, and `await stop()`."""

    def __init__(self, config: ReplicaConfig, apply: ApplyFn) -> None:
        config.validate()
        self.config = config
        self._apply_fn = apply
        self._datadir: DataDir | None = None
        self._log: LevelDBStorage | None = None
        self._raw: raft.RawNode | None = None
        self._transport: PeerTransport | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._cluster_id = 0
        self._member_ids = frozenset(config.peers)
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        # Invariant: applied_index <= the Raft commit index; it only grows.
        self._applied_index = config.applied_index
        self._ticks_due = 0
        self._tick_count = 0
        # Messages from peers, stepped at the start of the next round (bounded).
        self._inbound: list[eraftpb.Message] = []
        self._unreachable: set[int] = set()
        self._context_prefix = secrets.token_bytes(CONTEXT_PREFIX_BYTES)
        self._next_context = itertools.count(1)
        # Proposals not yet handed to Raft (a list) and every live proposal by context.
        self._queued: list[tuple[bytes, _Waiter]] = []
        self._proposals: dict[bytes, _Waiter] = {}
        # Read barriers waiting for their ReadIndex round (one round per batch) and
        # rounds issued but not yet served: context -> (waiters, tick it was issued).
        self._reads_queued: list[_Waiter] = []
        self._read_rounds: dict[bytes, tuple[list[_Waiter], int]] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the data directory, listen for peers and start the Raft loop.

        Raises ServeError (one line) when the directory or the address is unusable."""
        config = self.config
        assert self._raw is None, "start() was called already"
        self._open_store()
        assert self._log is not None
        raft_config = raft.Config(
            id=config.node_id, election_tick=config.election_tick,
            heartbeat_tick=config.heartbeat_tick, applied=config.applied_index,
            max_size_per_msg=MAX_SIZE_PER_MSG_BYTES,
            # Thesis §9.6 and §6.2: a returning partitioned member does not depose a
            # healthy leader, and a leader that lost its majority steps down.
            pre_vote=True, check_quorum=True,
        )
        self._raw = raft.RawNode(raft_config, self._log)
        endpoint = _PeerEndpoint(self)
        metrics = NodeMetrics()   # not served: the embedding application has its own
        self._transport = PeerTransport(
            config.node_id, config.peers[config.node_id], lambda: self._cluster_id,
            endpoint, metrics,
            queue_messages_max=PEER_QUEUE_MESSAGES_MAX, queue_bytes_max=PEER_QUEUE_BYTES_MAX,
            batch_bytes_max=PEER_BATCH_BYTES_MAX,
        )
        self._transport.set_addresses(dict(config.peers))
        server = grpc.aio.server(
            options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
            interceptors=[ParseGuard("peer", metrics, f"node {config.node_id}")])
        # The peer service asks the node it serves a few questions (cluster, members)
        # and hands it what arrives: _PeerEndpoint answers them for this node.
        peer_pb2_grpc.add_PeerServicer_to_server(PeerService(endpoint), server)  # type: ignore[arg-type]
        try:
            port = server.add_insecure_port(config.listen_address)
        except RuntimeError as e:
            port = 0
            log.debug("bind failed: %s", e)
        if port == 0:
            self._close_store()
            raise ServeError(f"cannot listen on {config.listen_address}: "
                             "address unusable or in use")
        await server.start()
        self._server = server
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ticker(), name="replica-ticker"),
                       loop.create_task(self._run(), name="replica-loop")]
        log.info("node %d: replicating with %s (cluster %016x), peers on %s",
                 config.node_id, sorted(config.peers), self._cluster_id,
                 config.listen_address)

    def _open_store(self) -> None:
        config = self.config
        try:
            datadir = DataDir.open(config.data_dir, config.node_id)
        except DataDirError as e:
            raise ServeError(str(e)) from None
        try:
            log_store = LevelDBStorage(datadir)
            voters = sorted(config.peers)
            if not log_store.initial_state().initialized():
                # A fresh directory: the founding configuration, as MemStorage's
                # initialize_with_conf_state (log empty at index 0). Every member
                # writes the same, so their logs agree from index 1 on.
                datadir.set_cluster_id(cluster_id_for(config.peers))
                log_store.initialize(eraftpb.ConfState(voters=voters))
            else:
                held = sorted(log_store.initial_state().conf_state.voters)
                if held != voters:
                    raise ServeError(f"data directory {datadir.path} holds members {held}, "
                                     f"not {voters}")
            if config.applied_index > log_store.last_index():
                raise ServeError(f"applied_index {config.applied_index} is beyond the log "
                                 f"in {datadir.path} (last index {log_store.last_index()})")
        except DataDirError as e:
            datadir.close()
            raise ServeError(str(e)) from None
        except BaseException:
            datadir.close()
            raise
        self._datadir, self._log, self._cluster_id = datadir, log_store, datadir.cluster_id

    def _close_store(self) -> None:
        if self._datadir is not None:
            self._datadir.close()

    async def stop(self) -> None:
        """Fail what is still waiting, stop the loop, the transport and the peer
        service, close the data directory. Idempotent."""
        if not self._stopping:
            self._stopping = True
            self._fail_all("the node is stopping")
        self._wake.set()
        # The loop is not cancelled: it ends after its current round, so a LevelDB
        # write running on a thread completes before the database is closed.
        for task in self._tasks:
            if task.get_name() == "replica-ticker":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
        if self._server is not None:
            await self._server.stop(PEER_SERVER_GRACE_S)
            self._server = None
        self._close_store()

    async def __aenter__(self) -> ReplicatedNode:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the API
    @property
    def id(self) -> int:
        return self.config.node_id

    @property
    def leader_id(self) -> int:
        """The leader this member knows of; 0 when none."""
        return self._raw.raft.leader_id if self._raw is not None else 0

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.id

    @property
    def applied_index(self) -> int:
        """The index of the last entry handed to `apply` (or skipped as empty)."""
        return self._applied_index

    @property
    def fatal(self) -> BaseException | None:
        """What stopped the node on its own (an exception from `apply`, a disk error)."""
        return self._fatal

    async def propose(self, data: bytes, timeout_s: float = 5.0) -> Any:
        """Replicate `data` and return what `apply` returned for it on this member.

        Any member accepts proposals (a follower forwards them to the leader). Raises
        ReplicaError: retry-safe when it was not proposed; otherwise (deadline passed,
        node stopped) its outcome is unknown — find out by reading before retrying."""
        if not isinstance(data, bytes | bytearray) or not data:
            raise ValueError("data must be non-empty bytes")
        if self._stopping or self._raw is None:
            raise ReplicaError("the node is not running", retry_safe=True)
        if len(self._proposals) >= self.config.pending_proposals_max:
            raise ReplicaError("too many proposals in flight", retry_safe=True)
        context = self._context_prefix + next(self._next_context).to_bytes(8, "big")
        w = _Waiter(asyncio.get_running_loop().create_future(), data=bytes(data))
        self._proposals[context] = w
        self._queued.append((context, w))
        self._wake.set()
        try:
            return await self._await(w, timeout_s, "the proposal was not applied")
        finally:
            self._proposals.pop(context, None)

    async def read_barrier(self, timeout_s: float = 5.0) -> None:
        """Return once this member has applied every command committed before the call
        (Raft ReadIndex, thesis §6.4): state read afterwards is linearizable."""
        if self._stopping or self._raw is None:
            raise ReplicaError("the node is not running", retry_safe=True)
        if len(self._reads_queued) >= PENDING_READS_MAX:
            raise ReplicaError("too many read barriers in flight", retry_safe=True)
        w = _Waiter(asyncio.get_running_loop().create_future())
        self._reads_queued.append(w)
        self._wake.set()
        await self._await(w, timeout_s, "no leader confirmed the read")

    async def _await(self, w: _Waiter, timeout_s: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(w.future), timeout_s)
        except TimeoutError:
            error = ReplicaError(f"{what} within {timeout_s}s", retry_safe=not w.proposed)
            w.fail(error)
            raise error from None

    # ----------------------------------------------- what the peer transport reports
    def _deliver(self, messages: list[eraftpb.Message]) -> None:
        if len(self._inbound) + len(messages) > INBOUND_MESSAGES_MAX:
            return   # overloaded: drop; Raft retransmits (thesis §3.5)
        self._inbound.extend(messages)
        self._wake.set()

    def _report_unreachable(self, peer_id: int) -> None:
        self._unreachable.add(peer_id)
        self._wake.set()

    # ------------------------------------------------------------------ the loop
    async def _ticker(self) -> None:
        interval_s = self.config.tick_interval_s
        next_at = time.monotonic()
        while True:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            if now - next_at > interval_s:
                next_at = now   # starved: drop the missed ticks instead of a burst
            self._ticks_due += 1
            self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                if not self._stopping:
                    await self._round()
        except Exception as e:
            log.critical("node %d: replica loop failed: %s", self.id, e, exc_info=e)
            self._fatal = e
            self._stopping = True
            self._fail_all(f"the node failed: {e}")

    async def _round(self) -> None:
        """step -> tick -> propose -> ready -> persist -> send -> apply -> advance."""
        raw = self._raw
        assert raw is not None
        inbound, self._inbound = self._inbound, []
        for msg in inbound:
            try:
                raw.step(msg)
            except raft.RaftError as e:   # a response from a peer no longer tracked
                log.debug("node %d: dropped message from %d: %s", self.id, msg.from_, e)
        for peer_id in self._unreachable:
            raw.report_unreachable(peer_id)
        self._unreachable.clear()

        ticks, self._ticks_due = self._ticks_due, 0
        for _ in range(min(ticks, 2)):
            raw.tick()
        if ticks:
            self._tick_count += ticks
            self._retry_read_rounds()

        queued, self._queued = self._queued, []
        for context, w in queued:
            if w.future.done():
                continue   # its caller gave up before it was proposed
            try:
                raw.propose(context, w.data)
                w.proposed = True
            except raft.ProposalDropped:
                w.fail(ReplicaError("no leader to take the proposal", retry_safe=True))

        if self._reads_queued:
            # One ReadIndex round per batch of read barriers (thesis §6.4).
            waiters, self._reads_queued = self._reads_queued, []
            context = self._context_prefix + next(self._next_context).to_bytes(8, "big")
            self._read_rounds[context] = (waiters, self._tick_count)
            raw.read_index(context)

        while raw.has_ready():
            await self._handle_ready(raw)
        self._serve_reads()

    async def _handle_ready(self, raw: raft.RawNode) -> None:
        transport, log_store = self._transport, self._log
        assert transport is not None and log_store is not None
        rd = raw.ready()
        for rs in rd.take_read_states():
            waiters = self._read_rounds.get(rs.request_ctx)
            if waiters is not None:
                for w in waiters[0]:
                    w.read_index = rs.index
        # Thesis §10.2.1: a leader's appends may leave before its own write is durable.
        transport.send(rd.take_messages())
        if rd.snapshot().metadata.index > 0:
            # Never compacted, so no member ever needs (or sends) a snapshot.
            raise RuntimeError("received a snapshot; ReplicatedNode does not install them")
        entries, hs = rd.take_entries(), rd.hs()
        if entries or hs is not None:
            # One synced LevelDB write per Ready, off the event loop.
            await asyncio.to_thread(log_store.persist, entries, hs)
        # Votes and append acknowledgements only once durable (thesis §3.8).
        transport.send(rd.take_persisted_messages())
        self._apply(rd.take_committed_entries())
        light = raw.advance(rd)
        # The new commit index is not written: Raft learns it again from the leader
        # after a restart, and entries are applied only once committed anyway.
        transport.send(light.take_messages())
        self._apply(light.take_committed_entries())
        raw.advance_apply()

    def _apply(self, entries: list[eraftpb.Entry]) -> None:
        for entry in entries:
            assert entry.index == self._applied_index + 1, (
                f"apply out of order: {entry.index} after {self._applied_index}")
            if entry.entry_type != eraftpb.EntryNormal:
                raise RuntimeError(f"unexpected conf change entry at index {entry.index}")
            result = None
            if entry.data:   # a new leader's first entry is empty: nothing to apply
                result = self._apply_fn(entry.index, entry.data)
            self._applied_index = entry.index
            w = self._proposals.get(entry.context)
            if w is not None:
                w.resolve(result)

    def _serve_reads(self) -> None:
        for context, (waiters, _) in list(self._read_rounds.items()):
            index = waiters[0].read_index if waiters else self._applied_index
            if 0 <= index <= self._applied_index:
                for w in waiters:
                    w.resolve(None)
                del self._read_rounds[context]

    def _retry_read_rounds(self) -> None:
        """A ReadIndex is dropped while there is no leader, or before the leader has
        committed an entry of its term (thesis §6.4): ask again every quarter of an
        election timeout until it is answered or every waiter gave up."""
        raw = self._raw
        assert raw is not None
        retry_ticks = max(2, self.config.election_tick // 4)
        for context, (waiters, issued) in list(self._read_rounds.items()):
            live = [w for w in waiters if not w.future.done()]
            if not live:
                del self._read_rounds[context]
            elif live[0].read_index < 0 and self._tick_count - issued >= retry_ticks:
                self._read_rounds[context] = (live, self._tick_count)
                raw.read_index(context)

    def _fail_all(self, message: str) -> None:
        for _, w in self._queued:
            w.fail(ReplicaError(message, retry_safe=True))
        for w in self._proposals.values():
            w.fail(ReplicaError(message, retry_safe=not w.proposed))
        for w in self._reads_queued:
            w.fail(ReplicaError(message, retry_safe=True))
        for waiters, _ in self._read_rounds.values():
            for w in waiters:
                w.fail(ReplicaError(message, retry_safe=True))
        self._queued.clear()
        self._reads_queued.clear()
        self._read_rounds.clear()


class _PeerEndpoint:
    """What the peer service and the transport need from a node, for a ReplicatedNode:
    the fixed member set and cluster id, and a place to deliver what arrives."""

    def __init__(self, node: ReplicatedNode) -> None:
        self._node = node
        self.id = node.config.node_id

    # --- asked by PeerService
    @property
    def stopping(self) -> bool:
        return self._node._stopping

    @property
    def cluster_id(self) -> int:
        return self._node._cluster_id

    def accept_cluster(self, cluster_id: int) -> bool:
        return cluster_id == self._node._cluster_id

    def is_member(self, peer_id: int) -> bool:
        return peer_id in self._node._member_ids

    def member_ids(self) -> set[int]:
        return set(self._node._member_ids)

    def learn_address(self, peer_id: int, address: str) -> None:
        """The members and their addresses are fixed by the configuration."""

    def learn_cluster_version_max(self, peer_id: int, version_max: int) -> None:
        """An application's own state machine has no cluster version."""

    @property
    def incarnation(self) -> int:
        assert self._node._datadir is not None
        return self._node._datadir.incarnation

    def replaced_member(self, member_id: int, incarnation: int) -> str | None:
        """Members are fixed and keep no replicated records: nothing to compare."""
        return None

    def snapshot_receiver(self, snapshot: eraftpb.Snapshot) -> object:
        raise RuntimeError("ReplicatedNode does not install snapshots")

    def exit_with_error(self, message: str) -> None:
        self._node._fail_all(message)

    def deliver(self, messages: list[eraftpb.Message]) -> None:
        self._node._deliver(messages)

    def deliver_snapshot(self, msg: eraftpb.Message, staged: object) -> None:
        raise RuntimeError("ReplicatedNode does not install snapshots")

    # --- reported by PeerTransport
    def report_unreachable(self, peer_id: int) -> None:
        self._node._report_unreachable(peer_id)

    def report_snapshot(self, peer_id: int, ok: bool) -> None:
        """Never sent: the log is never compacted."""

    def snapshot_chunks(self, msg: eraftpb.Message) -> Iterator[bytes]:
        raise RuntimeError("ReplicatedNode does not send snapshots")


__all__ = ["ApplyFn", "ReplicaConfig", "ReplicaError", "ReplicatedNode"]
