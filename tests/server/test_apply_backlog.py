"""The apply backlog's bookkeeping (kvraft/server/apply_backlog.py): bounded in memory,
spilled entries read back in order, a snapshot resets it."""
from __future__ import annotations

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.server.apply_backlog import ApplyBacklog


def entries(first: int, count: int, size: int = 100) -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=i, term=1, data=b"x" * size) for i in range(first, first + count)]


def size_of(e: eraftpb.Entry) -> int:
    return e.ByteSize()


def test_entries_beyond_the_memory_bound_are_read_back_in_order() -> None:
    one = size_of(entries(1, 1)[0])
    backlog = ApplyBacklog(0, held_bytes_max=3 * one, batch_bytes_max=2 * one,
                           batch_entries_max=10)
    backlog.add(entries(1, 5))
    assert backlog.held_last == 3 and backlog.handed_out == 5
    assert backlog.entries == 5 and backlog.bytes == 5 * one
    applied: list[int] = []
    while (batch := backlog.next_batch()) is not None:
        assert backlog.next_batch() is None, "one batch at a time"
        got = batch.entries or entries(batch.read_from, 1)  # a read returns >= 1 entry
        if not batch.entries:
            assert batch.read_to == backlog.handed_out and batch.read_bytes_max == 2 * one
        applied.extend(e.index for e in got)
        backlog.complete(batch, got)
        if backlog.applied == 4:
            backlog.add(entries(6, 1))   # still spilled: it follows a spilled entry
            assert backlog.held_last == 4
    assert applied == [1, 2, 3, 4, 5, 6]
    assert backlog.entries == 0 and backlog.bytes == 0


def test_a_snapshot_replaces_the_backlog_even_with_a_batch_in_flight() -> None:
    backlog = ApplyBacklog(10, held_bytes_max=1 << 20, batch_bytes_max=1 << 20,
                           batch_entries_max=2)
    backlog.add(entries(11, 5))
    batch = backlog.next_batch()
    assert batch is not None and [e.index for e in batch.entries] == [11, 12]
    backlog.reset(20)
    assert backlog.entries == 0 and backlog.next_batch() is None
    backlog.complete(batch, batch.entries)
    assert backlog.applied == 20 and backlog.bytes == 0
    backlog.add(entries(21, 1))
    nxt = backlog.next_batch()
    assert nxt is not None and [e.index for e in nxt.entries] == [21]
