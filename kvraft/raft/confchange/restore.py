"""Rebuild a tracker's configuration from a `ConfState` (on startup or after applying
a snapshot), by replaying changes that the `Changer` validates."""

from __future__ import annotations

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.confchange.changer import Changer
from kvraft.raft.tracker import ProgressTracker


def _single(change_type: eraftpb.ConfChangeType, node_id: int) -> eraftpb.ConfChangeSingle:
    return eraftpb.ConfChangeSingle(change_type=change_type, node_id=node_id)


def _to_conf_change_singles(
        cs: eraftpb.ConfState,
) -> tuple[list[eraftpb.ConfChangeSingle], list[eraftpb.ConfChangeSingle]]:
    """Two change lists: `outgoing` builds C_old from nothing, one voter at a time;
    `incoming`, applied while entering a joint configuration, turns C_old into the
    state described by `cs`.

    For voters=(1 2 3) learners=(5) voters_outgoing=(1 2 4 6) learners_next=(4):
    outgoing = add 1, add 2, add 4, add 6 gives quorum (1 2 4 6); incoming = remove
    1 2 4 6, add 1 2 3, add-learner 5, add-learner 4 gives (1 2 3)&&(1 2 4 6) with
    learners (5) and learners_next (4) — 4 goes to learners_next because it is still an
    outgoing voter. Whether 5 was a learner before the joint state cannot be known and
    does not matter.
    """
    outgoing = [_single(eraftpb.AddNode, peer_id) for peer_id in cs.voters_outgoing]
    incoming = [_single(eraftpb.RemoveNode, peer_id) for peer_id in cs.voters_outgoing]
    incoming += [_single(eraftpb.AddNode, peer_id) for peer_id in cs.voters]
    incoming += [_single(eraftpb.AddLearnerNode, peer_id) for peer_id in cs.learners]
    incoming += [_single(eraftpb.AddLearnerNode, peer_id) for peer_id in cs.learners_next]
    return outgoing, incoming


def restore(tracker: ProgressTracker, next_idx: int, cs: eraftpb.ConfState) -> None:
    """Install `cs` into an empty `tracker`; new peers start probing at `next_idx`.

    Raises ConfChangeError when `cs` is not a valid configuration (e.g. learners but
    no voters, or a learner that is also a voter).
    """
    assert not tracker.progress, "restore() expects an empty tracker"
    outgoing, incoming = _to_conf_change_singles(cs)
    if not outgoing:
        # Not joint: build the voters and learners one simple change at a time.
        for cc in incoming:
            cfg, changes = Changer(tracker).simple([cc])
            tracker.apply_conf(cfg, changes, next_idx)
        return
    for cc in outgoing:
        cfg, changes = Changer(tracker).simple([cc])
        tracker.apply_conf(cfg, changes, next_idx)
    cfg, changes = Changer(tracker).enter_joint(cs.auto_leave, incoming)
    tracker.apply_conf(cfg, changes, next_idx)
