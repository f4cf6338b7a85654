"""Waiters: the futures that client calls await while Raft works for them.

Every waiter ends exactly once — with its result, or with a `NodeError` carrying the
gRPC status the client gets — and is removed from every index when it ends, so nothing
leaks however the call ends (applied, dropped, truncated, deadline, cancel, shutdown).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc


class NodeError(Exception):
    """A request failed with a gRPC status code (SPEC §2)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, retry_safe: bool = False,
                 deadline_passed: bool = False, leader_changed: bool = False,
                 overloaded: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # True when the request surely had no effect (rejected before it was proposed),
        # so a client may re-send a write elsewhere (docs/INTERFACES.md, kvraft.client).
        self.retry_safe = retry_safe
        # True when the wait ran out: the call's deadline passed before a leader and a
        # quorum answered. The service then answers DEADLINE_EXCEEDED if that deadline
        # was the client's own (kv_service.py); a write's outcome is unknown either way.
        self.deadline_passed = deadline_passed
        # True when the leader the request waited on lost its leadership before
        # answering (it stepped down, or a new leader replaced the write's entry): etcd's
        # API answers "etcdserver: leader changed" (etcd/errors.py), which its clients
        # retry.
        self.leader_changed = leader_changed
        # True when this member refused a write it is too far behind to take now (the
        # pushback, or too many writes in flight); never proposed. etcd's API answers
        # "etcdserver: too many requests".
        self.overloaded = overloaded


# What a waiter whose deadline passed fails with (`wait_expired`).
WAIT_EXPIRED_MESSAGE = "no leader or quorum before the deadline"


def wait_expired() -> NodeError:
    """The error of a waiter whose wait ran out before its call was answered."""
    return NodeError(grpc.StatusCode.UNAVAILABLE, WAIT_EXPIRED_MESSAGE, deadline_passed=True)


def expire(waiter: Proposal | ReadWaiter) -> None:
    """The timer callback of a waiter's deadline: fail it as expired (a no-op when it
    already ended)."""
    waiter.fail(wait_expired())


def unavailable(message: str, *, retry_safe: bool = False) -> NodeError:
    return NodeError(grpc.StatusCode.UNAVAILABLE, message, retry_safe=retry_safe)


def leader_lost(message: str) -> NodeError:
    """A waiter's leader lost its leadership before the call was answered."""
    return NodeError(grpc.StatusCode.UNAVAILABLE, message, leader_changed=True)


def _new_future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class Proposal:
    """A write (or member change) waiting for its entry to be applied on this node."""

    request_id: int
    data: bytes = b""
    context: bytes = b""               # the entry's context (auth/context.py)
    conf_change: Any = None            # eraftpb.ConfChange for member changes
    future: asyncio.Future[Any] = field(default_factory=_new_future)
    index: int = 0                     # log index, known when proposed on the leader

    def resolve(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, error: NodeError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            # Nobody may await a failed waiter (its call was cancelled): mark the
            # exception retrieved so asyncio does not warn.
            self.future.exception()


@dataclass(eq=False)
class ReadWaiter:
    """A linearizable read waiting for ReadIndex and then for applied >= that index."""

    future: asyncio.Future[None] = field(default_factory=_new_future)

    def resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def fail(self, error: NodeError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()


@dataclass(eq=False)
class ReadRound:
    """One ReadIndex request (thesis §6.4) shared by every read queued before it."""

    context: bytes
    waiters: list[ReadWaiter]
    issued_tick: int
    index: int = -1                    # set when the ReadState arrives

    def live(self) -> list[ReadWaiter]:
        self.waiters = [w for w in self.waiters if not w.future.done()]
        return self.waiters
