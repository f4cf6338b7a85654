"""Membership changes: single-server changes (thesis §4.1), joint consensus (§4.3),
learners (§4.2.1), restoring a ConfState, and the ConfChangeV2 helpers.

Changes are written compactly: "v2" adds voter 2, "l3" adds learner 3 (or demotes
voter 3), "r1" removes 1.
"""

from __future__ import annotations

import pytest

from kvraft.raft import eraftpb
from kvraft.raft.confchange import (
    Changer,
    MapChangeType,
    enter_joint,
    leave_joint,
    restore,
    to_conf_change_v2,
)
from kvraft.raft.errors import ConfChangeError
from kvraft.raft.tracker import Configuration, ProgressTracker

ADD, REMOVE = MapChangeType.Add, MapChangeType.Remove
KIND = {"v": eraftpb.AddNode, "l": eraftpb.AddLearnerNode, "r": eraftpb.RemoveNode}


def ccs(text: str) -> list[eraftpb.ConfChangeSingle]:
    return [eraftpb.ConfChangeSingle(change_type=KIND[word[0]], node_id=int(word[1:]))
            for word in text.split()]


def cs(voters=(), learners=(), outgoing=(), learners_next=(), auto_leave=False):
    return eraftpb.ConfState(voters=voters, learners=learners, voters_outgoing=outgoing,
                             learners_next=learners_next, auto_leave=auto_leave)


def tracker_of(state: eraftpb.ConfState, next_idx: int = 1) -> ProgressTracker:
    prs = ProgressTracker(8)
    restore(prs, next_idx, state)
    return prs


def apply(prs: ProgressTracker, result, next_idx: int = 1) -> None:
    cfg, changes = result
    prs.apply_conf(cfg, changes, next_idx)


# (start, changes, expected ConfState, expected MapChange)
SIMPLE_OK = [
    (cs(), "v1", cs([1]), [(1, ADD)]),
    (cs([1]), "v2", cs([1, 2]), [(2, ADD)]),
    (cs([1, 2]), "r2", cs([1]), [(2, REMOVE)]),
    (cs([1]), "l2", cs([1], [2]), [(2, ADD)]),
    # Learner changes do not count against the one-voter limit.
    (cs([1]), "v2 l3 l4", cs([1, 2], [3, 4]), [(2, ADD), (3, ADD), (4, ADD)]),
    (cs([1], [2, 3]), "r2 r3", cs([1]), [(2, REMOVE), (3, REMOVE)]),
    # Promoting a learner keeps its progress (§4.2.1: it is caught up).
    (cs([1], [2]), "v2", cs([1, 2]), []),
    # Demoting a voter to learner keeps its progress too.
    (cs([1, 2]), "l2", cs([1], [2]), []),
    # Adding an existing member again changes nothing.
    (cs([1, 2]), "v2", cs([1, 2]), []),
    (cs([1], [2]), "l2", cs([1], [2]), []),
    # Removing a stranger changes nothing.
    (cs([1]), "r9", cs([1]), []),
    # Add then remove in one change: net nothing.
    (cs([1]), "v2 r2", cs([1]), []),
    # Node id 0 is a no-op.
    (cs([1]), "v0", cs([1]), []),
    # Swapping a voter for a learner: one voter changed.
    (cs([1, 2]), "r2 l3", cs([1], [3]), [(2, REMOVE), (3, ADD)]),
]


@pytest.mark.parametrize(("start", "changes", "expected", "map_change"), SIMPLE_OK)
def test_simple(start, changes, expected, map_change):
    prs = tracker_of(start)
    before = prs.conf.clone()
    cfg, got_changes = Changer(prs).simple(ccs(changes))
    assert prs.conf == before, "the Changer must not mutate the tracker"
    assert cfg.to_conf_state() == expected
    assert got_changes == map_change
    prs.apply_conf(cfg, got_changes, 1)
    assert prs.conf_state() == expected


# (start, changes, error message fragment)
SIMPLE_REJECTED = [
    # Thesis §4.1: more than one voter at a time needs joint consensus.
    (cs([1]), "v2 v3", "more than one voter"),
    (cs([1, 2, 3]), "r2 r3", "more than one voter"),
    (cs([1, 2]), "r2 v3", "more than one voter"),
    (cs([1], [2]), "v2 v3", "more than one voter"),
    # A configuration without voters can never decide anything.
    (cs([1]), "r1", "removed all voters"),
    (cs([1]), "l1", "removed all voters"),
    (cs(), "l1", "removed all voters"),
    # Simple changes are not allowed while joint.
    (cs([1, 2], outgoing=[1]), "v3", "joint"),
]


@pytest.mark.parametrize(("start", "changes", "error"), SIMPLE_REJECTED)
def test_simple_rejected(start, changes, error):
    prs = tracker_of(start)
    with pytest.raises(ConfChangeError, match=error):
        Changer(prs).simple(ccs(changes))


def test_unknown_change_type_rejected():
    prs = tracker_of(cs([1]))
    bad = eraftpb.ConfChangeSingle(change_type=7, node_id=2)
    with pytest.raises(ConfChangeError, match="unknown conf change type"):
        Changer(prs).simple([bad])


# (start, auto_leave, changes, expected joint ConfState, MapChange, after leave, MapChange)
JOINT = [
    # Replace two of three voters at once (thesis §4.3).
    (cs([1, 2, 3]), False, "r2 r3 v4 v5",
     cs([1, 4, 5], outgoing=[1, 2, 3]), [(4, ADD), (5, ADD)],
     cs([1, 4, 5]), [(2, REMOVE), (3, REMOVE)]),
    (cs([1]), True, "v2 v3",
     cs([1, 2, 3], outgoing=[1], auto_leave=True), [(2, ADD), (3, ADD)],
     cs([1, 2, 3]), []),
    # Demoting a voter while joint: it still votes in C_old, so learners_next.
    (cs([1, 2, 3]), False, "l3",
     cs([1, 2], outgoing=[1, 2, 3], learners_next=[3]), [],
     cs([1, 2], [3]), []),
    (cs([1, 2, 3], [4]), True, "l3 v4 r2",
     cs([1, 4], [], outgoing=[1, 2, 3], learners_next=[3], auto_leave=True), [],
     cs([1, 4], [3]), [(2, REMOVE)]),
    # A new learner (never a voter) becomes a learner right away.
    (cs([1, 2]), False, "l5 v3",
     cs([1, 2, 3], [5], outgoing=[1, 2]), [(5, ADD), (3, ADD)],
     cs([1, 2, 3], [5]), []),
    # Remove then re-add a voter during joint: stays a voter, progress kept.
    (cs([1, 2]), False, "r2 v2 v3",
     cs([1, 2, 3], outgoing=[1, 2]), [(3, ADD)],
     cs([1, 2, 3]), []),
    # An empty joint change is allowed (an explicit no-op transition).
    (cs([1, 2]), False, "",
     cs([1, 2], outgoing=[1, 2]), [],
     cs([1, 2]), []),
]


@pytest.mark.parametrize(
    ("start", "auto_leave", "changes", "joint", "enter_map", "left", "leave_map"), JOINT)
def test_enter_and_leave_joint(start, auto_leave, changes, joint, enter_map, left, leave_map):
    prs = tracker_of(start)
    cfg, got = Changer(prs).enter_joint(auto_leave, ccs(changes))
    assert cfg.to_conf_state() == joint
    assert cfg.auto_leave is auto_leave
    assert got == enter_map
    prs.apply_conf(cfg, got, 1)

    cfg, got = Changer(prs).leave_joint()
    assert cfg.to_conf_state() == left
    assert not cfg.auto_leave and not cfg.learners_next
    assert got == leave_map
    prs.apply_conf(cfg, got, 1)
    assert sorted(prs.progress) == sorted(set(left.voters) | set(left.learners))


def test_progress_of_outgoing_voter_kept_until_leave():
    """Thesis §4.3: C_old voters keep counting towards commitment while joint."""
    prs = tracker_of(cs([1, 2, 3]))
    prs.get(3).matched = 42
    apply(prs, Changer(prs).enter_joint(False, ccs("r3 v4")))
    assert prs.get(3).matched == 42
    assert prs.conf.voters.outgoing.ids == {1, 2, 3}
    apply(prs, Changer(prs).leave_joint())
    assert prs.get(3) is None


def test_demoted_learner_progress_survives_joint():
    prs = tracker_of(cs([1, 2, 3]))
    prs.get(3).matched = 42
    apply(prs, Changer(prs).enter_joint(True, ccs("l3")))
    apply(prs, Changer(prs).leave_joint())
    assert prs.conf.learners == {3}
    assert prs.get(3).matched == 42


# (start, auto_leave, changes, error fragment)
JOINT_REJECTED = [
    # Entering joint twice.
    (cs([1, 2], outgoing=[1]), False, "v3", "already joint"),
    # Joint from nothing.
    (cs(), False, "v1", "zero-voter"),
    # Removing every incoming voter.
    (cs([1, 2]), False, "r1 r2", "removed all voters"),
    (cs([1, 2]), True, "l1 l2", "removed all voters"),
]


@pytest.mark.parametrize(("start", "auto_leave", "changes", "error"), JOINT_REJECTED)
def test_enter_joint_rejected(start, auto_leave, changes, error):
    prs = tracker_of(start)
    with pytest.raises(ConfChangeError, match=error):
        Changer(prs).enter_joint(auto_leave, ccs(changes))


@pytest.mark.parametrize("start", [cs(), cs([1]), cs([1, 2], [3])])
def test_leave_joint_when_not_joint_rejected(start):
    prs = tracker_of(start)
    with pytest.raises(ConfChangeError, match="non-joint"):
        Changer(prs).leave_joint()


# Configurations that break an invariant, installed behind the Changer's back.
BROKEN = [
    (Configuration([1, 2], learners=[2]), {1, 2}, "both a learner and a voter"),
    (Configuration([1], learners_next=[2]), {1, 2}, "learners_next"),
    (Configuration([1], auto_leave=True), {1}, "auto_leave"),
    (Configuration([1, 2]), {1}, "no progress for member 2"),
]


@pytest.mark.parametrize(("conf", "tracked", "error"), BROKEN)
def test_invariants_checked_before_any_change(conf, tracked, error):
    prs = ProgressTracker(8)
    prs.conf = conf
    for peer_id in tracked:
        prs.progress[peer_id] = None  # only the keys matter to the Changer
    with pytest.raises(ConfChangeError, match=error):
        Changer(prs).simple(ccs("v7"))


def test_learners_next_must_be_outgoing_voter():
    from kvraft.raft.quorum import JointConfig, MajorityConfig
    prs = ProgressTracker(8)
    prs.conf = Configuration(JointConfig(MajorityConfig([1]), MajorityConfig([1])),
                             learners_next=[2])
    prs.progress = {1: None, 2: None}
    with pytest.raises(ConfChangeError, match="not an outgoing voter"):
        Changer(prs).leave_joint()


# Every ConfState shape restore() must reproduce exactly.
RESTORE = [
    cs(),
    cs([1]),
    cs([1, 2, 3]),
    cs([1, 2, 3], [4, 5]),
    cs([1], [2]),
    cs([1, 2, 3], outgoing=[1, 2, 3]),
    cs([1, 2, 3], outgoing=[4, 5, 6]),
    cs([1, 2, 3], [5], outgoing=[1, 2, 4, 6], learners_next=[4]),
    cs([1, 2, 3], [5], outgoing=[1, 2, 4, 6], learners_next=[4], auto_leave=True),
    cs([2], [], outgoing=[1], auto_leave=True),
    cs([1, 2], [5], outgoing=[1, 2, 3, 4], learners_next=[3, 4]),
]


@pytest.mark.parametrize("state", RESTORE)
def test_restore_reproduces_conf_state(state):
    prs = tracker_of(state, next_idx=17)
    assert prs.conf_state() == state
    members = (set(state.voters) | set(state.learners) | set(state.voters_outgoing)
               | set(state.learners_next))
    assert set(prs.progress) == members
    for pr in prs.progress.values():
        assert pr.next_idx == 17 and pr.matched == 0


@pytest.mark.parametrize("state", [
    cs([], [1]),                       # learners without voters
    cs([], [], outgoing=[1]),          # joint with an empty incoming half
    cs([1], [1]),                      # a voter that is also a learner: becomes learner,
                                       # leaving no voters
])
def test_restore_rejects_invalid_conf_state(state):
    with pytest.raises(ConfChangeError):
        tracker_of(state)


def test_restore_needs_an_empty_tracker():
    prs = tracker_of(cs([1]))
    with pytest.raises(AssertionError):
        restore(prs, 1, cs([1]))


def test_to_conf_change_v2_wraps_a_single_change():
    cc = eraftpb.ConfChange(change_type=eraftpb.AddLearnerNode, node_id=4, context=b"ctx",
                            id=9)
    v2 = to_conf_change_v2(cc)
    assert v2.transition == eraftpb.Auto
    assert list(v2.changes) == ccs("l4")
    assert v2.context == b"ctx"
    assert to_conf_change_v2(v2) is v2


# (transition, changes, (use joint, auto_leave), is leave)
V2_HELPERS = [
    (eraftpb.Auto, "", (False, False), True),
    (eraftpb.Auto, "v2", (False, False), False),
    (eraftpb.Auto, "v2 v3", (True, True), False),
    (eraftpb.Implicit, "v2", (True, True), False),
    (eraftpb.Implicit, "", (True, True), False),
    (eraftpb.Explicit, "v2", (True, False), False),
    (eraftpb.Explicit, "v2 l3", (True, False), False),
]


@pytest.mark.parametrize(("transition", "changes", "joint", "leave"), V2_HELPERS)
def test_conf_change_v2_helpers(transition, changes, joint, leave):
    """Thesis §4.3: several changes, or an explicit transition, go through joint
    consensus; Auto/Implicit leave it on their own; an empty V2 means leave."""
    cc = eraftpb.ConfChangeV2(transition=transition, changes=ccs(changes), context=b"x")
    assert enter_joint(cc) == joint
    assert leave_joint(cc) is leave
