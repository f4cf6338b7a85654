"""An asyncio event loop on virtual time, for the whole-node simulation.

`time()` is a number the loop owns. When nothing is ready to run, instead of sleeping
until the next timer the loop jumps its clock to it: a run takes as long as its work,
not as long as its timeouts, and the same callbacks in the same order give the same
times. Nothing runs on another thread: work handed to the default executor
(`asyncio.to_thread`, which the peer service uses to write snapshot chunks) runs inline,
and the node's storage lanes are the simulation's own (lanes.py). FoundationDB's
simulator and TigerBeetle's VOPR run their real code the same way.

After every iteration that ran callbacks the loop calls `after_step` (the invariant
checks), so a broken property is caught at the step that broke it.
"""
from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any


class SimulationStuck(RuntimeError):
    """Nothing is ready, nothing is scheduled: the run can never make progress."""


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the real selector without waiting (only the loop's self-pipe is in it);
    where the loop would wait for `timeout`, advances virtual time instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise SimulationStuck("no callback is ready and no timer is scheduled")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        self.steps = 0
        self.after_step: Callable[[], None] | None = None
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self._now += seconds

    def run_in_executor(self, executor: Executor | None, func: Callable[..., Any],
                        *args: Any) -> asyncio.Future[Any]:
        """Inline, at this instant: no thread may run in a simulation."""
        assert executor is None, "the simulation's storage lanes replace every executor"
        future = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as e:   # delivered to the awaiting task, as from a thread
            future.set_exception(e)
        return future

    def _run_once(self) -> None:
        # asyncio runs a timer due within its clock resolution of now with this
        # iteration's callbacks: on a real clock time still passes, here it would not,
        # and code that sleeps until a deadline (the lessor's timer) would wake just
        # before it, find it not passed, sleep for the remainder and spin at one
        # instant. Time moves to such a timer's instant, as a real clock's would.
        if self._scheduled:                       # type: ignore[attr-defined]
            when = self._scheduled[0]._when       # type: ignore[attr-defined]
            if self._now < when <= self._now + self._clock_resolution:  # type: ignore[attr-defined]
                self._now = when
        super()._run_once()   # type: ignore[misc]
        self.steps += 1
        if self.after_step is not None:
            self.after_step()
