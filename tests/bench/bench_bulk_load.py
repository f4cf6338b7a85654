"""Bulk loading through the Batch RPC: durable keys per second into a 3-node cluster.

    python tests/bench/bench_bulk_load.py [--keys 200000] [--batch 2000] [--writers 4]

`writers` threads share one kvraft.client.Client and each sends Client.batch calls of
`batch` puts (100-byte values by default) until `keys` keys are written; a batch returns
once its one Raft entry is committed (fsynced on a majority) and applied. Prints keys/s
and MB/s of values, then reads a sample of keys back linearizably so a fast but lossy
load would show. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `make bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvraft.client import Client, Put
from tests.bench.compare import ROOT, kvraft_cluster

SAMPLE_READS = 200


def key_of(i: int) -> bytes:
    return b"bulk/%09d" % i


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--keys", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2_000, help="puts per Batch call")
    p.add_argument("--writers", type=int, default=4, help="threads with a batch in flight")
    p.add_argument("--value-size", type=int, default=100)
    args = p.parse_args(argv)
    assert args.keys > 0 and args.batch > 0 and args.writers > 0
    value = b"v" * args.value_size
    run_dir = ROOT / ".run"
    base = Path(tempfile.mkdtemp(prefix="kvraft-bulk-",
                                 dir=run_dir if run_dir.is_dir() else None))
    try:
        with kvraft_cluster(args.nodes, base) as system, \
                Client(list(system.endpoints), timeout=30.0) as kv:
            starts = iter(range(0, args.keys, args.batch))
            starts_lock = threading.Lock()
            failures: list[BaseException] = []

            def writer() -> None:
                while True:
                    with starts_lock:
                        start = next(starts, None)
                    if start is None:
                        return
                    stop = min(start + args.batch, args.keys)
                    try:
                        kv.batch([Put(key_of(i), value) for i in range(start, stop)])
                    except Exception as e:  # reported below; the others go on
                        failures.append(e)

            threads = [threading.Thread(target=writer) for _ in range(args.writers)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed_s = time.perf_counter() - t0
            missing = sum(kv.get(key_of(i)) != value
                          for i in random.Random(1).sample(range(args.keys),
                                                           min(SAMPLE_READS, args.keys)))
        print(f"bulk load, {args.nodes} nodes: {args.keys:,} keys of {args.value_size} B in "
              f"batches of {args.batch} from {args.writers} writers: {elapsed_s:.2f} s, "
              f"{args.keys / elapsed_s:,.0f} durable keys/s, "
              f"{args.keys * args.value_size / elapsed_s / 1e6:.1f} MB/s of values; "
              f"{len(failures)} failed batches, {missing} of {SAMPLE_READS} sampled keys "
              "not read back")
        if failures:
            print(f"first failure: {failures[0]!r}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
