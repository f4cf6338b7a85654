"""The inbound side of the peer transport: the `Peer` gRPC service on --peer-listen.

Every batch names its cluster and sender; traffic from another cluster or from a node
that is not a member is refused (PERMISSION_DENIED) and logged once per sender, so a
removed or misconfigured node cannot disturb the cluster (its vote requests included).

A member that presents another data-directory incarnation than its member record
holds came back with a replaced data directory (issue 11, item 7): emptied, it would
bootstrap again with no memory of its votes or acknowledged entries. It is refused with
one line naming the member and what to do, marked in the trailing metadata so that the
member exits with that line; it is accepted again once removed and re-added (removal
forgets the incarnation). The other way round, a batch names the incarnation its sender
knows for THIS node: if that is not this directory's, this node is the replaced one and
exits before stepping anything (answering the sender with the same line, without the
refusal mark: the sender is not the one to exit).

Over mutual TLS (`kvraft serve --peer-cert-file ...`, tls.py) gRPC has already refused
any peer whose certificate the peer CA did not sign, before it could send a byte; the
service then also binds the sender to its certificate: a batch from member ID is
accepted only if the certificate names ID (kvraft.tls, the naming rule), so a member's
certificate cannot speak for another member. Every refused batch's messages are
dropped and counted in `kvraft_peer_refused_messages{reason}` (cluster, non_member,
identity, replaced).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from kvraft.proto import peer_pb2, peer_pb2_grpc
from kvraft.tls import PEER_CN_PREFIX, PEER_URI_PREFIX, member_ids_named

from . import storage_adapter as sa
from .metrics import NodeMetrics
from .node import Node
from .transport import REFUSAL_METADATA_KEY, REFUSAL_REPLACED

log = logging.getLogger("kvraft.server.peer")


# Distinct refusals logged once each, at most this many (then only counted): a
# sender that varies its ids cannot grow the set without bound.
REFUSALS_LOGGED_MAX = 1024


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, node: Node, metrics: NodeMetrics | None = None, *,
                 peer_tls: bool = False) -> None:
        self.node = node
        # True: the port is mutual TLS and every sender must be named by its certificate.
        self.peer_tls = peer_tls
        metrics = metrics if metrics is not None else getattr(node, "metrics", None)
        self._refused = metrics.peer_refused if metrics is not None else None
        self._rejected: set[tuple[int, int, int]] = set()  # refusals logged already

    def _named(self, context: grpc.aio.ServicerContext) -> set[int] | None:
        """The member ids the caller's certificate names; None when ids are not bound
        to certificates (a plaintext peer port)."""
        if not self.peer_tls:
            return None
        return member_ids_named(context.auth_context())

    async def _check(
        self, cluster_id: int, from_id: int, incarnation: int,
        context: grpc.aio.ServicerContext, *, named: set[int] | None = None,
        messages: int = 1,
    ) -> None:
        node = self.node
        if node.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        metadata: tuple[tuple[str, str], ...] = ()
        replaced = None
        if named is not None and from_id not in named:
            kind = "identity"
            reason = (f"the peer certificate names {_members(named)}, not member {from_id}"
                      f" (expected SAN URI {PEER_URI_PREFIX}{from_id} or CN "
                      f"{PEER_CN_PREFIX}{from_id})")
        elif not node.accept_cluster(cluster_id):
            kind = "cluster"
            reason = f"cluster {cluster_id:016x} is not this node's cluster {node.cluster_id:016x}"
        elif not node.is_member(from_id) and node.member_ids():
            kind = "non_member"
            reason = f"node {from_id} is not a member"
        elif (replaced := node.replaced_member(from_id, incarnation)) is not None:
            kind = "replaced"
            reason = replaced
            metadata = ((REFUSAL_METADATA_KEY, REFUSAL_REPLACED),)
        else:
            return
        if self._refused is not None:
            self._refused.labels(kind).inc(messages)
        key = (cluster_id, from_id, incarnation if replaced else 0)
        if key not in self._rejected and len(self._rejected) < REFUSALS_LOGGED_MAX:
            self._rejected.add(key)
            log.warning("node %d: refusing traffic from node %d: %s", node.id, from_id, reason)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason, trailing_metadata=metadata)

    async def _exit_replaced(self, from_id: int, known: int,
                             context: grpc.aio.ServicerContext) -> None:
        """Peer `from_id`'s records hold another incarnation for this node: this data
        directory replaced the member's. Exit (the node's fatal path) and tell the
        sender why, without the refusal mark (the sender must not exit)."""
        node = self.node
        message = sa.replaced_member_message(node.id, node.incarnation, known)
        node.exit_with_error(message)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)

    async def Send(
        self, request_iterator: AsyncIterator[peer_pb2.MessageBatch],
        context: grpc.aio.ServicerContext,
    ) -> peer_pb2.SendSummary:
        batches = 0
        checked_from = -1
        own = self.node.incarnation
        named = self._named(context)  # one certificate per stream
        async for batch in request_iterator:
            if batch.to_incarnation and batch.to_incarnation != own:
                await self._exit_replaced(batch.from_id, batch.to_incarnation, context)
            # Checked again whenever the sender's standing may have changed; the
            # incarnation on every batch (a dict lookup), as the cluster may learn it
            # after this stream opened.
            if batch.from_id != checked_from or not self.node.is_member(batch.from_id) or \
                    self.node.replaced_member(batch.from_id, batch.from_incarnation):
                await self._check(batch.cluster_id, batch.from_id, batch.from_incarnation,
                                  context, named=named, messages=len(batch.messages))
                checked_from = batch.from_id
                self.node.learn_address(batch.from_id, batch.from_address)
                self.node.learn_cluster_version_max(batch.from_id,
                                                    batch.from_cluster_version_max)
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
                if msg is None or receiver is None:   # the first chunk sets both
                    own = node.incarnation
                    if chunk.to_incarnation and chunk.to_incarnation != own:
                        await self._exit_replaced(chunk.from_id, chunk.to_incarnation, context)
                    await self._check(chunk.cluster_id, chunk.from_id,
                                      chunk.from_incarnation, context,
                                      named=self._named(context))
                    if not chunk.HasField("message"):
                        return peer_pb2.SnapshotReply(accepted=False, reason="no message first")
                    msg = chunk.message
                    receiver = node.snapshot_receiver(msg.snapshot)
                    continue
                if chunk.data:
                    await asyncio.to_thread(receiver.write, chunk.data)
                if chunk.last:
                    staged = await asyncio.to_thread(receiver.finish)
                    break
            if msg is None or staged is None:   # (staged set implies msg set)
                return peer_pb2.SnapshotReply(accepted=False, reason="stream ended early")
            # The node owns the staged file from here on, kept or (refused) discarded.
            delivered = True
            if not node.deliver_snapshot(msg, staged):
                # Too many snapshots wait to be stepped: answering accepted would let the
                # leader count this one as received; refused, it reports the snapshot
                # failed and Raft sends it again later (thesis §5.1, InstallSnapshot).
                return peer_pb2.SnapshotReply(
                    accepted=False, reason="too many received snapshots wait to be stepped")
            return peer_pb2.SnapshotReply(accepted=True)
        finally:
            if not delivered and receiver is not None:
                sa.abort_receiver(receiver)


def _members(ids: set[int]) -> str:
    if not ids:
        return "no member"
    return "member " + ", ".join(str(i) for i in sorted(ids))
