"""etcd's gRPC errors (api/v3rpc/rpctypes): the codes and exact messages etcd answers.

etcd's clients recognise an error by its message (clientv3 maps a known message to its
typed error, etcdctl prints it) and decide on retries by its code; so etcd's services
here answer with etcd's constants wherever etcd has one.

A handler's body raises `EtcdError`, an `MVCCError` from the store (which already carries
etcd's code and message), or a kvraft `NodeError` from the node; `serve_call` turns each
into the call's status.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc

from kvraft.storage.mvcc import MVCCError

from ..metrics import NodeMetrics
from ..waiters import WAIT_EXPIRED_MESSAGE, NodeError

T = TypeVar("T")
Code = grpc.StatusCode
NO_DEADLINE_S = 1e6  # what grpc reports as time_remaining when the client set no deadline


class EtcdError(Exception):
    """The call fails with status `code` and etcd's `message`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class EtcdStatus:
    code: grpc.StatusCode
    message: str

    def error(self) -> EtcdError:
        return EtcdError(self.code, self.message)


REQUEST_TOO_LARGE = EtcdStatus(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
STOPPED = EtcdStatus(Code.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT = EtcdStatus(Code.UNAVAILABLE, "etcdserver: request timed out")


def from_mvcc_error(e: MVCCError) -> EtcdError:
    """The store's refusal as is: its code (named as grpc's) and etcd's message."""
    return EtcdError(Code.__members__[e.code.name], str(e))


def from_node_error(e: NodeError) -> EtcdError:
    """A NodeError as etcd's nearest: shutdown is "server stopped", a wait that ran out
    (no leader or quorum in time) "request timed out"; others keep kvraft's text."""
    if e.code == Code.UNAVAILABLE:
        if "shutting down" in e.message:
            return STOPPED.error()
        if e.deadline_passed or e.message == WAIT_EXPIRED_MESSAGE:
            return TIMEOUT.error()
    return EtcdError(e.code, e.message)


def deadline_s(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """How long the call may wait: what is left of the client's deadline, else
    `default_s`."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= NO_DEADLINE_S:
        return default_s
    return max(0.0, remaining)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("grpc.aio's abort returns by raising")


async def serve_call(rpc: str, context: grpc.aio.ServicerContext, metrics: NodeMetrics,
                     body: Callable[[], Awaitable[T]]) -> T:
    """Run `body`, ending the call with etcd's status for the errors above; count the
    call and its latency in the request metrics under `rpc`."""
    t0 = time.perf_counter()
    code = Code.OK
    try:
        return await body()
    except (EtcdError, MVCCError, NodeError) as e:
        if isinstance(e, MVCCError):
            error = from_mvcc_error(e)
        elif isinstance(e, NodeError):
            error = from_node_error(e)
        else:
            error = e
        code = error.code
        await abort(context, error.code, error.message)
    except BaseException as e:
        code = Code.CANCELLED if isinstance(e, asyncio.CancelledError) else Code.UNKNOWN
        raise
    finally:
        metrics.observe_request(rpc, code.name, time.perf_counter() - t0)
