"""etcd's `Lease` service (SPEC §6): LeaseGrant, LeaseRevoke, LeaseKeepAlive,
LeaseTimeToLive, LeaseLeases, as etcd 3.4/3.5 answer them.

Grants and revokes are Raft proposals, from any member. A lease's clock lives on the
leader only (lessor.py), so keep-alives and time-to-live questions are answered there:
a follower forwards them over a gRPC channel to the leader's PEER address (as etcd, over
its peer URLs; member_calls.py serves them there) and relays the answer. A forwarded
call carries FORWARDED_METADATA_KEY; a member that receives one and does not lead
refuses it ("etcdserver: not leader", UNAVAILABLE) rather than forwarding again, so two
members with different views of the leader never bounce a call between them. The
leader renews only after a ReadIndex round (lessor.py's docstring).

TLS: the forwarding channel is the peer port's (tls.py `member_channel`): mutual TLS
with this member's peer certificate when the peer port has TLS, else plaintext.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.storage import ApplyResult
from kvraft.storage.commands import etcd_command

from .. import storage_adapter as sa
from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from ..tls import member_channel
from ..transport import CHANNEL_OPTIONS
from ..waiters import NodeError
from .errors import STOPPED, EtcdError, deadline_s, serve_call
from .header import etcd_header
from .lessor import LEASE_GRANT, LEASE_REVOKE, LEASE_TTL_MAX_S, Lessor, granted_ttl_s

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext

SERVICE_NAME = "etcdserverpb.Lease"
FORWARDED_METADATA_KEY = "kvraft-lease-forwarded"
LEASE_KEYS_MAX = 100_000         # keys one LeaseTimeToLive lists (etcd lists them all)
LEASE_ID_ATTEMPTS_MAX = 16       # random ids tried for a grant that left the id to us
FORWARD_TIMEOUT_S = 5.0          # one forwarded call's (or keep-alive answer's) wait
LEADER_WAIT_S = 3.0              # how long a keep-alive waits for a leader to appear
LEADER_RETRY_S = 0.1             # ... re-checking this often
KEEP_ALIVES_IN_FLIGHT_MAX = 64   # requests of one keep-alive stream at work at once

MSG_LEASE_EXISTS = "etcdserver: lease already exists"
MSG_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
MSG_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
MSG_NO_LEADER = "etcdserver: no leader"
MSG_NOT_LEADER = "etcdserver: not leader"


def _no_leader() -> NodeError:
    return NodeError(grpc.StatusCode.UNAVAILABLE, MSG_NO_LEADER)


class _LeaderChannel:
    """One channel to the leader's peer address, replaced when the leader moves."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config  # the peer port's TLS, which the leader's peer port shares
        self.address = ""
        self.channel: grpc.aio.Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()   # old channels being closed

    def stub(self, address: str) -> Any:
        if self.channel is None or address != self.address:
            if self.channel is not None:
                task = asyncio.get_running_loop().create_task(self.channel.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            self.channel = member_channel(self.config, address, CHANNEL_OPTIONS)
            self.address = address
        return etcdpb_grpc.LeaseStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


@dataclass(eq=False)
class _Stream:
    """One keep-alive stream to the leader. Invariant: `waiting` holds, in order, the
    answers still owed for the requests written on `call` (the leader's handler answers
    every request exactly once, in order), so each response resolves the first one."""

    call: Any
    waiting: deque[asyncio.Future[etcdpb.LeaseKeepAliveResponse]] = field(
        default_factory=deque)
    reader: asyncio.Task[None] | None = None


class _Upstream:
    """The keep-alives of one client stream, forwarded to the leader on one stream of
    our own: pipelined (written in order, answered in order), reopened to a new leader
    when the leader moves or the stream fails."""

    def __init__(self, leader: _LeaderChannel) -> None:
        self._leader = leader
        self._stream: _Stream | None = None
        self._address = ""
        self._write_lock = asyncio.Lock()

    async def ask(self, address: str, request: etcdpb.LeaseKeepAliveRequest
                  ) -> etcdpb.LeaseKeepAliveResponse:
        async with self._write_lock:
            stream = self._stream
            if stream is None or address != self._address:
                self.close()
                stream = _Stream(self._leader.stub(address).LeaseKeepAlive(
                    metadata=((FORWARDED_METADATA_KEY, "1"),)))
                stream.reader = asyncio.get_running_loop().create_task(self._read(stream))
                self._stream, self._address = stream, address
            answer: asyncio.Future[etcdpb.LeaseKeepAliveResponse] = \
                asyncio.get_running_loop().create_future()
            stream.waiting.append(answer)
            try:
                await asyncio.wait_for(stream.call.write(request), FORWARD_TIMEOUT_S)
            except asyncio.InvalidStateError as e:
                # The leader ended the stream between our last read and this write
                # (a restart, a leader change): retried on a new stream.
                self._drop(stream, e)
                raise ConnectionError("the leader's keep-alive stream had ended") from e
            except BaseException as e:
                self._drop(stream, e)
                raise
        try:
            return await asyncio.wait_for(asyncio.shield(answer), FORWARD_TIMEOUT_S)
        except TimeoutError as e:
            self._drop(stream, e)   # a leader that does not answer: start afresh
            raise

    async def _read(self, stream: _Stream) -> None:
        try:
            while True:
                response = await stream.call.read()
                if response is grpc.aio.EOF:
                    raise ConnectionError("the leader ended the keep-alive stream")
                if not stream.waiting:
                    raise ConnectionError("the leader answered a keep-alive nobody sent")
                answer = stream.waiting.popleft()
                if not answer.done():
                    answer.set_result(response)
        except BaseException as e:
            self._drop(stream, e)
            if isinstance(e, asyncio.CancelledError):
                raise

    def _drop(self, stream: _Stream, error: BaseException) -> None:
        """End `stream`: every answer it still owes fails (the callers retry)."""
        if self._stream is stream:
            self._stream = None
        stream.call.cancel()
        if stream.reader is not None and stream.reader is not asyncio.current_task():
            stream.reader.cancel()
        if isinstance(error, asyncio.CancelledError):
            error = ConnectionError("the keep-alive stream to the leader was closed")
        while stream.waiting:
            answer = stream.waiting.popleft()
            if not answer.done():
                answer.set_exception(error)
                answer.exception()   # retrieved: a caller that timed out is gone

    def close(self) -> None:
        if self._stream is not None:
            self._drop(self._stream, asyncio.CancelledError())


class LeaseService(etcdpb_grpc.LeaseServicer):
    def __init__(self, node: Node, config: NodeConfig, metrics: NodeMetrics,
                 lessor: Lessor) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics
        self.lessor = lessor
        self._leader = _LeaderChannel(config)

    # --- plumbing ----------------------------------------------------------------------
    async def _call(self, rpc: str, context: Ctx,
                    body: Callable[[float], Awaitable[T]]) -> T:
        """Run `body` with the call's timeout; errors become etcd's statuses
        (errors.serve_call), a forwarded call's failure is relayed as the leader said it."""
        timeout_s = deadline_s(context, self.config.default_deadline_s)

        async def run() -> T:
            if self.node.stopping:
                raise STOPPED.error()
            try:
                return await body(timeout_s)
            except grpc.aio.AioRpcError as e:
                raise EtcdError(e.code(), e.details() or "") from None

        return await serve_call(f"etcd.Lease.{rpc}", context, self.metrics, run)

    def _leader_address(self) -> str | None:
        """The leader's peer address; None when this member leads."""
        leader_id = self.node.raw.raft.leader_id
        if leader_id == 0:
            raise _no_leader()
        if leader_id == self.node.id:
            return None
        for member in self.node.members():
            if member.id == leader_id and member.peer_address:
                return member.peer_address
        raise NodeError(grpc.StatusCode.UNAVAILABLE,
                        f"the peer address of leader {leader_id} is not known yet")

    @staticmethod
    def _forwarded(context: Ctx) -> bool:
        return any(k == FORWARDED_METADATA_KEY for k, _ in context.invocation_metadata() or ())

    async def _confirm_leader(self, timeout_s: float) -> bool:
        """True once a ReadIndex round confirmed this member still leads (and it has
        applied everything committed before, so it knows every granted lease)."""
        if not self.lessor.leading:
            return False
        await self.node.read_index(timeout_s)
        return self.lessor.leading

    # --- grant and revoke: proposals ---------------------------------------------------
    async def LeaseGrant(self, request: etcdpb.LeaseGrantRequest, context: Ctx
                         ) -> etcdpb.LeaseGrantResponse:
        async def body(timeout_s: float) -> etcdpb.LeaseGrantResponse:
            if request.TTL > LEASE_TTL_MAX_S:
                raise EtcdError(grpc.StatusCode.OUT_OF_RANGE, MSG_TTL_TOO_LARGE)
            ttl = granted_ttl_s(request.TTL, self.lessor.min_ttl_s)
            sm = self.node.store.sm
            lease_id = request.ID
            if lease_id == 0:
                # etcd picks a random positive int63 for the client; so do we, one that
                # is free now (a collision at apply is refused and the client retries).
                for _ in range(LEASE_ID_ATTEMPTS_MAX):
                    lease_id = secrets.randbits(63)
                    if lease_id and sm.lease(lease_id) is None:
                        break
            elif sm.lease(lease_id) is not None:
                raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION, MSG_LEASE_EXISTS)
            request_id = sa.new_request_id()
            result = await self.node.propose(
                request_id, etcd_command(request_id, LEASE_GRANT,
                                         etcdpb.LeaseGrantRequest(ID=lease_id, TTL=ttl)),
                timeout_s)
            _raise_refusal(result)
            record = sm.lease(lease_id)
            return etcdpb.LeaseGrantResponse(
                header=etcd_header(self.node, result.revision), ID=lease_id,
                TTL=record.ttl if record is not None else ttl)
        return await self._call("LeaseGrant", context, body)

    async def LeaseRevoke(self, request: etcdpb.LeaseRevokeRequest, context: Ctx
                          ) -> etcdpb.LeaseRevokeResponse:
        async def body(timeout_s: float) -> etcdpb.LeaseRevokeResponse:
            await self.node.read_index(timeout_s)   # so a grant just made is seen here
            if self.node.store.sm.lease(request.ID) is None:
                raise EtcdError(grpc.StatusCode.NOT_FOUND, MSG_LEASE_NOT_FOUND)
            request_id = sa.new_request_id()
            result = await self.node.propose(
                request_id, etcd_command(request_id, LEASE_REVOKE,
                                         etcdpb.LeaseRevokeRequest(ID=request.ID)),
                timeout_s)
            _raise_refusal(result)
            return etcdpb.LeaseRevokeResponse(header=etcd_header(self.node, result.revision))
        return await self._call("LeaseRevoke", context, body)

    # --- keep-alive and time-to-live: on the leader ------------------------------------
    async def LeaseKeepAlive(self, request_iterator: AsyncIterator[etcdpb.LeaseKeepAliveRequest],
                             context: Ctx) -> AsyncIterator[etcdpb.LeaseKeepAliveResponse]:
        """Answers in request order, with up to KEEP_ALIVES_IN_FLIGHT_MAX requests of
        the stream at work at once (so that a client renewing many leases on one stream
        shares ReadIndex rounds, and a follower pipelines them to the leader)."""
        forwarded = self._forwarded(context)
        upstream = _Upstream(self._leader)
        answers: asyncio.Queue[asyncio.Task[etcdpb.LeaseKeepAliveResponse] | None] = \
            asyncio.Queue(maxsize=KEEP_ALIVES_IN_FLIGHT_MAX)
        loop = asyncio.get_running_loop()

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    def body(timeout_s: float, request: etcdpb.LeaseKeepAliveRequest = request
                             ) -> Awaitable[etcdpb.LeaseKeepAliveResponse]:
                        return self._keep_alive(request, forwarded, upstream, timeout_s)
                    await answers.put(loop.create_task(
                        self._call("LeaseKeepAlive", context, body)))
            finally:
                await answers.put(None)

        reader = loop.create_task(read_requests())
        try:
            while (task := await answers.get()) is not None:
                yield await task
            await reader   # the client's stream ended; raises what reading it raised
        finally:
            reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is not None:
                    pending.cancel()
                    # One that had already failed must not be reported as unretrieved.
                    pending.add_done_callback(_consume_outcome)
            upstream.close()

    async def _keep_alive(self, request: etcdpb.LeaseKeepAliveRequest, forwarded: bool,
                          upstream: _Upstream, timeout_s: float
                          ) -> etcdpb.LeaseKeepAliveResponse:
        """Renew on the leader, or relay the leader's answer; waits up to LEADER_WAIT_S
        for a leader (a failover) before failing UNAVAILABLE."""
        give_up_at = time.monotonic() + min(LEADER_WAIT_S, max(timeout_s, LEADER_RETRY_S))
        while True:
            try:
                if await self._confirm_leader(min(timeout_s, FORWARD_TIMEOUT_S)):
                    ttl = self.lessor.renew(request.ID)
                    return etcdpb.LeaseKeepAliveResponse(
                        header=etcd_header(self.node), ID=request.ID, TTL=ttl)
                if forwarded:
                    raise NodeError(grpc.StatusCode.UNAVAILABLE, MSG_NOT_LEADER)
                address = self._leader_address()
                if address is not None:
                    return await upstream.ask(address, request)
            except (NodeError, grpc.aio.AioRpcError, ConnectionError, TimeoutError):
                if forwarded or time.monotonic() >= give_up_at:
                    raise
            await asyncio.sleep(LEADER_RETRY_S)

    async def LeaseTimeToLive(self, request: etcdpb.LeaseTimeToLiveRequest, context: Ctx
                              ) -> etcdpb.LeaseTimeToLiveResponse:
        async def body(timeout_s: float) -> etcdpb.LeaseTimeToLiveResponse:
            if not await self._confirm_leader(timeout_s):
                if self._forwarded(context):
                    raise NodeError(grpc.StatusCode.UNAVAILABLE, MSG_NOT_LEADER)
                address = self._leader_address()
                if address is not None:
                    response: etcdpb.LeaseTimeToLiveResponse = \
                        await self._leader.stub(address).LeaseTimeToLive(
                            request, timeout=min(timeout_s, FORWARD_TIMEOUT_S),
                            metadata=((FORWARDED_METADATA_KEY, "1"),))
                    return response
            return await self._time_to_live(request)
        return await self._call("LeaseTimeToLive", context, body)

    async def _time_to_live(self, request: etcdpb.LeaseTimeToLiveRequest
                            ) -> etcdpb.LeaseTimeToLiveResponse:
        if not self.lessor.leading:   # it was, a moment ago: the client may retry
            raise NodeError(grpc.StatusCode.UNAVAILABLE, MSG_NOT_LEADER)
        sm = self.node.store.sm
        record = sm.lease(request.ID)
        remaining = self.lessor.remaining_s(request.ID)
        header = etcd_header(self.node)
        if record is None or remaining is None:
            # etcd answers an unknown lease with TTL -1, not an error.
            return etcdpb.LeaseTimeToLiveResponse(header=header, ID=request.ID, TTL=-1)
        keys: list[bytes] = []
        if request.keys:
            keys = await asyncio.to_thread(sm.keys_with_lease, request.ID, LEASE_KEYS_MAX)
        return etcdpb.LeaseTimeToLiveResponse(
            header=header, ID=request.ID, TTL=int(remaining) if remaining > 0 else -1,
            grantedTTL=record.ttl, keys=keys)

    async def LeaseLeases(self, request: etcdpb.LeaseLeasesRequest, context: Ctx
                          ) -> etcdpb.LeaseLeasesResponse:
        async def body(timeout_s: float) -> etcdpb.LeaseLeasesResponse:
            await self.node.read_index(timeout_s)
            return etcdpb.LeaseLeasesResponse(
                header=etcd_header(self.node),
                leases=[etcdpb.LeaseStatus(ID=r.id) for r in self.node.store.sm.leases()])
        return await self._call("LeaseLeases", context, body)


def _raise_refusal(result: ApplyResult) -> None:
    """A lease command the state machine refused: its MVCCError carries etcd's status
    and message (errors.serve_call answers with them)."""
    if result.mvcc_error is not None:
        raise result.mvcc_error


def add_lease_service(server: grpc.aio.Server, node: Node, config: NodeConfig,
                      metrics: NodeMetrics) -> LeaseService:
    """Attach a lessor to `node`, start its timer, and serve etcd's Lease service;
    call on the running loop, before the node starts. Returns the servicer (the peer
    port serves its member calls too: member_calls.py)."""
    lessor = Lessor(node)
    lessor.attach()
    lessor.start()
    service = LeaseService(node, config, metrics, lessor)
    etcdpb_grpc.add_LeaseServicer_to_server(service, server)
    return service


def _consume_outcome(task: asyncio.Task[etcdpb.LeaseKeepAliveResponse]) -> None:
    """Mark a dropped keep-alive's outcome retrieved (its stream has gone)."""
    if not task.cancelled():
        task.exception()
