"""Slow fsyncs and slow applies are logged, rate limited, and counted (issue 13).

The disk is made slow with a clock, not with sleeps: the store's write advances a fake
clock by as long as the "disk" takes, and the persister and the applier time their
writes with that clock — so nothing here waits or depends on the machine's speed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.server.applier import Applier
from kvraft.server.apply_backlog import ApplyBatch
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import Node
from kvraft.server.persist import Persister, PersistJob
from kvraft.server.slow_ops import SLOW_FSYNC_S, SlowOpLog
from kvraft.server.storage_adapter import Store
from kvraft.server.storage_io import StorageIO
from kvraft.storage import commands

from .inprocess import node_config, open_node

LOGGER = "kvraft.server.node"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def slow(self, fn: Callable[..., Any], took_s: float) -> Callable[..., Any]:
        """`fn`, on a disk that takes `took_s` for each call."""
        def slowed(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            self.now_s += took_s
            return result
        return slowed


@contextlib.contextmanager
def one_member(tmp_path: Path) -> Iterator[tuple[Node, Store, StorageIO]]:
    """A single member's node (not started), its store, and storage lanes of its own
    (call on a running event loop); closed on the way out, also on failure."""
    node, store = open_node(node_config(tmp_path / "n1", members=1))
    io = StorageIO()
    try:
        yield node, store, io
    finally:
        io.shutdown()
        store.close()


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def test_a_slow_operation_is_warned_once_per_interval_with_the_suppressed_count(
        caplog: pytest.LogCaptureFixture) -> None:
    """A sick disk makes every write slow: one line per interval, and the next line
    says how many were not reported and the slowest; the counter counts them all."""
    clock = FakeClock()
    counted: list[int] = []
    slow = SlowOpLog(logging.getLogger(LOGGER), "node 7: slow fdatasync", 1.0,
                     lambda: counted.append(1), interval_s=10.0, clock=clock)
    caplog.set_level(logging.WARNING, LOGGER)

    assert not slow.observe(0.5, lambda: "fast")            # under the threshold
    assert slow.observe(1.5, lambda: "write A")             # first slow one: a line
    clock.now_s += 1.0
    assert not slow.observe(3.25, lambda: "write B")        # within 10 s: counted only
    clock.now_s += 1.0
    assert not slow.observe(2.0, lambda: "write C")
    clock.now_s += 8.0                                      # 10 s after the line
    assert slow.observe(1.25, lambda: "write D")
    clock.now_s += 1.0
    assert not slow.observe(1.0, lambda: "exactly the threshold is not slow")

    assert warnings(caplog) == [
        "node 7: slow fdatasync: took 1.500s, expected at most 1.000s: write A",
        "node 7: slow fdatasync: took 1.250s, expected at most 1.000s: write D; "
        "2 more since the last warning, the slowest 3.250s",
    ]
    assert len(counted) == 4


def test_a_slow_raft_log_fsync_is_logged_with_what_it_wrote_and_measured(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with one_member(tmp_path) as (_node, store, io):
            clock = FakeClock()
            store.log.persist = clock.slow(store.log.persist,   # type: ignore[method-assign]
                                           SLOW_FSYNC_S + 0.5)
            metrics = NodeMetrics()
            done: list[list[PersistJob]] = []
            persister = Persister(1, store, io, metrics, done.append, clock=clock)
            task = asyncio.ensure_future(persister.run())
            first = store.log.last_index() + 1
            term = store.log.term(first - 1) + 1
            entries = [eraftpb.Entry(index=i, term=term) for i in (first, first + 1)]
            persister.enqueue(PersistJob(1, entries, eraftpb.HardState(term=term),
                                         None, None, []))
            persister.stop()
            await asyncio.wait_for(task, 10.0)
            assert len(done) == 1
            assert store.log.last_index() == first + 1
            # The histogram and the counter saw it; 1.5 s is above the 1 s bucket.
            assert sample(metrics, "kvraft_slow_fsyncs_total") == 1
            assert sample(metrics, "kvraft_disk_wal_fsync_duration_seconds_count") == 1
            assert sample(metrics, "kvraft_disk_wal_fsync_duration_seconds_bucket",
                          le="1.0") == 0
            assert sample(metrics, "kvraft_disk_wal_fsync_duration_seconds_sum") == 1.5
            assert warnings(caplog) == [
                f"node 1: slow fdatasync: took 1.500s, expected at most 1.000s: writing "
                f"2 entries, index {first}-{first + 1} and hard state term {term} commit 0 "
                "of 1 Ready(s)"]

    caplog.set_level(logging.WARNING, LOGGER)
    asyncio.run(scenario())


def test_a_slow_apply_batch_is_logged_with_its_index_range_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with one_member(tmp_path) as (node, store, io):
            clock = FakeClock()
            store.sm.apply = clock.slow(store.sm.apply, 0.25)   # type: ignore[method-assign]
            metrics = NodeMetrics()
            applier = Applier(store, io, node.membership, metrics, lambda e, r: None,
                              node_id=1, warning_apply_s=0.1, clock=clock)
            first = store.sm.applied_index + 1
            entries = [eraftpb.Entry(index=first + i, term=1,
                                     data=commands.put_command(b"k%d" % i, b"v", i + 1))
                       for i in range(3)]
            applied, results = applier.apply_batch(ApplyBatch(entries=entries))
            assert [e.index for e in applied] == [first, first + 1, first + 2]
            assert [r.index for r in results] == [first, first + 1, first + 2]
            assert sample(metrics, "kvraft_slow_applies_total") == 1
            assert sample(metrics, "kvraft_apply_duration_seconds_count") == 1
            assert warnings(caplog) == [
                "node 1: apply request took too long: took 0.250s, expected at most "
                f"0.100s: applying 3 entries, index {first}-{first + 2}"]

    caplog.set_level(logging.WARNING, LOGGER)
    asyncio.run(scenario())
