"""The chaos run's clients of etcd's v3 API, beside the kvraft workload (workload.py),
under the same faults. They speak etcd's gRPC services directly (etcdserverpb stubs),
as etcd's own clients do, each over a channel to one member, moving to the next member
when a call fails.

* TxnGroups: multi-key transactions. A group of three keys is written by one Txn (all
  three to one unique value) and read by one Txn (the three ranges). For the
  linearizability checker the group is ONE register (its keys must always be equal): a
  write is a put of the value, a read returns the value, or a torn marker that no write
  wrote (so a torn read fails the check).
* Watchers: watches on the whole chaos prefix from revision 1, resumed after any
  failure on another member from the last revision received + 1.
* Leases: holders that grant a lease, attach a key to it and keep it alive every TTL/3;
  some abandon theirs at a random time.
* Fencing: lockers that take a lock by etcd's recipe (a key under the lock's prefix
  with the holder's lease, created by a Txn; the holder is the key with the lowest
  create revision, whose create revision is the fencing token) and write the fenced
  resource through a Txn that compares their lock key's create revision with their
  token. Some pause longer than their lease's TTL while holding: their write must then
  be refused (counted).

A write whose call failed is indeterminate (it may have been applied); a read that
failed is dropped.
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcd_grpc
from kvraft.proto import mvccpb_pb2 as mvccpb
from tests.chaos.etcd_checks import (
    KeepAlive,
    LeaseLog,
    WatcherLog,
    WatchEvent,
    check_fencing,
    check_leases,
    check_watchers,
)
from tests.chaos.linearizability import Kind, Op

PREFIX = b"chaos-"
PREFIX_END = b"chaos."            # the first key after every chaos- key
CALL_TIMEOUT_S = 2.0
LEASE_TTL_S = 6
LOCK_TTL_S = 3
LOCK_PREFIX = b"chaos-lock/"
FENCED_KEY = b"chaos-fenced"
TORN = b"torn:"


class _Endpoints:
    """A channel to one member at a time; `next()` moves to another."""

    def __init__(self, endpoints: list[str], rng: random.Random) -> None:
        self._endpoints = list(endpoints)
        rng.shuffle(self._endpoints)
        self._i = 0
        self.channel = grpc.insecure_channel(self._endpoints[0])

    def next(self) -> None:
        self.channel.close()
        self._i = (self._i + 1) % len(self._endpoints)
        self.channel = grpc.insecure_channel(self._endpoints[self._i])

    def kv(self) -> etcd_grpc.KVStub:
        return etcd_grpc.KVStub(self.channel)

    def lease(self) -> etcd_grpc.LeaseStub:
        return etcd_grpc.LeaseStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def _put(key: bytes, value: bytes, lease: int = 0) -> etcdpb.RequestOp:
    return etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=value, lease=lease))


def _range(key: bytes) -> etcdpb.RequestOp:
    return etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=key))


def _event(e: mvccpb.Event) -> WatchEvent:
    return WatchEvent(e.kv.mod_revision, e.kv.key, e.kv.value, e.type == mvccpb.Event.DELETE)


@dataclass
class EtcdStats:
    txn_ok: int = 0
    txn_indeterminate: int = 0
    torn_reads: int = 0
    watch_resumes: int = 0
    keepalives_ok: int = 0
    fenced_writes: int = 0
    stale_writes_refused: int = 0
    errors: int = 0


class EtcdWorkload:
    def __init__(self, endpoints: list[str], seed: int, next_id: Callable[[], int],
                 record: Callable[[Op], None], *, groups: int = 2, txn_clients: int = 2,
                 watchers: int = 2, lease_holders: int = 4, lockers: int = 2,
                 enabled: bool = True) -> None:
        self.endpoints = endpoints
        self.seed = seed
        self._next_id = next_id
        self._record = record
        self.groups = [[b"chaos-g%d/%s" % (g, part) for part in (b"a", b"b", b"c")]
                       for g in range(groups)]
        self._counts = (txn_clients, watchers, lease_holders, lockers) if enabled else \
            (0, 0, 0, 0)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stats = EtcdStats()
        self.watchers: list[WatcherLog] = []
        self.leases: list[LeaseLog] = []

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        txn_clients, watchers, holders, lockers = self._counts
        for i in range(watchers):
            log = WatcherLog(f"watcher {i}")
            self.watchers.append(log)
            self._spawn(f"etcd-watch-{i}", self._watch_loop, i, log)
        for i in range(txn_clients):
            self._spawn(f"etcd-txn-{i}", self._txn_loop, i)
        for i in range(holders):
            self._spawn(f"etcd-lease-{i}", self._lease_loop, i)
        for i in range(lockers):
            self._spawn(f"etcd-lock-{i}", self._lock_loop, i)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, join_timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + join_timeout_s
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"etcd workload threads did not stop: {stuck}"

    def _count(self, field_name: str) -> None:
        with self._lock:
            setattr(self.stats, field_name, getattr(self.stats, field_name) + 1)

    # --- multi-key transactions -------------------------------------------------------------
    def _txn_loop(self, c: int) -> None:
        rng = random.Random(self.seed * 7919 + c)
        ends = _Endpoints(self.endpoints, rng)
        client = 1000 + c
        try:
            while not self.stop_event.is_set():
                group = rng.randrange(len(self.groups))
                keys = self.groups[group]
                op_id = self._next_id()
                register = b"chaos-group-%d" % group
                invoke_s = time.monotonic()
                if rng.random() < 0.5:
                    value = b"t%d-%d" % (c, op_id)
                    txn = etcdpb.TxnRequest(success=[_put(k, value) for k in keys])
                    base = Op(id=op_id, client=client, key=register, kind=Kind.PUT,
                              invoke_s=invoke_s, complete_s=None, value=value)
                    try:
                        ends.kv().Txn(txn, timeout=CALL_TIMEOUT_S)
                    except grpc.RpcError:
                        self._record(base)           # indeterminate
                        self._count("txn_indeterminate")
                        ends.next()
                        continue
                    self._record(dataclasses.replace(base, complete_s=time.monotonic()))
                else:
                    txn = etcdpb.TxnRequest(success=[_range(k) for k in keys])
                    try:
                        resp = ends.kv().Txn(txn, timeout=CALL_TIMEOUT_S)
                    except grpc.RpcError:
                        ends.next()
                        continue
                    values = [r.response_range.kvs[0].value if r.response_range.kvs else None
                              for r in resp.responses]
                    result = values[0]
                    if len(set(values)) != 1:
                        result = TORN + b",".join(v or b"-" for v in values)
                        self._count("torn_reads")
                    self._record(Op(id=op_id, client=client, key=register, kind=Kind.GET,
                                    invoke_s=invoke_s, complete_s=time.monotonic(),
                                    result=result))
                self._count("txn_ok")
                self.stop_event.wait(rng.uniform(0, 0.01))
        finally:
            ends.close()

    # --- watches -------------------------------------------------------------------------
    def _watch_loop(self, i: int, log: WatcherLog) -> None:
        rng = random.Random(self.seed * 104729 + i)
        ends = _Endpoints(self.endpoints, rng)
        next_revision = 1
        try:
            while not self.stop_event.is_set():
                try:
                    for event, received_s in self._watch(ends.channel, next_revision):
                        log.events.append(event)
                        log.received_s.append(received_s)
                        next_revision = event.revision + 1 if event.revision >= \
                            next_revision else next_revision
                except grpc.RpcError:
                    pass
                if self.stop_event.is_set():
                    break
                self._count("watch_resumes")
                ends.next()
                # Events of one revision arrive together; resume after the last one.
                if log.events:
                    next_revision = log.events[-1].revision + 1
                self.stop_event.wait(0.1)
        finally:
            ends.close()

    def _watch(self, channel: grpc.Channel, start_revision: int
               ) -> Iterator[tuple[WatchEvent, float]]:
        requests = _WatchRequests(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX_END, start_revision=start_revision)), self.stop_event)
        stream = etcd_grpc.WatchStub(channel).Watch(iter(requests))
        requests.call = stream
        for resp in stream:
            if resp.canceled:
                raise _Canceled(resp.cancel_reason)
            now = time.monotonic()
            for e in resp.events:
                yield _event(e), now

    # --- leases --------------------------------------------------------------------------
    def _lease_loop(self, i: int) -> None:
        rng = random.Random(self.seed * 15485863 + i)
        ends = _Endpoints(self.endpoints, rng)
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                try:
                    grant = ends.lease().LeaseGrant(etcdpb.LeaseGrantRequest(TTL=LEASE_TTL_S),
                                                    timeout=CALL_TIMEOUT_S)
                    key = b"chaos-lease-%d-%d" % (i, n)
                    ends.kv().Put(etcdpb.PutRequest(key=key, value=b"held", lease=grant.ID),
                                  timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    ends.next()
                    self.stop_event.wait(0.2)
                    continue
                log = LeaseLog(grant.ID, key, grant.TTL)
                with self._lock:
                    self.leases.append(log)
                abandon_after_s = rng.uniform(2, 30) if rng.random() < 0.5 else None
                self._keep_alive(ends, log, abandon_after_s)
        finally:
            ends.close()

    def _keep_alive(self, ends: _Endpoints, log: LeaseLog, abandon_after_s: float | None
                    ) -> None:
        started_s = time.monotonic()
        while not self.stop_event.is_set():
            if abandon_after_s is not None and time.monotonic() - started_s > abandon_after_s:
                log.abandoned_s = log.keepalives[-1].sent_s if log.keepalives else started_s
                return
            sent_s = time.monotonic()
            try:
                [answer] = list(ends.lease().LeaseKeepAlive(
                    iter([etcdpb.LeaseKeepAliveRequest(ID=log.lease_id)]),
                    timeout=CALL_TIMEOUT_S))
            except (grpc.RpcError, ValueError):
                ends.next()
                self.stop_event.wait(0.1)
                continue
            log.keepalives.append(KeepAlive(sent_s, time.monotonic(), answer.TTL))
            if answer.TTL <= 0:
                return   # the lease is gone: a new one next
            self._count("keepalives_ok")
            self.stop_event.wait(max(0.0, log.ttl / 3 - (time.monotonic() - sent_s)))
        # The run ends: the lease is left to expire; not abandoned on purpose.

    # --- fencing ---------------------------------------------------------------------------
    def _lock_loop(self, i: int) -> None:
        rng = random.Random(self.seed * 32452843 + i)
        ends = _Endpoints(self.endpoints, rng)
        try:
            while not self.stop_event.is_set():
                try:
                    self._lock_once(ends, rng)
                except grpc.RpcError:
                    ends.next()
                    self.stop_event.wait(0.2)
        finally:
            ends.close()

    def _lock_once(self, ends: _Endpoints, rng: random.Random) -> None:
        lease = ends.lease().LeaseGrant(etcdpb.LeaseGrantRequest(TTL=LOCK_TTL_S),
                                        timeout=CALL_TIMEOUT_S).ID
        my_key = LOCK_PREFIX + b"%016x" % lease
        created = ends.kv().Txn(etcdpb.TxnRequest(
            compare=[etcdpb.Compare(key=my_key, target=etcdpb.Compare.CREATE,
                                    result=etcdpb.Compare.EQUAL, create_revision=0)],
            success=[_put(my_key, b"", lease)]), timeout=CALL_TIMEOUT_S)
        token = created.header.revision
        deadline = time.monotonic() + 4 * LOCK_TTL_S
        # Held once no key of the prefix has a lower create revision; keep the lease
        # alive meanwhile.
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            # etcd's recipe: the keys created before mine (a count would not do: etcd
            # counts a range before its revision filters).
            waiting = ends.kv().Range(etcdpb.RangeRequest(
                key=LOCK_PREFIX, range_end=LOCK_PREFIX[:-1] + b"0",
                max_create_revision=token - 1, keys_only=True, limit=1),
                timeout=CALL_TIMEOUT_S)
            list(ends.lease().LeaseKeepAlive(iter([etcdpb.LeaseKeepAliveRequest(ID=lease)]),
                                             timeout=CALL_TIMEOUT_S))
            if not waiting.kvs:
                break
            self.stop_event.wait(0.05)
        else:
            return
        if rng.random() < 0.3:
            # A pause longer than the lease: the lock is lost meanwhile (its key expires),
            # so the write below must be refused.
            self.stop_event.wait(LOCK_TTL_S + 3)
        fenced = ends.kv().Txn(etcdpb.TxnRequest(
            compare=[etcdpb.Compare(key=my_key, target=etcdpb.Compare.CREATE,
                                    result=etcdpb.Compare.EQUAL, create_revision=token)],
            success=[_put(FENCED_KEY, b"%d" % token)]), timeout=CALL_TIMEOUT_S)
        self._count("fenced_writes" if fenced.succeeded else "stale_writes_refused")
        ends.kv().DeleteRange(etcdpb.DeleteRangeRequest(key=my_key), timeout=CALL_TIMEOUT_S)
        ends.lease().LeaseRevoke(etcdpb.LeaseRevokeRequest(ID=lease), timeout=CALL_TIMEOUT_S)


class _Canceled(grpc.RpcError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class _WatchRequests:
    """The request side of a watch stream: the create request, then nothing until the
    run stops (which cancels the call)."""

    def __init__(self, create: etcdpb.WatchRequest, stop: threading.Event) -> None:
        self._create: etcdpb.WatchRequest | None = create
        self._stop = stop
        self.call: grpc.Future | None = None

    def __iter__(self) -> _WatchRequests:
        return self

    def __next__(self) -> etcdpb.WatchRequest:
        if self._create is not None:
            create, self._create = self._create, None
            return create
        self._stop.wait()
        if self.call is not None:
            self.call.cancel()
        raise StopIteration


def canonical_history(endpoints: list[str], timeout_s: float) -> list[WatchEvent]:
    """Every event of the chaos prefix from revision 1 to the current revision, by one
    watch on a healthy cluster after the run (retried on another member until it works
    or `timeout_s` passes)."""
    deadline = time.monotonic() + timeout_s
    rng = random.Random(0)
    ends = _Endpoints(endpoints, rng)
    try:
        while True:
            try:
                current = ends.kv().Range(etcdpb.RangeRequest(key=PREFIX, range_end=PREFIX_END,
                                                              count_only=True),
                                          timeout=CALL_TIMEOUT_S).header.revision
                return _history_until(ends.channel, current, deadline)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                ends.next()
                time.sleep(0.2)
    finally:
        ends.close()


def _history_until(channel: grpc.Channel, revision: int, deadline: float) -> list[WatchEvent]:
    stop = threading.Event()
    requests = _WatchRequests(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
        key=PREFIX, range_end=PREFIX_END, start_revision=1)), stop)
    stream = etcd_grpc.WatchStub(channel).Watch(iter(requests),
                                                timeout=max(1.0, deadline - time.monotonic()))
    requests.call = stream
    out: list[WatchEvent] = []
    if revision <= 1:
        return out
    try:
        for resp in stream:
            if resp.canceled:
                raise _Canceled(resp.cancel_reason)
            out.extend(_event(e) for e in resp.events)
            # Every write of the run is under the prefix, so the current revision's
            # events end the history.
            if out and out[-1].revision >= revision:
                break
    finally:
        stop.set()
        stream.cancel()
    return out


# A lease abandoned during the faults may outlive its TTL by a few leader changes (each
# new leader counts its remaining TTL afresh, plus an election timeout): the bound below
# is that generous. After the run, every abandoned lease must be gone within it.
ABANDONED_BOUND_S = 30.0


def check_etcd_workload(etcd: EtcdWorkload, endpoints: list[str], watched_until_s: float,
                        timeout_s: float, faults_end_s: float = 0.0) -> list[str]:
    """Every check of the etcd workloads (etcd_checks.py), after the run."""
    canonical = canonical_history(endpoints, timeout_s)
    problems = check_watchers(canonical, etcd.watchers)
    deleted_seen_s: dict[bytes, float] = {}
    for w in etcd.watchers:
        for event, received_s in zip(w.events, w.received_s, strict=True):
            if event.deleted and event.key.startswith(b"chaos-lease-"):
                deleted_seen_s[event.key] = min(received_s,
                                                deleted_seen_s.get(event.key, received_s))
    problems += check_leases(etcd.leases, deleted_seen_s, ABANDONED_BOUND_S, watched_until_s,
                             faults_end_s)
    problems += _abandoned_leases_left(etcd, endpoints)
    tokens = [(e.revision, int(e.value)) for e in canonical
              if e.key == FENCED_KEY and not e.deleted]
    problems += check_fencing(tokens)
    if etcd.stats.torn_reads:
        problems.append(f"{etcd.stats.torn_reads} multi-key txn reads saw a torn group")
    return problems


def _abandoned_leases_left(etcd: EtcdWorkload, endpoints: list[str]) -> list[str]:
    """Leases abandoned during the run that still exist after TTL + the bound (a revoke
    that failed and was never retried keeps its keys for ever: etcd #10686)."""
    abandoned = {lease.lease_id for lease in etcd.leases if lease.abandoned_s is not None}
    deadline = time.monotonic() + LEASE_TTL_S + ABANDONED_BOUND_S
    ends = _Endpoints(endpoints, random.Random(1))
    left: set[int] = set(abandoned)
    try:
        while left and time.monotonic() < deadline:
            try:
                live = ends.lease().LeaseLeases(etcdpb.LeaseLeasesRequest(),
                                                timeout=CALL_TIMEOUT_S)
            except grpc.RpcError:
                ends.next()
                time.sleep(0.2)
                continue
            left = abandoned & {status.ID for status in live.leases}
            if left:
                time.sleep(0.5)
    finally:
        ends.close()
    return [f"abandoned lease {lease_id:x} still exists {LEASE_TTL_S + ABANDONED_BOUND_S:.0f} s "
            "after the run" for lease_id in sorted(left)]
