"""The coordination workloads of issue 12, kvraft and etcd side by side in one run,
both through etcd's v3 API (kvraft's own etcdserverpb stubs: the wire is the same):

    python -m tests.bench.bench_coordination [--nodes 3] [--only txn,watch,leases,range,memory]
                                             [--duration 5] [--keys-memory 100000]

* txn: Txn throughput, 64 clients, each a compare on a key's value + a put (100 B);
* watch: 100 watchers on one prefix (spread over the members) while one writer puts at
  a fixed rate: events delivered per second and delivery latency p50 / p99 (send of the
  put to receipt by the watcher), at 100 puts/s, then raised until delivery saturates;
* leases: 10,000 leases kept alive (each refreshed every TTL/3 through 8 keep-alive
  streams): the servers' CPU per second;
* range: a Range of 10,000 keys (100 B values), p50 / p99 latency;
* memory: resident memory of every member after writing `--keys-memory` keys and as
  many overwrites (revisions of history), 100 puts per Txn.

Prints one table with kvraft ÷ etcd per cell. Not part of `make test`: timings are
printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcd_grpc
from tests.bench.compare import System, cpu_seconds, kvraft_cluster
from tests.bench.etcd import EtcdClusterOverKvraftStubs, ensure_installed, wait_ready

VALUE = b"x" * 100
WATCHERS = 100
WATCH_RATES = (100, 500, 1000, 2000, 4000)
LEASES = 10_000
LEASE_TTL_S = 60
RANGE_KEYS = 10_000


@contextmanager
def etcd_system(nodes: int, base: Path) -> Iterator[System]:
    cluster = EtcdClusterOverKvraftStubs(nodes, base)
    try:
        cluster.start()
        yield System("etcd", nodes, cluster.endpoints, cluster.pids, "")
    finally:
        cluster.stop()


@contextmanager
def kvraft_system(nodes: int, base: Path) -> Iterator[System]:
    with kvraft_cluster(nodes, base) as system:
        wait_ready(system.endpoints)
        yield system


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# --- workloads ----------------------------------------------------------------------------
async def txn_throughput(system: System, duration_s: float, clients: int = 64
                         ) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(ep) for ep in system.endpoints]
    latencies: list[float] = []
    done = 0
    deadline = time.monotonic() + duration_s

    async def client(n: int) -> None:
        nonlocal done
        kv = etcd_grpc.KVStub(channels[n % len(channels)])
        key = b"txn/%d" % n
        value = VALUE
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            await kv.Txn(etcdpb.TxnRequest(
                compare=[etcdpb.Compare(key=key, target=etcdpb.Compare.VALUE,
                                        result=etcdpb.Compare.NOT_EQUAL, value=b"never")],
                success=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=value))],
                failure=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=value))],
            ), timeout=10)
            latencies.append(time.monotonic() - t0)
            done += 1

    cpu0, t0 = cpu_seconds(system.pids), time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(system.pids) - cpu0
    for ch in channels:
        await ch.close()
    return {"ops/s": done / elapsed, "p50 ms": percentile(latencies, 0.5) * 1e3,
            "p99 ms": percentile(latencies, 0.99) * 1e3, "server CPU µs/op": cpu / done * 1e6}


async def watch_fanout(system: System, rate: int, duration_s: float) -> dict[str, float]:
    """Events delivered per second and delivery latency with WATCHERS watchers."""
    channels = [grpc.aio.insecure_channel(ep) for ep in system.endpoints]
    prefix = b"watch-%d/" % rate
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    delivered = 0
    stop = asyncio.Event()
    created = 0
    all_created = asyncio.Event()

    async def watcher(n: int) -> None:
        nonlocal delivered, created
        stub = etcd_grpc.WatchStub(channels[n % len(channels)])
        requests: asyncio.Queue[etcdpb.WatchRequest | None] = asyncio.Queue()
        await requests.put(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
            key=prefix, range_end=prefix[:-1] + b"0")))

        async def request_iter():
            while (r := await requests.get()) is not None:
                yield r

        call = stub.Watch(request_iter())
        try:
            async for resp in call:
                if resp.created:
                    created += 1
                    if created == WATCHERS:
                        all_created.set()
                now = time.monotonic()
                for e in resp.events:
                    t = sent_at.get(e.kv.key)
                    if t is not None:
                        latencies.append(now - t)
                    delivered += 1
                if stop.is_set():
                    break
        finally:
            call.cancel()

    tasks = [asyncio.create_task(watcher(n)) for n in range(WATCHERS)]
    await asyncio.wait_for(all_created.wait(), 30)
    kv = etcd_grpc.KVStub(channels[0])
    interval = 1.0 / rate
    t0 = time.monotonic()
    n = 0
    inflight: set[asyncio.Task] = set()
    while time.monotonic() - t0 < duration_s:
        key = prefix + b"%08d" % n
        sent_at[key] = time.monotonic()
        task = asyncio.ensure_future(kv.Put(etcdpb.PutRequest(key=key, value=VALUE), timeout=10))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        n += 1
        next_at = t0 + n * interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*inflight, return_exceptions=True)
    # Let delivery drain (bounded), then stop.
    want = n * WATCHERS
    drain_deadline = time.monotonic() + 10
    while delivered < want and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return {"puts/s": n / duration_s, "events/s": delivered / elapsed,
            "delivered %": 100.0 * delivered / max(1, want),
            "p50 ms": percentile(latencies, 0.5) * 1e3,
            "p99 ms": percentile(latencies, 0.99) * 1e3}


async def leases_kept_alive(system: System, duration_s: float) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(ep) for ep in system.endpoints]
    ids: list[int] = []

    async def grant(n: int) -> None:
        stub = etcd_grpc.LeaseStub(channels[n % len(channels)])
        for _ in range(LEASES // 50):
            r = await stub.LeaseGrant(etcdpb.LeaseGrantRequest(TTL=LEASE_TTL_S), timeout=30)
            ids.append(r.ID)

    await asyncio.gather(*(grant(n) for n in range(50)))
    streams = 8
    period_s = LEASE_TTL_S / 3
    stop = time.monotonic() + duration_s
    answered = 0

    async def keeper(n: int) -> None:
        nonlocal answered
        mine = ids[n::streams]
        stub = etcd_grpc.LeaseStub(channels[n % len(channels)])
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        async def requests():
            while (lease_id := await queue.get()) is not None:
                yield etcdpb.LeaseKeepAliveRequest(ID=lease_id)

        call = stub.LeaseKeepAlive(requests())
        # Spread each stream's refreshes evenly over the period.
        gap_s = period_s / max(1, len(mine))

        async def feed() -> None:
            while time.monotonic() < stop:
                for lease_id in mine:
                    await queue.put(lease_id)
                    await asyncio.sleep(gap_s)
            await queue.put(None)

        feeder = asyncio.create_task(feed())
        async for _resp in call:
            answered += 1
            if time.monotonic() >= stop and feeder.done():
                break
        call.cancel()

    cpu0, t0 = cpu_seconds(system.pids), time.monotonic()
    await asyncio.gather(*(keeper(n) for n in range(streams)), return_exceptions=True)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(system.pids) - cpu0
    for ch in channels:
        await ch.close()
    return {"leases": len(ids), "keep-alives/s": answered / elapsed,
            "server CPU %": 100.0 * cpu / elapsed}


async def range_10k(system: System, repeats: int = 20) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(system.endpoints[0])
    kv = etcd_grpc.KVStub(channel)
    for start in range(0, RANGE_KEYS, 100):
        await kv.Txn(etcdpb.TxnRequest(success=[
            etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"range/%06d" % i, value=VALUE))
            for i in range(start, start + 100)]), timeout=30)
    latencies = []
    for _ in range(repeats):
        t0 = time.monotonic()
        r = await kv.Range(etcdpb.RangeRequest(key=b"range/", range_end=b"range0"), timeout=30)
        latencies.append(time.monotonic() - t0)
        assert len(r.kvs) == RANGE_KEYS, len(r.kvs)
    await channel.close()
    return {"p50 ms": statistics.median(latencies) * 1e3,
            "p99 ms": percentile(latencies, 0.99) * 1e3}


async def memory(system: System, keys: int) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(system.endpoints[0])
    kv = etcd_grpc.KVStub(channel)
    before = rss_mib(system.pids)
    sem = asyncio.Semaphore(8)

    async def write(start: int, round_: int) -> None:
        async with sem:
            await kv.Txn(etcdpb.TxnRequest(success=[
                etcdpb.RequestOp(request_put=etcdpb.PutRequest(
                    key=b"mem/%08d" % i, value=b"%d" % round_ + VALUE))
                for i in range(start, min(keys, start + 100))]), timeout=60)

    for round_ in (1, 2):   # the keys, then as many revisions of history
        await asyncio.gather(*(write(s, round_) for s in range(0, keys, 100)))
    after = rss_mib(system.pids)
    await channel.close()
    return {"keys": keys, "revisions": 2 * keys, "RSS MiB before": before,
            "RSS MiB after": after, "RSS MiB per member": after / len(system.pids)}


# --- the run ------------------------------------------------------------------------------
def run_system(start: Callable[[int, Path], AbstractContextManager[System]], nodes: int,
               args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kvraft-bench-coord-") as tmp, \
            start(nodes, Path(tmp)) as system:
        print(f"{system.name}-{nodes}: up at {', '.join(system.endpoints)}", flush=True)
        if "txn" in args.only:
            out["txn 64 clients"] = asyncio.run(txn_throughput(system, args.duration))
        if "watch" in args.only:
            for rate in WATCH_RATES:
                cell = asyncio.run(watch_fanout(system, rate, args.duration))
                out[f"watch 100 watchers, {rate} puts/s"] = cell
                print(f"  {system.name} {rate} puts/s: {cell}", flush=True)
                if cell["delivered %"] < 99.0 or cell["puts/s"] < 0.9 * rate:
                    break    # saturated: the next rate would say nothing more
        if "range" in args.only:
            out["range 10,000 keys"] = asyncio.run(range_10k(system))
        if "leases" in args.only:
            out["10,000 leases kept alive"] = asyncio.run(leases_kept_alive(system,
                                                                            args.duration * 4))
        if "memory" in args.only:
            out[f"memory {args.keys_memory:,} keys"] = asyncio.run(memory(system,
                                                                          args.keys_memory))
        for name, cell in out.items():
            print(f"  {system.name} {name}: {cell}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--only", default="txn,watch,leases,range,memory",
                        type=lambda s: set(s.split(",")))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--keys-memory", type=int, default=100_000)
    args = parser.parse_args(argv)
    ensure_installed()
    results = {"kvraft": run_system(kvraft_system, args.nodes, args),
               "etcd": run_system(etcd_system, args.nodes, args)}
    print(f"\n| workload | metric | kvraft | etcd | kvraft ÷ etcd |  ({os.cpu_count()} cores, "
          f"{args.nodes} nodes each)")
    print("|---|---|---|---|---|")
    for name, cell in results["kvraft"].items():
        other = results["etcd"].get(name, {})
        for metric, value in cell.items():
            theirs = other.get(metric)
            ratio = f"{value / theirs:.2f}" if theirs else "-"
            print(f"| {name} | {metric} | {value:,.2f} | "
                  f"{'-' if theirs is None else f'{theirs:,.2f}'} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
