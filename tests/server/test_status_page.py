"""The status page's script in a real browser (headless Chromium, tests/browser.py),
against the listener's own WSGI app serving scripted /status.json answers: what
operators and peers wrote is shown as text, never run; the page refreshes itself, and
says so — rather than showing old numbers as current — when the member stops
answering or its loop stops publishing. tests/cluster/test_status_page.py runs it
against a real cluster."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from kvraft.server.metrics import http_app
from tests.browser import dump_dom, needs_chromium

from .test_status import DOCUMENT_KEYS

pytestmark = [pytest.mark.cluster, needs_chromium]   # starts Chromium processes

HOSTILE_NAME = '<img src=x onerror="document.body.dataset.state=\'pwned\'">'
HOSTILE_ADDRESS = "</td><script>document.body.dataset.state='pwned'</script>"


def document(**overrides: Any) -> dict[str, Any]:
    """A /status.json answer of member 2, a follower of 1 (test_status.py checks real
    ones have these keys)."""
    doc: dict[str, Any] = {
        "member_id": 2, "cluster_id": "00000000000000ab", "version": "0.1.0",
        "role": "follower", "term": 7, "leader_id": 1, "commit_index": 41,
        "applied_index": 40, "last_index": 41, "stopping": False, "lag_known": False,
        "members": [
            {"id": i, "name": f"kvraft-{i}", "peer_address": f"127.0.0.1:{2380 + i}",
             "client_address": f"127.0.0.1:{2370 + i}", "learner": False,
             "role": "leader" if i == 1 else "follower", "match_index": None, "lag": None,
             "replication": None, "active": None} for i in (1, 2, 3)],
        "alarms": [{"member_id": 3, "alarm": "NOSPACE"}], "alarms_error": "",
        "leader_changes": [{"term": 7, "leader_id": 1, "at": 1_700_000_100.0},
                           {"term": 6, "leader_id": 0, "at": 1_700_000_099.0}],
        "published_at": 1_700_000_200.0, "age_s": 0.1, "stale": False,
    }
    doc.update(overrides)
    return doc


class Scripted:
    """A status source that gives its answers in turn (the last one from then on); an
    exception is raised, which the listener answers 503."""

    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def status(self) -> dict[str, Any]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(source) -> the page's URL on a loopback listener of http_app."""
    servers: list[WSGIServer] = []

    def start(source: Scripted) -> str:
        server = make_server("127.0.0.1", 0, http_app(_no_metrics, None, source),
                             handler_class=_Quiet)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _no_metrics(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b""]


def test_the_fake_answers_have_the_real_documents_keys() -> None:
    assert set(document()) == DOCUMENT_KEYS


def test_the_page_renders_refreshes_and_says_when_the_member_stops_answering(
        serve: Any) -> None:
    source = Scripted(document(), RuntimeError("the store is closed"))
    # Virtual time: the page's 2 s refresh comes around within the budget at once.
    dom = dump_dom(serve(source), budget_ms=3000)
    assert source.calls >= 2
    assert dom.state == "down"
    assert dom.ids["banner"].startswith("Cannot reach this member (HTTP 503). Below is "
                                        "its state as of ")
    assert dom.ids["banner"].endswith(" UTC, not current.")
    # What the first answer showed stays, greyed out under the banner.
    assert dom.ids["member-id"] == "2"
    assert dom.rows["members"] == [
        ["1", "kvraft-1", "127.0.0.1:2381", "127.0.0.1:2371", "leader", "\u2014", "\u2014",
         "\u2014"],
        ["2", "kvraft-2", "127.0.0.1:2382", "127.0.0.1:2372", "follower (this member)",
         "\u2014", "\u2014", "\u2014"],
        ["3", "kvraft-3", "127.0.0.1:2383", "127.0.0.1:2373", "follower", "\u2014",
         "\u2014", "\u2014"],
    ]
    assert "known to the leader only" in dom.ids["lag-note"]
    assert dom.ids["alarms"] == "NOSPACE on member 3"
    assert dom.rows["leader-changes"] == [["2023-11-14 22:15:00", "7", "1"],
                                          ["2023-11-14 22:14:59", "6", "none"]]
    assert "Leader1" in dom.ids["summary"] and "Applied index40" in dom.ids["summary"]


def test_the_leaders_page_shows_lag_and_what_peers_wrote_as_text(serve: Any) -> None:
    members = [
        {**m, "role": "leader" if m["id"] == 2 else "follower",
         "match_index": 41 - lag, "lag": lag, "replication": state, "active": active}
        for m, lag, state, active in zip(document()["members"], (3, 0, 30),
                                         ("replicate", "replicate", "probe"),
                                         (True, True, False), strict=True)]
    members[0] = {**members[0], "name": HOSTILE_NAME, "peer_address": HOSTILE_ADDRESS}
    dom = dump_dom(serve(Scripted(document(role="leader", leader_id=2, lag_known=True,
                                           members=members, alarms=[]))))
    assert dom.state == "live"   # and neither hostile script ran ("pwned")
    assert [row[4:] for row in dom.rows["members"]] == [
        ["follower", "38", "3", "replicate"],
        ["leader (this member)", "41", "0", "replicate"],
        ["follower", "11", "30", "probe, not responding"],
    ]
    assert dom.ids["lag-note"] == "" and dom.ids["alarms"] == "none"
    assert dom.rows["members"][0][1:3] == [HOSTILE_NAME, HOSTILE_ADDRESS]
    assert "img" not in dom.tags
    assert dom.tags["script"] == 1   # the page's own


def test_a_state_the_loop_stopped_publishing_is_flagged(serve: Any) -> None:
    dom = dump_dom(serve(Scripted(document(stale=True, age_s=12.5))))
    assert dom.state == "stale"
    assert "has not published its state for 12.5 s" in dom.ids["banner"]
