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
15); the default ones are one thread each, owned and shut down by the StorageIO.

What the node relies on from any `StorageLanes`: the jobs of one lane run one at a
time, in the order they were submitted, and none of them runs on the event loop
between two of the loop's callbacks in a way that could interleave with its own
state (the node only awaits them).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
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
        self._owned: list[Executor] = []
        self.persist_executor = persist_executor or self._own("kvraft-persist")
        self.apply_executor = apply_executor or self._own("kvraft-apply")

    def _own(self, name: str) -> Executor:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._owned.append(executor)
        return executor

    async def persist(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the persistence lane."""
        return await _run(self.persist_executor, fn, args)

    async def apply(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the apply lane."""
        return await _run(self.apply_executor, fn, args)

    def shutdown(self) -> None:
        """Stop the executors this StorageIO made (after the node's tasks ended)."""
        for executor in self._owned:
            with contextlib.suppress(RuntimeError):
                executor.shutdown(wait=True)
        self._owned.clear()


async def _run(executor: Executor, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args))
