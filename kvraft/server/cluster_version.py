"""Raising the cluster version (kvraft/storage/mvcc_apply.py) during a rolling upgrade.

Members migrate their state at the same point of the log: the ClusterVersion entry,
which only a leader proposes, and only once every member has told it — on the first
batch of each of its peer streams (peer.proto `from_cluster_version_max`) — that its
kvraft applies that version. A member restarted with an older kvraft opens a new
stream without the field, so the leader forgets the higher version at once. A fresh
cluster starts at the highest version (its bootstrap entries), so this only acts on
clusters that older kvrafts started.

State (on the event loop): `_max_by_member`, what each peer said on its latest stream
(absent: nothing heard since this node started: assume version 1); `_next_try_tick`,
when the leader may propose again (it retries until the entry applies: an entry lost
with a leader change is proposed again by the next leader).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from kvraft.storage.commands import cluster_version_command
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_LEGACY, CLUSTER_VERSION_MAX

log = logging.getLogger("kvraft.server")


class ClusterVersionRaise:
    def __init__(self, node_id: int,
                 propose: Callable[[Callable[[int], bytes], str], None]) -> None:
        self._node_id = node_id
        self._propose = propose   # Node.propose_own: a command nobody waits for
        self._max_by_member: dict[int, int] = {}
        self._next_try_tick = 0

    def learn(self, member_id: int, version_max: int) -> None:
        self._max_by_member[member_id] = version_max or CLUSTER_VERSION_LEGACY

    def known_max(self, member_id: int) -> int:
        return self._max_by_member.get(member_id, CLUSTER_VERSION_LEGACY)

    def maybe_raise(self, *, is_leader: bool, current: int, members: set[int],
                    tick: int, retry_ticks: int) -> None:
        """On the leader, every tick: propose the highest version every member
        applies, if it is above the current one (at most once per `retry_ticks`)."""
        if not is_leader or current >= CLUSTER_VERSION_MAX or tick < self._next_try_tick:
            return
        peers = members - {self._node_id}
        target = min((self.known_max(m) for m in peers), default=CLUSTER_VERSION_MAX)
        target = min(target, CLUSTER_VERSION_MAX)
        if target <= current:
            return
        self._next_try_tick = tick + retry_ticks
        log.info("node %d: every member applies cluster version %d: raising it from %d",
                 self._node_id, target, current)
        self._propose(lambda request_id: cluster_version_command(target, request_id),
                      "cluster version raise")
