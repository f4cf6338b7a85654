"""/health, /livez and /readyz on the metrics listener (SPEC §7) of a real 3-node
cluster: all pass while it has a leader; a member that lost its quorum stays alive but
is neither healthy nor ready, and says why."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster

HTTP_TIMEOUT_S = 5
LEADER_LOSS_TIMEOUT_S = 30


def fetch(cluster: LocalCluster, node_id: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://<metrics address><path>."""
    url = f"http://{cluster.nodes[node_id].metrics_address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_health_livez_readyz_follow_the_quorum() -> None:
    with LocalCluster.start(3) as cluster:
        leader = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(leader, b"k", b"v"))
        for node_id in cluster.nodes:
            status, ctype, body = fetch(cluster, node_id, "/health")
            assert (status, ctype, json.loads(body)) == (
                200, "application/json", {"health": "true", "reason": ""})
            assert fetch(cluster, node_id, "/livez")[::2] == (200, "ok\n")
            assert fetch(cluster, node_id, "/readyz")[::2] == (200, "ok\n")
        assert fetch(cluster, leader, "/readyz?verbose")[::2] == (
            200, "[+]not_stopping ok\n[+]leader ok\n[+]linearizable_read ok\nok\n")
        assert fetch(cluster, leader, "/livez?verbose")[::2] == (
            200, "[+]serializable_read ok\nok\n")
        # The metrics are still there, beside the probes.
        status, _, metrics = fetch(cluster, leader, "/metrics")
        assert status == 200 and "kvraft_term " in metrics

        # Two of three members gone: the survivor has no quorum, so no leader.
        survivor = next(i for i in cluster.nodes if i != leader)
        for node_id in cluster.nodes:
            if node_id != survivor:
                cluster.kill9(node_id)
        wait_until(lambda: json.loads(fetch(cluster, survivor, "/health")[2])["reason"]
                   == "RAFT NO LEADER", LEADER_LOSS_TIMEOUT_S,
                   "the survivor to report no leader", lambda: cluster.log_tail(survivor))
        status, _, body = fetch(cluster, survivor, "/health")
        assert (status, json.loads(body)) == (503, {"health": "false",
                                                    "reason": "RAFT NO LEADER"})
        status, _, body = fetch(cluster, survivor, "/readyz?verbose")
        assert status == 503
        assert "[-]leader failed: no leader\n" in body and body.endswith("failed\n")
        assert fetch(cluster, survivor, "/livez")[::2] == (200, "ok\n")
        # etcd's serializable health check needs no leader.
        status, _, body = fetch(cluster, survivor, "/health?serializable=true")
        assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})
