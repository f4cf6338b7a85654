"""Watch clients of the simulated cluster, and what they must have seen.

A watch client watches one key range (a key, a prefix, every key; sometimes with
etcd's NOPUT or NODELETE filter) through a member's real WatchHub, as the Watch
service's stream does (watch.py: `hub.watch`, then `take` whenever the hub wakes it).
It starts from the next revision or from a past one. A session ends when the member
crashes (its tasks die), when the client moves to another member (a drawn time), or
when the hub ends the watch; the client then re-opens it — on any live member — from
its last received event's revision + 1 (or from its start, if it has received none),
as etcd's clients resume. Some consumers are slow (they sleep before taking), so small
hub buffers overflow and watchers catch up from the store.

Checked as events arrive: revisions never go back. Checked at the end, once every
member has applied the same final revision R and every client has drained its watch up
to R: across all its sessions, the client received exactly the committed events of its
key range (EventOrder.by_revision: the events every member's apply made, revision by
revision) from its start revision to R — each once, in order, no gap, no duplicate.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvraft.server.etcd.watch_hub import Watcher, WatchSpec
from kvraft.storage.mvcc import Event, EventType, KeyRange

from .cluster import SimCluster
from .events import EventOrder

# (key, range_end) a client may watch: the KV keys' prefix, the transaction group, the
# lease clients' keys, every key, one key.
RANGES = ((b"k", b"l"), (b"txn-group/", b"txn-group0"), (b"lease/", b"lease0"),
          (b"\0", b"\0"), (b"k0", b""))
SESSION_S_MEAN = 3.0     # a client moves to another member after about this long
SLOW_SHARE = 0.2         # of the takes, preceded by a pause of up to SLOW_MAX_S
SLOW_MAX_S = 0.3
TAKE_MAX = 64            # events a take asks for at most (drawn per take)

Received = tuple[int, int, bytes, bytes, int, int]   # revision, type, key, value, version, create


@dataclass
class WatchRecord:
    """One client's watch across its sessions: `start` is the first revision it covers
    (0 until the first session opens); `got` every event received, in arrival order;
    `done` once it has received everything up to the final revision."""

    client: int
    key: bytes
    range_end: bytes
    filter_put: bool
    filter_delete: bool
    prev_kv: bool
    start: int = 0
    got: list[Received] = field(default_factory=list)
    sessions: int = 0
    done: bool = False

    def describe(self) -> str:
        f = " NOPUT" if self.filter_put else " NODELETE" if self.filter_delete else ""
        return (f"watch client {self.client} [{self.key!r}, {self.range_end!r}){f} "
                f"from {self.start}")

    def resume_from(self) -> int:
        return self.got[-1][0] + 1 if self.got else self.start


@dataclass
class WatchClients:
    cluster: SimCluster
    rng: random.Random
    trace: Callable[[str], None]
    fail: Callable[[str], None]
    records: list[WatchRecord] = field(default_factory=list)
    # Set at the end: the revision every member has applied; clients finish once
    # they have received everything up to it.
    final_revision: int = 0
    _next_id: int = 0

    async def client(self, c: int) -> None:
        key, range_end = self.rng.choice(RANGES)
        roll = self.rng.random()
        rec = WatchRecord(c, key, range_end, filter_put=roll < 0.1,
                          filter_delete=0.1 <= roll < 0.2, prev_kv=self.rng.random() < 0.3)
        self.records.append(rec)
        from_revision = 0
        if self.rng.random() < 0.5:   # from a past revision, not from "now"
            revisions = [m.hub.revision for m in self.cluster.nodes.values() if m.hub]
            from_revision = self.rng.randint(1, max(1, *revisions, 1))
        loop = asyncio.get_running_loop()
        while not rec.done:
            alive = self.cluster.alive_ids()
            if not alive:
                await asyncio.sleep(0.1)
                continue
            member = self.rng.choice(alive)
            task = loop.create_task(self._session(rec, member, from_revision))
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()   # type: ignore[misc]
            from_revision = rec.resume_from()
            if not rec.done:
                await asyncio.sleep(self.rng.uniform(0.01, 0.2))

    async def _session(self, rec: WatchRecord, member: int, from_revision: int) -> None:
        m = self.cluster.nodes[member]
        hub = m.hub
        if hub is None:
            return
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        m.client_tasks[task] = None
        self._next_id += 1
        wake = asyncio.Event()
        w = hub.watch(self._next_id, WatchSpec(
            rec.key, rec.range_end, start_revision=from_revision, prev_kv=rec.prev_kv,
            filter_put=rec.filter_put, filter_delete=rec.filter_delete), wake)
        if rec.start == 0:
            rec.start = w.next_revision
        rec.sessions += 1
        self.trace(f"{rec.describe()}: session {rec.sessions} on node {member} from "
                   f"{w.next_revision}")
        end_s = loop.time() + self.rng.expovariate(1.0 / SESSION_S_MEAN)
        try:
            while True:
                if self.rng.random() < SLOW_SHARE:
                    await asyncio.sleep(self.rng.uniform(0.0, SLOW_MAX_S))
                for ev in w.take(self.rng.randint(1, TAKE_MAX)):
                    self._received(rec, ev)
                if self._caught_up(w):
                    rec.done = True
                    return
                wake.clear()
                if w.pending:
                    continue
                if w.closed:
                    self.trace(f"{rec.describe()}: ended by node {member}: "
                               f"{w.cancel_reason or f'compacted at {w.compact_revision}'}")
                    if w.compact_revision:
                        self.fail(f"{rec.describe()}: compacted at {w.compact_revision}, "
                                  "but the simulation never compacts")
                    return
                left_s = end_s - loop.time()
                if self.final_revision:
                    left_s = 0.1   # draining: look again soon (the hub wakes no one)
                elif left_s <= 0:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), left_s)
                except TimeoutError:
                    if not self.final_revision:
                        return
        finally:
            hub.cancel(w)
            m.client_tasks.pop(task, None)

    def _caught_up(self, w: Watcher) -> bool:
        return bool(self.final_revision) and w.next_revision > self.final_revision \
            and not w.pending and w.synced

    def _received(self, rec: WatchRecord, ev: Event) -> None:
        got = (ev.kv.mod_revision, int(ev.type), ev.kv.key, ev.kv.value, ev.kv.version,
               ev.kv.create_revision)
        if rec.got and got[0] < rec.got[-1][0]:
            self.fail(f"{rec.describe()}: received revision {got[0]} after {rec.got[-1][0]}")
        if ev.type == EventType.PUT and rec.prev_kv and ev.prev_kv is not None \
                and ev.prev_kv.mod_revision >= got[0]:
            self.fail(f"{rec.describe()}: prev_kv at {ev.prev_kv.mod_revision} of an event "
                      f"at {got[0]}")
        rec.got.append(got)

    # ---------------------------------------------------------------- the end
    def check(self, order: EventOrder) -> str | None:
        """Each client's events against the committed history; None if all hold."""
        for rec in self.records:
            keys = KeyRange.of(rec.key, rec.range_end)
            expected: list[Received] = []
            for revision in range(rec.start, self.final_revision + 1):
                for kind, key, value, version, create in order.by_revision.get(revision, ()):
                    if key not in keys:
                        continue
                    if (rec.filter_put and kind == int(EventType.PUT)) or \
                            (rec.filter_delete and kind == int(EventType.DELETE)):
                        continue
                    expected.append((revision, kind, key, value, version, create))
            if rec.got != expected:
                return (f"{rec.describe()} over {rec.sessions} session(s): "
                        f"{_diff(rec.got, expected)}")
        return None

    def events_received(self) -> int:
        return sum(len(r.got) for r in self.records)


def _diff(got: list[Received], expected: list[Received]) -> str:
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            return f"event {i}: received {g}, the history has {e}"
    if len(got) > len(expected):
        return f"received {len(got) - len(expected)} event(s) more, from {got[len(expected)]}"
    return (f"received {len(got)} of {len(expected)} events; missing from "
            f"{expected[len(got)]}")
