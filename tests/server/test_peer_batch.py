"""The peer transport's batches (transport.py): encoded once per message at enqueue and
joined behind a header, they must be exactly the MessageBatch the receiver parses."""
from __future__ import annotations

import asyncio

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import peer_pb2
from kvraft.server.metrics import NodeMetrics
from kvraft.server.transport import PeerTransport, _PeerSender, _varint
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MAX


class _Events:
    def report_unreachable(self, peer_id: int) -> None: ...
    def report_snapshot(self, peer_id: int, ok: bool) -> None: ...
    def snapshot_chunks(self, msg: eraftpb.Message):  # type: ignore[no-untyped-def]
        return iter(())
    def exit_with_error(self, message: str) -> None: ...


def _append(to: int, index: int, payload: bytes) -> eraftpb.Message:
    return eraftpb.Message(
        msg_type=eraftpb.MsgAppend, to=to, from_=1, term=3, index=index, log_term=3,
        commit=index, entries=[eraftpb.Entry(term=3, index=index + 1, data=payload)])


def _sender(**limits: int) -> tuple[PeerTransport, _PeerSender]:
    incarnations = {2: 77}
    transport = PeerTransport(
        1, "127.0.0.1:9", lambda: 0xABC, _Events(), NodeMetrics(),
        queue_messages_max=limits.get("messages", 100),
        queue_bytes_max=limits.get("bytes", 1 << 20),
        batch_bytes_max=limits.get("batch", 1 << 20),
        incarnation=55, peer_incarnation=lambda peer: incarnations.get(peer, 0))
    sender = _PeerSender(transport, 2, "127.0.0.1:10")
    sender.task.cancel()   # no stream: the test takes the batches itself
    return transport, sender


def test_a_batch_parses_as_the_message_batch_of_its_messages() -> None:
    async def go() -> None:
        _, sender = _sender()
        messages = [_append(2, i, bytes([i]) * (i * 70)) for i in range(5)]
        for m in messages:
            sender.enqueue(m)
        messages[0].commit = 999   # a change after enqueue does not reach the peer
        batch = peer_pb2.MessageBatch.FromString(sender._take_batch())
        assert (batch.cluster_id, batch.from_id, batch.from_address, batch.from_incarnation,
                batch.to_incarnation, batch.from_cluster_version_max) == (
            0xABC, 1, "127.0.0.1:9", 55, 77, CLUSTER_VERSION_MAX)
        assert [m.commit for m in batch.messages] == [0, 1, 2, 3, 4]
        assert list(batch.messages)[1:] == messages[1:]
        assert sender.queued_bytes == 0 and not sender.queue
    asyncio.run(go())


def test_batches_split_at_the_byte_bound_and_the_queue_drops_its_oldest() -> None:
    async def go() -> None:
        _, sender = _sender(messages=3, batch=1)
        for i in range(5):
            sender.enqueue(_append(2, i, b"x" * 10))
        # Bounded at 3 messages: the two oldest were dropped.
        first = peer_pb2.MessageBatch.FromString(sender._take_batch())
        assert [m.index for m in first.messages] == [2]   # one message even past the bound
        rest = [peer_pb2.MessageBatch.FromString(sender._take_batch()) for _ in range(2)]
        assert [m.index for b in rest for m in b.messages] == [3, 4]
        assert sender.queued_bytes == 0
    asyncio.run(go())


def test_varint_matches_protobufs_encoding() -> None:
    for n in (0, 1, 127, 128, 300, 16_383, 16_384, 1 << 31, (1 << 64) - 1):
        encoded = peer_pb2.MessageBatch(cluster_id=n).SerializeToString()
        assert encoded == (b"\x08" + _varint(n) if n else b"")
