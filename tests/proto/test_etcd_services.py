"""etcd's v3 services as compiled from protos/etcdserverpb.proto (SPEC §6-§8).

A client reaches a method by its gRPC path, `/etcdserverpb.<Service>/<Method>`, and sends
the request type in the way the method streams: all three must be etcd's for etcdctl or
clientv3 to work. The table below is etcd 3.5's API (3.4's plus Downgrade and AuthStatus).
"""
from __future__ import annotations

from typing import Any

import pytest

from kvraft.proto import authpb_pb2, etcdserverpb_pb2, etcdserverpb_pb2_grpc, mvccpb_pb2

UNARY, SERVER_STREAM, BIDI = "unary_unary", "unary_stream", "stream_stream"

# service -> method -> (request, response, how it streams)
ETCD_SERVICES: dict[str, dict[str, tuple[str, str, str]]] = {
    "KV": {
        "Range": ("RangeRequest", "RangeResponse", UNARY),
        "Put": ("PutRequest", "PutResponse", UNARY),
        "DeleteRange": ("DeleteRangeRequest", "DeleteRangeResponse", UNARY),
        "Txn": ("TxnRequest", "TxnResponse", UNARY),
        "Compact": ("CompactionRequest", "CompactionResponse", UNARY),
    },
    "Watch": {
        "Watch": ("WatchRequest", "WatchResponse", BIDI),
    },
    "Lease": {
        "LeaseGrant": ("LeaseGrantRequest", "LeaseGrantResponse", UNARY),
        "LeaseRevoke": ("LeaseRevokeRequest", "LeaseRevokeResponse", UNARY),
        "LeaseKeepAlive": ("LeaseKeepAliveRequest", "LeaseKeepAliveResponse", BIDI),
        "LeaseTimeToLive": ("LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse", UNARY),
        "LeaseLeases": ("LeaseLeasesRequest", "LeaseLeasesResponse", UNARY),
    },
    "Cluster": {
        "MemberAdd": ("MemberAddRequest", "MemberAddResponse", UNARY),
        "MemberRemove": ("MemberRemoveRequest", "MemberRemoveResponse", UNARY),
        "MemberUpdate": ("MemberUpdateRequest", "MemberUpdateResponse", UNARY),
        "MemberList": ("MemberListRequest", "MemberListResponse", UNARY),
        "MemberPromote": ("MemberPromoteRequest", "MemberPromoteResponse", UNARY),
    },
    "Maintenance": {
        "Alarm": ("AlarmRequest", "AlarmResponse", UNARY),
        "Status": ("StatusRequest", "StatusResponse", UNARY),
        "Defragment": ("DefragmentRequest", "DefragmentResponse", UNARY),
        "Hash": ("HashRequest", "HashResponse", UNARY),
        "HashKV": ("HashKVRequest", "HashKVResponse", UNARY),
        "Snapshot": ("SnapshotRequest", "SnapshotResponse", SERVER_STREAM),
        "MoveLeader": ("MoveLeaderRequest", "MoveLeaderResponse", UNARY),
        "Downgrade": ("DowngradeRequest", "DowngradeResponse", UNARY),
    },
    "Auth": {
        "AuthEnable": ("AuthEnableRequest", "AuthEnableResponse", UNARY),
        "AuthDisable": ("AuthDisableRequest", "AuthDisableResponse", UNARY),
        "AuthStatus": ("AuthStatusRequest", "AuthStatusResponse", UNARY),
        "Authenticate": ("AuthenticateRequest", "AuthenticateResponse", UNARY),
        "UserAdd": ("AuthUserAddRequest", "AuthUserAddResponse", UNARY),
        "UserGet": ("AuthUserGetRequest", "AuthUserGetResponse", UNARY),
        "UserList": ("AuthUserListRequest", "AuthUserListResponse", UNARY),
        "UserDelete": ("AuthUserDeleteRequest", "AuthUserDeleteResponse", UNARY),
        "UserChangePassword": ("AuthUserChangePasswordRequest",
                               "AuthUserChangePasswordResponse", UNARY),
        "UserGrantRole": ("AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse", UNARY),
        "UserRevokeRole": ("AuthUserRevokeRoleRequest", "AuthUserRevokeRoleResponse", UNARY),
        "RoleAdd": ("AuthRoleAddRequest", "AuthRoleAddResponse", UNARY),
        "RoleGet": ("AuthRoleGetRequest", "AuthRoleGetResponse", UNARY),
        "RoleList": ("AuthRoleListRequest", "AuthRoleListResponse", UNARY),
        "RoleDelete": ("AuthRoleDeleteRequest", "AuthRoleDeleteResponse", UNARY),
        "RoleGrantPermission": ("AuthRoleGrantPermissionRequest",
                                "AuthRoleGrantPermissionResponse", UNARY),
        "RoleRevokePermission": ("AuthRoleRevokePermissionRequest",
                                 "AuthRoleRevokePermissionResponse", UNARY),
    },
}


def _streaming(client_streaming: bool, server_streaming: bool) -> str:
    return {(False, False): UNARY, (False, True): SERVER_STREAM,
            (True, True): BIDI}.get((client_streaming, server_streaming), "stream_unary")


def test_the_three_packages_are_etcds() -> None:
    assert etcdserverpb_pb2.DESCRIPTOR.package == "etcdserverpb"
    assert mvccpb_pb2.DESCRIPTOR.package == "mvccpb"
    assert authpb_pb2.DESCRIPTOR.package == "authpb"
    assert set(etcdserverpb_pb2.DESCRIPTOR.services_by_name) == set(ETCD_SERVICES)


@pytest.mark.parametrize("service", sorted(ETCD_SERVICES))
def test_service_has_etcds_methods_and_types(service: str) -> None:
    descriptor = etcdserverpb_pb2.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"etcdserverpb.{service}"
    found = {
        m.name: (m.input_type.full_name, m.output_type.full_name,
                 _streaming(m.client_streaming, m.server_streaming))
        for m in descriptor.methods
    }
    expected = {
        name: (f"etcdserverpb.{req}", f"etcdserverpb.{resp}", kind)
        for name, (req, resp, kind) in ETCD_SERVICES[service].items()
    }
    assert found == expected


class _RecordingChannel:
    """Stands in for a grpc.Channel: records the path and kind of every method a stub
    binds, which is exactly what goes on the wire as the HTTP/2 :path."""

    def __init__(self) -> None:
        self.bound: dict[str, str] = {}

    def _binder(self, kind: str) -> Any:
        def bind(path: str, *args: Any, **kwargs: Any) -> None:
            self.bound[path] = kind
        return bind

    def __getattr__(self, kind: str) -> Any:
        if kind in (UNARY, SERVER_STREAM, BIDI, "stream_unary"):
            return self._binder(kind)
        raise AttributeError(kind)


@pytest.mark.parametrize("service", sorted(ETCD_SERVICES))
def test_stub_calls_etcds_grpc_paths(service: str) -> None:
    channel = _RecordingChannel()
    getattr(etcdserverpb_pb2_grpc, f"{service}Stub")(channel)
    assert channel.bound == {
        f"/etcdserverpb.{service}/{name}": kind
        for name, (_, _, kind) in ETCD_SERVICES[service].items()
    }


@pytest.mark.parametrize("service", sorted(ETCD_SERVICES))
def test_servicer_and_registration_exist(service: str) -> None:
    servicer = getattr(etcdserverpb_pb2_grpc, f"{service}Servicer")
    assert callable(getattr(etcdserverpb_pb2_grpc, f"add_{service}Servicer_to_server"))
    assert set(ETCD_SERVICES[service]) <= set(vars(servicer))


def test_mvcc_and_auth_records() -> None:
    assert mvccpb_pb2.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"
    assert mvccpb_pb2.Event.DESCRIPTOR.full_name == "mvccpb.Event"
    assert {m.full_name for m in (authpb_pb2.User.DESCRIPTOR, authpb_pb2.Permission.DESCRIPTOR,
                                  authpb_pb2.Role.DESCRIPTOR,
                                  authpb_pb2.UserAddOptions.DESCRIPTOR)} == {
        "authpb.User", "authpb.Permission", "authpb.Role", "authpb.UserAddOptions"}
