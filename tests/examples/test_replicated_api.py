"""kvraft.server.replicated in one process: a one-member group, its restart, its errors."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvraft.server.config import ServeError
from kvraft.server.replicated import ReplicaConfig, ReplicaError, ReplicatedNode
from tests.cluster.harness import free_port

TICK_S = 0.02
PROPOSE_TIMEOUT_S = 10.0


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self.indexes: list[int] = []

    def apply(self, index: int, data: bytes) -> int:
        self.indexes.append(index)
        self.value += int(data)
        return self.value


def config(tmp_path: Path, **overrides: object) -> ReplicaConfig:
    fields: dict = {"node_id": 1, "data_dir": tmp_path / "c1",
                    "peers": {1: f"127.0.0.1:{free_port()}"}, "tick_interval_s": TICK_S}
    fields.update(overrides)
    return ReplicaConfig(**fields)


async def propose_when_led(node: ReplicatedNode, data: bytes) -> int:
    """Propose, re-sending while it fails retry-safe (before the first election)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROPOSE_TIMEOUT_S
    while True:
        try:
            return await node.propose(data, timeout_s=PROPOSE_TIMEOUT_S)
        except ReplicaError as e:
            if not e.retry_safe or loop.time() > deadline:
                raise
            await asyncio.sleep(TICK_S)


def test_one_member_applies_returns_results_and_replays_after_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path)

    async def first_run() -> tuple[list[int], list[int]]:
        counter = Counter()
        async with ReplicatedNode(cfg, counter.apply) as node:
            results = [await propose_when_led(node, b"%d" % n) for n in (1, 2, 3)]
            await node.read_barrier(timeout_s=PROPOSE_TIMEOUT_S)
            assert node.is_leader and node.applied_index >= counter.indexes[-1]
        return results, counter.indexes

    async def second_run() -> tuple[int, list[int]]:
        counter = Counter()
        async with ReplicatedNode(cfg, counter.apply) as node:
            await propose_when_led(node, b"10")
        return counter.value, counter.indexes

    results, indexes = asyncio.run(first_run())
    assert results == [1, 3, 6]
    value, replayed = asyncio.run(second_run())
    assert value == 16, "the restarted member did not replay its log"
    assert replayed[:3] == indexes


def test_applied_index_skips_what_the_state_machine_already_holds(tmp_path: Path) -> None:
    cfg = config(tmp_path)

    async def run(applied_index: int) -> list[int]:
        counter = Counter()
        cfg.applied_index = applied_index
        async with ReplicatedNode(cfg, counter.apply) as node:
            await propose_when_led(node, b"1")
        return counter.indexes

    first = asyncio.run(run(0))
    second = asyncio.run(run(first[-1]))
    assert second and second[0] > first[-1], (first, second)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"node_id": 0}, "node id must be a positive integer"),
    ({"peers": {2: "127.0.0.1:1"}}, "peers does not list this node's id 1"),
    ({"peers": {1: "nohost"}}, "malformed peer address of node 1"),
    ({"election_tick": 2, "heartbeat_tick": 2}, "election ticks must exceed"),
])
def test_bad_configuration_is_one_line(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ServeError, match=message) as info:
        ReplicatedNode(config(tmp_path, **overrides), Counter().apply)
    assert "\n" not in str(info.value)


def test_a_directory_of_other_members_or_a_busy_address_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)

    async def scenario() -> None:
        async with ReplicatedNode(cfg, Counter().apply):
            # Another node on the same address cannot listen.
            busy = config(tmp_path, data_dir=tmp_path / "other", peers=dict(cfg.peers))
            with pytest.raises(ServeError, match="cannot listen"):
                await ReplicatedNode(busy, Counter().apply).start()
        grown = config(tmp_path, peers={**cfg.peers, 2: "127.0.0.1:1"})
        with pytest.raises(ServeError, match=r"holds members \[1\], not \[1, 2\]"):
            await ReplicatedNode(grown, Counter().apply).start()

    asyncio.run(scenario())


def test_propose_before_start_is_retry_safe(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = ReplicatedNode(config(tmp_path), Counter().apply)
        with pytest.raises(ReplicaError, match="not running") as info:
            await node.propose(b"1")
        assert info.value.retry_safe

    asyncio.run(scenario())
