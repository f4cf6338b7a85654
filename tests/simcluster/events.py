"""The check that watches rest on: every member's stream of MVCC events — what its
apply hands the watch hub (Node.apply_listeners) — is the same history, revision by
revision, with no gap and no reordering, across crashes, restarts and snapshot installs.

A revision's events are recorded the first time any member applies it; every later
application of that revision (another member, or the same member again after a crash
re-applied its log) must produce the same events. Within one run of a member's apply
stream, revisions must follow each other by exactly one: a gap would be events a
watcher on that member never sees. A restart or a snapshot install starts a new run
(the hub then reads the store, whose history the equality check covers).
"""
from __future__ import annotations

from collections.abc import Callable

from kvraft.raft import eraftpb
from kvraft.server.node import Node
from kvraft.storage import ApplyResult

EventSig = tuple[tuple[int, bytes, bytes, int, int], ...]


class EventOrder:
    def __init__(self, fail: Callable[[str], None]) -> None:
        self._fail = fail
        self.by_revision: dict[int, EventSig] = {}
        self._last: dict[int, int] = {}   # member -> last revision of its current run
        self.events_seen = 0

    def attach(self, member_id: int, node: Node) -> None:
        self._last[member_id] = 0
        node.apply_listeners.append(
            lambda entries, results: self._on_applied(member_id, entries, results))

    def _on_applied(self, member_id: int, entries: list[eraftpb.Entry],
                    results: list[ApplyResult]) -> None:
        if not entries:           # a snapshot install: a new run starts
            self._last[member_id] = 0
            return
        for r in results:
            if not r.events:
                continue
            revision = r.events[0].kv.mod_revision
            if any(e.kv.mod_revision != revision for e in r.events):
                self._fail(f"member {member_id}: entry {r.index} made events at several "
                           f"revisions: {[e.kv.mod_revision for e in r.events]}")
                return
            last = self._last[member_id]
            if last and revision != last + 1:
                self._fail(f"member {member_id}: entry {r.index} applied revision {revision} "
                           f"right after revision {last}")
                return
            sig = tuple((int(e.type), e.kv.key, e.kv.value, e.kv.version, e.kv.create_revision)
                        for e in r.events)
            known = self.by_revision.setdefault(revision, sig)
            if known != sig:
                self._fail(f"member {member_id}: revision {revision} made {sig}, another "
                           f"application of it made {known}")
                return
            self._last[member_id] = revision
            self.events_seen += len(sig)
