"""Membership changes on random sequences (hypothesis): whatever the Changer accepts
keeps every invariant, is reproduced exactly by `restore()` from its ConfState, and
respects the single-voter rule of thesis §4.1 outside joint consensus (§4.3)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft import eraftpb
from kvraft.raft.confchange import Changer, restore
from kvraft.raft.errors import ConfChangeError
from kvraft.raft.tracker import ProgressTracker

change = st.builds(
    lambda kind, node: eraftpb.ConfChangeSingle(change_type=kind, node_id=node),
    st.sampled_from([eraftpb.AddNode, eraftpb.AddLearnerNode, eraftpb.RemoveNode]),
    st.integers(min_value=1, max_value=6))

# One step: ("simple", changes) | ("enter", auto_leave, changes) | ("leave",)
step = st.one_of(
    st.tuples(st.just("simple"), st.lists(change, max_size=3)),
    st.tuples(st.just("enter"), st.booleans(), st.lists(change, max_size=4)),
    st.tuples(st.just("leave")),
)


def check_invariants(prs: ProgressTracker) -> None:
    conf = prs.conf
    members = conf.voters.ids() | conf.learners | conf.learners_next
    assert set(prs.progress) == members
    assert not conf.learners & conf.voters.ids()
    assert conf.learners_next <= conf.voters.outgoing.ids
    assert conf.voters.incoming.ids, "a configuration always has voters"
    if not conf.is_joint():
        assert not conf.learners_next and not conf.auto_leave


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=6), min_size=1, max_size=5),
       st.lists(step, max_size=12))
def test_random_changes_keep_invariants_and_restore_round_trips(initial, steps):
    prs = ProgressTracker(8)
    restore(prs, 1, eraftpb.ConfState(voters=sorted(initial)))
    for index, action in enumerate(steps, start=2):
        changer = Changer(prs)
        before = prs.conf.clone()
        try:
            if action[0] == "simple":
                cfg, changes = changer.simple(action[1])
            elif action[0] == "enter":
                cfg, changes = changer.enter_joint(action[1], action[2])
            else:
                cfg, changes = changer.leave_joint()
        except ConfChangeError:
            assert prs.conf == before, "a rejected change must leave the tracker untouched"
            continue
        if action[0] == "simple":
            # Thesis §4.1: at most one voter added or removed without joint consensus.
            assert len(before.voters.incoming.ids ^ cfg.voters.incoming.ids) <= 1
        prs.apply_conf(cfg, changes, index)
        check_invariants(prs)

        restored = ProgressTracker(8)
        restore(restored, index, prs.conf_state())
        assert restored.conf == prs.conf
        assert set(restored.progress) == set(prs.progress)
