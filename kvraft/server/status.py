"""What the status page (`/` of the metrics listener, status_page.py) shows, served as
`/status.json`: this member's Raft state, the members it knows, on the leader each
follower's replication progress and lag, the raised alarms, the recent leader changes.

Threads. The node's state belongs to its event loop; the HTTP server answers from its
own threads (metrics.py). So the loop *publishes*: every PUBLISH_INTERVAL_S, and at
once when the leader changes, `StatusBoard` takes the values it shows into a new
immutable `Published` and replaces `_published` with it — one reference assignment,
atomic under the GIL. An HTTP thread reads that reference once and only ever reads the
frozen object it got; it never touches Raft or the node. The alarms, which live in
LevelDB, are read on the HTTP thread through the state machine's read views (the same
thread-safe reads the storage lanes make), so the loop never waits for a disk read for
the page. A loop that stops publishing (blocked, or the node stopped) shows: the answer
says how old the published state is, and `stale` once it is older than STALE_AFTER_S.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvraft import __version__
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import StateRole

from .etcd.cluster import member_name
from .node import ROLE_NAMES, Node

PUBLISH_INTERVAL_S = 0.5
# A few missed publishes: the loop is blocked or gone (an election timeout is ~1 s).
STALE_AFTER_S = 3.0
LEADER_CHANGES_KEPT = 16

WallClock = Callable[[], float]


@dataclass(frozen=True)
class MemberView:
    """One member as this member knows it. `match_index`, `lag` (entries of the leader's
    commit index the member has not got), `replication` (the leader's Progress state)
    and `active` are known only on the leader: None elsewhere."""

    id: int
    name: str
    peer_address: str
    client_address: str
    learner: bool
    role: str          # this member's own role for itself; else what it can tell
    match_index: int | None = None
    lag: int | None = None
    replication: str | None = None
    active: bool | None = None


@dataclass(frozen=True)
class LeaderChange:
    """The leader this member saw from `at` (wall-clock seconds) on; 0: none."""

    term: int
    leader_id: int
    at: float


@dataclass(frozen=True)
class Published:
    """One snapshot of the loop's state; never mutated once made (see the module
    docstring: HTTP threads read it)."""

    member_id: int
    cluster_id: int
    role: str
    term: int
    leader_id: int
    commit_index: int
    applied_index: int
    last_index: int
    stopping: bool
    members: tuple[MemberView, ...]
    leader_changes: tuple[LeaderChange, ...]   # oldest first, at most LEADER_CHANGES_KEPT
    published_at: float        # wall clock, for people
    published_mono: float      # time.monotonic(), for the age


class StatusBoard:
    """The published status of one node. Make it before `node.start()` (it listens for
    leader changes from then on); run `run()` on the node's loop; call `status()` from
    any thread.

    Loop-owned: `_changes` (the ring of recent leader changes, a tuple replaced on each
    change). Shared: `_published`, replaced whole by the loop, only read elsewhere."""

    def __init__(self, node: Node, wall: WallClock = time.time) -> None:
        self.node = node
        self._wall = wall
        self._changes: tuple[LeaderChange, ...] = ()
        if node.leader_id:
            self._changes = (LeaderChange(node.raw.raft.term, node.leader_id, wall()),)
        self._last_leader = node.leader_id
        self._published: Published | None = None
        node.role_listeners.append(self._on_role)
        self.publish()

    # ------------------------------------------------------------- on the loop
    def _on_role(self, leader_id: int, role: StateRole) -> None:
        if leader_id != self._last_leader:
            self._last_leader = leader_id
            change = LeaderChange(self.node.raw.raft.term, leader_id, self._wall())
            self._changes = (*self._changes, change)[-LEADER_CHANGES_KEPT:]
        self.publish()

    async def run(self) -> None:
        """Publish every PUBLISH_INTERVAL_S until cancelled or the node stops; once
        more then, so that the page says it stopped."""
        while not self.node.stopping:
            self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL_S)
        self.publish()

    def publish(self) -> None:
        node = self.node
        r = node.raw.raft
        status = node.status()
        self._published = Published(
            member_id=node.id, cluster_id=node.cluster_id, role=status.role, term=r.term,
            leader_id=node.leader_id, commit_index=status.commit_index,
            applied_index=node.store.sm.applied_index, last_index=status.last_index,
            stopping=node.stopping, members=self._members(status.role),
            leader_changes=self._changes, published_at=self._wall(),
            published_mono=time.monotonic())

    def _members(self, own_role: str) -> tuple[MemberView, ...]:
        node = self.node
        r = node.raw.raft
        records = {m.id: m for m in node.members()}
        learners = node.learner_ids()
        # The leader's tracker: (matched, state, recently active) per peer; None when
        # this member does not lead, and then it cannot tell how far others are.
        progress = ({pid: (pr.matched, pr.state.name.lower(), pr.recent_active)
                     for pid, pr in r.prs.progress.items()}
                    if r.state is StateRole.Leader else None)
        views = []
        for member_id in sorted(node.member_ids() | set(records)):
            record = records.get(member_id)
            learner = member_id in learners or (record is not None and record.learner)
            if member_id == node.id:
                role = own_role
            elif learner:
                role = "learner"
            elif member_id == node.leader_id:
                role = ROLE_NAMES[StateRole.Leader]
            else:
                role = ROLE_NAMES[StateRole.Follower]
            tracked = progress.get(member_id) if progress is not None else None
            matched: int | None = None
            lag: int | None = None
            replication: str | None = None
            active: bool | None = None
            if tracked is not None:
                matched, replication, active = tracked
                if member_id == node.id:   # the leader's own log has everything
                    matched, active = r.raft_log.last_index(), True
                lag = max(0, r.raft_log.committed - matched)
            views.append(MemberView(
                id=member_id, name=member_name(record, member_id),
                peer_address=record.peer_address if record else "",
                client_address=record.client_address if record else "",
                learner=learner, role=role, match_index=matched, lag=lag,
                replication=replication, active=active))
        return tuple(views)

    # ------------------------------------------------------------ any thread
    def status(self) -> dict[str, Any]:
        """/status.json's document (see docs/operations.md, "Status page")."""
        p = self._published
        assert p is not None   # published in __init__
        age_s = max(0.0, time.monotonic() - p.published_mono)
        alarms, alarms_error = self._alarms()
        return {
            "member_id": p.member_id,
            "cluster_id": f"{p.cluster_id:016x}",
            "version": __version__,
            "role": p.role,
            "term": p.term,
            "leader_id": p.leader_id,
            "commit_index": p.commit_index,
            "applied_index": p.applied_index,
            "last_index": p.last_index,
            "stopping": p.stopping,
            "lag_known": any(m.lag is not None for m in p.members),
            "members": [asdict(m) for m in p.members],
            "alarms": alarms,
            "alarms_error": alarms_error,
            "leader_changes": [asdict(c) for c in reversed(p.leader_changes)],
            "published_at": p.published_at,
            "age_s": round(age_s, 3),
            "stale": age_s > STALE_AFTER_S,
        }

    def _alarms(self) -> tuple[list[dict[str, Any]], str]:
        """(the raised alarms, "") or ([], why they could not be read)."""
        try:
            raised = self.node.store.sm.alarms()
        except Exception as e:   # the store closed under a shutting-down node
            return [], f"{type(e).__name__}: {e}"
        return [{"member_id": a.member_id, "alarm": _alarm_name(a.alarm)}
                for a in raised], ""


def _alarm_name(alarm: int) -> str:
    try:
        return etcdpb.AlarmType.Name(alarm)
    except ValueError:
        return str(alarm)
