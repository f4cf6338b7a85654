"""Where a node's blocking storage calls run: never on the event loop.

Everything a node owes its peers (heartbeats, acks, votes, ticks) runs on its one event
loop, and a LevelDB write can block for seconds — every writer waits while LevelDB's
compaction is behind — so storage work runs on two threads of its own (issue 11, item
8):

* the persistence lane: Ready writes (entries + hard state, synced), snapshot installs
  and log compactions — everything that writes the Raft log, in order;
* the apply lane: state-machine applies of committed entries.

Two lanes, so a stalled fsync does not hold up applies nor a long apply the acks that
wait for an fsync. Both executors can be passed in (a test stalls them), or the whole
`StorageLanes` replaced (the whole-node simulation, tests/simcluster, runs each job
inline at a virtual time of its choosing, and drops the queued ones on a crash — issue
15); the default ones are one thread each (`_Lane`), owned and shut down by the
StorageIO.

A node hops to each lane about once per round, so the hop's own cost counts (issue 16):
a `_Lane` hands its thread the job on a SimpleQueue and the thread settles the loop's
future with one call_soon_threadsafe, where `run_in_executor` also makes a
concurrent.futures Future, a work item and a chain of callbacks between the two
futures, and checks the pool's thread count on every submit.

What the node relies on from any `StorageLanes`: the jobs of one lane run one at a
time, in the order they were submitted, and none of them runs on the event loop
between two of the loop's callbacks in a way that could interleave with its own
state (the node only awaits them).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StorageLanes(Protocol):
    """Where a node runs its blocking storage work (see the module docstring)."""

    async def persist(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def apply(self, fn: Callable[..., T], *args: Any) -> T: ...
    def shutdown(self) -> None: ...


class StorageIO:
    def __init__(self, persist_executor: Executor | None = None,
                 apply_executor: Executor | None = None) -> None:
        self._owned: list[_Lane] = []
        self._persist: _Lane | Executor = persist_executor or self._own("kvraft-persist")
        self._apply: _Lane | Executor = apply_executor or self._own("kvraft-apply")

    def _own(self, name: str) -> _Lane:
        lane = _Lane(name)
        self._owned.append(lane)
        return lane

    async def persist(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the persistence lane."""
        return await _run(self._persist, fn, args)

    async def apply(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the apply lane."""
        return await _run(self._apply, fn, args)

    def shutdown(self) -> None:
        """Stop the lanes this StorageIO made (after the node's tasks ended)."""
        for lane in self._owned:
            lane.shutdown()
        self._owned.clear()


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any],
             tuple[Any, ...]]


class _Lane:
    """One thread that runs jobs one at a time, in the order they were queued.

    `_jobs` holds the jobs not yet started, then None once `shutdown` began (the
    thread ends there, after the jobs queued before it). A job's future is settled on
    its loop, never on the lane's thread (asyncio futures are not thread-safe); one
    cancelled meanwhile (its caller went away) is left alone. The thread is a daemon:
    Node.stop shuts the lane down (run_node always stops its node), and a lane left
    running never holds up the interpreter's exit (ending mid-write is a crash, which
    the storage survives)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"{name}_0", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the storage lane is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting task, which raises it
                error: BaseException | None = e
                result = None
            else:
                error = None
            with contextlib.suppress(RuntimeError):   # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, future, result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


async def _run(lane: _Lane | Executor, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    if isinstance(lane, _Lane):
        return await lane.submit(fn, args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(lane, functools.partial(fn, *args))
