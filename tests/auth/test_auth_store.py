"""The replicated auth state (storage/auth_store.py) on a real state machine and LevelDB:
password hashing, permissions on keys, ranges and prefixes, etcd's refusals, the
auth revision, restarts and snapshots, and the re-check at apply of a request admitted
under an older auth revision."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.proto import authpb_pb2 as authpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import eraftpb
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, put_command
from kvraft.storage import auth_store as au
from kvraft.storage.commands import cluster_version_command, encode_auth_context, etcd_command
from kvraft.storage.mvcc.keyrange import KeyRange
from kvraft.storage.snapshot import StagedSnapshot

R, W, RW = au.READ, au.WRITE, au.READWRITE


class Log:
    """Applies commands at consecutive indexes, each with an optional auth context."""

    def __init__(self, sm: KVStateMachine) -> None:
        self.sm = sm
        self.index = sm.applied_index
        self.rid = 0

    def apply(self, data: bytes, context: bytes = b""):
        self.index += 1
        (result,) = self.sm.apply([eraftpb.Entry(index=self.index, term=1, data=data,
                                                 context=context)])
        return result

    def etcd(self, op: str, request, *, as_user: str | None = None, auth_revision: int = 0):
        self.rid += 1
        context = b"" if as_user is None else encode_auth_context(as_user, auth_revision)
        return self.apply(etcd_command(self.rid, op, request), context)

    def ok(self, op: str, request):
        result = self.etcd(op, request)
        assert result.mvcc_error is None, result.mvcc_error
        return result


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    with DataDir.open(tmp_path / "n1", 1) as dd:
        lg = Log(KVStateMachine(dd))
        lg.apply(cluster_version_command(2))
        yield lg


@functools.cache
def hashed(password: str) -> str:
    """One hash per password for the whole module (scrypt is slow by design)."""
    return au.hash_password(password)


def add_user(log: Log, name: str, password: str, *roles: str) -> None:
    log.ok("auth_user_add", etcdpb.AuthUserAddRequest(name=name,
                                                      hashedPassword=hashed(password)))
    for r in roles:
        log.ok("auth_user_grant_role", etcdpb.AuthUserGrantRoleRequest(user=name, role=r))


def grant(log: Log, role: str, kind: int, key: bytes, range_end: bytes = b"") -> None:
    log.ok("auth_role_grant_permission", etcdpb.AuthRoleGrantPermissionRequest(
        name=role, perm=authpb.Permission(permType=kind, key=key, range_end=range_end)))


def enable_with_root(log: Log) -> None:
    add_user(log, "root", "rootpw", "root")
    log.ok("auth_enable", etcdpb.AuthEnableRequest())


# --- passwords ----------------------------------------------------------------------------
def test_a_password_is_stored_as_a_salted_slow_hash_that_verifies_only_itself() -> None:
    a, b = au.hash_password("s3cret"), au.hash_password("s3cret")
    assert a != b, "each hash has its own salt"
    assert "s3cret" not in a and a.startswith(f"scrypt${au.SCRYPT_N}$")
    assert au.verify_password(a, "s3cret") and au.verify_password(b, "s3cret")
    assert not au.verify_password(a, "s3cret ") and not au.verify_password(a, "")
    assert not au.verify_password("plaintext", "plaintext"), "only scrypt records verify"
    assert not au.verify_password("scrypt$1048577$8$1$AA==$AA==", "x"), "cost is bounded"


def test_the_log_and_the_store_never_hold_the_password(tmp_path: Path) -> None:
    """What the Auth service proposes holds the hash only; the store keeps that hash."""
    with DataDir.open(tmp_path / "n1", 1) as dd:
        log = Log(KVStateMachine(dd))
        log.apply(cluster_version_command(2))
        add_user(log, "alice", "wonderland-pw")
        stored = log.sm.auth.users["alice"].password
        assert au.verify_password(stored, "wonderland-pw")
    with DataDir.open(tmp_path / "n1", 1) as dd:   # flushed to LevelDB by the close
        record = dd.db.get(b"Vualice")
        assert record is not None and b"wonderland-pw" not in record
        assert stored.encode() in record


# --- permissions --------------------------------------------------------------------------
@pytest.mark.parametrize(("grants", "key", "range_end", "covered"), [
    ([(b"a", b"")], b"a", b"", True),                      # the key itself
    ([(b"a", b"")], b"ab", b"", False),                    # not another key
    ([(b"app/", b"app0")], b"app/x", b"", True),           # a prefix holds its keys
    ([(b"app/", b"app0")], b"app/", b"app0", True),        # ... and the whole prefix
    ([(b"app/", b"app0")], b"ap", b"app0", False),         # but not more
    ([(b"a", b"c"), (b"c", b"e")], b"a", b"e", True),      # adjacent ranges join
    ([(b"a", b"c"), (b"d", b"e")], b"a", b"e", False),     # a gap [c, d) is not granted
    ([(b"b", b"\x00")], b"b", b"\x00", True),              # from a key on
    ([(b"b", b"z")], b"b", b"\x00", False),                # open-ended needs open-ended
    ([(b"", b"\x00")], b"\x00", b"\x00", True),            # everything (etcdctl's --prefix "")
    ([], b"a", b"a", True),                                # an empty range needs nothing
])
def test_a_range_is_permitted_when_the_union_of_grants_covers_it(
        grants: list[tuple[bytes, bytes]], key: bytes, range_end: bytes, covered: bool) -> None:
    assert au.covers([KeyRange.of(k, e) for k, e in grants],
                     KeyRange.of(key, range_end)) is covered


def test_read_write_and_readwrite_grant_what_they_say_and_root_grants_all(log: Log) -> None:
    for role in ("r", "w", "rw"):
        log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name=role))
    grant(log, "r", R, b"k")
    grant(log, "w", W, b"k")
    grant(log, "rw", RW, b"p/", b"p0")
    add_user(log, "reader", "x", "r")
    add_user(log, "writer", "x", "w")
    add_user(log, "both", "x", "rw")
    add_user(log, "root", "x", "root")
    add_user(log, "nobody", "x")
    s = log.sm.auth
    assert s.permitted("reader", R, b"k", b"") and not s.permitted("reader", W, b"k", b"")
    assert s.permitted("writer", W, b"k", b"") and not s.permitted("writer", R, b"k", b"")
    assert s.permitted("both", R, b"p/a", b"") and s.permitted("both", W, b"p/", b"p0")
    assert not s.permitted("both", R, b"k", b"")
    assert s.permitted("root", W, b"\x00", b"\x00")
    assert not s.permitted("nobody", R, b"k", b"") and not s.permitted("ghost", R, b"k", b"")


def test_txn_needs_every_permission_either_branch_could_use() -> None:
    txn = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"c", target=etcdpb.Compare.VERSION)],
        success=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"s", prev_kv=True))],
        failure=[etcdpb.RequestOp(request_txn=etcdpb.TxnRequest(failure=[
            etcdpb.RequestOp(request_delete_range=etcdpb.DeleteRangeRequest(
                key=b"d", range_end=b"e"))]))])
    assert set(au.txn_needs(txn)) == {au.Need(R, b"c"), au.Need(W, b"s"), au.Need(R, b"s"),
                                      au.Need(W, b"d", b"e")}


# --- changes and etcd's errors --------------------------------------------------------------
def test_enable_needs_a_root_user_holding_the_root_role(log: Log) -> None:
    refused = log.etcd("auth_enable", etcdpb.AuthEnableRequest())
    assert isinstance(refused.mvcc_error, au.RootUserNotExistError)
    assert str(refused.mvcc_error) == "etcdserver: root user does not exist"
    add_user(log, "root", "pw")
    refused = log.etcd("auth_enable", etcdpb.AuthEnableRequest())
    assert str(refused.mvcc_error) == "etcdserver: root user does not have root role"
    log.ok("auth_user_grant_role", etcdpb.AuthUserGrantRoleRequest(user="root", role="root"))
    log.ok("auth_enable", etcdpb.AuthEnableRequest())
    assert log.sm.auth.enabled


@pytest.mark.parametrize(("op", "request_", "message"), [
    ("auth_user_add", etcdpb.AuthUserAddRequest(name=""), "etcdserver: user name is empty"),
    ("auth_user_add", etcdpb.AuthUserAddRequest(name="root"),
     "etcdserver: user name already exists"),
    ("auth_user_delete", etcdpb.AuthUserDeleteRequest(name="ghost"),
     "etcdserver: user name not found"),
    ("auth_user_delete", etcdpb.AuthUserDeleteRequest(name="root"),
     "etcdserver: invalid auth management"),
    ("auth_user_grant_role", etcdpb.AuthUserGrantRoleRequest(user="root", role="ghost"),
     "etcdserver: role name not found"),
    ("auth_user_revoke_role", etcdpb.AuthUserRevokeRoleRequest(name="root", role="root"),
     "etcdserver: invalid auth management"),
    ("auth_user_revoke_role", etcdpb.AuthUserRevokeRoleRequest(name="root", role="other"),
     "etcdserver: role is not granted to the user"),
    ("auth_role_add", etcdpb.AuthRoleAddRequest(name=""), "etcdserver: role name is empty"),
    ("auth_role_add", etcdpb.AuthRoleAddRequest(name="other"),
     "etcdserver: role name already exists"),
    ("auth_role_delete", etcdpb.AuthRoleDeleteRequest(role="ghost"),
     "etcdserver: role name not found"),
    ("auth_role_revoke_permission",
     etcdpb.AuthRoleRevokePermissionRequest(role="other", key=b"nope"),
     "etcdserver: permission is not granted to the role"),
    ("auth_role_grant_permission", etcdpb.AuthRoleGrantPermissionRequest(name="other"),
     "etcdserver: permission not given"),
])
def test_refused_changes_answer_etcds_message_and_change_nothing(
        log: Log, op: str, request_, message: str) -> None:
    log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="other"))
    enable_with_root(log)
    before = log.sm.auth
    result = log.etcd(op, request_)
    assert isinstance(result.mvcc_error, au.AuthError) and str(result.mvcc_error) == message
    assert log.sm.auth == before and log.sm.auth.revision == before.revision


def test_every_change_raises_the_auth_revision_and_deleting_a_role_revokes_it(log: Log) -> None:
    start = log.sm.auth.revision
    log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="r"))
    grant(log, "r", R, b"a")
    grant(log, "r", RW, b"a")           # the same key again: its type is replaced
    add_user(log, "u", "pw", "r")
    assert log.sm.auth.roles["r"] == (au.Permission(RW, b"a", b""),)
    assert log.sm.auth.revision == start + 5
    log.ok("auth_role_delete", etcdpb.AuthRoleDeleteRequest(role="r"))
    assert log.sm.auth.users["u"].roles == () and "r" not in log.sm.auth.roles
    assert log.sm.auth.revision == start + 6


def test_auth_state_survives_a_restart_and_travels_in_a_snapshot(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "a", 1) as a:
        log = Log(KVStateMachine(a))
        log.apply(cluster_version_command(2))
        log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="r"))
        grant(log, "r", W, b"x/", b"x0")
        add_user(log, "u", "pw", "r")
        enable_with_root(log)
        expected = log.sm.auth
        LevelDBStorage(a).persist([eraftpb.Entry(index=i, term=1) for i in
                                   range(1, log.index + 1)],
                                  eraftpb.HardState(term=1, commit=log.index))
        with log.sm.create_snapshot() as handle, DataDir.open(tmp_path / "b", 2) as b:
            dst = KVStateMachine(b)
            receiver = dst.receive_snapshot(handle.metadata)
            for chunk in handle.chunks(1000):
                receiver.write(chunk)
            staged: StagedSnapshot = receiver.finish()
            dst.install_snapshot(staged, LevelDBStorage(b))
            assert dst.auth == expected
    with DataDir.open(tmp_path / "a", 1) as a:
        assert KVStateMachine(a).auth == expected and expected.enabled


# --- the re-check at apply -----------------------------------------------------------------
def test_a_write_admitted_before_its_permission_was_revoked_is_refused_at_apply(
        log: Log) -> None:
    """The request was checked at the client port under auth revision N; the revoke
    applies first (N+1); the write's entry, applied after, is refused on every member."""
    log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="w"))
    grant(log, "w", W, b"app/", b"app0")
    add_user(log, "alice", "pw", "w")
    enable_with_root(log)
    admitted_at = log.sm.auth.revision
    ok = log.etcd("etcd_put", etcdpb.PutRequest(key=b"app/1", value=b"v"), as_user="alice",
                  auth_revision=admitted_at)
    assert ok.mvcc_error is None and log.sm.get(b"app/1") == b"v"
    log.ok("auth_role_revoke_permission",
           etcdpb.AuthRoleRevokePermissionRequest(role="w", key=b"app/", range_end=b"app0"))
    late = log.etcd("etcd_put", etcdpb.PutRequest(key=b"app/1", value=b"late"),
                    as_user="alice", auth_revision=admitted_at)
    assert isinstance(late.mvcc_error, au.PermissionDeniedError)
    assert str(late.mvcc_error) == "etcdserver: permission denied"
    assert log.sm.get(b"app/1") == b"v", "nothing of the refused write applied"
    # kvraft's own commands are re-checked the same way
    late_kv = log.apply(put_command(b"app/2", b"x", request_id=99),
                        encode_auth_context("alice", admitted_at))
    assert isinstance(late_kv.mvcc_error, au.PermissionDeniedError)
    assert log.sm.get(b"app/2") is None


def test_a_write_admitted_under_the_current_revision_or_by_the_node_applies(log: Log) -> None:
    log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="w"))
    add_user(log, "alice", "pw", "w")
    enable_with_root(log)
    current = log.sm.auth.revision
    # admitted under the current rules: not checked again (the port already did)
    assert log.etcd("etcd_put", etcdpb.PutRequest(key=b"k", value=b"1"), as_user="root",
                    auth_revision=current).mvcc_error is None
    # the node's own entries carry no context
    assert log.etcd("etcd_put", etcdpb.PutRequest(key=b"k", value=b"2")).mvcc_error is None
    # root keeps its rights across revisions
    log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="later"))
    assert log.etcd("etcd_put", etcdpb.PutRequest(key=b"k", value=b"3"), as_user="root",
                    auth_revision=current).mvcc_error is None
    assert log.sm.get(b"k") == b"3"


def test_a_request_admitted_while_auth_was_off_is_checked_once_it_is_on(log: Log) -> None:
    """A write taken with auth disabled (no user) whose entry applies after auth was
    enabled is refused: it would otherwise bypass the check."""
    admitted_at = log.sm.auth.revision
    enable_with_root(log)
    late = log.etcd("etcd_put", etcdpb.PutRequest(key=b"k", value=b"v"), as_user="",
                    auth_revision=admitted_at)
    assert isinstance(late.mvcc_error, au.PermissionDeniedError)
    assert log.sm.get(b"k") is None


def test_a_lease_revoke_is_rechecked_against_the_keys_of_the_lease(log: Log) -> None:
    log.ok("auth_role_add", etcdpb.AuthRoleAddRequest(name="w"))
    grant(log, "w", W, b"mine/", b"mine0")
    add_user(log, "alice", "pw", "w")
    enable_with_root(log)
    log.ok("lease_grant", etcdpb.LeaseGrantRequest(ID=7, TTL=60))
    log.ok("etcd_put", etcdpb.PutRequest(key=b"mine/a", value=b"1", lease=7))
    log.ok("etcd_put", etcdpb.PutRequest(key=b"theirs", value=b"2", lease=7))
    admitted_at = log.sm.auth.revision - 1     # any older revision forces the re-check
    refused = log.etcd("lease_revoke", etcdpb.LeaseRevokeRequest(ID=7), as_user="alice",
                       auth_revision=admitted_at)
    assert isinstance(refused.mvcc_error, au.PermissionDeniedError)
    assert log.sm.lease(7) is not None and log.sm.get(b"theirs") == b"2"
    log.ok("etcd_delete_range", etcdpb.DeleteRangeRequest(key=b"theirs"))
    assert log.etcd("lease_revoke", etcdpb.LeaseRevokeRequest(ID=7), as_user="alice",
                    auth_revision=admitted_at).mvcc_error is None
    assert log.sm.lease(7) is None and log.sm.get(b"mine/a") is None


def test_the_merged_ranges_a_state_caches_agree_with_covers_on_random_cases() -> None:
    """AuthState.permitted answers from its merged ranges; covers() from the raw grants:
    both must say the same for any grants and any range (seeded, so a failure replays)."""
    import random

    rng = random.Random(1405)
    keys = [b"", b"\x00", b"a", b"b", b"ba", b"c", b"d", b"e"]
    for case in range(2000):
        grants = [(rng.choice(keys), rng.choice(keys)) for _ in range(rng.randint(0, 4))]
        key, range_end = rng.choice(keys), rng.choice(keys)
        state = au.AuthState(True, 2, {"u": au.User("u", "", ("r",))},
                             {"r": tuple(au.Permission(R, k, e) for k, e in grants)})
        expected = au.covers([KeyRange.of(k, e) for k, e in grants], KeyRange.of(key, range_end))
        assert state.permitted("u", R, key, range_end) is expected, (case, grants, key,
                                                                     range_end)
