"""The KV state machine: SPEC §2 semantics per entry, results for the waiting
proposer, membership from conf-change entries, and exactly-once apply across restarts."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvraft.raft import eraftpb
from kvraft.storage import (
    DataDir,
    KVStateMachine,
    LevelDBStorage,
    MemberRecord,
    batch_command,
    cas_command,
    decode_command,
    delete_command,
    encode_members,
    put_command,
)
from kvraft.storage.commands import CommandDecodeError


def normal(index: int, data: bytes, term: int = 1) -> eraftpb.Entry:
    return eraftpb.Entry(index=index, term=term, data=data)


def test_put_get_delete_report_what_spec_says(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    results = sm.apply([
        normal(1, put_command(b"k", b"v1", request_id=11)),
        normal(2, delete_command(b"k", request_id=12)),
        normal(3, delete_command(b"k", request_id=13)),
        normal(4, put_command(b"k", b"v2", request_id=14)),
    ])
    assert [(r.index, r.request_id, r.kind) for r in results] == [
        (1, 11, "put"), (2, 12, "delete"), (3, 13, "delete"), (4, 14, "put")]
    assert results[1].deleted and not results[2].deleted
    assert sm.get(b"k") == b"v2"
    assert sm.get(b"missing") is None
    assert (sm.applied_index, sm.applied_term) == (4, 1)


def test_compare_and_swap_with_and_without_expected(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    r = sm.apply([
        normal(1, cas_command(b"k", None, b"a", request_id=1)),   # absent: swaps
        normal(2, cas_command(b"k", None, b"b", request_id=2)),   # exists: fails
        normal(3, cas_command(b"k", b"x", b"b", request_id=3)),   # wrong expected
        normal(4, cas_command(b"k", b"a", b"c", request_id=4)),   # right expected
        normal(5, cas_command(b"nope", b"a", b"c", request_id=5)),  # absent, expected given
    ])
    assert [(x.ok, x.found, x.current) for x in r] == [
        (True, False, None), (False, True, b"a"), (False, True, b"a"), (True, True, b"a"),
        (False, False, None)]
    assert sm.get(b"k") == b"c" and sm.get(b"nope") is None


def test_batch_is_atomic_and_ordered_with_deleted_per_delete(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    sm.apply([normal(1, put_command(b"a", b"1"))])
    (r,) = sm.apply([normal(2, batch_command(
        [(b"a", None), (b"a", None), (b"b", b"2"), (b"b", None), (b"c", b"3")],
        request_id=9))])
    assert r.kind == "batch" and r.request_id == 9
    assert r.deleted_list == [True, False, True]
    assert (sm.get(b"a"), sm.get(b"b"), sm.get(b"c")) == (None, None, b"3")


def test_later_entries_of_one_call_see_earlier_effects(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    r = sm.apply([normal(1, put_command(b"k", b"v")), normal(2, cas_command(b"k", b"v", b"w")),
                  normal(3, delete_command(b"k"))])
    assert r[1].ok and r[2].deleted and sm.get(b"k") is None


def test_empty_and_garbage_entries_only_advance_applied(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    r = sm.apply([normal(1, b""), normal(2, b"\x01\xff\xff"), normal(3, b"\x07abc")])
    assert [x.kind for x in r] == ["noop", "invalid", "invalid"]
    assert "unknown command encoding version 7" in r[2].error
    assert sm.applied_index == 3
    assert sm.scan(b"", b"", 0) == ([], False)


def test_command_encoding_round_trip_and_versioning() -> None:
    cmd = decode_command(cas_command(b"k", b"", b"v", request_id=2**64 - 1))
    assert cmd.request_id == 2**64 - 1 and cmd.cas.HasField("expected")
    assert not decode_command(cas_command(b"k", None, b"v")).cas.HasField("expected")
    with pytest.raises(CommandDecodeError):
        decode_command(b"")
    with pytest.raises(CommandDecodeError, match="version 2"):
        decode_command(b"\x02" + put_command(b"k", b"v")[1:])


def test_scan_ranges_limits_and_pages(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir, scan_page_entries_max=4, scan_page_bytes_max=1 << 20)
    sm.apply([normal(i + 1, put_command(b"k%02d" % i, b"v%d" % i)) for i in range(10)])
    kvs, more = sm.scan(b"k03", b"k06", 0)
    assert [k for k, _ in kvs] == [b"k03", b"k04", b"k05"] and not more
    kvs, more = sm.scan(b"k03", b"k06", 2)
    assert [k for k, _ in kvs] == [b"k03", b"k04"] and more
    kvs, more = sm.scan(b"", b"", 0)  # the server's page cap applies
    assert [k for k, _ in kvs] == [b"k00", b"k01", b"k02", b"k03"] and more
    kvs, more = sm.scan(b"k08", b"", 0)  # empty end: to the end of the key space
    assert [k for k, _ in kvs] == [b"k08", b"k09"] and not more
    kvs, more = sm.scan(b"k08", b"", 2)
    assert len(kvs) == 2 and not more  # nothing was left out


def test_scan_page_bytes_cap(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir, scan_page_bytes_max=25)
    sm.apply([normal(i + 1, put_command(b"k%d" % i, b"x" * 10)) for i in range(5)])
    kvs, more = sm.scan(b"", b"", 0)
    assert len(kvs) == 2 and more  # 12 bytes each; a third would pass 25


def test_conf_changes_record_members_and_conf_state_atomically(datadir: DataDir) -> None:
    sm = KVStateMachine(datadir)
    sm.initialize_members([MemberRecord(1, "p1", "c1")])
    add = eraftpb.ConfChange(id=77, change_type=eraftpb.AddLearnerNode, node_id=2)
    promote = eraftpb.ConfChangeV2(changes=[
        eraftpb.ConfChangeSingle(change_type=eraftpb.AddNode, node_id=2),
        eraftpb.ConfChangeSingle(change_type=eraftpb.RemoveNode, node_id=1)])
    entries = [
        eraftpb.Entry(index=1, term=2, entry_type=eraftpb.EntryConfChange,
                      data=add.SerializeToString(),
                      context=encode_members([MemberRecord(2, "p2", "c2", learner=True)])),
        eraftpb.Entry(index=2, term=2, entry_type=eraftpb.EntryConfChangeV2,
                      data=promote.SerializeToString()),
    ]
    states = [eraftpb.ConfState(voters=[1], learners=[2]),
              eraftpb.ConfState(voters=[2], voters_outgoing=[1])]
    seen: list[int] = []

    def on_conf_change(entry: eraftpb.Entry) -> eraftpb.ConfState:
        seen.append(entry.index)
        return states[entry.index - 1]

    r = sm.apply(entries, on_conf_change)
    assert seen == [1, 2]
    assert [x.kind for x in r] == ["conf_change", "conf_change"] and r[0].request_id == 77
    assert r[1].conf_state == states[1]
    assert sm.members() == [MemberRecord(2, "p2", "c2", learner=False)]
    assert sm.conf_state() == states[1]
    assert LevelDBStorage(datadir).initial_state().conf_state == states[1]


def test_restart_resumes_exactly_after_last_applied(tmp_path: Path) -> None:
    """Entries the log re-delivers after a restart are skipped, not applied twice."""
    with DataDir.open(tmp_path / "d", 1) as dd:
        sm = KVStateMachine(dd)
        sm.apply([normal(1, put_command(b"n", b"1")), normal(2, cas_command(b"n", b"1", b"2"))])
    with DataDir.open(tmp_path / "d", 1) as dd:
        sm = KVStateMachine(dd)
        assert (sm.applied_index, sm.get(b"n")) == (2, b"2")
        r = sm.apply([normal(1, put_command(b"n", b"1")), normal(2, cas_command(b"n", b"1", b"2")),
                      normal(3, cas_command(b"n", b"2", b"3"))])
        assert [x.index for x in r] == [3] and r[0].ok
        assert sm.get(b"n") == b"3"
        with pytest.raises(AssertionError, match="out of order"):
            sm.apply([normal(5, b"")])


def test_a_member_update_changes_addresses_only(datadir: DataDir) -> None:
    """A member's publish of its addresses (issue 11, item 5): the role stays what the
    conf changes made it; an update for a non-member records nothing."""
    from kvraft.storage import member_update_command

    sm = KVStateMachine(datadir)
    sm.initialize_members([MemberRecord(1, "p1"), MemberRecord(2, "p2", learner=True)])
    r = sm.apply([normal(1, member_update_command(2, "p2b", "c2", request_id=5)),
                  normal(2, member_update_command(1, "", "c1")),
                  normal(3, member_update_command(9, "p9", "c9"))])
    assert [(x.kind, x.ok, x.request_id) for x in r] == [
        ("member_update", True, 5), ("member_update", True, 0), ("member_update", False, 0)]
    assert sm.members() == [MemberRecord(1, "p1", "c1"),
                            MemberRecord(2, "p2b", "c2", learner=True)]
    assert sm.conf_state() == eraftpb.ConfState()  # no conf change, no conf state


def test_incarnations_are_learned_once_kept_by_adds_and_forgotten_by_removal(
        datadir: DataDir) -> None:
    """Issue 11, item 7: a member's publish records its data directory's incarnation
    when none is known; another one is refused; a promotion keeps it; a removal
    forgets it, so the id can be added again with a new directory."""
    from kvraft.storage import member_update_command

    def change(index: int, change_type: int, member: MemberRecord | None = None
               ) -> eraftpb.Entry:
        cc = eraftpb.ConfChange(change_type=change_type, node_id=2)
        return eraftpb.Entry(index=index, term=1, entry_type=eraftpb.EntryConfChange,
                             data=cc.SerializeToString(),
                             context=encode_members([member]) if member else b"")

    sm = KVStateMachine(datadir)
    r = sm.apply([
        change(1, eraftpb.AddLearnerNode, MemberRecord(2, "p2", "c2", learner=True)),
        normal(2, member_update_command(2, "p2", "c2", incarnation=0xAAA)),
        normal(3, member_update_command(2, "p2x", "c2x", incarnation=0xBBB)),  # replaced
        change(4, eraftpb.AddNode, MemberRecord(2, "p2", "c2")),  # promotion
    ])
    assert [x.ok for x in r] == [True, True, False, True]
    assert "incarnation 0000000000000bbb, the cluster knows 0000000000000aaa" in r[2].error
    assert sm.member(2) == MemberRecord(2, "p2", "c2", learner=False, incarnation=0xAAA)
    sm.apply([change(5, eraftpb.RemoveNode), change(6, eraftpb.AddNode, MemberRecord(2, "p2"))])
    assert sm.member(2) == MemberRecord(2, "p2", incarnation=0)
    (r7,) = sm.apply([normal(7, member_update_command(2, "p2", "c2", incarnation=0xBBB))])
    assert r7.ok and sm.member(2) is not None and sm.member(2).incarnation == 0xBBB
