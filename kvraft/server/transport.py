"""The peer transport: Raft messages between nodes over gRPC (protos/peer.proto).

Outbound, each peer has one sender task that owns one long-lived client stream; every
message queued while the previous batch was being written goes into the next batch, so
a busy round costs one write per peer, not one per message. A message is encoded once,
when it is queued, and a batch is those encodings joined behind its header (the wire
form of a `MessageBatch`, written through a stream whose serializer passes bytes on):
no message, nor its entries, is copied into a batch object and encoded again. Queues
are bounded: when a
peer is slow or gone the oldest messages are dropped and Raft retransmits (thesis §3.5:
AppendEntries is idempotent and retried). A broken stream is reported to Raft with
`report_unreachable` (the leader falls back to probing) and re-opened after a capped
exponential backoff.

Snapshots travel on their own stream (`SendSnapshot`), one at a time per peer, so a
large transfer never delays heartbeats.

Over mutual TLS (tls.py) each channel is made with this member's peer certificate as
the files are when it is made; a sender whose stream failed makes a new channel if
the files changed since, so a rotation reaches the next connection without a restart.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

import grpc

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import peer_pb2, peer_pb2_grpc
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MAX
from kvraft.wire import GRPC_MESSAGE_BYTES_MAX

from .metrics import NodeMetrics
from .tls import PeerChannelCredentials

log = logging.getLogger("kvraft.server.transport")

# Trailing metadata of the PERMISSION_DENIED with which a peer refuses a member whose
# data directory was replaced (peer_service.py): the refused member exits with the
# status details, since no retry can succeed until the operator removes and re-adds it.
REFUSAL_METADATA_KEY = "kvraft-refusal"
REFUSAL_REPLACED = "replaced-data-directory"

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
# The largest peer message, both ways (issue 14: explicit limits). What fits in it: a
# MessageBatch is filled while under --peer-batch-bytes-max (16 MiB), so it ends with
# at most one more message; Raft bounds a MsgAppend's entries at MAX_SIZE_PER_MSG_BYTES
# (1 MiB) but always carries one entry, which may be as large as the largest proposal
# (a request is one entry); a SnapshotChunk carries snapshot_chunk_bytes (1 MiB) of
# data. tests/server/test_bad_input_units.py checks the defaults fit with room to spare.
PEER_MESSAGE_BYTES_MAX = GRPC_MESSAGE_BYTES_MAX
# Request headers on either port (a call's metadata; clients send a token and a few
# short keys). gRPC's default is a soft 8 KiB limit under which a call is refused at
# random between 8 and 16 KiB; one limit, both soft and hard, answers every call over
# it alike: RESOURCE_EXHAUSTED "received metadata size exceeds hard limit".
METADATA_BYTES_MAX = 16 << 10
METADATA_OPTIONS = [
    ("grpc.max_metadata_size", METADATA_BYTES_MAX),
    ("grpc.absolute_max_metadata_size", METADATA_BYTES_MAX),
]
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", PEER_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", PEER_MESSAGE_BYTES_MAX),
    *METADATA_OPTIONS,
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a peer restarts; our own backoff caps the rate.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX_S * 1000)),
]
SEND_METHOD = "/kvraft.peer.Peer/Send"
# The key of MessageBatch.messages (field 3, length-delimited) on the wire.
_MESSAGES_KEY = bytes([(peer_pb2.MessageBatch.MESSAGES_FIELD_NUMBER << 3) | 2])


class TransportEvents(Protocol):
    """What the transport reports back to the node (all called on the event loop)."""

    def report_unreachable(self, peer_id: int) -> None: ...
    def report_snapshot(self, peer_id: int, ok: bool) -> None: ...
    def snapshot_chunks(self, msg: eraftpb.Message) -> Iterator[bytes]: ...
    def exit_with_error(self, message: str) -> None: ...


class Transport(Protocol):
    """What a node needs of its outbound transport (PeerTransport in production; the
    whole-node simulation, tests/simcluster, passes its simulated network). Messages
    may be lost, delayed, duplicated or reordered: Raft tolerates all of it (thesis
    §3.5); a MsgSnapshot is streamed and its outcome reported with report_snapshot."""

    def send(self, messages: list[eraftpb.Message]) -> None: ...
    def set_addresses(self, addresses: dict[int, str]) -> None: ...
    def address_of(self, peer_id: int) -> str | None: ...
    async def close(self) -> None: ...


class _PeerSender:
    """One peer's bounded queue and the task that streams it."""

    def __init__(self, owner: PeerTransport, peer_id: int, address: str) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.address = address
        # (a message's field in a MessageBatch: key, length, encoding), oldest first;
        # queued_bytes is the sum of their lengths.
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        # The batch header's fields and their encoding, made again when one changes.
        self._header: tuple[tuple[int, ...], bytes] = ((), b"")
        self.has_data = asyncio.Event()
        self.reachable = True
        # Why the peer was last logged unreachable ("" while reachable): a stream that
        # keeps failing is logged again only when the cause changes, so that an operator
        # sees a refused certificate that follows a refused connection (a member that
        # was still starting), without a line per retry.
        self.unreachable_cause = ""
        self.channel: grpc.aio.Channel | None = None
        self.channel_files: object = None  # the TLS files' signature `channel` was made at
        self.snapshot_task: asyncio.Task[None] | None = None
        self.queue_depth = owner.metrics.peer_queue_depth.labels(str(peer_id))
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"peer-sender-{peer_id}"
        )

    def enqueue(self, msg: eraftpb.Message) -> None:
        # Encoded now: later changes to `msg` do not reach the peer (Raft hands its
        # messages over), and the batch needs no copy of it.
        encoded = msg.SerializeToString()
        field = _MESSAGES_KEY + _varint(len(encoded)) + encoded
        size = len(field)
        while self.queue and (len(self.queue) >= self.owner.queue_messages_max or
                              self.queued_bytes + size > self.owner.queue_bytes_max):
            self.queued_bytes -= len(self.queue.popleft())
            self.owner.metrics.peer_dropped.labels(str(self.peer_id)).inc()
        self.queue.append(field)
        self.queued_bytes += size
        self.has_data.set()

    def _channel(self) -> grpc.aio.Channel:
        if self.channel is None:
            tls = self.owner.tls
            if tls is None:
                self.channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            else:
                credentials, self.channel_files = tls.current()
                self.channel = grpc.aio.secure_channel(self.address, credentials,
                                                       options=CHANNEL_OPTIONS)
        return self.channel

    async def _renew_channel_if_rotated(self) -> None:
        """After a failed stream: drop the channel if the TLS files changed since it was
        made, so the next attempt connects with the new certificates."""
        tls = self.owner.tls
        if tls is None or self.channel is None or not tls.changed_since(
                self.channel_files):  # type: ignore[arg-type]
            return
        channel, self.channel = self.channel, None
        log.info("node %d: peer %d: TLS files changed, reconnecting with them",
                 self.owner.node_id, self.peer_id)
        with contextlib.suppress(Exception):
            await channel.close()

    def _batch_header(self) -> bytes:
        """The encoded MessageBatch without its messages (the same for every batch
        until the cluster id or an incarnation is learned)."""
        owner = self.owner
        fields = (owner.cluster_id(), owner.incarnation, owner.peer_incarnation(self.peer_id))
        if fields != self._header[0]:
            self._header = (fields, peer_pb2.MessageBatch(
                cluster_id=fields[0], from_id=owner.node_id, from_address=owner.own_address,
                from_incarnation=fields[1], to_incarnation=fields[2],
                from_cluster_version_max=CLUSTER_VERSION_MAX,
            ).SerializeToString())
        return self._header[1]

    def _take_batch(self) -> bytes:
        """The next batch's wire form: the header, then queued messages up to
        batch_bytes_max (at least one). Protobuf reads a repeated field's elements
        wherever they stand, so the concatenation is the MessageBatch."""
        parts = [self._batch_header()]
        size = 0
        queue = self.queue
        while queue and (size == 0 or size < self.owner.batch_bytes_max):
            field = queue.popleft()
            size += len(field)
            parts.append(field)
        self.queued_bytes -= size
        self.queue_depth.set(len(queue))
        return b"".join(parts)

    async def _run(self) -> None:
        backoff_s = BACKOFF_MIN_S
        while True:
            await self.has_data.wait()
            call: grpc.aio.StreamUnaryCall[bytes, peer_pb2.SendSummary] | None = None
            try:
                # Peer.Send with the batches already encoded (_take_batch).
                call = self._channel().stream_unary(
                    SEND_METHOD, request_serializer=_as_is,
                    response_deserializer=peer_pb2.SendSummary.FromString)()
                while True:
                    if not self.queue:
                        self.has_data.clear()
                        await self.has_data.wait()
                    await call.write(self._take_batch())
                    if not self.reachable:
                        self.reachable = True
                        self.unreachable_cause = ""
                        log.info("node %d: peer %d recovered at %s",
                                 self.owner.node_id, self.peer_id, self.address)
                    backoff_s = BACKOFF_MIN_S
            except asyncio.CancelledError:
                if call is not None:
                    call.cancel()
                raise
            except Exception as e:  # any failure of the stream: report, back off, retry
                status = await _call_status(call, e)
                refusal = _replaced_refusal(status)
                if refusal is not None:
                    self.owner.events.exit_with_error(refusal)
                    return
                if call is not None:
                    call.cancel()
                self.queue.clear()
                self.queued_bytes = 0
                self.queue_depth.set(0)
                self.owner.metrics.peer_unreachable.labels(str(self.peer_id)).inc()
                self.owner.events.report_unreachable(self.peer_id)
                self.reachable = False
                cause = _status_line(status) if status else _one_line(e)
                if cause != self.unreachable_cause:
                    self.unreachable_cause = cause
                    log.warning("node %d: peer %d unreachable at %s: %s",
                                self.owner.node_id, self.peer_id, self.address, cause)
                await self._renew_channel_if_rotated()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    def send_snapshot(self, msg: eraftpb.Message) -> None:
        if self.snapshot_task is not None and not self.snapshot_task.done():
            # One snapshot at a time; Raft asks again after report_snapshot(Failure).
            self.owner.events.report_snapshot(self.peer_id, False)
            return
        self.snapshot_task = asyncio.get_running_loop().create_task(
            self._send_snapshot(msg), name=f"snapshot-to-{self.peer_id}"
        )

    async def _send_snapshot(self, msg: eraftpb.Message) -> None:
        ok = False
        index = msg.snapshot.metadata.index
        try:
            chunks = self.owner.events.snapshot_chunks(msg)
            stub = peer_pb2_grpc.PeerStub(self._channel())
            reply = await stub.SendSnapshot(self._snapshot_stream(msg, chunks))
            ok = reply.accepted
            if ok:
                log.info("node %d: snapshot at index %d sent to peer %d",
                         self.owner.node_id, index, self.peer_id)
            else:
                log.warning("node %d: peer %d refused snapshot at index %d: %s",
                            self.owner.node_id, self.peer_id, index, reply.reason)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            refusal = _replaced_refusal(await _call_status(None, e))
            if refusal is not None:
                self.owner.events.exit_with_error(refusal)
                return
            log.warning("node %d: sending snapshot at index %d to peer %d failed: %s",
                        self.owner.node_id, index, self.peer_id, _one_line(e))
        self.owner.metrics.snapshots_sent.labels("ok" if ok else "failed").inc()
        self.owner.events.report_snapshot(self.peer_id, ok)

    async def _snapshot_stream(
        self, msg: eraftpb.Message, chunks: Iterator[bytes]
    ) -> AsyncIterator[peer_pb2.SnapshotChunk]:
        cluster_id, node_id = self.owner.cluster_id(), self.owner.node_id
        yield peer_pb2.SnapshotChunk(
            cluster_id=cluster_id, from_id=node_id, message=msg,
            from_incarnation=self.owner.incarnation,
            to_incarnation=self.owner.peer_incarnation(self.peer_id))
        while True:
            # Chunks come from a LevelDB iterator: read them off the event loop.
            data = await asyncio.to_thread(next, chunks, None)
            if data is None:
                break
            yield peer_pb2.SnapshotChunk(cluster_id=cluster_id, from_id=node_id, data=data)
        yield peer_pb2.SnapshotChunk(cluster_id=cluster_id, from_id=node_id, last=True)

    async def close(self) -> None:
        for task in (self.task, self.snapshot_task):
            if task is not None:
                task.cancel()
        for task in (self.task, self.snapshot_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.channel is not None:
            await self.channel.close()


class PeerTransport:
    """Routes outbound Raft messages to per-peer senders."""

    def __init__(
        self,
        node_id: int,
        own_address: str,
        cluster_id: Callable[[], int],
        events: TransportEvents,
        metrics: NodeMetrics,
        *,
        queue_messages_max: int,
        queue_bytes_max: int,
        batch_bytes_max: int,
        incarnation: int = 0,
        peer_incarnation: Callable[[int], int] | None = None,
        tls: PeerChannelCredentials | None = None,
    ) -> None:
        assert queue_messages_max > 0 and queue_bytes_max > 0 and batch_bytes_max > 0
        self.node_id = node_id
        self.own_address = own_address
        self.incarnation = incarnation  # of this node's data directory, sent to peers
        self.tls = tls  # None: plaintext peer channels
        # peer id -> the incarnation this node's member records hold for it (0: unknown)
        self.peer_incarnation: Callable[[int], int] = peer_incarnation or (lambda _: 0)
        self.cluster_id = cluster_id
        self.events = events
        self.metrics = metrics
        self.queue_messages_max = queue_messages_max
        self.queue_bytes_max = queue_bytes_max
        self.batch_bytes_max = batch_bytes_max
        self._peers: dict[int, _PeerSender] = {}
        self._addresses: dict[int, str] = {}

    def set_addresses(self, addresses: dict[int, str]) -> None:
        """Make the set of peers exactly `addresses` (this node excluded)."""
        wanted = {i: a for i, a in addresses.items() if i != self.node_id and a}
        for peer_id in list(self._peers):
            if wanted.get(peer_id) != self._peers[peer_id].address:
                sender = self._peers.pop(peer_id)
                asyncio.get_running_loop().create_task(sender.close())
        self._addresses = wanted

    def address_of(self, peer_id: int) -> str | None:
        return self._addresses.get(peer_id)

    def _sender(self, peer_id: int) -> _PeerSender | None:
        sender = self._peers.get(peer_id)
        if sender is None:
            address = self._addresses.get(peer_id)
            if address is None:
                return None
            sender = self._peers[peer_id] = _PeerSender(self, peer_id, address)
        return sender

    def send(self, messages: list[eraftpb.Message]) -> None:
        for msg in messages:
            sender = self._sender(msg.to)
            if sender is None:
                if msg.msg_type == eraftpb.MsgSnapshot:
                    self.events.report_snapshot(msg.to, False)
                else:
                    self.events.report_unreachable(msg.to)
                continue
            if msg.msg_type == eraftpb.MsgSnapshot:
                sender.send_snapshot(msg)
            else:
                sender.enqueue(msg)

    async def close(self) -> None:
        senders, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(s.close() for s in senders), return_exceptions=True)


_Status = tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]


async def _call_status(call: object, e: BaseException) -> _Status | None:
    """The final status of a failed call, if it has one: from the error, or — a client
    stream's write raises InvalidStateError once the peer has aborted — from the call."""
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code(), e.details() or "", tuple(e.trailing_metadata() or ())
    if isinstance(call, grpc.aio.Call) and call.done():
        metadata = await call.trailing_metadata()
        return await call.code(), await call.details() or "", tuple(metadata or ())
    return None


def _replaced_refusal(status: _Status | None) -> str | None:
    """The peer's message if it refused THIS node as a member whose data directory
    was replaced; None for any other failure."""
    if status is None or status[0] != grpc.StatusCode.PERMISSION_DENIED:
        return None
    if (REFUSAL_METADATA_KEY, REFUSAL_REPLACED) not in status[2]:
        return None
    return (status[1] or "refused by a peer: this data directory was replaced").replace(
        "\n", " ")


def _status_line(status: _Status) -> str:
    return f"{status[0].name}: {status[1]}".replace("\n", " ")


def _as_is(encoded: bytes) -> bytes:
    """The serializer of a stream whose messages are encoded already."""
    return encoded


def _varint(n: int) -> bytes:
    """Protobuf's base-128 encoding of a non-negative integer."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _one_line(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}".replace("\n", " ")
    return (str(e) or type(e).__name__).replace("\n", " ")
