"""Leadership transfer, thesis §3.10: the leader brings the target up to date, then
sends it TimeoutNow so it campaigns at once; the transfer is aborted after an election
timeout, and proposals are refused while it runs."""
from __future__ import annotations

import pytest

from kvraft.raft import ProposalDropped, StateRole, eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network

ET = DEFAULT_ELECTION_TICK


@pytest.mark.parametrize("target", [2, 3])
def test_transfer_to_up_to_date_follower(target: int) -> None:
    # §3.10: "the prior leader sends a TimeoutNow request to the target server. This
    # request has the same effect as the target server's election timer firing."
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.node(1).transfer_leader(target)
    net.stabilize()
    assert net.leader() == target
    assert net.role(1) == StateRole.Follower
    assert net.term(target) == 2
    net.propose(target, b"b")
    net.tick(ticks=1)
    assert all(net.applied_data(i) == [b"a", b"b"] for i in net.ids())


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    # §3.10 step 2: "The prior leader transfers leadership ... only once the target
    # server's log is up to date" — TimeoutNow goes out only after it has every entry.
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, f"v{k}".encode())
    net.heal()
    seen: list[tuple[int, int]] = []

    def watch(m: eraftpb.Message) -> bool:
        if m.msg_type == eraftpb.MsgTimeoutNow:
            seen.append((net.raft(3).raft_log.last_index(), net.raft(1).raft_log.last_index()))
        return False

    net.filters.append(watch)
    net.node(1).transfer_leader(3)
    net.stabilize()
    assert seen and seen[0][0] == seen[0][1], f"TimeoutNow sent to a lagging target: {seen}"
    assert net.leader() == 3
    assert net.applied_data(3)[:5] == [f"v{k}".encode() for k in range(5)]


def test_follower_request_is_forwarded(cluster3: Network) -> None:
    cluster3.elect(1)
    cluster3.node(2).transfer_leader(2)
    cluster3.stabilize()
    assert cluster3.leader() == 2


def test_proposals_dropped_during_transfer_and_transfer_aborts() -> None:
    # §3.10: "the prior leader stops accepting new client requests" during the transfer;
    # "If the transfer does not complete within an election timeout, the prior leader
    # aborts the transfer and resumes accepting client requests."
    net = Network([1, 2, 3])
    net.elect(1)
    net.crash(3)
    net.node(1).transfer_leader(3)
    net.stabilize()
    with pytest.raises(ProposalDropped):
        net.node(1).propose(b"", b"during")
    net.tick([1, 2], ticks=ET)
    assert net.leader() == 1
    net.propose(1, b"after")
    net.tick(ticks=1)
    assert net.applied_data(2) == [b"after"]


def test_transfer_to_self_or_unknown_is_ignored(cluster3: Network) -> None:
    cluster3.elect(1)
    for target in (1, 9):
        cluster3.node(1).transfer_leader(target)
        cluster3.stabilize()
        assert cluster3.leader() == 1 and cluster3.term(1) == 1
        cluster3.propose(1, f"to-{target}".encode())  # not in a transfer: accepted
    assert cluster3.applied_data(1) == [b"to-1", b"to-9"]


def test_transfer_to_learner_is_ignored() -> None:
    # A learner cannot become leader (it is not a voter), so no transfer starts.
    net = Network([1, 2, 3], learners=[4])
    net.elect(1)
    net.node(1).transfer_leader(4)
    net.stabilize()
    assert net.leader() == 1
    net.propose(1, b"x")
    assert net.applied_data(1) == [b"x"]


def test_second_transfer_to_other_target_replaces_first() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.crash(3)
    net.node(1).transfer_leader(3)
    net.stabilize()
    net.node(1).transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2


def test_follower_without_leader_drops_transfer(cluster3: Network) -> None:
    cluster3.node(2).transfer_leader(2)
    cluster3.stabilize()
    assert cluster3.leaders() == [] and cluster3.term(2) == 0


def test_learner_ignores_timeout_now() -> None:
    # A TimeoutNow is a blessing to campaign; a learner cannot accept it.
    net = Network([1, 2, 3], learners=[4])
    net.elect(1)
    net.step(4, eraftpb.Message(msg_type=eraftpb.MsgTimeoutNow, from_=1, to=4, term=1))
    net.stabilize()
    assert net.role(4) == StateRole.Follower and net.term(4) == 1
    assert net.leader() == 1
