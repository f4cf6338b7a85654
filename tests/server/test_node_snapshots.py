"""Snapshot staging on a follower, on a real in-process Node (issue 11, item 2)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from kvraft.storage.snapshot import STAGED_SUFFIX

from .inprocess import node_config, open_node, snapshot_message, staged_snapshot, wait_for


def test_two_snapshots_delivered_before_a_round_do_not_kill_the_follower(
        tmp_path: Path) -> None:
    """A snapshot at 100 from the term-5 leader, then one at 90 from the term-6 leader,
    both staged before the loop runs: Raft restores the first and ignores the second
    (older than its new commit). The node must install the first, discard the second's
    file, and stay up."""

    async def scenario() -> None:
        node, store = open_node(node_config(tmp_path / "n1", tick_interval_s=60.0))
        try:
            first = staged_snapshot(store, tmp_path / "src100", 100, 5, [1, 2, 3],
                                    {b"k": b"from-term-5"})
            second = staged_snapshot(store, tmp_path / "src90", 90, 6, [1, 2, 3],
                                     {b"k": b"from-term-6"})
            node.start()
            # Both arrive in the same loop iteration, before the Raft loop runs.
            node.deliver_snapshot(snapshot_message(first, 2, 1), first)
            node.deliver_snapshot(snapshot_message(second, 3, 1), second)
            await wait_for(lambda: node.fatal is not None or store.sm.applied_index >= 100,
                           10.0, "the snapshot at 100 to be installed (or the node to fail)")
            assert node.fatal is None, f"the node failed: {node.fatal!r}"
            assert store.sm.applied_index == 100
            assert store.sm.get(b"k") == b"from-term-5"
            assert node.raw.raft.term == 6
            await wait_for(lambda: not list(store.datadir.snap_dir.glob("*" + STAGED_SUFFIX)),
                           5.0, "the ignored snapshot's staged file to be discarded")
        finally:
            await node.stop()
            store.close()

    asyncio.run(scenario())
