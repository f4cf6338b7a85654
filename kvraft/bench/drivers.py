"""Drivers: how the load generator talks to one store.

A driver is created once per (worker process, endpoint) and shared by every simulated
client of that worker aimed at that endpoint; its methods must be safe to await
concurrently. Drivers live behind an import string ("module:callable") so that code for
other stores (etcd, the echo ceiling) stays out of the kvraft package.
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


class Driver(Protocol):
    async def put(self, key: bytes, value: bytes, timeout_s: float) -> None: ...

    async def get(self, key: bytes, timeout_s: float) -> None: ...

    async def close(self) -> None: ...


class KvraftDriver:
    """kvraft's client protocol: Put, and Get with the default LINEARIZABLE consistency."""

    def __init__(self, endpoint: str, tls: ClientTLS | None = None) -> None:
        if tls is None:
            self._channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        else:  # `kvraft bench --cacert ...`: what TLS costs per request
            self._channel = grpc.aio.secure_channel(endpoint, tls.credentials(),
                                                    options=CHANNEL_OPTIONS)
        self._stub = kvraft_pb2_grpc.KVStub(self._channel)

    async def put(self, key: bytes, value: bytes, timeout_s: float) -> None:
        await self._stub.Put(kvraft_pb2.PutRequest(key=key, value=value), timeout=timeout_s)

    async def get(self, key: bytes, timeout_s: float) -> None:
        await self._stub.Get(kvraft_pb2.GetRequest(key=key), timeout=timeout_s)

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
