"""`Status`: a point-in-time summary of one Raft node, for monitoring and debugging."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.tracker import Progress

if TYPE_CHECKING:  # pragma: no cover
    from kvraft.raft.raft import Raft, StateRole


@dataclass(frozen=True)
class SoftState:
    """Volatile state that the application may want to observe: who leads, our role."""

    leader_id: int
    raft_state: StateRole


@dataclass
class Status:
    """What `RawNode.status()` reports. `progress` is the leader's per-peer view (copies),
    None on other roles."""

    id: int
    hs: eraftpb.HardState
    ss: SoftState
    applied: int
    progress: dict[int, Progress] | None

    @classmethod
    def from_raft(cls, raft: Raft) -> Status:
        from kvraft.raft.raft import StateRole

        progress = None
        if raft.state is StateRole.Leader:
            progress = {pid: copy.copy(pr) for pid, pr in raft.prs.progress.items()}
        return cls(
            id=raft.id,
            hs=raft.hard_state(),
            ss=SoftState(raft.leader_id, raft.state),
            applied=raft.raft_log.applied,
            progress=progress,
        )
