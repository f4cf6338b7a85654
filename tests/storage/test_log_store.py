"""LevelDBStorage specifics beyond MemStorage parity: durability of one Ready per
write, reads concurrent with a persisting thread, the bounded tail cache."""
from __future__ import annotations

import threading
from pathlib import Path

from kvraft.raft import eraftpb
from kvraft.storage import DataDir, LevelDBStorage
from kvraft.storage.log_cache import LogTailCache


def entries(first: int, count: int, term_of=lambda i: i // 100 + 1) -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=i, term=term_of(i), data=b"d%d" % i)
            for i in range(first, first + count)]


def test_reads_from_another_thread_while_persisting(datadir: DataDir) -> None:
    """The persistence thread writes Readys while the event loop reads what is
    already persisted: every read answers, and answers right."""
    store = LevelDBStorage(datadir, cache_entries_max=50)
    errors: list[BaseException] = []
    total = 3000

    def writer() -> None:
        try:
            for first in range(1, total + 1, 30):
                store.persist(entries(first, 30), eraftpb.HardState(term=1, commit=first - 1))
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        while thread.is_alive() or reads == 0:
            last = store.last_index()
            if last == 0:
                continue
            assert store.term(last) == last // 100 + 1
            low = max(1, last - 120)  # reaches past the 50-entry cache into LevelDB
            got = store.entries(low, last + 1)
            assert [e.index for e in got] == list(range(low, last + 1))
            assert all(e.data == b"d%d" % e.index for e in got)
            reads += 1
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert store.last_index() == total and reads > 0


def test_one_ready_is_one_durable_write(tmp_path: Path) -> None:
    """Conflicting suffix, new entries and hard state land together; a reopen sees all."""
    with DataDir.open(tmp_path / "d", 1) as dd:
        store = LevelDBStorage(dd)
        store.persist(entries(1, 10, lambda i: 1), eraftpb.HardState(term=1, commit=5))
        store.persist(entries(7, 2, lambda i: 2), eraftpb.HardState(term=2, vote=3, commit=6))
    with DataDir.open(tmp_path / "d", 1) as dd:
        store = LevelDBStorage(dd)
        assert store.last_index() == 8
        assert [store.term(i) for i in range(1, 9)] == [1] * 6 + [2, 2]
        assert store.hard_state() == eraftpb.HardState(term=2, vote=3, commit=6)
        assert store.log_bytes() == sum(e.ByteSize() for e in store.entries(1, 9))


def test_tail_cache_is_bounded_and_follows_truncation() -> None:
    cache = LogTailCache(entries_max=5, bytes_max=1000)
    batch = entries(1, 8)
    cache.append(batch, [10] * 8)
    assert (cache.first, cache.last, len(cache)) == (4, 8, 5)
    cache.append(entries(6, 1, lambda i: 9), [10])  # conflict: 7 and 8 go
    assert cache.last == 6 and cache.get(6).term == 9 and cache.get(7) is None
    assert cache.slice(3, 5) is None and [e.index for e in cache.slice(4, 7)] == [4, 5, 6]
    cache.append(entries(20, 1), [10])  # a gap: restart from the new entries
    assert (cache.first, cache.last) == (20, 20)
    big = LogTailCache(entries_max=100, bytes_max=25)
    big.append(entries(1, 3), [10, 10, 10])
    assert (big.first, big.last) == (2, 3)  # bytes bound
    big.append(entries(4, 1), [500])
    assert (big.first, big.last) == (4, 4)  # the newest entry stays even if too big
