"""A closed-loop, multi-process load generator.

N simulated clients each keep exactly one request in flight (closed loop), spread
round-robin over the endpoints, so throughput is what the store sustains at that
concurrency rather than what a queue can absorb. Clients are split over several worker
processes so that one GIL is not the limit; each worker runs its clients as coroutines
on one asyncio loop with one gRPC channel per endpoint.

The clock starts only when every worker has connected (and preloaded, if asked), and
every worker stops issuing at the same deadline, so the measured window is the same
for all of them.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from kvraft.bench.drivers import load_driver_factory
from kvraft.tls import ClientTLS

# Latency samples kept per worker; past this the worker still counts operations but
# stops recording latencies (a 60 s run at 20k ops/s per worker stays under it).
SAMPLES_PER_WORKER_MAX = 2_000_000
# How long a worker may take to connect and preload before the run is abandoned.
WORKER_READY_TIMEOUT_S = 120.0
# Back-off after a failed request, so a down endpoint does not turn into a busy loop.
ERROR_BACKOFF_S = 0.01


@dataclass(frozen=True)
class LoadSpec:
    endpoints: tuple[str, ...]
    clients: int = 16
    duration_s: float = 10.0
    value_size: int = 100
    keys: int = 10_000
    read_ratio: float = 0.0
    driver: str = "kvraft"
    workers: int = 0  # 0: one per CPU, never more than clients
    request_timeout_s: float = 5.0
    preload: bool = False  # write every key once before the clock starts
    seed: int = 1
    tls: ClientTLS | None = None  # the driver's TLS (--cacert/--cert/--key)
    user: str | None = None  # with `password`: each driver authenticates once, then
    password: str = ""       # sends the token with every call (auth enabled)

    def validate(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        if self.clients < 1:
            raise ValueError("clients must be at least 1")
        if self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if self.value_size < 0:
            raise ValueError("value size must not be negative")
        if self.keys < 1:
            raise ValueError("keys must be at least 1")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError("read ratio must be between 0 and 1")
        if self.user == "":
            raise ValueError("the user name is empty")

    def driver_options(self) -> dict[str, Any]:
        """The keyword arguments each driver is made with: only the ones in use, so a
        driver that knows neither TLS nor auth (the echo ceiling's) still fits."""
        options: dict[str, Any] = {}
        if self.tls is not None:
            options["tls"] = self.tls
        if self.user is not None:
            options["user"], options["password"] = self.user, self.password
        return options

    def worker_count(self) -> int:
        wanted = self.workers or (os.cpu_count() or 1)
        return max(1, min(wanted, self.clients))


@dataclass
class LatencySummary:
    count: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, samples_s: array) -> LatencySummary:
        if not samples_s:
            return cls()
        ordered = sorted(samples_s)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000.0

        return cls(len(ordered), pct(0.50), pct(0.90), pct(0.99), ordered[-1] * 1000.0)


@dataclass
class LoadResult:
    spec: LoadSpec
    elapsed_s: float
    ops: int
    reads: int
    writes: int
    errors: dict[str, int] = field(default_factory=dict)
    latency: LatencySummary = field(default_factory=LatencySummary)
    read_latency: LatencySummary = field(default_factory=LatencySummary)
    write_latency: LatencySummary = field(default_factory=LatencySummary)
    generator_cpu_s: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spec"]["endpoints"] = list(self.spec.endpoints)
        out["ops_per_s"] = round(self.ops_per_s, 1)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def format_table(self) -> str:
        s = self.spec
        lines = [
            f"clients {s.clients}  workers {s.worker_count()}  duration {self.elapsed_s:.1f} s  "
            f"value {s.value_size} B  keys {s.keys}  read ratio {s.read_ratio:g}",
            f"throughput  {self.ops_per_s:,.0f} ops/s  ({self.ops} ops: {self.writes} writes, "
            f"{self.reads} reads; {sum(self.errors.values())} errors)",
            f"{'latency ms':<12}{'count':>10}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
        ]
        for name, lat in (("all", self.latency), ("writes", self.write_latency),
                          ("reads", self.read_latency)):
            if lat.count:
                lines.append(f"{name:<12}{lat.count:>10}{lat.p50_ms:>9.2f}{lat.p90_ms:>9.2f}"
                             f"{lat.p99_ms:>9.2f}{lat.max_ms:>9.2f}")
        if self.errors:
            lines.append("errors      " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(self.errors.items())))
        share = 100.0 * self.generator_cpu_s / max(self.elapsed_s, 1e-9)
        lines.append(f"generator CPU {self.generator_cpu_s:.1f} s ({share:.0f}% of one core)")
        return "\n".join(lines)


def _key(i: int) -> bytes:
    return b"bench-%08d" % i


async def _worker_main(spec: LoadSpec, index: int, clients: list[int], ready: Any,
                       start: Any, counters: Any) -> dict[str, Any]:
    factory = load_driver_factory(spec.driver)
    drivers = {ep: factory(ep, **spec.driver_options()) for ep in spec.endpoints}
    rng = random.Random(spec.seed * 1000 + index)
    value = rng.randbytes(spec.value_size)
    errors: dict[str, int] = {}
    read_lat, write_lat = array("d"), array("d")
    reads = writes = 0

    def note_error(exc: BaseException) -> None:
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
        errors[code] = errors.get(code, 0) + 1

    try:
        # Authentication (when asked) happens here, before the clock starts.
        await asyncio.gather(*(d.open() for d in drivers.values()))
        if spec.preload:
            mine = range(index, spec.keys, spec.worker_count())
            sem = asyncio.Semaphore(max(1, len(clients)))

            async def put_one(i: int) -> None:
                async with sem:
                    driver = drivers[spec.endpoints[i % len(spec.endpoints)]]
                    await driver.put(_key(i), value, spec.request_timeout_s)

            await asyncio.gather(*(put_one(i) for i in mine))
        ready.release()
        # Wait for the parent's go in a thread, so the loop keeps serving its channels.
        await asyncio.to_thread(start.wait)
        deadline = time.monotonic() + spec.duration_s

        async def client(n: int) -> None:
            nonlocal reads, writes
            crng = random.Random(spec.seed * 100_003 + n)
            driver = drivers[spec.endpoints[n % len(spec.endpoints)]]
            while True:
                began = time.monotonic()
                if began >= deadline:
                    return
                key = _key(crng.randrange(spec.keys))
                is_read = crng.random() < spec.read_ratio
                try:
                    if is_read:
                        await driver.get(key, spec.request_timeout_s)
                    else:
                        await driver.put(key, value, spec.request_timeout_s)
                except (grpc.aio.AioRpcError, OSError) as exc:
                    note_error(exc)
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                took = time.monotonic() - began
                if is_read:
                    reads += 1
                    if len(read_lat) < SAMPLES_PER_WORKER_MAX:
                        read_lat.append(took)
                else:
                    writes += 1
                    if len(write_lat) < SAMPLES_PER_WORKER_MAX:
                        write_lat.append(took)
                counters[index] += 1

        await asyncio.gather(*(client(n) for n in clients))
    finally:
        for d in drivers.values():
            await d.close()
    return {"reads": reads, "writes": writes, "errors": errors,
            "read_lat": read_lat.tobytes(), "write_lat": write_lat.tobytes()}


def _worker_entry(spec: LoadSpec, index: int, clients: list[int], ready: Any, start: Any,
                  counters: Any, results: Any) -> None:
    try:
        out = asyncio.run(_worker_main(spec, index, clients, ready, start, counters))
    except BaseException as exc:  # reported to the parent, which prints one line
        ready.release()
        results.put((index, {"fatal": f"{type(exc).__name__}: {exc}"}))
        return
    results.put((index, out))


class LoadError(Exception):
    """The load could not be run (a worker failed to start or crashed)."""


def run_load(spec: LoadSpec, progress: Callable[[float, int], None] | None = None) -> LoadResult:
    """Runs the load and returns what it measured. `progress(elapsed_s, ops)` is called
    about once a second while it runs."""
    spec.validate()
    ctx = mp.get_context("spawn")  # grpc does not survive fork
    n_workers = spec.worker_count()
    assignment: list[list[int]] = [[] for _ in range(n_workers)]
    for c in range(spec.clients):
        assignment[c % n_workers].append(c)
    ready = ctx.Semaphore(0)
    start = ctx.Event()
    counters = ctx.RawArray("q", n_workers)
    results = ctx.Queue()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [ctx.Process(target=_worker_entry, daemon=True,
                         args=(spec, i, assignment[i], ready, start, counters, results))
             for i in range(n_workers)]
    for p in procs:
        p.start()
    try:
        waiting_since = time.monotonic()
        pending = len(procs)
        while pending:
            if ready.acquire(timeout=0.5):
                pending -= 1
            elif any(p.exitcode not in (0, None) for p in procs):
                raise LoadError("a load worker died while starting")
            elif time.monotonic() - waiting_since > WORKER_READY_TIMEOUT_S:
                raise LoadError(f"workers not ready after {WORKER_READY_TIMEOUT_S:.0f} s")
        began = time.monotonic()
        start.set()
        outs: dict[int, dict[str, Any]] = {}
        next_report = began + 1.0
        while len(outs) < n_workers:
            try:
                index, out = results.get(timeout=0.25)
                outs[index] = out
            except Exception:  # queue.Empty: report progress, check the workers live
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                    raise LoadError("a load worker died") from None
            now = time.monotonic()
            if progress and now >= next_report:
                progress(min(now - began, spec.duration_s), sum(counters))
                next_report = now + 1.0
            if now - began > spec.duration_s + spec.request_timeout_s + 30:
                raise LoadError("workers did not finish after the deadline")
    finally:
        start.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    fatal = [o["fatal"] for o in outs.values() if "fatal" in o]
    if fatal:
        raise LoadError(fatal[0])
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    read_lat, write_lat = array("d"), array("d")
    errors: dict[str, int] = {}
    reads = writes = 0
    for out in outs.values():
        reads += out["reads"]
        writes += out["writes"]
        read_lat.frombytes(out["read_lat"])
        write_lat.frombytes(out["write_lat"])
        for k, v in out["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return LoadResult(
        spec=spec, elapsed_s=spec.duration_s, ops=reads + writes, reads=reads,
        writes=writes, errors=errors, latency=LatencySummary.of(read_lat + write_lat),
        read_latency=LatencySummary.of(read_lat), write_latency=LatencySummary.of(write_lat),
        generator_cpu_s=(cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
    )


def print_progress(elapsed_s: float, ops: int) -> None:
    """A progress line on stderr, rewritten in place."""
    rate = ops / elapsed_s if elapsed_s > 0 else 0.0
    sys.stderr.write(f"\r{elapsed_s:5.1f} s  {ops:>9} ops  {rate:>9,.0f} ops/s")
    sys.stderr.flush()
