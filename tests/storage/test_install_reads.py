"""A snapshot install never makes reads wait (issue 11, item 6): the node serves Get,
Scan and members() on its event loop, so a read that waited for a long install would
stop heartbeats, acks and ticks. While an install is stalled half way (an injected
hook), reads complete and see the state from before the install; afterwards they see
the snapshot's."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.raft import eraftpb
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, MemberRecord, put_command
from kvraft.storage import snapshot as snapshot_module
from kvraft.storage import snapshot_install as install_module

READ_TIMEOUT_S = 10.0   # generous: a read that waits for the install never returns
STALL_TIMEOUT_S = 30.0


def build_staged(tmp_path: Path, dst: DataDir) -> snapshot_module.StagedSnapshot:
    with DataDir.open(tmp_path / "src", 2) as src_dd:
        store, sm = LevelDBStorage(src_dd), KVStateMachine(src_dd)
        store.initialize(eraftpb.ConfState(voters=[2]))
        sm.initialize_members([MemberRecord(2, "p2", "c2")])
        entries = [eraftpb.Entry(index=i, term=3, data=put_command(b"k%04d" % i, b"new"))
                   for i in range(1, 201)]
        store.persist(entries, eraftpb.HardState(term=3, commit=200))
        sm.apply(entries)
        with sm.create_snapshot() as handle:
            receiver = KVStateMachine(dst).receive_snapshot(handle.metadata)
            for chunk in handle.chunks(4096):
                receiver.write(chunk)
            return receiver.finish()


def in_thread(fn, timeout_s: float):  # type: ignore[no-untyped-def]
    """fn()'s result, or AssertionError if it does not return within timeout_s."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout_s)
    assert out, f"{getattr(fn, '__name__', fn)} waited for the snapshot install"
    return out[0]


@pytest.fixture
def stalled_install(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event,
                                                                       threading.Event]]:
    """Makes the next install stop after its first loaded records until released."""
    stalled, release = threading.Event(), threading.Event()
    real = install_module.iter_staged_records

    def stalling(path, expected):  # type: ignore[no-untyped-def]
        for i, record in enumerate(real(path, expected)):
            if i == 50:
                stalled.set()
                assert release.wait(STALL_TIMEOUT_S), "the test never released the install"
            yield record

    monkeypatch.setattr(install_module, "iter_staged_records", stalling)
    monkeypatch.setattr(install_module, "INSTALL_BATCH_BYTES", 500)  # written half way
    try:
        yield stalled, release
    finally:
        release.set()


def test_reads_and_members_do_not_wait_for_a_snapshot_install(
        tmp_path: Path, stalled_install: tuple[threading.Event, threading.Event]) -> None:
    stalled, release = stalled_install
    with DataDir.open(tmp_path / "dst", 1) as dd:
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        store.initialize(eraftpb.ConfState(voters=[1]))
        sm.initialize_members([MemberRecord(1, "p1", "c1")])
        old = [eraftpb.Entry(index=i, term=1, data=put_command(b"k%04d" % i, b"old"))
               for i in range(1, 31)]
        store.persist(old, eraftpb.HardState(term=1, commit=30))
        sm.apply(old)
        staged = build_staged(tmp_path, dd)
        installer = threading.Thread(target=sm.install_snapshot, args=(staged, store))
        installer.start()
        try:
            assert stalled.wait(STALL_TIMEOUT_S), "the install never reached the hook"
            # Half the image is in LevelDB now; readers still see the old state, whole.
            assert in_thread(lambda: sm.get(b"k0001"), READ_TIMEOUT_S) == b"old"
            assert in_thread(lambda: sm.get(b"k0100"), READ_TIMEOUT_S) is None
            kvs, more = in_thread(lambda: sm.scan(b"", b"", 0), READ_TIMEOUT_S)
            assert kvs == [(b"k%04d" % i, b"old") for i in range(1, 31)] and not more
            members = in_thread(sm.members, READ_TIMEOUT_S)
            assert [m.id for m in members] == [1]
            assert list(in_thread(sm.conf_state, READ_TIMEOUT_S).voters) == [1]
        finally:
            release.set()
            installer.join(STALL_TIMEOUT_S)
        assert not installer.is_alive()
        assert sm.applied_index == 200
        assert sm.get(b"k0001") == b"new" and sm.get(b"k0200") == b"new"
        assert len(sm.scan(b"", b"", 0)[0]) == 200
        assert [m.id for m in sm.members()] == [2]
