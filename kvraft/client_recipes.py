"""etcd's concurrency recipes on kvraft (docs/client.md#locks): a lock and an election,
the same as etcd's clientv3/concurrency Mutex and Election, key for key, so that they
exclude and observe `etcdctl lock` and `etcdctl elect` of the same name.

Both queue a key <name>/<lease id hex> put with the holder's lease by a Txn on
create_revision == 0; the owner is the key with the lowest create revision; a waiter
watches the deletion of the key just ahead of it (the next lower create revision) —
one watch per waiter, no herd when the owner leaves.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from kvraft.client_etcd import (
    DELETE,
    PUT,
    SESSION_TTL_S,
    Bytesish,
    Compare,
    DeleteOp,
    EtcdCalls,
    KeyValue,
    Lease,
    PutOp,
    RangeOp,
    RangeResult,
    Watch,
    _bytes,
    _prefix_end,
)
from kvraft.proto import etcdserverpb_pb2 as etcdpb


def _owner_op(prefix: bytes) -> etcdpb.RequestOp:
    """The range of the oldest key under `prefix` (the lock holder, the leader)."""
    request = RangeOp(prefix, prefix=True, limit=1).to_pb()
    request.sort_target = etcdpb.RangeRequest.CREATE
    request.sort_order = etcdpb.RangeRequest.ASCEND
    return etcdpb.RequestOp(request_range=request)


def _enqueue(calls: EtcdCalls, prefix: bytes, lease: Lease,
             value: bytes) -> tuple[bytes, int, KeyValue | None]:
    """Put our key <prefix><lease id hex> with our lease unless it exists (etcd's
    recipe: a Txn on create_revision == 0); returns the key, its create revision and,
    when it existed already (this lease queued before), its key-value."""
    key = prefix + f"{lease.id:x}".encode()
    result = calls.txn(
        [Compare.create(key) == 0],
        [PutOp(key, value, lease=lease.id), _owner_op(prefix)],
        [RangeOp(key), _owner_op(prefix)])
    if result.succeeded:
        return key, result.revision, None
    existing = result.responses[0]
    assert isinstance(existing, RangeResult) and existing.kvs
    return key, existing.kvs[0].create_revision, existing.kvs[0]


def _wait_deletes(calls: EtcdCalls, prefix: bytes, below_revision: int,
                  stop: threading.Event) -> None:
    """Wait until no key under `prefix` has a create revision <= `below_revision`,
    watching one at a time the deletion of the newest of them (each waiter watches
    only the key just ahead of it: no herd when the holder leaves)."""
    while not stop.is_set():
        r = calls.range(RangeOp(prefix, prefix=True, limit=1),
                        sort_target=etcdpb.RangeRequest.CREATE,
                        sort_order=etcdpb.RangeRequest.DESCEND,
                        max_create_revision=below_revision)
        if not r.kvs:
            return
        ahead = r.kvs[0].key
        with Watch(calls, ahead, b"", r.revision + 1, False,
                   filters=[etcdpb.WatchCreateRequest.NOPUT]) as w:
            watcher = threading.Thread(target=_close_on, args=(stop, w), daemon=True)
            watcher.start()
            for event in w:
                if event.type == DELETE:
                    break


def _close_on(stop: threading.Event, w: Watch) -> None:
    """Close `w` when `stop` is set (or once `w` is closed)."""
    while not stop.wait(0.1):
        if w._closed:
            return
    w.close()


def _lock_timeout(calls: EtcdCalls, what: str) -> Exception:
    return calls.kc.DeadlineExceeded(what)


class Lock:
    """A held lock (etcd's concurrency.Mutex recipe, so it excludes etcdctl's `lock` of
    the same name and vice versa).

    `key` is <name>/<lease id hex>; `fencing_token` its create revision, which grows with
    every acquisition: pass it to the resource the lock protects and have the resource
    refuse a token lower than the newest it has seen (e.g. a Txn compare
    `Compare.create(lock key) == token` or a stored token). `lease` keeps the lock: if it
    is lost (this process paused past the TTL, a partition), another holder may
    already have the lock — `held` is then False. `release()` (or leaving the `with`
    block) deletes the key and revokes the lease."""

    def __init__(self, calls: EtcdCalls, name: bytes, lease: Lease, key: bytes,
                 revision: int) -> None:
        self._calls = calls
        self.name = name
        self.lease = lease
        self.key = key
        self.fencing_token = revision
        self.released = False

    @property
    def held(self) -> bool:
        return not self.released and self.lease.alive

    def release(self, *, timeout: float | None = None) -> None:
        if self.released:
            return
        self.released = True
        try:
            self._calls.delete(DeleteOp(self.key), timeout=timeout)
        finally:
            self.lease.revoke(timeout=timeout)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire_lock(calls: EtcdCalls, name: bytes, ttl: int, timeout: float | None) -> Lock:
    """Wait (at most `timeout` seconds; None: as long as it takes) for the lock `name`."""
    prefix = name + b"/"
    lease = Lease(calls, ttl)
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set) if timeout is not None else None
    key = b""
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        key, revision, _ = _enqueue(calls, prefix, lease, b"")
        _wait_deletes(calls, prefix, revision - 1, stop)
        if stop.is_set():
            raise _lock_timeout(calls, f"lock {name.decode(errors='replace')!r} not acquired "
                                f"within {timeout:g} s")
        # Our key must still be there: had our lease expired while we waited, another
        # waiter could hold the lock now.
        mine = calls.range(RangeOp(key))
        if not mine.kvs or mine.kvs[0].create_revision != revision:
            raise calls.kc.KvraftError(f"lock {name.decode(errors='replace')!r}: the "
                                        "session's lease expired while waiting")
        return Lock(calls, name, lease, key, revision)
    except BaseException:
        with contextlib.suppress(Exception):
            lease.revoke()  # deletes our key too: the next waiter goes on
        raise
    finally:
        if timer is not None:
            timer.cancel()


class Election:
    """etcd's concurrency.Election recipe on the prefix <name>/ (so it interoperates with
    `etcdctl elect`): `campaign(value)` waits to lead, `proclaim(value)` changes the
    leader's value, `leader()` names the current leader, `observe()` follows every
    leader in turn, `resign()` gives up leadership. The leader is the campaigner whose
    key has the lowest create revision; its key lives as long as its lease."""

    def __init__(self, calls: EtcdCalls, name: bytes, *, ttl: int = SESSION_TTL_S) -> None:
        self._calls = calls
        self.name = name
        self.prefix = name + b"/"
        self.ttl = ttl
        self.lease: Lease | None = None
        self.key: bytes | None = None
        self.revision = 0   # our key's create revision while campaigning or leading
        self.leading = False  # campaign() returned and resign() was not called since

    def campaign(self, value: Bytesish, *, timeout: float | None = None) -> KeyValue:
        """Wait until this campaigner leads; returns the leader key (ours)."""
        data = _bytes(value, "value")
        if self.lease is None or not self.lease.alive:
            self.lease = Lease(self._calls, self.ttl)
        stop = threading.Event()
        timer = threading.Timer(timeout, stop.set) if timeout is not None else None
        try:
            if timer is not None:
                timer.daemon = True
                timer.start()
            self.key, self.revision, existing = _enqueue(self._calls, self.prefix,
                                                         self.lease, data)
            if existing is not None and existing.value != data:
                self._set_value(data)
            _wait_deletes(self._calls, self.prefix, self.revision - 1, stop)
            if stop.is_set():
                raise _lock_timeout(self._calls, f"election {self.name.decode(errors='replace')!r}"
                                    f": not elected within {timeout:g} s")
            mine = self._calls.range(RangeOp(self.key))
            if not mine.kvs or mine.kvs[0].create_revision != self.revision:
                raise self._calls.kc.KvraftError("the campaign's lease expired while waiting")
            self.leading = True
            return mine.kvs[0]
        except BaseException:
            with contextlib.suppress(Exception):
                self.resign()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def proclaim(self, value: Bytesish) -> None:
        """Set the leader's value without a new election; only the leader may."""
        if not self.leading:
            raise self._calls.kc.FailedPrecondition("election: not the leader")
        self._set_value(_bytes(value, "value"))

    def _set_value(self, value: bytes) -> None:
        """Put our key's new value iff it is still the key we queued."""
        assert self.key is not None and self.lease is not None
        result = self._calls.txn([Compare.create(self.key) == self.revision],
                                 [PutOp(self.key, value, lease=self.lease.id)],
                                 [])
        if not result.succeeded:
            raise self._calls.kc.FailedPrecondition("election: session is not the leader")

    def resign(self) -> None:
        """Give up leadership (or the campaign): delete our key and revoke the lease."""
        if self.key is not None:
            self._calls.txn([Compare.create(self.key) == self.revision],
                            [DeleteOp(self.key)], [])
        if self.lease is not None:
            self.lease.revoke()
        self.key, self.lease, self.revision, self.leading = None, None, 0, False

    def leader(self) -> KeyValue | None:
        """The current leader's key and value (None: nobody leads)."""
        r = self._owner()
        return r.kvs[0] if r.kvs else None

    def _owner(self) -> RangeResult:
        return self._calls.range(RangeOp(self.prefix, prefix=True, limit=1),
                                 sort_target=etcdpb.RangeRequest.CREATE,
                                 sort_order=etcdpb.RangeRequest.ASCEND)

    def _first_put(self, start_revision: int) -> KeyValue | None:
        """The first key put under the prefix from `start_revision` (None: the watch
        was closed)."""
        with Watch(self._calls, self.prefix, _prefix_end(self.prefix), start_revision,
                   False) as w:
            for event in w:
                if event.type == PUT:
                    return event.kv
        return None

    def observe(self) -> Iterator[KeyValue]:
        """The leader now (once there is one), then every change: a new leader or a new
        value proclaimed. An endless generator; close it (or break) to stop."""
        calls = self._calls
        while True:
            owner = self._owner()
            if owner.kvs:
                leader, after = owner.kvs[0], owner.revision
            else:  # nobody leads: the first key put under the prefix will
                first = self._first_put(owner.revision + 1)
                if first is None:
                    return
                leader, after = first, first.mod_revision
            yield leader
            with Watch(calls, leader.key, b"", after + 1, False) as w:
                for event in w:
                    if event.type == DELETE:
                        break
                    if event.kv.value != leader.value:
                        leader = event.kv
                        yield leader
