"""Every gRPC method a member serves, from the services' descriptors, and how to call
one with raw bytes as its request (no serializer: the bytes go on the wire as they are).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from kvraft.proto import etcdserverpb_pb2, kvraft_pb2, peer_pb2
from kvraft.server.etcd.member_calls import MEMBER_METHODS

CLIENT_PORT_FILES: tuple[FileDescriptor, ...] = (
    kvraft_pb2.DESCRIPTOR, etcdserverpb_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR)
PEER_PORT_FILES: tuple[FileDescriptor, ...] = (peer_pb2.DESCRIPTOR,)

# Methods whose request, if it parses, changes who is in the cluster, who leads, whether
# it takes writes or who may call it: fuzzed with bytes that do not parse only, so the
# node stays a healthy one-member cluster for the next example.
PARSE_FAILURES_ONLY = frozenset({
    "/kvraft.Cluster/AddMember", "/kvraft.Cluster/RemoveMember",
    "/kvraft.Cluster/TransferLeader",
    "/etcdserverpb.Cluster/MemberAdd", "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate", "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm", "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
})


@dataclass(frozen=True)
class Method:
    port: str              # "client" or "peer"
    path: str              # "/package.Service/Method"
    request: Any           # the request message class
    client_streaming: bool
    server_streaming: bool

    @property
    def unary(self) -> bool:
        return not self.client_streaming and not self.server_streaming

    @property
    def parse_failures_only(self) -> bool:
        """Parsing requests are sent only to unary methods that change nothing that
        matters to the next example (a stream would stay open; a peer batch that
        parses would be stepped by Raft)."""
        return not self.unary or self.port == "peer" or self.path in PARSE_FAILURES_ONLY

    def parses(self, payload: bytes) -> bool:
        try:
            self.request.FromString(payload)
        except DecodeError:
            return False
        return True

    def call(self, channel: grpc.Channel, payload: bytes, timeout_s: float,
             metadata: tuple[tuple[str, str], ...] = ()) -> None:
        """Send `payload` as the request (the only message of a request stream) and read
        every response; raises grpc.RpcError with the call's status."""
        if self.unary:
            channel.unary_unary(self.path, request_serializer=None,
                                response_deserializer=None)(
                payload, timeout=timeout_s, metadata=metadata)
        elif not self.client_streaming:
            for _ in channel.unary_stream(self.path, request_serializer=None,
                                          response_deserializer=None)(
                    payload, timeout=timeout_s, metadata=metadata):
                pass
        elif not self.server_streaming:
            channel.stream_unary(self.path, request_serializer=None,
                                 response_deserializer=None)(
                iter([payload]), timeout=timeout_s, metadata=metadata)
        else:
            for _ in channel.stream_stream(self.path, request_serializer=None,
                                           response_deserializer=None)(
                    iter([payload]), timeout=timeout_s, metadata=metadata):
                pass


def methods(port: str) -> list[Method]:
    files = CLIENT_PORT_FILES if port == "client" else PEER_PORT_FILES
    found = []
    for file in files:
        for service in file.services_by_name.values():
            found.extend(_method(port, service, m) for m in service.methods)
    if port == "peer":   # the etcd methods members call on each other's peer port
        for name, served in MEMBER_METHODS.items():
            service = etcdserverpb_pb2.DESCRIPTOR.services_by_name[name.split(".")[-1]]
            found.extend(_method(port, service, service.methods_by_name[m]) for m in served)
    return found


def _method(port: str, service: Any, m: Any) -> Method:
    return Method(port, f"/{service.full_name}/{m.name}",
                  message_factory.GetMessageClass(m.input_type),
                  m.client_streaming, m.server_streaming)
