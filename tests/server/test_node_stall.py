"""A member keeps answering its peers whatever its disk does (issue 11, item 8).

Three real in-process Nodes (real stores, real peer transport on loopback) under a
steady write load; then every store's writes stall for several election timeouts, as
LevelDB stalls all writers while its compaction is behind. The leader must stay leader
(followers keep answering heartbeats), the event loop must keep running (no storage
write on it), and writes must be held back or refused retry-safely, not lost.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from kvraft.server.waiters import NodeError
from kvraft.storage import commands

from .inprocess import InProcessCluster, LagProbe, StallGate, wait_for

TICK_S = 0.05
ELECTION_TICK = 10            # elections after 0.5-1 s without a leader
STALL_S = 4.0                 # 4-8 election timeouts
# The event loop may fall behind by this much at worst: an eighth of the stall — far
# above what a healthy loop shows on a loaded 2-core machine (50-200 ms measured),
# far below what one stalled storage write on the loop would cost (the whole stall).
LAG_BOUND_S = 0.5
WRITE_INTERVAL_S = 0.01
WRITE_TIMEOUT_S = 20.0


def test_a_stalled_disk_on_every_member_costs_no_leader_and_does_not_block_the_loop(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        gate = StallGate()
        async with InProcessCluster(tmp_path, 3, tick_interval_s=TICK_S,
                                    election_tick=ELECTION_TICK) as cluster:
            for store in cluster.stores.values():
                gate.install(store)
            leader_id = await cluster.wait_leader()
            leader = cluster.nodes[leader_id]
            term = leader.raw.raft.term
            changes = cluster.leader_changes()
            outcomes: list[str] = []

            async def write(i: int) -> None:
                data = commands.put_command(b"k%06d" % i, b"v" * 100, i + 1)
                try:
                    await leader.propose(i + 1, data, WRITE_TIMEOUT_S)
                    outcomes.append("ok")
                except NodeError as e:
                    ok = e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.retry_safe
                    outcomes.append("refused" if ok else f"failed: {e.code.name} {e.message}")

            writes: list[asyncio.Task[None]] = []

            async def writer() -> None:
                i = 0
                while True:
                    writes.append(asyncio.ensure_future(write(i)))
                    i += 1
                    await asyncio.sleep(WRITE_INTERVAL_S)

            probe = LagProbe()
            probe.start()
            load = asyncio.ensure_future(writer())
            try:
                await wait_for(lambda: outcomes.count("ok") >= 20, 20.0, "writes before the stall")
                gate.arm()
                stalled_at = time.monotonic()
                while time.monotonic() - stalled_at < STALL_S:
                    await asyncio.sleep(0.05)
                    assert cluster.leader() == leader_id, (
                        f"leader {leader_id} lost its leadership "
                        f"{time.monotonic() - stalled_at:.2f} s into the stall")
                gate.release()
                ok_before_release = outcomes.count("ok")
                await wait_for(lambda: outcomes.count("ok") >= ok_before_release + 20, 20.0,
                               "writes after the stall")
            finally:
                gate.release()
                load.cancel()
                await asyncio.gather(*writes, return_exceptions=True)
                await probe.stop()
            print(f"stall of {STALL_S} s: max event-loop lag {probe.max_lag_s:.3f} s, "
                  f"{gate.stalled_calls} writes stalled, outcomes "
                  f"{ {o: outcomes.count(o) for o in set(outcomes)} }")
            assert gate.stalled_calls > 0, "the stall never held a storage write"
            assert gate.calls_on_loop == [], (
                f"storage writes ran on the event loop: {sorted(set(gate.calls_on_loop))}")
            assert cluster.leader_changes() == changes and leader.raw.raft.term == term, \
                "a leader change happened"
            assert probe.max_lag_s <= LAG_BOUND_S, (
                f"the event loop lagged {probe.max_lag_s:.3f} s (bound {LAG_BOUND_S} s)")
            failed = [o for o in outcomes if o not in ("ok", "refused")]
            assert not failed, f"writes failed: {failed[:3]}"

    asyncio.run(scenario())


def test_a_leader_whose_disk_stalls_holds_writes_back_then_refuses_them(
        tmp_path: Path) -> None:
    """Only the leader's store stalls: the followers commit, but the leader can neither
    make its entries durable nor apply them. New writes are held back once its
    uncommitted entries pass the limit, then refused with RESOURCE_EXHAUSTED (marked
    retry-safe: never proposed) — memory stays bounded and nobody freezes."""
    limit = 1 << 20
    value = b"v" * (32 << 10)
    write_timeout_s = 2.0

    async def scenario() -> None:
        gate = StallGate()
        async with InProcessCluster(tmp_path, 3, tick_interval_s=TICK_S,
                                    election_tick=ELECTION_TICK,
                                    uncommitted_bytes_max=limit) as cluster:
            leader_id = await cluster.wait_leader()
            leader = cluster.nodes[leader_id]
            gate.install(cluster.stores[leader_id])
            changes = cluster.leader_changes()
            outcomes: list[str] = []
            uncommitted_max = 0

            async def write(i: int) -> None:
                try:
                    await leader.propose(i + 1, commands.put_command(b"k%d" % i, value, i + 1),
                                         write_timeout_s)
                    outcomes.append("ok")
                except NodeError as e:
                    if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.retry_safe:
                        outcomes.append("refused")
                    elif e.code == grpc.StatusCode.UNAVAILABLE and "deadline" in e.message:
                        outcomes.append("timed out")   # admitted, then stuck in the stall
                    else:
                        outcomes.append(f"failed: {e.code.name} {e.message}")

            probe = LagProbe()
            probe.start()
            gate.arm()
            writes = []
            try:
                stalled_at = time.monotonic()
                i = 0
                while time.monotonic() - stalled_at < STALL_S:
                    writes.append(asyncio.ensure_future(write(i)))
                    i += 1
                    await asyncio.sleep(WRITE_INTERVAL_S)
                    uncommitted_max = max(uncommitted_max,
                                          leader.raw.raft.uncommitted_state.uncommitted_size)
                    assert cluster.leader() == leader_id, "the leader lost its leadership"
                gate.release()
                await asyncio.gather(*writes)
            finally:
                gate.release()
                await asyncio.gather(*writes, return_exceptions=True)
                await probe.stop()
            print(f"leader stalled {STALL_S} s: uncommitted at most {uncommitted_max} B "
                  f"(limit {limit}), lag {probe.max_lag_s:.3f} s, outcomes "
                  f"{ {o: outcomes.count(o) for o in set(outcomes)} }")
            assert outcomes.count("refused") > 0, "no write was refused"
            failed = [o for o in outcomes if o not in ("ok", "refused", "timed out")]
            assert not failed, f"writes failed otherwise: {failed[:3]}"
            assert uncommitted_max <= limit + len(value) + 4096, (
                f"{uncommitted_max} bytes uncommitted on the leader (limit {limit})")
            assert gate.calls_on_loop == []
            assert cluster.leader_changes() == changes, "a leader change happened"
            assert probe.max_lag_s <= LAG_BOUND_S

    asyncio.run(scenario())


def test_the_node_runs_its_storage_work_on_the_executors_it_is_given(tmp_path: Path) -> None:
    """The seam a simulation builds on (issue 15): persistence and applies go through
    the StorageIO passed in, and nothing else of the node's storage writes runs on the
    event loop."""
    from concurrent.futures import ThreadPoolExecutor

    from kvraft.server.storage_io import StorageIO

    from .inprocess import node_config, open_node

    class Counting(ThreadPoolExecutor):
        def __init__(self) -> None:
            super().__init__(max_workers=1)
            self.jobs = 0

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.jobs += 1
            return super().submit(fn, *args, **kwargs)

    async def scenario() -> None:
        persist, apply = Counting(), Counting()
        gate = StallGate()
        node, store = open_node(node_config(tmp_path / "n1", members=1, tick_interval_s=TICK_S),
                                io=StorageIO(persist, apply))
        gate.install(store)
        try:
            node.start()
            await wait_for(lambda: node.raw.raft.leader_id == 1, 10.0, "the node to lead")
            for i in range(5):
                await node.propose(i + 1, commands.put_command(b"k%d" % i, b"v", i + 1), 5.0)
            assert store.sm.get(b"k4") == b"v"
        finally:
            await node.stop()
            store.close()
            persist.shutdown()
            apply.shutdown()
        assert persist.jobs > 0 and apply.jobs > 0
        assert gate.calls_on_loop == []

    asyncio.run(scenario())


def test_the_node_sends_through_the_transport_and_reads_the_clock_it_is_given(
        tmp_path: Path) -> None:
    """The other seams a simulation builds on (issue 15): outbound messages go to the
    transport the factory made (nothing else: no gRPC channel is opened), and the
    ticker and pacing read the clock passed in."""
    import random

    from kvraft.proto import eraftpb_pb2 as eraftpb

    from .inprocess import node_config, open_node

    class Recording:
        def __init__(self) -> None:
            self.sent: list[eraftpb.Message] = []
            self.addresses: dict[int, str] = {}

        def send(self, messages: list[eraftpb.Message]) -> None:
            self.sent.extend(messages)

        def set_addresses(self, addresses: dict[int, str]) -> None:
            self.addresses = dict(addresses)

        def address_of(self, peer_id: int) -> str | None:
            return self.addresses.get(peer_id)

        async def close(self) -> None:
            pass

    async def scenario() -> None:
        transport = Recording()
        loop = asyncio.get_running_loop()
        clock_reads = 0

        def clock() -> float:
            nonlocal clock_reads
            clock_reads += 1
            return loop.time()

        node, store = open_node(node_config(tmp_path / "n1", members=3, tick_interval_s=TICK_S),
                                transport=lambda _node: transport, rng=random.Random(7),
                                clock=clock)
        try:
            node.start()
            await wait_for(lambda: any(m.msg_type == eraftpb.MsgRequestPreVote
                                       for m in transport.sent), 10.0, "a pre-vote request")
        finally:
            await node.stop()
            store.close()
        assert {m.to for m in transport.sent} == {2, 3}
        assert {2, 3} <= set(transport.addresses)
        assert clock_reads > 0, "the node never read the clock it was given"

    asyncio.run(scenario())
