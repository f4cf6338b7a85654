"""The Python client of a kvraft cluster (docs/client.md).

    with Client(["127.0.0.1:2379", "127.0.0.1:22379"]) as kv:
        kv.put("greeting", "hello")
        assert kv.get("greeting") == b"hello"

Keys and values are bytes; a str is encoded as UTF-8. Every call has a deadline (the
client's `timeout`, or the call's own `timeout=`) that covers all its attempts.

Failover. Any member answers any request (docs/wire-protocol.md), so the client sends
each call to the member it believes leads (learned from `ResponseHeader.leader_id`,
which saves the follower's forwarding hop), else to the endpoint that answered last,
and moves to the next endpoint when one fails:

- Reads (`get`, `scan`, `status`, `member_list`) are idempotent: they move on after a
  connection failure, UNAVAILABLE, or a per-attempt deadline, until the call's deadline.
  A read attempt gets a share of the remaining time, so one frozen member cannot eat
  the whole deadline.
- Writes (`put`, `delete`, `cas`, `batch`, member changes, leader transfer) move on
  only when the request certainly was not applied: the connection was never
  established (gRPC failed before sending), or the server marked its UNAVAILABLE
  answer with the trailing metadata `kvraft-retry-safe: 1` (it rejected the request
  before proposing it), and only while WRITE_RETRY_MIN_S of the deadline remains (a
  retry squeezed into the last moments would end as a server-side timeout, whose
  outcome is unknown). Any other failure of a write — a deadline, a connection lost
  after sending, an unmarked UNAVAILABLE — leaves its outcome unknown: the entry may
  still commit. Retrying it could apply it twice (a CAS would then report failure for
  its own success, a delete would report `False`), so the error is raised with
  `outcome_unknown=True` and the caller decides (read back, then retry).

TLS (SPEC §8): `cacert=` (the CA that signs the members' certificates), and `cert=` with
`key=` for members that require a client certificate; any of them makes every channel
TLS. The files are read when the client is made (a missing or unreadable one is a
ValueError at once) and again for each new channel. A handshake the client or the
member refuses is a `TLSError` naming the cause in one line (untrusted server
certificate, missing client certificate, ...), raised once every endpoint refused.

Errors are typed exceptions carrying the gRPC status code (`KvraftError.code`).
"""
from __future__ import annotations

import ipaddress
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

from kvraft import client_auth, client_etcd, client_recipes
from kvraft.client_etcd import (  # noqa: F401  etcd's API types (SPEC §6), importable here
    Bytesish,
    Compare,
    DeleteOp,
    Event,
    KeyValue,
    Lease,
    LeaseInfo,
    PutOp,
    RangeOp,
    RangeResult,
    TxnOp,
    TxnResult,
    Watch,
    prefix_end,
    to_bytes,
)
from kvraft.client_recipes import Election, Lock  # noqa: F401
from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from kvraft.tls import ClientTLS, handshake_failure
from kvraft.wire import (
    GRPC_MESSAGE_BYTES_MAX,
    RETRY_SAFE_METADATA_KEY,
    RETRY_SAFE_METADATA_VALUE,
    UINT64_MAX,
)

DEFAULT_ENDPOINT = "127.0.0.1:2379"
DEFAULT_TIMEOUT_S = 5.0
# A read attempt waits at least this long before the client gives up on that member.
READ_ATTEMPT_MIN_S = 0.5
# A write is re-sent (after a failure known to have applied nothing) only while this
# much of its deadline remains.
WRITE_RETRY_MIN_S = 0.5
# Pause between rounds over every endpoint (all unavailable, e.g. during an election),
# doubling up to the cap; bounded overall by the call's deadline.
ROUND_BACKOFF_INITIAL_S = 0.05
ROUND_BACKOFF_MAX_S = 0.5
# Scan pages followed for one scan() call; a server page cap of 10,000 keys makes this
# 10 million keys, far past what a store "for small, critical state" holds.
SCAN_PAGES_MAX = 1000
# How long the one-off member-list fetch that maps the leader's id to an endpoint may take.
MEMBER_MAP_TIMEOUT_S = 1.0
# Channels kept open to addresses outside the endpoint list (status of other members).
EXTRA_CHANNELS_MAX = 64
# A call gives up on TLS once every endpoint refused the handshake in this many rounds:
# a configuration error does not heal within a deadline, but a member that closed a
# connection while restarting looks like a refusal once.
TLS_REFUSED_ROUNDS_MAX = 2
UINT32_MAX = (1 << 32) - 1
# gRPC reconnect backoff: the default climbs to 120 s, which would keep a restarted
# member out of rotation for minutes.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
]
# How gRPC's own UNAVAILABLE errors begin when it failed a call before the request left
# this process: the channel's load balancer found no connected address (every
# connection attempt failed: refused, reset or closed during the HTTP/2 handshake), or
# the name did not resolve. gRPC offers nothing typed that tells these apart from an
# UNAVAILABLE after sending (a connection lost mid-call, or a server's own answer): all
# are StatusCode.UNAVAILABLE, without trailing or initial metadata, and
# debug_error_string() is the same text. The channel's connectivity state is no proof
# either: it is reported asynchronously, so a READY seen late would pass for "never
# connected". Hence the narrowest match: the fixed start of gRPC core's own messages,
# case and all (checked on grpcio 1.60 and 1.85, the range pyproject.toml allows), and
# never a phrase anywhere in the details, which a server's message could contain.
_NOT_SENT_DETAIL_PREFIXES = (
    "failed to connect to all addresses; last error: ",   # the picker, no connection
    "errors resolving ",                                   # the resolver, 1.85
    "DNS resolution failed for ",                          # the resolver, 1.60
)


# --------------------------------------------------------------------------- errors


class KvraftError(Exception):
    """A call failed. `code` is the gRPC status code (None for client-side errors),
    `endpoint` the member that answered last, and `outcome_unknown` is True when a
    write may or may not have been applied."""

    code: grpc.StatusCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        endpoint: str | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.endpoint = endpoint
        self.outcome_unknown = outcome_unknown


class InvalidArgument(KvraftError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(KvraftError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KvraftError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(KvraftError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(KvraftError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(KvraftError):
    code = grpc.StatusCode.ALREADY_EXISTS


# What handshake_failure says of a plaintext client at a TLS port (kvraft.tls).
_PLAINTEXT_AT_TLS_HINT = "if it serves TLS, pass --cacert"


class TLSError(Unavailable):
    """The TLS handshake with a member failed; the message names the cause."""


_ERROR_BY_CODE: dict[grpc.StatusCode, type[KvraftError]] = {
    cls.code: cls
    for cls in (InvalidArgument, Unavailable, DeadlineExceeded, FailedPrecondition,
                NotFound, AlreadyExists)
}


def error_for(
    code: grpc.StatusCode, message: str, *, endpoint: str | None = None,
    outcome_unknown: bool = False,
) -> KvraftError:
    """The typed exception for a gRPC status code (KvraftError for codes without one)."""
    cls = _ERROR_BY_CODE.get(code, KvraftError)
    return cls(message, code=code, endpoint=endpoint, outcome_unknown=outcome_unknown)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Member:
    id: int
    peer_address: str
    client_address: str
    learner: bool


@dataclass(frozen=True)
class NodeStatus:
    """One member's answer to Status: its header and its view of the cluster."""

    member_id: int
    leader_id: int
    term: int
    applied_index: int
    role: str
    commit_index: int
    last_index: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class CasResult:
    succeeded: bool
    found: bool
    current: bytes | None  # the key's value after the call (None when absent)


@dataclass(frozen=True)
class Put:
    """A put inside `Client.batch`."""

    key: Bytesish
    value: Bytesish


@dataclass(frozen=True)
class Delete:
    """A delete inside `Client.batch`."""

    key: Bytesish


BatchOp: TypeAlias = Put | Delete | tuple


def parse_endpoint(text: str) -> str:
    """Validate one HOST:PORT (IPv6 as [::1]:PORT); return it stripped.

    Raises ValueError with a one-line reason."""
    endpoint = text.strip()
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host:
        raise ValueError(f"malformed address {text!r}: expected HOST:PORT")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"malformed address {text!r}: unclosed '[' in IPv6 host")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"malformed address {text!r}: bad IPv6 host") from None
    elif ":" in host or any(c.isspace() or c in "/@?#[]" for c in host):
        raise ValueError(f"malformed address {text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"malformed address {text!r}: port must be 1-65535")
    return endpoint


def parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    """A comma-separated string or a list of HOST:PORT, validated, duplicates dropped."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"an endpoint must be a str, not {type(item).__name__}")
        if not item.strip():
            raise ValueError("empty endpoint in the endpoint list")
        endpoint = parse_endpoint(item)
        if endpoint not in parsed:
            parsed.append(endpoint)
    if not parsed:
        raise ValueError("no endpoints given")
    return parsed


# --------------------------------------------------------------------------- client


class _Channel:
    """One gRPC channel and the stubs over it."""

    def __init__(self, endpoint: str, tls: ClientTLS | None = None,
                 credentials: client_auth.Credentials | None = None) -> None:
        self.endpoint = endpoint
        if tls is None:
            raw = grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        else:
            raw = grpc.secure_channel(endpoint, tls.credentials(), options=_CHANNEL_OPTIONS)
        self.channel = client_auth.authenticated_channel(raw, credentials)
        self.kv = pb_grpc.KVStub(self.channel)
        self.cluster = pb_grpc.ClusterStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def _not_sent(err: grpc.RpcError) -> bool:
    """True when gRPC failed the call before the request left this process."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return (err.details() or "").startswith(_NOT_SENT_DETAIL_PREFIXES)


def _short_reason(details: str) -> str:
    """gRPC's connect errors end with the OS's reason ("...: Connection refused")."""
    return details.rsplit(": ", 1)[-1].strip(" []").lower() or details


def _marked_retry_safe(err: grpc.RpcError) -> bool:
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for item in trailing or ():  # grpc's _Metadatum: a named tuple (key, value)
        if item.key == RETRY_SAFE_METADATA_KEY and item.value in (
                RETRY_SAFE_METADATA_VALUE, RETRY_SAFE_METADATA_VALUE.encode()):
            return True
    return False


class Client:
    """A connection to a kvraft cluster through one or more of its members.

    Safe to share between threads: gRPC channels are thread-safe and the little state
    the client keeps (who leads, who answered last) sits behind a lock."""

    def __init__(
        self, endpoints: str | Sequence[str] = DEFAULT_ENDPOINT, timeout: float = DEFAULT_TIMEOUT_S,
        *, cacert: str | None = None, cert: str | None = None, key: str | None = None,
        user: str | None = None, password: str | None = None,
    ) -> None:
        """`user`, `password`: authenticate as that user on each member (etcd's auth,
        SPEC §8; kvraft.client_auth); without them the client sends no token."""
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if password is not None and not user:
            raise ValueError("a password needs a user")
        self._credentials = client_auth.Credentials(user, password or "") if user else None
        self.endpoints: tuple[str, ...] = tuple(parse_endpoints(endpoints))
        # None: plaintext. Checked now: a missing file is a ValueError here.
        self.tls: ClientTLS | None = ClientTLS.from_options(cacert, cert, key)
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._extra: dict[str, _Channel] = {}  # insertion-ordered, bounded
        self._closed = False
        self._preferred = 0  # index into endpoints of the member that answered last
        self._leader_id = 0
        self._member_at: dict[str, int] = {}  # endpoint -> member id, from headers
        self._mapped_leader_id = 0  # the leader for which the member list was last fetched
        # Set (never cleared) once a member answered kvraft.KV with UNIMPLEMENTED: the
        # cluster is a plain etcd, so put/get/delete go through etcd's KV from then on.
        self._etcd_only = False

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = [*self._channels.values(), *self._extra.values()]
            self._channels.clear()
            self._extra.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    @property
    def auth(self) -> client_auth.AuthCalls:
        """etcd's Auth service: users, roles, permissions, auth enable/disable."""
        return client_auth.AuthCalls(self, DeadlineExceeded)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ KV

    def put(self, key: Bytesish, value: Bytesish, *, lease: int = 0,
            timeout: float | None = None) -> None:
        """Set the key. lease > 0 attaches it to that lease (etcd's Put): the key is
        deleted when the lease expires or is revoked."""
        if lease:
            self._etcd.put(client_etcd.PutOp(key, value, lease=_lease_id(lease)), timeout=timeout)
            return
        request = pb.PutRequest(key=to_bytes(key, "key"), value=to_bytes(value, "value"))
        if self._kvraft_kv("Put", request, write=True, timeout=timeout) is None:
            self._etcd.put(client_etcd.PutOp(request.key, request.value), timeout=timeout)

    def get(
        self, key: Bytesish, serializable: bool = False, *, revision: int = 0,
        timeout: float | None = None,
    ) -> bytes | None:
        """The key's value, or None when it does not exist. serializable=True reads the
        answering member's local state (possibly stale) instead of a ReadIndex round.
        revision > 0 reads the value the key had at that revision (etcd's Range; a
        compacted revision raises OUT_OF_RANGE)."""
        if revision:
            result = self._etcd.range(client_etcd.RangeOp(key, revision=_revision(revision)),
                                      serializable=serializable, timeout=timeout)
            return result.kvs[0].value if result.kvs else None
        request = pb.GetRequest(key=to_bytes(key, "key"), consistency=_consistency(serializable))
        response = self._kvraft_kv("Get", request, write=False, timeout=timeout)
        if response is None:
            result = self._etcd.range(client_etcd.RangeOp(request.key),
                                      serializable=serializable, timeout=timeout)
            return result.kvs[0].value if result.kvs else None
        return response.value if response.found else None

    def delete(self, key: Bytesish, *, timeout: float | None = None) -> bool:
        """Delete the key; True when it existed."""
        request = pb.DeleteRequest(key=to_bytes(key, "key"))
        response = self._kvraft_kv("Delete", request, write=True, timeout=timeout)
        if response is None:
            return self._etcd.delete(client_etcd.DeleteOp(request.key), timeout=timeout).deleted > 0
        return response.deleted

    def _kvraft_kv(self, method: str, request: Any, *, write: bool,
                   timeout: float | None) -> Any | None:
        """kvraft.KV's `method`, or None when the cluster is a plain etcd: its member
        answered UNIMPLEMENTED (no kvraft.KV service, so nothing was applied) and the
        caller makes the same call through etcd's KV instead, now and from then on."""
        if self._etcd_only:
            return None
        try:
            return self._call("kv", method, request, write=write, timeout=timeout)
        except KvraftError as err:
            if err.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            self._etcd_only = True
            return None

    def scan(
        self,
        start: Bytesish = b"",
        end: Bytesish = b"",
        limit: int = 0,
        *,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Keys in [start, end) in order (end b"" = to the end), at most `limit` (0 = all).

        The client follows the server's pages; each page is its own read, so a scan
        over several pages is not one snapshot."""
        return self.scan_page(start, end, limit, serializable=serializable,
                              timeout=timeout)[0]

    def scan_page(
        self,
        start: Bytesish = b"",
        end: Bytesish = b"",
        limit: int = 0,
        *,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Like scan, also returning whether keys remain in the range past `limit`."""
        deadline = self._deadline(timeout)
        kvs: list[tuple[bytes, bytes]] = []
        more = False
        for page, page_more in self._pages(start, end, limit, serializable, lambda: deadline):
            kvs.extend(page)
            more = page_more
        return kvs, more

    def scan_pages(
        self,
        start: Bytesish = b"",
        end: Bytesish = b"",
        limit: int = 0,
        *,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> Iterator[tuple[list[tuple[bytes, bytes]], bool]]:
        """Like scan_page, lazily, one server page at a time: yields (page, more). The
        next page is fetched when the caller asks for it, each with its own deadline
        (`timeout`), so a range too large to hold at once can be streamed."""
        return self._pages(start, end, limit, serializable, lambda: self._deadline(timeout))

    def _pages(
        self, start: Bytesish, end: Bytesish, limit: int, serializable: bool,
        deadline_of: Callable[[], float],
    ) -> Iterator[tuple[list[tuple[bytes, bytes]], bool]]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= UINT32_MAX:
            raise ValueError(f"limit must be an integer in 0..{UINT32_MAX}, got {limit!r}")
        next_start = to_bytes(start, "start")
        end_b = to_bytes(end, "end")
        return self._page_iter(next_start, end_b, limit, serializable, deadline_of)

    def _page_iter(
        self, next_start: bytes, end: bytes, limit: int, serializable: bool,
        deadline_of: Callable[[], float],
    ) -> Iterator[tuple[list[tuple[bytes, bytes]], bool]]:
        taken = 0
        for _ in range(SCAN_PAGES_MAX):
            request = pb.ScanRequest(start=next_start, end=end, limit=limit - taken if limit else 0,
                                     consistency=_consistency(serializable))
            response = self._call("kv", "Scan", request, write=False, deadline=deadline_of())
            page = [(kv.key, kv.value) for kv in response.kvs]
            if limit:
                page = page[:limit - taken]
            taken += len(page)
            if not response.more:
                yield page, False
                return
            if limit and taken >= limit:
                yield page, True
                return
            if not response.kvs:  # more=True with an empty page would loop forever
                raise KvraftError("the server returned an empty scan page marked 'more'")
            next_start = response.kvs[-1].key + b"\x00"  # the next key after the last
            yield page, True
        raise KvraftError(f"scan stopped after {SCAN_PAGES_MAX} pages; pass a limit")

    def cas(
        self, key: Bytesish, expected: Bytesish | None, value: Bytesish, *,
        timeout: float | None = None,
    ) -> bool:
        """Write `value` iff the key's value equals `expected` (None: iff the key does
        not exist). True when it wrote."""
        return self.compare_and_swap(key, expected, value, timeout=timeout).succeeded

    def compare_and_swap(
        self, key: Bytesish, expected: Bytesish | None, value: Bytesish, *,
        timeout: float | None = None,
    ) -> CasResult:
        """cas() with the server's report of the key's current value."""
        request = pb.CompareAndSwapRequest(key=to_bytes(key, "key"), value=to_bytes(value))
        if expected is not None:
            request.expected = to_bytes(expected, "expected")
        response = self._call("kv", "CompareAndSwap", request, write=True, timeout=timeout)
        current = response.current if response.found else None
        return CasResult(succeeded=response.succeeded, found=response.found, current=current)

    def batch(self, ops: Iterable[BatchOp], *, timeout: float | None = None) -> list[bool]:
        """Apply puts and deletes atomically, in order, as one Raft entry.

        Each op is Put(key, value), Delete(key), ("put", key, value) or ("delete", key).
        Returns, for each delete in order, whether its key existed."""
        request = pb.BatchRequest()
        for op in ops:
            request.ops.append(_batch_op(op))
        return list(self._call("kv", "Batch", request, write=True, timeout=timeout).deleted)

    # ------------------------------------------------------------------ etcd's API
    # Revisions, txns, watches, leases, locks and elections: kvraft.client_etcd, over
    # etcd's services on the same client port (SPEC §6, docs/client.md).

    @property
    def _etcd(self) -> client_etcd.EtcdCalls:
        calls = self.__dict__.get("_etcd_calls")
        if calls is None:
            with self._lock:
                calls = self.__dict__.setdefault(
                    "_etcd_calls", client_etcd.EtcdCalls(self, sys.modules[__name__]))
        return calls

    def range(
        self, key: Bytesish, range_end: Bytesish = b"", *, prefix: bool = False,
        revision: int = 0, limit: int = 0, keys_only: bool = False, count_only: bool = False,
        serializable: bool = False, timeout: float | None = None,
    ) -> client_etcd.RangeResult:
        """etcd's Range: the keys of [key, range_end) (one key when range_end is empty,
        every key starting with `key` when prefix=True) with their revisions, at
        `revision` (0: the latest)."""
        op = client_etcd.RangeOp(key, range_end, prefix=prefix, revision=_revision(revision),
                             limit=limit, keys_only=keys_only, count_only=count_only)
        return self._etcd.range(op, serializable=serializable, timeout=timeout)

    def txn(
        self, compare: Iterable[client_etcd.CompareLike] = (),
        success: Iterable[client_etcd.OpLike] = (),
        failure: Iterable[client_etcd.OpLike] = (), *, timeout: float | None = None,
    ) -> client_etcd.TxnResult:
        """An etcd transaction, atomic at one revision: if every compare holds, run the
        `success` ops, else the `failure` ops. Compares: `Compare.value(k) == v`,
        `Compare.version(k) > 2`, `Compare.create(k) == 0` (k does not exist),
        `Compare.mod(k) < r`, `Compare.lease(k) == id`; ops: RangeOp, PutOp, DeleteOp,
        TxnOp (nested), and batch()'s Put and Delete. etcd's own Compare and RequestOp
        messages are accepted too."""
        return self._etcd.txn(compare, [_txn_op(op) for op in success],
                              [_txn_op(op) for op in failure], timeout=timeout)

    def compact(self, revision: int, *, physical: bool = False,
                timeout: float | None = None) -> None:
        """Drop the history at and below `revision` (reads below it fail afterwards)."""
        self._etcd.compact(_revision(revision), physical=physical, timeout=timeout)

    def watch(
        self, key: Bytesish, prefix: bool = False, start_revision: int = 0,
        prev_kv: bool = False, *, range_end: Bytesish = b"",
    ) -> client_etcd.Watch:
        """An iterator of Events on `key` (or every key starting with it, or
        [key, range_end)) from `start_revision` (0: changes after the revision the
        serving member has applied when the watch is created). It resumes on
        another member after the last revision it delivered when its member fails: no
        gap, no duplicate. Close it (or use it as a context manager) to stop."""
        ce = client_etcd
        key_bytes = to_bytes(key, "key")
        return ce.Watch(self._etcd, key_bytes, ce._range_end(key_bytes, prefix, range_end),
                        _revision(start_revision), prev_kv)

    def lease(self, ttl: int, *, keep_alive: bool = True) -> client_etcd.Lease:
        """Grant a lease of `ttl` seconds and keep it alive every TTL/3 in a background
        thread (keep_alive=False: let it expire). `.id`; `.revoke()`; a context manager
        that revokes it on exit, deleting the keys put with `lease=lease.id`."""
        return client_etcd.Lease(self._etcd, ttl, keep_alive=keep_alive)

    def lease_grant(self, ttl: int, *, lease_id: int = 0,
                    timeout: float | None = None) -> tuple[int, int]:
        """Grant a lease without keeping it alive; returns (id, granted TTL)."""
        return self._etcd.lease_grant(ttl, lease_id=lease_id, timeout=timeout)

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        self._etcd.lease_revoke(_lease_id(lease_id), timeout=timeout)

    def lease_keep_alive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease once; its new TTL, 0 when it expired or was revoked."""
        return self._etcd.lease_keep_alive_once(_lease_id(lease_id), timeout=timeout)

    def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None,
    ) -> client_etcd.LeaseInfo | None:
        """A lease's remaining and granted TTL (and its keys); None when it is gone."""
        return self._etcd.lease_time_to_live(_lease_id(lease_id), keys=keys, timeout=timeout)

    def lease_list(self, *, timeout: float | None = None) -> list[int]:
        return self._etcd.lease_list(timeout=timeout)

    def lock(self, name: Bytesish, ttl: int = 60, *,
             timeout: float | None = None) -> client_recipes.Lock:
        """Wait for the lock `name` (etcd's recipe, shared with `etcdctl lock`) and
        return the holder: `.key`, `.fencing_token` (its create revision), `.held`,
        `.release()`; a context manager. `ttl`: the lease that keeps the lock while this
        process lives; `timeout`: how long to wait (None: as long as it takes). A lock is
        NOT mutual exclusion on its own — see docs/client.md#locks."""
        return client_recipes.acquire_lock(self._etcd, to_bytes(name, "name"), ttl, timeout)

    def election(self, name: Bytesish, *, ttl: int = 60) -> client_recipes.Election:
        """An election on `name` (etcd's recipe, shared with `etcdctl elect`):
        `.campaign(value)`, `.proclaim(value)`, `.leader()`, `.observe()`, `.resign()`."""
        return client_recipes.Election(self._etcd, to_bytes(name, "name"), ttl=ttl)

    # ------------------------------------------------------------------ cluster

    def status(self, endpoint: str | None = None, *, timeout: float | None = None) -> NodeStatus:
        """The Status of the member at `endpoint` (any HOST:PORT, not only one of the
        client's endpoints), or of whichever endpoint answers first when None."""
        if endpoint is None:
            response = self._call("cluster", "Status", pb.StatusRequest(), write=False,
                                  timeout=timeout)
        else:
            response = self._call_one(parse_endpoint(endpoint), "cluster", "Status",
                                      pb.StatusRequest(), timeout=timeout)
        header = response.header
        self._learn_members(response.members)
        return NodeStatus(
            member_id=header.member_id, leader_id=header.leader_id, term=header.term,
            applied_index=header.applied_index, role=response.role,
            commit_index=response.commit_index, last_index=response.last_index,
            members=tuple(_member(m) for m in response.members),
        )

    def member_list(self, *, timeout: float | None = None) -> list[Member]:
        return list(self.status(timeout=timeout).members)

    def member_add(
        self, member_id: int, peer_address: str, client_address: str = "", *,
        learner: bool = False, timeout: float | None = None,
    ) -> list[Member]:
        """Add a member (or, with learner=False, promote the learner `member_id`).
        Returns the members after the change."""
        request = pb.AddMemberRequest(id=_member_id(member_id), peer_address=peer_address,
                                      client_address=client_address, learner=learner)
        response = self._call("cluster", "AddMember", request, write=True, timeout=timeout)
        return [_member(m) for m in response.members]

    def member_remove(self, member_id: int, *, timeout: float | None = None) -> list[Member]:
        request = pb.RemoveMemberRequest(id=_member_id(member_id))
        response = self._call("cluster", "RemoveMember", request, write=True, timeout=timeout)
        return [_member(m) for m in response.members]

    def transfer_leader(self, to: int, *, timeout: float | None = None) -> None:
        request = pb.TransferLeaderRequest(to=_member_id(to))
        self._call("cluster", "TransferLeader", request, write=True, timeout=timeout)

    @property
    def leader_id(self) -> int:
        """The leader named by the latest answer (0 when unknown)."""
        return self._leader_id

    # ------------------------------------------------------------------ internals

    def _deadline(self, timeout: float | None) -> float:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _channel(self, endpoint: str) -> _Channel:
        with self._lock:
            if self._closed:
                raise KvraftError("the client is closed")
            channel = self._channels.get(endpoint) or self._extra.get(endpoint)
            if channel is None:
                channel = _Channel(endpoint, self.tls, self._credentials)
                if endpoint in self.endpoints:
                    self._channels[endpoint] = channel
                else:
                    self._extra[endpoint] = channel
                    if len(self._extra) > EXTRA_CHANNELS_MAX:
                        oldest = next(iter(self._extra))
                        self._extra.pop(oldest).close()
            return channel

    def _order(self) -> list[str]:
        """Endpoints to try: the known leader first, then from the last that answered."""
        with self._lock:
            n = len(self.endpoints)
            order = [self.endpoints[(self._preferred + i) % n] for i in range(n)]
            if self._leader_id:
                for endpoint, member_id in self._member_at.items():
                    if member_id == self._leader_id and endpoint in order:
                        order.remove(endpoint)
                        order.insert(0, endpoint)
                        break
        return order

    def _learn(self, endpoint: str, header: pb.ResponseHeader) -> None:
        with self._lock:
            if endpoint in self.endpoints:
                self._preferred = self.endpoints.index(endpoint)
                if header.member_id:
                    self._member_at[endpoint] = header.member_id
            self._leader_id = header.leader_id

    def _learn_members(self, members: Iterable[pb.Member]) -> None:
        """Map our endpoints to member ids by the client addresses members publish."""
        with self._lock:
            for m in members:
                if m.client_address in self.endpoints:
                    self._member_at[m.client_address] = m.id

    def _maybe_map_leader(self, endpoint: str, deadline: float) -> None:
        """A leader was named whose endpoint we cannot tell: ask `endpoint` once for the
        member list (client addresses), so later calls go straight to the leader
        instead of through a follower's forwarding hop. At most once per leader."""
        with self._lock:
            leader_id = self._leader_id
            if (not leader_id or leader_id == self._mapped_leader_id
                    or len(self.endpoints) < 2 or leader_id in self._member_at.values()):
                return
            self._mapped_leader_id = leader_id
        timeout_s = min(MEMBER_MAP_TIMEOUT_S, deadline - time.monotonic())
        if timeout_s <= 0:
            return
        try:
            response = self._call_one(endpoint, "cluster", "Status", pb.StatusRequest(),
                                      timeout=timeout_s)
        except KvraftError:
            return  # only an optimisation; the next leader change tries again
        self._learn_members(response.members)

    def _forget(self, endpoint: str) -> None:
        """The member at `endpoint` failed: stop preferring it as the leader."""
        with self._lock:
            if self._leader_id and self._member_at.get(endpoint) == self._leader_id:
                self._leader_id = 0

    def _call(
        self, service: str, method: str, request: Any, *, write: bool,
        timeout: float | None = None, deadline: float | None = None,
    ) -> Any:
        """Send `request` with failover (see the module docstring) until the deadline."""
        if deadline is None:
            deadline = self._deadline(timeout)
        backoff_s = ROUND_BACKOFF_INITIAL_S
        last: KvraftError | None = None
        failures: dict[str, str] = {}  # endpoint -> its latest failure, for the report
        tls_refused_rounds = 0
        while True:
            order = self._order()
            tls_refused = 0  # endpoints that refused the TLS handshake this round
            for position, endpoint in enumerate(order):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                if write and last is not None and remaining_s < WRITE_RETRY_MIN_S:
                    # Too little time left: a retry would likely time out on the server
                    # and turn this definite failure into an unknown outcome.
                    raise _final_error(last, failures)
                attempt_s = remaining_s
                if not write:
                    # Share the time left among the endpoints not yet tried this round.
                    share_s = remaining_s / (len(order) - position)
                    attempt_s = min(remaining_s, max(share_s, READ_ATTEMPT_MIN_S))
                stub = getattr(self._channel(endpoint), service)
                try:
                    response = getattr(stub, method)(request, timeout=attempt_s)
                except grpc.RpcError as err:
                    last, retry = self._classify(err, endpoint, write, deadline)
                    if not retry:
                        raise last from None
                    failures[endpoint] = last.message
                    tls_refused += isinstance(last, TLSError)
                    self._forget(endpoint)
                    continue
                self._learn(endpoint, response.header)
                self._maybe_map_leader(endpoint, deadline)
                return response
            if tls_refused == len(order):
                tls_refused_rounds += 1
                if tls_refused_rounds >= TLS_REFUSED_ROUNDS_MAX:
                    assert last is not None
                    raise _final_error(last, failures)
            else:
                tls_refused_rounds = 0
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            # Every endpoint failed this round (e.g. an election): pause, then go again.
            time.sleep(min(remaining_s, backoff_s * (0.5 + random.random())))
            backoff_s = min(backoff_s * 2, ROUND_BACKOFF_MAX_S)
        if last is None:
            raise DeadlineExceeded("the deadline passed before any endpoint was tried")
        raise _final_error(last, failures)

    def _classify(
        self, err: grpc.RpcError, endpoint: str, write: bool, deadline: float
    ) -> tuple[KvraftError, bool]:
        """The exception for a failed attempt, and whether another endpoint may be tried."""
        code = err.code()
        details = err.details() or code.name.lower()
        if _not_sent(err):
            cause = handshake_failure(details, self.tls, endpoint)
            if cause is not None and self.tls is not None:
                return TLSError(cause, code=code, endpoint=endpoint), True
            message = cause or f"{endpoint} is unreachable ({_short_reason(details)})"
            return error_for(code, message, endpoint=endpoint), True
        if write:
            if code == grpc.StatusCode.UNAVAILABLE and _marked_retry_safe(err):
                return error_for(code, details, endpoint=endpoint), True
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.INTERNAL):
                message = f"{details} (at {endpoint}; the write may or may not have applied)"
                return error_for(code, message, endpoint=endpoint, outcome_unknown=True), False
            return error_for(code, details, endpoint=endpoint), False
        if code == grpc.StatusCode.UNAVAILABLE:
            return error_for(code, f"{details} (at {endpoint})", endpoint=endpoint), True
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # The attempt's share of the deadline passed; the call's may not have.
            retry = time.monotonic() < deadline
            return error_for(code, f"{details} (at {endpoint})", endpoint=endpoint), retry
        return error_for(code, details, endpoint=endpoint), False

    def _call_one(
        self, endpoint: str, service: str, method: str, request: Any, *,
        timeout: float | None = None,
    ) -> Any:
        """One attempt at one endpoint, no failover."""
        deadline = self._deadline(timeout)
        stub = getattr(self._channel(endpoint), service)
        try:
            response = getattr(stub, method)(request, timeout=deadline - time.monotonic())
        except grpc.RpcError as err:
            raise self._classify(err, endpoint, False, deadline)[0] from None
        self._learn(endpoint, response.header)
        return response


def _final_error(last: KvraftError, failures: dict[str, str]) -> KvraftError:
    """The error of a call that ran out of time: every member's failure when several."""
    if len(failures) < 2:
        return last
    if isinstance(last, TLSError):
        return last  # the cause to fix; the other members' failures are likely the same
    if all(_PLAINTEXT_AT_TLS_HINT in m for m in failures.values()):
        return last  # a plaintext client at TLS ports: one line says it for all
    summary = "; ".join(failures.values())
    return error_for(last.code or grpc.StatusCode.UNAVAILABLE,
                     f"no member answered in time: {summary}", endpoint=last.endpoint)


def _txn_op(op: Any) -> Any:
    """batch()'s Put and Delete as txn ops; anything else as given."""
    if isinstance(op, Put):
        return client_etcd.PutOp(op.key, op.value)
    if isinstance(op, Delete):
        return client_etcd.DeleteOp(op.key)
    return op


def _revision(revision: int) -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ValueError(f"a revision is an int >= 0, got {revision!r}")
    return revision


def _lease_id(lease_id: int) -> int:
    if isinstance(lease_id, bool) or not isinstance(lease_id, int):
        raise TypeError(f"a lease id must be an int, not {type(lease_id).__name__}")
    if not 0 < lease_id < 1 << 63:
        raise ValueError(f"a lease id is a positive 64-bit signed integer, got {lease_id}")
    return lease_id


def _consistency(serializable: bool) -> pb.ReadConsistency:
    return pb.SERIALIZABLE if serializable else pb.LINEARIZABLE


def _member_id(member_id: int) -> int:
    if isinstance(member_id, bool) or not isinstance(member_id, int):
        raise TypeError(f"a member id must be an int, not {type(member_id).__name__}")
    if not 0 < member_id <= UINT64_MAX:
        raise ValueError(f"a member id must be a positive 64-bit integer, got {member_id}")
    return member_id


def _member(m: pb.Member) -> Member:
    return Member(id=m.id, peer_address=m.peer_address, client_address=m.client_address,
                  learner=m.learner)


def _batch_op(op: BatchOp) -> pb.BatchOp:
    if isinstance(op, Put):
        return pb.BatchOp(put=pb.PutRequest(key=to_bytes(op.key, "key"),
                                            value=to_bytes(op.value)))
    if isinstance(op, Delete):
        return pb.BatchOp(delete=pb.DeleteRequest(key=to_bytes(op.key, "key")))
    if isinstance(op, tuple) and len(op) == 3 and op[0] == "put":
        return pb.BatchOp(put=pb.PutRequest(key=to_bytes(op[1], "key"), value=to_bytes(op[2])))
    if isinstance(op, tuple) and len(op) == 2 and op[0] == "delete":
        return pb.BatchOp(delete=pb.DeleteRequest(key=to_bytes(op[1], "key")))
    raise TypeError(f"a batch op is Put, Delete, ('put', k, v) or ('delete', k), not {op!r}")

