"""A simulated node's durable Raft log as the core simulation's checker reads it.

`tests/raft/sim.py`'s Checker reads a node's disk through SimStorage's mirror API: the
persisted log as (term, type, data) tuples from `mirror_base + 1`, a version bumped on
every change, the first index of every suffix a write replaced, and the durable hard
state. `DiskMirror` keeps the same view of a real LevelDB store, from the writes the
store makes (its `persist`, snapshot install and compaction, wrapped on the instance).
Every write the persistence lane runs is one synced LevelDB batch, so this mirror is
what survives a crash; it outlives the node's incarnations and, each time the store is
opened again, is compared with what LevelDB really holds — a harness that got the disk
wrong would fail there.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.server.storage_adapter import Store
from tests.raft.network import entry_key

EntryKey = tuple[int, int, bytes]


class HarnessError(AssertionError):
    """The simulation's own model disagrees with the real store (a harness bug)."""


class DiskMirror:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.mirror: list[EntryKey] = []
        self.mirror_base = 0
        self.version = 0
        self.truncated_below: list[int] = []
        self.reverted = False   # set by a crash that may have lost writes
        self._store: Store | None = None
        self._opened_before = False
        self._last_hard_state = eraftpb.HardState()

    # ------------------------------------------------------- the Checker's API
    def mirror_last(self) -> int:
        return self.mirror_base + len(self.mirror)

    def mirror_get(self, index: int) -> EntryKey | None:
        k = index - self.mirror_base - 1
        return self.mirror[k] if 0 <= k < len(self.mirror) else None

    def first_index(self) -> int:
        return self.mirror_base + 1

    def durable_hard_state(self) -> eraftpb.HardState:
        if self._store is not None:
            self._last_hard_state = self._store.log.hard_state()
        return self._last_hard_state

    # ------------------------------------------------------------ the store
    def attach(self, store: Store, on_apply: Callable[[eraftpb.Entry], None]) -> None:
        """A store was (re)opened on this node's directory: check it holds what the
        mirror says survived, and watch its writes from now on."""
        base, held = self._read(store)
        if self._opened_before and (base, held) != (self.mirror_base, self.mirror):
            raise HarnessError(
                f"node {self.node_id}: the reopened log (after {base}, {len(held)} entries) "
                f"is not the mirror (after {self.mirror_base}, {len(self.mirror)} entries)")
        self._opened_before = True
        self.mirror_base, self.mirror = base, held
        self.version += 1
        self._store = store
        self._wrap(store, on_apply)

    def detach(self) -> None:
        if self._store is not None:
            self._last_hard_state = self._store.log.hard_state()
        self._store = None

    @staticmethod
    def _read(store: Store) -> tuple[int, list[EntryKey]]:
        first, last = store.log.first_index(), store.log.last_index()
        held = [entry_key(e) for e in store.log.entries(first, last + 1)] if last >= first \
            else []
        return first - 1, held

    def _reload(self, store: Store) -> None:
        self.mirror_base, self.mirror = self._read(store)
        self.version += 1

    def _appended(self, entries: list[eraftpb.Entry]) -> None:
        first = entries[0].index
        if first <= self.mirror_last():
            new_keys = [entry_key(e) for e in entries]
            old_keys = self.mirror[first - self.mirror_base - 1:]
            lost = next((first + k for k, (o, n) in enumerate(zip(old_keys, new_keys,
                                                                    strict=False))
                         if o != n), None)
            if lost is None and len(old_keys) > len(new_keys):
                lost = first + len(new_keys)
            if lost is not None:
                self.truncated_below.append(lost)
            del self.mirror[first - self.mirror_base - 1:]
        if first != self.mirror_last() + 1:
            raise HarnessError(f"node {self.node_id}: the store accepted a gap at {first}")
        self.mirror.extend(entry_key(e) for e in entries)
        self.version += 1

    def _wrap(self, store: Store, on_apply: Callable[[eraftpb.Entry], None]) -> None:
        log, sm = store.log, store.sm
        persist, compact = log.persist, log.maybe_compact
        install, apply = sm.install_snapshot, sm.apply

        def persist_watched(entries: list[eraftpb.Entry], hard_state: Any = None,
                            snapshot: Any = None) -> None:
            persist(entries, hard_state, snapshot)
            if snapshot is not None and snapshot.metadata.index > 0:
                self._reload(store)
            elif entries:
                self._appended(entries)

        def compact_watched(applied_index: int, policy: Any) -> int | None:
            first = compact(applied_index, policy)
            if first is not None:
                self._reload(store)
            return first

        def install_watched(staged: Any, log_store: Any) -> None:
            install(staged, log_store)
            self._reload(store)

        def apply_watched(entries: list[eraftpb.Entry], on_conf_change: Any = None) -> Any:
            before = sm.applied_index
            results = apply(entries, on_conf_change)
            after = sm.applied_index
            for entry in entries:
                if before < entry.index <= after:
                    on_apply(entry)
            return results

        log.persist = persist_watched  # type: ignore[method-assign]
        log.maybe_compact = compact_watched  # type: ignore[method-assign]
        sm.install_snapshot = install_watched  # type: ignore[method-assign]
        sm.apply = apply_watched  # type: ignore[method-assign]
