"""What a learner serves of etcd's API: what etcd's learner serves (v3rpc/interceptor.go).

A learner is a member that replicates the log but does not vote, typically one still
catching up after `member add --learner`. etcd lets it answer only what needs no
leader to confirm its state: a serializable Range and Maintenance.Status (etcd's
isRPCSupportedForLearner), and of the streams only Maintenance.Snapshot. Every other
etcd call is refused before its handler runs, with "etcdserver: rpc not supported for
learner" (UNAVAILABLE, the code of etcd 3.4 and 3.5, whose API kvraft serves; 3.6
answers FAILED_PRECONDITION), and the client moves on to another endpoint.

The guard asks the membership at the start of every call, so the member serves
everything from the moment its promotion is applied here. kvraft's own services
(kvraft.KV, kvraft.Cluster), health and reflection are not etcd's and stay as they are:
kvraft's API lets a learner serve its reads (tests/cluster/test_membership.py).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .errors import NOT_SUPPORTED_FOR_LEARNER, abort

ETCD_METHOD_PREFIX = "/etcdserverpb."
RANGE_METHOD = "/etcdserverpb.KV/Range"
# The etcd calls a learner serves whatever their request says.
SERVED_BY_LEARNER = frozenset({"/etcdserverpb.Maintenance/Status",
                               "/etcdserverpb.Maintenance/Snapshot"})

def supported_for_learner(method: str, request: Any) -> bool:
    """Whether a learner answers etcd's `method` with `request` (a Range only when it
    is serializable: a linearizable one would need the leader's read index)."""
    if method == RANGE_METHOD:
        return bool(request.serializable)
    return method in SERVED_BY_LEARNER


class LearnerGuard(grpc.aio.ServerInterceptor):
    """Refuses, while `is_learner()`, the etcd calls a learner does not serve; install
    it first on the client server (before the access check, as etcd checks it)."""

    def __init__(self, is_learner: Callable[[], bool]) -> None:
        self._is_learner = is_learner

    async def intercept_service(
            self,
            continuation: Callable[[grpc.HandlerCallDetails],
                                   Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(ETCD_METHOD_PREFIX) or \
                method in SERVED_BY_LEARNER or not self._is_learner():
            return handler
        if method == RANGE_METHOD:
            return _serializable_only(handler)
        return _refusing(handler)


async def _refuse(context: grpc.aio.ServicerContext) -> None:
    await abort(context, NOT_SUPPORTED_FOR_LEARNER.code, NOT_SUPPORTED_FOR_LEARNER.message)


def _serializable_only(handler: grpc.RpcMethodHandler[Any, Any]
                       ) -> grpc.RpcMethodHandler[Any, Any]:
    behavior: Any = handler.unary_unary

    async def range_(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not supported_for_learner(RANGE_METHOD, request):
            await _refuse(context)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        range_, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


def _refusing(handler: grpc.RpcMethodHandler[Any, Any]
                       ) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s shape that ends the call with the refusal (a coroutine,
    which grpc.aio accepts for streaming responses too: it writes none)."""
    async def refuse(_: Any, context: grpc.aio.ServicerContext) -> None:
        await _refuse(context)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
