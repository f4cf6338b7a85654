"""The process the crash tests SIGKILL (run as `python -m tests.storage.crash_child`).

`log DIR SEED`: appends and applies under load, forever. Every entry's content is a
pure function of (SEED, index, term), so the parent can check every entry and replay
the state machine. After each synced persist it prints one line,
`durable FIRST LAST TERM COMMIT`: entries FIRST..LAST now carry TERM, and COMMIT is
committed — the writes the parent requires to survive. On start it first applies the
committed entries the previous (killed) incarnation had not applied yet.

`install DIR IMAGE INDEX TERM`: installs the snapshot stream file IMAGE (copied into
the data dir's snap/ first), printing `opened` before and `installed` after.

`bootstrap DIR WHEN:STEP`: bootstraps a founding member's store (server
storage_adapter.open_store) and SIGKILLs itself WHEN (`before` or `after`) the first call
of STEP (`persist`: the Raft log's bootstrap write; `set_cluster_id`: the META write);
prints `bootstrapped` if the step was never reached.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import sys
from pathlib import Path

from kvraft.raft import eraftpb
from kvraft.storage import (
    CompactionPolicy,
    DataDir,
    KVStateMachine,
    LevelDBStorage,
    batch_command,
    cas_command,
    delete_command,
    open_store,
    put_command,
)
from kvraft.storage.snapshot import StagedSnapshot

KEYS = [b"key%02d" % i for i in range(40)]
POLICY = CompactionPolicy(snapshot_entries=300, snapshot_log_bytes=1 << 30,
                          trailing_entries=50)
UNCOMMITTED_TAIL = 3
APPLY_PAGE_BYTES = 1 << 20


def command(seed: int, index: int, term: int) -> bytes:
    """The deterministic data of entry (index, term)."""
    rng = random.Random(f"{seed}:{index}:{term}")
    key = rng.choice(KEYS)
    value = b"%d.%d" % (index, term) + b"x" * rng.randrange(0, 200)
    kind = rng.randrange(10)
    if kind < 5:
        return put_command(key, value, request_id=index)
    if kind < 7:
        return delete_command(key, request_id=index)
    if kind < 9:
        expected = None if rng.random() < 0.3 else b"%d" % rng.randrange(10**6)
        return cas_command(key, expected, value, request_id=index)
    ops: list[tuple[bytes, bytes | None]] = [
        (rng.choice(KEYS), None if rng.random() < 0.4 else value) for _ in range(4)]
    return batch_command(ops, request_id=index)


def make_entry(seed: int, index: int, term: int) -> eraftpb.Entry:
    return eraftpb.Entry(index=index, term=term, data=command(seed, index, term))


def apply_committed(store: LevelDBStorage, sm: KVStateMachine, commit: int) -> None:
    while sm.applied_index < commit:
        sm.apply(store.entries(sm.applied_index + 1, commit + 1, APPLY_PAGE_BYTES))


def run_log(path: str, seed: int) -> None:
    dd = DataDir.open(path, 1)
    store, sm = LevelDBStorage(dd), KVStateMachine(dd)
    hs = store.hard_state()
    apply_committed(store, sm, hs.commit)  # the previous incarnation's unapplied tail
    rng = random.Random(f"{seed}:driver:{store.last_index()}")
    term = max(hs.term, 1)
    print("ready", flush=True)
    while True:
        last, commit = store.last_index(), store.hard_state().commit
        first = last + 1
        if last > commit and rng.random() < 0.15:
            term += 1  # a new leader overwrites the uncommitted tail (a conflict)
            first = rng.randint(commit + 1, last)
        count = rng.choice((1, 1, 2, 8, 64))
        entries = [make_entry(seed, i, term) for i in range(first, first + count)]
        new_last = first + count - 1
        new_commit = max(commit, new_last - UNCOMMITTED_TAIL)
        store.persist(entries, eraftpb.HardState(term=term, vote=1, commit=new_commit))
        print(f"durable {first} {new_last} {term} {new_commit}", flush=True)
        apply_committed(store, sm, new_commit)
        store.maybe_compact(sm.applied_index, POLICY)


def run_install(path: str, image: str, index: int, term: int) -> None:
    opened = open_store(path, 1)  # finishes the install the previous round's kill cut
    dd, store, sm = opened.datadir, opened.log, opened.sm
    print("opened", flush=True)
    staged_path = dd.snap_dir / (Path(image).name + ".snap")
    shutil.copyfile(image, staged_path)
    meta = eraftpb.SnapshotMetadata(index=index, term=term)
    meta.conf_state.voters.append(1)
    sm.install_snapshot(StagedSnapshot(staged_path, meta, 0), store)
    print("installed", flush=True)
    dd.close()


BOOTSTRAP_CLUSTER = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}


def bootstrap_config(path: str):  # -> NodeConfig; imported lazily, the server is heavy
    from kvraft.server import NodeConfig

    return NodeConfig(node_id=1, data_dir=path, listen="127.0.0.1:7101",
                      peer_listen="127.0.0.1:7001", initial_cluster=dict(BOOTSTRAP_CLUSTER))


def run_bootstrap(path: str, kill_point: str) -> None:
    from kvraft.server import storage_adapter

    when, step = kill_point.split(":")
    owner = {"persist": LevelDBStorage, "set_cluster_id": DataDir}[step]
    original = getattr(owner, step)

    def wrapped(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, step, wrapped)
    store = storage_adapter.open_store(bootstrap_config(path))
    store.close()
    print("bootstrapped", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "log":
        run_log(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "bootstrap":
        run_bootstrap(sys.argv[2], sys.argv[3])
    else:
        run_install(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
