"""/status.json (kvraft/server/status.py) of real in-process nodes, and the listener's
routes for it and for the page: the leader reports every member's match index and lag,
a follower what it knows; the alarms and leader changes are there; a state the loop
stopped publishing is flagged stale; the page is self-contained and escapes."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import StateRole
from kvraft.server.metrics import http_app
from kvraft.server.node import Node
from kvraft.server.status import LEADER_CHANGES_KEPT, STALE_AFTER_S, StatusBoard
from kvraft.server.status_page import PAGE
from kvraft.storage import commands

from .inprocess import InProcessCluster, wait_for

MEMBER_KEYS = {"id", "name", "peer_address", "client_address", "learner", "role",
               "match_index", "lag", "replication", "active"}
# /status.json's top level; tests/server/test_status_page.py's fake answers use the
# same keys (checked there against this set).
DOCUMENT_KEYS = {"member_id", "cluster_id", "version", "role", "term", "leader_id",
                 "commit_index", "applied_index", "last_index", "stopping", "lag_known",
                 "members", "alarms", "alarms_error", "leader_changes", "published_at",
                 "age_s", "stale"}


def _get(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, body) of a GET of `path` on the WSGI `app`."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return answer["status"], answer["headers"], body


def _metrics_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"metrics"]


def test_status_json_of_a_leader_and_a_follower(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with InProcessCluster(tmp_path, 3) as cluster:
            boards = {i: StatusBoard(node) for i, node in cluster.nodes.items()}
            leader_id = await cluster.wait_leader()
            leader = cluster.nodes[leader_id]
            follower_id = min(i for i in cluster.nodes if i != leader_id)
            # A raised alarm shows on every member's page (it is replicated). Proposed
            # again until applied: one proposed before the cluster version allows
            # alarms (cluster_version.py) is not.
            request = etcdpb.AlarmRequest(action=etcdpb.AlarmRequest.ACTIVATE,
                                          memberID=follower_id, alarm=etcdpb.NOSPACE)
            for _ in range(20):
                leader.propose_own(commands.etcd_encoder("alarm", request), "test alarm")
                with contextlib.suppress(AssertionError):
                    await wait_for(lambda: all(n.store.sm.alarms()
                                               for n in cluster.nodes.values()),
                                   0.5, "the alarm to be applied")
                    break
            # Quiet: every member has everything, and the leader knows it. The boards
            # publish in the same step of the loop (no await), so nothing moves between.
            raft_log = leader.raw.raft.raft_log
            await wait_for(lambda: len({n.store.sm.applied_index
                                        for n in cluster.nodes.values()}) == 1 and
                           all(pr.matched == raft_log.committed == raft_log.last_index()
                               for pr in leader.raw.raft.prs.progress.values()),
                           10.0, "every member to catch up")
            for board in boards.values():
                board.publish()
            on_leader = boards[leader_id].status()
            on_follower = boards[follower_id].status()

            for doc in (on_leader, on_follower):
                assert set(doc) == DOCUMENT_KEYS
                assert json.loads(json.dumps(doc)) == doc
                assert [m["id"] for m in doc["members"]] == [1, 2, 3]
                assert all(set(m) == MEMBER_KEYS for m in doc["members"])
                assert doc["leader_id"] == leader_id
                assert doc["alarms"] == [{"member_id": follower_id, "alarm": "NOSPACE"}]
                assert doc["alarms_error"] == "" and doc["stale"] is False
                assert doc["leader_changes"][0]["leader_id"] == leader_id
                assert doc["cluster_id"] == f"{leader.cluster_id:016x}"
                roles = {m["id"]: m["role"] for m in doc["members"]}
                assert roles == {i: "leader" if i == leader_id else "follower"
                                 for i in cluster.nodes}

            assert on_leader["role"] == "leader" and on_leader["member_id"] == leader_id
            assert on_leader["lag_known"] is True
            commit = on_leader["commit_index"]
            assert commit == leader.raw.raft.raft_log.committed > 0
            for m in on_leader["members"]:
                assert (m["match_index"], m["lag"], m["replication"], m["active"]) == (
                    commit, 0, "replicate", True), m

            assert on_follower["role"] == "follower"
            assert on_follower["lag_known"] is False
            for m in on_follower["members"]:
                assert (m["match_index"], m["lag"], m["replication"], m["active"]) == (
                    None, None, None, None), m

            # The listener serves the same document.
            status, headers, body = _get(http_app(_metrics_app, None, boards[leader_id]),
                                         "/status.json")
            assert (status, headers["Content-Type"]) == ("200 OK", "application/json")
            served = json.loads(body)
            assert served["member_id"] == leader_id and set(served) == DOCUMENT_KEYS

    asyncio.run(scenario())


def test_the_leader_shows_a_lagging_follower_and_the_pages_a_leader_change(
        tmp_path: Path) -> None:
    """Stop one follower's Raft from hearing anything (its inbox drops every message):
    the leader's page shows its lag growing with each write; then the leader steps
    down to another member, and the pages of those still up record the change."""
    async def scenario() -> None:
        async with InProcessCluster(tmp_path, 3) as cluster:
            boards = {i: StatusBoard(node) for i, node in cluster.nodes.items()}
            leader_id = await cluster.wait_leader()
            leader = cluster.nodes[leader_id]
            deaf_id, other_id = sorted(i for i in cluster.nodes if i != leader_id)
            cluster.nodes[deaf_id].deliver = lambda messages: None  # type: ignore[method-assign]
            for n in range(5):
                await leader.propose(*_put(n), 5.0)
            boards[leader_id].publish()
            members = {m["id"]: m for m in boards[leader_id].status()["members"]}
            commit = leader.raw.raft.raft_log.committed
            assert members[deaf_id]["lag"] == commit - members[deaf_id]["match_index"] >= 5
            assert members[other_id]["lag"] == 0

            old_term = leader.raw.raft.term
            await leader.transfer_leader(other_id, 10.0)
            await wait_for(lambda: cluster.nodes[leader_id].leader_id == other_id, 10.0,
                           "the old leader to follow the new one")
            for node_id in (leader_id, other_id):
                doc = boards[node_id].status()
                latest = doc["leader_changes"][0]
                assert (latest["leader_id"], doc["leader_id"]) == (other_id, other_id)
                assert latest["term"] > old_term
                assert leader_id in [c["leader_id"] for c in doc["leader_changes"]]
                roles = {m["id"]: m["role"] for m in doc["members"]}
                assert roles[other_id] == "leader" and roles[leader_id] == "follower"

    asyncio.run(scenario())


def _put(n: int) -> tuple[int, bytes]:
    request_id = 1000 + n
    put = etcdpb.PutRequest(key=b"k%d" % n, value=b"v")
    return request_id, commands.etcd_command(request_id, "etcd_put", put)


@contextlib.asynccontextmanager
async def _one_leader_board(tmp_path: Path) -> AsyncIterator[tuple[Node, StatusBoard]]:
    """A one-member in-process cluster that has elected itself, and a board on it."""
    async with InProcessCluster(tmp_path, 1) as cluster:
        node = cluster.nodes[1]
        board = StatusBoard(node)
        await cluster.wait_leader()
        yield node, board


def test_the_leader_change_ring_is_bounded_and_newest_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _one_leader_board(tmp_path) as (_, board):
            for n in range(LEADER_CHANGES_KEPT + 5):   # as the node's listeners are called
                board._on_role(0 if n % 2 else 1, StateRole.Follower)
            changes = board.status()["leader_changes"]
            assert len(changes) == LEADER_CHANGES_KEPT
            assert changes[0]["leader_id"] == 1 - (LEADER_CHANGES_KEPT + 4) % 2
            assert [c["at"] for c in changes] == sorted((c["at"] for c in changes),
                                                        reverse=True)

    asyncio.run(scenario())


def test_a_state_the_loop_stopped_publishing_is_stale(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _one_leader_board(tmp_path) as (_, board):
            board.publish()
            assert board.status()["stale"] is False
            published = board._published
            assert published is not None
            board._published = dataclasses.replace(
                published, published_mono=published.published_mono - STALE_AFTER_S - 1)
            doc = board.status()
            assert doc["stale"] is True and doc["age_s"] > STALE_AFTER_S

    asyncio.run(scenario())


class _Broken:
    def status(self) -> dict[str, Any]:
        raise RuntimeError("the store is closed")


def test_the_listener_routes_the_page_and_reports_a_failing_status_as_503() -> None:
    app = http_app(_metrics_app, None, _Broken())
    status, headers, body = _get(app, "/")
    assert (status, headers["Content-Type"]) == ("200 OK", "text/html; charset=utf-8")
    assert body == PAGE.encode()
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = _get(app, "/status.json")
    assert status == "503 Service Unavailable"
    assert json.loads(body) == {"error": "RuntimeError: the store is closed"}
    assert _get(app, "/metrics")[2] == b"metrics"
    # Without a status source (a caller of http_app that has none), `/` is the metrics'.
    assert _get(http_app(_metrics_app, None), "/")[2] == b"metrics"


def test_the_page_is_self_contained_and_never_parses_what_it_shows() -> None:
    lowered = PAGE.lower()
    for external in ("http://", "https://", "//cdn", "src=", "<link", "@import"):
        assert external not in lowered, external
    for parsing in ("innerhtml", "outerhtml", "insertadjacenthtml", "document.write"):
        assert parsing not in lowered, parsing
    assert "textContent" in PAGE
    assert len(PAGE.encode()) < 16_000


def test_the_board_publishes_once_more_when_the_node_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _one_leader_board(tmp_path) as (node, board):
            task = asyncio.get_running_loop().create_task(board.run())
            await wait_for(lambda: board.status()["role"] == "leader", 5.0, "a publish")
            assert board.status()["stopping"] is False
            node.exit_with_error("the test stops it")   # as a fatal error does
            await asyncio.wait_for(task, 5.0)           # it returns by itself
            assert board.status()["stopping"] is True

    asyncio.run(scenario())
