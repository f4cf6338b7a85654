"""Byte-level wire checks of the etcd messages (SPEC §6): messages encoded by hand from
etcd's field numbers and types are parsed by the generated classes, and the classes encode
them back to the same bytes.

A field with the wrong number parses as an unknown field and reads as its default; a
field with the wrong integer type shows in values that differ between the types: a
negative int64 (etcd sends TTL -1) is a 10-byte varint that an uint64 reads as 2**64-1,
and a member id above 2**63 (etcd's ids are random 64-bit numbers) is negative as an int64.
"""
from __future__ import annotations

from kvraft.proto import authpb_pb2, kvraft_pb2, mvccpb_pb2
from kvraft.proto import etcdserverpb_pb2 as pb

VARINT, LEN = 0, 2
BIG_MEMBER_ID = 0x8E9E05C52164694D  # > 2**63, as etcd assigns them
LEASE_ID = 0x694D71DDA7E05A0B


# --- a minimal protobuf encoder, written from the encoding spec -------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1          # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def v(number: int, value: int) -> bytes:
    """A varint field (int64, uint64, uint32, bool, enum)."""
    return _tag(number, VARINT) + _varint(value)


def b(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field: bytes, string or an embedded message."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _tag(number, LEN) + _varint(len(data)) + data


def test_encoder_matches_the_spec_examples() -> None:
    # protobuf's encoding guide: 150 in field 1 is 08 96 01; -1 takes ten bytes.
    assert v(1, 150) == bytes.fromhex("089601")
    assert _varint(-1) == b"\xff" * 9 + b"\x01"
    assert _tag(64, LEN) == bytes.fromhex("8204")


# --- KV -----------------------------------------------------------------------------

def header(revision: int = 42) -> bytes:
    return v(1, BIG_MEMBER_ID) + v(2, 7) + v(3, revision) + v(4, 3)


def key_value(key: bytes, value: bytes, lease: int = 0) -> bytes:
    return b(1, key) + v(2, 5) + v(3, 41) + v(4, 2) + b(5, value) + (v(6, lease) if lease else b"")


def check_header(h: pb.ResponseHeader, revision: int = 42) -> None:
    assert (h.cluster_id, h.member_id, h.revision, h.raft_term) == (BIG_MEMBER_ID, 7, revision, 3)


def test_put_request() -> None:
    wire = b(1, b"k") + b(2, b"val") + v(3, LEASE_ID) + v(4, 1) + v(5, 1) + v(6, 1)
    req = pb.PutRequest.FromString(wire)
    assert (req.key, req.value, req.lease) == (b"k", b"val", LEASE_ID)
    assert req.prev_kv and req.ignore_value and req.ignore_lease
    assert req.SerializeToString() == wire


def test_range_request_with_sort_and_filters() -> None:
    wire = (b(1, b"a") + b(2, b"b") + v(3, 10) + v(4, 17) + v(5, 2) + v(6, 3) + v(7, 1)
            + v(8, 1) + v(9, 1) + v(10, 11) + v(11, 12) + v(12, 13) + v(13, 14))
    req = pb.RangeRequest.FromString(wire)
    assert (req.key, req.range_end, req.limit, req.revision) == (b"a", b"b", 10, 17)
    assert req.sort_order == pb.RangeRequest.DESCEND
    assert req.sort_target == pb.RangeRequest.MOD
    assert req.serializable and req.keys_only and req.count_only
    assert (req.min_mod_revision, req.max_mod_revision,
            req.min_create_revision, req.max_create_revision) == (11, 12, 13, 14)
    assert req.SerializeToString() == wire


def test_range_response() -> None:
    wire = (b(1, header()) + b(2, key_value(b"k1", b"v1", LEASE_ID)) + b(2, key_value(b"k2", b"v2"))
            + v(3, 1) + v(4, 9))
    resp = pb.RangeResponse.FromString(wire)
    check_header(resp.header)
    first, second = resp.kvs
    assert (first.key, first.create_revision, first.mod_revision, first.version, first.value,
            first.lease) == (b"k1", 5, 41, 2, b"v1", LEASE_ID)
    assert (second.key, second.value, second.lease) == (b"k2", b"v2", 0)
    assert resp.more and resp.count == 9
    assert resp.SerializeToString() == wire


def test_delete_range() -> None:
    req_wire = b(1, b"a") + b(2, b"\x00") + v(3, 1)
    req = pb.DeleteRangeRequest.FromString(req_wire)
    assert (req.key, req.range_end, req.prev_kv) == (b"a", b"\x00", True)
    resp = pb.DeleteRangeResponse.FromString(b(1, header()) + v(2, 1) + b(3, key_value(b"a", b"x")))
    assert resp.deleted == 1 and resp.prev_kvs[0].value == b"x"


def test_txn_request_compare_oneof_and_range_end_64() -> None:
    compare = v(1, 3) + v(2, 2) + b(3, b"lock/") + v(6, 41) + b(64, b"lock0")
    success = b(2, b(1, b"lock/me") + b(2, b"1"))             # RequestOp.request_put
    failure = b(1, b(1, b"lock/") + b(2, b"lock0"))            # RequestOp.request_range
    nested = b(4, b(2, b(1, b(1, b"x"))))                      # request_txn{success: range}
    wire = b(1, compare) + b(2, success) + b(2, nested) + b(3, failure)
    txn = pb.TxnRequest.FromString(wire)
    (cmp,) = txn.compare
    assert cmp.result == pb.Compare.NOT_EQUAL and cmp.target == pb.Compare.MOD
    assert cmp.WhichOneof("target_union") == "mod_revision" and cmp.mod_revision == 41
    assert (cmp.key, cmp.range_end) == (b"lock/", b"lock0")
    assert [op.WhichOneof("request") for op in txn.success] == ["request_put", "request_txn"]
    assert txn.success[0].request_put.key == b"lock/me"
    assert txn.success[1].request_txn.success[0].request_range.key == b"x"
    assert txn.failure[0].request_range.range_end == b"lock0"
    assert txn.SerializeToString() == wire


def test_compare_targets_each_have_their_field() -> None:
    for number, name, value in ((4, "version", 3), (5, "create_revision", 4),
                                (6, "mod_revision", 5), (8, "lease", LEASE_ID)):
        cmp = pb.Compare.FromString(v(number, value))
        assert (cmp.WhichOneof("target_union"), getattr(cmp, name)) == (name, value)
    assert pb.Compare.FromString(b(7, b"val")).value == b"val"


def test_txn_response_oneof() -> None:
    ops = (b(3, b(1, b(1, header()) + v(4, 0)))                # response_range
           + b(3, b(2, b(1, header())))                        # response_put
           + b(3, b(3, b(1, header()) + v(2, 2)))              # response_delete_range
           + b(3, b(4, v(2, 1))))                              # response_txn
    resp = pb.TxnResponse.FromString(b(1, header()) + v(2, 1) + ops)
    assert resp.succeeded
    assert [op.WhichOneof("response") for op in resp.responses] == [
        "response_range", "response_put", "response_delete_range", "response_txn"]
    assert resp.responses[2].response_delete_range.deleted == 2
    assert resp.responses[3].response_txn.succeeded


def test_compaction() -> None:
    req = pb.CompactionRequest.FromString(v(1, 100) + v(2, 1))
    assert (req.revision, req.physical) == (100, True)


# --- Watch --------------------------------------------------------------------------

def test_watch_create_request() -> None:
    packed_filters = b(5, _varint(pb.WatchCreateRequest.NODELETE))
    create = (b(1, b"k") + b(2, b"l") + v(3, 17) + v(4, 1) + packed_filters + v(6, 1)
              + v(7, 5) + v(8, 1))
    wire = b(1, create)
    req = pb.WatchRequest.FromString(wire)
    assert req.WhichOneof("request_union") == "create_request"
    c = req.create_request
    assert (c.key, c.range_end, c.start_revision, c.watch_id) == (b"k", b"l", 17, 5)
    assert c.progress_notify and c.prev_kv and c.fragment
    assert list(c.filters) == [pb.WatchCreateRequest.NODELETE]
    assert req.SerializeToString() == wire       # proto3 packs repeated enums, as Go does
    # A parser must also accept the unpacked form of a repeated scalar.
    unpacked = pb.WatchCreateRequest.FromString(v(5, 0) + v(5, 1))
    assert list(unpacked.filters) == [pb.WatchCreateRequest.NOPUT,
                                      pb.WatchCreateRequest.NODELETE]


def test_watch_cancel_and_progress_requests() -> None:
    cancel = pb.WatchRequest.FromString(b(2, v(1, 5)))
    assert cancel.WhichOneof("request_union") == "cancel_request"
    assert cancel.cancel_request.watch_id == 5
    progress = pb.WatchRequest.FromString(b(3, b""))
    assert progress.WhichOneof("request_union") == "progress_request"


def test_watch_response_with_events_and_compaction() -> None:
    delete = v(1, 1) + b(2, b(1, b"k") + v(3, 43)) + b(3, key_value(b"k", b"old"))
    put = b(2, key_value(b"j", b"new"))                        # type PUT is 0: not sent
    wire = (b(1, header(43)) + v(2, 5) + v(3, 1) + v(4, 1) + v(5, 40) + b(6, "compacted")
            + v(7, 1) + b(11, delete) + b(11, put))
    resp = pb.WatchResponse.FromString(wire)
    check_header(resp.header, 43)
    assert (resp.watch_id, resp.created, resp.canceled, resp.compact_revision) == (
        5, True, True, 40)
    assert (resp.cancel_reason, resp.fragment) == ("compacted", True)
    first, second = resp.events
    assert first.type == mvccpb_pb2.Event.DELETE
    assert (first.kv.key, first.kv.mod_revision, first.prev_kv.value) == (b"k", 43, b"old")
    assert second.type == mvccpb_pb2.Event.PUT and second.kv.value == b"new"
    assert resp.SerializeToString() == wire


# --- Lease --------------------------------------------------------------------------

def test_lease_messages() -> None:
    grant = pb.LeaseGrantRequest.FromString(v(1, 10) + v(2, LEASE_ID))
    assert (grant.TTL, grant.ID) == (10, LEASE_ID)
    granted = pb.LeaseGrantResponse.FromString(b(1, header()) + v(2, LEASE_ID) + v(3, 10)
                                               + b(4, "no"))
    assert (granted.ID, granted.TTL, granted.error) == (LEASE_ID, 10, "no")
    ttl = pb.LeaseTimeToLiveResponse.FromString(b(1, header()) + v(2, LEASE_ID) + v(3, -1)
                                                + v(4, 10) + b(5, b"k1") + b(5, b"k2"))
    assert (ttl.ID, ttl.TTL, ttl.grantedTTL, list(ttl.keys)) == (LEASE_ID, -1, 10, [b"k1", b"k2"])
    assert pb.LeaseTimeToLiveRequest.FromString(v(1, 3) + v(2, 1)).keys
    alive = pb.LeaseKeepAliveResponse.FromString(b(1, header()) + v(2, 3) + v(3, 0))
    assert (alive.ID, alive.TTL) == (3, 0)
    leases = pb.LeaseLeasesResponse.FromString(b(1, header()) + b(2, v(1, 3)) + b(2, v(1, 4)))
    assert [s.ID for s in leases.leases] == [3, 4]
    checkpoint = pb.LeaseCheckpointRequest.FromString(b(1, v(1, 3) + v(2, 7)))
    assert (checkpoint.checkpoints[0].ID, checkpoint.checkpoints[0].remaining_TTL) == (3, 7)


# --- Cluster and Maintenance --------------------------------------------------------

def member(member_id: int, learner: bool) -> bytes:
    return (v(1, member_id) + b(2, "m1") + b(3, "http://127.0.0.1:2380")
            + b(4, "http://127.0.0.1:2379") + b(4, "http://[::1]:2379") + v(5, int(learner)))


def test_member_add_and_list() -> None:
    add = pb.MemberAddRequest.FromString(b(1, "http://10.0.0.4:2380") + v(2, 1))
    assert (list(add.peerURLs), add.isLearner) == (["http://10.0.0.4:2380"], True)
    added = pb.MemberAddResponse.FromString(b(1, header()) + b(2, member(BIG_MEMBER_ID, True))
                                            + b(3, member(1, False)))
    m = added.member
    assert (m.ID, m.name, list(m.peerURLs), m.isLearner) == (
        BIG_MEMBER_ID, "m1", ["http://127.0.0.1:2380"], True)
    assert list(m.clientURLs) == ["http://127.0.0.1:2379", "http://[::1]:2379"]
    assert [x.ID for x in added.members] == [1]
    assert pb.MemberListRequest.FromString(v(1, 1)).linearizable          # etcd 3.5
    for cls in (pb.MemberRemoveRequest, pb.MemberPromoteRequest):
        assert cls.FromString(v(1, BIG_MEMBER_ID)).ID == BIG_MEMBER_ID
    update = pb.MemberUpdateRequest.FromString(v(1, 2) + b(2, "http://h:1"))
    assert (update.ID, list(update.peerURLs)) == (2, ["http://h:1"])
    assert pb.MoveLeaderRequest.FromString(v(1, BIG_MEMBER_ID)).targetID == BIG_MEMBER_ID


def test_alarms() -> None:
    assert dict(pb.AlarmType.items()) == {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2}
    req = pb.AlarmRequest.FromString(v(1, 1) + v(2, BIG_MEMBER_ID) + v(3, 1))
    assert (req.action, req.memberID, req.alarm) == (
        pb.AlarmRequest.ACTIVATE, BIG_MEMBER_ID, pb.NOSPACE)
    resp = pb.AlarmResponse.FromString(b(1, header()) + b(2, v(1, 7) + v(2, 2)))
    assert (resp.alarms[0].memberID, resp.alarms[0].alarm) == (7, pb.CORRUPT)


def test_status_response() -> None:
    wire = (b(1, header()) + b(2, "3.5.0") + v(3, 4096) + v(4, BIG_MEMBER_ID) + v(5, 100)
            + v(6, 3) + v(7, 99) + b(8, "NOSPACE") + v(9, 2048) + v(10, 1))
    s = pb.StatusResponse.FromString(wire)
    assert (s.version, s.dbSize, s.leader, s.raftIndex, s.raftTerm, s.raftAppliedIndex) == (
        "3.5.0", 4096, BIG_MEMBER_ID, 100, 3, 99)
    assert (list(s.errors), s.dbSizeInUse, s.isLearner) == (["NOSPACE"], 2048, True)
    assert s.SerializeToString() == wire


def test_hash_snapshot_downgrade() -> None:
    hkv = pb.HashKVResponse.FromString(b(1, header()) + v(2, 0xFFFFFFFF) + v(3, 40))
    assert (hkv.hash, hkv.compact_revision) == (0xFFFFFFFF, 40)
    assert pb.HashKVRequest.FromString(v(1, 41)).revision == 41
    assert pb.HashResponse.FromString(v(2, 12345)).hash == 12345
    chunk = pb.SnapshotResponse.FromString(b(1, header()) + v(2, 1 << 33) + b(3, b"\x00\x01"))
    assert (chunk.remaining_bytes, chunk.blob) == (1 << 33, b"\x00\x01")
    down = pb.DowngradeRequest.FromString(v(1, 2) + b(2, "3.4.0"))
    assert (down.action, down.version) == (pb.DowngradeRequest.CANCEL, "3.4.0")
    assert pb.DowngradeResponse.FromString(b(2, "3.5.0")).version == "3.5.0"


# --- Auth ---------------------------------------------------------------------------

def test_auth_requests() -> None:
    add = pb.AuthUserAddRequest.FromString(b(1, "u") + b(2, "pw") + b(3, v(1, 1)) + b(4, "$2a$"))
    assert (add.name, add.password, add.options.no_password, add.hashedPassword) == (
        "u", "pw", True, "$2a$")
    change = pb.AuthUserChangePasswordRequest.FromString(b(1, "u") + b(2, "p") + b(3, "$h"))
    assert (change.name, change.password, change.hashedPassword) == ("u", "p", "$h")
    grant = pb.AuthUserGrantRoleRequest.FromString(b(1, "u") + b(2, "r"))
    assert (grant.user, grant.role) == ("u", "r")
    revoke = pb.AuthUserRevokeRoleRequest.FromString(b(1, "u") + b(2, "r"))
    assert (revoke.name, revoke.role) == ("u", "r")
    perm = v(1, authpb_pb2.Permission.READWRITE) + b(2, b"a") + b(3, b"b")
    rgp = pb.AuthRoleGrantPermissionRequest.FromString(b(1, "r") + b(2, perm))
    assert (rgp.name, rgp.perm.permType, rgp.perm.key, rgp.perm.range_end) == (
        "r", authpb_pb2.Permission.READWRITE, b"a", b"b")
    rrp = pb.AuthRoleRevokePermissionRequest.FromString(b(1, "r") + b(2, b"a") + b(3, b"b"))
    assert (rrp.role, rrp.key, rrp.range_end) == ("r", b"a", b"b")
    auth = pb.AuthenticateRequest.FromString(b(1, "root") + b(2, "pw"))
    assert (auth.name, auth.password) == ("root", "pw")
    for cls in (pb.AuthRoleGetRequest, pb.AuthRoleDeleteRequest):
        assert cls.FromString(b(1, "r")).role == "r"


def test_auth_responses() -> None:
    assert pb.AuthenticateResponse.FromString(b(1, header()) + b(2, "tok.1")).token == "tok.1"
    status = pb.AuthStatusResponse.FromString(b(1, header()) + v(2, 1) + v(3, 9))
    assert (status.enabled, status.authRevision) == (True, 9)
    role = pb.AuthRoleGetResponse.FromString(b(1, header()) + b(2, v(1, 1) + b(2, b"k")))
    assert (role.perm[0].permType, role.perm[0].key) == (authpb_pb2.Permission.WRITE, b"k")
    assert list(pb.AuthUserGetResponse.FromString(b(2, "r1") + b(2, "r2")).roles) == ["r1", "r2"]
    assert list(pb.AuthUserListResponse.FromString(b(2, "root")).users) == ["root"]
    assert list(pb.AuthRoleListResponse.FromString(b(2, "root")).roles) == ["root"]


def test_authpb_records() -> None:
    user = authpb_pb2.User.FromString(b(1, b"u") + b(2, b"hash") + b(3, "r") + b(4, v(1, 1)))
    assert (user.name, user.password, list(user.roles), user.options.no_password) == (
        b"u", b"hash", ["r"], True)
    role = authpb_pb2.Role.FromString(b(1, b"r") + b(2, v(1, 0) + b(2, b"k")))
    assert (role.name, role.keyPermission[0].permType) == (b"r", authpb_pb2.Permission.READ)


# --- kvraft's own header (SPEC §6: one store, two views) ----------------------------

def test_kvraft_header_carries_the_revision_as_field_5() -> None:
    h = kvraft_pb2.ResponseHeader.FromString(v(1, 1) + v(2, 2) + v(3, 3) + v(4, 4) + v(5, 77))
    assert (h.member_id, h.leader_id, h.term, h.applied_index, h.revision) == (1, 2, 3, 4, 77)
