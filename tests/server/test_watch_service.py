"""etcd's Watch service over real gRPC on loopback: the stream protocol (create with a
server- or client-chosen id, refusals, cancel, progress requests and notifications,
compaction, hasleader), with etcd's own messages.

The member is a real in-process Node (for the header and its leader); the hub reads a
real MVCC store that the test writes, store first then fan-out, as apply does.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import mvccpb_pb2 as mvccpb
from kvraft.server.etcd import watch as watch_mod
from kvraft.server.etcd.watch import WatchService
from tests.server.inprocess import (
    InProcessCluster,
    free_port,
    node_config,
    open_node,
    wait_for,
)
from tests.server.test_watch_hub import Member

WAIT_S = 10.0
PROGRESS_S = 0.3


class Stream:
    """One client Watch stream: requests in, responses out, each read bounded."""

    def __init__(self, stub: etcdpb_grpc.WatchStub, metadata: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        self.requests: asyncio.Queue[etcdpb.WatchRequest | None] = asyncio.Queue()
        self.call = stub.Watch(self._gen(), metadata=metadata)

    async def _gen(self) -> AsyncIterator[etcdpb.WatchRequest]:
        while True:
            req = await self.requests.get()
            if req is None:
                return
            yield req

    def create(self, key: bytes, range_end: bytes = b"", **kw: Any) -> None:
        self.requests.put_nowait(etcdpb.WatchRequest(
            create_request=etcdpb.WatchCreateRequest(key=key, range_end=range_end, **kw)))

    def cancel(self, watch_id: int) -> None:
        self.requests.put_nowait(etcdpb.WatchRequest(
            cancel_request=etcdpb.WatchCancelRequest(watch_id=watch_id)))

    def progress(self) -> None:
        self.requests.put_nowait(etcdpb.WatchRequest(
            progress_request=etcdpb.WatchProgressRequest()))

    async def next(self, timeout_s: float = WAIT_S) -> etcdpb.WatchResponse:
        resp = await asyncio.wait_for(self.call.read(), timeout_s)
        assert resp is not grpc.aio.EOF, "the stream ended"
        return resp

    async def nothing_for(self, seconds: float) -> None:
        try:
            resp = await asyncio.wait_for(self.call.read(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response {resp}")


Scenario = Callable[[Member, etcdpb_grpc.WatchStub, Any], Coroutine[Any, Any, None]]


def run(tmp_path: Path, scenario: Scenario, *, members: int = 1) -> None:
    """A started Node (alone: it elects itself; of 3 with no peers running: never a
    leader), the Watch service on a real gRPC server over the hub of `Member`."""
    async def main() -> None:
        m = Member(tmp_path / "mvcc")
        config = node_config(tmp_path / "node", members=members)
        node, store = open_node(config)
        server = grpc.aio.server()
        port = free_port()
        etcdpb_grpc.add_WatchServicer_to_server(  # type: ignore[no-untyped-call]
            WatchService(node, m.hub, progress_interval_s=PROGRESS_S), server)
        assert server.add_insecure_port(f"127.0.0.1:{port}") != 0
        await server.start()
        node.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            if members == 1:
                await wait_for(lambda: node.raw.raft.leader_id == node.id, WAIT_S, "leader")
            await asyncio.wait_for(scenario(m, etcdpb_grpc.WatchStub(channel), node),
                                   WAIT_S * 3)
        finally:
            await channel.close()
            await server.stop(0)
            await node.stop()
            store.close()
            m.close()
    asyncio.run(main())


def test_create_events_and_cancel(tmp_path: Path) -> None:
    """etcd: created=true with a server-chosen id from 0; events with the header
    revision of the last one; cancel answered canceled=true, then nothing more."""
    async def scenario(m: Member, stub: etcdpb_grpc.WatchStub, node: Any) -> None:
        m.put(b"a", b"0")
        s = Stream(stub)
        s.create(b"a", prev_kv=True)
        s.create(b"p/", b"p0")
        c1, c2 = await s.next(), await s.next()
        assert (c1.created, c1.watch_id, c2.created, c2.watch_id) == (True, 0, True, 1)
        assert c1.header.revision == m.store.revision
        assert c1.header.member_id == node.id and c1.header.cluster_id == node.cluster_id
        r1 = m.put(b"a", b"1")
        r = await s.next()
        assert r.watch_id == 0 and r.header.revision == r1 and len(r.events) == 1
        ev = r.events[0]
        assert ev.type == mvccpb.Event.PUT and ev.kv.key == b"a" and ev.kv.value == b"1"
        assert ev.kv.mod_revision == r1 and ev.kv.version == 2
        assert ev.prev_kv.value == b"0"
        r2 = m.delete(b"a")
        r = await s.next()
        assert r.events[0].type == mvccpb.Event.DELETE and r.events[0].kv.mod_revision == r2
        m.put(b"p/x", b"px")
        r = await s.next()
        assert r.watch_id == 1 and r.events[0].kv.key == b"p/x"
        assert not r.events[0].HasField("prev_kv")
        s.cancel(0)
        r = await s.next()
        assert r.canceled and r.watch_id == 0
        m.put(b"a", b"2")
        await s.nothing_for(0.3)
        s.call.cancel()
    run(tmp_path, scenario)


def test_client_chosen_ids_duplicates_and_empty_range_are_etcds(tmp_path: Path) -> None:
    async def scenario(m: Member, stub: etcdpb_grpc.WatchStub, node: Any) -> None:
        s = Stream(stub)
        s.create(b"k", watch_id=7)
        r = await s.next()
        assert r.created and r.watch_id == 7 and not r.canceled
        s.create(b"k", watch_id=7)
        r = await s.next()
        assert r.created and r.canceled and r.watch_id == -1
        assert r.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
        s.create(b"b", b"a")
        r = await s.next()
        assert r.canceled and r.cancel_reason == "mvcc: watcher range is empty"
        s.create(b"k")                 # server-chosen: 0, not 7
        r = await s.next()
        assert r.created and r.watch_id == 0
        s.cancel(99)                   # unknown: no answer (etcd's)
        await s.nothing_for(0.3)
        s.call.cancel()
    run(tmp_path, scenario)


def test_history_replay_and_compacted_watch(tmp_path: Path) -> None:
    """A watch from an old revision gets the history, one revision per event here; one
    below the compact revision is created, then cancelled with compact_revision."""
    async def scenario(m: Member, stub: etcdpb_grpc.WatchStub, node: Any) -> None:
        revs = [m.put(b"h", str(i).encode()) for i in range(10)]
        m.store.compact(revs[4])
        s = Stream(stub)
        s.create(b"h", start_revision=revs[4])
        assert (await s.next()).created
        got: list[int] = []
        while len(got) < 6:
            r = await s.next()
            got += [e.kv.mod_revision for e in r.events]
            assert r.header.revision == r.events[-1].kv.mod_revision
        assert got == revs[4:]
        s.create(b"h", start_revision=revs[2])
        c = await s.next()
        assert c.created and c.watch_id == 1
        r = await s.next()
        assert r.watch_id == 1 and r.canceled and r.compact_revision == revs[4]
        s.call.cancel()
    run(tmp_path, scenario)


def test_progress_request_and_progress_notify(tmp_path: Path) -> None:
    """A progress request is answered with watch_id -1 and the revision every watch on
    the stream has delivered up to; progress_notify watches get one per idle interval."""
    async def scenario(m: Member, stub: etcdpb_grpc.WatchStub, node: Any) -> None:
        s = Stream(stub)
        s.create(b"n", progress_notify=True)
        assert (await s.next()).created
        rev = m.put(b"other", b"x")
        s.progress()
        r = await s.next()
        assert r.watch_id == -1 and not r.events and r.header.revision == rev
        r = await s.next(PROGRESS_S * 5)
        assert r.watch_id == 0 and not r.events and not r.canceled
        assert r.header.revision == rev
        s.call.cancel()
    run(tmp_path, scenario)


def test_progress_request_waits_for_a_watch_behind_to_catch_up(tmp_path: Path) -> None:
    """etcd #15220: a progress notification must not claim a revision a watch on the
    stream has not delivered up to. A watch replaying history holds it back."""
    async def scenario(m: Member, stub: etcdpb_grpc.WatchStub, node: Any) -> None:
        revs = [m.put(b"w", str(i).encode()) for i in range(30)]
        s = Stream(stub)
        s.create(b"w", start_revision=revs[0])
        s.progress()
        assert (await s.next()).created
        seen: list[int] = []
        while True:
            r = await s.next()
            if r.watch_id == -1:
                assert r.header.revision >= revs[-1]
                break
            seen += [e.kv.mod_revision for e in r.events]
        assert seen == revs               # every event came before the progress
        s.call.cancel()
    run(tmp_path, scenario)


def test_hasleader_on_a_member_without_a_leader_is_unavailable(tmp_path: Path) -> None:
    """etcd's WithRequireLeader: metadata hasleader=true and no leader -> UNAVAILABLE
    "etcdserver: no leader"; without the metadata the watch is served."""
    async def scenario(m: Member, stub: etcdpb_grpc.WatchStub, node: Any) -> None:
        assert node.raw.raft.leader_id == 0
        s = Stream(stub, metadata=(("hasleader", "true"),))
        s.create(b"k")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.next()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "etcdserver: no leader"
        plain = Stream(stub)
        plain.create(b"k")
        assert (await plain.next()).created
        plain.call.cancel()
    run(tmp_path, scenario, members=3)


def test_hasleader_stream_fails_when_the_leader_stays_lost(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """etcd's monitorLeader: a stream that asked for a leader ends UNAVAILABLE once its
    member has had none for NO_LEADER_ELECTIONS_MAX election timeouts — here a follower
    of 3 whose two peers stop; a stream without hasleader stays open."""
    monkeypatch.setattr(watch_mod, "NO_LEADER_ELECTIONS_MAX", 1)

    async def main() -> None:
        m = Member(tmp_path / "mvcc")
        async with InProcessCluster(tmp_path / "c", 3) as cluster:
            leader = await cluster.wait_leader()
            follower = next(i for i in cluster.nodes if i != leader)
            node = cluster.nodes[follower]
            server = grpc.aio.server()
            port = free_port()
            etcdpb_grpc.add_WatchServicer_to_server(  # type: ignore[no-untyped-call]
                WatchService(node, m.hub, progress_interval_s=PROGRESS_S), server)
            assert server.add_insecure_port(f"127.0.0.1:{port}") != 0
            await server.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            try:
                stub = etcdpb_grpc.WatchStub(channel)
                s = Stream(stub, metadata=(("hasleader", "true"),))
                plain = Stream(stub)
                s.create(b"k")
                plain.create(b"k")
                assert (await s.next()).created and (await plain.next()).created
                for i in cluster.nodes:
                    if i != follower:
                        await cluster.nodes[i].stop()
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    while True:
                        await s.next()
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
                assert e.value.details() == "etcdserver: no leader"
                assert node.raw.raft.leader_id == 0
                await plain.nothing_for(0.2)    # still open, nothing to say
                plain.call.cancel()
            finally:
                await channel.close()
                await server.stop(0)
                m.close()
    asyncio.run(asyncio.wait_for(main(), WAIT_S * 4))
