"""etcd's authentication and role-based access on a real 3-node cluster (SPEC §8):
etcdctl 3.4 configures it and is judged by it; every service of the client port refuses
a user without the permission with PERMISSION_DENIED, and serves one who has it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kvraft.client import Client, KvraftError
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from tests.cluster.harness import wait_until
from tests.etcd.conftest import failed, ok

from .conftest import (
    ALICE_PASSWORD,
    BOB_PASSWORD,
    ROOT_PASSWORD,
    RPC_TIMEOUT_S,
    AuthCluster,
    metadata,
)

pytestmark = pytest.mark.cluster

DENIED = "etcdserver: permission denied"
LEASE_ID = 0x5EED


def _put(key: bytes) -> etcdpb.RequestOp:
    return etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=b"x"))


# (service, stub, method, request, streaming): calls alice (read on app/, readwrite on
# app/rw/) may not make. Streaming calls are iterated to their first answer.
REFUSED: list[tuple[str, Callable[[grpc.Channel], Any], str, Any]] = [
    ("KV", etcdpb_grpc.KVStub, "Range", etcdpb.RangeRequest(key=b"secret/key")),
    ("KV", etcdpb_grpc.KVStub, "Range", etcdpb.RangeRequest(key=b"app/", range_end=b"b")),
    ("KV", etcdpb_grpc.KVStub, "Put", etcdpb.PutRequest(key=b"app/config", value=b"no")),
    ("KV", etcdpb_grpc.KVStub, "DeleteRange", etcdpb.DeleteRangeRequest(key=b"app/config")),
    ("KV", etcdpb_grpc.KVStub, "Txn", etcdpb.TxnRequest(   # a put only in the failure branch
        compare=[etcdpb.Compare(key=b"app/config", target=etcdpb.Compare.VALUE,
                                value=b"v1")],
        success=[etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"app/config"))],
        failure=[_put(b"app/config")])),
    ("KV", etcdpb_grpc.KVStub, "Txn", etcdpb.TxnRequest(   # a compare on a foreign key
        compare=[etcdpb.Compare(key=b"secret/key", target=etcdpb.Compare.VERSION)],
        success=[_put(b"app/rw/x")])),
    ("Lease", etcdpb_grpc.LeaseStub, "LeaseRevoke", etcdpb.LeaseRevokeRequest(ID=LEASE_ID)),
    ("Cluster", etcdpb_grpc.ClusterStub, "MemberAdd",
     etcdpb.MemberAddRequest(peerURLs=["http://127.0.0.1:1"], isLearner=True)),
    ("Cluster", etcdpb_grpc.ClusterStub, "MemberRemove", etcdpb.MemberRemoveRequest(ID=3)),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "Defragment", etcdpb.DefragmentRequest()),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "HashKV", etcdpb.HashKVRequest()),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "MoveLeader",
     etcdpb.MoveLeaderRequest(targetID=2)),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "Alarm",
     etcdpb.AlarmRequest(action=etcdpb.AlarmRequest.DEACTIVATE)),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "Snapshot", etcdpb.SnapshotRequest()),
    ("Auth", etcdpb_grpc.AuthStub, "UserAdd", etcdpb.AuthUserAddRequest(name="eve",
                                                                          password="x")),
    ("Auth", etcdpb_grpc.AuthStub, "RoleList", etcdpb.AuthRoleListRequest()),
    ("Auth", etcdpb_grpc.AuthStub, "UserChangePassword",
     etcdpb.AuthUserChangePasswordRequest(name="bob", password="x")),
    ("kvraft.KV", pb_grpc.KVStub, "Get", pb.GetRequest(key=b"secret/key")),
    ("kvraft.KV", pb_grpc.KVStub, "Scan", pb.ScanRequest(start=b"app/")),   # to the end
    ("kvraft.KV", pb_grpc.KVStub, "Put", pb.PutRequest(key=b"app/config", value=b"no")),
    ("kvraft.KV", pb_grpc.KVStub, "Delete", pb.DeleteRequest(key=b"app/config")),
    ("kvraft.KV", pb_grpc.KVStub, "CompareAndSwap",
     pb.CompareAndSwapRequest(key=b"app/config", expected=b"v1", value=b"no")),
    ("kvraft.KV", pb_grpc.KVStub, "Batch", pb.BatchRequest(ops=[
        pb.BatchOp(put=pb.PutRequest(key=b"app/rw/ok", value=b"1")),
        pb.BatchOp(delete=pb.DeleteRequest(key=b"secret/key"))])),
    ("kvraft.Cluster", pb_grpc.ClusterStub, "AddMember",
     pb.AddMemberRequest(id=9, peer_address="127.0.0.1:1", learner=True)),
    ("kvraft.Cluster", pb_grpc.ClusterStub, "TransferLeader", pb.TransferLeaderRequest(to=2)),
]

# Calls alice may make.
ALLOWED: list[tuple[str, Callable[[grpc.Channel], Any], str, Any]] = [
    ("KV", etcdpb_grpc.KVStub, "Range", etcdpb.RangeRequest(key=b"app/", range_end=b"app0")),
    ("KV", etcdpb_grpc.KVStub, "Put", etcdpb.PutRequest(key=b"app/rw/k", value=b"ok")),
    ("KV", etcdpb_grpc.KVStub, "Txn", etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"app/config", target=etcdpb.Compare.VERSION)],
        success=[_put(b"app/rw/t")],
        failure=[etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"app/config"))])),
    ("Lease", etcdpb_grpc.LeaseStub, "LeaseGrant", etcdpb.LeaseGrantRequest(TTL=30)),
    ("Cluster", etcdpb_grpc.ClusterStub, "MemberList", etcdpb.MemberListRequest()),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "Status", etcdpb.StatusRequest()),
    ("Maintenance", etcdpb_grpc.MaintenanceStub, "Alarm", etcdpb.AlarmRequest()),
    ("Auth", etcdpb_grpc.AuthStub, "AuthStatus", etcdpb.AuthStatusRequest()),
    ("Auth", etcdpb_grpc.AuthStub, "UserGet", etcdpb.AuthUserGetRequest(name="alice")),
    ("kvraft.KV", pb_grpc.KVStub, "Get", pb.GetRequest(key=b"app/config")),
    ("kvraft.KV", pb_grpc.KVStub, "Scan", pb.ScanRequest(start=b"app/", end=b"app0")),
    ("kvraft.KV", pb_grpc.KVStub, "Put", pb.PutRequest(key=b"app/rw/kv", value=b"1")),
    ("kvraft.Cluster", pb_grpc.ClusterStub, "Status", pb.StatusRequest()),
]


def _invoke(channel: grpc.Channel, stub: Callable[[grpc.Channel], Any], method: str,
            request: Any, token: str | None) -> Any:
    call = getattr(stub(channel), method)
    md = metadata(token) if token else None
    response = call(request, timeout=RPC_TIMEOUT_S, metadata=md)
    if method == "Snapshot":
        return next(iter(response))
    return response


@pytest.fixture(scope="module")
def alice_token(auth_cluster: AuthCluster) -> str:
    # a lease holding a key alice may not write, for LeaseRevoke
    ok(auth_cluster.etcdctl("lease", "grant", "600"))      # any lease; then ours by id:
    with grpc.insecure_channel(auth_cluster.endpoint(1)) as channel:
        root = metadata(auth_cluster.token("root", ROOT_PASSWORD))
        etcdpb_grpc.LeaseStub(channel).LeaseGrant(
            etcdpb.LeaseGrantRequest(ID=LEASE_ID, TTL=600), timeout=RPC_TIMEOUT_S,
            metadata=root)
        etcdpb_grpc.KVStub(channel).Put(
            etcdpb.PutRequest(key=b"secret/leased", value=b"1", lease=LEASE_ID),
            timeout=RPC_TIMEOUT_S, metadata=root)
    return auth_cluster.token("alice", ALICE_PASSWORD)


@pytest.mark.parametrize(("service", "stub", "method", "request_"), REFUSED,
                         ids=[f"{s}.{m}-{i}" for i, (s, _, m, _) in enumerate(REFUSED)])
def test_a_user_without_the_permission_is_refused(
        auth_cluster: AuthCluster, alice_token: str, service: str, stub: Any, method: str,
        request_: Any) -> None:
    with grpc.insecure_channel(auth_cluster.endpoint(1)) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        _invoke(channel, stub, method, request_, alice_token)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    assert refused.value.details() == DENIED


@pytest.mark.parametrize(("service", "stub", "method", "request_"), ALLOWED,
                         ids=[f"{s}.{m}-{i}" for i, (s, _, m, _) in enumerate(ALLOWED)])
def test_a_user_with_the_permission_is_served(
        auth_cluster: AuthCluster, alice_token: str, service: str, stub: Any, method: str,
        request_: Any) -> None:
    with grpc.insecure_channel(auth_cluster.endpoint(1)) as channel:
        response = _invoke(channel, stub, method, request_, alice_token)
    assert response.header.member_id == 1


def test_a_watch_needs_read_on_what_it_watches(auth_cluster: AuthCluster,
                                               alice_token: str) -> None:
    def first_answer(key: bytes, range_end: bytes = b"") -> etcdpb.WatchResponse:
        with grpc.insecure_channel(auth_cluster.endpoint(2)) as channel:
            token = auth_cluster.token("alice", ALICE_PASSWORD, node_id=2)
            create = etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
                key=key, range_end=range_end))
            stream = etcdpb_grpc.WatchStub(channel).Watch(
                iter([create]), timeout=RPC_TIMEOUT_S, metadata=metadata(token))
            return next(iter(stream))

    try:
        created = first_answer(b"app/", b"app0")
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("etcd's Watch service is not on this branch yet")
        raise
    assert created.created
    with pytest.raises(grpc.RpcError) as refused:
        first_answer(b"secret/", b"secret0")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == DENIED


def test_etcdctl_read_only_user_gets_but_cannot_put(auth_cluster: AuthCluster) -> None:
    assert ok(auth_cluster.etcdctl("get", "app/config", user="alice")).split() == [
        "app/config", "v1"]
    assert DENIED in failed(auth_cluster.etcdctl("put", "app/config", "v2", user="alice"))
    assert DENIED in failed(auth_cluster.etcdctl("get", "secret/key", user="alice"))
    assert DENIED in failed(auth_cluster.etcdctl("get", "app/config", user="bob"))
    # on a follower as on the leader
    assert ok(auth_cluster.etcdctl("get", "app/config", user="alice", node_id=3)).split() == [
        "app/config", "v1"]


def test_etcdctl_wrong_password_and_no_user_get_etcds_messages(
        auth_cluster: AuthCluster) -> None:
    from tests.etcd.conftest import etcdctl

    endpoints = auth_cluster.cluster.endpoints()
    wrong = failed(etcdctl(endpoints, "--user=alice:not-the-password", "get", "app/config"))
    assert "etcdserver: authentication failed, invalid user ID or password" in wrong
    nobody = failed(etcdctl(endpoints, "--user=mallory:x", "get", "app/config"))
    assert "etcdserver: authentication failed, invalid user ID or password" in nobody
    anonymous = failed(etcdctl(endpoints, "get", "app/config"))
    assert "etcdserver: user name is empty" in anonymous


def test_etcdctl_manages_users_and_roles_as_root_only(auth_cluster: AuthCluster) -> None:
    assert ok(auth_cluster.etcdctl("user", "list")).split() == ["alice", "bob", "root"]
    assert ok(auth_cluster.etcdctl("user", "get", "alice")).split() == [
        "User:", "alice", "Roles:", "app-reader"]
    role = ok(auth_cluster.etcdctl("role", "get", "app-reader"))
    assert "[app/, app0) (prefix app/)" in role and "[app/rw/, app/rw0) (prefix app/rw/)" in role
    assert DENIED in failed(auth_cluster.etcdctl("user", "list", user="alice"))
    assert DENIED in failed(auth_cluster.etcdctl("role", "add", "evil", user="bob"))
    assert "etcdserver: user name already exists" in failed(
        auth_cluster.etcdctl("user", "add", "alice:again"))


def test_a_token_is_valid_on_the_member_that_issued_it_only(auth_cluster: AuthCluster) -> None:
    token = auth_cluster.token("alice", ALICE_PASSWORD, node_id=1)
    request = pb.GetRequest(key=b"app/config")
    with grpc.insecure_channel(auth_cluster.endpoint(1)) as channel:
        assert pb_grpc.KVStub(channel).Get(request, timeout=RPC_TIMEOUT_S,
                                           metadata=metadata(token)).value == b"v1"
    for node_id, bad in ((2, token), (1, "forged.1")):
        with grpc.insecure_channel(auth_cluster.endpoint(node_id)) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            pb_grpc.KVStub(channel).Get(request, timeout=RPC_TIMEOUT_S, metadata=metadata(bad))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details() == "etcdserver: invalid auth token"


def test_health_and_authenticate_stay_open(auth_cluster: AuthCluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(auth_cluster.endpoint(2)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert auth_cluster.token("bob", BOB_PASSWORD, node_id=2)


def test_python_client_authenticates_on_every_member_it_uses(auth_cluster: AuthCluster) -> None:
    endpoints = [auth_cluster.endpoint(i) for i in (3, 2, 1)]
    with Client(endpoints, user="alice", password=ALICE_PASSWORD) as alice:
        assert alice.get(b"app/config") == b"v1"
        alice.put(b"app/rw/client", b"1")
        with pytest.raises(KvraftError) as refused:
            alice.put(b"app/config", b"no")
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    with Client(endpoints, user="root", password=ROOT_PASSWORD) as root:
        assert root.get(b"app/rw/client") == b"1"
        assert root.auth.status().enabled
        assert "app-reader" in root.auth.role_list()
    with Client(endpoints, user="alice", password="wrong") as wrong, \
            pytest.raises(KvraftError) as bad:
        wrong.get(b"app/config")
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid user ID or password" in bad.value.message


def test_a_revoked_permission_is_refused_on_every_member(auth_cluster: AuthCluster) -> None:
    """Tokens stay valid across a revoke; what they may do follows the replicated rules."""
    ok(auth_cluster.etcdctl("role", "add", "carol-role"))
    ok(auth_cluster.etcdctl("role", "grant-permission", "carol-role", "readwrite", "carol/",
                            "--prefix"))
    ok(auth_cluster.etcdctl("user", "add", "carol:carol-pw"))
    ok(auth_cluster.etcdctl("user", "grant-role", "carol", "carol-role"))
    tokens = {i: auth_cluster.token("carol", "carol-pw", node_id=i) for i in (1, 2, 3)}

    def put_code(node_id: int) -> grpc.StatusCode:
        with grpc.insecure_channel(auth_cluster.endpoint(node_id)) as channel:
            try:
                pb_grpc.KVStub(channel).Put(pb.PutRequest(key=b"carol/k", value=b"v"),
                                            timeout=RPC_TIMEOUT_S,
                                            metadata=metadata(tokens[node_id]))
            except grpc.RpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    assert [put_code(i) for i in (1, 2, 3)] == [grpc.StatusCode.OK] * 3
    ok(auth_cluster.etcdctl("role", "revoke-permission", "carol-role", "carol/", "--prefix"))
    for i in (1, 2, 3):
        wait_until(lambda i=i: put_code(i) == grpc.StatusCode.PERMISSION_DENIED, 10.0,
                   f"member {i} to refuse carol's write")
