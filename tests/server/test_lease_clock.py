"""`--read-mode lease`: the node keeps a leader's tick clock up with real time
(node.py `_keep_lease_clock`). The lease is counted in ticks (thesis §6.4.1,
kvraft/raft/read_only.py); the ticker drops the ticks of a pause, which would let a
resumed leader trust a lease that ended in real time. A real Node over a real store,
on a clock the test moves forward as a pause would."""
from __future__ import annotations

import asyncio
from pathlib import Path

from kvraft.raft import ReadOnlyOption, StateRole
from kvraft.server.node import LEASE_CATCH_UP_EXTRA_TICKS, Node

from .inprocess import node_config, open_node, wait_for

TICK_S = 0.02


class JumpingClock:
    """The loop's clock, plus the seconds a pause skipped."""

    def __init__(self) -> None:
        self.skipped_s = 0.0

    def __call__(self) -> float:
        return asyncio.get_running_loop().time() + self.skipped_s


async def _leader(tmp_path: Path, clock: JumpingClock, read_mode: str = "lease") -> Node:
    node, _store = open_node(node_config(tmp_path / "n1", members=1, tick_interval_s=TICK_S,
                                         read_mode=read_mode), clock=clock)
    node.start()
    await wait_for(lambda: node.raw.raft.state is StateRole.Leader, 10.0, "leadership")
    # A few rounds as leader, so the clock base is the one a leader keeps.
    start = node.raw.raft.tick_count
    await wait_for(lambda: node.raw.raft.tick_count >= start + 3, 10.0, "ticks")
    return node


def test_lease_mode_reaches_the_raft_config(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await _leader(tmp_path, JumpingClock())
        try:
            assert node.raw.raft.read_only.option is ReadOnlyOption.LeaseBased
        finally:
            await node.stop()
            node.store.close()

    asyncio.run(scenario())


def test_a_paused_leader_ticks_the_pause_before_it_steps_anything(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = JumpingClock()
        node = await _leader(tmp_path, clock)
        try:
            raft = node.raw.raft
            before = raft.tick_count
            clock.skipped_s += 50 * TICK_S  # the process was stopped for 50 ticks
            node._keep_lease_clock()        # what the next round does first
            caught_up = raft.tick_count - before
            # Bounded: enough to end any lease (and reach a check-quorum), no more.
            assert caught_up == node.config.election_tick + LEASE_CATCH_UP_EXTRA_TICKS
            assert caught_up > raft.lease_ticks
            # The base moved with it: the next round owes nothing more.
            node._keep_lease_clock()
            assert raft.tick_count - before == caught_up
        finally:
            await node.stop()
            node.store.close()

    asyncio.run(scenario())


def test_a_short_lag_is_ticked_exactly(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = JumpingClock()
        node = await _leader(tmp_path, clock)
        try:
            raft = node.raw.raft
            node._keep_lease_clock()
            before = raft.tick_count
            clock.skipped_s += 4 * TICK_S + TICK_S / 2
            node._keep_lease_clock()
            # 4 whole ticks skipped; the ticker's own next tick may already be counted.
            assert 3 <= raft.tick_count - before <= 5
        finally:
            await node.stop()
            node.store.close()

    asyncio.run(scenario())


def test_safe_mode_leaves_the_tick_clock_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = JumpingClock()
        node = await _leader(tmp_path, clock, read_mode="safe")
        try:
            raft = node.raw.raft
            assert raft.read_only.option is ReadOnlyOption.Safe
            before = raft.tick_count
            clock.skipped_s += 50 * TICK_S
            # A safe-mode round never calls _keep_lease_clock: no burst of ticks.
            await asyncio.sleep(3 * TICK_S)
            assert raft.tick_count - before <= 6
        finally:
            await node.stop()
            node.store.close()

    asyncio.run(scenario())
