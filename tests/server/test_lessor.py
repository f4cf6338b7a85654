"""The lessor's rules (kvraft/server/etcd/lessor.py): first on its table with time
passed in (the leader's deadlines, renewals, expiry once per leadership, promotion from
the checkpointed remaining TTL plus the extension, which checkpoints are due), then on
real in-process nodes (revokes retried until applied, checkpoints across a leader
change)."""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.server import storage_adapter as sa
from kvraft.server.etcd.lessor import (
    LEASE_TTL_MAX_S,
    LeaseTable,
    Lessor,
    granted_ttl_s,
    min_lease_ttl_s,
)
from kvraft.server.waiters import NodeError
from kvraft.storage.commands import decode_command, etcd_command

from .inprocess import InProcessCluster, wait_for

EXTENSION_S = 1.0      # one election timeout of the default config (10 ticks of 0.1 s)
DIVERGENCE_S = 5.0


@dataclass(frozen=True)
class Record:
    """A lease as the state machine records it (LeaseRecord's fields)."""

    id: int
    ttl: int
    remaining_ttl: int = 0


def table(*, leading: bool = False, now: float = 0.0) -> LeaseTable:
    t = LeaseTable(extension_s=EXTENSION_S, checkpoint_divergence_s=DIVERGENCE_S)
    if leading:
        t.promote(now)
    return t


@pytest.mark.parametrize("election_timeout_s, expected", [
    (1.0, 2),     # etcd's default: 10 ticks of 100 ms -> ceil(1.5) = 2 s
    (0.2, 1),     # ceil(0.3) = 1
    (2.0, 3),     # exactly 3: no rounding up past it
    (5.0, 8),     # ceil(7.5)
])
def test_min_ttl_is_ceil_of_three_halves_of_the_election_timeout(
        election_timeout_s: float, expected: int) -> None:
    assert min_lease_ttl_s(election_timeout_s) == expected


def test_a_ttl_below_the_minimum_is_raised_to_it_and_others_are_kept() -> None:
    assert granted_ttl_s(1, 2) == 2
    assert granted_ttl_s(0, 2) == 2
    assert granted_ttl_s(60, 2) == 60
    assert LEASE_TTL_MAX_S == 9_000_000_000


def test_a_lease_granted_on_the_leader_expires_at_grant_time_plus_ttl() -> None:
    t = table(leading=True)
    t.grant(7, 10, now=100.0)
    assert t.next_deadline() == 110.0
    assert t.pop_expired(109.9, limit=10) == []
    assert t.pop_expired(110.0, limit=10) == [7]


def test_an_expired_lease_is_returned_once_and_is_never_renewed_again() -> None:
    t = table(leading=True)
    t.grant(7, 10, now=0.0)
    assert t.pop_expired(10.0, limit=10) == [7]
    assert t.pop_expired(20.0, limit=10) == []        # its revoke task owns it now
    assert t.renew(7, 20.0) == 0                      # etcd answers TTL 0
    assert t.remaining_s(7, 20.0) == 0.0


def test_a_renewal_moves_the_deadline_and_the_lazy_heap_follows_it() -> None:
    t = table(leading=True)
    t.grant(7, 10, now=0.0)
    assert t.renew(7, 7.0) == 10
    assert t.pop_expired(10.0, limit=10) == []        # the old entry came due: pushed again
    assert t.next_deadline() == 17.0
    assert t.pop_expired(17.0, limit=10) == [7]


def test_renewing_an_unknown_or_past_deadline_lease_answers_zero() -> None:
    t = table(leading=True)
    assert t.renew(99, 0.0) == 0
    t.grant(7, 10, now=0.0)
    assert t.renew(7, 10.5) == 0                      # past its deadline, not yet popped
    assert t.pop_expired(10.5, limit=10) == [7]


def test_expiry_is_bounded_per_call_and_the_rest_wait() -> None:
    t = table(leading=True)
    for i in range(1, 6):
        t.grant(i, 10, now=float(i))
    assert t.pop_expired(100.0, limit=2) == [1, 2]
    assert t.pop_expired(100.0, limit=10) == [3, 4, 5]


def test_a_revoked_lease_never_comes_due() -> None:
    t = table(leading=True)
    t.grant(7, 10, now=0.0)
    t.revoke(7)
    assert t.pop_expired(100.0, limit=10) == []
    assert t.remaining_s(7, 0.0) is None


def test_a_follower_clocks_nothing() -> None:
    t = table()
    t.grant(7, 10, now=0.0)
    assert t.next_deadline() is None
    assert t.pop_expired(1e9, limit=10) == []
    assert t.leases[7].deadline == 0.0


def test_a_new_leader_starts_from_the_checkpointed_remaining_plus_the_extension() -> None:
    """etcd #9395/#17132: a leader change neither restarts nor shortens a TTL."""
    t = table()
    t.load([Record(1, ttl=60, remaining_ttl=30), Record(2, ttl=60)], now=0.0)
    t.promote(now=500.0)
    assert t.remaining_s(1, 500.0) == 30 + EXTENSION_S
    assert t.remaining_s(2, 500.0) == 60 + EXTENSION_S
    assert t.pop_expired(500.0 + 30 + EXTENSION_S - 0.01, limit=10) == []
    assert t.pop_expired(500.0 + 30 + EXTENSION_S, limit=10) == [1]


def test_a_checkpoint_applied_on_the_leader_does_not_move_its_deadline() -> None:
    t = table(leading=True)
    t.grant(7, 60, now=0.0)
    t.checkpoint(7, 3)                                # e.g. an old leader's, stale
    assert t.remaining_s(7, 0.0) == 60
    assert t.leases[7].checkpointed == 3


def test_demotion_forgets_the_clock_and_a_second_promotion_restarts_it() -> None:
    t = table(leading=True)
    t.grant(7, 10, now=0.0)
    assert t.pop_expired(10.0, limit=10) == [7]
    t.demote()
    assert t.next_deadline() is None and not t.leases[7].revoking
    t.promote(now=50.0)
    assert t.remaining_s(7, 50.0) == 10 + EXTENSION_S
    assert t.pop_expired(61.0, limit=10) == [7]       # the new leadership revokes it again


def test_load_keeps_the_leaders_deadlines_and_clocks_new_leases_as_on_promotion() -> None:
    t = table(leading=True)
    t.grant(1, 10, now=0.0)
    t.renew(1, 4.0)
    t.load([Record(1, ttl=10), Record(2, ttl=20, remaining_ttl=8)], now=5.0)
    assert t.remaining_s(1, 5.0) == 9.0               # kept (deadline 14)
    assert t.remaining_s(2, 5.0) == 8 + EXTENSION_S
    t.load([Record(2, ttl=20, remaining_ttl=8)], now=6.0)
    assert 1 not in t.leases and t.pop_expired(100.0, limit=10) == [2]


def test_due_checkpoints_are_the_diverged_leases_farthest_first_and_bounded() -> None:
    t = table(leading=True)
    t.grant(1, 60, now=0.0)     # at t=20: remaining 40, recorded 60: divergence 20
    t.grant(2, 60, now=10.0)    # remaining 50: divergence 10
    t.grant(3, 60, now=16.0)    # remaining 56: divergence 4 < 5: not due
    t.grant(4, 5, now=19.0)     # TTL under the divergence: never due
    assert t.due_checkpoints(20.0, limit=10) == [(1, 40), (2, 50)]
    assert t.due_checkpoints(20.0, limit=1) == [(1, 40)]
    t.checkpoint(1, 40)
    assert t.due_checkpoints(20.0, limit=10) == [(2, 50)]
    t.renew(1, 21.0)            # back to 60: now 20 away from its checkpoint of 40
    assert t.due_checkpoints(21.0, limit=10)[0] == (1, 60)


def test_a_short_abandoned_lease_is_checkpointed_once_half_its_ttl_has_gone() -> None:
    """Else every failover gives it its whole TTL again (a chaos run saw a 6 s lease
    abandoned and alive 36 s later); one kept alive every TTL/3 is never due."""
    t = table(leading=True)
    t.grant(1, 6, now=0.0)          # abandoned
    t.grant(2, 6, now=0.0)          # kept alive every 2 s
    for now in (2.0, 4.0):
        t.renew(2, now)
        assert t.due_checkpoints(now + 0.5, limit=10) == ([] if now == 2.0 else [(1, 2)])
    t.checkpoint(1, 2)
    t.renew(2, 6.0)
    assert t.due_checkpoints(6.5, limit=10) == []


def test_a_checkpoint_rounds_up_and_never_exceeds_the_ttl() -> None:
    t = table()
    t.load([Record(1, ttl=60, remaining_ttl=10)], now=0.0)
    t.promote(now=0.0)          # deadline 11 (10 + the extension)
    t.leases[1].checkpointed = 30
    assert t.due_checkpoints(0.5, limit=10) == [(1, 11)]   # ceil(10.5)
    t2 = table()
    t2.load([Record(1, ttl=10, remaining_ttl=2)], now=0.0)
    t2.extension_s = 20.0
    t2.promote(now=0.0)         # 22 s on the clock, recorded as at most the TTL
    assert t2.due_checkpoints(0.0, limit=10) == [(1, 10)]


def _failover_run(rng: random.Random) -> tuple[bool, float]:
    """One lease kept alive every TTL/3 through leader A, which checkpoints every
    DIVERGENCE_S and dies at a random time; B is elected one election timeout later and
    clocks the lease from the last checkpoint A committed; the client's keep-alives
    reach B after a random delay under 3/4 of an election timeout (the docstring's d).
    Returns (B expired it before the client renewed on B, the margin left)."""
    ttl = rng.choice([2, 3, 5, 10, 30, 60])
    period = ttl / 3
    delay = rng.uniform(0, 0.74 * EXTENSION_S)
    a = table(leading=True)
    a.grant(1, ttl, now=0.0)
    death = rng.uniform(0, 10 * ttl + 20)
    now, next_checkpoint, checkpointed = 0.0, DIVERGENCE_S, 0
    renewals = [period * k + rng.uniform(0, delay) for k in range(1, 10_000)]
    for at in renewals:
        while next_checkpoint <= min(at, death):
            for lease_id, remaining in a.due_checkpoints(next_checkpoint, limit=10):
                assert lease_id == 1
                a.checkpoint(1, remaining)
                checkpointed = remaining
            next_checkpoint += DIVERGENCE_S
        if at >= death:
            break
        now = at
        assert a.pop_expired(now, limit=10) == []
        assert a.renew(1, now) == ttl
    b = table()
    b.load([Record(1, ttl=ttl, remaining_ttl=checkpointed)], now=0.0)
    elected = death + EXTENSION_S
    b.promote(now=elected)
    # The client sends on its own schedule; the first send after B leads arrives late.
    first = next(at for at in renewals if at > elected) + delay
    expired = b.pop_expired(first, limit=10) != []
    return expired, b.leases[1].deadline - first


def test_a_lease_kept_alive_every_third_of_its_ttl_survives_any_failover() -> None:
    """The docstring's argument, over many random failover times, TTLs and delays."""
    margins = []
    for seed in range(2_000):
        expired, margin = _failover_run(random.Random(seed))
        assert not expired, f"seed {seed}: the new leader expired a kept-alive lease"
        margins.append(margin)
    assert min(margins) > 0


# --- the lessor on real in-process nodes (inprocess.py: real Raft over real gRPC) -------

def _grant_command(lease_id: int, ttl: int) -> tuple[int, bytes]:
    request_id = sa.new_request_id()
    return request_id, etcd_command(request_id, "lease_grant",
                                    etcdpb.LeaseGrantRequest(ID=lease_id, TTL=ttl))


async def _lessors(cluster: InProcessCluster, **kwargs: Any) -> dict[int, Lessor]:
    lessors = {}
    for node_id, node in cluster.nodes.items():
        lessor = Lessor(node, **kwargs)
        lessor.attach()
        lessor.start()
        lessors[node_id] = lessor
    return lessors


def test_a_failed_revoke_is_proposed_again_until_the_lease_is_gone(tmp_path: Path) -> None:
    """etcd #10686: an expired lease whose revoke failed once was never revoked, and its
    keys lived forever. Here the leader's first two revoke proposals fail (injected at
    its propose, as a lost quorum would make them fail); the third goes through."""

    async def scenario() -> None:
        async with InProcessCluster(tmp_path, 3) as cluster:
            lessors = await _lessors(cluster)
            leader_id = await cluster.wait_leader()
            leader = cluster.nodes[leader_id]
            real_propose = leader.propose
            refused: list[int] = []

            async def propose(request_id: int, data: bytes, timeout_s: float) -> Any:
                if decode_command(data).WhichOneof("op") == "lease_revoke" and \
                        len(refused) < 2:
                    refused.append(request_id)
                    raise NodeError(grpc.StatusCode.UNAVAILABLE, "injected: no quorum")
                return await real_propose(request_id, data, timeout_s)

            leader.propose = propose  # type: ignore[method-assign]
            lease_id = 0x10686
            await leader.propose(*_grant_command(lease_id, 1), 5.0)
            await wait_for(lambda: all(s.sm.lease(lease_id) is None
                                       for s in cluster.stores.values()),
                           10.0, "every member to drop the expired lease")
            assert len(refused) == 2
            assert lessors[leader_id].revokes_proposed == 3
            for node_id, lessor in lessors.items():
                assert lease_id not in lessor.table.leases, node_id
                if node_id != leader_id:
                    assert lessor.revokes_proposed == 0   # only the leader expires
            for lessor in lessors.values():
                await lessor.stop()

    asyncio.run(scenario())


def test_a_new_leader_clocks_a_lease_from_its_replicated_checkpoint(tmp_path: Path) -> None:
    """etcd #9395/#17132: a leader change must not restart a lease's TTL. The leader
    checkpoints the remaining TTL through Raft; after a leadership transfer the new
    leader's clock starts from that checkpoint (plus the extension), not from the
    granted TTL."""

    async def scenario() -> None:
        async with InProcessCluster(tmp_path, 3) as cluster:
            lessors = await _lessors(cluster, checkpoint_interval_s=0.3)
            leader_id = await cluster.wait_leader()
            leader = cluster.nodes[leader_id]
            lease_id = 0x9395
            await leader.propose(*_grant_command(lease_id, 60), 5.0)

            def checkpointed() -> bool:
                records = [s.sm.lease(lease_id) for s in cluster.stores.values()]
                return all(r is not None and 0 < r.remaining_ttl <= 58 for r in records)

            await wait_for(checkpointed, 10.0, "a checkpoint of <= 58 s on every member")
            assert lessors[leader_id].checkpoints_proposed >= 1
            target = next(i for i in cluster.nodes if i != leader_id)
            await leader.transfer_leader(target, 10.0)
            await wait_for(lambda: lessors[target].leading, 10.0, "the new leader's lessor")
            record = cluster.stores[target].sm.lease(lease_id)
            assert record is not None
            remaining = lessors[target].remaining_s(lease_id)
            extension = lessors[target].table.extension_s
            assert remaining is not None
            assert remaining <= record.remaining_ttl + extension
            assert remaining < 60 - 1    # not restarted
            assert not lessors[leader_id].leading
            for lessor in lessors.values():
                await lessor.stop()

    asyncio.run(scenario())


# --- the lessor on a scripted node, on virtual time ----------------------------------

class _ScriptedNode:
    """What the lessor reads and calls of a Node, on a virtual clock: a leader whose
    proposals apply at once (the state machine holds the lease records)."""

    def __init__(self, loop: Any) -> None:
        from kvraft.raft import StateRole
        from kvraft.server.config import NodeConfig
        self.id = 1
        self.config = NodeConfig(node_id=1, data_dir=Path("unused"), listen="unused",
                                 peer_listen="unused", tick_interval_s=0.1,
                                 election_tick=10)
        self.clock = loop.time
        self.apply_listeners: list[Any] = []
        self.role_listeners: list[Any] = []
        self.records: dict[int, Record] = {}
        self.store = self
        self.sm = self
        self.stopping = False
        self.index = 0
        self._stopped = asyncio.Event()
        self.raw = type("Raw", (), {"raft": type("R", (), {"state": StateRole.Leader})()})()

    def leases(self) -> list[Record]:
        return list(self.records.values())

    def lease(self, lease_id: int) -> Record | None:
        return self.records.get(lease_id)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def propose(self, request_id: int, data: bytes, timeout_s: float) -> Any:
        from kvraft.proto import eraftpb_pb2 as eraftpb
        from kvraft.storage import ApplyResult
        command = decode_command(data)
        op = command.WhichOneof("op")
        if op == "lease_grant":
            self.records[command.lease_grant.ID] = Record(command.lease_grant.ID,
                                                          command.lease_grant.TTL)
        elif op == "lease_revoke":
            self.records.pop(command.lease_revoke.ID, None)
        else:
            for cp in command.lease_checkpoint.checkpoints:
                r = self.records[cp.ID]
                self.records[cp.ID] = Record(r.id, r.ttl, cp.remaining_TTL)
        self.index += 1
        result = ApplyResult(index=self.index, term=1, request_id=request_id, kind=op)
        for listener in self.apply_listeners:
            listener([eraftpb.Entry(index=self.index, data=data)], [result])
        return result


def test_a_renewal_after_a_lapse_reaches_the_replicated_record_before_a_failover() -> None:
    """A holder that lapsed (its lease checkpointed with 1 s left) renews: the record a
    new leader clocks from must say at least 2/3 of the TTL at once — not after the next
    checkpoint round, 5 s later, by when a failover has clocked the renewed lease from
    1 s + one election timeout. etcd's Renew resets the checkpointed remaining TTL
    likewise (etcd #13508: "Renew already includes logic that will reset remainingTTL").
    Seen while writing tests/simcluster's lease check (its margin: 2/3 of the TTL from
    the last acknowledged keep-alive)."""
    from tests.simcluster.loop import VirtualTimeLoop

    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)

    async def scenario() -> list[tuple[float, int]]:
        node = _ScriptedNode(loop)
        lessor = Lessor(node)  # type: ignore[arg-type]
        lessor.attach()        # leads: its rounds come every 5 s from now
        lessor.start()
        request_id, grant = _grant_command(1, 6)
        await node.propose(request_id, grant, 1.0)
        await asyncio.sleep(5.5)   # the round at 5.0 checkpointed 1 s left
        assert node.records[1].remaining_ttl == 1
        assert lessor.renew(1) == 6
        seen = []
        for _ in range(20):        # the next 2 s, as a new leader would read it
            await asyncio.sleep(0.1)
            seen.append((round(loop.time(), 1), node.records[1].remaining_ttl))
        node._stopped.set()
        await lessor.stop()
        return seen

    try:
        seen = loop.run_until_complete(scenario())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    recorded_at_6 = dict(seen)[6.0]
    assert recorded_at_6 >= 4, f"a new leader would clock the renewed lease from {seen}"


def test_a_batch_with_entries_applied_before_a_restart_is_paired_by_index() -> None:
    """The state machine gives no result for an entry it had applied before a restart
    (the log hands it out again), so an applied batch may carry more entries than
    results. The lessor zipped them strictly, raised ValueError in the apply listener,
    and the node failed (tests/simcluster seed 12: "node 1 failed: ValueError: zip()
    argument 2 is shorter than argument 1")."""
    from kvraft.proto import eraftpb_pb2 as eraftpb
    from kvraft.storage import ApplyResult
    from tests.simcluster.loop import VirtualTimeLoop

    loop = VirtualTimeLoop()
    node = _ScriptedNode(loop)
    lessor = Lessor(node)  # type: ignore[arg-type]
    node.raw.raft.state = None          # a follower: nothing clocked, nothing proposed
    lessor.attach()
    _, old = _grant_command(1, 6)
    new_id, new = _grant_command(2, 6)
    node.records[1] = Record(1, 6)
    node.records[2] = Record(2, 6)
    entries = [eraftpb.Entry(index=5, data=old), eraftpb.Entry(index=6, data=new)]
    results = [ApplyResult(index=6, term=1, request_id=new_id, kind="lease_grant")]
    for listener in node.apply_listeners:
        listener(entries, results)
    assert set(lessor.table.leases) == {2}
    loop.close()
