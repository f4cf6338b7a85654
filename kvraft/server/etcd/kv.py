"""etcd's `KV` service (Range, Put, DeleteRange, Txn, Compact) over kvraft's MVCC store.

Writes: the request is checked as etcd checks it before proposing (v3rpc/key.go: empty
key, sort options, txn op count (--max-txn-ops) and duplicate keys; the encoded
command's size, --max-request-bytes: limits.py), then proposed
as one command embedding etcd's own message; the answer is the apply's
(ApplyResult.response), or its refusal (ApplyResult.mvcc_error, which carries etcd's
code and message). Every member applies the same entry the same way, so the checks
here only spare the log a request that would be refused anyway.

Reads: a Range is linearizable (a ReadIndex round first) unless `serializable`, then
served from this member's state machine off the event loop. A txn whose branches only
read is served the same way, as etcd serves a read-only txn without Raft: its compares
and ranges are all evaluated at one revision (the store's revision after the read
barrier), which the MVCC store can still read however many writes apply meanwhile.
If that revision is compacted under it, or a compare's range is too large to read in
one piece, the txn is proposed instead.

While the cluster version is 1 (a rolling upgrade from the layout before revisions is
under way) every call is refused with FAILED_PRECONDITION (mvcc.ClusterVersionError):
writes before they are proposed, since a member of the old layout could not apply
them; reads by the state machine, which has no revisions to answer with yet.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, TypeVar

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.storage import commands, mvcc
from kvraft.storage.mvcc import convert
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MVCC

from .. import storage_adapter as sa
from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from .errors import REQUEST_TOO_LARGE, EtcdError, deadline_s, serve_call
from .header import etcd_header
from .limits import check_request_bytes

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext


class KVService(etcdpb_grpc.KVServicer):
    def __init__(self, node: Node, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics

    # --- the calls --------------------------------------------------------------------------
    async def Range(self, request: etcdpb.RangeRequest, context: Ctx) -> etcdpb.RangeResponse:
        async def body() -> etcdpb.RangeResponse:
            req = convert.range_request(request)
            mvcc.check_range(req)
            if not request.serializable:
                await self.node.read_index(self._timeout_s(context))
            if req.range_end:
                # Up to a page of keys read from LevelDB: off the event loop, which owes
                # its peers heartbeats meanwhile (as kvraft's Scan).
                resp = await asyncio.to_thread(self.node.store.sm.range, req)
            else:  # one key: a point read or two, cheaper than the hop to a thread
                resp = self.node.store.sm.range(req)
            return convert.range_response_pb(resp, etcd_header(self.node, resp.revision))

        return await serve_call("etcd.KV.Range", context, self.metrics, body)

    async def Put(self, request: etcdpb.PutRequest, context: Ctx) -> etcdpb.PutResponse:
        async def body() -> etcdpb.PutResponse:
            req = convert.put_request(request)
            mvcc.check_put(req)
            self._check_key_size(req)
            resp = await self._propose("etcd_put", request, mvcc.PutResponse, context)
            return convert.put_response_pb(resp, etcd_header(self.node, resp.revision))

        return await serve_call("etcd.KV.Put", context, self.metrics, body)

    async def DeleteRange(self, request: etcdpb.DeleteRangeRequest, context: Ctx
                          ) -> etcdpb.DeleteRangeResponse:
        async def body() -> etcdpb.DeleteRangeResponse:
            mvcc.check_delete(convert.delete_range_request(request))
            resp = await self._propose("etcd_delete_range", request, mvcc.DeleteRangeResponse,
                                       context)
            return convert.delete_range_response_pb(resp, etcd_header(self.node, resp.revision))

        return await serve_call("etcd.KV.DeleteRange", context, self.metrics, body)

    async def Txn(self, request: etcdpb.TxnRequest, context: Ctx) -> etcdpb.TxnResponse:
        async def body() -> etcdpb.TxnResponse:
            try:
                req = convert.txn_request(request)
            except ValueError:  # an op with no request: etcd's checkRequestOp refuses it so
                raise mvcc.KeyNotFoundError() from None
            mvcc.check_txn(req, ops_max=self.config.max_txn_ops)
            read_only, serializable = _reads_only(request)
            resp: mvcc.TxnResponse | None = None
            if read_only:
                if not serializable:
                    await self.node.read_index(self._timeout_s(context))
                resp = await asyncio.to_thread(_read_txn, self.node.store.sm, req)
            if resp is None:
                self._check_txn_keys(req)
                resp = await self._propose("etcd_txn", request, mvcc.TxnResponse, context)
                _refuse_truncated(resp)
            return convert.txn_response_pb(resp, etcd_header(self.node, resp.revision))

        return await serve_call("etcd.KV.Txn", context, self.metrics, body)

    async def Compact(self, request: etcdpb.CompactionRequest, context: Ctx
                      ) -> etcdpb.CompactionResponse:
        """Answered once this member has applied the compaction (so reads below the
        revision fail here from then on). `physical` asks for the history's removal
        too; kvraft removes it in bounded steps behind the apply, and answers
        `physical` compactions the same way."""
        async def body() -> etcdpb.CompactionResponse:
            resp = await self._propose("etcd_compact", request, mvcc.CompactResponse, context)
            return etcdpb.CompactionResponse(header=etcd_header(self.node, resp.revision))

        return await serve_call("etcd.KV.Compact", context, self.metrics, body)

    # --- helpers ------------------------------------------------------------------------------
    def _timeout_s(self, context: Ctx) -> float:
        return deadline_s(context, self.config.default_deadline_s)

    async def _propose(self, field: str, message: Any, answer: type[T], context: Ctx) -> T:
        """Propose etcd's `message` as the command's `field`; the apply's answer, which
        must be an `answer`, or its refusal raised."""
        if self.node.store.sm.cluster_version < CLUSTER_VERSION_MVCC:
            raise mvcc.ClusterVersionError()
        request_id = sa.new_request_id()
        data = commands.etcd_command(request_id, field, message)
        check_request_bytes(data, self.config.max_request_bytes)
        result = await self.node.propose(request_id, data, self._timeout_s(context))
        if result.mvcc_error is not None:
            raise result.mvcc_error
        resp = result.response
        if not isinstance(resp, answer):  # the apply did not know the command: a bug
            raise EtcdError(grpc.StatusCode.INTERNAL,
                            f"kvraft: {field} applied as {result.kind}: {result.error}")
        return resp

    def _check_key_size(self, req: mvcc.PutRequest) -> None:
        """kvraft's bound on a key it stores (etcd bounds only the whole request, as
        `_propose` does here: a value may take all of --max-request-bytes)."""
        if len(req.key) > self.config.max_key_bytes:
            raise REQUEST_TOO_LARGE.error()

    def _check_txn_keys(self, req: mvcc.TxnRequest) -> None:
        for op in (*req.success, *req.failure):
            if isinstance(op, mvcc.PutRequest):
                self._check_key_size(op)
            elif isinstance(op, mvcc.TxnRequest):
                self._check_txn_keys(op)


def add_kv_service(server: grpc.aio.Server, node: Node, config: NodeConfig,
                   metrics: NodeMetrics) -> str:
    etcdpb_grpc.add_KVServicer_to_server(KVService(node, config, metrics), server)
    return etcdpb.DESCRIPTOR.services_by_name["KV"].full_name


# --- read-only txns -----------------------------------------------------------------------

def _reads_only(request: etcdpb.TxnRequest) -> tuple[bool, bool]:
    """(every op of both branches is a range, and every one of them serializable):
    etcd's isTxnReadonly and isTxnSerializable. A nested txn counts as a write."""
    serializable = True
    for ops in (request.success, request.failure):
        for op in ops:
            if op.WhichOneof("request") != "request_range":
                return False, False
            serializable = serializable and op.request_range.serializable
    return True, serializable


def _read_txn(sm: Any, req: mvcc.TxnRequest) -> mvcc.TxnResponse | None:
    """A read-only txn evaluated at one revision on the state machine (blocking: run in
    a thread); None when it has to be proposed instead (see the module's doc)."""
    revision = sm.revision
    try:
        succeeded = all(_compare_holds(sm, c, revision) for c in req.compare)
        responses: list[mvcc.ResponseOp] = []
        for op in req.success if succeeded else req.failure:
            assert isinstance(op, mvcc.RangeRequest)
            if op.revision > revision:
                raise mvcc.FutureRevisionError()
            at = op.revision if op.revision > 0 else revision
            resp = sm.range(dataclasses.replace(op, revision=at))
            responses.append(dataclasses.replace(resp, revision=revision))
    except mvcc.CompactedError:
        if sm.compact_revision > revision:  # compacted under us; a read below it fails
            return None
        raise
    except _CompareTooLarge:
        return None
    return mvcc.TxnResponse(revision, succeeded, responses)


class _CompareTooLarge(Exception):
    pass


def _compare_holds(sm: Any, c: mvcc.Compare, revision: int) -> bool:
    """etcd's applyCompare at `revision`: every key in the range satisfies the compare;
    a range with no key compares as one all-zero key, except that a VALUE compare fails
    (the store's own rule, batch.MVCCBatch._compare)."""
    value = c.target == mvcc.CompareTarget.VALUE
    try:
        resp = sm.range(mvcc.RangeRequest(c.key, c.range_end, revision=revision,
                                          keys_only=not value))
    except mvcc.RangeTooLargeError:
        raise _CompareTooLarge() from None
    if not resp.kvs:
        return not value and mvcc.compare_kv(c, mvcc.KeyValue(c.key))
    return all(mvcc.compare_kv(c, kv) for kv in resp.kvs)


def _refuse_truncated(resp: mvcc.TxnResponse) -> None:
    """A range inside an applied txn that passed the member's bounds was cut short (the
    apply cannot refuse it, see messages.RangeResponse): answer as gRPC does for a
    response over its size limit."""
    for r in resp.responses:
        if isinstance(r, mvcc.RangeResponse) and r.truncated:
            raise EtcdError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            mvcc.RangeTooLargeError.message + " (inside a txn): use a limit")
        if isinstance(r, mvcc.TxnResponse):
            _refuse_truncated(r)

