"""The scale probe (issue 11): bulk-load N keys into a 3-node cluster, restart it, grow it.

    python tests/bench/bench_scale.py [--keys 200000] [--batch 2000] [--writers 4]

Steps, each timed:
1. load: `writers` threads share one kvraft.client.Client and send Client.batch calls of
   `batch` puts of random `value-size`-byte values, keys in a scrambled order, until
   `keys` keys are written (a failed batch is counted, not retried);
2. per member: RSS (now and peak) and data-directory size;
3. restart: every member is stopped cleanly and started again; the time until the
   members agree on a leader, then each member's RSS once it has applied everything;
4. learner: a fourth node joins as a learner; the time until it has applied the
   leader's commit index, and whether it got there by a snapshot.

Leader changes and the event loop's largest lag are read from each member's metrics
(kvraft_leader_changes, kvraft_event_loop_lag_max_seconds). Numbers are printed, never
asserted: this is a probe for people, not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `make bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvraft.client import Client, Put
from kvraft.proto import kvraft_pb2 as pb
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
CATCH_UP_TIMEOUT_S = 600.0
SAMPLE_READS = 200
# Production timing (the test harness defaults to 50 ms ticks).
TICK_INTERVAL_S = 0.1


def key_of(i: int, n: int) -> bytes:
    """The i-th key of a load of n, in an order scrambled by a bijection of [0, n)."""
    return b"scale/%012d" % ((i * 2_654_435_761) % _coprime_modulus(n))


def _coprime_modulus(n: int) -> int:
    # 2,654,435,761 is prime, so i -> i * it mod n is a bijection unless n is a multiple
    # of it; then fall back to n + 1.
    return n if n % 2_654_435_761 else n + 1


def rss_mib(pid: int) -> tuple[float, float]:
    """(RSS now, peak RSS) of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_mib(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            # (A LevelDB compaction may remove a file meanwhile.)
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total / MIB


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample `name` (a Counter's _total included)."""
    m = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


@dataclass
class MemberSample:
    rss_mib: float
    peak_rss_mib: float
    data_mib: float
    leader_changes: float
    lag_max_s: float
    cpu_s: float = 0.0      # CPU seconds the member used during the load


@dataclass
class Report:
    keys: int
    load_s: float = 0.0
    failures: int = 0
    first_failure: str = ""
    missing: int = 0
    loaded: dict[int, MemberSample] = field(default_factory=dict)
    restart_to_leader_s: float = 0.0
    restart_caught_up_s: float = 0.0
    restarted_rss_mib: dict[int, float] = field(default_factory=dict)
    restarted_lag_max_s: dict[int, float] = field(default_factory=dict)
    learner_s: float = 0.0
    learner_snapshots: float = 0.0
    learner_rss_mib: float = 0.0
    after_learner_rss_mib: dict[int, float] = field(default_factory=dict)
    leader_changes_during_load: float = 0.0
    leader_changes_total: float = 0.0


def sample(cluster: LocalCluster, node_id: int) -> MemberSample:
    node = cluster.nodes[node_id]
    assert node.pid is not None
    rss, peak = rss_mib(node.pid)
    text = cluster.metrics_text(node_id)
    return MemberSample(rss, peak, dir_mib(node.data_dir),
                        metric(text, "kvraft_leader_changes"),
                        metric(text, "kvraft_event_loop_lag_max_seconds"))


def leader_changes(cluster: LocalCluster, ids: list[int]) -> float:
    return sum(metric(cluster.metrics_text(i), "kvraft_leader_changes") for i in ids)


def load(cluster: LocalCluster, report: Report, batch: int, writers: int,
         value_size: int) -> None:
    n = report.keys
    with Client(cluster.endpoints().split(","), timeout=30.0) as kv:
        starts = iter(range(0, n, batch))
        lock = threading.Lock()
        failures: list[BaseException] = []

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            while True:
                with lock:
                    start = next(starts, None)
                if start is None:
                    return
                ops = [Put(key_of(i, n), rng.randbytes(value_size))
                       for i in range(start, min(start + batch, n))]
                try:
                    kv.batch(ops)
                except Exception as e:  # counted and reported; the others go on
                    failures.append(e)

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.load_s = time.perf_counter() - t0
        report.failures = len(failures)
        report.first_failure = repr(failures[0]) if failures else ""
        sampled = random.Random(1).sample(range(n), min(SAMPLE_READS, n))
        report.missing = sum(kv.get(key_of(i, n)) is None for i in sampled)


def caught_up(cluster: LocalCluster, node_id: int, index: int) -> bool:
    return cluster.status(node_id, timeout_s=2.0).header.applied_index >= index


def restart_all(cluster: LocalCluster, report: Report, ids: list[int]) -> None:
    for i in ids:
        cluster.terminate(i)
    t0 = time.perf_counter()
    for i in ids:
        cluster.launch(i)
    leader = cluster.wait_leader(ids, timeout_s=CATCH_UP_TIMEOUT_S)
    report.restart_to_leader_s = time.perf_counter() - t0
    commit = cluster.status(leader).commit_index
    for i in ids:
        wait_until(lambda i=i: caught_up(cluster, i, commit), CATCH_UP_TIMEOUT_S,
                   f"member {i} to apply {commit} after the restart")
    report.restart_caught_up_s = time.perf_counter() - t0
    for i in ids:
        s = sample(cluster, i)
        report.restarted_rss_mib[i] = s.rss_mib
        report.restarted_lag_max_s[i] = s.lag_max_s


def add_learner(cluster: LocalCluster, report: Report, ids: list[int]) -> None:
    learner = cluster.define(max(ids) + 1)
    cluster.launch(learner.id, join=True)
    cluster.wait_serving(learner.id)
    leader = cluster.wait_leader(ids)
    t0 = time.perf_counter()
    retry_unavailable(lambda: cluster.cluster_stub(leader).AddMember(pb.AddMemberRequest(
        id=learner.id, peer_address=learner.peer_address,
        client_address=learner.client_address, learner=True), timeout=10))
    commit = cluster.status(leader).commit_index
    wait_until(lambda: caught_up(cluster, learner.id, commit), CATCH_UP_TIMEOUT_S,
               "the learner to catch up")
    report.learner_s = time.perf_counter() - t0
    # The install's counter is bumped just after the applied index moves: give it a
    # moment, or a learner that did install a snapshot would read as "from the log".
    deadline = time.monotonic() + 5.0
    while True:
        text = cluster.metrics_text(learner.id)
        report.learner_snapshots = metric(text, "kvraft_snapshots_installed")
        if report.learner_snapshots or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert learner.pid is not None
    report.learner_rss_mib = rss_mib(learner.pid)[0]
    for i in ids:
        report.after_learner_rss_mib[i] = rss_mib(cluster.nodes[i].pid or 0)[0]


def print_report(r: Report, ids: list[int], args: argparse.Namespace) -> None:
    print(f"scale probe: {r.keys:,} keys of {args.value_size} random bytes, batches of "
          f"{args.batch}, {args.writers} writers, 3 members")
    print(f"  load            {r.load_s:8.1f} s  {r.keys / r.load_s:10,.0f} keys/s  "
          f"failed batches {r.failures}  sampled keys missing {r.missing}/{SAMPLE_READS}")
    if r.first_failure:
        print(f"  first failure   {r.first_failure[:200]}")
    print("  member   RSS MiB  peak MiB  data MiB  lag max s  CPU us/key | restarted: RSS MiB"
          "  lag max s  RSS after the learner MiB")
    for i in ids:
        s = r.loaded[i]
        print(f"  {i:6d} {s.rss_mib:9.0f} {s.peak_rss_mib:9.0f} {s.data_mib:9.0f} "
              f"{s.lag_max_s:10.3f} {s.cpu_s / r.keys * 1e6:11.1f} | "
              f"{r.restarted_rss_mib[i]:18.0f} {r.restarted_lag_max_s[i]:10.3f} "
              f"{r.after_learner_rss_mib[i]:26.0f}")
    print(f"  restart         {r.restart_to_leader_s:8.1f} s to a leader, "
          f"{r.restart_caught_up_s:.1f} s until every member applied the commit index")
    print(f"  learner         {r.learner_s:8.1f} s to catch up "
          f"({'by snapshot' if r.learner_snapshots else 'from the log'}), "
          f"RSS {r.learner_rss_mib:.0f} MiB")
    print(f"  leader changes  {r.leader_changes_during_load:8.0f} during the load, "
          f"{r.leader_changes_total:.0f} in all (summed over members' "
          "kvraft_leader_changes, each election counted once per member)")
    print(f"  max event-loop lag {max(s.lag_max_s for s in r.loaded.values()):.3f} s "
          "during the load")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2_000, help="puts per Batch call")
    p.add_argument("--writers", type=int, default=4, help="threads with a batch in flight")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    args = p.parse_args(argv)
    if args.keys <= 0 or args.batch <= 0 or args.writers <= 0 or args.value_size <= 0:
        p.error("--keys, --batch, --writers and --value-size must be positive")
    run_dir = ROOT / ".run"
    run_dir.mkdir(exist_ok=True)
    root = run_dir / f"scale-{os.getpid()}"
    root.mkdir()
    cluster = LocalCluster(root, tick_s=TICK_INTERVAL_S)
    report = Report(keys=args.keys)
    ids = [1, 2, 3]
    try:
        for i in ids:
            cluster.define(i)
        cluster.initial_cluster = {i: cluster.nodes[i].peer_address for i in ids}
        for i in ids:
            cluster.launch(i)
        for i in ids:
            cluster.wait_serving(i)
        cluster.wait_leader(ids)
        before = leader_changes(cluster, ids)
        cpu_before = {i: cpu_s(cluster.nodes[i].pid or 0) for i in ids}
        load(cluster, report, args.batch, args.writers, args.value_size)
        for i in ids:
            report.loaded[i] = sample(cluster, i)
            report.loaded[i].cpu_s = cpu_s(cluster.nodes[i].pid or 0) - cpu_before[i]
        report.leader_changes_during_load = sum(s.leader_changes for s in
                                                report.loaded.values()) - before
        restart_all(cluster, report, ids)
        add_learner(cluster, report, ids)
        report.leader_changes_total = sum(s.leader_changes for s in report.loaded.values()) \
            + leader_changes(cluster, ids)
        print_report(report, ids, args)
    finally:
        if args.keep:
            print(f"kept {root}")
            for node in cluster.nodes.values():
                if node.running():
                    cluster.terminate(node.id)
        else:
            cluster.close()
    return 1 if report.failures or report.missing else 0


if __name__ == "__main__":
    sys.exit(main())
