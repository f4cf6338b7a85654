"""A learner answers of etcd's API only what etcd's learner answers (v3rpc/interceptor.go:
isRPCSupportedForLearner, and the Snapshot stream), and refuses the rest with
"etcdserver: rpc not supported for learner" (UNAVAILABLE) before the handler runs.

The guard runs in a real grpc.aio server on loopback in front of stand-in services that
count the calls that reach them, so a refusal is seen as a client sees it, on every
shape of call (unary, server stream, bidirectional stream)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from kvraft.server.etcd.learner import LearnerGuard

RPC_TIMEOUT_S = 10.0
REFUSED = (grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")


class Reached:
    """The methods whose handler ran."""

    def __init__(self) -> None:
        self.methods: list[str] = []


class StandIn:
    """A service whose handlers note in `reached` that they ran."""

    def __init__(self, reached: Reached) -> None:
        self.reached = reached


class KV(StandIn, etcdpb_grpc.KVServicer):
    async def Range(self, request: Any, context: Any) -> etcdpb.RangeResponse:
        self.reached.methods.append("Range")
        return etcdpb.RangeResponse(count=1)

    async def Put(self, request: Any, context: Any) -> etcdpb.PutResponse:
        self.reached.methods.append("Put")
        return etcdpb.PutResponse()


class Watch(StandIn, etcdpb_grpc.WatchServicer):
    async def Watch(self, requests: AsyncIterator[Any], context: Any
                    ) -> AsyncIterator[etcdpb.WatchResponse]:
        self.reached.methods.append("Watch")
        async for _ in requests:
            yield etcdpb.WatchResponse(created=True)
            return


class Maintenance(StandIn, etcdpb_grpc.MaintenanceServicer):
    async def Status(self, request: Any, context: Any) -> etcdpb.StatusResponse:
        self.reached.methods.append("Status")
        return etcdpb.StatusResponse(isLearner=True)

    async def Snapshot(self, request: Any, context: Any
                       ) -> AsyncIterator[etcdpb.SnapshotResponse]:
        self.reached.methods.append("Snapshot")
        yield etcdpb.SnapshotResponse(blob=b"image")

    async def Alarm(self, request: Any, context: Any) -> etcdpb.AlarmResponse:
        self.reached.methods.append("Alarm")
        return etcdpb.AlarmResponse()


class KvraftKV(StandIn, pb_grpc.KVServicer):
    async def Get(self, request: Any, context: Any) -> pb.GetResponse:
        self.reached.methods.append("kvraft.Get")
        return pb.GetResponse(found=True, value=b"v")


Scenario = Callable[[grpc.aio.Channel, Reached, list[bool]], Awaitable[None]]


def run(scenario: Scenario) -> None:
    """Serve the stand-ins behind the guard on a loopback port; `learner[0]` is what
    the guard asks."""
    async def main() -> None:
        reached, learner = Reached(), [True]
        server = grpc.aio.server(interceptors=[LearnerGuard(lambda: learner[0])])
        etcdpb_grpc.add_KVServicer_to_server(KV(reached), server)
        etcdpb_grpc.add_WatchServicer_to_server(Watch(reached), server)
        etcdpb_grpc.add_MaintenanceServicer_to_server(Maintenance(reached), server)
        pb_grpc.add_KVServicer_to_server(KvraftKV(reached), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(channel, reached, learner)
        finally:
            await server.stop(0)

    asyncio.run(main())


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def test_a_learner_serves_a_serializable_range_and_refuses_a_linearizable_one() -> None:
    async def scenario(channel: grpc.aio.Channel, reached: Reached, _: list[bool]) -> None:
        kv = etcdpb_grpc.KVStub(channel)
        served = await kv.Range(etcdpb.RangeRequest(key=b"k", serializable=True),
                                timeout=RPC_TIMEOUT_S)
        assert served.count == 1
        assert await refusal(kv.Range(etcdpb.RangeRequest(key=b"k"),
                                      timeout=RPC_TIMEOUT_S)) == REFUSED
        assert reached.methods == ["Range"]   # the refused one never reached the handler

    run(scenario)


def test_a_learner_refuses_writes_watches_and_other_maintenance() -> None:
    async def scenario(channel: grpc.aio.Channel, reached: Reached, _: list[bool]) -> None:
        kv = etcdpb_grpc.KVStub(channel)
        assert await refusal(kv.Put(etcdpb.PutRequest(key=b"k", value=b"v"),
                                    timeout=RPC_TIMEOUT_S)) == REFUSED
        maintenance = etcdpb_grpc.MaintenanceStub(channel)
        assert await refusal(maintenance.Alarm(etcdpb.AlarmRequest(),
                                               timeout=RPC_TIMEOUT_S)) == REFUSED
        watch = etcdpb_grpc.WatchStub(channel).Watch(timeout=RPC_TIMEOUT_S)
        await watch.write(etcdpb.WatchRequest(
            create_request=etcdpb.WatchCreateRequest(key=b"k")))
        assert await refusal(watch.read()) == REFUSED
        assert reached.methods == []

    run(scenario)


def test_a_learner_serves_status_snapshot_and_kvraft_own_api() -> None:
    async def scenario(channel: grpc.aio.Channel, reached: Reached, _: list[bool]) -> None:
        maintenance = etcdpb_grpc.MaintenanceStub(channel)
        status = await maintenance.Status(etcdpb.StatusRequest(), timeout=RPC_TIMEOUT_S)
        assert status.isLearner
        chunks = [r.blob async for r in maintenance.Snapshot(etcdpb.SnapshotRequest(),
                                                            timeout=RPC_TIMEOUT_S)]
        assert chunks == [b"image"]
        got = await pb_grpc.KVStub(channel).Get(pb.GetRequest(key=b"k"),
                                                timeout=RPC_TIMEOUT_S)
        assert got.value == b"v"
        assert reached.methods == ["Status", "Snapshot", "kvraft.Get"]

    run(scenario)


def test_a_promoted_member_serves_everything_from_its_next_call() -> None:
    """The guard asks the membership at every call: no restart, no stale answer."""
    async def scenario(channel: grpc.aio.Channel, reached: Reached,
                       learner: list[bool]) -> None:
        kv = etcdpb_grpc.KVStub(channel)
        put = etcdpb.PutRequest(key=b"k", value=b"v")
        assert await refusal(kv.Put(put, timeout=RPC_TIMEOUT_S)) == REFUSED
        learner[0] = False
        await kv.Put(put, timeout=RPC_TIMEOUT_S)
        await kv.Range(etcdpb.RangeRequest(key=b"k"), timeout=RPC_TIMEOUT_S)
        assert reached.methods == ["Put", "Range"]

    run(scenario)
