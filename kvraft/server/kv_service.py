"""The client gRPC services of SPEC §2: KV and Cluster.

Handlers validate, then either propose a command through the node and answer with its
apply result, or read from the state machine (after a ReadIndex round unless the read is
SERIALIZABLE). Every failure is a gRPC status: INVALID_ARGUMENT for bad input,
FAILED_PRECONDITION for a member change that cannot apply, UNAVAILABLE for no
leader/quorum within the request's deadline or shutdown, DEADLINE_EXCEEDED when the
client's own deadline passes.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from kvraft.wire import RETRY_SAFE_METADATA_KEY, RETRY_SAFE_METADATA_VALUE

from . import storage_adapter as sa
from .config import NodeConfig, ServeError, parse_address
from .metrics import NodeMetrics
from .node import Node
from .waiters import NodeError

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext
NO_DEADLINE_S = 1e6   # grpc reports a huge time_remaining when the client set none


def invalid(message: str) -> NodeError:
    return NodeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> NodeError:
    return NodeError(grpc.StatusCode.FAILED_PRECONDITION, message)


class _Base:
    def __init__(self, node: Node, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics

    def header(self) -> pb.ResponseHeader:
        member_id, leader_id, term, applied = self.node.header()
        return pb.ResponseHeader(
            member_id=member_id, leader_id=leader_id, term=term, applied_index=applied,
            revision=self.node.store.sm.revision,
        )

    def _deadline(self, context: Ctx) -> tuple[float, bool]:
        """(seconds to wait, whether the client set the deadline)."""
        remaining = context.time_remaining()
        if remaining is None or remaining >= NO_DEADLINE_S:
            return self.config.default_deadline_s, False
        return max(0.0, remaining), True

    async def _call(
        self,
        rpc: str,
        context: Ctx,
        body: Callable[[float], Awaitable[T]],
    ) -> T:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        timeout_s, client_deadline = self._deadline(context)
        try:
            if self.node.stopping:
                raise NodeError(grpc.StatusCode.UNAVAILABLE, "the node is shutting down",
                                retry_safe=True)
            return await body(timeout_s)
        except NodeError as e:
            code = e.code
            if e.deadline_passed and client_deadline:
                # The client's own deadline passed: the write's outcome is unknown.
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            trailers = ((RETRY_SAFE_METADATA_KEY, RETRY_SAFE_METADATA_VALUE),) \
                if e.retry_safe else ()
            await context.abort(code, e.message, trailing_metadata=trailers)
            raise AssertionError("abort returns by raising") from None
        except BaseException:
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.CANCELLED
            raise
        finally:
            name = code.name
            self.metrics.observe_request(rpc, name, time.perf_counter() - t0)

    def _check_key(self, key: bytes, what: str = "key") -> None:
        if not key:
            raise invalid(f"the {what} must not be empty")
        if len(key) > self.config.max_key_bytes:
            raise invalid(
                f"the {what} has {len(key)} bytes; the limit is {self.config.max_key_bytes}")

    def _check_value(self, value: bytes) -> None:
        if len(value) > self.config.max_value_bytes:
            raise invalid(
                f"the value has {len(value)} bytes; the limit is {self.config.max_value_bytes}"
            )

    def _check_consistency(self, consistency: int) -> bool:
        """True for a linearizable read."""
        if consistency == pb.LINEARIZABLE:
            return True
        if consistency == pb.SERIALIZABLE:
            return False
        raise invalid(f"unknown read consistency {consistency}")

    async def _write(self, encode: Callable[[int], bytes], timeout_s: float) -> Any:
        request_id = sa.new_request_id()
        result = await self.node.propose(request_id, encode(request_id), timeout_s)
        refusal = result.mvcc_error
        if refusal is not None:
            # The store refused the write at apply time (a NOSPACE alarm): nothing of
            # it was applied, so a retry is safe once the cause is gone.
            raise NodeError(grpc.StatusCode[refusal.code.name], str(refusal))
        return result


class KVService(_Base, pb_grpc.KVServicer):
    async def Put(self, request: pb.PutRequest, context: Ctx) -> pb.PutResponse:
        async def body(timeout_s: float) -> pb.PutResponse:
            self._check_key(request.key)
            self._check_value(request.value)
            await self._write(lambda rid: sa.encode_put(rid, request.key, request.value), timeout_s)
            return pb.PutResponse(header=self.header())

        return await self._call("Put", context, body)

    async def Delete(
        self, request: pb.DeleteRequest, context: Ctx
    ) -> pb.DeleteResponse:
        async def body(timeout_s: float) -> pb.DeleteResponse:
            self._check_key(request.key)
            result = await self._write(lambda rid: sa.encode_delete(rid, request.key), timeout_s)
            return pb.DeleteResponse(header=self.header(), deleted=bool(result.deleted))

        return await self._call("Delete", context, body)

    async def CompareAndSwap(
        self, request: pb.CompareAndSwapRequest, context: Ctx
    ) -> pb.CompareAndSwapResponse:
        async def body(timeout_s: float) -> pb.CompareAndSwapResponse:
            self._check_key(request.key)
            self._check_value(request.value)
            expected = request.expected if request.HasField("expected") else None
            if expected is not None:
                self._check_value(expected)
            result = await self._write(
                lambda rid: sa.encode_cas(rid, request.key, expected, request.value), timeout_s
            )
            return pb.CompareAndSwapResponse(
                header=self.header(), succeeded=bool(result.ok), found=bool(result.found),
                current=result.current or b"",
            )

        return await self._call("CompareAndSwap", context, body)

    async def Batch(self, request: pb.BatchRequest, context: Ctx) -> pb.BatchResponse:
        async def body(timeout_s: float) -> pb.BatchResponse:
            size = request.ByteSize()
            if size > self.config.max_batch_bytes:
                raise invalid(
                    f"the batch has {size} bytes; the limit is {self.config.max_batch_bytes}"
                )
            # Bulk loads send thousands of ops: check each field once, cheaply, and
            # build the error message only for the op that fails.
            key_max, value_max = self.config.max_key_bytes, self.config.max_value_bytes
            for i, op in enumerate(request.ops):
                if op.HasField("put"):
                    put = op.put
                    key, value = put.key, put.value
                    if not key or len(key) > key_max:
                        self._check_key(key, f"key of operation {i}")
                    if len(value) > value_max:
                        self._check_value(value)
                elif op.HasField("delete"):
                    key = op.delete.key
                    if not key or len(key) > key_max:
                        self._check_key(key, f"key of operation {i}")
                else:
                    raise invalid(f"operation {i} is neither a put nor a delete")
            ops_wire = request.SerializeToString()
            result = await self._write(lambda rid: sa.encode_batch_wire(rid, ops_wire),
                                       timeout_s)
            return pb.BatchResponse(header=self.header(), deleted=list(result.deleted_list or []))

        return await self._call("Batch", context, body)

    async def Get(self, request: pb.GetRequest, context: Ctx) -> pb.GetResponse:
        async def body(timeout_s: float) -> pb.GetResponse:
            self._check_key(request.key)
            if self._check_consistency(request.consistency):
                await self.node.read_index(timeout_s)
            value = self.node.store.sm.get(request.key)
            if value is None:
                return pb.GetResponse(header=self.header(), found=False)
            return pb.GetResponse(header=self.header(), found=True, value=value)

        return await self._call("Get", context, body)

    async def Scan(self, request: pb.ScanRequest, context: Ctx) -> pb.ScanResponse:
        async def body(timeout_s: float) -> pb.ScanResponse:
            if len(request.start) > self.config.max_key_bytes:
                raise invalid("the scan start is longer than a key may be")
            if len(request.end) > self.config.max_key_bytes:
                raise invalid("the scan end is longer than a key may be")
            if self._check_consistency(request.consistency):
                await self.node.read_index(timeout_s)
            limit = request.limit or self.config.scan_page_max
            limit = min(limit, self.config.scan_page_max)
            if request.end and request.end <= request.start:
                return pb.ScanResponse(header=self.header(), more=False)
            # A page is up to 10,000 keys / 4 MiB read from LevelDB: off the event loop,
            # which owes its peers heartbeats meanwhile (issue 11, item 8).
            kvs, more = await asyncio.to_thread(self.node.store.sm.scan, request.start,
                                                request.end, limit)
            return pb.ScanResponse(
                header=self.header(),
                kvs=[pb.KeyValue(key=k, value=v) for k, v in kvs],
                more=more,
            )

        return await self._call("Scan", context, body)


class ClusterService(_Base, pb_grpc.ClusterServicer):
    def _members(self) -> list[pb.Member]:
        ids = self.node.member_ids()
        learners = self.node.learner_ids()
        records = {m.id: m for m in self.node.members()}
        out = []
        for member_id in sorted(ids):
            r = records.get(member_id)
            out.append(pb.Member(
                id=member_id,
                peer_address=r.peer_address if r else "",
                client_address=r.client_address if r else "",
                learner=member_id in learners,
            ))
        return out

    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        async def body(timeout_s: float) -> pb.StatusResponse:
            s = self.node.status()
            return pb.StatusResponse(
                header=self.header(), role=s.role, commit_index=s.commit_index,
                last_index=s.last_index, members=self._members(),
            )

        return await self._call("Status", context, body)

    def _check_address(self, address: str, what: str) -> None:
        try:
            parse_address(address, what)
        except ServeError as e:
            raise invalid(str(e)) from None

    async def AddMember(
        self, request: pb.AddMemberRequest, context: Ctx
    ) -> pb.MembersResponse:
        async def body(timeout_s: float) -> pb.MembersResponse:
            if request.id == 0:
                raise invalid("the member id must be a positive integer")
            self._check_address(request.peer_address, "peer address")
            if request.client_address:
                self._check_address(request.client_address, "client address")
            ids, learners = self.node.member_ids(), self.node.learner_ids()
            if request.id in ids:
                if request.id not in learners:
                    raise precondition(f"member {request.id} is already a voter")
                if request.learner:
                    raise precondition(f"member {request.id} is already a learner")
            if self.node.pending_conf_change():
                raise precondition("another member change is still in progress")
            cc = sa.member_conf_change(
                request.id, request.peer_address, request.client_address, request.learner,
                add=True, cc_id=sa.new_request_id(),
            )
            await self.node.propose_conf_change(cc, timeout_s)
            return pb.MembersResponse(header=self.header(), members=self._members())

        return await self._call("AddMember", context, body)

    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: Ctx
    ) -> pb.MembersResponse:
        async def body(timeout_s: float) -> pb.MembersResponse:
            if request.id == 0:
                raise invalid("the member id must be a positive integer")
            ids, learners = self.node.member_ids(), self.node.learner_ids()
            if request.id not in ids:
                raise precondition(f"member {request.id} is not in the cluster")
            if request.id not in learners and len(ids - learners) <= 1:
                raise precondition(f"member {request.id} is the last voter")
            if self.node.pending_conf_change():
                raise precondition("another member change is still in progress")
            cc = sa.member_conf_change(
                request.id, "", "", False, add=False, cc_id=sa.new_request_id()
            )
            await self.node.propose_conf_change(cc, timeout_s)
            return pb.MembersResponse(header=self.header(), members=self._members())

        return await self._call("RemoveMember", context, body)

    async def TransferLeader(
        self, request: pb.TransferLeaderRequest, context: Ctx
    ) -> pb.TransferLeaderResponse:
        async def body(timeout_s: float) -> pb.TransferLeaderResponse:
            if request.to == 0:
                raise invalid("the target member id must be a positive integer")
            ids, learners = self.node.member_ids(), self.node.learner_ids()
            if request.to not in ids or request.to in learners:
                raise precondition(f"member {request.to} is not a voter")
            await self.node.transfer_leader(request.to, timeout_s)
            return pb.TransferLeaderResponse(header=self.header())

        return await self._call("TransferLeader", context, body)


def conf_change_type_name(t: int) -> str:
    return eraftpb.ConfChangeType.Name(t)
