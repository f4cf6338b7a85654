"""Lease clients of the simulated cluster, and what their leases must do.

A lease client grants a lease (a TTL of whole seconds of virtual time, at least the
lessor's minimum), attaches two keys to it in one etcd Txn, keeps it alive every
TTL/5..TTL/3.3 while it holds it (again after 0.05..0.15 s when one fails), and reads
its keys now and then. Then, by a drawn fate: it keeps it alive to the end of the chaos
phase, or abandons it (stops keeping it alive), or revokes it; and starts over with a
new lease. Calls go to a member as the Lease service's do (lease.py): a grant or a
revoke is a proposal (a revoke after a ReadIndex), a keep-alive is a ReadIndex on the
leader then `Lessor.renew`; on a follower it is forwarded to the leader the follower
knows, if the link between them is up, after a network delay each way.

Checked:
* A lease whose holder keeps it alive is not expired early: its revoke is applied (by
  any member, the first time) no sooner than 2/3 of its TTL after the *send* time of
  its last acknowledged keep-alive (or grant) — the lessor's docstring argues a
  renewal holds for its TTL on the leader that made it and for at least 2T/3 - d + E
  on a leader elected later; a keep-alive answered TTL 0 counts the same.
* Revocation is atomic: a read of a lease's keys finds both or none; in the committed
  history, a lease's keys are deleted at one revision, together.
* Every lease goes away: once the clients stop and the cluster has a stable leader,
  every lease left (abandoned, kept alive until the stop, or granted by a call whose
  outcome was unknown) is revoked by expiry within its TTL plus a few election
  timeouts, on every member, with its keys.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import eraftpb
from kvraft.server.etcd.lessor import LEASE_GRANT, LEASE_REVOKE, granted_ttl_s
from kvraft.server.node import Node
from kvraft.server.waiters import NodeError
from kvraft.storage import ApplyResult
from kvraft.storage.commands import CommandDecodeError, decode_command, etcd_command
from kvraft.storage.mvcc import EventType, RangeRequest

from .cluster import SimCluster, SimMember
from .events import EventOrder

T = TypeVar("T")

PREFIX = b"lease/"
TTLS_S = (1, 2, 3, 5)
FATES = {"keep": 0.4, "abandon": 0.3, "revoke": 0.3}
HOLD_TTLS = (0.5, 4.0)        # a lease is held for this many TTLs before its fate
READ_SHARE = 0.3              # of the keep-alive rounds, followed by a read of the keys
EARLY_SHARE = 2.0 / 3.0       # of the TTL a renewal must hold for, at least


@dataclass
class LeaseRecord:
    """One lease a client asked for. `live`: its holder keeps it alive (it is neither
    abandoned nor being revoked); `acked_s`: the send time of its last acknowledged
    keep-alive or grant; `gone_s`: when its revoke was first applied."""

    client: int
    id: int
    ttl: int
    keys: tuple[bytes, ...]
    live: bool = False
    acked_s: float = 0.0
    gone_s: float | None = None
    renewals: int = 0

    def describe(self) -> str:
        return f"lease {self.id:x} (client {self.client}, TTL {self.ttl} s)"


@dataclass
class LeaseClients:
    cluster: SimCluster
    rng: random.Random
    call_timeout_s: float
    min_ttl_s: int
    trace: Callable[[str], None]
    fail: Callable[[str], None]
    leases: dict[int, LeaseRecord] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    stopping: bool = False
    _seq: int = 0

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # --------------------------------------------------------- the revoke check
    def attach(self, member_id: int, node: Node) -> None:
        """A start hook: follow the member's applied revokes."""
        node.apply_listeners.append(
            lambda entries, results: self._on_applied(entries, results))

    def _on_applied(self, entries: list[eraftpb.Entry], results: list[ApplyResult]) -> None:
        by_index = {r.index: r for r in results}   # none for an entry applied before
        for entry in entries:
            result = by_index.get(entry.index)
            if result is None or result.kind != LEASE_REVOKE or result.mvcc_error is not None:
                continue
            try:
                lease_id = decode_command(entry.data).lease_revoke.ID
            except CommandDecodeError:
                continue
            rec = self.leases.get(lease_id)
            if rec is None or rec.gone_s is not None:
                continue
            rec.gone_s = self._now()
            if rec.live:
                self._early(rec, "its revoke was applied")
                rec.live = False
                self._count("lease expired while kept alive")

    def _early(self, rec: LeaseRecord, what: str) -> None:
        held_until = rec.acked_s + EARLY_SHARE * rec.ttl
        if self._now() < held_until:
            self.fail(f"{rec.describe()}: {what} at {self._now():.3f} s, but its last "
                      f"acknowledged keep-alive was sent at {rec.acked_s:.3f} s (it holds "
                      f"to {held_until:.3f} s at least)")

    # ----------------------------------------------------------------- clients
    def _pick(self) -> SimMember | None:
        alive = self.cluster.alive_ids()
        return self.cluster.nodes[self.rng.choice(alive)] if alive else None

    async def _on(self, m: SimMember, call: Callable[[Node], Coroutine[Any, Any, T]]) -> T:
        """Run `call(node)` as a call on member m (its crash cancels it)."""
        node = m.node
        if node is None:
            raise ConnectionError("the member is down")
        task = asyncio.get_running_loop().create_task(call(node))
        m.client_tasks[task] = None
        try:
            return await task
        finally:
            m.client_tasks.pop(task, None)

    async def client(self, c: int) -> None:
        while not self.stopping:
            rec = await self._grant(c)
            if rec is None:
                await asyncio.sleep(self.rng.uniform(0.05, 0.25))
                continue
            await self._attach(rec)
            fate = self.rng.choices(list(FATES), weights=list(FATES.values()))[0]
            hold_until = self._now() + self.rng.uniform(*HOLD_TTLS) * rec.ttl
            renewed = True
            while rec.live and not self.stopping and (fate == "keep" or self._now() < hold_until):
                # After a failure, again soon (another member), as a client does.
                await asyncio.sleep(self.rng.uniform(0.2, 0.3) * rec.ttl if renewed
                                    else self.rng.uniform(0.05, 0.15))
                if rec.live and not self.stopping:
                    renewed = await self._keep_alive(rec)
                if rec.live and self.rng.random() < READ_SHARE:
                    await self._read_keys(rec)
            if not rec.live:
                continue   # it expired (its holder was cut off for too long)
            rec.live = False
            if fate == "revoke" and not self.stopping:
                await self._revoke(rec)
            else:
                self.trace(f"{rec.describe()}: abandoned")
                self._count("lease abandoned")

    async def _grant(self, c: int) -> LeaseRecord | None:
        m = self._pick()
        if m is None:
            return None
        self._seq += 1
        lease_id = self.rng.getrandbits(62) | 1
        ttl = granted_ttl_s(self.rng.choice(TTLS_S), self.min_ttl_s)
        rec = LeaseRecord(c, lease_id, ttl, tuple(PREFIX + b"%d/%d/%s" % (c, self._seq, x)
                                                  for x in (b"a", b"b")))
        self.leases[lease_id] = rec
        request_id = self.rng.getrandbits(63) or 1
        data = etcd_command(request_id, LEASE_GRANT, etcdpb.LeaseGrantRequest(ID=lease_id, TTL=ttl))
        sent_s = self._now()
        try:
            result = await self._on(m, lambda node: node.propose(request_id, data,
                                                                 self.call_timeout_s))
        except (NodeError, ConnectionError, asyncio.CancelledError) as e:
            # Perhaps granted: nobody keeps it alive; it must expire by itself.
            self._count("lease grant failed")
            self.trace(f"{rec.describe()}: grant on node {m.id} failed: {_what(e)}")
            if isinstance(e, NodeError) and e.retry_safe:
                del self.leases[lease_id]
            return None
        assert isinstance(result, ApplyResult)
        if result.mvcc_error is not None:
            self._count("lease grant refused")
            del self.leases[lease_id]
            return None
        rec.live, rec.acked_s = True, sent_s
        self._count("lease granted")
        self.trace(f"{rec.describe()}: granted on node {m.id} at {result.index}")
        return rec

    async def _attach(self, rec: LeaseRecord) -> None:
        m = self._pick()
        if m is None:
            return
        request_id = self.rng.getrandbits(63) or 1
        txn = etcdpb.TxnRequest(success=[
            etcdpb.RequestOp(request_put=etcdpb.PutRequest(
                key=k, value=b"%x" % rec.id, lease=rec.id)) for k in rec.keys])
        data = etcd_command(request_id, "etcd_txn", txn)
        try:
            result = await self._on(m, lambda node: node.propose(request_id, data,
                                                                 self.call_timeout_s))
        except (NodeError, ConnectionError, asyncio.CancelledError) as e:
            self.trace(f"{rec.describe()}: attach on node {m.id} failed: {_what(e)}")
            return
        assert isinstance(result, ApplyResult)
        self._count("lease keys attached" if result.mvcc_error is None else
                    "lease attach refused")

    async def _keep_alive(self, rec: LeaseRecord) -> bool:
        """One keep-alive; False if it failed (no answer)."""
        m = self._pick()
        if m is None or m.node is None:
            return False
        sent_s = self._now()
        try:
            ttl = await self._renew_via(m, rec.id)
        except (NodeError, ConnectionError, asyncio.CancelledError) as e:
            self._count("keep-alive failed")
            self.trace(f"{rec.describe()}: keep-alive on node {m.id} failed: {_what(e)}")
            return False
        if not rec.live:
            return True
        if ttl > 0:
            rec.acked_s = max(rec.acked_s, sent_s)
            rec.renewals += 1
            self._count("keep-alive ok")
            return True
        self._early(rec, "a keep-alive was answered TTL 0")
        self.trace(f"{rec.describe()}: expired (keep-alive answered TTL 0)")
        self._count("lease expired while kept alive")
        rec.live = False
        return True

    async def _renew_via(self, m: SimMember, lease_id: int) -> int:
        """LeaseService._keep_alive, in process: renew on the leader after a ReadIndex;
        a follower forwards to the leader it knows, over the simulated links."""
        node = m.node
        assert node is not None and m.lessor is not None
        if m.lessor.leading:
            return await self._renew_on(m, lease_id)
        leader = node.raw.raft.leader_id
        net = self.cluster.network
        target = self.cluster.nodes.get(leader)
        if target is None or target.node is None or (m.id, leader) in net.cut \
                or (leader, m.id) in net.cut:
            raise ConnectionError(f"no leader reachable from node {m.id}")
        f = net.faults
        await self._on(m, lambda _: asyncio.sleep(self.rng.uniform(f.delay_min_s, f.delay_max_s)))
        ttl = await self._renew_on(target, lease_id)
        await self._on(m, lambda _: asyncio.sleep(self.rng.uniform(f.delay_min_s, f.delay_max_s)))
        return ttl

    async def _renew_on(self, m: SimMember, lease_id: int) -> int:
        async def renew(node: Node) -> int:
            lessor = m.lessor
            if lessor is None or not lessor.leading:
                raise ConnectionError(f"node {m.id} does not lead")
            await node.read_index(min(self.call_timeout_s, 5.0))
            if m.lessor is not lessor or not lessor.leading:
                raise ConnectionError(f"node {m.id} no longer leads")
            return lessor.renew(lease_id)
        ttl = await self._on(m, renew)
        assert isinstance(ttl, int)
        return ttl

    async def _read_keys(self, rec: LeaseRecord) -> None:
        """A linearizable read of the lease's keys: both or none."""
        m = self._pick()
        if m is None:
            return

        async def read(node: Node) -> int:
            await node.read_index(self.call_timeout_s)
            group = rec.keys[0].rsplit(b"/", 1)[0]
            got = node.store.sm.range(RangeRequest(group + b"/", group + b"0"))
            return sum(1 for kv in got.kvs if kv.key in rec.keys)

        try:
            found = await self._on(m, read)
        except (NodeError, ConnectionError, asyncio.CancelledError):
            return
        if found not in (0, len(rec.keys)):
            self.fail(f"{rec.describe()}: a read on node {m.id} found {found} of its "
                      f"{len(rec.keys)} keys")

    async def _revoke(self, rec: LeaseRecord) -> None:
        m = self._pick()
        if m is None:
            return
        request_id = self.rng.getrandbits(63) or 1
        data = etcd_command(request_id, LEASE_REVOKE, etcdpb.LeaseRevokeRequest(ID=rec.id))

        async def revoke(node: Node) -> ApplyResult:
            await node.read_index(self.call_timeout_s)
            return await node.propose(request_id, data, self.call_timeout_s)

        try:
            await self._on(m, revoke)
        except (NodeError, ConnectionError, asyncio.CancelledError) as e:
            self._count("lease revoke failed")
            self.trace(f"{rec.describe()}: revoke on node {m.id} failed: {_what(e)}")
            return
        self._count("lease revoked")
        self.trace(f"{rec.describe()}: revoked on node {m.id}")
        store = m.store
        if store is not None and store.sm.lease(rec.id) is not None:
            self.fail(f"{rec.describe()}: still on node {m.id} after its revoke applied")

    # ---------------------------------------------------------------- the end
    def left_on(self, m: SimMember) -> list[int]:
        """The leases and lease keys member m still holds."""
        assert m.store is not None
        sm = m.store.sm
        kvs = sm.range(RangeRequest(PREFIX, b"lease0")).kvs
        return [r.id for r in sm.leases()] + [kv.lease or -1 for kv in kvs]

    def check_atomic(self, order: EventOrder) -> str | None:
        """In the committed history, each lease's keys are deleted at one revision."""
        deleted: dict[bytes, dict[int, set[bytes]]] = {}
        put: dict[bytes, set[bytes]] = {}
        for revision, sig in sorted(order.by_revision.items()):
            for kind, key, *_ in sig:
                if not key.startswith(PREFIX):
                    continue
                group = key.rsplit(b"/", 1)[0]
                if kind == int(EventType.DELETE):
                    deleted.setdefault(group, {}).setdefault(revision, set()).add(key)
                else:
                    put.setdefault(group, set()).add(key)
        for group, keys in put.items():
            at = deleted.get(group, {})
            if len(at) != 1 or next(iter(at.values())) != keys:
                return (f"the keys of {group.decode()} ({sorted(keys)}) were deleted as "
                        f"{ {r: sorted(k) for r, k in at.items()} }, not at one revision")
        return None


def _what(e: BaseException) -> str:
    if isinstance(e, NodeError):
        return f"{e.code.name} {e.message}"
    if isinstance(e, asyncio.CancelledError):
        return "the member went away"
    return str(e)
