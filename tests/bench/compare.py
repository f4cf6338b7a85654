"""kvraft side by side with etcd (and a bare gRPC echo server), same machine, same run.

    python -m tests.bench.compare [--nodes 3,5] [--clients 1,16,64,256] [--values 100,4096]
                                  [--ops put,get] [--repeats 3] [--duration 5]
                                  [--systems kvraft,kvraft-lease,etcd,echo]
                                  [--markdown BENCHMARKS.md] [--json bench.json]

Every cell (system, nodes, op, value size, clients) runs `repeats` times through the one
load generator (kvraft.bench.loadgen); the table shows min / median / max ops/s, the
median run's p50 / p99 / max latency, the CPU the generator and the servers used, and
kvraft ÷ etcd per cell. The echo row is the ceiling of a Python unary RPC here.
`kvraft-lease` is kvraft serving linearizable reads from the leader's lease
(`kvraft serve --read-mode lease`); it is measured only when named in --systems.
Run by `make bench-compare`; never part of `make test` (timings are not asserted).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from kvraft.bench.loadgen import LoadResult, LoadSpec, run_load
from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc
from tests.bench.etcd import EtcdCluster, ensure_installed, free_port

ROOT = Path(__file__).resolve().parents[2]
KVRAFT = ROOT / ".venv" / "bin" / "kvraft"
READY_TIMEOUT_S = 60.0
PRELOAD_CLIENTS = 32


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of live processes, from /proc (clock ticks -> seconds)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class System:
    name: str
    nodes: int
    endpoints: tuple[str, ...]
    pids: list[int]
    driver: str


def _wait_kvraft_ready(endpoints: tuple[str, ...]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for ep in endpoints:
        while True:
            try:
                with grpc.insecure_channel(ep) as ch:
                    kvraft_pb2_grpc.KVStub(ch).Put(
                        kvraft_pb2.PutRequest(key=b"ready", value=b"1"), timeout=3)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kvraft at {ep} not ready") from None
                time.sleep(0.2)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kvraft_command() -> list[str]:
    """The installed `kvraft`, else this interpreter's `-m kvraft` (a worktree without
    its own .venv, whose PYTHONPATH names the tree)."""
    return [str(KVRAFT)] if KVRAFT.exists() else [sys.executable, "-m", "kvraft"]


@contextmanager
def kvraft_cluster(nodes: int, base: Path, log_level: str = "warning",
                   read_mode: str = "safe") -> Iterator[System]:
    peer = [free_port() for _ in range(nodes)]
    client = [free_port() for _ in range(nodes)]
    initial = ",".join(f"{i + 1}=127.0.0.1:{peer[i]}" for i in range(nodes))
    procs = []
    try:
        for i in range(nodes):
            log = open(base / f"kvraft{i + 1}.log", "wb")  # noqa: SIM115 - owned by proc
            procs.append(subprocess.Popen(
                [*kvraft_command(), "serve", "--id", str(i + 1), "--data-dir",
                 str(base / f"kvraft{i + 1}"), "--listen", f"127.0.0.1:{client[i]}",
                 "--peer-listen", f"127.0.0.1:{peer[i]}", "--initial-cluster", initial,
                 "--log-level", log_level, "--read-mode", read_mode],
                stdout=log, stderr=subprocess.STDOUT))
            log.close()
        endpoints = tuple(f"127.0.0.1:{p}" for p in client)
        _wait_kvraft_ready(endpoints)
        name = "kvraft" if read_mode == "safe" else f"kvraft-{read_mode}"
        yield System(name, nodes, endpoints, [p.pid for p in procs], "kvraft")
    finally:
        _stop(procs)


@contextmanager
def etcd_cluster(nodes: int, base: Path) -> Iterator[System]:
    cluster = EtcdCluster(nodes, base)
    try:
        cluster.start()
        yield System("etcd", nodes, cluster.endpoints, cluster.pids,
                     "tests.bench.etcd:EtcdDriver")
    finally:
        cluster.stop()


@contextmanager
def echo_server(base: Path) -> Iterator[System]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.echo_server", "--port",
                             str(port)], cwd=ROOT)
    try:
        _wait_kvraft_ready((f"127.0.0.1:{port}",))
        yield System("echo", 1, (f"127.0.0.1:{port}",), [proc.pid], "kvraft")
    finally:
        _stop([proc])


@dataclass
class Cell:
    system: str
    nodes: int
    op: str
    value_size: int
    clients: int
    runs: list[dict]

    def median_run(self) -> dict:
        ordered = sorted(self.runs, key=lambda r: r["ops_per_s"])
        return ordered[len(ordered) // 2]

    def ops(self) -> list[float]:
        return [r["ops_per_s"] for r in self.runs]


def measure(system: System, args: argparse.Namespace) -> list[Cell]:
    cells = []
    for value_size in args.values:
        # Reads need keys that exist: write every key once per value size.
        run_load(LoadSpec(endpoints=system.endpoints, clients=PRELOAD_CLIENTS, duration_s=0.1,
                          value_size=value_size, keys=args.keys, read_ratio=1.0,
                          driver=system.driver, preload=True))
        for op in args.ops:
            for clients in args.clients:
                cell = Cell(system.name, system.nodes, op, value_size, clients, [])
                for _ in range(args.repeats):
                    cpu0 = cpu_seconds(system.pids)
                    result: LoadResult = run_load(LoadSpec(
                        endpoints=system.endpoints, clients=clients,
                        duration_s=args.duration, value_size=value_size, keys=args.keys,
                        read_ratio=1.0 if op == "get" else 0.0, driver=system.driver))
                    run = result.to_dict()
                    run["server_cpu_s"] = cpu_seconds(system.pids) - cpu0
                    cell.runs.append(run)
                med = cell.median_run()
                print(f"  {system.name}-{system.nodes} {op} {value_size}B c={clients}: "
                      f"{statistics.median(cell.ops()):,.0f} ops/s  "
                      f"p50 {med['latency']['p50_ms']:.2f} ms  "
                      f"errors {sum(med['errors'].values())}", flush=True)
                cells.append(cell)
    return cells


def markdown(cells: list[Cell], args: argparse.Namespace) -> str:
    etcd = {(c.nodes, c.op, c.value_size, c.clients): statistics.median(c.ops())
            for c in cells if c.system == "etcd"}
    lines = [
        "# kvraft vs etcd",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}), by `make bench-compare` "
        f"({args.duration:g} s per run, {args.repeats} runs per cell, {args.keys} keys, "
        "clients spread over all members, linearizable reads on both).",
        "",
        "| system | nodes | op | value | clients | ops/s min | median | max | p50 ms | "
        "p99 ms | max ms | gen CPU s | server CPU s | server CPU µs/op | ÷ etcd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        med = c.median_run()
        ops = c.ops()
        base = etcd.get((c.nodes, c.op, c.value_size, c.clients))
        ratio = (f"{statistics.median(ops) / base:.2f}"
                 if base and c.system.startswith("kvraft") else "")
        lat = med["latency"]
        lines.append(
            f"| {c.system} | {c.nodes} | {c.op} | {c.value_size} | {c.clients} | "
            f"{min(ops):,.0f} | {statistics.median(ops):,.0f} | {max(ops):,.0f} | "
            f"{lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['max_ms']:.2f} | "
            f"{med['generator_cpu_s']:.1f} | {med['server_cpu_s']:.1f} | "
            f"{cpu_per_op_us(med):,.0f} | {ratio} |")
    return "\n".join(lines + targets(cells)) + "\n"


def cpu_per_op_us(run: dict) -> float:
    """Server CPU (all members, every thread) per completed operation, in µs."""
    return run["server_cpu_s"] / run["ops"] * 1e6 if run["ops"] else 0.0


def targets(cells: list[Cell]) -> list[str]:
    """Issue 7's targets (3 nodes, 100 B values, medians of the same run), as lines."""
    by_key = {(c.system, c.nodes, c.op, c.value_size, c.clients): c for c in cells}

    def cell(system: str, op: str, clients: int) -> Cell | None:
        return by_key.get((system, 1 if system == "echo" else 3, op, 100, clients))

    def ops(system: str, op: str, clients: int) -> float | None:
        c = cell(system, op, clients)
        return statistics.median(c.ops()) if c else None

    def p50(system: str, op: str, clients: int) -> float | None:
        c = cell(system, op, clients)
        return c.median_run()["latency"]["p50_ms"] if c else None

    rows = []

    def row(what: str, ours: float | None, theirs: float | None, bound: float,
            higher_is_better: bool = True, unit: str = ",.0f") -> None:
        if ours is None or theirs is None or not theirs:
            return
        ratio = ours / theirs
        met = ratio >= bound if higher_is_better else ratio <= bound
        sign = "≥" if higher_is_better else "≤"
        rows.append(f"| {what} | {ours:{unit}} / {theirs:{unit}} = {ratio:.2f} | "
                    f"{sign} {bound:g} | {'met' if met else 'not met'} |")

    row("puts/s, 64 clients: kvraft / etcd", ops("kvraft", "put", 64), ops("etcd", "put", 64), 0.6)
    row("linearizable gets/s, 64 clients: kvraft / etcd", ops("kvraft", "get", 64),
        ops("etcd", "get", 64), 0.6)
    row("1-client put p50 ms: kvraft / etcd", p50("kvraft", "put", 1), p50("etcd", "put", 1),
        2.0, higher_is_better=False, unit=".2f")
    row("puts/s, 64 clients: kvraft / echo ceiling", ops("kvraft", "put", 64),
        ops("echo", "put", 64), 0.5)
    row("lease-mode gets/s, 64 clients: kvraft-lease / echo ceiling",
        ops("kvraft-lease", "get", 64), ops("echo", "get", 64), 0.9)
    row("lease-mode gets/s, 64 clients: kvraft-lease / kvraft safe",
        ops("kvraft-lease", "get", 64), ops("kvraft", "get", 64), 1.0)
    if not rows:
        return []
    lines = ["", "## Targets (3 nodes, 100 B values, medians of this run)", "",
             "| target | measured | bound | |", "|---|---|---|---|", *rows]
    etcd_gets, echo_gets = ops("etcd", "get", 64), ops("echo", "get", 64)
    echo_cell = cell("echo", "get", 64)
    if etcd_gets and echo_gets and echo_cell:
        run = echo_cell.median_run()
        busy = (run["server_cpu_s"] + run["generator_cpu_s"]) / run["elapsed_s"]
        lines += ["", f"Feasibility: 60% of etcd's gets is {0.6 * etcd_gets:,.0f}/s; the echo "
                  f"ceiling (one Python gRPC server answering a unary call that does nothing, "
                  f"same generator) is {echo_gets:,.0f}/s, with {busy:.1f} of "
                  f"{os.cpu_count()} cores busy. "
                  + ("A Python gRPC server cannot reach the read target on this machine, "
                     "whatever its consensus costs." if 0.6 * etcd_gets > echo_gets else
                     "The read target is below that ceiling.")]
    return lines


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=_int_list, default=[3, 5])
    p.add_argument("--clients", type=_int_list, default=[1, 16, 64, 256])
    p.add_argument("--values", type=_int_list, default=[100, 4096])
    p.add_argument("--ops", type=lambda s: s.split(","), default=["put", "get"])
    p.add_argument("--systems", type=lambda s: s.split(","), default=["kvraft", "etcd", "echo"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if "etcd" in args.systems:
        ensure_installed()
    if any(name.startswith("kvraft") for name in args.systems):
        try:
            import kvraft.cli  # noqa: F401  - the node the clusters run
        except ImportError as e:
            print(f"error: kvraft is not importable ({e}); run `make install` first",
                  file=sys.stderr)
            return 2
    cells: list[Cell] = []
    base = Path(tempfile.mkdtemp(prefix="kvraft-compare-", dir=ROOT / ".run"
                                 if (ROOT / ".run").is_dir() else None))
    try:
        for nodes in args.nodes:
            starters = (("kvraft", kvraft_cluster),
                        ("kvraft-lease", functools.partial(kvraft_cluster, read_mode="lease")),
                        ("etcd", etcd_cluster))
            for name, starter in starters:
                if name not in args.systems:
                    continue
                workdir = base / f"{name}-{nodes}"
                workdir.mkdir()
                print(f"== {name}, {nodes} nodes", flush=True)
                with starter(nodes, workdir) as system:
                    cells += measure(system, args)
        if "echo" in args.systems:
            print("== echo (Python unary RPC ceiling)", flush=True)
            with echo_server(base) as system:
                cells += measure(system, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    table = markdown(cells, args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps([c.__dict__ for c in cells], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
