"""A member whose data directory was replaced is refused by its peers and exits; after
`member remove` + `member add` it rejoins (issue 11, item 7).

A founding member restarted on an empty directory would bootstrap again at term 1 with
no vote and no entries: it could vote twice in a term and forget entries it had
acknowledged. Every data directory has an incarnation (META), every member publishes
its own into its member record, and a peer refuses a member presenting another one."""
from __future__ import annotations

import pytest

from kvraft.proto import kvraft_pb2 as pb

from .harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster

EXIT_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 30.0


def test_a_member_back_on_an_empty_directory_is_refused_until_removed_and_re_added(
) -> None:
    with LocalCluster.start(3) as cluster:
        leader = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(leader, b"before", b"1"))
        # Every member has published its addresses, and with them its incarnation.
        wait_until(lambda: all(m.client_address == cluster.nodes[m.id].client_address
                               for m in cluster.status(leader).members),
                   30, "every member to publish itself", cluster.all_log_tails)
        victim = next(i for i in cluster.nodes if i != leader)
        node = cluster.nodes[victim]
        cluster.kill9(victim)
        cluster.wipe(victim)
        cluster.launch(victim)  # same --initial-cluster, empty directory: bootstraps anew

        wait_until(lambda: not node.running(), EXIT_TIMEOUT_S,
                   f"member {victim} to be refused and exit", lambda: cluster.log_tail(victim))
        node.stopped_by_harness = True
        assert node.proc is not None and node.proc.returncode == 1
        expected = f"member {victim} came back with a different data directory (incarnation "
        victim_log = node.log_path.read_text()
        line = next((ln for ln in victim_log.splitlines() if expected in ln), None)
        assert line is not None, cluster.log_tail(victim)
        assert f"remove it with `kvraft member remove {victim}` and add it again" in line
        assert "Traceback" not in victim_log.split("=== start #2")[-1]
        # Whichever side spoke first, a peer logs one line naming the member: it
        # refused the member's traffic, or the member refused its heartbeats — the
        # latter once the refusal reaches the peer, which may be after the member exited.
        def a_peer_logged_it() -> bool:
            return any(expected in cluster.nodes[i].log_path.read_text()
                       for i in cluster.nodes if i != victim)

        wait_until(a_peer_logged_it, EXIT_TIMEOUT_S, "a peer to log the refusal",
                   cluster.all_log_tails)

        # The others carry on; the operator removes the member and adds it again.
        leader = cluster.wait_leader([i for i in cluster.nodes if i != victim])
        retry_unavailable(lambda: cluster.put(leader, b"while-away", b"2"))
        retry_unavailable(lambda: cluster.cluster_stub(leader).RemoveMember(
            pb.RemoveMemberRequest(id=victim), timeout=10))
        retry_unavailable(lambda: cluster.cluster_stub(leader).AddMember(pb.AddMemberRequest(
            id=victim, peer_address=node.peer_address, client_address=node.client_address),
            timeout=10))
        cluster.wipe(victim)
        cluster.launch(victim, join=True)
        cluster.wait_serving(victim)
        wait_until(lambda: cluster.get(victim, b"while-away", serializable=True) == b"2",
                   CATCH_UP_TIMEOUT_S, f"member {victim} to catch up",
                   lambda: cluster.log_tail(victim))
        assert cluster.get(victim, b"before", serializable=True) == b"1"
        retry_unavailable(lambda: cluster.put(leader, b"after", b"3"))
        assert cluster.get(victim, b"after") == b"3"  # linearizable: through the leader
        assert cluster.status(victim).role == "follower"
        cluster.check_no_crash()
