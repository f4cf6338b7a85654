"""The state machine equals a plain dict model for any sequence of commands, however
the entries are split into apply calls and whatever restarts happen in between; and a
snapshot of it streams into an identical copy for any chunk size."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft.raft import eraftpb
from kvraft.storage import (
    DataDir,
    KVStateMachine,
    LevelDBStorage,
    batch_command,
    cas_command,
    delete_command,
    put_command,
)

KEYS = st.sampled_from([b"a", b"b", b"c", b"\x00", b"\xff\xff", b"a\x00"])
VALUES = st.binary(max_size=12)
COMMANDS = st.one_of(
    st.tuples(st.just("put"), KEYS, VALUES),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("cas"), KEYS, st.none() | VALUES, VALUES),
    st.tuples(st.just("batch"), st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=5)),
    st.tuples(st.just("noop")),
)


def encode(cmd: tuple, request_id: int) -> bytes:
    kind = cmd[0]
    if kind == "put":
        return put_command(cmd[1], cmd[2], request_id)
    if kind == "delete":
        return delete_command(cmd[1], request_id)
    if kind == "cas":
        return cas_command(cmd[1], cmd[2], cmd[3], request_id)
    if kind == "batch":
        return batch_command(cmd[1], request_id)
    return b""


def model_apply(kv: dict[bytes, bytes], cmd: tuple) -> object:
    """SPEC §2 semantics, written independently of the state machine."""
    kind = cmd[0]
    if kind == "put":
        kv[cmd[1]] = cmd[2]
        return None
    if kind == "delete":
        return kv.pop(cmd[1], None) is not None
    if kind == "cas":
        before = kv.get(cmd[1])
        if before == cmd[2]:
            kv[cmd[1]] = cmd[3]
        return (before == cmd[2], before is not None, before)
    if kind == "batch":
        deleted = []
        for key, value in cmd[1]:
            if value is None:
                deleted.append(kv.pop(key, None) is not None)
            else:
                kv[key] = value
        return deleted
    return None


def observed(result: object, kind: str) -> object:
    if kind == "delete":
        return result.deleted
    if kind == "cas":
        return (result.ok, result.found, result.current)
    if kind == "batch":
        return result.deleted_list
    return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(COMMANDS, max_size=40),
       cuts=st.lists(st.integers(1, 8), min_size=1, max_size=40),
       restarts=st.lists(st.booleans(), min_size=1, max_size=40))
def test_state_machine_matches_a_dict_model(commands: list[tuple], cuts: list[int],
                                           restarts: list[bool]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kvraft-smprops-"))
    dd = DataDir.open(tmp / "d", 1)
    try:
        sm = KVStateMachine(dd)
        kv: dict[bytes, bytes] = {}
        entries = [eraftpb.Entry(index=i + 1, term=1, data=encode(c, i + 1))
                   for i, c in enumerate(commands)]
        pos = 0
        step = 0
        while pos < len(entries):
            size = cuts[step % len(cuts)]
            # Re-deliver a little of what was applied (as after a restart): skipped.
            replay_from = max(0, pos - 2) if restarts[step % len(restarts)] else pos
            if restarts[step % len(restarts)]:
                dd.close()
                dd = DataDir.open(tmp / "d", 1)
                sm = KVStateMachine(dd)
            results = sm.apply(entries[replay_from: pos + size])
            assert [r.index for r in results] == [e.index for e in entries[pos: pos + size]]
            for r, cmd in zip(results, commands[pos: pos + size], strict=True):
                want = model_apply(kv, cmd)
                assert r.request_id == (0 if cmd[0] == "noop" else r.index)
                assert observed(r, cmd[0]) == want, (cmd, r)
            pos += size
            step += 1
        assert sm.applied_index == len(entries)
        assert dict(sm.scan(b"", b"", 0)[0]) == kv
        for key in (b"a", b"b", b"zz"):
            assert sm.get(key) == kv.get(key)
    finally:
        dd.close()
        shutil.rmtree(tmp, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(st.binary(min_size=1, max_size=20), st.binary(max_size=300),
                            max_size=60),
       chunk_bytes=st.integers(1, 2000))
def test_snapshot_stream_round_trip_for_any_chunk_size(data: dict[bytes, bytes],
                                                       chunk_bytes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kvraft-snapprops-"))
    try:
        with DataDir.open(tmp / "a", 1) as a, DataDir.open(tmp / "b", 2) as b:
            src = KVStateMachine(a)
            ops = sorted(data.items())
            src.apply([eraftpb.Entry(index=1, term=4, data=batch_command(ops))])
            dst, dst_store = KVStateMachine(b), LevelDBStorage(b)
            with src.create_snapshot() as handle:
                receiver = dst.receive_snapshot(handle.metadata)
                for chunk in handle.chunks(chunk_bytes):
                    assert 0 < len(chunk) <= chunk_bytes
                    receiver.write(chunk)
                staged = receiver.finish()
            dst.install_snapshot(staged, dst_store)
            assert dict(dst.scan(b"", b"", 0)[0]) == data
            assert (dst.applied_index, dst.applied_term) == (1, 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
