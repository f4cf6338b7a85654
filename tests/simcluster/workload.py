"""Clients of the simulated cluster: put, get and compare-and-swap on a few keys, and
multi-key transactions, recorded as a history for the project's linearizability
checker (tests/chaos/linearizability.py).

A transaction group is two keys written together by one etcd Txn (both to one unique
value) and read together; the checker sees the group as ONE register, so a read that
sees the two keys differ (a torn transaction) is a value nobody wrote and fails it.

They call the Node as the KV service does (kv_service.py): a write is `Node.propose`
of the storage command, a linearizable get is `Node.read_index` then a state-machine
read. Every written value is unique. Outcomes, as a real client would classify them:
a result -> a completed operation; a failure marked retry-safe (never proposed) -> the
operation did not happen; any other failure, or the member crashing under the call ->
a write's outcome is unknown (indeterminate: it may take effect at any later time, or
never), a read tells nothing.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.server import storage_adapter as sa
from kvraft.server.waiters import NodeError
from kvraft.storage import commands
from tests.chaos.linearizability import Kind, Op

from .cluster import SimCluster

TXN_GROUP = b"txn-group"                        # the register the checker sees
GROUP_KEYS = (b"txn-group/a", b"txn-group/b")   # the keys each transaction writes


@dataclass
class Acked:
    """An acknowledged write: the entry it was applied from must stay committed."""

    index: int
    data: bytes
    what: str


@dataclass
class Workload:
    cluster: SimCluster
    rng: random.Random
    keys: list[bytes]
    call_timeout_s: float
    think_max_s: float
    trace: Callable[[str], None]
    history: list[Op] = field(default_factory=list)
    acked: list[Acked] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    stopping: bool = False
    _next_op: int = 0
    _values: int = 0

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _pick_member(self) -> int | None:
        alive = self.cluster.alive_ids()
        if not alive:
            return None
        leader = self.cluster.leader()
        if leader is not None and self.rng.random() < 0.6:
            return leader
        return self.rng.choice(alive)

    async def client(self, c: int) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await asyncio.sleep(self.rng.uniform(0.0, self.think_max_s))
            member = self._pick_member()
            if member is None or self.stopping:
                continue
            roll = self.rng.random()
            kind = Kind.GET if roll < 0.4 else Kind.PUT if roll < 0.75 else Kind.CAS
            key = self.rng.choice(self.keys)
            if self.rng.random() < 0.2:   # a transaction group instead
                kind = Kind.GET if kind is Kind.GET else Kind.PUT
                key = TXN_GROUP
            task = loop.create_task(self.one(c, member, kind, key))
            await asyncio.wait({task})
            if task.result() is None:
                # Refused or failed (no leader, a crash): back off as a real client does.
                await asyncio.sleep(self.rng.uniform(0.05, 0.25))

    def _value(self, c: int) -> bytes:
        self._values += 1
        return b"c%d-v%d" % (c, self._values)

    def _expected(self, key: bytes) -> bytes | None:
        """A CAS expects a value recently written to the key (or absence), so that
        some succeed."""
        written = [op.value for op in self.history[-50:]
                   if op.key == key and op.kind is not Kind.GET and op.value is not None]
        if not written or self.rng.random() < 0.15:
            return None
        return self.rng.choice(written)

    async def one(self, c: int, member_id: int, kind: Kind, key: bytes) -> Op | None:
        """One call on `member_id`, recorded; returns the completed op, if it did."""
        m = self.cluster.nodes[member_id]
        node = m.node
        if node is None:
            return None
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        m.client_tasks[task] = None
        self._next_op += 1
        value = self._value(c) if kind is not Kind.GET else None
        expected = self._expected(key) if kind is Kind.CAS else None
        base = Op(id=self._next_op, client=c, key=key, kind=kind, invoke_s=loop.time(),
                  complete_s=None, value=value, expected=expected)
        request_id = self.rng.getrandbits(63) or 1
        what = f"client {c} {kind.value} {key.decode()}"
        try:
            if key == TXN_GROUP:
                done, what = await self._group(node, base, request_id, what)
            elif kind is Kind.GET:
                await node.read_index(self.call_timeout_s)
                got = node.store.sm.get(key)
                done = dataclasses.replace(base, complete_s=loop.time(), result=got)
                what += f" -> {got.decode() if got is not None else 'nil'}"
            elif kind is Kind.PUT:
                assert value is not None
                data = sa.encode_put(request_id, key, value)
                result = await node.propose(request_id, data, self.call_timeout_s)
                done = dataclasses.replace(base, complete_s=loop.time())
                self.acked.append(Acked(result.index, data, what))
                what += f" {value.decode()} -> ok at {result.index}"
            else:
                assert value is not None
                data = sa.encode_cas(request_id, key, expected, value)
                result = await node.propose(request_id, data, self.call_timeout_s)
                current = None if result.ok or not result.found else result.current
                done = dataclasses.replace(base, complete_s=loop.time(), result=result.ok,
                                           current=current, current_known=not result.ok)
                self.acked.append(Acked(result.index, data, what))
                what += (f" {expected.decode() if expected else 'nil'} -> {value.decode()}: "
                         f"{'ok' if result.ok else 'failed'} at {result.index}")
        except NodeError as e:
            self._failed(base, f"{what}: {e.code.name} {e.message}", certain=e.retry_safe)
            return None
        except asyncio.CancelledError:
            # The member crashed under the call: the connection broke.
            self._failed(base, f"{what}: the member went away", certain=False)
            return None
        finally:
            m.client_tasks.pop(task, None)
        self.history.append(done)
        self._count(f"{kind.value} ok")
        self.trace(f"{what} (node {member_id})")
        return done

    async def _group(self, node: object, base: Op, request_id: int, what: str
                     ) -> tuple[Op, str]:
        """A transaction on the group: one etcd Txn writing both keys, or a read of both
        after a ReadIndex."""
        loop = asyncio.get_running_loop()
        if base.kind is Kind.GET:
            await node.read_index(self.call_timeout_s)  # type: ignore[attr-defined]
            values = [node.store.sm.get(k) for k in GROUP_KEYS]  # type: ignore[attr-defined]
            got = values[0] if len(set(values)) == 1 else \
                b"torn:" + b",".join(v or b"-" for v in values)
            return dataclasses.replace(base, complete_s=loop.time(), result=got), \
                f"{what} -> {got!r}"
        assert base.value is not None
        txn = etcdpb.TxnRequest(success=[
            etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=k, value=base.value))
            for k in GROUP_KEYS])
        data = commands.etcd_command(request_id, "etcd_txn", txn)
        result = await node.propose(request_id, data, self.call_timeout_s)  # type: ignore[attr-defined]
        self.acked.append(Acked(result.index, data, what))
        return dataclasses.replace(base, complete_s=loop.time()), \
            f"{what} {base.value.decode()} -> ok at {result.index}"

    def _failed(self, base: Op, what: str, certain: bool) -> None:
        self.trace(what)
        if base.kind is Kind.GET:
            self._count("get failed")
        elif certain:
            self._count("write refused")
        else:
            self._count("write indeterminate")
            self.history.append(base)
