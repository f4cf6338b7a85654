"""The watch hub against a real MVCC store on LevelDB (issue 12, "Watches").

The store plays the state machine: each write goes to the store first, then its events
(read back from the store's own history, with prev_kv, as apply hands them out) are
fanned out, as node.apply_listeners does after each applied entry. Every scenario
checks the promise of watch_hub.py: each watcher gets every matching event exactly
once, in revision order, with no gap — compared with the store's history itself.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plyvel
import pytest

from kvraft.server.etcd.watch_hub import Watcher, WatchHub, WatchSpec, event_revision
from kvraft.storage import mvcc
from kvraft.storage.mvcc import DeleteRangeRequest, Event, EventType, MVCCStore, PutRequest

WAIT_S = 10.0


class StoreSource:
    """An MVCCStore as the hub's EventSource: `events` returns a list of at most about
    `limit` events, whole revisions (the state machine's sm.events contract)."""

    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self.reads = 0

    @property
    def revision(self) -> int:
        return self.store.revision

    @property
    def compact_revision(self) -> int:
        return self.store.compact_revision

    def events(self, key: bytes, range_end: bytes, start_revision: int, *,
               prev_kv: bool = False, limit: int = 1000) -> list[Event]:
        self.reads += 1
        out: list[Event] = []
        gen = self.store.events(key, range_end, start_revision, prev_kv=prev_kv)
        try:
            for ev in gen:
                if len(out) >= limit and event_revision(ev) != event_revision(out[-1]):
                    break
                out.append(ev)
        finally:
            gen.close()
        return out


@dataclass
class Applied:
    """The two fields of ApplyResult the hub reads."""

    revision: int
    events: list[Event] = field(default_factory=list)


class Member:
    """A store, its hub, and writes that go store-first, then fan-out."""

    def __init__(self, path: Path, **hub_kwargs: Any) -> None:
        self.db = plyvel.DB(str(path), create_if_missing=True)
        self.store = MVCCStore(self.db, sync=False)
        self.source = StoreSource(self.store)
        self.hub = WatchHub(self.source, **hub_kwargs)

    def _applied(self, fan_out: bool = True) -> None:
        rev = self.store.revision
        events = list(self.store.events(b"\x00", b"\x00", rev, prev_kv=True,
                                        stop_revision=rev + 1))
        if fan_out:
            self.hub.on_applied([object()], [Applied(rev, events)])

    def put(self, key: bytes, value: bytes, *, fan_out: bool = True) -> int:
        self.store.put(PutRequest(key, value))
        self._applied(fan_out)
        return self.store.revision

    def delete(self, key: bytes, range_end: bytes = b"", *, fan_out: bool = True) -> int:
        self.store.delete_range(DeleteRangeRequest(key, range_end))
        self._applied(fan_out)
        return self.store.revision

    def txn_puts(self, keys: list[bytes], value: bytes) -> int:
        self.store.write_ops([PutRequest(k, value) for k in keys])
        self._applied()
        return self.store.revision

    def history(self, key: bytes, range_end: bytes, start: int, *,
                prev_kv: bool = False) -> list[Event]:
        return list(self.store.events(key, range_end, start, prev_kv=prev_kv))

    def close(self) -> None:
        self.hub.close()
        self.db.close()


def run(tmp_path: Path, scenario: Callable[[Member], Coroutine[Any, Any, None]],
        **hub_kwargs: Any) -> None:
    async def main() -> None:
        m = Member(tmp_path / "db", **hub_kwargs)
        try:
            await asyncio.wait_for(scenario(m), WAIT_S * 3)
        finally:
            m.close()
    asyncio.run(main())


class Consumer:
    """A stream's side of one watcher: waits on the wake event, takes events."""

    def __init__(self, hub: WatchHub, spec: WatchSpec, watch_id: int = 1,
                 take_max: int = 1000) -> None:
        self.wake = asyncio.Event()
        self.w: Watcher = hub.watch(watch_id, spec, self.wake)
        self.got: list[Event] = []
        self.take_max = take_max

    def drain(self) -> int:
        taken = self.w.take(self.take_max)
        self.got.extend(taken)
        return len(taken)

    async def until(self, what: str, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            self.drain()
            if cond():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {len(self.got)} "
                                     f"events, synced={self.w.synced}")
            self.wake.clear()
            if self.w.pending:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), left)

    async def until_count(self, n: int) -> None:
        await self.until(f"{n} events", lambda: len(self.got) >= n)


def revs(events: list[Event]) -> list[tuple[int, bytes, EventType]]:
    return [(event_revision(e), e.kv.key, e.type) for e in events]


def test_synced_watchers_get_each_matching_event_once_in_order(tmp_path: Path) -> None:
    """A key, a prefix and a range watched from now: each gets exactly its events."""
    async def scenario(m: Member) -> None:
        m.put(b"before", b"x")
        start = m.store.revision + 1
        one = Consumer(m.hub, WatchSpec(b"a/1"), 1)
        prefix = Consumer(m.hub, WatchSpec(b"a/", b"a0"), 2)
        rng = Consumer(m.hub, WatchSpec(b"a/2", b"a/4"), 3)
        everything = Consumer(m.hub, WatchSpec(b"\x00", b"\x00"), 4)
        assert all(c.w.synced for c in (one, prefix, rng, everything))
        r = random.Random(7)
        for i in range(120):
            key = f"a/{r.randrange(6)}".encode() if i % 5 else b"b/other"
            if r.random() < 0.2:
                m.delete(key)
            else:
                m.put(key, f"v{i}".encode())
            if i % 7 == 0:
                await asyncio.sleep(0)
        m.txn_puts([b"a/1", b"a/3", b"a/5"], b"txn")
        for c, (key, end) in ((one, (b"a/1", b"")), (prefix, (b"a/", b"a0")),
                              (rng, (b"a/2", b"a/4")), (everything, (b"\x00", b"\x00"))):
            want = m.history(key, end, start)
            await c.until_count(len(want))
            assert revs(c.got) == revs(want)
            assert [e.kv for e in c.got] == [e.kv for e in want]
            assert all(e.prev_kv is None for e in c.got)   # not asked for
        # The txn's three puts share one revision, in key order, in one take.
        assert revs(prefix.got)[-3:] == [(m.store.revision, k, EventType.PUT)
                                         for k in (b"a/1", b"a/3", b"a/5")]
        assert m.source.reads == 0                       # nobody needed the store
    run(tmp_path, scenario)


def test_watch_from_an_old_revision_replays_history_then_follows_live(tmp_path: Path) -> None:
    """start_revision in the past: the history from it comes from the store, in chunks,
    while writes keep coming; then live events, with no gap and no duplicate."""
    async def scenario(m: Member) -> None:
        for i in range(200):
            m.put(f"k{i % 10}".encode(), f"v{i}".encode())
        c = Consumer(m.hub, WatchSpec(b"k", b"l", start_revision=37), take_max=7)
        assert not c.w.synced
        for i in range(200, 300):
            m.put(f"k{i % 10}".encode(), f"v{i}".encode())
            if i % 3 == 0:
                await asyncio.sleep(0)
            c.drain()
        await c.until("the watcher to rejoin the fan-out", lambda: c.w.synced)
        for i in range(300, 320):
            m.put(f"k{i % 10}".encode(), f"v{i}".encode())
        want = m.history(b"k", b"l", 37)
        assert len(want) == m.store.revision - 37 + 1 == 285
        await c.until_count(len(want))
        assert revs(c.got) == revs(want)
        assert m.hub.catch_up_reads >= 2              # chunked: 20 events per read here
    run(tmp_path, scenario, chunk_events=20)


def test_slow_watcher_overflows_catches_up_and_never_slows_the_others(tmp_path: Path) -> None:
    """A watcher that does not read overflows its bounded buffer: the fan-out drops it
    and goes on (a fast watcher on the same hub gets every event at once); when it
    reads again it catches up from the store, with no gap and no duplicate."""
    async def scenario(m: Member) -> None:
        start = m.store.revision + 1
        slow = Consumer(m.hub, WatchSpec(b"p/", b"p0"), 1, take_max=5)
        fast = Consumer(m.hub, WatchSpec(b"p/", b"p0"), 2)
        for i in range(300):
            m.put(f"p/{i % 17}".encode(), str(i).encode())
            fast.drain()
            assert slow.w.pending <= 16                # the bound held
        assert len(fast.got) == 300 and fast.w.synced
        assert not slow.w.synced and m.hub.overflows == 1
        # It reads slowly, while writes go on.
        for i in range(300, 400):
            m.put(f"p/{i % 17}".encode(), str(i).encode())
            slow.drain()
            await asyncio.sleep(0)
        want = m.history(b"p/", b"p0", start)
        await slow.until_count(len(want))
        assert revs(slow.got) == revs(want)
        await slow.until("the slow watcher to rejoin", lambda: slow.w.synced)
        m.put(b"p/last", b"x")
        await slow.until_count(len(want) + 1)
        await fast.until_count(len(want) + 1)
        assert revs(slow.got) == revs(fast.got) == revs(m.history(b"p/", b"p0", start))
    run(tmp_path, scenario, buffer_events_max=16, chunk_events=10)


def test_watch_below_the_compact_revision_is_cancelled_with_it(tmp_path: Path) -> None:
    """etcd: a watch from a compacted revision is cancelled with compact_revision; one
    AT the compact revision is served (its events are kept)."""
    async def scenario(m: Member) -> None:
        for i in range(30):
            m.put(b"c", str(i).encode())
        m.store.compact(20)
        below = Consumer(m.hub, WatchSpec(b"c", start_revision=19), 1)
        assert below.w.closed and below.w.compact_revision == 20
        assert below.wake.is_set()
        at = Consumer(m.hub, WatchSpec(b"c", start_revision=20), 2)
        await at.until_count(m.store.revision - 20 + 1)
        assert [event_revision(e) for e in at.got] == list(range(20, m.store.revision + 1))
        assert not at.w.closed and at.w.compact_revision == 0
        assert m.hub.watchers == 1
    run(tmp_path, scenario)


def test_fallen_behind_watcher_whose_revision_is_compacted_is_cancelled(tmp_path: Path) -> None:
    """A slow watcher's next revision is compacted while it is behind: when it asks the
    store for it, it is cancelled with the compact revision — after being given what it
    already held, never a gap."""
    async def scenario(m: Member) -> None:
        start = m.store.revision + 1
        slow = Consumer(m.hub, WatchSpec(b"s"), 1)
        for i in range(40):
            m.put(b"s", str(i).encode())
        assert not slow.w.synced and slow.w.pending == 8
        m.store.compact(m.store.revision - 5)
        await slow.until("cancellation", lambda: slow.w.closed)
        assert slow.w.compact_revision == m.store.compact_revision
        assert [event_revision(e) for e in slow.got] == list(range(start, start + 8))
        assert m.hub.watchers == 0
    run(tmp_path, scenario, buffer_events_max=8)


def test_filters_leave_out_puts_or_deletes(tmp_path: Path) -> None:
    async def scenario(m: Member) -> None:
        start = m.store.revision + 1
        noput = Consumer(m.hub, WatchSpec(b"f", filter_put=True), 1)
        nodelete = Consumer(m.hub, WatchSpec(b"f", filter_delete=True), 2)
        for i in range(10):
            m.put(b"f", str(i).encode())
            if i % 3 == 0:
                m.delete(b"f")
        want = m.history(b"f", b"", start)
        await noput.until_count(4)
        await nodelete.until_count(10)
        assert revs(noput.got) == revs([e for e in want if e.type == EventType.DELETE])
        assert revs(nodelete.got) == revs([e for e in want if e.type == EventType.PUT])
        # The same filters on a replay from the store.
        old = Consumer(m.hub, WatchSpec(b"f", start_revision=start, filter_put=True), 3)
        await old.until("replay", lambda: old.w.synced)
        assert revs(old.got) == revs(noput.got)
    run(tmp_path, scenario)


def test_prev_kv_on_live_and_replayed_events(tmp_path: Path) -> None:
    async def scenario(m: Member) -> None:
        m.put(b"k", b"v0")
        start = m.store.revision + 1
        live = Consumer(m.hub, WatchSpec(b"k", prev_kv=True), 1)
        m.put(b"k", b"v1")
        m.delete(b"k")
        m.put(b"k", b"v2")
        await live.until_count(3)
        replay = Consumer(m.hub, WatchSpec(b"k", start_revision=start, prev_kv=True), 2)
        await replay.until_count(3)
        for c in (live, replay):
            e1, e2, e3 = c.got
            assert e1.type == EventType.PUT and e1.kv.value == b"v1"
            assert e1.prev_kv is not None and e1.prev_kv.value == b"v0"
            assert e2.type == EventType.DELETE and e2.prev_kv is not None
            assert e2.prev_kv.value == b"v1"
            assert e3.kv.value == b"v2" and e3.prev_kv is None   # the key did not exist
            assert e3.kv.version == 1
    run(tmp_path, scenario)


def test_snapshot_install_makes_watchers_catch_up_from_the_store(tmp_path: Path) -> None:
    """After a snapshot install (apply listeners called with ([], [])), revisions the
    fan-out never saw are read from the store; nothing is lost or repeated."""
    async def scenario(m: Member) -> None:
        start = m.store.revision + 1
        c = Consumer(m.hub, WatchSpec(b"x", b"y"), 1)
        m.put(b"x1", b"a")
        for i in range(25):          # the store moves on; the fan-out never hears
            m.put(f"x{i}".encode(), b"b", fan_out=False)
        m.hub.on_applied([], [])
        assert not c.w.synced and m.hub.revision == m.store.revision
        m.put(b"x2", b"live")
        want = m.history(b"x", b"y", start)
        assert len(want) == 27
        await c.until_count(27)
        assert revs(c.got) == revs(want)
    run(tmp_path, scenario)


def test_future_start_revision_gets_nothing_below_it(tmp_path: Path) -> None:
    async def scenario(m: Member) -> None:
        target = m.store.revision + 5
        c = Consumer(m.hub, WatchSpec(b"z", start_revision=target), 1)
        assert c.w.synced
        for i in range(8):
            m.put(b"z", str(i).encode())
        await c.until_count(4)
        assert [event_revision(e) for e in c.got] == list(range(target, target + 4))
    run(tmp_path, scenario)


def test_cancelled_watcher_gets_nothing_more(tmp_path: Path) -> None:
    async def scenario(m: Member) -> None:
        for i in range(10):
            m.put(b"q", str(i).encode())
        live = Consumer(m.hub, WatchSpec(b"q"), 1)
        old = Consumer(m.hub, WatchSpec(b"q", start_revision=1), 2)
        m.hub.cancel(live.w)
        m.hub.cancel(old.w)
        m.put(b"q", b"after")
        await asyncio.sleep(0.05)
        assert live.drain() == 0 and live.w.closed
        assert m.hub.watchers == 0
    run(tmp_path, scenario)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_watchers_random_pace_match_history(tmp_path: Path, seed: int) -> None:
    """Watchers from random start revisions reading at random paces, under writes,
    with overflows and catch-ups racing the fan-out: each one's events equal the
    store's history from its start."""
    async def scenario(m: Member) -> None:
        r = random.Random(seed)
        for i in range(50):
            m.put(f"r/{r.randrange(8)}".encode(), str(i).encode())
        consumers: list[tuple[Consumer, int, float]] = []
        for wid in range(1, 13):
            start = r.choice([0, 1, r.randrange(1, 50), 60])
            c = Consumer(m.hub, WatchSpec(b"r/", b"r0", start_revision=start), wid,
                         take_max=r.choice([1, 3, 50]))
            first = start if start > 0 else m.store.revision + 1
            consumers.append((c, first, r.random()))
        for i in range(50, 400):
            if r.random() < 0.15:
                m.delete(f"r/{r.randrange(8)}".encode())
            else:
                m.put(f"r/{r.randrange(8)}".encode(), str(i).encode())
            for c, _, pace in consumers:
                if r.random() < pace:
                    c.drain()
            if i % 10 == 0:
                await asyncio.sleep(0)
        for c, first, _ in consumers:
            want = m.history(b"r/", b"r0", first)
            await c.until_count(len(want))
            assert revs(c.got) == revs(want), f"watch {c.w.id} from {first}"
        assert m.hub.overflows >= 1
    run(tmp_path, scenario, buffer_events_max=12, chunk_events=9)


def test_a_catch_up_read_error_that_is_not_compaction_ends_the_watch(tmp_path: Path) -> None:
    async def scenario(m: Member) -> None:
        for i in range(5):
            m.put(b"e", str(i).encode())

        def broken(*args: Any, **kwargs: Any) -> list[Event]:
            raise OSError("disk gone")
        m.source.events = broken  # type: ignore[method-assign]
        c = Consumer(m.hub, WatchSpec(b"e", start_revision=1), 1)
        await c.until("the watch to end", lambda: c.w.closed)
        assert c.w.cancel_reason and c.w.compact_revision == 0 and m.hub.watchers == 0
    run(tmp_path, scenario)


def test_compacted_error_type_is_the_stores(tmp_path: Path) -> None:
    """The hub relies on the store raising CompactedError with the compact revision."""
    async def scenario(m: Member) -> None:
        for i in range(5):
            m.put(b"t", str(i).encode())
        m.store.compact(4)
        with pytest.raises(mvcc.CompactedError) as e:
            m.source.events(b"t", b"", 2)
        assert e.value.compact_revision == 4
    run(tmp_path, scenario)


def test_hub_fed_by_a_real_nodes_apply_and_its_state_machine(tmp_path: Path) -> None:
    """The wiring: a started single-member Node applies etcd's Put/DeleteRange/Compact
    proposed through Raft; the hub is an apply listener over its state machine. A live
    watcher, one replaying from revision 1 and one that overflows its tiny buffer all
    see the store's history; a watch below the compaction is cancelled with it."""
    from kvraft.proto import etcdserverpb_pb2 as etcdpb
    from kvraft.server import storage_adapter as sa
    from kvraft.storage.commands import etcd_command
    from tests.server.inprocess import node_config, open_node, wait_for

    async def main() -> None:
        node, store = open_node(node_config(tmp_path / "node", members=1))
        node.start()
        try:
            await wait_for(lambda: node.raw.raft.leader_id == node.id, WAIT_S, "leader")
            await wait_for(lambda: node.store.sm.cluster_version >= 2, WAIT_S, "MVCC")
            hub = WatchHub(node.store.sm, buffer_events_max=4, chunk_events=3)
            node.apply_listeners.append(hub.on_applied)

            async def propose(op: str, req: Any) -> int:
                rid = sa.new_request_id()
                result = await node.propose(rid, etcd_command(rid, op, req), 5.0)
                assert result.mvcc_error is None, result.mvcc_error
                return result.revision

            live = Consumer(hub, WatchSpec(b"n/", b"n0", prev_kv=True), 1)
            slow = Consumer(hub, WatchSpec(b"n/", b"n0"), 2)
            first = hub.revision + 1
            for i in range(30):
                await propose("etcd_put", etcdpb.PutRequest(key=f"n/{i % 4}".encode(),
                                                            value=str(i).encode()))
                if i % 9 == 0:
                    await propose("etcd_delete_range",
                                  etcdpb.DeleteRangeRequest(key=b"n/", range_end=b"n0"))
                live.drain()
            assert hub.overflows >= 1 and not slow.w.synced
            want = node.store.sm.events(b"n/", b"n0", first, prev_kv=True, limit=10_000)
            await live.until_count(len(want))
            await slow.until_count(len(want))
            assert revs(live.got) == revs(slow.got) == revs(want)
            assert [e.prev_kv for e in live.got] == [e.prev_kv for e in want]
            old = Consumer(hub, WatchSpec(b"n/", b"n0", start_revision=1), 3)
            await old.until("the replay", lambda: old.w.synced)
            assert revs(old.got)[-len(want):] == revs(want)
            rev = await propose("etcd_put", etcdpb.PutRequest(key=b"x", value=b"x"))
            await propose("etcd_compact", etcdpb.CompactionRequest(revision=rev))
            cut = Consumer(hub, WatchSpec(b"n/", b"n0", start_revision=first), 4)
            assert cut.w.closed and cut.w.compact_revision == rev
        finally:
            await node.stop()
            store.close()
    asyncio.run(asyncio.wait_for(main(), WAIT_S * 3))


def test_large_values_overflow_the_byte_bound_and_catch_up_in_smaller_chunks(
        tmp_path: Path) -> None:
    """The buffer is bounded in bytes as well as events: a slow watcher of large values
    overflows after a few, then catches up in chunks sized to the byte target."""
    async def scenario(m: Member) -> None:
        start = m.store.revision + 1
        c = Consumer(m.hub, WatchSpec(b"big/", b"big0"), 1, take_max=2)
        big = b"x" * 10_000
        for i in range(40):
            m.put(f"big/{i % 3}".encode(), big + str(i).encode())
            assert c.w._buffer_bytes <= 30_000 + 11_000
        assert not c.w.synced and m.hub.overflows == 1
        assert c.w.pending <= 3
        reads_before = m.hub.catch_up_reads
        want = m.history(b"big/", b"big0", start)
        await c.until_count(len(want))
        assert [e.kv.value for e in c.got] == [e.kv.value for e in want]
        # ~25 KB per chunk at ~10 KB per event: 2 events a read, not 100.
        assert m.hub.catch_up_reads - reads_before >= (len(want) - 3) // 3
    run(tmp_path, scenario, buffer_bytes_max=30_000, chunk_events=100, chunk_bytes=25_000)


def test_a_broken_fan_out_ends_every_watch_with_a_reason_not_the_member(
        tmp_path: Path) -> None:
    """An entry whose events lie about their revision breaks the hub's invariant: the
    apply listener does not raise (the member's apply goes on); every watch ends with a
    reason; new watches work."""
    async def scenario(m: Member) -> None:
        c = Consumer(m.hub, WatchSpec(b"b"), 1)
        m.put(b"b", b"1")
        rev = m.store.revision
        bad = Event(EventType.PUT, mvcc.KeyValue(b"b", 1, rev + 5, 1, b"x"))
        m.hub.on_applied([object()], [Applied(rev + 1, [bad])])
        assert c.w.closed and c.w.cancel_reason and m.hub.watchers == 0
        again = Consumer(m.hub, WatchSpec(b"b"), 2)
        m.put(b"b", b"2")
        await again.until_count(1)
        assert again.got[0].kv.value == b"2"
    run(tmp_path, scenario)
