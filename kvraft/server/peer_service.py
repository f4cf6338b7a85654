"""The inbound side of the peer transport: the `Peer` gRPC service on --peer-listen.

Every batch names its cluster and sender; traffic from another cluster or from a node
that is not a member is refused (PERMISSION_DENIED) and logged once per sender, so a
removed or misconfigured node cannot disturb the cluster (its vote requests included).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from kvraft.proto import peer_pb2, peer_pb2_grpc

from . import storage_adapter as sa
from .node import Node

log = logging.getLogger("kvraft.server.peer")


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self._rejected: set[tuple[int, int]] = set()

    async def _check(
        self, cluster_id: int, from_id: int, context: grpc.aio.ServicerContext
    ) -> None:
        node = self.node
        if node.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        if not node.accept_cluster(cluster_id):
            reason = f"cluster {cluster_id:016x} is not this node's cluster {node.cluster_id:016x}"
        elif not node.is_member(from_id) and node.member_ids():
            reason = f"node {from_id} is not a member"
        else:
            return
        if (cluster_id, from_id) not in self._rejected:
            self._rejected.add((cluster_id, from_id))
            log.warning("node %d: refusing traffic from node %d: %s", node.id, from_id, reason)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    async def Send(
        self, request_iterator: AsyncIterator[peer_pb2.MessageBatch],
        context: grpc.aio.ServicerContext,
    ) -> peer_pb2.SendSummary:
        batches = 0
        checked_from = -1
        async for batch in request_iterator:
            if batch.from_id != checked_from or not self.node.is_member(batch.from_id):
                await self._check(batch.cluster_id, batch.from_id, context)
                checked_from = batch.from_id
                self.node.learn_address(batch.from_id, batch.from_address)
            # (A message's own `from_` may name another node: a follower forwards
            # MsgTransferLeader with from_ = the transferee.)
            self.node.deliver(list(batch.messages))
            batches += 1
        return peer_pb2.SendSummary(batches=batches)

    async def SendSnapshot(
        self, request_iterator: AsyncIterator[peer_pb2.SnapshotChunk],
        context: grpc.aio.ServicerContext,
    ) -> peer_pb2.SnapshotReply:
        node = self.node
        receiver = None
        msg = None
        staged = None
        delivered = False
        try:
            async for chunk in request_iterator:
                if msg is None:
                    await self._check(chunk.cluster_id, chunk.from_id, context)
                    if not chunk.HasField("message"):
                        return peer_pb2.SnapshotReply(accepted=False, reason="no message first")
                    msg = chunk.message
                    receiver = sa.snapshot_receiver(node.store, msg.snapshot)
                    continue
                if chunk.data:
                    await asyncio.to_thread(receiver.write, chunk.data)
                if chunk.last:
                    staged = await asyncio.to_thread(receiver.finish)
                    break
            if staged is None:
                return peer_pb2.SnapshotReply(accepted=False, reason="stream ended early")
            node.deliver_snapshot(msg, staged)
            delivered = True
            return peer_pb2.SnapshotReply(accepted=True)
        finally:
            if not delivered and receiver is not None:
                sa.abort_receiver(receiver)
