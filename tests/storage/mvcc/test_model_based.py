"""The MVCC store against the in-memory model of etcd's semantics (model.py): random
puts, deletes, txns, lease deletions, compactions (whose removal runs in random
steps), and ranges and watch histories at random revisions, with the LevelDB closed
and reopened in between. Every answer — or refusal, by type and message — must equal
the model's; after every step the layout's invariants hold (layout.py)."""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import plyvel
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvraft.storage.mvcc import MVCCError, MVCCStore, PutRequest, RangeRequest
from tests.storage.mvcc import strategies as S
from tests.storage.mvcc.layout_check import check_layout
from tests.storage.mvcc.model import Model


def canon(value: Any) -> Any:
    """Responses as plain nested tuples (lists and tuples alike)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,
                *(canon(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, list | tuple):
        return tuple(canon(v) for v in value)
    return value


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return canon(call())
    except MVCCError as e:
        return ("error", type(e).__name__, str(e))


class MVCCAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mvcc-model-")
        self.db = plyvel.DB(self.dir, create_if_missing=True)
        self.store = MVCCStore(self.db, sync=False)
        self.model = Model()

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(values=st.lists(S.VALUES, min_size=2 * len(S.KEY_LIST),
                                max_size=2 * len(S.KEY_LIST)),
                leases=st.lists(S.LEASES, min_size=len(S.KEY_LIST), max_size=len(S.KEY_LIST)))
    def load(self, values: list[bytes], leases: list[int]) -> None:
        """Every key written twice, so that each run starts with history to read."""
        keys = S.KEY_LIST * 2
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            lease = leases[i % len(leases)] if i >= len(S.KEY_LIST) else 0
            self.request(PutRequest(key, value, lease=lease))

    def same(self, ours: Callable[[], Any], theirs: Callable[[], Any]) -> None:
        got, want = outcome(ours), outcome(theirs)
        assert got == want, f"\nstore: {got}\nmodel: {want}"

    def request(self, req: Any) -> None:
        method = {"PutRequest": "put", "DeleteRangeRequest": "delete_range",
                  "RangeRequest": "range", "TxnRequest": "txn"}[type(req).__name__]
        self.same(lambda: getattr(self.store, method)(req),
                  lambda: getattr(self.model, method)(req))

    @rule(reqs=st.lists(S.puts(), min_size=1, max_size=6))
    def put(self, reqs: list[Any]) -> None:
        for req in reqs:
            self.request(req)

    @rule(req=S.bad_requests())
    def bad_request(self, req: Any) -> None:
        self.request(req)

    @rule(req=S.deletes())
    def delete_range(self, req: Any) -> None:
        self.same(lambda: self.store.delete_range(req), lambda: self.model.delete_range(req))

    @rule(req=S.txns())
    def txn(self, req: Any) -> None:
        self.same(lambda: self.store.txn(req), lambda: self.model.txn(req))

    @rule(lease=st.sampled_from([1, 2]))
    def revoke(self, lease: int) -> None:
        self.same(lambda: self.store.keys_with_lease(lease, limit=100),
                  lambda: self.model.keys_with_lease(lease))
        self.same(lambda: self.store.delete_keys_with_lease(lease),
                  lambda: self.model.delete_keys_with_lease(lease))

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        # Mostly a revision it accepts, at most halfway to the current one (so that old
        # revisions stay readable); sometimes the compact or a future one (refused).
        lo, hi = self.model.compacted, self.model.rev
        accepted = st.integers(min_value=lo + 1, max_value=max(lo + 1, (lo + hi) // 2))
        refused = st.sampled_from([lo, hi + 1]).filter(lambda r: r >= 1)
        rev = data.draw(st.one_of(accepted, accepted, refused) if lo < hi else refused)
        self.same(lambda: self.store.compact(rev), lambda: self.model.compact(rev))
        # Some of the removal now, the rest left to the steps below (or never).
        for entries in data.draw(st.lists(st.integers(min_value=1, max_value=6), max_size=3)):
            self.store.compact_step(entries)

    @precondition(lambda self: self.store.compaction_pending)
    @rule(entries=st.integers(min_value=1, max_value=8))
    def compact_step(self, entries: int) -> None:
        self.store.compact_step(entries)

    @precondition(lambda self: self.store.compaction_pending)
    @rule()
    def finish_compaction(self) -> None:
        steps = 0
        while self.store.compact_step(4):
            steps += 1
            assert steps < 10_000, "compaction does not finish"
        assert not self.store.compaction_pending

    def revisions(self) -> st.SearchStrategy[int]:
        """0 (current), the edges (just below, at and above the compact revision, the
        current one, the next), or any revision in between."""
        lo, hi = self.model.compacted, self.model.rev
        return st.one_of(st.sampled_from([0, max(lo - 1, 0), lo, lo + 1, hi, hi + 1]),
                         st.integers(min_value=lo, max_value=hi))

    @rule(reqs=st.lists(S.ranges(), min_size=1, max_size=4), data=st.data())
    def range(self, reqs: list[RangeRequest], data: st.DataObject) -> None:
        for req in reqs:
            rev = data.draw(self.revisions())
            req = dataclasses.replace(req, revision=rev)
            self.same(lambda: self.store.range(req), lambda: self.model.range(req))  # noqa: B023

    @rule(bounds=S.BOUNDS, prev_kv=st.booleans(), data=st.data())
    def events(self, bounds: tuple[bytes, bytes], prev_kv: bool, data: st.DataObject) -> None:
        key, end = bounds
        start = data.draw(self.revisions())
        self.same(lambda: list(self.store.events(key, end, start, prev_kv=prev_kv)),
                  lambda: self.model.events(key, end, start, prev_kv))

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = plyvel.DB(self.dir)
        self.store = MVCCStore(self.db, sync=False)

    @invariant()
    def revisions_agree(self) -> None:
        assert self.store.revision == self.model.rev
        assert self.store.compact_revision == self.model.compacted

    @invariant()
    def layout_holds(self) -> None:
        check_layout(self.db)


MVCCAgainstModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_store_against_model = MVCCAgainstModel.TestCase
