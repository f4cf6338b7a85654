"""The node's own storage lanes (storage_io.py `_Lane`): jobs run one at a time off the
event loop, in the order queued; a job's result or exception reaches the task that
awaited it; a caller that went away leaves the lane working; shutdown runs what was
queued before it."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from kvraft.server.storage_io import StorageIO

Body = Callable[[StorageIO], Awaitable[None]]


def run_with_lanes(body: Body) -> None:
    """Run `body(io)` on a loop with a new StorageIO, shut down afterwards."""
    async def go() -> None:
        io = StorageIO()
        try:
            await body(io)
        finally:
            io.shutdown()
    asyncio.run(go())


def test_jobs_run_in_order_on_one_thread_off_the_loop() -> None:
    async def go(io: StorageIO) -> None:
        seen: list[tuple[int, str]] = []
        loop_thread = threading.get_ident()

        def job(i: int) -> int:
            assert threading.get_ident() != loop_thread
            seen.append((i, threading.current_thread().name))
            return i * i

        results = await asyncio.gather(*(io.persist(job, i) for i in range(50)))
        assert results == [i * i for i in range(50)]
        assert [i for i, _ in seen] == list(range(50))
        assert {name for _, name in seen} == {"kvraft-persist_0"}
        assert await io.apply(job, 7) == 49 and seen[-1][1] == "kvraft-apply_0"
    run_with_lanes(go)


def test_an_exception_reaches_the_caller_and_the_lane_goes_on() -> None:
    async def go(io: StorageIO) -> None:
        def fail() -> None:
            raise OSError("disk gone")

        with pytest.raises(OSError, match="disk gone"):
            await io.persist(fail)
        assert await io.persist(lambda: "next") == "next"
    run_with_lanes(go)


def test_a_cancelled_caller_leaves_its_job_to_finish_and_the_lane_working() -> None:
    async def go(io: StorageIO) -> None:
        gate = threading.Event()
        done: list[str] = []

        def slow() -> None:
            gate.wait(5)
            done.append("slow")

        task = asyncio.get_running_loop().create_task(io.apply(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await io.apply(lambda: "after") == "after"
        assert done == ["slow"]
    run_with_lanes(go)


def test_shutdown_runs_the_jobs_queued_before_it_and_refuses_new_ones() -> None:
    async def go() -> None:
        io = StorageIO()
        gate = threading.Event()
        done: list[int] = []

        def job(i: int) -> None:
            gate.wait(5)
            done.append(i)

        pending = [asyncio.ensure_future(io.persist(job, i)) for i in range(3)]
        await asyncio.sleep(0)   # the jobs are queued
        gate.set()
        io.shutdown()
        assert done == [0, 1, 2]
        with pytest.raises(RuntimeError, match="shut down"):
            await io.persist(job, 9)
        for p in pending:
            p.cancel()
    asyncio.run(go())
