"""Memory soak: a 3-node kvraft cluster under a sustained write load, RSS sampled.

    python -m tests.bench.soak [--minutes 10] [--clients 64] [--value-size 100]

Writes run through the benchmark load generator (kvraft.bench.loadgen) in slices of
`--slice-s`; a sampler thread reads VmRSS from /proc/PID/status of every node every
`--sample-s` and the script prints, per node, the first, last and largest RSS, plus how
many times each node compacted its log (its "compacted the log" log lines), so a store
that keeps its whole log in memory, or never compacts, shows up. Not named bench_*.py:
`make bench` should not run ten minutes of load. It prints; it asserts nothing.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from kvraft.bench.loadgen import LoadSpec, run_load
from tests.bench.compare import ROOT, kvraft_cluster

MIB = 1 << 20
RSS_LIMIT_MIB = 300  # the target, printed next to the result


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples every pid's RSS until stopped; keeps first, last and max per pid."""

    def __init__(self, pids: list[int], interval_s: float) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval_s = interval_s
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.max: dict[int, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for pid in self.pids:
            rss = rss_bytes(pid)
            if rss is None:
                continue
            self.first.setdefault(pid, rss)
            self.last[pid] = rss
            self.max[pid] = max(self.max.get(pid, 0), rss)
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.interval_s + 5)
        self.sample()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--slice-s", type=float, default=30.0)
    p.add_argument("--sample-s", type=float, default=2.0)
    args = p.parse_args(argv)
    run_dir = ROOT / ".run"
    base = Path(tempfile.mkdtemp(prefix="kvraft-soak-",
                                 dir=run_dir if run_dir.is_dir() else None))
    total_ops = 0
    errors = 0
    try:
        with kvraft_cluster(args.nodes, base, log_level="info") as system:
            sampler = RssSampler(system.pids, args.sample_s)
            sampler.sample()
            sampler.start()
            deadline = time.monotonic() + args.minutes * 60
            try:
                while (left_s := deadline - time.monotonic()) > 1:
                    result = run_load(LoadSpec(
                        endpoints=system.endpoints, clients=args.clients,
                        duration_s=min(args.slice_s, left_s), value_size=args.value_size,
                        keys=args.keys))
                    total_ops += result.ops
                    errors += sum(result.errors.values())
                    rss = max(sampler.max.values(), default=0)
                    print(f"  {result.ops_per_s:8,.0f} writes/s   max RSS so far "
                          f"{rss / MIB:6.1f} MiB", flush=True)
            finally:
                sampler.stop()
            compactions = [(base / f"kvraft{i + 1}.log").read_text(errors="replace")
                           .count("compacted the log") for i in range(args.nodes)]
        print(f"{args.minutes:g} min of writes ({args.clients} clients, {args.value_size} B "
              f"values, {args.keys} keys): {total_ops:,} writes, {errors} errors, "
              f"{sampler.samples} RSS samples")
        print("| node | RSS first MiB | RSS last MiB | RSS max MiB | log compactions |")
        print("|---|---|---|---|---|")
        for i, pid in enumerate(system.pids):
            print(f"| {i + 1} | {sampler.first.get(pid, 0) / MIB:.1f} | "
                  f"{sampler.last.get(pid, 0) / MIB:.1f} | {sampler.max.get(pid, 0) / MIB:.1f} | "
                  f"{compactions[i]} |")
        worst = max(sampler.max.values(), default=0) / MIB
        verdict = "under" if worst < RSS_LIMIT_MIB else "OVER"
        print(f"max RSS of any node: {worst:.1f} MiB ({verdict} the {RSS_LIMIT_MIB} MiB target)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
