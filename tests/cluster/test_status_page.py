"""The status page (`/` of --metrics-listen) of a real 3-node cluster, rendered by a
real browser (headless Chromium, tests/browser.py): the leader's page lists every
member with its role and lag; after the leader is killed, a surviving follower's page
shows the new leader and the leader change."""
from __future__ import annotations

import json
import urllib.request

import pytest

from tests.browser import dump_dom, needs_chromium

from .harness import LocalCluster, retry_unavailable, wait_until

pytestmark = [pytest.mark.cluster, needs_chromium]

HTTP_TIMEOUT_S = 5
NEW_LEADER_TIMEOUT_S = 30


def _status(cluster: LocalCluster, node_id: int) -> dict[str, object]:
    url = f"http://{cluster.nodes[node_id].metrics_address}/status.json"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


def test_the_status_page_follows_a_leader_change_in_a_browser() -> None:
    with LocalCluster.start(3) as cluster:
        leader = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(leader, b"k", b"v"))
        ids = sorted(cluster.nodes)
        # Every member published its client address (its name shows from then on).
        wait_until(lambda: all(m["name"] for m in _status(cluster, leader)["members"]),
                   NEW_LEADER_TIMEOUT_S, "every member's record on the leader")

        dom = dump_dom(f"http://{cluster.nodes[leader].metrics_address}/")
        assert dom.state == "live"
        assert dom.ids["member-id"] == str(leader)
        rows = {int(row[0]): row for row in dom.rows["members"]}
        assert sorted(rows) == ids
        for node_id, row in rows.items():
            node = cluster.nodes[node_id]
            assert row[1:4] == [f"kvraft-{node_id}", node.peer_address, node.client_address]
            assert row[4] == ("leader (this member)" if node_id == leader else "follower")
            assert row[6].isdigit(), row   # the leader knows every member's lag
        assert dom.rows["leader-changes"][0][2] == str(leader)
        old_term = int(dom.rows["leader-changes"][0][1])

        cluster.kill9(leader)
        new_leader = cluster.wait_leader(exclude={leader})
        follower = next(i for i in ids if i not in (leader, new_leader))
        wait_until(lambda: _status(cluster, follower)["leader_id"] == new_leader,
                   NEW_LEADER_TIMEOUT_S, "the follower to know the new leader")

        dom = dump_dom(f"http://{cluster.nodes[follower].metrics_address}/")
        assert dom.state == "live"
        rows = {int(row[0]): row for row in dom.rows["members"]}
        assert sorted(rows) == ids
        assert rows[new_leader][4] == "leader"
        assert rows[follower][4] == "follower (this member)"
        assert "Leader" + str(new_leader) in dom.ids["summary"]
        latest = dom.rows["leader-changes"][0]
        assert latest[2] == str(new_leader) and int(latest[1]) > old_term
        assert str(leader) in [change[2] for change in dom.rows["leader-changes"]]
