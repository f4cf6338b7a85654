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


# --- etcd's rpctypes (the subset kvraft answers with; names without etcd's ErrGRPC) ---
# Cluster
MEMBER_EXIST = EtcdStatus(Code.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXIST = EtcdStatus(Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED = EtcdStatus(
    Code.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members")
MEMBER_BAD_URLS = EtcdStatus(Code.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = EtcdStatus(Code.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = EtcdStatus(Code.FAILED_PRECONDITION,
                                "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = EtcdStatus(
    Code.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader")
TOO_MANY_LEARNERS = EtcdStatus(Code.FAILED_PRECONDITION,
                               "etcdserver: too many learner members in cluster")
# Requests
REQUEST_TOO_LARGE = EtcdStatus(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_REQUESTS = EtcdStatus(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
NO_SPACE = EtcdStatus(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
# Leadership and availability
NO_LEADER = EtcdStatus(Code.UNAVAILABLE, "etcdserver: no leader")
NOT_LEADER = EtcdStatus(Code.FAILED_PRECONDITION, "etcdserver: not leader")
LEADER_CHANGED = EtcdStatus(Code.UNAVAILABLE, "etcdserver: leader changed")
STOPPED = EtcdStatus(Code.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT = EtcdStatus(Code.UNAVAILABLE, "etcdserver: request timed out")
UNHEALTHY = EtcdStatus(Code.UNAVAILABLE, "etcdserver: unhealthy cluster")
CORRUPT = EtcdStatus(Code.DATA_LOSS, "etcdserver: corrupt cluster")
NOT_SUPPORTED_FOR_LEARNER = EtcdStatus(Code.UNAVAILABLE,
                                       "etcdserver: rpc not supported for learner")
BAD_LEADER_TRANSFEREE = EtcdStatus(Code.FAILED_PRECONDITION,
                                   "etcdserver: bad leader transferee")
# etcd's server error ErrTimeoutLeaderTransfer. etcd's togRPCError does not map it (its
# clients see codes.Unknown); kvraft answers UNAVAILABLE, as for its other timeouts.
LEADER_TRANSFER_TIMEOUT = EtcdStatus(
    Code.UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long")
# The message of etcd's raft.ErrNoLeader, as etcd's Status lists it among `errors`.
NO_LEADER_STATUS_ERROR = "etcdserver: no leader"


def from_mvcc_error(e: MVCCError) -> EtcdError:
    """The store's refusal as is: its code (named as grpc's) and etcd's message."""
    return EtcdError(Code.__members__[e.code.name], str(e))


def from_node_error(e: NodeError) -> EtcdError:
    """A NodeError as etcd's nearest: shutdown is "server stopped", a wait that ran out
    (no leader or quorum in time) "request timed out", a waiter whose leader lost its
    leadership "leader changed" (etcd's answer to a read index a leader change
    interrupted), a write this member is too far behind to take "too many requests"
    (etcd's answer past its apply gap); others keep kvraft's text."""
    if e.code == Code.UNAVAILABLE:
        if "shutting down" in e.message:
            return STOPPED.error()
        if e.deadline_passed or e.message == WAIT_EXPIRED_MESSAGE:
            return TIMEOUT.error()
    if e.leader_changed:
        return LEADER_CHANGED.error()
    if e.overloaded:
        return TOO_MANY_REQUESTS.error()
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
