"""A quick measure of the MVCC store over a plyvel DB (not a test; run by hand):

    .venv/bin/python tests/storage/mvcc/bench_mvcc.py [--keys 10000] [--versions 5]

Loads `keys` keys, rewrites each `versions` times (one revision per put, synced
batches unless --no-sync), then times ranges over all of them at the current and at
the first revision, a count, a sort with a limit, a watch replay from the start, and
compacting everything, and reports the peak Python memory (tracemalloc) of a
limited range against an unlimited one."""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable

import plyvel

from kvraft.storage.mvcc import (
    MVCCBatch,
    MVCCStore,
    PlyvelReader,
    PutRequest,
    RangeLimits,
    RangeRequest,
    SortOrder,
    SortTarget,
)


def timed(label: str, fn: Callable[[], object], unit_count: int = 0) -> object:
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    rate = f"  ({unit_count / dt:,.0f}/s)" if unit_count else ""
    print(f"{label:<46} {dt * 1000:9.1f} ms{rate}")
    return out


def peak_kib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--no-sync", action="store_true")
    args = ap.parse_args()
    path = tempfile.mkdtemp(prefix="bench-mvcc-")
    db = plyvel.DB(path, create_if_missing=True)
    try:
        store = MVCCStore(db, range_limits=RangeLimits(entries_max=10**7, bytes_max=1 << 34),
                          sync=not args.no_sync)
        n, v = args.keys, args.versions

        def load_batched() -> None:  # as an apply would: many entries per batch
            for version in range(v):
                for lo in range(0, n, 1000):
                    batch = MVCCBatch(PlyvelReader(db))
                    for i in range(lo, min(lo + 1000, n)):
                        batch.put(PutRequest(b"key/%08d" % i, b"value-%d" % version))
                    wb = db.write_batch(sync=not args.no_sync)
                    for k, val in batch.writes.items():
                        wb.delete(k) if val is None else wb.put(k, val)
                    wb.write()
        timed(f"load {n} keys x {v} versions (1000 puts/batch)", load_batched, n * v)
        timed("100 puts, one request each", lambda: [store.put(PutRequest(b"one/%d" % i))
                                                       for i in range(100)], 100)
        everything = RangeRequest(b"key/", b"key0")
        timed(f"range of {n} keys, current", lambda: store.range(everything), n)
        timed(f"range of {n} keys at the first revision",
              lambda: store.range(RangeRequest(b"key/", b"key0", revision=n + 1)), n)
        timed(f"count_only over {n} keys", lambda: store.range(
            RangeRequest(b"key/", b"key0", count_only=True)), n)
        timed(f"limit 10 sorted by mod desc over {n} keys", lambda: store.range(
            RangeRequest(b"key/", b"key0", limit=10, sort_target=SortTarget.MOD,
                         sort_order=SortOrder.DESCEND)), n)
        timed(f"watch replay of {n * v} events", lambda: sum(
            1 for _ in store.events(b"key/", b"key0", 2)), n * v)
        limited = peak_kib(lambda: store.range(RangeRequest(b"key/", b"key0", limit=10)))
        whole = peak_kib(lambda: store.range(everything))
        print(f"{'peak Python memory: limit 10 / no limit':<46} {limited:9.0f} KiB / "
              f"{whole:.0f} KiB")
        store.compact(store.revision)

        def compact_all() -> int:
            steps = 1
            while store.compact_step(1000):
                steps += 1
            return steps
        timed(f"compact {n * v} revisions, steps of 1000", compact_all, n * v)
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
