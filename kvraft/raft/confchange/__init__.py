"""Membership changes (thesis §4): validation of single-server and joint changes, the
restoring of a configuration from a ConfState, and ConfChange/ConfChangeV2 helpers."""

from __future__ import annotations

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.confchange.changer import Changer, MapChange, MapChangeType
from kvraft.raft.confchange.restore import restore

__all__ = [
    "Changer",
    "MapChange",
    "MapChangeType",
    "enter_joint",
    "leave_joint",
    "restore",
    "to_conf_change_v2",
]


def to_conf_change_v2(cc: eraftpb.ConfChange | eraftpb.ConfChangeV2) -> eraftpb.ConfChangeV2:
    """Normalise a legacy single ConfChange into the ConfChangeV2 the core handles
    (one change, Auto transition, same context); a ConfChangeV2 is returned as is."""
    if isinstance(cc, eraftpb.ConfChangeV2):
        return cc
    single = eraftpb.ConfChangeSingle(change_type=cc.change_type, node_id=cc.node_id)
    return eraftpb.ConfChangeV2(transition=eraftpb.Auto, changes=[single],
                                context=cc.context)


def enter_joint(cc: eraftpb.ConfChangeV2) -> tuple[bool, bool]:
    """(use joint consensus, auto_leave) for this change.

    Thesis §4.3: a change of more than one server, or an explicitly requested
    transition, goes through a joint configuration. Auto and Implicit transitions
    leave it automatically; Explicit waits for the application's empty ConfChangeV2.
    """
    if cc.transition != eraftpb.Auto or len(cc.changes) > 1:
        return True, cc.transition != eraftpb.Explicit
    return False, False


def leave_joint(cc: eraftpb.ConfChangeV2) -> bool:
    """An empty ConfChangeV2 (Auto transition, no changes) leaves the joint
    configuration; its context is ignored."""
    return cc.transition == eraftpb.Auto and len(cc.changes) == 0
