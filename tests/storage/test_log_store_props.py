"""LevelDBStorage answers exactly like MemStorage (raft-rs semantics) for the same
random sequences of appends, conflicting appends, hard-state changes, compactions and
snapshots — and keeps answering so after being closed and reopened from disk."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvraft.raft import MemStorage, eraftpb
from kvraft.raft.errors import SnapshotOutOfDateError
from kvraft.storage import DataDir, LevelDBStorage

# A tiny cache so reads go through both paths: the tail cache and LevelDB.
CACHE = {"cache_entries_max": 3, "cache_bytes_max": 120}


def outcome(fn: Callable[..., object], *args: object) -> tuple[str, object]:
    try:
        return ("ok", fn(*args))
    except Exception as e:  # both must raise the same class
        return ("raises", type(e).__name__)


def entry_list(first: int, terms: list[int], payloads: list[bytes]) -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=first + i, term=t, data=d)
            for i, (t, d) in enumerate(zip(terms, payloads, strict=True))]


class StoragesAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kvraft-props-"))
        self.dd = DataDir.open(self.tmp / "d", 1)
        self.ldb = LevelDBStorage(self.dd, **CACHE)
        self.mem = MemStorage()
        self.term = 1
        self.initialized = False

    def teardown(self) -> None:
        self.dd.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- the shared view --------------------------------------------------------------
    @property
    def offset(self) -> int:
        return self.mem.first_index() - 1

    @property
    def commit(self) -> int:
        return self.mem.hard_state().commit

    # --- operations ---------------------------------------------------------------------
    @precondition(lambda self: not self.initialized and self.mem.last_index() == 0)
    @rule(voters=st.lists(st.integers(1, 5), min_size=1, max_size=3, unique=True))
    def initialize(self, voters: list[int]) -> None:
        cs = eraftpb.ConfState(voters=voters)
        self.mem.initialize_with_conf_state(cs)
        self.ldb.initialize(cs)
        self.initialized = True

    @rule(data=st.data(), count=st.integers(1, 6), bump_term=st.booleans(),
          with_hard_state=st.booleans())
    def append(self, data: st.DataObject, count: int, bump_term: bool,
               with_hard_state: bool) -> None:
        """A follower's append: may overwrite an uncommitted suffix (conflict)."""
        low = max(self.offset, self.commit) + 1
        first = data.draw(st.integers(low, self.mem.last_index() + 1), label="first")
        if bump_term:
            self.term += 1
        payloads = data.draw(st.lists(st.binary(max_size=40), min_size=count,
                                      max_size=count), label="payloads")
        terms = [self.term] * count
        hs = None
        if with_hard_state:
            last = first + count - 1
            commit = data.draw(st.integers(self.commit, last), label="commit")
            hs = eraftpb.HardState(term=self.term, vote=data.draw(st.integers(0, 3)),
                                   commit=commit)
        self.mem.append(entry_list(first, terms, payloads))
        if hs is not None:
            self.mem.set_hardstate(hs)
        self.ldb.persist(entry_list(first, terms, payloads), hs)

    @rule(data=st.data())
    def set_hard_state(self, data: st.DataObject) -> None:
        commit = data.draw(st.integers(self.commit, self.mem.last_index()), label="commit")
        hs = eraftpb.HardState(term=self.term, vote=data.draw(st.integers(0, 3)),
                               commit=commit)
        self.mem.set_hardstate(hs)
        self.ldb.persist([], hs)

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        upto = min(self.commit, self.mem.last_index()) + 1
        index = data.draw(st.integers(max(0, self.offset - 1), upto), label="compact")
        self.mem.compact(index)
        self.ldb.compact(index)

    @rule(data=st.data(), voters=st.lists(st.integers(1, 5), min_size=1, max_size=3,
                                          unique=True), then_append=st.integers(0, 3))
    def apply_snapshot(self, data: st.DataObject, voters: list[int], then_append: int) -> None:
        """A follower restoring a snapshot, in a Ready that may also carry the entries
        that follow it; an older snapshot is refused by both."""
        index = data.draw(st.integers(max(0, self.offset - 2), self.mem.last_index() + 5),
                          label="snapshot index")
        if index == 0:
            return  # an empty snapshot is "no snapshot" in a Ready
        term = data.draw(st.integers(0, self.term + 1), label="snapshot term")
        if (index, term) == (self.offset, self.mem.term(self.offset)) and \
                self.mem.last_index() == self.offset:
            return  # LevelDBStorage takes this as "already installed" (see persist)
        self.term = max(self.term, term)
        snap = eraftpb.Snapshot(data=b"descriptor")
        snap.metadata.index = index
        snap.metadata.term = term
        snap.metadata.conf_state.voters.extend(voters)
        terms = [max(term, 1)] * then_append
        payloads = [b"after-snapshot"] * then_append
        mem_result = outcome(self.mem.apply_snapshot, snap)
        if mem_result[0] == "ok":
            self.mem.append(entry_list(index + 1, terms, payloads))
        ldb_result = outcome(self.ldb.persist, entry_list(index + 1, terms, payloads), None,
                             snap)
        assert mem_result == ldb_result
        if mem_result[0] == "raises":
            assert mem_result[1] == SnapshotOutOfDateError.__name__

    @rule()
    def reopen(self) -> None:
        """Everything persisted survives a close and reopen."""
        self.dd.close()
        self.dd = DataDir.open(self.tmp / "d", 1)
        self.ldb = LevelDBStorage(self.dd, **CACHE)

    # --- the requirement: identical answers ---------------------------------------------
    @invariant()
    def every_storage_method_agrees(self) -> None:
        mem, ldb = self.mem, self.ldb
        assert ldb.first_index() == mem.first_index()
        assert ldb.last_index() == mem.last_index()
        mem_state, ldb_state = mem.initial_state(), ldb.initial_state()
        assert ldb_state.hard_state == mem_state.hard_state
        assert ldb_state.conf_state == mem_state.conf_state
        first, last = mem.first_index(), mem.last_index()
        for idx in range(max(0, first - 3), last + 3):
            assert outcome(ldb.term, idx) == outcome(mem.term, idx), f"term({idx})"
        mid = (first + last) // 2
        for low in {max(0, first - 1), first, mid, last, last + 1}:
            for high in {low, low + 1, mid, last + 1}:
                if high < low or high > last + 1:
                    continue
                for max_size in (None, 0, 30, 100, 10_000):
                    got = outcome(ldb.entries, low, high, max_size)
                    want = outcome(mem.entries, low, high, max_size)
                    assert got == want, f"entries({low}, {high}, {max_size})"
        for request_index in (0, last, last + 2):
            assert outcome(ldb.snapshot, request_index, 2) == outcome(
                mem.snapshot, request_index, 2), f"snapshot({request_index})"


StoragesAgree.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestStoragesAgree = StoragesAgree.TestCase
