"""etcdctl 3.4's `member` commands against a real 3-node kvraft cluster (SPEC §6, etcd's
Cluster service), run as an operator would: list the members, add a learner with the
id the cluster picks, start it with `kvraft serve --id 0x<that id> --join`, promote it
once it caught up, remove it; and etcd's errors where a change cannot apply."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator

import grpc
import pytest

from kvraft import procs
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2 as pb
from tests.cluster.harness import LocalCluster, free_port, retry_unavailable, wait_until

from .conftest import MEMBERS_TIMEOUT_S, etcdctl, failed, ok

pytestmark = pytest.mark.cluster

CATCH_UP_TIMEOUT_S = 60
FOUNDERS = (1, 2, 3)   # the members LocalCluster.start(3) makes


def forget(cluster: LocalCluster, member_id: int) -> None:
    """After a test that added `member_id`: remove it if it is still a member, stop its
    process if one runs, and forget it — a failed test leaves the shared cluster as it
    found it."""
    leader = cluster.wait_leader(FOUNDERS)
    if member_id in {m.id for m in cluster.status(leader).members}:
        retry_unavailable(lambda: cluster.cluster_stub(leader).RemoveMember(
            pb.RemoveMemberRequest(id=member_id), timeout=10))
    node = cluster.nodes.pop(member_id, None)
    if node is not None:
        node.close_channel()
        node.kill()


@pytest.fixture(autouse=True)
def founders_only(etcd_cluster3: LocalCluster) -> Iterator[None]:
    """Each test leaves the shared cluster to its founding members, whatever it added
    and however it ended."""
    yield
    cluster = etcd_cluster3
    leader = cluster.wait_leader(FOUNDERS)
    for m in cluster.status(leader).members:
        if m.id not in FOUNDERS:
            forget(cluster, m.id)
    for member_id in [i for i in cluster.nodes if i not in FOUNDERS]:
        forget(cluster, member_id)


def member_list(cluster: LocalCluster, node_id: int) -> dict[int, dict]:
    out = json.loads(ok(etcdctl(cluster.nodes[node_id].client_address,
                                "member", "list", "-w", "json")))
    return {m["ID"]: m for m in out["members"]}


def test_member_list_names_urls_and_ids(etcd_cluster3: LocalCluster) -> None:
    """etcdctl's JSON carries every member's id, name and URLs; its table says each
    member started and is no learner."""
    cluster = etcd_cluster3
    out = json.loads(ok(etcdctl(cluster.nodes[2].client_address, "member", "list",
                                "-w", "json")))
    assert out["header"]["member_id"] == 2
    assert out["header"]["cluster_id"] != 0
    assert out["header"]["raft_term"] >= 1
    assert out["members"] == [
        {"ID": i, "name": f"kvraft-{i}", "peerURLs": [f"http://{n.peer_address}"],
         "clientURLs": [f"http://{n.client_address}"]}
        for i, n in sorted(cluster.nodes.items())]
    table = ok(etcdctl(cluster.endpoints(), "member", "list")).splitlines()
    assert table == [f"{i:x}, started, kvraft-{i}, http://{n.peer_address}, "
                     f"http://{n.client_address}, false"
                     for i, n in sorted(cluster.nodes.items())]


def test_add_a_learner_start_it_by_hex_id_promote_and_remove(
        etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    follower = next(i for i in sorted(cluster.nodes) if i != leader)
    for i in range(30):
        retry_unavailable(lambda i=i: cluster.put(leader, b"before/%02d" % i, b"%d" % i))
    peer = f"127.0.0.1:{free_port()}"

    # member add: the cluster picks the id; etcdctl prints it in hex.
    added = ok(etcdctl(cluster.nodes[follower].client_address, "member", "add", "newbie",
                       f"--peer-urls=http://{peer}", "--learner"))
    # etcdctl prints ids with %16x: a smaller id is padded with spaces.
    match = re.match(r"Member ([0-9a-f ]{16}) added to cluster ([0-9a-f ]{16})\n", added)
    assert match, added
    new_id, cluster_hex = int(match.group(1), 16), match.group(2)
    try:
        assert new_id not in cluster.nodes and 0 < new_id < 1 << 64
        # etcdctl's environment for the new member: the members by id, the new one named.
        peers = {i: (f"kvraft-{i}", n.peer_address) for i, n in cluster.nodes.items()}
        peers[new_id] = ("newbie", peer)
        initial = ",".join(f"{name}=http://{address}"
                           for _, (name, address) in sorted(peers.items()))
        assert 'ETCD_NAME="newbie"\n' in added
        assert f'ETCD_INITIAL_CLUSTER="{initial}"\n' in added
        assert 'ETCD_INITIAL_CLUSTER_STATE="existing"\n' in added

        # Not started yet: no name, no client URL, a learner ("unstarted" in the table).
        # (From the member that answered: it applied the change before it did.)
        listed = member_list(cluster, follower)
        assert listed[new_id] == {"ID": new_id, "peerURLs": [f"http://{peer}"],
                                  "isLearner": True}
        table = ok(etcdctl(cluster.nodes[follower].client_address, "member", "list"))
        assert f"{new_id:x}, unstarted, , http://{peer}, , true\n" in table

        # A learner that has nothing of the log is not in sync: the leader refuses, and a
        # follower forwards the promotion to the leader, which refuses the same way.
        for endpoint in (cluster.nodes[leader].client_address,
                         cluster.nodes[follower].client_address):
            refused = failed(etcdctl(endpoint, "member", "promote", f"{new_id:x}"))
            assert "etcdserver: can only promote a learner member which is in sync with " \
                   "leader" in refused

        # The operator starts it with the id etcdctl printed, in 0x-hex.
        node = cluster.define(new_id)
        node.peer_address = peer
        args = [*procs.serve_command(), "--id", f"0x{new_id:x}", "--join",
                "--data-dir", str(node.data_dir), "--listen", node.client_address,
                "--peer-listen", peer, "--metrics-listen", node.metrics_address]
        node.start(args, procs.child_env({"KVRAFT_TICK_INTERVAL": str(cluster.tick_s)}))
        cluster.wait_serving(new_id)
        wait_until(lambda: cluster.get(new_id, b"before/29", serializable=True) == b"29",
                   CATCH_UP_TIMEOUT_S, "the learner to catch up", lambda: cluster.log_tail(new_id))
        assert cluster.status(new_id).header.member_id == new_id
        wait_until(lambda: member_list(cluster, leader).get(new_id, {}).get("name") ==
                   f"kvraft-{new_id}", MEMBERS_TIMEOUT_S, "the learner to publish its address",
                   lambda: cluster.log_tail(new_id))

        # Its Status says it is a learner that follows the cluster's leader.
        (status,) = json.loads(ok(etcdctl(node.client_address, "endpoint", "status",
                                          "-w", "json")))
        assert (status["Status"]["header"]["member_id"], status["Status"]["isLearner"],
                status["Status"]["leader"]) == (new_id, True, cluster.wait_leader())

        promoted = ok(etcdctl(cluster.nodes[follower].client_address, "member", "promote",
                              f"{new_id:x}"))
        assert promoted == f"Member {new_id:16x} promoted in cluster {cluster_hex}\n"
        listed = member_list(cluster, leader)
        assert listed[new_id] == {"ID": new_id, "name": f"kvraft-{new_id}",
                                  "peerURLs": [f"http://{peer}"],
                                  "clientURLs": [f"http://{node.client_address}"]}
        assert cluster.status(new_id).role != "learner"
        refused = failed(etcdctl(cluster.endpoints(), "member", "promote", f"{new_id:x}"))
        assert "etcdserver: can only promote a learner member\n" in refused

        # A voter of four now: it takes part in commits.
        retry_unavailable(lambda: cluster.put(leader, b"after-promote", b"4"))
        assert cluster.get(new_id, b"after-promote") == b"4"

        removed = ok(etcdctl(cluster.endpoints(), "member", "remove", f"{new_id:x}"))
        assert removed == f"Member {new_id:16x} removed from cluster {cluster_hex}\n"
        founders = sorted(cluster.nodes.keys() - {new_id})
        wait_until(lambda: all(sorted(member_list(cluster, i)) == founders for i in founders),
                   MEMBERS_TIMEOUT_S, "every founding member to apply the removal")
        cluster.terminate(new_id)
        del cluster.nodes[new_id]
        cluster.wait_leader()
    finally:
        forget(cluster, new_id)


def test_member_changes_that_cannot_apply_get_etcds_errors(
        etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    endpoints = cluster.endpoints()
    taken = cluster.nodes[1].peer_address
    assert "etcdserver: Peer URLs already exists" in failed(
        etcdctl(endpoints, "member", "add", "dup", f"--peer-urls=http://{taken}"))
    # etcdctl checks a URL's form itself; etcd's server checks it again.
    assert 'URL address does not have the form "host:port"' in failed(
        etcdctl(endpoints, "member", "add", "bad", "--peer-urls=http://127.0.0.1"))
    stub = cluster.nodes[1].stub(etcdpb_grpc.ClusterStub)
    for urls in (["http://127.0.0.1"], ["ftp://127.0.0.1:1"], ["http://127.0.0.1:1/path"], []):
        with pytest.raises(grpc.RpcError) as refused:
            stub.MemberAdd(etcdpb.MemberAddRequest(peerURLs=urls), timeout=10)
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"), urls
    with pytest.raises(grpc.RpcError) as refused:
        stub.MemberAdd(etcdpb.MemberAddRequest(
            peerURLs=[f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]),
            timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one peer URL" in refused.value.details()
    absent = 0xDEADBEEF
    assert "etcdserver: member not found" in failed(
        etcdctl(endpoints, "member", "remove", f"{absent:x}"))
    assert "etcdserver: member not found" in failed(
        etcdctl(endpoints, "member", "promote", f"{absent:x}"))
    assert "etcdserver: member not found" in failed(
        etcdctl(endpoints, "member", "update", f"{absent:x}",
                f"--peer-urls=http://127.0.0.1:{free_port()}"))
    # Nothing changed.
    assert sorted(member_list(cluster, 1)) == sorted(cluster.nodes)


def test_member_update_moves_an_unstarted_members_peer_address(
        etcd_cluster3: LocalCluster) -> None:
    """MemberUpdate changes the peer address every member dials: a learner added at one
    port and updated to another catches up when it listens on the new one."""
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    old_peer, new_peer = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    out = json.loads(ok(etcdctl(cluster.nodes[leader].client_address, "member", "add",
                                "moving", f"--peer-urls=http://{old_peer}", "--learner",
                                "-w", "json")))
    new_id = out["member"]["ID"]
    try:
        assert out["member"] == {"ID": new_id, "peerURLs": [f"http://{old_peer}"],
                                 "isLearner": True}
        assert new_id in {m["ID"] for m in out["members"]}
        updated = ok(etcdctl(cluster.endpoints(), "member", "update", f"{new_id:x}",
                             f"--peer-urls=http://{new_peer}"))
        cluster_id = out["header"]["cluster_id"]
        assert updated == f"Member {new_id:16x} updated in cluster {cluster_id:16x}\n"
        wait_until(lambda: all(member_list(cluster, i).get(new_id, {}).get("peerURLs") ==
                               [f"http://{new_peer}"] for i in (1, 2, 3)),
                   MEMBERS_TIMEOUT_S, "every member to learn the new peer address")

        node = cluster.define(new_id)
        node.peer_address = new_peer
        node.start([*procs.serve_command(), *procs.serve_args(
            new_id, node.data_dir, node.client_address, new_peer, join=True,
            metrics_listen=node.metrics_address)],
            procs.child_env({"KVRAFT_TICK_INTERVAL": str(cluster.tick_s)}))
        cluster.wait_serving(new_id)
        retry_unavailable(lambda: cluster.put(leader, b"moved", b"yes"))
        wait_until(lambda: cluster.get(new_id, b"moved", serializable=True) == b"yes",
                   CATCH_UP_TIMEOUT_S, "the moved learner to catch up",
                   lambda: cluster.log_tail(new_id))
        retry_unavailable(lambda: cluster.cluster_stub(leader).RemoveMember(
            pb.RemoveMemberRequest(id=new_id), timeout=10))
        cluster.terminate(new_id)
        del cluster.nodes[new_id]
    finally:
        forget(cluster, new_id)


def test_strict_reconfiguration_refuses_a_voter_that_would_lose_the_quorum(
        etcd_cluster3: LocalCluster) -> None:
    """etcd's strict reconfiguration check: a voter is added only while the voters that
    started stay a quorum of the new configuration. Three started voters admit a 4th and
    a 5th voter that never start (3 of 5 is a quorum), not a 6th (3 of 6 is not)."""
    cluster = etcd_cluster3
    endpoint = cluster.nodes[cluster.wait_leader()].client_address
    added: list[int] = []
    try:
        add_ghosts(cluster, endpoint, added)
    finally:
        for member_id in added:
            forget(cluster, member_id)
    wait_until(lambda: all(sorted(member_list(cluster, i)) == sorted(cluster.nodes)
                           for i in cluster.nodes), MEMBERS_TIMEOUT_S,
               "every member to apply the removals")


def add_ghosts(cluster: LocalCluster, endpoint: str, added: list[int]) -> None:
    """Two voters and a learner that never start (their ids into `added`), and the
    voter too many refused."""
    for name in ("ghost1", "ghost2"):
        out = json.loads(ok(etcdctl(endpoint, "member", "add", name,
                                    f"--peer-urls=http://127.0.0.1:{free_port()}",
                                    "-w", "json")))
        assert "isLearner" not in out["member"]
        added.append(out["member"]["ID"])
    refused = failed(etcdctl(endpoint, "member", "add", "ghost3",
                             f"--peer-urls=http://127.0.0.1:{free_port()}"))
    assert "etcdserver: re-configuration failed due to not enough started members" in refused
    # A learner does not count toward the quorum: it is still welcome.
    out = json.loads(ok(etcdctl(endpoint, "member", "add", "ghost-learner",
                                f"--peer-urls=http://127.0.0.1:{free_port()}", "--learner",
                                "-w", "json")))
    added.append(out["member"]["ID"])
    for member_id in list(added):
        ok(etcdctl(cluster.endpoints(), "member", "remove", f"{member_id:x}"))
        added.remove(member_id)
