"""The follower's keep-alive upstream to the leader (kvraft/server/etcd/lease._Upstream)
against a scripted leader stream: a write to a stream the leader has just ended is a
retryable ConnectionError and the next keep-alive goes out on a new stream."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.server.etcd.lease import _Upstream


class _ScriptedCall:
    """A LeaseKeepAlive stream call: `write` fails with `write_error` if set; otherwise
    each written request is answered, in order, with TTL 10."""

    def __init__(self, write_error: BaseException | None) -> None:
        self.write_error = write_error
        self.written: list[int] = []
        self.cancelled = False
        self._answers: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, request: etcdpb.LeaseKeepAliveRequest) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written.append(request.ID)
        await self._answers.put(etcdpb.LeaseKeepAliveResponse(ID=request.ID, TTL=10))

    async def read(self) -> Any:
        if self.cancelled:
            return grpc.aio.EOF
        return await self._answers.get()

    def cancel(self) -> bool:
        self.cancelled = True
        self._answers.put_nowait(grpc.aio.EOF)
        return True


class _ScriptedLeader:
    """Stands in for _LeaderChannel: each LeaseKeepAlive() opens the next scripted call."""

    def __init__(self, calls: list[_ScriptedCall]) -> None:
        self.calls = calls
        self.opened: list[_ScriptedCall] = []

    def stub(self, address: str) -> Any:
        leader = self

        class Stub:
            def LeaseKeepAlive(self, metadata: Any = None) -> _ScriptedCall:
                call = leader.calls[len(leader.opened)]
                leader.opened.append(call)
                return call
        return Stub()


def _run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


def test_write_to_an_ended_stream_is_retryable_and_the_next_ask_opens_a_new_stream() -> None:
    ended = _ScriptedCall(asyncio.InvalidStateError("RPC already finished"))
    fresh = _ScriptedCall(None)
    leader = _ScriptedLeader([ended, fresh])

    async def body() -> etcdpb.LeaseKeepAliveResponse:
        upstream = _Upstream(leader)  # type: ignore[arg-type]
        # The keep-alive loop (LeaseService._keep_alive) retries ConnectionError only.
        with pytest.raises(ConnectionError, match="had ended"):
            await upstream.ask("leader:1", etcdpb.LeaseKeepAliveRequest(ID=7))
        assert ended.cancelled, "the ended stream is dropped"
        response = await upstream.ask("leader:1", etcdpb.LeaseKeepAliveRequest(ID=7))
        upstream.close()
        return response

    response = _run(body)
    assert (response.ID, response.TTL) == (7, 10)
    assert leader.opened == [ended, fresh]
    assert fresh.written == [7]


def test_answers_resolve_in_request_order_on_one_stream() -> None:
    call = _ScriptedCall(None)
    leader = _ScriptedLeader([call])

    async def body() -> list[int]:
        upstream = _Upstream(leader)  # type: ignore[arg-type]
        answers = await asyncio.gather(*(
            upstream.ask("leader:1", etcdpb.LeaseKeepAliveRequest(ID=i))
            for i in (3, 1, 2)))
        upstream.close()
        return [a.ID for a in answers]

    assert _run(body) == [3, 1, 2]
    assert leader.opened == [call]


def test_a_moved_leader_gets_a_new_stream_and_the_old_one_is_ended() -> None:
    first, second = _ScriptedCall(None), _ScriptedCall(None)
    leader = _ScriptedLeader([first, second])

    async def body() -> None:
        upstream = _Upstream(leader)  # type: ignore[arg-type]
        await upstream.ask("leader:1", etcdpb.LeaseKeepAliveRequest(ID=1))
        await upstream.ask("leader:2", etcdpb.LeaseKeepAliveRequest(ID=1))
        upstream.close()

    _run(body)
    assert first.cancelled and leader.opened == [first, second]
    assert (first.written, second.written) == ([1], [1])
