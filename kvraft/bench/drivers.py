"""Drivers: how the load generator talks to one store.

A driver is created once per (worker process, endpoint) and shared by every simulated
client of that worker aimed at that endpoint; its methods must be safe to await
concurrently. Drivers live behind an import string ("module:callable") so that code for
other stores (etcd, the echo ceiling) stays out of the kvraft package.

A driver is made as `factory(endpoint, **options)`, the options only those the run uses
(LoadSpec.driver_options): `tls=` a ClientTLS, `user=` and `password=` when auth is
enabled. `open()` is awaited once before the clock starts: a driver given a user
authenticates there (etcd's Authenticate) and sends the token it got in the `token`
metadata of every later call, as etcd's clients do — so a run measures what auth costs
per request, not what a password check costs.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import grpc

from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc
from kvraft.tls import ClientTLS

# gRPC channel options shared by drivers: large enough messages for a 4 MiB batch.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
TOKEN_METADATA_KEY = "token"      # where etcd (and kvraft) look for an Authenticate token
AUTHENTICATE_TIMEOUT_S = 30.0     # a password check is slow by design (bcrypt)


def open_channel(endpoint: str, tls: ClientTLS | None) -> grpc.aio.Channel:
    """A channel to `endpoint`: plaintext, or TLS with `tls`'s CA (and certificate)."""
    if tls is None:
        return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(endpoint, tls.credentials(), options=CHANNEL_OPTIONS)


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call carries: the token, or nothing without auth."""
    return None if token is None else ((TOKEN_METADATA_KEY, token),)


class Driver(Protocol):
    async def open(self) -> None: ...

    async def put(self, key: bytes, value: bytes, timeout_s: float) -> None: ...

    async def get(self, key: bytes, timeout_s: float) -> None: ...

    async def close(self) -> None: ...


class KvraftDriver:
    """kvraft's client protocol: Put, and Get with the default LINEARIZABLE consistency."""

    def __init__(self, endpoint: str, tls: ClientTLS | None = None, user: str | None = None,
                 password: str = "") -> None:
        self._channel = open_channel(endpoint, tls)  # TLS: what it costs per request
        self._stub = kvraft_pb2_grpc.KVStub(self._channel)
        self._user, self._password = user, password
        self._metadata: tuple[tuple[str, str], ...] | None = None  # set by open()

    async def open(self) -> None:
        if self._user is None:
            return
        # Imported here, not at the top: etcd's own protos (tests/bench/etcd.py) define
        # the same message names, and one process cannot load both sets; a worker that
        # drives etcd's API never gets here.
        from kvraft.proto import etcdserverpb_pb2 as etcdpb
        from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc

        reply = await etcdpb_grpc.AuthStub(self._channel).Authenticate(
            etcdpb.AuthenticateRequest(name=self._user, password=self._password),
            timeout=AUTHENTICATE_TIMEOUT_S)
        self._metadata = token_metadata(reply.token)

    async def put(self, key: bytes, value: bytes, timeout_s: float) -> None:
        await self._stub.Put(kvraft_pb2.PutRequest(key=key, value=value), timeout=timeout_s,
                             metadata=self._metadata)

    async def get(self, key: bytes, timeout_s: float) -> None:
        await self._stub.Get(kvraft_pb2.GetRequest(key=key), timeout=timeout_s,
                             metadata=self._metadata)

    async def close(self) -> None:
        await self._channel.close()


BUILTIN_DRIVERS = {"kvraft": "kvraft.bench.drivers:KvraftDriver"}


def load_driver_factory(name: str):  # -> Callable[[str], Driver]
    """Resolves a driver name ("kvraft") or an import string ("pkg.mod:Factory")."""
    target = BUILTIN_DRIVERS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise ValueError(f"unknown driver {name!r}: expected one of "
                         f"{sorted(BUILTIN_DRIVERS)} or 'module:callable'")
    return getattr(importlib.import_module(module_name), attr)
