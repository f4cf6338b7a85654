#!/usr/bin/env python3
"""Storage throughput: durable Raft-log appends beside the disk's raw fsync rate, and
state-machine apply throughput. Not a test: `make bench` runs it; it prints a table.

Rows:
* raw fdatasync / fsync: append 128 bytes (or 7 KiB, the size of a 64-entry batch) to
  a file and sync it, in a loop — what one synced write costs on this disk (LevelDB
  syncs its log with fdatasync on Linux).
* persist, N entries/batch: `LevelDBStorage.persist` of N entries of a ~100-byte Put
  and a hard state, one synced WriteBatch each (one Ready = one fsync). With group
  commit, batches/s should come close to the raw sync rate of a write of that size
  (the last column), so entries/s grows with N.
* apply, N entries/call: `KVStateMachine.apply` of N Put entries (unsynced batches;
  the next synced log write makes them durable).
Rates count time inside the storage call only (building the entries is not timed).

    .venv/bin/python tests/bench/bench_storage.py [--seconds 2] [--dir DIR]

DIR (default: a temporary directory under the system temp dir) should be on the disk
the data directory will live on.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kvraft.raft import eraftpb
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, put_command

VALUE = b"v" * 80


def timed(seconds: float, prepare: Callable[[], object],
          step: Callable[[object], int]) -> tuple[int, int, float]:
    """Until `seconds` of wall time pass, build an input with `prepare` (not timed) and
    run `step` on it (timed; returns items done): (calls, items, seconds in step)."""
    calls = items = 0
    in_step = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        arg = prepare()
        t0 = time.perf_counter()
        items += step(arg)
        in_step += time.perf_counter() - t0
        calls += 1
    return calls, items, in_step


def raw_sync(path: Path, seconds: float, sync: Callable[[int], None],
             record_bytes: int = 128) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    record = b"x" * record_bytes
    try:
        def step(_: object) -> int:
            os.write(fd, record)
            sync(fd)
            return 1
        calls, _, elapsed = timed(seconds, lambda: None, step)
    finally:
        os.close(fd)
        path.unlink()
    return calls / elapsed


def persist_rate(root: Path, per_batch: int, seconds: float) -> tuple[float, float]:
    with DataDir.open(root / f"persist{per_batch}", 1) as dd:
        store = LevelDBStorage(dd)
        next_index = [1]

        def prepare() -> list[eraftpb.Entry]:
            first = next_index[0]
            next_index[0] = first + per_batch
            return [eraftpb.Entry(index=i, term=1, data=put_command(b"k%d" % i, VALUE, i))
                    for i in range(first, first + per_batch)]

        def step(entries: list[eraftpb.Entry]) -> int:
            store.persist(entries, eraftpb.HardState(term=1, vote=1,
                                                     commit=entries[0].index - 1))
            return len(entries)

        calls, items, elapsed = timed(seconds, prepare, step)
    return calls / elapsed, items / elapsed


def apply_rate(root: Path, per_call: int, seconds: float) -> float:
    with DataDir.open(root / f"apply{per_call}", 1) as dd:
        sm = KVStateMachine(dd)
        next_index = [1]

        def prepare() -> list[eraftpb.Entry]:
            first = next_index[0]
            next_index[0] = first + per_call
            return [eraftpb.Entry(index=i, term=1,
                                  data=put_command(b"k%d" % (i % 100_000), VALUE, i))
                    for i in range(first, first + per_call)]

        def step(entries: list[eraftpb.Entry]) -> int:
            sm.apply(entries)
            return len(entries)

        _, items, elapsed = timed(seconds, prepare, step)
    return items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per row")
    parser.add_argument("--dir", type=Path, default=None, help="where to write")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kvraft-bench-storage-", dir=args.dir))
    try:
        fdatasync = raw_sync(root / "raw", args.seconds, os.fdatasync)
        fdatasync_7k = raw_sync(root / "raw", args.seconds, os.fdatasync, 64 * 112)
        fsync = raw_sync(root / "raw", args.seconds, os.fsync)
        rows: list[tuple[str, str, str, str]] = [
            ("raw fdatasync (128 B append)", f"{fdatasync:,.0f}", "-", "1.00"),
            ("raw fdatasync (7 KiB append)", f"{fdatasync_7k:,.0f}", "-", "1.00"),
            ("raw fsync (128 B append)", f"{fsync:,.0f}", "-", f"{fsync / fdatasync:.2f}"),
        ]
        # Each batch is compared with a raw sync of about its own size.
        for per_batch, raw in ((1, fdatasync), (64, fdatasync_7k)):
            batches, entries = persist_rate(root, per_batch, args.seconds)
            rows.append((f"persist, {per_batch} entries/batch", f"{batches:,.0f}",
                         f"{entries:,.0f}", f"{batches / raw:.2f}"))
        for per_call in (1, 64):
            entries = apply_rate(root, per_call, args.seconds)
            rows.append((f"apply, {per_call} entries/call", "-", f"{entries:,.0f}", "-"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    header = ("storage (dir: " + str(root.parent) + ")", "syncs or batches/s",
              "entries/s", "vs raw sync of its size")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join([row[0].ljust(widths[0]),
                         *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]))


if __name__ == "__main__":
    main()
