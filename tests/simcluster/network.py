"""The simulated network: Raft messages between simulated nodes, through the real peer
service.

Each node's outbound transport (`SimTransport`, the node's Transport) hands what its
node sends to the network, which delivers it after a drawn delay, unless the link is
cut or the receiver is down — to the receiver's real `PeerService`: `Send` for message
batches (the cluster and member checks, then `Node.deliver`), `SendSnapshot` for
snapshots, streamed in chunks into the real snapshot staging (`SnapshotReceiver`, then
`Node.deliver_snapshot`). Faults, all drawn from the run's seeded generator: a batch is
dropped or duplicated with the seed's rates, delays are random (so batches overtake
each other) unless the seed keeps every link FIFO, and the run partitions, cuts one
way and heals links, and pauses receivers (what arrives meanwhile is handed over at
once when they resume). Delays are whole milliseconds, so deliveries often coincide — two
snapshots from two leaders in one instant is how issue 11's item 2 happened.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import peer_pb2
from kvraft.server import storage_adapter as sa
from kvraft.server.transport import REFUSAL_METADATA_KEY, REFUSAL_REPLACED

if TYPE_CHECKING:
    from kvraft.server.node import Node
    from kvraft.server.peer_service import PeerService

DELAY_QUANTUM_S = 0.001


@dataclass
class NetworkFaults:
    drop_rate: float
    dup_rate: float
    delay_min_s: float
    delay_max_s: float
    fifo: bool
    # Streaming a snapshot takes up to this much more than a batch (an image is large,
    # and its stream is not the batches' one: a later one may overtake it).
    snapshot_transfer_max_s: float = 0.3
    # Snapshot streams: their copies (dup_rate) come later, up to this much.
    dup_delay_max_s: float = 2.0


class Aborted(Exception):
    """What `context.abort` raises, as grpc.aio's does."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 metadata: tuple[tuple[str, str], ...]) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.metadata = metadata


class _Context:
    """The part of grpc.aio.ServicerContext the peer service uses."""

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        raise Aborted(code, details, tuple(trailing_metadata))


class _Stream:
    """A request stream (a plain async iterator: no async generator is left for the
    garbage collector to finalize at a time of its choosing)."""

    def __init__(self, items: list[Any]) -> None:
        self._items: Iterator[Any] = iter(items)

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None


# id -> (the live Node, its PeerService), or None while it is down.
Endpoints = Callable[[int], "tuple[Node, PeerService] | None"]
SendHook = Callable[[int, eraftpb.Message], None]


class SimNetwork:
    """Holds, always: `cut` is the set of directed links (from, to) that lose
    everything; `_link_free_at[(a, b)]` is the latest delivery time given to a batch
    on that link (FIFO seeds deliver no batch before it); every peer-service call it starts is
    in `_tasks` until done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random,
                 faults: NetworkFaults, endpoints: Endpoints,
                 trace: Callable[[str], None]) -> None:
        self.loop = loop
        self.rng = rng
        self.faults = faults
        self.endpoints = endpoints
        self.trace = trace
        self.cut: set[tuple[int, int]] = set()
        # Paused receivers (their process is not scheduled: a GC pause, a starved CPU, a
        # blocked loop): what reaches them waits, and is handed over all at once, in
        # arrival order, when they resume — as gRPC queues calls for a busy loop.
        self._paused: dict[int, list[tuple[Callable[..., None], tuple[Any, ...]]]] = {}
        self.send_hooks: list[SendHook] = []
        self.on_violation: Callable[[AssertionError], None] | None = None
        # Called with (sender, receiver) when a snapshot stream leaves (the run may
        # pause the receiver: what else reaches it meanwhile then arrives together).
        self.snapshot_hooks: list[Callable[[int, int], None]] = []
        self._link_free_at: dict[tuple[int, int], float] = {}
        self._tasks: dict[asyncio.Task[None], Node] = {}   # peer-service call -> receiver
        self.delivered = self.dropped = self.duplicated = 0
        self.snapshots_delivered = 0

    # ------------------------------------------------------------- topology
    def partition(self, side: set[int], ids: list[int]) -> None:
        self.cut = {(a, b) for a in ids for b in ids
                    if a != b and ((a in side) != (b in side))}

    def cut_one_way(self, a: int, b: int) -> None:
        self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()

    def pause(self, node_id: int, seconds: float) -> None:
        if node_id in self._paused:
            return
        self._paused[node_id] = []
        self.loop.call_later(seconds, self._resume, node_id)

    def _resume(self, node_id: int) -> None:
        for fn, args in self._paused.pop(node_id, []):
            fn(*args)

    def _held(self, to: int, fn: Callable[..., None], *args: Any) -> bool:
        """Hold an arrival for a paused receiver; False if it is not paused."""
        held = self._paused.get(to)
        if held is None:
            return False
        held.append((fn, args))
        return True

    # ------------------------------------------------------------- delivery
    def _delay(self, a: int, b: int) -> float:
        f = self.faults
        at = self.loop.time() + _quantized(self.rng.uniform(f.delay_min_s, f.delay_max_s))
        if f.fifo:
            at = max(at, self._link_free_at.get((a, b), 0.0))
            self._link_free_at[(a, b)] = at
        return at

    def _snapshot_arrival(self, a: int, b: int) -> float:
        """When a snapshot stream sent now has been received whole."""
        return self.loop.time() + _quantized(
            self.rng.uniform(self.faults.delay_min_s, self.faults.delay_max_s)
            + self.rng.uniform(0, self.faults.snapshot_transfer_max_s))

    def _spawn(self, work: Any, receiver: Node,
               on_cancel: Callable[[], None] | None = None) -> None:
        task = self.loop.create_task(work)
        self._tasks[task] = receiver

        def finished(task: asyncio.Task[None]) -> None:
            del self._tasks[task]
            if task.cancelled() and on_cancel is not None:
                on_cancel()

        task.add_done_callback(finished)

    def _sent(self, sender: int, m: eraftpb.Message) -> None:
        """The checks on what goes on the wire; a violation ends the run (reported to
        `on_violation`, not raised into the sending node, which would just fail)."""
        try:
            for hook in self.send_hooks:
                hook(sender, m)
        except AssertionError as e:
            if self.on_violation is None:
                raise
            self.on_violation(e)

    def post(self, sender: Node, to: int, messages: list[eraftpb.Message]) -> None:
        """One batch from `sender` to `to` (a transport's write of its queue)."""
        for m in messages:
            self._sent(sender.id, m)
        if (sender.id, to) in self.cut or self.rng.random() < self.faults.drop_rate:
            self.dropped += 1
            return
        batch = peer_pb2.MessageBatch(
            cluster_id=sender.cluster_id, from_id=sender.id,
            from_address=sender.config.peer_address,
            from_incarnation=sender.store.datadir.incarnation,
            to_incarnation=sa.incarnation_lookup(sender.store)(to))
        batch.messages.extend(messages)
        # On the wire as bytes: the receiver gets its own objects (Raft updates the
        # entries it appends in place), one per copy.
        wire = batch.SerializeToString()
        copies = 2 if self.rng.random() < self.faults.dup_rate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            self.loop.call_at(self._delay(sender.id, to), self._deliver_batch, sender, to,
                              wire)

    def _deliver_batch(self, sender: Node, to: int, wire: bytes) -> None:
        if self._held(to, self._deliver_batch, sender, to, wire):
            return
        endpoint = self.endpoints(to)
        if endpoint is None or (sender.id, to) in self.cut:
            self.dropped += 1
            if endpoint is None:
                # The stream to a dead process breaks: the sender hears of it.
                self.loop.call_at(self._delay(to, sender.id), _report_unreachable,
                                  sender, to)
            return
        self.delivered += 1
        batch = peer_pb2.MessageBatch.FromString(wire)
        self._spawn(self._send(sender, endpoint[1], batch), endpoint[0])

    async def _send(self, sender: Node, service: PeerService,
                    batch: peer_pb2.MessageBatch) -> None:
        try:
            await service.Send(_Stream([batch]), _Context())  # type: ignore[arg-type]
        except Aborted as e:
            self._refused(sender, service.node.id, e)

    def _refused(self, sender: Node, to: int, e: Aborted) -> None:
        if e.code == grpc.StatusCode.PERMISSION_DENIED and \
                (REFUSAL_METADATA_KEY, REFUSAL_REPLACED) in e.metadata:
            sender.exit_with_error(e.details)
        elif not sender.stopping:
            sender.report_unreachable(to)

    # ------------------------------------------------------------- snapshots
    def post_snapshot(self, sender: Node, to: int, msg: eraftpb.Message,
                      done: Callable[[bool], None]) -> None:
        """Stream the snapshot `msg` names to `to`; `done(accepted)` reports back."""
        self._sent(sender.id, msg)
        try:
            # The image is a point-in-time view: read now, as the sender would stream it.
            data = list(sender.snapshot_chunks(msg))
        except Exception as e:
            self.trace(f"node {sender.id}: snapshot to {to} failed at the source: {e}")
            done(False)
            return
        first = peer_pb2.SnapshotChunk(
            cluster_id=sender.cluster_id, from_id=sender.id, message=msg,
            from_incarnation=sender.store.datadir.incarnation,
            to_incarnation=sa.incarnation_lookup(sender.store)(to))
        chunks = [first] + [peer_pb2.SnapshotChunk(cluster_id=sender.cluster_id,
                                                   from_id=sender.id, data=d) for d in data]
        chunks.append(peer_pb2.SnapshotChunk(cluster_id=sender.cluster_id,
                                             from_id=sender.id, last=True))
        wire = [c.SerializeToString() for c in chunks]
        for snapshot_hook in self.snapshot_hooks:
            snapshot_hook(sender.id, to)
        if (sender.id, to) in self.cut or self.rng.random() < self.faults.drop_rate:
            self.dropped += 1
            self.loop.call_at(self._delay(sender.id, to), done, False)
            return
        self.loop.call_at(self._snapshot_arrival(sender.id, to), self._deliver_snapshot,
                          sender, to, wire, done)
        if self.rng.random() < self.faults.dup_rate:
            # A copy of the stream arrives later (a retry the sender did not know of).
            self.duplicated += 1
            at = self._snapshot_arrival(sender.id, to) + _quantized(
                self.rng.uniform(0, self.faults.dup_delay_max_s))
            self.loop.call_at(at, self._deliver_snapshot, sender, to, wire, None)

    def _deliver_snapshot(self, sender: Node, to: int, wire: list[bytes],
                          done: Callable[[bool], None] | None) -> None:
        if self._held(to, self._deliver_snapshot, sender, to, wire, done):
            return
        endpoint = self.endpoints(to)
        if endpoint is None or (sender.id, to) in self.cut:
            self.dropped += 1
            if done is not None:
                self.loop.call_at(self._delay(to, sender.id), done, False)
            return
        chunks = [peer_pb2.SnapshotChunk.FromString(c) for c in wire]

        def broken() -> None:   # the receiver crashed: the sender's call fails
            if done is not None:
                self.loop.call_at(self._delay(to, sender.id), done, False)

        self._spawn(self._stream_snapshot(sender, endpoint[1], chunks, done), endpoint[0],
                    broken)

    async def _stream_snapshot(self, sender: Node, service: PeerService,
                               chunks: list[peer_pb2.SnapshotChunk],
                               done: Callable[[bool], None] | None) -> None:
        accepted = False
        meta = chunks[0].message.snapshot.metadata
        try:
            reply = await service.SendSnapshot(_Stream(chunks), _Context())  # type: ignore[arg-type]
            accepted = reply.accepted
            self.snapshots_delivered += 1
            self.trace(f"node {sender.id} -> {service.node.id}: snapshot at {meta.index} "
                       f"term {meta.term} {'staged' if accepted else 'refused'}"
                       f"{'' if done else ' (a duplicate)'}")
        except Aborted as e:
            self._refused(sender, service.node.id, e)
        if done is not None:
            self.loop.call_at(self._delay(service.node.id, sender.id), done, accepted)

    def cancel_tasks_of(self, node: Node) -> None:
        """A crash: the peer-service calls running on `node` die with it."""
        for task, receiver in list(self._tasks.items()):
            if receiver is node:
                task.cancel()


def _quantized(seconds: float) -> float:
    return max(1, round(seconds / DELAY_QUANTUM_S)) * DELAY_QUANTUM_S


def _report_unreachable(sender: Node, to: int) -> None:
    if not sender.stopping:
        sender.report_unreachable(to)


class SimTransport:
    """A node's Transport onto the simulated network (transport.py's PeerTransport
    semantics: one snapshot at a time per peer; no address, no delivery)."""

    def __init__(self, network: SimNetwork, node: Node) -> None:
        self.network = network
        self.node = node
        self._addresses: dict[int, str] = {}
        self._snapshot_to: set[int] = set()   # peers a snapshot is being sent to
        self.closed = False

    def set_addresses(self, addresses: dict[int, str]) -> None:
        self._addresses = {i: a for i, a in addresses.items() if i != self.node.id and a}

    def address_of(self, peer_id: int) -> str | None:
        return self._addresses.get(peer_id)

    def send(self, messages: list[eraftpb.Message]) -> None:
        if self.closed:
            return
        by_peer: dict[int, list[eraftpb.Message]] = {}
        for msg in messages:
            if msg.to not in self._addresses:
                if msg.msg_type == eraftpb.MsgSnapshot:
                    self.node.report_snapshot(msg.to, False)
                else:
                    self.node.report_unreachable(msg.to)
                continue
            if msg.msg_type == eraftpb.MsgSnapshot:
                self._send_snapshot(msg)
            else:
                by_peer.setdefault(msg.to, []).append(msg)
        for to, batch in by_peer.items():
            self.network.post(self.node, to, batch)

    def _send_snapshot(self, msg: eraftpb.Message) -> None:
        to = msg.to
        if to in self._snapshot_to:
            self.node.report_snapshot(to, False)   # one at a time; Raft asks again
            return
        self._snapshot_to.add(to)

        def done(accepted: bool) -> None:
            self._snapshot_to.discard(to)
            if not self.closed:
                self.node.report_snapshot(to, accepted)

        self.network.post_snapshot(self.node, to, msg, done)

    async def close(self) -> None:
        self.closed = True
