"""etcd's v3 API through kvraft's Client: revisions, transactions, watches, leases, locks
and elections (SPEC §6, docs/client.md; the lock and election recipes are in
kvraft/client_recipes.py). `kvraft.client.Client` delegates to these modules:

    with Client(endpoints) as kv:
        kv.put("k", "v")
        kv.get("k", revision=3)                           # the value at revision 3
        r = kv.txn([Compare.mod("k") == 4], [PutOp("k", "w")], [RangeOp("k")])
        for event in kv.watch("jobs/", prefix=True):      # resumes on another member
            ...
        with kv.lease(10) as lease:                       # kept alive every TTL/3
            kv.put("me", "alive", lease=lease.id)
        with kv.lock("jobs") as held:                     # etcd's lock recipe
            ... held.fencing_token ...

Calls fail over between the client's endpoints with the rules of kvraft.client (reads
anywhere until the deadline; a write is sent again only when it certainly was not
applied). The services are etcd's (`etcdserverpb.KV`, `Watch`, `Lease`) served on the
same client port as kvraft's own.
"""
from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import mvccpb_pb2 as mvccpb

if TYPE_CHECKING:
    from types import ModuleType

Bytesish: TypeAlias = bytes | bytearray | memoryview | str

# How often a lease is kept alive: etcd's clients send a keep-alive every TTL/3.
KEEPALIVE_FRACTION = 1 / 3
# A failed keep-alive (a member down) is sent again this soon, to another member.
KEEPALIVE_RETRY_S = 0.2
# Leases shorter than this are refused by etcd (its minimum TTL is 2 s in practice).
LEASE_TTL_MIN_S = 1
# A watch that cannot be opened anywhere gives up after this long (a whole-cluster
# outage); a member failure or an election takes a few seconds.
WATCH_RECONNECT_MAX_S = 60.0
# Pause between rounds of watch reconnection over every endpoint, doubling up to the cap.
WATCH_BACKOFF_INITIAL_S = 0.05
WATCH_BACKOFF_MAX_S = 1.0
# A watch stream silent this long is asked for a progress report (kvraft's members also
# send one every 10 s unasked); with no answer this long after, its member is taken
# for stuck (paused, frozen, its network black-holed) and the watch moves on.
WATCH_PROBE_AFTER_S = 5.0
WATCH_PROBE_TIMEOUT_S = 5.0
WATCH_CHECK_S = 0.5
# etcd's clientv3.WithRequireLeader: a member without a leader fails the watch stream,
# so the client moves to one that has.
REQUIRE_LEADER_METADATA = (("hasleader", "true"),)
# Default TTL of the lease behind a lock or an election campaign (etcd's session: 60 s).
SESSION_TTL_S = 60

PUT = "PUT"
DELETE = "DELETE"
# etcd's error for a revision below the compaction (rpctypes.ErrCompacted).
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class KeyValue:
    """A key as etcd's mvccpb.KeyValue: its value and its revisions."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: mvccpb.KeyValue) -> KeyValue:
        return cls(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                   mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease)


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: `type` is "PUT" or "DELETE"; `kv` the key after the
    change (for a DELETE: the key and the deletion's revision, no value); `prev_kv` the
    key before it when the watch asked for prev_kv (None when it did not exist)."""

    type: str
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision

    @classmethod
    def from_pb(cls, ev: mvccpb.Event) -> Event:
        prev = KeyValue.from_pb(ev.prev_kv) if ev.HasField("prev_kv") else None
        return cls(type=DELETE if ev.type == mvccpb.Event.DELETE else PUT,
                   kv=KeyValue.from_pb(ev.kv), prev_kv=prev)


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    count: int       # keys in the range (before `limit`)
    more: bool       # more keys than returned
    revision: int    # the store's revision the range was read at


@dataclass(frozen=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True)
class DeleteResult:
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True)
class TxnResult:
    """`succeeded`: every compare held (the success ops ran, else the failure ops);
    `responses`: one RangeResult, PutResult, DeleteResult or TxnResult per op run."""

    succeeded: bool
    revision: int
    responses: tuple[RangeResult | PutResult | DeleteResult | TxnResult, ...]


@dataclass(frozen=True)
class LeaseInfo:
    """A lease's time to live: `ttl` the seconds left, `granted_ttl` as granted."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


# --------------------------------------------------------------------------- txn types

_COMPARE_TARGETS = {
    "value": etcdpb.Compare.VALUE, "version": etcdpb.Compare.VERSION,
    "create": etcdpb.Compare.CREATE, "mod": etcdpb.Compare.MOD, "lease": etcdpb.Compare.LEASE,
}
_COMPARE_RESULTS = {
    "=": etcdpb.Compare.EQUAL, "!=": etcdpb.Compare.NOT_EQUAL,
    "<": etcdpb.Compare.LESS, ">": etcdpb.Compare.GREATER,
}
_COMPARE_FIELDS = {"value": "value", "version": "version", "create": "create_revision",
                   "mod": "mod_revision", "lease": "lease"}


@dataclass(frozen=True)
class Compare:
    """One condition of a txn: the key's `target` ("value", "version", "create", "mod"
    or "lease") `op` ("=", "!=", "<", ">") `operand` (bytes for value, int otherwise).
    Built most easily with the operators: `Compare.value("k") == "v"`,
    `Compare.mod("k") < 7`, `Compare.create("k") == 0` (the key does not exist).
    With `range_end` (or prefix=True in the builders) it must hold for every key of
    [key, range_end)."""

    key: bytes
    target: str
    op: str
    operand: bytes | int
    range_end: bytes = b""

    def __post_init__(self) -> None:
        if self.target not in _COMPARE_TARGETS:
            raise ValueError(f"a compare target is one of {sorted(_COMPARE_TARGETS)}, "
                             f"not {self.target!r}")
        if self.op not in _COMPARE_RESULTS:
            raise ValueError(f"a compare op is one of =, !=, <, >, not {self.op!r}")
        if self.target == "value" and not isinstance(self.operand, bytes):
            raise TypeError("a value compare takes bytes or str")
        if self.target != "value" and (isinstance(self.operand, bool)
                                       or not isinstance(self.operand, int)):
            raise TypeError(f"a {self.target} compare takes an int")

    @staticmethod
    def value(key: Bytesish, *, prefix: bool = False, range_end: Bytesish = b"") -> _Target:
        return _Target("value", key, prefix, range_end)

    @staticmethod
    def version(key: Bytesish, *, prefix: bool = False, range_end: Bytesish = b"") -> _Target:
        return _Target("version", key, prefix, range_end)

    @staticmethod
    def create(key: Bytesish, *, prefix: bool = False, range_end: Bytesish = b"") -> _Target:
        """The key's create revision (0: the key does not exist)."""
        return _Target("create", key, prefix, range_end)

    @staticmethod
    def mod(key: Bytesish, *, prefix: bool = False, range_end: Bytesish = b"") -> _Target:
        return _Target("mod", key, prefix, range_end)

    @staticmethod
    def lease(key: Bytesish, *, prefix: bool = False, range_end: Bytesish = b"") -> _Target:
        return _Target("lease", key, prefix, range_end)

    def to_pb(self) -> etcdpb.Compare:
        message = etcdpb.Compare(result=_COMPARE_RESULTS[self.op],
                                 target=_COMPARE_TARGETS[self.target], key=self.key,
                                 range_end=self.range_end)
        setattr(message, _COMPARE_FIELDS[self.target], self.operand)
        return message


class _Target:
    """`Compare.value(key)` and friends: compared with ==, !=, < or >, a Compare."""

    __hash__ = None  # type: ignore[assignment]  # == builds a Compare, not a bool

    def __init__(self, target: str, key: Bytesish, prefix: bool, range_end: Bytesish) -> None:
        self.target = target
        self.key = _bytes(key, "key")
        self.range_end = _range_end(self.key, prefix, range_end)

    def _compare(self, op: str, operand: Any) -> Compare:
        if self.target == "value":
            operand = _bytes(operand, "value")
        return Compare(self.key, self.target, op, operand, self.range_end)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._compare("=", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._compare("!=", other)

    def __lt__(self, other: object) -> Compare:
        return self._compare("<", other)

    def __gt__(self, other: object) -> Compare:
        return self._compare(">", other)


@dataclass(frozen=True)
class RangeOp:
    """A range read inside a txn (or `Client.range`): one key, [key, range_end), or
    every key starting with `key` (prefix=True). revision=0 reads the txn's revision."""

    key: Bytesish
    range_end: Bytesish = b""
    prefix: bool = False
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False

    def to_pb(self) -> etcdpb.RangeRequest:
        key = _bytes(self.key, "key")
        return etcdpb.RangeRequest(key=key, range_end=_range_end(key, self.prefix,
                                                                 self.range_end),
                                   revision=self.revision, limit=self.limit,
                                   keys_only=self.keys_only, count_only=self.count_only)


@dataclass(frozen=True)
class PutOp:
    """A put inside a txn, attached to `lease` when nonzero."""

    key: Bytesish
    value: Bytesish
    lease: int = 0
    prev_kv: bool = False

    def to_pb(self) -> etcdpb.PutRequest:
        return etcdpb.PutRequest(key=_bytes(self.key, "key"), value=_bytes(self.value, "value"),
                                 lease=self.lease, prev_kv=self.prev_kv)


@dataclass(frozen=True)
class DeleteOp:
    """A delete inside a txn: one key, [key, range_end) or a prefix."""

    key: Bytesish
    range_end: Bytesish = b""
    prefix: bool = False
    prev_kv: bool = False

    def to_pb(self) -> etcdpb.DeleteRangeRequest:
        key = _bytes(self.key, "key")
        return etcdpb.DeleteRangeRequest(key=key, range_end=_range_end(key, self.prefix,
                                                                       self.range_end),
                                         prev_kv=self.prev_kv)


@dataclass(frozen=True)
class TxnOp:
    """A nested txn (etcd 3.3+), as an op of an outer txn's branch."""

    compare: Sequence[CompareLike] = ()
    success: Sequence[OpLike] = ()
    failure: Sequence[OpLike] = ()

    def to_pb(self) -> etcdpb.TxnRequest:
        return txn_request(self.compare, self.success, self.failure)


CompareLike: TypeAlias = Compare | etcdpb.Compare
OpLike: TypeAlias = RangeOp | PutOp | DeleteOp | TxnOp | etcdpb.RequestOp | Any


def txn_request(compare: Iterable[CompareLike], success: Iterable[OpLike],
                failure: Iterable[OpLike]) -> etcdpb.TxnRequest:
    """The etcdserverpb.TxnRequest of compares and ops (our types or etcd's messages)."""
    request = etcdpb.TxnRequest()
    for c in compare:
        if isinstance(c, etcdpb.Compare):
            request.compare.append(c)
        elif isinstance(c, Compare):
            request.compare.append(c.to_pb())
        else:
            raise TypeError(f"a txn compare is a Compare (Compare.value(k) == v, ...) or "
                            f"an etcdserverpb.Compare, not {c!r}")
    for branch, ops in ((request.success, success), (request.failure, failure)):
        for op in ops:
            branch.append(_request_op(op))
    return request


def _request_op(op: OpLike) -> etcdpb.RequestOp:
    if isinstance(op, etcdpb.RequestOp):
        return op
    if isinstance(op, RangeOp):
        return etcdpb.RequestOp(request_range=op.to_pb())
    if isinstance(op, PutOp):
        return etcdpb.RequestOp(request_put=op.to_pb())
    if isinstance(op, DeleteOp):
        return etcdpb.RequestOp(request_delete_range=op.to_pb())
    if isinstance(op, TxnOp):
        return etcdpb.RequestOp(request_txn=op.to_pb())
    raise TypeError(f"a txn op is RangeOp, PutOp, DeleteOp, TxnOp (or etcd's RequestOp), "
                    f"not {op!r}")


def range_result(r: etcdpb.RangeResponse) -> RangeResult:
    return RangeResult(kvs=tuple(KeyValue.from_pb(kv) for kv in r.kvs), count=r.count,
                       more=r.more, revision=r.header.revision)


def txn_result(r: etcdpb.TxnResponse, outer_revision: int = 0) -> TxnResult:
    """`outer_revision`: for a nested txn, its outer txn's revision — etcd leaves a
    nested txn's header empty (kvraft fills it), and a txn runs at one revision."""
    revision = r.header.revision or outer_revision
    out: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for op in r.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            out.append(range_result(op.response_range))
        elif kind == "response_put":
            p = op.response_put
            out.append(PutResult(p.header.revision or revision,
                                 KeyValue.from_pb(p.prev_kv) if p.HasField("prev_kv") else None))
        elif kind == "response_delete_range":
            d = op.response_delete_range
            out.append(DeleteResult(d.header.revision or revision, d.deleted,
                                    tuple(KeyValue.from_pb(kv) for kv in d.prev_kvs)))
        elif kind == "response_txn":
            out.append(txn_result(op.response_txn, revision))
    return TxnResult(succeeded=r.succeeded, revision=revision, responses=tuple(out))


# --------------------------------------------------------------------------- errors


def watch_canceled_error(calls: EtcdCalls, reason: str, compact_revision: int) -> Exception:
    """The error a watch raises when the server cancels it: compacted (OUT_OF_RANGE,
    `compact_revision` set: resume from a newer revision) or refused."""
    if compact_revision:
        # etcd sends no reason with a compaction; its clients name it (ErrCompacted)
        message = reason or (f"{ERR_COMPACTED} (the watch's next revision is at or below "
                             f"the compacted revision {compact_revision})")
        err = calls.kc.error_for(grpc.StatusCode.OUT_OF_RANGE, message)
    else:
        err = calls.kc.error_for(grpc.StatusCode.CANCELLED,
                                 reason or "the watch was canceled by the server")
    err.compact_revision = compact_revision
    return err


# --------------------------------------------------------------------------- calls


class _Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.kv = etcdpb_grpc.KVStub(channel)
        self.watch = etcdpb_grpc.WatchStub(channel)
        self.lease = etcdpb_grpc.LeaseStub(channel)


class EtcdCalls:
    """etcd's services over a kvraft Client's channels (one per Client, made lazily).

    `client` is a kvraft.client.Client and `kc` the kvraft.client module, handed in by
    the client (which imports this module, not the reverse): this module uses the
    client's channels and failover order (`_channel`, `_order`, `_classify`, `_forget`,
    `_deadline`) and raises its typed errors (`self.kc.error_for`, `self.kc.Unavailable`, ...)."""

    def __init__(self, client: Any, kc: ModuleType) -> None:
        self.client = client
        self.kc: Any = kc
        self._lock = threading.Lock()
        # per kvraft.client._Channel: etcd's stubs over the same gRPC channel (and TLS)
        self._stubs: weakref.WeakKeyDictionary[Any, _Stubs] = weakref.WeakKeyDictionary()

    def stubs(self, endpoint: str) -> _Stubs:
        channel = self.client._channel(endpoint)
        with self._lock:
            stubs = self._stubs.get(channel)
            if stubs is None:
                stubs = self._stubs[channel] = _Stubs(channel.channel)
            return stubs

    def learn(self, endpoint: str) -> None:
        """`endpoint` answered: start there next time (etcd's headers name no leader)."""
        c = self.client
        with c._lock:
            if endpoint in c.endpoints:
                c._preferred = c.endpoints.index(endpoint)

    def call(self, service: str, method: str, request: Any, *, write: bool,
             timeout: float | None = None, deadline: float | None = None) -> Any:
        """One unary etcd call with kvraft.client's failover rules (its module doc)."""
        c = self.client
        if deadline is None:
            deadline = c._deadline(timeout)
        backoff_s = self.kc.ROUND_BACKOFF_INITIAL_S
        last = None
        failures: dict[str, str] = {}
        tls_refused_rounds = 0
        while True:
            order = c._order()
            tls_refused = 0  # endpoints that refused the TLS handshake this round
            for position, endpoint in enumerate(order):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                if write and last is not None and remaining_s < self.kc.WRITE_RETRY_MIN_S:
                    raise self.kc._final_error(last, failures)
                attempt_s = remaining_s
                if not write:
                    share_s = remaining_s / (len(order) - position)
                    attempt_s = min(remaining_s, max(share_s, self.kc.READ_ATTEMPT_MIN_S))
                stub = getattr(self.stubs(endpoint), service)
                try:
                    response = getattr(stub, method)(request, timeout=attempt_s)
                except grpc.RpcError as err:
                    last, retry = c._classify(err, endpoint, write, deadline)
                    if not retry:
                        raise last from None
                    failures[endpoint] = last.message
                    tls_refused += isinstance(last, self.kc.TLSError)
                    c._forget(endpoint)
                    continue
                self.learn(endpoint)
                return response
            # As kvraft.client: a TLS configuration error does not heal within a deadline.
            tls_refused_rounds = tls_refused_rounds + 1 if tls_refused == len(order) else 0
            if tls_refused_rounds >= self.kc.TLS_REFUSED_ROUNDS_MAX:
                raise self.kc._final_error(last, failures)
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            time.sleep(min(remaining_s, backoff_s * (0.5 + random.random())))
            backoff_s = min(backoff_s * 2, self.kc.ROUND_BACKOFF_MAX_S)
        if last is None:
            raise self.kc.DeadlineExceeded("the deadline passed before any endpoint was tried")
        raise self.kc._final_error(last, failures)

    # ------------------------------------------------------------------ KV

    def range(self, op: RangeOp, *, serializable: bool = False, sort_target: int = 0,
              sort_order: int = 0, max_create_revision: int = 0,
              timeout: float | None = None) -> RangeResult:
        request = op.to_pb()
        request.serializable = serializable
        request.sort_target = sort_target  # type: ignore[assignment]
        request.sort_order = sort_order  # type: ignore[assignment]
        request.max_create_revision = max_create_revision
        return range_result(self.call("kv", "Range", request, write=False, timeout=timeout))

    def put(self, op: PutOp, *, timeout: float | None = None) -> PutResult:
        r = self.call("kv", "Put", op.to_pb(), write=True, timeout=timeout)
        return PutResult(r.header.revision,
                         KeyValue.from_pb(r.prev_kv) if r.HasField("prev_kv") else None)

    def delete(self, op: DeleteOp, *, timeout: float | None = None) -> DeleteResult:
        r = self.call("kv", "DeleteRange", op.to_pb(), write=True, timeout=timeout)
        return DeleteResult(r.header.revision, r.deleted,
                            tuple(KeyValue.from_pb(kv) for kv in r.prev_kvs))

    def txn(self, compare: Iterable[CompareLike], success: Iterable[OpLike],
            failure: Iterable[OpLike], *, timeout: float | None = None) -> TxnResult:
        request = txn_request(compare, success, failure)
        # A txn of reads only is a read: it may go anywhere again.
        write = any(op.WhichOneof("request") != "request_range"
                    for op in (*request.success, *request.failure))
        return txn_result(self.call("kv", "Txn", request, write=write, timeout=timeout))

    def compact(self, revision: int, *, physical: bool = False,
                timeout: float | None = None) -> int:
        request = etcdpb.CompactionRequest(revision=revision, physical=physical)
        return self.call("kv", "Compact", request, write=True, timeout=timeout).header.revision

    # ------------------------------------------------------------------ leases

    def lease_grant(self, ttl: int, *, lease_id: int = 0,
                    timeout: float | None = None) -> tuple[int, int]:
        """Grant a lease of `ttl` seconds; returns (id, granted TTL)."""
        r = self.call("lease", "LeaseGrant", etcdpb.LeaseGrantRequest(TTL=ttl, ID=lease_id),
                      write=True, timeout=timeout)
        if r.error:
            raise self.kc.KvraftError(r.error)
        return r.ID, r.TTL

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        self.call("lease", "LeaseRevoke", etcdpb.LeaseRevokeRequest(ID=lease_id), write=True,
                  timeout=timeout)

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                           timeout: float | None = None) -> LeaseInfo | None:
        """The lease's remaining TTL, or None when it expired or never existed."""
        r = self.call("lease", "LeaseTimeToLive",
                      etcdpb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), write=False,
                      timeout=timeout)
        if r.TTL == -1:
            return None
        return LeaseInfo(id=r.ID, ttl=r.TTL, granted_ttl=r.grantedTTL, keys=tuple(r.keys))

    def lease_list(self, *, timeout: float | None = None) -> list[int]:
        r = self.call("lease", "LeaseLeases", etcdpb.LeaseLeasesRequest(), write=False,
                      timeout=timeout)
        return [status.ID for status in r.leases]

    def lease_keep_alive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew the lease once; returns its new TTL (0: it expired or was revoked).

        A keep-alive is idempotent, so it is retried on any member until the deadline."""
        c = self.client
        deadline = c._deadline(timeout)
        request = etcdpb.LeaseKeepAliveRequest(ID=lease_id)
        last = None
        while True:
            order = c._order()
            for position, endpoint in enumerate(order):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                # A share of the time left, as a read gets: a paused member must not
                # eat the whole renewal period while the others could answer.
                share_s = remaining_s / (len(order) - position)
                attempt_s = min(remaining_s, max(share_s, self.kc.READ_ATTEMPT_MIN_S))
                stub = self.stubs(endpoint).lease
                try:
                    responses = stub.LeaseKeepAlive(iter((request,)), timeout=attempt_s)
                    response = next(responses, None)
                    responses.cancel()
                except grpc.RpcError as err:
                    last, retry = c._classify(err, endpoint, False, deadline)
                    if not retry and err.code() not in (grpc.StatusCode.CANCELLED,
                                                        grpc.StatusCode.UNKNOWN):
                        raise last from None
                    c._forget(endpoint)
                    continue
                if response is None:  # the stream ended without an answer: try another
                    last = self.kc.Unavailable(f"{endpoint} closed the keep-alive stream",
                                          endpoint=endpoint)
                    continue
                self.learn(endpoint)
                return max(response.TTL, 0)
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            time.sleep(min(remaining_s, KEEPALIVE_RETRY_S))
        raise last or self.kc.DeadlineExceeded("the deadline passed before any endpoint was tried")


# --------------------------------------------------------------------------- watch


class Watch:
    """An iterator of Events on a key, a range or a prefix, in revision order.

    It resumes by itself when its member fails (the stream breaks, or the member loses
    its leader: watches ask for one with etcd's `hasleader`): it opens the watch again
    on another endpoint from the revision after the last one it delivered (or after the
    last progress notification), and drops any event it already delivered — so the
    caller sees every event once, with no gap. A revision's events arrive together
    (the server does not fragment them), so resuming after a whole revision is exact.

    A member that stops answering without breaking the stream (paused, or its network
    black-holed) is detected by a watchdog: after WATCH_PROBE_AFTER_S of silence it asks
    for a progress report, and WATCH_PROBE_TIMEOUT_S later without any answer it drops
    the stream and resumes elsewhere.

    Iteration ends after `close()` (from any thread) and raises when the server cancels
    the watch: OUT_OF_RANGE with `.compact_revision` when its next revision was
    compacted, or Unavailable when no member took the watch within `reconnect_s`.
    A context manager (exit closes it)."""

    def __init__(self, calls: EtcdCalls, key: bytes, range_end: bytes, start_revision: int,
                 prev_kv: bool, *, filters: Sequence[int] = (),
                 reconnect_s: float = WATCH_RECONNECT_MAX_S) -> None:
        self._calls = calls
        self._key = key
        self._range_end = range_end
        self._prev_kv = prev_kv
        self._filters = list(filters)
        self._reconnect_s = reconnect_s
        # The next revision to deliver (0 until the first stream says where "now" is);
        # every event delivered so far has a revision below it.
        self.next_revision = start_revision
        self._pending: deque[Event] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._stream: Any = None            # the current gRPC call (has .cancel())
        self._requests: queue.Queue[Any] | None = None
        self._watch_id = 0
        self._next_endpoint = -1             # index into client.endpoints (-1: preferred)
        self.endpoint: str | None = None     # the member serving the watch now
        self.stalls = 0                      # streams dropped by the watchdog
        self._last_answer_at = time.monotonic()   # when the current stream last spoke
        self._probe_sent_at = 0.0            # 0: no progress request outstanding
        self._watchdog: threading.Thread | None = None

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopIteration
            self._receive()
        return self._pending.popleft()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, requests = self._stream, self._requests
        if requests is not None:
            requests.put(None)
        if stream is not None:
            stream.cancel()

    cancel = close

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ streams

    def _heard(self) -> None:
        self._last_answer_at = time.monotonic()
        self._probe_sent_at = 0.0

    def _watch_the_stream(self) -> None:
        """The watchdog (see the class doc): probe a silent stream, drop a stuck one."""
        while not self._closed and not self._calls.client._closed:
            time.sleep(WATCH_CHECK_S)
            with self._lock:
                stream, requests = self._stream, self._requests
            if stream is None or requests is None:
                continue
            now = time.monotonic()
            if not self._probe_sent_at:
                if now - self._last_answer_at > WATCH_PROBE_AFTER_S:
                    self._probe_sent_at = now
                    requests.put(etcdpb.WatchRequest(
                        progress_request=etcdpb.WatchProgressRequest()))
            elif now - self._probe_sent_at > WATCH_PROBE_TIMEOUT_S:
                self.stalls += 1
                self._probe_sent_at = 0.0
                self._last_answer_at = now
                stream.cancel()  # the reader sees the stream fail and moves on

    def _open(self) -> None:
        """Open the watch on some endpoint, going round them with backoff."""
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch_the_stream, daemon=True,
                                              name="kvraft-watch-watchdog")
            self._watchdog.start()
        c = self._calls.client
        give_up_at = time.monotonic() + self._reconnect_s
        backoff_s = WATCH_BACKOFF_INITIAL_S
        last_error = "no endpoint tried"
        while not self._closed:
            for _ in range(len(c.endpoints)):
                if self._closed:
                    return
                if self._next_endpoint < 0:
                    self._next_endpoint = c.endpoints.index(c._order()[0])
                endpoint = c.endpoints[self._next_endpoint % len(c.endpoints)]
                try:
                    if self._start(endpoint):
                        return
                except grpc.RpcError as err:
                    self._drop_stream()
                    if err.code() in _WATCH_FATAL_CODES:
                        raise self._calls.kc.error_for(
                            err.code(), err.details() or err.code().name,
                            endpoint=endpoint) from None
                    last_error = f"{endpoint}: {err.details() or err.code().name}"
                # the next attempt goes to the next member
                self._next_endpoint = (self._next_endpoint + 1) % len(c.endpoints)
            if time.monotonic() >= give_up_at:
                raise self._calls.kc.Unavailable(f"no member accepted the watch in "
                                                 f"{self._reconnect_s:g} s ({last_error})")
            time.sleep(backoff_s * (0.5 + random.random()))
            backoff_s = min(backoff_s * 2, WATCH_BACKOFF_MAX_S)

    def _start(self, endpoint: str) -> bool:
        """Create the watch on `endpoint`; True once the server answered `created`."""
        create = etcdpb.WatchCreateRequest(
            key=self._key, range_end=self._range_end, start_revision=self.next_revision,
            prev_kv=self._prev_kv, progress_notify=True, filters=self._filters)  # type: ignore[arg-type]
        requests: queue.Queue[Any] = queue.Queue()
        requests.put(etcdpb.WatchRequest(create_request=create))
        stream = self._calls.stubs(endpoint).watch.Watch(
            _request_iterator(requests), metadata=REQUIRE_LEADER_METADATA)
        with self._lock:
            if self._closed:
                stream.cancel()
                return True
            self._stream, self._requests = stream, requests
            self._heard()
        for response in stream:
            self._heard()
            if response.created:
                if response.canceled:
                    self._drop_stream()
                    self._closed = True
                    raise watch_canceled_error(self._calls, response.cancel_reason,
                                               response.compact_revision)
                self._watch_id = response.watch_id
                if self.next_revision == 0:  # "from now": after the creation's revision
                    self.next_revision = response.header.revision + 1
                self.endpoint = endpoint
                self._calls.learn(endpoint)
                return True
            self._handle(response)  # not expected before `created`; handled all the same
        return False  # the stream ended before `created`

    def _drop_stream(self) -> None:
        with self._lock:
            stream, requests = self._stream, self._requests
            self._stream = self._requests = None
        if requests is not None:
            requests.put(None)
        if stream is not None:
            stream.cancel()

    def _receive(self) -> None:
        """Wait for the next response; on a broken stream, resume elsewhere."""
        stream = self._stream
        if stream is None:
            self._open()
            return
        try:
            response = next(stream)
        except StopIteration:
            response = None
        except grpc.RpcError:
            response = None
        if response is not None:
            self._heard()
        if response is None:
            self._drop_stream()
            if not self._closed:
                # resume on the next member: this one failed or lost its leader
                self._next_endpoint = (self._next_endpoint + 1) % len(
                    self._calls.client.endpoints)
                self._open()
            return
        self._handle(response)

    def _handle(self, response: etcdpb.WatchResponse) -> None:
        if response.canceled:
            if response.watch_id != self._watch_id and not response.compact_revision:
                return
            self._drop_stream()
            if self._closed:
                return
            if response.compact_revision:
                self._closed = True
                raise watch_canceled_error(self._calls, response.cancel_reason,
                                           response.compact_revision)
            # canceled for another reason (e.g. the member is shutting down): resume
            return
        if response.watch_id not in (self._watch_id, -1):
            return
        if not response.events:
            # A progress notification: every event up to its revision was sent.
            self.next_revision = max(self.next_revision, response.header.revision + 1)
            return
        for ev in response.events:
            event = Event.from_pb(ev)
            if event.revision < self.next_revision:
                continue  # delivered before the stream was resumed
            self._pending.append(event)
        self.next_revision = max(self.next_revision, response.events[-1].kv.mod_revision + 1)


# Errors a reconnection cannot heal: the watch fails with them at once.
_WATCH_FATAL_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION,
                      grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED)


def _request_iterator(requests: queue.Queue[Any]) -> Iterator[Any]:
    while True:
        item = requests.get()
        if item is None:
            return
        yield item


# --------------------------------------------------------------------------- lease


class Lease:
    """A granted lease kept alive every TTL/3 by a background thread, on whichever member
    answers. `id` and `ttl` (as granted); `lost` is set once the lease is gone (revoked,
    or expired because no keep-alive got through in time). A context manager: exit
    revokes the lease, which deletes every key attached to it."""

    def __init__(self, calls: EtcdCalls, ttl: int, *, lease_id: int = 0,
                 keep_alive: bool = True) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < LEASE_TTL_MIN_S:
            raise ValueError(f"a lease TTL is a whole number of seconds >= "
                             f"{LEASE_TTL_MIN_S}, got {ttl!r}")
        self._calls = calls
        asked_at = time.monotonic()
        self.id, self.ttl = calls.lease_grant(ttl, lease_id=lease_id)
        self.lost = threading.Event()
        self._stop = threading.Event()
        # When the lease expires at the latest, as far as this client knows: the send
        # time of the last grant or keep-alive that got through plus the TTL it returned.
        self.expires_at = asked_at + self.ttl
        self._thread: threading.Thread | None = None
        if keep_alive:
            self._thread = threading.Thread(target=self._keep_alive, daemon=True,
                                            name=f"kvraft-lease-{self.id:016x}")
            self._thread.start()

    def _keep_alive(self) -> None:
        interval_s = max(self.ttl * KEEPALIVE_FRACTION, 0.1)
        next_at = time.monotonic() + interval_s
        while not self._stop.wait(max(next_at - time.monotonic(), 0)):
            sent_at = time.monotonic()
            if sent_at >= self.expires_at:
                self.lost.set()
                return
            try:
                ttl = self._calls.lease_keep_alive_once(
                    self.id, timeout=max(min(interval_s, self.expires_at - sent_at), 0.05))
            except Exception:  # a member down, an election: try again soon elsewhere
                next_at = time.monotonic() + KEEPALIVE_RETRY_S
                continue
            if ttl <= 0:
                self.lost.set()
                return
            self.expires_at = sent_at + ttl
            next_at = sent_at + interval_s

    def stop_keep_alive(self) -> None:
        """Stop renewing (the lease then expires after its TTL)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def revoke(self, *, timeout: float | None = None) -> None:
        """Stop renewing and revoke the lease now (its keys are deleted with it);
        a lease already gone is fine."""
        self.stop_keep_alive()
        with contextlib.suppress(self._calls.kc.NotFound):
            self._calls.lease_revoke(self.id, timeout=timeout)
        self.lost.set()

    def time_to_live(self, *, keys: bool = False) -> LeaseInfo | None:
        return self._calls.lease_time_to_live(self.id, keys=keys)

    @property
    def alive(self) -> bool:
        """False once the lease is known gone, or its TTL ran out since the last renewal
        that got through (a paused or partitioned holder sees this only afterwards)."""
        return not self.lost.is_set() and time.monotonic() < self.expires_at

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.revoke()


# --------------------------------------------------------------------------- helpers


def to_bytes(value: Bytesish, what: str = "value") -> bytes:
    """bytes as is; str as UTF-8; anything else is a TypeError naming `what`."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (b"" = no end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _bytes(value: Any, what: str) -> bytes:
    return to_bytes(value, what)


def _prefix_end(prefix: bytes) -> bytes:
    return prefix_end(prefix) or b"\x00"  # etcd: "\0" as range_end: every key from `key` on


def _range_end(key: bytes, prefix: bool, range_end: Any) -> bytes:
    if prefix:
        if range_end:
            raise ValueError("give either prefix=True or range_end, not both")
        return _prefix_end(key)
    return _bytes(range_end, "range_end") if range_end else b""
