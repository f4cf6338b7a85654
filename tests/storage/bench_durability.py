"""What the power-loss-safe storage costs (issue 11, item 4); not a test, run by hand:

    .venv/bin/python -m tests.storage.bench_durability apply buffered 400 1
    .venv/bin/python -m tests.storage.bench_durability apply sync-apply 400 1
    .venv/bin/python -m tests.storage.bench_durability install 300000

`apply MODE ROUNDS ENTRIES`: rounds/s of persist(ENTRIES entries, synced) + apply, the
storage calls of a node's rounds. `buffered` is the storage as it is (applies ride in
the next persist's batch); `sync-apply` adds a synced flush after every apply, the
alternative the buffer avoids. (The numbers in the item-4 commit for the code before
it came from the same loop run on that commit.) `install N`: seconds to install a
snapshot of N keys over N old keys (every install batch is synced).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from kvraft.raft import eraftpb
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, keys, put_command
from kvraft.storage.snapshot import StagedSnapshot

FILL_BATCH_KEYS = 10_000


def bench_apply(mode: str, rounds: int, per_round: int, root: Path) -> str:
    with DataDir.open(root / "n", 1) as dd:
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        store.initialize(eraftpb.ConfState(voters=[1]))
        index = 0
        t0 = time.perf_counter()
        for _ in range(rounds):
            entries = [eraftpb.Entry(index=index + i + 1, term=1,
                                     data=put_command(b"k%07d" % (index + i), b"v" * 100))
                       for i in range(per_round)]
            store.persist(entries, eraftpb.HardState(term=1, commit=index + per_round))
            sm.apply(entries)
            if mode == "sync-apply":
                dd.apply_buffer.flush()
            index += per_round
        elapsed = time.perf_counter() - t0
    return (f"{mode} entries/round {per_round}: {rounds / elapsed:.0f} rounds/s "
            f"({elapsed / rounds * 1e3:.2f} ms/round)")


def _fill(dd: DataDir, prefix: bytes, count: int) -> None:
    for start in range(0, count, FILL_BATCH_KEYS):
        with dd.db.write_batch() as wb:
            for i in range(start, min(count, start + FILL_BATCH_KEYS)):
                wb.put(keys.kv_key(prefix + b"%08d" % i), prefix[:1] * 100)


def bench_install(count: int, root: Path) -> str:
    with DataDir.open(root / "src", 9) as dd:
        _fill(dd, b"new", count)
        dd.db.put(keys.APPLIED, keys.pack_index_term(5000, 2), sync=True)
        with KVStateMachine(dd).create_snapshot() as handle, open(root / "image", "wb") as f:
            for chunk in handle.chunks():
                f.write(chunk)
    with DataDir.open(root / "dst", 1) as dd:
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        store.initialize(eraftpb.ConfState(voters=[1]))
        _fill(dd, b"old", count)
        staged = dd.snap_dir / "bench.snap"
        shutil.copyfile(root / "image", staged)
        meta = eraftpb.SnapshotMetadata(index=5000, term=2)
        meta.conf_state.voters.append(1)
        t0 = time.perf_counter()
        sm.install_snapshot(StagedSnapshot(staged, meta, count), store)
        return f"install {count} keys: {time.perf_counter() - t0:.2f} s"


def main(argv: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="kvraft-bench-"))
    try:
        if argv[0] == "apply":
            print(bench_apply(argv[1], int(argv[2]), int(argv[3]), root))
        else:
            print(bench_install(int(argv[1]), root))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main(sys.argv[1:])
