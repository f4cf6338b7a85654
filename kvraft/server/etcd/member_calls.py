"""The etcd calls one member makes to another, served on the PEER port (issue 14).

Four etcd calls are member-to-member work: a follower forwards a client's lease
keep-alives and LeaseTimeToLive to the leader (lease.py), and a learner's MemberPromote
(cluster.py); the leader asks every member for HashKV in its corruption check
(corrupt_check.py). etcd makes these over its peer URLs, never the client port; so does
kvraft: `add_member_calls` serves exactly these four methods on the peer gRPC server,
under etcd's own service and method names, with the same servicer objects the client
port uses. The client port serves them too, for clients, checked by the access check
like every other call (auth/interceptor.py): no metadata admits a call without a user.

Who may call: with peer TLS the peer server already requires a certificate issued by
--peer-trusted-ca-file; a member call must also come from a certificate that names a
current member (kvraft/tls.py's naming rule, as the Raft messages' check in
peer_service.py), else PERMISSION_DENIED. Without peer TLS the port is trusted as the
Raft messages on it are: it must be protected by network isolation
(docs/security.md). The callers still send the member mark (FORWARDED_METADATA_KEY of
lease.py and cluster.py) so that the receiving servicer does not forward the call again.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.tls import member_ids_named

from ..node import Node
from .cluster import EtcdClusterService
from .lease import LeaseService
from .maintenance import EtcdMaintenanceService

Ctx = grpc.aio.ServicerContext

# The methods served on the peer port, by service: etcd's names (etcdserverpb).
MEMBER_METHODS = {
    "etcdserverpb.Lease": ("LeaseKeepAlive", "LeaseTimeToLive"),
    "etcdserverpb.Cluster": ("MemberPromote",),
    "etcdserverpb.Maintenance": ("HashKV",),
}


class MemberCheck:
    """Whether a peer-port caller may make a member call: always on a plaintext peer
    port (protected by isolation), else when its certificate names a current member."""

    def __init__(self, node: Node, peer_tls: bool) -> None:
        self.node = node
        self.peer_tls = peer_tls

    async def require(self, context: Ctx) -> None:
        if not self.peer_tls:
            return
        named = member_ids_named(context.auth_context() or {})
        if not named & self.node.member_ids():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "the peer certificate names no current member")


def _unary(check: MemberCheck, behaviour: Any) -> Any:
    async def call(request: Any, context: Ctx) -> Any:
        await check.require(context)
        return await behaviour(request, context)
    return call


def _stream(check: MemberCheck, behaviour: Any) -> Any:
    async def call(request_iterator: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
        await check.require(context)
        async for response in behaviour(request_iterator, context):
            yield response
    return call


def add_member_calls(server: grpc.aio.Server, node: Node, peer_tls: bool,
                     lease: LeaseService, cluster: EtcdClusterService,
                     maintenance: EtcdMaintenanceService) -> None:
    """Serve MEMBER_METHODS on the peer `server` (before it starts)."""
    check = MemberCheck(node, peer_tls)
    handlers: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {
        "etcdserverpb.Lease": {
            "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(
                _stream(check, lease.LeaseKeepAlive),
                request_deserializer=etcdpb.LeaseKeepAliveRequest.FromString,
                response_serializer=etcdpb.LeaseKeepAliveResponse.SerializeToString),
            "LeaseTimeToLive": grpc.unary_unary_rpc_method_handler(
                _unary(check, lease.LeaseTimeToLive),
                request_deserializer=etcdpb.LeaseTimeToLiveRequest.FromString,
                response_serializer=etcdpb.LeaseTimeToLiveResponse.SerializeToString),
        },
        "etcdserverpb.Cluster": {
            "MemberPromote": grpc.unary_unary_rpc_method_handler(
                _unary(check, cluster.MemberPromote),
                request_deserializer=etcdpb.MemberPromoteRequest.FromString,
                response_serializer=etcdpb.MemberPromoteResponse.SerializeToString),
        },
        "etcdserverpb.Maintenance": {
            "HashKV": grpc.unary_unary_rpc_method_handler(
                _unary(check, maintenance.HashKV),
                request_deserializer=etcdpb.HashKVRequest.FromString,
                response_serializer=etcdpb.HashKVResponse.SerializeToString),
        },
    }
    assert {s: tuple(m) for s, m in handlers.items()} == MEMBER_METHODS
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(service, methods)
        for service, methods in handlers.items()))
