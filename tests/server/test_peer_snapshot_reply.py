"""The peer service's answer to a streamed snapshot says whether the node kept it.

A follower holds at most STAGED_SNAPSHOTS_MAX received snapshots waiting for its Raft
loop; `Node.deliver_snapshot` refuses (and discards) one more. The reply must then
say accepted=False: the sender reports the snapshot as failed and Raft sends it again
later (thesis §5.1, InstallSnapshot). accepted=True makes the leader believe the
follower has it, and wait on a follower that will never answer it.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import peer_pb2
from kvraft.server.peer_service import PeerService
from kvraft.server.snapshots import STAGED_SNAPSHOTS_MAX
from kvraft.storage import keys
from kvraft.storage.datadir import DataDir
from kvraft.storage.snapshot import STAGED_SUFFIX, SnapshotHandle

from .inprocess import node_config, open_node, snapshot_message, staged_snapshot

SENDER = 2
CHUNK_BYTES = 4096


class AbortingContext:
    """The bit of grpc.aio.ServicerContext the service uses: abort() raises."""

    async def abort(self, code: object, details: str, trailing_metadata: object = ()
                    ) -> NoReturn:
        raise AssertionError(f"the service aborted the call: {code}: {details}")


def _chunks(scratch: Path, cluster_id: int, message: eraftpb.Message
            ) -> list[peer_pb2.SnapshotChunk]:
    """The stream a leader sends for `message`: the message first, then the chunks of
    a database at the snapshot's applied index."""
    meta = message.snapshot.metadata
    with DataDir.open(scratch, node_id=99) as source:
        source.db.put(keys.APPLIED, keys.pack_index_term(meta.index, meta.term))
        source.db.put(keys.kv_key(b"k"), b"v%d" % meta.index)
        with SnapshotHandle(source.db) as handle:
            data = list(handle.chunks(CHUNK_BYTES))
    first = peer_pb2.SnapshotChunk(cluster_id=cluster_id, from_id=SENDER, message=message)
    return [first, *(peer_pb2.SnapshotChunk(data=d) for d in data),
            peer_pb2.SnapshotChunk(last=True)]


async def _stream(chunks: list[peer_pb2.SnapshotChunk]
                  ) -> AsyncIterator[peer_pb2.SnapshotChunk]:
    for chunk in chunks:
        yield chunk


def test_a_snapshot_the_node_refuses_is_answered_not_accepted(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The node is never started: nothing steps the inbound queue, so the staged
        # snapshots stay pending, as on a follower whose loop is busy.
        node, store = open_node(node_config(tmp_path / "n1"))
        try:
            for n in range(STAGED_SNAPSHOTS_MAX):
                index = 100 + n
                staged = staged_snapshot(store, tmp_path / f"src{index}", index, 5,
                                         [1, 2, 3], {b"k": b"v"})
                assert node.deliver_snapshot(snapshot_message(staged, SENDER, 1), staged)

            message = eraftpb.Message(msg_type=eraftpb.MsgSnapshot, from_=SENDER, to=1,
                                      term=5)
            message.snapshot.metadata.index = 200
            message.snapshot.metadata.term = 5
            message.snapshot.metadata.conf_state.voters.extend([1, 2, 3])
            chunks = _chunks(tmp_path / "src-streamed", node.cluster_id, message)

            reply = await PeerService(node).SendSnapshot(_stream(chunks), AbortingContext())

            assert not reply.accepted, "a refused snapshot was answered accepted=True"
            assert reply.reason
            waiting = sorted(store.datadir.snap_dir.glob("*" + STAGED_SUFFIX))
            assert len(waiting) == STAGED_SNAPSHOTS_MAX, (
                f"the refused snapshot's file should be discarded: {waiting}")
        finally:
            await node.stop()
            store.close()

    asyncio.run(scenario())
