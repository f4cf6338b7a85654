"""kvraft side by side with etcd (and a bare gRPC echo server), same machine, same run.

    python -m tests.bench.compare [--nodes 3,5] [--clients 1,16,64,256] [--values 100,4096]
                                  [--ops put,get] [--repeats 3] [--duration 5]
                                  [--systems kvraft,kvraft-lease,etcd,echo]
                                  [--markdown BENCHMARKS.md] [--json bench.json]

Systems (--systems, comma-separated; SYSTEMS below):

    kvraft          kvraft through its own API (kvraft.KV Put / Get)
    kvraft-lease    the same, linearizable reads from the leader's lease (--read-mode lease)
    kvraft-asyncio  kvraft on the standard library's event loop (--event-loop asyncio)
    kvraft-eventengine  kvraft on gRPC's default I/O path, its EventEngine threads
                    (GRPC_EXPERIMENTS= ; `kvraft serve` turns them off, kvraft/_cli_env.py)
    kvraft-etcdapi  kvraft's cluster through etcd's API, driven by the very driver etcd is
                    (tests.bench.etcd:EtcdDriver: Put, linearizable Range): same client code
    kvraft-tls      kvraft with TLS on its client and peer ports (kvraft.devcerts' CA)
    kvraft-auth     kvraft with auth enabled: the client authenticates once per member as
                    a user with readwrite on the bench keys and sends its token per call
    etcd            etcd 3.4 through etcd's API (EtcdDriver)
    etcd-tls        etcd with --cert-file/--key-file and peer TLS, the same dev CA
    etcd-auth       etcd with auth enabled, the same user, role and token use
    echo            one Python gRPC server that answers at once (the RPC ceiling)

Every cell (system, nodes, op, value size, clients) runs `repeats` times through the one
load generator (kvraft.bench.loadgen); the table shows min / median / max ops/s, the
median run's p50 / p99 / max latency, the CPU the generator and the servers used, and
kvraft ÷ etcd per cell (a kvraft-tls or kvraft-auth row ÷ etcd-tls or etcd-auth when
measured) with its spread (worst run ÷ best run .. best ÷ worst). When a -tls or -auth
system runs beside its plain one, a second table gives what TLS and auth cost each store:
ops/s variant ÷ plain, and server CPU per request, plain → variant. The echo row is the
ceiling of a Python unary RPC here.
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
from kvraft.devcerts import make_dev_certs
from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc
from kvraft.tls import ClientTLS
from tests.bench.etcd import (
    BenchAuth,
    EtcdCluster,
    enable_auth,
    ensure_installed,
    free_port,
    sync_channel,
)

ROOT = Path(__file__).resolve().parents[2]
KVRAFT = ROOT / ".venv" / "bin" / "kvraft"
READY_TIMEOUT_S = 60.0
PRELOAD_CLIENTS = 32
ETCD_DRIVER = "tests.bench.etcd:EtcdDriver"


@dataclass(frozen=True)
class SystemSpec:
    """How one --systems name is started and driven."""

    store: str                  # "kvraft", "etcd" or "echo"
    driver: str = ETCD_DRIVER
    read_mode: str = "safe"     # kvraft's --read-mode
    event_loop: str = "uvloop"  # kvraft's --event-loop
    env: tuple[tuple[str, str], ...] = ()  # set in the servers' environment
    tls: bool = False           # TLS on the client and peer ports (dev certificates)
    auth: bool = False          # auth enabled; the load authenticates as BenchAuth's user
    baseline: str | None = None  # the plain system whose cost this variant shows


SYSTEMS: dict[str, SystemSpec] = {
    "kvraft": SystemSpec("kvraft", driver="kvraft"),
    "kvraft-lease": SystemSpec("kvraft", driver="kvraft", read_mode="lease"),
    "kvraft-asyncio": SystemSpec("kvraft", driver="kvraft", event_loop="asyncio",
                                 baseline="kvraft"),
    # gRPC's own I/O path (its EventEngine threads), which `kvraft serve` turns off
    # (kvraft/_cli_env.py): what that default is worth.
    "kvraft-eventengine": SystemSpec("kvraft", driver="kvraft", env=(("GRPC_EXPERIMENTS", ""),),
                                     baseline="kvraft"),
    "kvraft-etcdapi": SystemSpec("kvraft", baseline="kvraft"),
    "kvraft-tls": SystemSpec("kvraft", driver="kvraft", tls=True, baseline="kvraft"),
    "kvraft-auth": SystemSpec("kvraft", driver="kvraft", auth=True, baseline="kvraft"),
    "etcd": SystemSpec("etcd"),
    "etcd-tls": SystemSpec("etcd", tls=True, baseline="etcd"),
    "etcd-auth": SystemSpec("etcd", auth=True, baseline="etcd"),
    "echo": SystemSpec("echo", driver="kvraft"),
}


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
    tls: ClientTLS | None = None
    auth: BenchAuth | None = None

    def load_spec(self, **fields: object) -> LoadSpec:
        """A LoadSpec aimed at this system, with its driver, TLS and credentials."""
        credentials = ({} if self.auth is None else
                       {"user": self.auth.user, "password": self.auth.password})
        return LoadSpec(endpoints=self.endpoints, driver=self.driver, tls=self.tls,
                        **credentials, **fields)  # type: ignore[arg-type]


def dev_certs(base: Path, nodes: int) -> Path:
    """kvraft.devcerts' CA and member certificates (as `make certs`) under base/certs."""
    out = base / "certs"
    make_dev_certs(out, range(1, nodes + 1), hosts=("127.0.0.1", "localhost"))
    return out


def kvraft_tls_flags(certs: Path | None, member: int) -> list[str]:
    """`kvraft serve`'s TLS flags for `member`: its client-port and peer certificates."""
    if certs is None:
        return []
    return ["--cert-file", str(certs / f"member-{member}.crt"),
            "--key-file", str(certs / f"member-{member}.key"),
            "--peer-cert-file", str(certs / f"peer-{member}.crt"),
            "--peer-key-file", str(certs / f"peer-{member}.key"),
            "--peer-trusted-ca-file", str(certs / "ca.crt")]


def client_tls(certs: Path | None) -> ClientTLS | None:
    return None if certs is None else ClientTLS(cacert=str(certs / "ca.crt"))


def _wait_kvraft_ready(endpoints: tuple[str, ...], tls: ClientTLS | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for ep in endpoints:
        while True:
            try:
                with sync_channel(ep, tls) as ch:
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
                   spec: SystemSpec = SYSTEMS["kvraft"], name: str = "kvraft"
                   ) -> Iterator[System]:
    certs = dev_certs(base, nodes) if spec.tls else None
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
                 "--log-level", log_level, "--read-mode", spec.read_mode,
                 "--event-loop", spec.event_loop,
                 *kvraft_tls_flags(certs, i + 1)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **dict(spec.env)}))
            log.close()
        endpoints = tuple(f"127.0.0.1:{p}" for p in client)
        tls = client_tls(certs)
        _wait_kvraft_ready(endpoints, tls)
        auth = BenchAuth() if spec.auth else None
        if auth is not None:
            enable_auth(endpoints[0], tls, auth)
        yield System(name, nodes, endpoints, [p.pid for p in procs], spec.driver, tls, auth)
    finally:
        _stop(procs)


@contextmanager
def etcd_cluster(nodes: int, base: Path, spec: SystemSpec = SYSTEMS["etcd"],
                 name: str = "etcd") -> Iterator[System]:
    cluster = EtcdCluster(nodes, base, certs=dev_certs(base, nodes) if spec.tls else None)
    try:
        cluster.start()
        auth = BenchAuth() if spec.auth else None
        if auth is not None:
            enable_auth(cluster.endpoints[0], cluster.tls, auth)
        yield System(name, nodes, cluster.endpoints, cluster.pids, spec.driver, cluster.tls,
                     auth)
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


def measure(system: System, args: argparse.Namespace, cells: dict[tuple, Cell]) -> None:
    """One run of every cell on `system`, appended to `cells` (keyed by system, nodes,
    op, value size, clients)."""
    for value_size in args.values:
        # Reads need keys that exist: write every key once per value size.
        run_load(system.load_spec(clients=PRELOAD_CLIENTS, duration_s=0.1,
                                  value_size=value_size, keys=args.keys, read_ratio=1.0,
                                  preload=True))
        for op in args.ops:
            for clients in args.clients:
                key = (system.name, system.nodes, op, value_size, clients)
                cell = cells.setdefault(key, Cell(*key, []))
                cpu0 = cpu_seconds(system.pids)
                result: LoadResult = run_load(system.load_spec(
                    clients=clients, duration_s=args.duration, value_size=value_size,
                    keys=args.keys, read_ratio=1.0 if op == "get" else 0.0))
                run = result.to_dict()
                run["server_cpu_s"] = cpu_seconds(system.pids) - cpu0
                cell.runs.append(run)
                print(f"  {system.name}-{system.nodes} {op} {value_size}B c={clients}: "
                      f"{run['ops_per_s']:,.0f} ops/s  "
                      f"p50 {run['latency']['p50_ms']:.2f} ms  "
                      f"errors {sum(run['errors'].values())}", flush=True)


def ratio_with_spread(ours: list[float], theirs: list[float]) -> str:
    """median ÷ median, and the spread of the ratio over the runs (worst of ours ÷ best of
    theirs .. best ÷ worst): "0.85 (0.80..0.91)"."""
    if not ours or not theirs or not min(theirs):
        return ""
    mid = statistics.median(ours) / statistics.median(theirs)
    return f"{mid:.2f} ({min(ours) / max(theirs):.2f}..{max(ours) / min(theirs):.2f})"


def etcd_baseline(system: str) -> str | None:
    """The etcd system a kvraft row is divided by: the same variant when there is one."""
    if not system.startswith("kvraft"):
        return None
    suffix = system.removeprefix("kvraft")
    return f"etcd{suffix}" if f"etcd{suffix}" in SYSTEMS else "etcd"


def markdown(cells: list[Cell], args: argparse.Namespace) -> str:
    by_key = {(c.system, c.nodes, c.op, c.value_size, c.clients): c for c in cells}
    lines = [
        "# kvraft vs etcd",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}), by `make bench-compare` "
        f"({args.duration:g} s per run, {args.repeats} runs per cell, {args.keys} keys, "
        "clients spread over all members, linearizable reads on both). Runs are "
        "interleaved: each round starts every system afresh and runs each of its cells "
        "once, so the spread of a ratio includes the machine's drift between rounds.",
        "",
        "| system | nodes | op | value | clients | ops/s min | median | max | p50 ms | "
        "p99 ms | max ms | gen CPU s | server CPU s | server CPU µs/op | ÷ etcd (spread) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        med = c.median_run()
        ops = c.ops()
        base_name = etcd_baseline(c.system)
        base = by_key.get((base_name, c.nodes, c.op, c.value_size, c.clients)) \
            if base_name else None
        ratio = f"÷ {base_name}: {ratio_with_spread(ops, base.ops())}" if base else ""
        lat = med["latency"]
        lines.append(
            f"| {c.system} | {c.nodes} | {c.op} | {c.value_size} | {c.clients} | "
            f"{min(ops):,.0f} | {statistics.median(ops):,.0f} | {max(ops):,.0f} | "
            f"{lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['max_ms']:.2f} | "
            f"{med['generator_cpu_s']:.1f} | {med['server_cpu_s']:.1f} | "
            f"{cpu_per_op_us(med):,.0f} | {ratio} |")
    return "\n".join(lines + costs(cells) + targets(cells)) + "\n"


def costs(cells: list[Cell]) -> list[str]:
    """What each variant (TLS, auth, etcd's API on kvraft) costs beside its plain system,
    cell by cell: ops/s ÷ plain, and server CPU per request (medians over the runs, the
    spread from the runs' extremes)."""
    by_key = {(c.system, c.nodes, c.op, c.value_size, c.clients): c for c in cells}
    rows = []
    for c in cells:
        plain_name = SYSTEMS[c.system].baseline if c.system in SYSTEMS else None
        plain = by_key.get((plain_name, c.nodes, c.op, c.value_size, c.clients))
        if plain is None:
            continue
        ours = [cpu_per_op_us(r) for r in c.runs]
        theirs = [cpu_per_op_us(r) for r in plain.runs]
        delta = statistics.median(ours) - statistics.median(theirs)
        rows.append(
            f"| {c.system} ÷ {plain_name} | {c.nodes} | {c.op} | {c.value_size} | "
            f"{c.clients} | {ratio_with_spread(c.ops(), plain.ops())} | "
            f"{statistics.median(theirs):,.0f} → {statistics.median(ours):,.0f} | "
            f"{delta:+,.0f} ({min(ours) - max(theirs):+,.0f}..{max(ours) - min(theirs):+,.0f}) |")
    if not rows:
        return []
    return ["", "## What each variant costs beside its plain system", "",
            "| variant ÷ plain | nodes | op | value | clients | ops/s ratio (spread) | "
            "server CPU µs/op plain → variant | Δ µs/op per request (spread) |",
            "|---|---|---|---|---|---|---|---|", *rows]


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


def _systems(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = [x for x in names if x not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown system {','.join(unknown) or repr(text)}: expected some of "
            f"{','.join(SYSTEMS)}")
    return names


def starter(name: str):  # -> a context manager factory (nodes, base) -> System
    """How --systems name `name` is started (echo ignores nodes)."""
    spec = SYSTEMS[name]
    if spec.store == "kvraft":
        return functools.partial(kvraft_cluster, spec=spec, name=name)
    if spec.store == "etcd":
        return functools.partial(etcd_cluster, spec=spec, name=name)
    return lambda _nodes, base: echo_server(base)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=_int_list, default=[3, 5])
    p.add_argument("--clients", type=_int_list, default=[1, 16, 64, 256])
    p.add_argument("--values", type=_int_list, default=[100, 4096])
    p.add_argument("--ops", type=lambda s: s.split(","), default=["put", "get"])
    p.add_argument("--systems", type=_systems, default=["kvraft", "etcd", "echo"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if any(SYSTEMS[name].store == "etcd" for name in args.systems):
        ensure_installed()
    if any(SYSTEMS[name].store == "kvraft" for name in args.systems):
        # The node the clusters run, checked in a child: importing kvraft.cli here would
        # load kvraft's etcd protos, whose names clash with etcd's own (tests/bench/etcd.py)
        # that this process loads to set up etcd and auth.
        check = subprocess.run([*kvraft_command(), "--version"], capture_output=True,
                               text=True, timeout=120)
        if check.returncode != 0:
            last = (check.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"error: kvraft does not run ({last}); run `make install` first",
                  file=sys.stderr)
            return 2
    cells: dict[tuple, Cell] = {}
    base = Path(tempfile.mkdtemp(prefix="kvraft-compare-", dir=ROOT / ".run"
                                 if (ROOT / ".run").is_dir() else None))
    try:
        # Interleaved: each round starts every system afresh and runs each cell once,
        # so a change in the machine's load between rounds touches every system alike;
        # the order alternates between rounds so that no system always goes first.
        order = [(nodes, name) for nodes in args.nodes for name in SYSTEMS
                 if name in args.systems and SYSTEMS[name].store != "echo"]
        if "echo" in args.systems:
            order.append((1, "echo"))
        for round_no in range(args.repeats):
            for nodes, name in order if round_no % 2 == 0 else order[::-1]:
                workdir = base / f"{name}-{nodes}-{round_no}"
                workdir.mkdir()
                print(f"== round {round_no + 1}/{args.repeats}: {name}, {nodes} nodes",
                      flush=True)
                with starter(name)(nodes, workdir) as system:
                    measure(system, args, cells)
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ordered = sorted(cells.values(), key=lambda c: (
        c.nodes if c.system != "echo" else 99, list(SYSTEMS).index(c.system),
        c.value_size, args.ops.index(c.op), c.clients))
    table = markdown(ordered, args)
    print(table)
    if args.markdown:
        write_generated(args.markdown, table)
    if args.json:
        args.json.write_text(json.dumps([c.__dict__ for c in ordered], indent=1))
    return 0


GENERATED_BEGIN = "<!-- begin: written by make bench-compare; edit below the end mark -->"
GENERATED_END = "<!-- end: written by make bench-compare -->"


def write_generated(path: Path, table: str) -> None:
    """Put `table` between the file's generated-part marks, keeping what was written by
    hand around them; a file without the marks gets them, with the table at its top
    and the old text below."""
    block = f"{GENERATED_BEGIN}\n{table}{GENERATED_END}\n"
    old = path.read_text() if path.exists() else ""
    if GENERATED_BEGIN in old and GENERATED_END in old:
        head, rest = old.split(GENERATED_BEGIN, 1)
        tail = rest.split(GENERATED_END, 1)[1].removeprefix("\n")
        path.write_text(head + block + tail)
    else:
        path.write_text(block + ("\n" + old if old else ""))


if __name__ == "__main__":
    sys.exit(main())
