"""The state machine at both cluster versions (storage/mvcc_apply.py): kvraft's commands
mean the same at 1 and 2; raising the version migrates the data at one entry; etcd's
requests and leases apply only at 2; snapshots and restarts keep the version."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import eraftpb
from kvraft.storage import (
    DataDir,
    KVStateMachine,
    LevelDBStorage,
    batch_command,
    cas_command,
    delete_command,
    mvcc,
    put_command,
)
from kvraft.storage.commands import cluster_version_command, etcd_command
from kvraft.storage.mvcc_apply import (
    ClusterVersionTooNewError,
    LeaseGrantResult,
    LeaseRevokeResult,
)
from kvraft.storage.snapshot import StagedSnapshot


def normal(index: int, data: bytes, term: int = 1) -> eraftpb.Entry:
    return eraftpb.Entry(index=index, term=term, data=data)


class Log:
    """Applies commands at consecutive indexes."""

    def __init__(self, sm: KVStateMachine) -> None:
        self.sm = sm
        self.index = sm.applied_index

    def apply(self, *commands: bytes):
        entries = []
        for data in commands:
            self.index += 1
            entries.append(normal(self.index, data))
        return self.sm.apply(entries)


KVRAFT_WORKLOAD = [
    put_command(b"a", b"1", request_id=1),
    put_command(b"b", b"2", request_id=2),
    cas_command(b"a", b"1", b"3", request_id=3),     # swaps
    cas_command(b"a", b"1", b"4", request_id=4),     # fails: a is 3
    cas_command(b"c", None, b"5", request_id=5),     # absent: swaps
    cas_command(b"c", None, b"6", request_id=6),     # exists: fails
    cas_command(b"zz", b"x", b"7", request_id=7),    # absent, expected given: fails
    delete_command(b"b", request_id=8),
    delete_command(b"b", request_id=9),              # nothing to delete
    batch_command([(b"d", b"8"), (b"a", None), (b"e", b"9"), (b"nope", None)],
                  request_id=10),
]


def outcomes(results) -> list[tuple]:
    return [(r.kind, r.ok, r.found, r.current, r.deleted, r.deleted_list) for r in results]


def test_kvraft_commands_mean_the_same_at_both_versions(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "v1", 1) as d1, DataDir.open(tmp_path / "v2", 1) as d2:
        legacy, versioned = KVStateMachine(d1), KVStateMachine(d2)
        Log(versioned).apply(cluster_version_command(2))
        assert (legacy.cluster_version, versioned.cluster_version) == (1, 2)
        r1 = Log(legacy).apply(*KVRAFT_WORKLOAD)
        r2 = Log(versioned).apply(*KVRAFT_WORKLOAD)
        assert outcomes(r1) == outcomes(r2)
        assert [x.revision for x in r2] == [2, 3, 4, 4, 5, 5, 5, 6, 6, 7]
        assert [x.revision for x in r1] == [0] * len(r1)
        assert legacy.scan(b"", b"", 0) == versioned.scan(b"", b"", 0) == (
            [(b"c", b"5"), (b"d", b"8"), (b"e", b"9")], False)
        for key in (b"a", b"b", b"c", b"d", b"e", b"zz"):
            assert legacy.get(key) == versioned.get(key)
        assert versioned.scan(b"c", b"e", 1) == ([(b"c", b"5")], True)


def test_raising_the_version_migrates_every_key_at_one_revision(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "n", 1) as d:
        sm = KVStateMachine(d)
        log = Log(sm)
        log.apply(*(put_command(b"k%03d" % i, b"v%d" % i) for i in range(50)))
        log.apply(delete_command(b"k007"))
        with pytest.raises(mvcc.ClusterVersionError):
            sm.range(mvcc.RangeRequest(b"k000"))
        assert sm.revision == 0
        # Legacy writes and the upgrade in one apply call: the migration sees them.
        [_, upgrade] = log.apply(put_command(b"k999", b"last"), cluster_version_command(2))
        assert upgrade.kind == "cluster_version" and upgrade.ok
        assert sm.cluster_version == 2 and sm.revision == 2
        assert len(upgrade.events) == 50 and {e.kv.mod_revision for e in upgrade.events} == {2}
        r = sm.range(mvcc.RangeRequest(b"k", b"l"))
        assert r.count == 50 and r.revision == 2
        assert all((kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (2, 2, 1, 0)
                   for kv in r.kvs)
        assert sm.get(b"k999") == b"last" and sm.get(b"k007") is None
        # No K record is left behind; the next write is revision 3.
        with sm._live.iterator(start=b"K", stop=b"L") as it:
            assert list(it) == []
        [again] = log.apply(cluster_version_command(2))
        assert again.ok and sm.revision == 2
        [p] = log.apply(put_command(b"k000", b"new"))
        assert p.revision == 3
        kv = sm.range(mvcc.RangeRequest(b"k000")).kvs[0]
        assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 3, 2)


def test_etcd_requests_are_refused_at_version_one_and_applied_at_two(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    log = Log(sm)
    put = etcd_command(1, "etcd_put", etcdpb.PutRequest(key=b"k", value=b"v"))
    [refused] = log.apply(put)
    assert not refused.ok and isinstance(refused.mvcc_error, mvcc.ClusterVersionError)
    assert sm.get(b"k") is None
    [_, applied] = log.apply(cluster_version_command(2), put)
    assert applied.ok and isinstance(applied.response, mvcc.PutResponse)
    assert applied.response.revision == 2 and applied.revision == 2
    [ev] = applied.events
    assert (ev.type, ev.kv.key, ev.kv.value, ev.kv.mod_revision) == (
        mvcc.EventType.PUT, b"k", b"v", 2)
    txn = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"k", target=etcdpb.Compare.VALUE,
                                result=etcdpb.Compare.EQUAL, value=b"v")],
        success=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"k", value=b"w")),
                 etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"j", value=b"x"))])
    [t] = log.apply(etcd_command(2, "etcd_txn", txn))
    assert t.response.succeeded and t.revision == 3
    assert [(e.kv.key, e.kv.mod_revision) for e in t.events] == [(b"k", 3), (b"j", 3)]
    assert t.events[0].prev_kv is not None and t.events[0].prev_kv.value == b"v"
    [c] = log.apply(etcd_command(3, "etcd_compact", etcdpb.CompactionRequest(revision=3)))
    assert c.ok and sm.compact_revision == 3
    with pytest.raises(mvcc.CompactedError):
        sm.range(mvcc.RangeRequest(b"k", revision=2))
    [d] = log.apply(etcd_command(4, "etcd_delete_range",
                                 etcdpb.DeleteRangeRequest(key=b"a", range_end=b"z")))
    assert d.response.deleted == 2 and d.revision == 4
    assert [e.type for e in d.events] == [mvcc.EventType.DELETE] * 2


def test_leases_grant_attach_checkpoint_and_revoke_with_their_keys(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    log = Log(sm)
    log.apply(cluster_version_command(2))
    grant = etcd_command(1, "lease_grant", etcdpb.LeaseGrantRequest(ID=7, TTL=30))
    [g, dup] = log.apply(grant, grant)
    assert g.response == LeaseGrantResult(7, 30, 1)
    assert isinstance(dup.mvcc_error, mvcc.LeaseExistsError)
    [p1, p2, bad] = log.apply(
        etcd_command(2, "etcd_put", etcdpb.PutRequest(key=b"a", value=b"1", lease=7)),
        etcd_command(3, "etcd_put", etcdpb.PutRequest(key=b"b", value=b"2", lease=7)),
        etcd_command(4, "etcd_put", etcdpb.PutRequest(key=b"c", value=b"3", lease=8)))
    assert p1.ok and p2.ok and isinstance(bad.mvcc_error, mvcc.LeaseNotFoundError)
    assert sm.keys_with_lease(7) == [b"a", b"b"]
    log.apply(etcd_command(5, "lease_checkpoint", etcdpb.LeaseCheckpointRequest(
        checkpoints=[etcdpb.LeaseCheckpoint(ID=7, remaining_TTL=12),
                     etcdpb.LeaseCheckpoint(ID=99, remaining_TTL=5)])))
    assert [(x.id, x.ttl, x.remaining_ttl) for x in sm.leases()] == [(7, 30, 12)]
    [r, again] = log.apply(etcd_command(6, "lease_revoke", etcdpb.LeaseRevokeRequest(ID=7)),
                           etcd_command(7, "lease_revoke", etcdpb.LeaseRevokeRequest(ID=7)))
    assert r.response == LeaseRevokeResult(4, 2)
    assert {(e.kv.key, e.kv.mod_revision) for e in r.events} == {(b"a", 4), (b"b", 4)}
    assert isinstance(again.mvcc_error, mvcc.LeaseNotFoundError)
    assert sm.leases() == [] and sm.get(b"a") is None and sm.keys_with_lease(7) == []
    [big] = log.apply(etcd_command(8, "lease_grant",
                                   etcdpb.LeaseGrantRequest(ID=9, TTL=9_000_000_001)))
    assert isinstance(big.mvcc_error, mvcc.LeaseTTLTooLargeError)


def test_a_version_this_kvraft_does_not_know_stops_the_apply(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    with pytest.raises(ClusterVersionTooNewError, match="run a newer kvraft"):
        Log(sm).apply(put_command(b"k", b"v"), cluster_version_command(3))
    assert sm.applied_index == 0  # nothing of the call is recorded


def test_version_revision_and_leases_survive_a_restart_and_a_snapshot(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "a", 1) as a:
        src = KVStateMachine(a)
        log = Log(src)
        log.apply(put_command(b"old", b"1"), cluster_version_command(2),
                  etcd_command(1, "lease_grant", etcdpb.LeaseGrantRequest(ID=5, TTL=60)),
                  etcd_command(2, "etcd_put", etcdpb.PutRequest(key=b"x", value=b"2", lease=5)),
                  put_command(b"y", b"3"))
        src_store = LevelDBStorage(a)
        src_store.persist([normal(i, b"") for i in range(1, 6)],
                          eraftpb.HardState(term=1, commit=5))
        with src.create_snapshot() as handle, DataDir.open(tmp_path / "b", 2) as b:
            dst_store, dst = LevelDBStorage(b), KVStateMachine(b)
            Log(dst).apply(put_command(b"stale", b"0"))     # a follower still at version 1
            receiver = dst.receive_snapshot(handle.metadata)
            for chunk in handle.chunks(1000):
                receiver.write(chunk)
            staged: StagedSnapshot = receiver.finish()
            dst.install_snapshot(staged, dst_store)
            assert dst.cluster_version == 2 and dst.revision == 4
            assert dst.get(b"stale") is None and dst.get(b"old") == b"1"
            assert dst.keys_with_lease(5) == [b"x"] and [x.id for x in dst.leases()] == [5]
            assert dst.range(mvcc.RangeRequest(b"\0", b"\0")).count == 3
    with DataDir.open(tmp_path / "a", 1) as a:
        again = KVStateMachine(a)
        assert (again.cluster_version, again.revision, again.applied_index) == (2, 4, 5)
        assert again.get(b"y") == b"3" and again.lease(5) is not None


def test_a_nospace_alarm_refuses_writes_that_add_data_until_disarmed(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    log = Log(sm)
    log.apply(cluster_version_command(2), put_command(b"a", b"1"), put_command(b"b", b"2"))

    def alarm(action: int, member: int = 3, kind: int = etcdpb.NOSPACE) -> bytes:
        return etcd_command(9, "alarm", etcdpb.AlarmRequest(action=action, memberID=member,
                                                            alarm=kind))

    [raised] = log.apply(alarm(etcdpb.AlarmRequest.ACTIVATE))
    assert [(a.member_id, a.alarm) for a in raised.response] == [(3, etcdpb.NOSPACE)]
    assert [(a.member_id, a.alarm) for a in sm.alarms()] == [(3, etcdpb.NOSPACE)]
    read_only_txn = etcdpb.TxnRequest(success=[etcdpb.RequestOp(
        request_range=etcdpb.RangeRequest(key=b"a"))])
    nested_put = etcdpb.TxnRequest(failure=[etcdpb.RequestOp(request_txn=etcdpb.TxnRequest(
        success=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"x"))]))])
    results = log.apply(
        put_command(b"c", b"3"),
        cas_command(b"a", b"1", b"9"),
        batch_command([(b"d", b"4")]),
        etcd_command(1, "etcd_put", etcdpb.PutRequest(key=b"e", value=b"5")),
        etcd_command(2, "etcd_txn", nested_put),
        etcd_command(3, "lease_grant", etcdpb.LeaseGrantRequest(ID=1, TTL=10)),
        # What frees space still applies:
        delete_command(b"b"),
        batch_command([(b"a", None)]),
        etcd_command(4, "etcd_txn", read_only_txn),
        etcd_command(5, "etcd_compact", etcdpb.CompactionRequest(revision=3)),
    )
    refused = [type(r.mvcc_error).__name__ for r in results[:6]]
    assert refused == ["NoSpaceError"] * 6
    assert str(results[0].mvcc_error) == "etcdserver: mvcc: database space exceeded"
    assert [r.ok for r in results[6:]] == [True] * 4
    assert sm.get(b"c") is None and sm.get(b"b") is None and sm.get(b"a") is None
    # A CORRUPT alarm of another member is kept apart when NOSPACE is disarmed.
    log.apply(alarm(etcdpb.AlarmRequest.ACTIVATE, member=1, kind=etcdpb.CORRUPT),
              alarm(etcdpb.AlarmRequest.DEACTIVATE))
    assert [(a.member_id, a.alarm) for a in sm.alarms()] == [(1, etcdpb.CORRUPT)]
    log.apply(alarm(etcdpb.AlarmRequest.DEACTIVATE, member=1, kind=etcdpb.CORRUPT))
    [ok] = log.apply(put_command(b"c", b"3"))
    assert ok.ok and sm.get(b"c") == b"3"


def test_a_corrupt_alarm_makes_the_store_read_only_until_disarmed(datadir: DataDir) -> None:
    """etcd's corrupt applier: with any member's CORRUPT alarm raised, every write of the
    data and the leases is refused with etcd's "corrupt cluster" (DATA_LOSS); lease
    checkpoints, auth and alarms still apply, so the alarm can be disarmed."""
    sm = KVStateMachine(datadir)
    log = Log(sm)
    log.apply(cluster_version_command(2), put_command(b"a", b"1"),
              etcd_command(1, "lease_grant", etcdpb.LeaseGrantRequest(ID=7, TTL=10)))

    def alarm(action: int) -> bytes:
        return etcd_command(9, "alarm", etcdpb.AlarmRequest(action=action, memberID=2,
                                                            alarm=etcdpb.CORRUPT))

    log.apply(alarm(etcdpb.AlarmRequest.ACTIVATE))
    revision = sm.revision
    results = log.apply(
        put_command(b"b", b"2"),
        delete_command(b"a"),
        cas_command(b"a", b"1", b"9"),
        batch_command([(b"a", None)]),
        etcd_command(2, "etcd_put", etcdpb.PutRequest(key=b"e", value=b"5")),
        etcd_command(3, "etcd_delete_range", etcdpb.DeleteRangeRequest(key=b"a")),
        etcd_command(4, "etcd_txn", etcdpb.TxnRequest(success=[etcdpb.RequestOp(
            request_delete_range=etcdpb.DeleteRangeRequest(key=b"a"))])),
        etcd_command(5, "etcd_compact", etcdpb.CompactionRequest(revision=2)),
        etcd_command(6, "lease_grant", etcdpb.LeaseGrantRequest(ID=8, TTL=10)),
        etcd_command(7, "lease_revoke", etcdpb.LeaseRevokeRequest(ID=7)),
        # Still applied:
        etcd_command(8, "lease_checkpoint", etcdpb.LeaseCheckpointRequest(
            checkpoints=[etcdpb.LeaseCheckpoint(ID=7, remaining_TTL=4)])),
    )
    assert [type(r.mvcc_error).__name__ for r in results[:10]] == ["CorruptError"] * 10
    assert (results[0].mvcc_error.code.name, str(results[0].mvcc_error)) == (
        "DATA_LOSS", "etcdserver: corrupt cluster")
    assert results[10].mvcc_error is None
    assert sm.revision == revision and sm.get(b"a") == b"1" and sm.get(b"b") is None
    assert sm.compact_revision == 0 and [r.id for r in sm.leases()] == [7]
    assert sm.lease(7).remaining_ttl == 4
    log.apply(alarm(etcdpb.AlarmRequest.DEACTIVATE))
    [ok] = log.apply(put_command(b"b", b"2"))
    assert ok.mvcc_error is None and sm.get(b"b") == b"2"


def test_a_compaction_waits_for_reads_in_flight_before_history_is_removed(
        datadir: DataDir) -> None:
    """A read of several steps checked the compact revision when it began; the apply
    that moves the compact revision waits for such reads, and history is removed only
    by later applies — so the read never finds a record it needs gone."""
    import threading

    sm = KVStateMachine(datadir)
    log = Log(sm)
    log.apply(cluster_version_command(2), *(put_command(b"k", b"v%d" % i) for i in range(5)))
    slot = sm._views.enter()            # a read in flight, as range() holds one
    applied = threading.Event()

    def compact() -> None:
        log.apply(etcd_command(1, "etcd_compact", etcdpb.CompactionRequest(revision=5)))
        applied.set()

    t = threading.Thread(target=compact)
    t.start()
    try:
        assert not applied.wait(0.5), "the compaction did not wait for the read in flight"
    finally:
        sm._views.leave(slot)
    t.join(timeout=30)
    assert applied.is_set() and sm.compact_revision == 5
    # The history below 5 goes with later applies, in bounded steps.
    log.apply(put_command(b"k", b"after"))
    with pytest.raises(mvcc.CompactedError):
        sm.range(mvcc.RangeRequest(b"k", revision=4))
    assert sm.range(mvcc.RangeRequest(b"k", revision=5)).kvs[0].value == b"v3"
