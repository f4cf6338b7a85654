"""`--auto-compaction-retention`: the leader compacts the history on its own, as etcd's
revision and periodic compactors do.

* revisions N: every CHECK_INTERVAL_S, compact to (current revision - N) if that is above
  the compact revision;
* a duration D: every D/10 (at least CHECK_INTERVAL_S) note the current revision; compact
  to the newest noted revision that is at least D old — so the history of the last D
  stays readable.

A compaction is an ordinary replicated `etcd_compact` entry, proposed by the leader only
(a follower's samples are dropped when it becomes leader: it starts noting afresh, so a
new leader never compacts history younger than D). The history's removal runs in
bounded steps behind the applies (mvcc_apply.py `finish`), never in one long one.
"""
from __future__ import annotations

import asyncio
import collections
import logging

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import StateRole
from kvraft.storage import commands

from ..config import AutoCompaction
from ..node import Node

log = logging.getLogger("kvraft.server")

CHECK_INTERVAL_S = 1.0


class AutoCompactor:
    def __init__(self, node: Node, policy: AutoCompaction,
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self._node = node
        self._policy = policy
        self._interval_s = check_interval_s
        if policy.period_s:
            self._interval_s = max(check_interval_s, policy.period_s / 10)
        # (monotonic time, revision) samples while leader, oldest first.
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def target(self, now: float, revision: int, compacted: int) -> int:
        """The revision to compact to now (0: none)."""
        if self._policy.revisions:
            target = revision - self._policy.revisions
        else:
            self._samples.append((now, revision))
            target = 0
            while self._samples and now - self._samples[0][0] >= self._policy.period_s:
                target = self._samples.popleft()[1]
        return target if target > compacted else 0

    async def run(self) -> None:
        node = self._node
        while not node.stopping:
            await asyncio.sleep(self._interval_s)
            if node.raw.raft.state != StateRole.Leader:
                self._samples.clear()
                continue
            sm = node.store.sm
            target = self.target(node.clock(), sm.revision, sm.compact_revision)
            if target:
                log.info("node %d: auto-compaction to revision %d", node.id, target)
                request = etcdpb.CompactionRequest(revision=target)
                node.propose_own(commands.etcd_encoder("etcd_compact", request),
                                 "auto-compaction")
