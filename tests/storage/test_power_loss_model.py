"""Power loss, modelled at the level of LevelDB writes (issue 11, item 4).

LevelDB's write-ahead log is not one sequential file: at a memtable switch it closes
the old log without an fsync and starts a new one, so after a power loss an unsynced
write can be lost even though a LATER synced write (in the new log) survived, and an
unsynced write can survive (written back by the kernel) while an earlier one is lost.
The only promise is: a write made with sync=True is durable once it returns, and one
WriteBatch is all or nothing.

These tests record every write the storage makes (its ops and its sync flag), then
build the directory a power cut after write k could leave: every synced write before k,
plus a chosen subset of the unsynced ones (none of them, or a random subset), in order.
The reopened store must then hold everything reported durable, have a whole log, and
a state machine equal to a replay of the committed log; a snapshot install must be
entirely old or entirely new. No FUSE needed: these run anywhere, in a few seconds
(the end-to-end check is the power-loss harness in tests/powerloss).
"""
from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plyvel
import pytest

from kvraft.raft import eraftpb
from kvraft.storage import (
    CompactionPolicy,
    DataDir,
    KVStateMachine,
    LevelDBStorage,
    keys,
    open_store,
)
from kvraft.storage import datadir as datadir_module
from kvraft.storage import snapshot_install as install_module
from kvraft.storage.snapshot import StagedSnapshot
from tests.storage.crash_child import command, make_entry
from tests.storage.test_crash import Model

SEED = 20240611
POLICY = CompactionPolicy(snapshot_entries=24, snapshot_log_bytes=1 << 30,
                          trailing_entries=4)
STEPS = 90
CUTS_PER_RUN = 40
RANDOM_SUBSETS_PER_CUT = 3

Op = tuple[bytes, bytes | None]


@dataclass
class WriteLog:
    """Every write made through a RecordingDB, in order: (sync, ops)."""

    writes: list[tuple[bool, list[Op]]] = field(default_factory=list)


class RecordingBatch:
    def __init__(self, owner: RecordingDB, sync: bool) -> None:
        self._owner = owner
        self._sync = sync
        self._ops: list[Op] = []

    def put(self, key: bytes, value: bytes) -> None:
        self._ops.append((bytes(key), bytes(value)))

    def delete(self, key: bytes) -> None:
        self._ops.append((bytes(key), None))

    def write(self) -> None:
        self._owner.record(self._ops, self._sync)
        self._ops = []

    def __enter__(self) -> RecordingBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.write()


class RecordingDB:
    """A plyvel.DB whose writes are also appended to a WriteLog (reads pass through).
    The real writes are unsynced: durability is what the log says, not the disk."""

    def __init__(self, db: plyvel.DB, log: WriteLog) -> None:
        self._db = db
        self.log = log

    def record(self, ops: list[Op], sync: bool) -> None:
        with self._db.write_batch() as batch:
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
        self.log.writes.append((sync, list(ops)))

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self.record([(key, value)], sync)

    def delete(self, key: bytes, sync: bool = False) -> None:
        self.record([(key, None)], sync)

    def write_batch(self, sync: bool = False, **kwargs: Any) -> RecordingBatch:
        return RecordingBatch(self, sync)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteLog]:
    """While active, every DataDir opened records its writes into the yielded log."""
    log = WriteLog()
    real_open_db = datadir_module.DataDir._open_db

    def open_db(path: Path, db_path: Path, write_buffer_bytes: int | None) -> RecordingDB:
        return RecordingDB(real_open_db(path, db_path, write_buffer_bytes), log)

    monkeypatch.setattr(datadir_module.DataDir, "_open_db", staticmethod(open_db))
    yield log
    monkeypatch.undo()


def power_cut(source: Path, target: Path, log: WriteLog, cut: int,
              keep_unsynced: random.Random | None) -> Path:
    """The directory a power loss just before write `cut` may leave: META and staged
    snapshots as they are (both are fsynced by their writers), every synced write, and
    the unsynced writes `keep_unsynced` picks (None: lose all of them)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(source / datadir_module.META_NAME, target / datadir_module.META_NAME)
    shutil.copytree(source / datadir_module.SNAP_DIR_NAME,
                    target / datadir_module.SNAP_DIR_NAME)
    db = plyvel.DB(str(target / datadir_module.DB_NAME), create_if_missing=True)
    try:
        for sync, ops in log.writes[:cut]:
            if not sync and (keep_unsynced is None or keep_unsynced.random() < 0.5):
                continue
            with db.write_batch() as batch:
                for key, value in ops:
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
    finally:
        db.close()
    return target


def cut_points(total: int, rng: random.Random) -> list[int]:
    return sorted({total, *rng.sample(range(1, total + 1), min(total, CUTS_PER_RUN))})


# --- the log, apply and compaction ---------------------------------------------------
def run_node_like_workload(path: Path, log: WriteLog
                           ) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """Persist entries (synced), apply what is committed, compact by POLICY — the
    storage calls of a node's rounds. Returns the term of every entry and the commits
    reported durable: (w, commit) = a cut that keeps the first w writes keeps commit."""
    rng = random.Random(SEED)
    terms: dict[int, int] = {}
    reported: list[tuple[int, int]] = []
    with DataDir.open(path, 1) as dd:
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        store.initialize(eraftpb.ConfState(voters=[1]))
        for _ in range(STEPS):
            first = store.last_index() + 1
            entries = [make_entry(SEED, i, 1) for i in range(first, first + rng.choice((1, 2, 5)))]
            commit = entries[-1].index - rng.randrange(0, 2)
            store.persist(entries, eraftpb.HardState(term=1, vote=1, commit=commit))
            reported.append((len(log.writes), commit))  # persist returned: durable
            for e in entries:
                terms[e.index] = e.term
            while sm.applied_index < commit:
                sm.apply(store.entries(sm.applied_index + 1, commit + 1))
            store.maybe_compact(sm.applied_index, POLICY)
    return terms, reported


def check_log_and_state_machine(path: Path, terms: dict[int, int], reported: int) -> None:
    with DataDir.open(path, 1) as dd:  # a hole in the log or damage raises here
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        hs = store.hard_state()
        assert hs.commit >= reported, "a commit reported durable was lost"
        first = store.first_index()
        assert sm.applied_index >= first - 1, (
            f"the log was compacted to {first} but the state machine's durable applied "
            f"index is {sm.applied_index}: entries it still needs are gone")
        assert sm.applied_index <= store.last_index()
        for entry in store.entries(first, store.last_index() + 1):
            assert entry.data == command(SEED, entry.index, entry.term)
        model = Model(SEED)
        model.terms = dict(terms)
        model.replay_to(sm.applied_index)
        assert dict(sm.scan(b"", b"", 0)[0]) == model.kv, (
            f"the state machine at applied index {sm.applied_index} differs from a replay "
            "of the log: an earlier apply was lost while a later one survived")


def test_power_loss_at_any_write_keeps_log_and_state_machine_consistent(
        tmp_path: Path, recording: WriteLog) -> None:
    source = tmp_path / "node"
    terms, milestones = run_node_like_workload(source, recording)
    total = len(recording.writes)
    assert sum(1 for sync, _ in recording.writes if sync) > STEPS  # the workload ran
    rng = random.Random(SEED)
    for cut in cut_points(total, rng):
        reported = max((c for w, c in milestones if w <= cut), default=0)
        adversaries: list[random.Random | None] = [None] + [
            random.Random(f"{SEED}:{cut}:{i}") for i in range(RANDOM_SUBSETS_PER_CUT)]
        for keep in adversaries:
            target = power_cut(source, tmp_path / "cut", recording, cut, keep)
            try:
                check_log_and_state_machine(target, terms, reported)
            except AssertionError as e:
                how = "all unsynced writes lost" if keep is None else "some unsynced lost"
                raise AssertionError(f"power cut before write {cut}/{total} ({how}): "
                                     f"{e}") from e


# --- a snapshot install ----------------------------------------------------------------
IMAGE_KEYS = 400
OLD_KEYS = 300


def build_image(path: Path, index: int, term: int) -> Path:
    """A snapshot stream file of IMAGE_KEYS keys b"new..." at (index, term)."""
    with DataDir.open(path, 9) as dd:
        with dd.db.write_batch() as wb:
            for i in range(IMAGE_KEYS):
                wb.put(keys.kv_key(b"new%05d" % i), b"N" * 50)
            wb.put(keys.APPLIED, keys.pack_index_term(index, term))
            wb.put(keys.CONF_STATE, eraftpb.ConfState(voters=[1]).SerializeToString())
        image = path.with_suffix(".image")
        with KVStateMachine(dd).create_snapshot() as handle, open(image, "wb") as f:
            for chunk in handle.chunks():
                f.write(chunk)
    return image


def check_old_or_new(path: Path, old_applied: int, new_index: int) -> str:
    with open_store(path, 1) as opened:  # redoes an install a crash interrupted
        store, sm = opened.log, opened.sm
        held = dict(sm.scan(b"", b"", 0)[0])
        if sm.applied_index == new_index:
            assert held == {b"new%05d" % i: b"N" * 50 for i in range(IMAGE_KEYS)}, (
                f"installed snapshot at {new_index} but the data is mixed or partial: "
                f"{sum(k.startswith(b'new') for k in held)} of {IMAGE_KEYS} new keys, "
                f"{sum(k.startswith(b'old') for k in held)} old keys")
            assert store.first_index() == new_index + 1
            return "new"
        assert sm.applied_index <= old_applied
        assert not any(k.startswith(b"new") for k in held), "new keys without the install"
        return "old"


def test_power_loss_during_a_snapshot_install_leaves_old_or_new(
        tmp_path: Path, recording: WriteLog, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small batches, so the install is many writes and a cut can fall between them.
    monkeypatch.setattr(install_module, "INSTALL_BATCH_BYTES", 2000)
    monkeypatch.setattr(install_module, "CLEAR_BATCH_KEYS", 50)
    new_index = 1000
    image = build_image(tmp_path / "src", new_index, 2)
    start = len(recording.writes)
    source = tmp_path / "node"
    with DataDir.open(source, 1) as dd:
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        store.initialize(eraftpb.ConfState(voters=[1]))
        entries = [eraftpb.Entry(index=i + 1, term=1, data=b"") for i in range(OLD_KEYS)]
        store.persist(entries, eraftpb.HardState(term=1, commit=OLD_KEYS))
        with dd.db.write_batch(sync=True) as wb:  # the old state, durable
            for i in range(OLD_KEYS):
                wb.put(keys.kv_key(b"old%05d" % i), b"O" * 50)
            wb.put(keys.APPLIED, keys.pack_index_term(OLD_KEYS, 1))
        sm = KVStateMachine(dd)
        install_from = len(recording.writes)
        staged_path = dd.snap_dir / "00000000000000001000-2-test.snap"
        shutil.copyfile(image, staged_path)
        meta = eraftpb.SnapshotMetadata(index=new_index, term=2)
        meta.conf_state.voters.append(1)
        sm.install_snapshot(StagedSnapshot(staged_path, meta, IMAGE_KEYS), store)
        assert sm.applied_index == new_index
        shutil.copyfile(image, staged_path)  # for the cuts: it existed until the end
    del recording.writes[:start]  # the image's own directory is not under test
    install_from -= start
    total = len(recording.writes)
    assert total - install_from > 10, "the install was not split into many writes"
    outcomes = {"old": 0, "new": 0}
    for cut in range(install_from, total + 1):
        for keep in (None, random.Random(f"{SEED}:{cut}")):
            target = power_cut(source, tmp_path / "cut", recording, cut, keep)
            try:
                outcomes[check_old_or_new(target, OLD_KEYS, new_index)] += 1
            except AssertionError as e:
                raise AssertionError(f"power cut before write {cut}/{total} of the "
                                     f"install: {e}") from e
    assert outcomes["old"] and outcomes["new"]
