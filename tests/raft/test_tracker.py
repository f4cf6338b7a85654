"""The leader's progress table: commitment by quorum (§3.6, §4.3), votes (§3.4),
check-quorum (§6.2), and installing configurations."""

from __future__ import annotations

import pytest

from kvraft.raft import eraftpb
from kvraft.raft.confchange import restore
from kvraft.raft.quorum import JointConfig, MajorityConfig, VoteResult
from kvraft.raft.tracker import Configuration, MapChangeType, ProgressTracker


def tracker(voters=(), learners=(), outgoing=(), learners_next=(), auto_leave=False,
            next_idx: int = 1) -> ProgressTracker:
    prs = ProgressTracker(256)
    restore(prs, next_idx, eraftpb.ConfState(
        voters=voters, learners=learners, voters_outgoing=outgoing,
        learners_next=learners_next, auto_leave=auto_leave))
    return prs


def test_new_tracker_is_empty():
    prs = ProgressTracker(8)
    assert prs.progress == {} and prs.votes == {}
    assert prs.conf == Configuration()
    assert not prs.is_singleton()
    assert prs.get(1) is None
    assert prs.conf_state() == eraftpb.ConfState()


def test_max_inflight_must_be_positive():
    with pytest.raises(AssertionError):
        ProgressTracker(0)


# (voters, learners, outgoing, matched, expected committed)
COMMITTED = [
    ((1,), (), (), {1: 7}, 7),
    ((1, 2, 3), (), (), {1: 7, 2: 5, 3: 1}, 5),
    # Learners never count (thesis §4.2.1), however far ahead they are.
    ((1, 2, 3), (4, 5), (), {1: 7, 2: 1, 3: 1, 4: 9, 5: 9}, 1),
    # Joint (thesis §4.3): the minimum over both halves.
    ((1, 2, 3), (), (1, 4, 5), {1: 9, 2: 9, 3: 9, 4: 3, 5: 2}, 3),
]


@pytest.mark.parametrize(("voters", "learners", "outgoing", "matched", "expected"), COMMITTED)
def test_maximal_committed_index(voters, learners, outgoing, matched, expected):
    prs = tracker(voters, learners, outgoing)
    for peer_id, index in matched.items():
        prs.get(peer_id).matched = index
    assert prs.maximal_committed_index() == expected


def test_maximal_committed_index_of_empty_config_is_unbounded():
    # The caller clamps this with the log's last index and the term check.
    import sys
    assert ProgressTracker(1).maximal_committed_index() == sys.maxsize


def test_singleton():
    assert tracker((1,)).is_singleton()
    assert tracker((1,), learners=(2,)).is_singleton()
    assert not tracker((1, 2)).is_singleton()
    assert not tracker((1,), outgoing=(2,)).is_singleton()


def test_votes_first_answer_counts_and_tally():
    """Thesis §3.4: a server votes at most once per term; only the first answer counts."""
    prs = tracker((1, 2, 3, 4, 5), learners=(6,))
    prs.record_vote(1, True)
    prs.record_vote(1, False)          # a duplicate never flips the vote
    prs.record_vote(6, True)           # learners do not vote
    prs.record_vote(9, True)           # nor do strangers
    assert prs.tally_votes() == (1, 0, VoteResult.Pending)
    prs.record_vote(2, False)
    prs.record_vote(3, False)
    assert prs.tally_votes() == (1, 2, VoteResult.Pending)
    prs.record_vote(4, False)
    assert prs.tally_votes() == (1, 3, VoteResult.Lost)
    prs.reset_votes()
    assert prs.votes == {}
    for peer_id in (1, 2, 3):
        prs.record_vote(peer_id, True)
    assert prs.tally_votes() == (3, 0, VoteResult.Won)
    assert prs.vote_result(prs.votes) is VoteResult.Won


def test_tally_votes_joint_needs_both_halves():
    prs = tracker((1, 2, 3), outgoing=(4, 5, 6))
    for peer_id in (1, 2, 3):
        prs.record_vote(peer_id, True)
    assert prs.tally_votes() == (3, 0, VoteResult.Pending)
    prs.record_vote(4, True)
    prs.record_vote(5, True)
    assert prs.tally_votes() == (5, 0, VoteResult.Won)


def test_quorum_recently_active_resets_flags():
    """Thesis §6.2: the leader steps down unless a quorum was heard from in the last
    election timeout; each check starts a new interval."""
    prs = tracker((1, 2, 3, 4, 5), learners=(6,))
    for pr in prs.progress.values():
        pr.recent_active = False
    prs.get(2).recent_active = True
    prs.get(6).recent_active = True      # a learner does not make a quorum
    assert not prs.quorum_recently_active(1)
    assert prs.get(1).recent_active        # the leader always counts itself
    assert not prs.get(2).recent_active and not prs.get(6).recent_active
    prs.get(2).recent_active = True
    prs.get(3).recent_active = True
    assert prs.quorum_recently_active(1)
    # Nobody was heard from since: the next check fails.
    assert not prs.quorum_recently_active(1)


def test_has_quorum():
    prs = tracker((1, 2, 3), outgoing=(3, 4, 5))
    assert not prs.has_quorum({1, 2})
    assert prs.has_quorum({1, 2, 4, 5})
    assert prs.has_quorum({2, 3, 4})
    assert not prs.has_quorum(set())


def test_ids_and_conf_state():
    prs = tracker((1, 2, 3), learners=(5,), outgoing=(1, 2, 4), learners_next=(4,),
                  auto_leave=True)
    assert prs.voter_ids() == {1, 2, 3, 4}
    assert prs.learner_ids() == {4, 5}
    assert prs.conf_state() == eraftpb.ConfState(
        voters=[1, 2, 3], learners=[5], voters_outgoing=[1, 2, 4], learners_next=[4],
        auto_leave=True)
    assert "learners_next=[4]" in repr(prs) and "autoleave" in repr(prs)


def test_apply_conf_adds_and_removes_progress():
    prs = tracker((1, 2), next_idx=5)
    prs.get(1).matched = 4
    conf = Configuration([1, 3])
    prs.apply_conf(conf, [(3, MapChangeType.Add), (2, MapChangeType.Remove)], 10)
    assert prs.conf is conf
    assert sorted(prs.progress) == [1, 3]
    assert prs.get(1).matched == 4                  # untouched peers keep their progress
    new = prs.get(3)
    assert (new.next_idx, new.matched, new.recent_active) == (10, 0, True)
    assert new.ins.cap == 256


def test_apply_conf_asserts_table_matches_configuration():
    prs = tracker((1, 2))
    with pytest.raises(AssertionError, match="does not match"):
        prs.apply_conf(Configuration([1, 2, 3]), [], 1)


def test_configuration_value_semantics():
    conf = Configuration(JointConfig(MajorityConfig([1, 2]), MajorityConfig([1])),
                         learners=[5], learners_next=[], auto_leave=True)
    clone = conf.clone()
    assert clone == conf and clone is not conf
    clone.learners.add(6)
    clone.voters.incoming.ids.add(9)
    assert conf.learners == {5} and 9 not in conf.voters.incoming
    assert conf.is_joint() and not Configuration([1]).is_joint()
    assert conf.__eq__(1) is NotImplemented
    assert repr(Configuration([2, 1])) == "Configuration(voters=JointConfig([1, 2]))"
