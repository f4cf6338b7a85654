"""Quorum arithmetic: committed index and vote results of majority (thesis §3.6, §3.4)
and joint (thesis §4.3) configurations, as tables."""

from __future__ import annotations

import sys

import pytest

from kvraft.raft.quorum import JointConfig, MajorityConfig, VoteResult

MAX = sys.maxsize

# (voters, acked match indexes (absent = unknown), expected committed index)
MAJORITY_COMMITTED = [
    # The empty configuration commits everything (the joint rule relies on it).
    ((), {}, MAX),
    # One voter: whatever it has.
    ((1,), {}, 0),
    ((1,), {1: 12}, 12),
    # Two voters: both are needed, so the smaller.
    ((1, 2), {1: 12, 2: 5}, 5),
    ((1, 2), {1: 12}, 0),
    # Three voters: the second largest.
    ((1, 2, 3), {1: 12, 2: 5, 3: 7}, 7),
    ((1, 2, 3), {1: 12, 2: 12, 3: 1}, 12),
    ((1, 2, 3), {1: 12}, 0),
    ((1, 2, 3), {1: 12, 2: 3}, 3),
    # Four voters: three needed.
    ((1, 2, 3, 4), {1: 10, 2: 9, 3: 8, 4: 7}, 8),
    ((1, 2, 3, 4), {1: 10, 2: 10}, 0),
    # Five voters: three needed.
    ((1, 2, 3, 4, 5), {1: 10, 2: 9, 3: 8, 4: 7, 5: 6}, 8),
    ((1, 2, 3, 4, 5), {1: 10, 2: 9, 3: 8}, 8),
    ((1, 2, 3, 4, 5), {1: 10, 2: 9}, 0),
    # Acks of non-voters (learners) never count (§4.2.1).
    ((1, 2, 3), {1: 10, 7: 10, 8: 10}, 0),
]


@pytest.mark.parametrize(("voters", "acked", "expected"), MAJORITY_COMMITTED)
def test_majority_committed_index(voters, acked, expected):
    """Thesis §3.6: an entry is committed once a majority of the servers store it."""
    assert MajorityConfig(voters).committed_index(acked.get) == expected


# (voters, votes, expected)
MAJORITY_VOTES = [
    ((), {}, VoteResult.Won),
    ((1,), {}, VoteResult.Pending),
    ((1,), {1: True}, VoteResult.Won),
    ((1,), {1: False}, VoteResult.Lost),
    ((1, 2), {1: True}, VoteResult.Pending),
    ((1, 2), {1: True, 2: True}, VoteResult.Won),
    ((1, 2), {1: True, 2: False}, VoteResult.Lost),
    ((1, 2, 3), {1: True}, VoteResult.Pending),
    ((1, 2, 3), {1: True, 2: False}, VoteResult.Pending),
    ((1, 2, 3), {1: True, 2: True}, VoteResult.Won),
    ((1, 2, 3), {1: False, 2: False}, VoteResult.Lost),
    ((1, 2, 3), {1: True, 2: False, 3: False}, VoteResult.Lost),
    ((1, 2, 3, 4), {1: True, 2: True}, VoteResult.Pending),
    ((1, 2, 3, 4), {1: True, 2: True, 3: True}, VoteResult.Won),
    ((1, 2, 3, 4), {1: False, 2: False}, VoteResult.Lost),
    ((1, 2, 3, 4, 5), {1: True, 2: True, 3: False, 4: False}, VoteResult.Pending),
    ((1, 2, 3, 4, 5), {1: False, 2: False, 3: False}, VoteResult.Lost),
    # Votes of non-members do not count.
    ((1, 2, 3), {1: True, 4: True, 5: True}, VoteResult.Pending),
]


@pytest.mark.parametrize(("voters", "votes", "expected"), MAJORITY_VOTES)
def test_majority_vote_result(voters, votes, expected):
    """Thesis §3.4: a candidate wins with votes from a majority of the servers."""
    assert MajorityConfig(voters).vote_result(votes) is expected


# (incoming, outgoing, acked, expected)
JOINT_COMMITTED = [
    # Outgoing empty: the incoming majority alone.
    ((1, 2, 3), (), {1: 10, 2: 8, 3: 5}, 8),
    # Both empty.
    ((), (), {}, MAX),
    # Incoming empty (only possible transiently): the outgoing half decides.
    ((), (1, 2, 3), {1: 10, 2: 8, 3: 5}, 8),
    # Thesis §4.3: the minimum of both halves' committed indexes.
    ((1, 2, 3), (4, 5, 6), {1: 10, 2: 10, 3: 10, 4: 3, 5: 2, 6: 1}, 2),
    ((1, 2, 3), (1, 2, 4), {1: 10, 2: 7, 3: 9, 4: 1}, 7),
    ((1, 2, 3), (3, 4, 5), {1: 10, 2: 9, 3: 8, 4: 7, 5: 6}, 7),
    ((1,), (2,), {1: 5}, 0),
    ((1,), (1,), {1: 5}, 5),
]


@pytest.mark.parametrize(("incoming", "outgoing", "acked", "expected"), JOINT_COMMITTED)
def test_joint_committed_index(incoming, outgoing, acked, expected):
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    assert joint.committed_index(acked.get) == expected


P, L, W = VoteResult.Pending, VoteResult.Lost, VoteResult.Won

# (incoming, outgoing, votes, expected)
JOINT_VOTES = [
    ((1, 2, 3), (), {1: True, 2: True}, W),
    ((), (), {}, W),
    # Won in one half only: still pending.
    ((1, 2, 3), (4, 5, 6), {1: True, 2: True}, P),
    ((1, 2, 3), (4, 5, 6), {1: True, 2: True, 4: True, 5: True}, W),
    # Lost in either half loses, whatever the other half says.
    ((1, 2, 3), (4, 5, 6), {1: True, 2: True, 4: False, 5: False}, L),
    ((1, 2, 3), (4, 5, 6), {1: False, 2: False}, L),
    ((1, 2, 3), (1, 2, 4), {1: True, 2: True}, W),
    ((1, 2, 3), (1, 4, 5), {1: True, 2: True, 4: False, 5: False}, L),
    ((1, 2, 3), (1, 4, 5), {1: True, 2: True, 4: True}, W),
    ((1, 2, 3), (1, 4, 5), {1: True}, P),
]


@pytest.mark.parametrize(("incoming", "outgoing", "votes", "expected"), JOINT_VOTES)
def test_joint_vote_result(incoming, outgoing, votes, expected):
    """Thesis §4.3: elections in C_old,new need separate majorities of both halves."""
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    assert joint.vote_result(votes) is expected


def test_joint_membership_queries():
    joint = JointConfig(MajorityConfig([1, 2]), MajorityConfig([2, 3]))
    assert joint.ids() == {1, 2, 3}
    assert joint.contains(3) and joint.contains(1) and not joint.contains(4)
    assert joint.is_joint()
    assert not joint.is_singleton()
    assert repr(joint) == "JointConfig([1, 2]&&[2, 3])"
    clone = joint.clone()
    assert clone == joint
    clone.incoming.ids.add(9)
    assert clone != joint and 9 not in joint.incoming
    assert joint.__eq__(object()) is NotImplemented


@pytest.mark.parametrize(("incoming", "outgoing", "singleton"), [
    ((1,), (), True),
    ((1, 2), (), False),
    ((1,), (1,), False),
    ((), (), False),
])
def test_joint_is_singleton(incoming, outgoing, singleton):
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    assert joint.is_singleton() is singleton


def test_joint_default_outgoing_is_empty():
    joint = JointConfig(MajorityConfig([1, 2, 3]))
    assert not joint.is_joint() and joint.outgoing.ids == set()
    assert repr(joint) == "JointConfig([1, 2, 3])"


def test_majority_container_protocol():
    majority = MajorityConfig([3, 1, 2])
    assert len(majority) == 3
    assert 2 in majority and 4 not in majority
    assert sorted(majority) == [1, 2, 3]
    assert majority.quorum() == 2
    assert MajorityConfig([1, 2, 3, 4]).quorum() == 3
    assert repr(majority) == "MajorityConfig([1, 2, 3])"
    assert majority == MajorityConfig([1, 2, 3]) and majority != MajorityConfig([1])
    assert majority.__eq__("x") is NotImplemented
    clone = majority.clone()
    clone.ids.discard(1)
    assert 1 in majority
