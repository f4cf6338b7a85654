"""Offline checks of a member's data directory, as a power cut left it.

`inspect_data_dir` copies the directory aside (the member's own recovery must see it
untouched) and opens the copy with kvraft.storage, as the node would at start. Each
broken promise becomes one line in `DurableState.problems`:

* the directory does not open, or the Raft log does not load (a damaged file that
  fsync never promised must not stop a member from recovering);
* the Raft log has a hole, an entry under the wrong index, or terms going down;
* the hard state commits past the log's end, or the state machine claims an applied
  index past it or below the compaction point (the entries between are gone);
* an applied entry's effect is missing: every normal entry from the first held one
  up to the applied index is replayed over the keys it writes, which must hold what
  it wrote. The power-loss load only puts unique keys; deletes, batches and CAS are
  replayed as far as they are decidable without the state before the first entry.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage import keys
from kvraft.storage.commands import CommandDecodeError, decode_command
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.mvcc import layout as mvcc_layout
from kvraft.storage.state_machine import KVStateMachine

PROBLEMS_SHOWN_MAX = 5  # missing effects listed by key before "... and N more"


@dataclass
class DurableState:
    node_id: int
    applied_index: int = 0
    applied_term: int = 0
    offset_index: int = 0    # last compacted (or snapshot) index; entries start after it
    last_index: int = 0
    hard_state: tuple[int, int, int] = (0, 0, 0)  # term, vote, commit
    kv_keys: int = 0
    kv_digest: str = ""
    problems: list[str] = field(default_factory=list)
    lost_effects: list[tuple[int, bytes]] = field(default_factory=list)  # (entry, key)

    def summary(self) -> str:
        term, vote, commit = self.hard_state
        return (f"node {self.node_id}: applied {self.applied_index} (term {self.applied_term}),"
                f" log ({self.offset_index}, {self.last_index}], hard state term {term} vote "
                f"{vote} commit {commit}, {self.kv_keys} keys")


def kv_digest(items: list[tuple[bytes, bytes]]) -> str:
    """A digest of user key/value pairs in key order (length-prefixed, unambiguous)."""
    h = hashlib.sha256()
    for key, value in items:
        h.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return h.hexdigest()


def inspect_data_dir(data_dir: Path, node_id: int, scratch: Path) -> DurableState:
    """Copy `data_dir` to `scratch` (which must not exist), open and check the copy."""
    shutil.copytree(data_dir, scratch, copy_function=shutil.copyfile)
    state = DurableState(node_id)
    try:
        datadir = DataDir.open(scratch, node_id, create=False)
    except DataDirError as e:
        state.problems.append(f"the data directory does not open: {e.reason}")
        return state
    try:
        _check(datadir, state)
    finally:
        datadir.close()
    return state


def _check(datadir: DataDir, state: DurableState) -> None:
    db = datadir.db
    problems = state.problems
    try:
        LevelDBStorage(datadir)
    except DataDirError as e:
        problems.append(f"the Raft log does not load: {e.reason}")
    raw = db.get(keys.LOG_OFFSET)
    state.offset_index = keys.unpack_index_term(raw)[0] if raw is not None else 0
    hs = eraftpb.HardState()
    raw = db.get(keys.HARD_STATE)
    if raw is not None:
        hs.ParseFromString(raw)
    state.hard_state = (hs.term, hs.vote, hs.commit)
    sm = KVStateMachine(datadir)
    state.applied_index, state.applied_term = sm.applied_index, sm.applied_term

    # The log, read raw (independently of LevelDBStorage's own checks).
    entries: list[eraftpb.Entry] = []
    expected_index = state.offset_index + 1
    previous_term = 0
    for key, value in db.iterator(prefix=keys.LOG_PREFIX):
        index = keys.log_index(key)
        if index != expected_index:
            problems.append(f"the Raft log has a hole: entry {expected_index} is missing "
                            f"(the next held entry is {index})")
            break
        entry = eraftpb.Entry.FromString(value)
        if entry.index != index:
            problems.append(f"log entry stored at {index} says index {entry.index}")
            break
        if entry.term < previous_term:
            problems.append(f"log entry {index} has term {entry.term} after term "
                            f"{previous_term}")
        previous_term = entry.term
        entries.append(entry)
        expected_index += 1
    state.last_index = expected_index - 1
    if hs.commit > state.last_index:
        problems.append(f"the hard state commits index {hs.commit} but the log ends at "
                        f"{state.last_index}")
    if state.applied_index > state.last_index:
        problems.append(f"the state machine applied index {state.applied_index} but the "
                        f"log ends at {state.last_index}")
    if state.applied_index < state.offset_index:
        problems.append(f"the log is compacted up to {state.offset_index} but the state "
                        f"machine has applied only up to {state.applied_index}: the effects "
                        f"of entries {state.applied_index + 1}..{state.offset_index} are lost")

    kv = _live_items(db)
    state.kv_keys = len(kv)
    state.kv_digest = kv_digest(kv)
    _check_applied_effects(db, entries, state)


def _mvcc(db: object) -> bool:
    """The data is in the MVCC layout (cluster version 2: storage/mvcc_apply.py)."""
    return db.get(mvcc_layout.CLUSTER_VERSION) is not None  # type: ignore[attr-defined]


def _live_items(db: object) -> list[tuple[bytes, bytes]]:
    """Every live (key, value) of the state machine, in key order, in either layout."""
    if not _mvcc(db):
        return [(k[len(keys.KV_PREFIX):], v)
                for k, v in db.iterator(prefix=keys.KV_PREFIX)]  # type: ignore[attr-defined]
    strip = len(mvcc_layout.LATEST_PREFIX)
    return [(k[strip:], mvcc_layout.decode_record(raw).value)
            for k, raw in db.iterator(prefix=mvcc_layout.LATEST_PREFIX)  # type: ignore[attr-defined]
            if mvcc_layout.record_live(raw)]


def _value(db: object, key: bytes) -> bytes | None:
    if not _mvcc(db):
        return db.get(keys.kv_key(key))  # type: ignore[attr-defined,no-any-return]
    raw = db.get(mvcc_layout.latest_key(key))  # type: ignore[attr-defined]
    if raw is None or not mvcc_layout.record_live(raw):
        return None
    return mvcc_layout.decode_record(raw).value


def _check_applied_effects(db: object, entries: list[eraftpb.Entry],
                           state: DurableState) -> None:
    """Replay the held entries up to the applied index over the keys they write."""
    written: dict[bytes, tuple[int, bytes | None]] = {}  # key -> (index, value; None=deleted)
    undecidable: set[bytes] = set()
    for entry in entries:
        if entry.index > state.applied_index:
            break
        if entry.entry_type != eraftpb.EntryNormal or not entry.data:
            continue
        try:
            command = decode_command(entry.data)
        except CommandDecodeError:
            continue  # applied as a no-op
        op = command.WhichOneof("op")
        if op == "put":
            written[command.put.key] = (entry.index, command.put.value)
        elif op == "delete":
            written[command.delete.key] = (entry.index, None)
        elif op == "batch":
            for batch_op in command.batch.ops:
                if batch_op.HasField("put"):
                    written[batch_op.put.key] = (entry.index, batch_op.put.value)
                else:
                    written[batch_op.delete.key] = (entry.index, None)
        elif op == "cas":  # depends on the state before it
            undecidable.add(command.cas.key)
        # (member updates and the cluster version write no key-value data)
    lost = []
    for key, (index, value) in sorted(written.items(), key=lambda kv: kv[1][0]):
        if key in undecidable:
            continue
        if _value(db, key) != value:
            lost.append((index, key))
    state.lost_effects = lost
    if lost:
        shown = ", ".join(f"{key!r} (entry {i})" for i, key in lost[:PROBLEMS_SHOWN_MAX])
        extra = len(lost) - PROBLEMS_SHOWN_MAX
        more = f" and {extra} more" if extra > 0 else ""
        state.problems.append(f"{len(lost)} applied entries (up to applied index "
                              f"{state.applied_index}) have no effect in the state machine: "
                              f"{shown}{more}")
