"""One chaos run: a 5-node cluster in namespaces, clients, the nemesis, the checker.

    python -m tests.chaos.run --seed 7 --duration 300     # what `make chaos` runs

Sequence: remove leftovers of crashed runs; build the network; start the nodes and wait
for a leader; start the clients; apply the seed's fault schedule, then a quiet period;
stop the clients; heal; SIGKILL and restart every node on its data directory; one
linearizable read per key (recorded in the history, so an acknowledged write that was
lost is a violation); check the history. A failing run prints the seed, the schedule
as applied and the smallest failing window, and keeps the nodes' data and logs.

Cleanup happens on every path: `finally` blocks, SIGTERM/SIGHUP turned into SystemExit
(Ctrl-C already raises KeyboardInterrupt), and an atexit hook as the last resort.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.chaos.cluster import Cluster, ServeArgv, kvraft_serve_argv
from tests.chaos.etcd_workload import EtcdStats, EtcdWorkload, check_etcd_workload
from tests.chaos.linearizability import Result, check
from tests.chaos.nemesis import FAULT_KINDS, Nemesis, schedule
from tests.chaos.netns import Network, remove_leftovers
from tests.chaos.workload import Workload

NODES = 5
LEADER_TIMEOUT_S = 60.0
FINAL_READS_TIMEOUT_S = 60.0


@dataclasses.dataclass
class ChaosReport:
    seed: int
    duration_s: float
    workdir: Path
    schedule: list[str]
    nemesis_log: list[str]
    result: Result | None
    final_values: dict[bytes, bytes | None]
    ops: int
    stats: str
    kinds_applied: set[str]
    check_s: float = 0.0
    overlap: bool = False
    read_mode: str = "safe"
    log_tracebacks: dict[int, int] = dataclasses.field(default_factory=dict)
    t0_s: float = 0.0  # monotonic time of the workload's start; history times are relative
    error: str | None = None
    # The etcd workloads (etcd_workload.py): what their checkers found, and counts.
    etcd_problems: list[str] = dataclasses.field(default_factory=list)
    etcd_counts: EtcdStats | None = None

    @property
    def etcd_stats(self) -> str:
        return "" if self.etcd_counts is None else str(self.etcd_counts)

    @property
    def ok(self) -> bool:
        return (self.error is None and self.result is not None and self.result.ok
                and not self.etcd_problems)

    def describe(self, t0_s: float = 0.0) -> str:
        lines = [
            f"chaos run: seed {self.seed}, {self.duration_s:.0f} s, {NODES} nodes -> "
            + ("PASS" if self.ok else "FAIL"),
            f"  replay: make chaos SEED={self.seed} DURATION={self.duration_s:.0f}"
            + (" OVERLAP=1" if self.overlap else "")
            + (f" READ_MODE={self.read_mode}" if self.read_mode != "safe" else ""),
            "  fault schedule (from the seed):",
            *("    " + s for s in self.schedule),
            "  as applied:",
            *("    " + s for s in self.nemesis_log),
            f"  operations: {self.ops} ({self.stats}); checked in {self.check_s:.2f} s",
            "  final reads: " + ", ".join(
                f"{k.decode()}={v.decode() if v else None}" for k, v in self.final_values.items()
            ),
        ]
        if self.etcd_stats:
            lines.append(f"  etcd workloads: {self.etcd_stats}")
        lines.extend(f"  ETCD CHECK FAILED: {p}" for p in self.etcd_problems[:20])
        if self.log_tracebacks:
            lines.append(f"  note: Python tracebacks in node logs (node: count): "
                         f"{self.log_tracebacks}")
        if self.error:
            lines.append(f"  ERROR: {self.error}")
        if self.result is not None:
            lines.append("  " + self.result.describe(t0_s).replace("\n", "\n  "))
        lines.append(f"  node logs and data: {self.workdir}")
        return "\n".join(lines)


_cleanups: list[contextlib.ExitStack] = []


def _cleanup_all() -> None:
    while _cleanups:
        _cleanups.pop().close()


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM / SIGHUP unwind the stack like Ctrl-C does, so `finally` cleans up.
    SIGINT is set explicitly: a shell starts background jobs with it ignored."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_system_exit)
        signal.signal(signal.SIGINT, signal.default_int_handler)


atexit.register(_cleanup_all)


def run_chaos(
    seed: int,
    duration_s: float,
    workdir: Path | None = None,
    serve_argv: ServeArgv = kvraft_serve_argv,
    clients: int = 6,
    keys: int = 4,
    keep_on_pass: bool = False,
    log: bool = True,
    overlap: bool = False,
    etcd_api: bool = True,
    read_mode: str = "safe",
) -> ChaosReport:
    """`etcd_api`: also run the etcd workloads (etcd_workload.py); the fake stores of
    the harness's own tests (fake_node.py) serve kvraft's API only."""
    if read_mode != "safe":
        plain_argv = serve_argv

        def serve_argv(cluster: Cluster, index: int) -> list[str]:
            return [*plain_argv(cluster, index), "--read-mode", read_mode]

    remove_leftovers()
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"kvraft-chaos-seed{seed}-"))
    faults, quiet_from_s = schedule(seed, duration_s, NODES, overlap)
    report = ChaosReport(
        seed=seed, duration_s=duration_s, workdir=workdir,
        schedule=[f.describe() for f in faults] + [f"{quiet_from_s:6.1f} s  quiet period"],
        nemesis_log=[], result=None, final_values={}, ops=0, stats="", kinds_applied=set(),
        overlap=overlap,
        read_mode=read_mode,
    )

    def say(text: str) -> None:
        if log:
            print(f"[chaos seed {seed}] {text}", flush=True)

    stack = contextlib.ExitStack()
    _cleanups.append(stack)
    stop = threading.Event()
    try:
        with stack:
            net = stack.enter_context(Network(NODES))
            cluster = stack.enter_context(Cluster(net, workdir, serve_argv))
            say(f"network {net.subnet} up; starting {NODES} nodes (logs in {workdir})")
            cluster.start_all()
            leader = cluster.wait_for_leader(LEADER_TIMEOUT_S)
            say(f"leader is node {leader}; {clients} clients for {duration_s:.0f} s")
            workload = Workload(cluster.endpoints(), seed, clients=clients, keys=keys)
            etcd = EtcdWorkload(cluster.endpoints(), seed, workload.next_id, workload.record,
                                enabled=etcd_api)
            t0_s = time.monotonic()
            workload.t0_s = report.t0_s = t0_s
            nemesis = Nemesis(cluster, faults, t0_s)
            workload.start()
            etcd.start()
            try:
                nemesis.run(stop, until_s=duration_s)
            finally:
                workload.stop()
                etcd.stop()
                watched_until_s = time.monotonic()
                nemesis.heal()
                report.nemesis_log = nemesis.log
            report.kinds_applied = {f.kind for f in faults if f.start_s < duration_s}
            dead = cluster.exited()
            if dead:
                report.error = f"nodes exited on their own: {dead}"
            say("run over: SIGKILL and restart every node, then read every key")
            for i in cluster.indexes:
                cluster.kill9(i)
            cluster.start_all()
            cluster.wait_for_leader(LEADER_TIMEOUT_S)
            report.final_values = workload.final_reads(FINAL_READS_TIMEOUT_S)
            if etcd_api:
                say("etcd workloads: the canonical event history, then their checks")
                report.etcd_problems = check_etcd_workload(
                    etcd, cluster.endpoints(), watched_until_s, FINAL_READS_TIMEOUT_S,
                    faults_end_s=t0_s + quiet_from_s)
                report.etcd_counts = etcd.stats
            history = workload.history()
            s = workload.stats
            report.ops = len(history)
            report.stats = (f"{s.ok} ok, {s.indeterminate} indeterminate, "
                            f"{s.write_refused} writes refused, {s.read_failed} reads failed")
            if s.errors:
                report.stats += f"; unexpected client errors: {s.errors[:3]}"
            say(f"checking {len(history)} operations")
            started = time.monotonic()
            report.result = check(history)
            report.check_s = time.monotonic() - started
            report.log_tracebacks = _tracebacks(cluster)
    except BaseException as err:  # keep the logs and say what happened, then re-raise
        report.error = f"{type(err).__name__}: {err}"
        if log:
            print(report.describe(report.t0_s), flush=True)
        raise
    finally:
        if stack in _cleanups:
            _cleanups.remove(stack)
    if report.ok and not keep_on_pass and not report.log_tracebacks:
        shutil.rmtree(workdir, ignore_errors=True)
        report.workdir = Path("(removed: the run passed)")
    return report


def _tracebacks(cluster: Cluster) -> dict[int, int]:
    """Tracebacks a node logged: not a failure by themselves, but worth reading."""
    out = {}
    for i in cluster.indexes:
        path = cluster.log_path(i)
        if path.exists():
            count = path.read_text(errors="replace").count("Traceback (most recent call last)")
            if count:
                out[i] = count
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--duration", type=float, default=300.0, help="seconds")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the logs of a passing run")
    parser.add_argument("--read-mode", choices=("safe", "lease"), default="safe",
                        help="the nodes' `kvraft serve --read-mode` (lease: thesis §6.4.1)")
    parser.add_argument("--overlap", action="store_true",
                        help="let half the faults pile up instead of healing each one")
    args = parser.parse_args(argv)
    from tests.chaos.netns import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"make chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    install_signal_handlers()
    report = run_chaos(args.seed, args.duration, clients=args.clients, keys=args.keys,
                       keep_on_pass=args.keep, overlap=args.overlap, read_mode=args.read_mode)
    print(report.describe(report.t0_s))
    missing = set(FAULT_KINDS) - report.kinds_applied
    if missing:
        print(f"note: this duration left out fault kinds {sorted(missing)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
