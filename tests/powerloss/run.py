"""The power-loss run: a 3-node cluster on lazyfs under a write load, power-cut over
and over, checked after every cut.

    python -m tests.powerloss.run --cuts 100 --seed 7 [--mode ext4|posix]
    make powerloss CUTS=100 SEED=7 [MODE=posix]

Each member's data directory is on its own lazyfs mount (tests/powerloss/lazyfs.py);
nodes are `kvraft serve` processes started by tests/cluster/harness.py, with a 64 KiB
LevelDB write buffer (log files switch often) and early log compaction. Writers put
unique keys and record which puts were acknowledged. A cut of one member or of all
members at once is: SIGKILL the node(s), drop each mount's volatile layer (tearing
some files' unsynced writes), remount, and then, before the node starts again, check
a copy of its data directory offline (checks.py; members cut together at the same
applied index must have the same state). As kvraft syncs every write, a cut at a
random moment seldom finds unsynced WAL data; so some one-member cuts (the
mid-write probability) first arm the member's lazyfs to fail right after its next WAL
write returns, before LevelDB's fsync: the record being written is then torn or lost.
Then restart, and check:

* every acknowledged write is there, with its value, in a linearizable scan, and
  nothing is there that no writer sent;
* each member cut rejoins: it serves, and catches up to what the leader had applied,
  with every write acknowledged before that point in its own (serializable) scan.

At the end: the load stops, members converge, their states (by digest, through the API
and offline after a clean stop) are equal at equal applied indexes, and the run must
have torn at least one LevelDB write-ahead log (else the layer lost nothing, and the
run proved nothing).

The seed fixes the plan (which cuts, which members, when in the load, what tears); the
load's timing is not reproducible. A failure names the seed, the mode, the cut and
what broke, and keeps the run's directory (printed): per node its lazyfs backing store
(remount it with `python -m tests.powerloss.lazyfs`), the node's log and the copies
checked offline.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kvraft.client import Client, KvraftError
from kvraft.proto import kvraft_pb2 as pb
from tests.cluster.harness import ClusterError, LocalCluster, wait_until

from .checks import DurableState, inspect_data_dir, kv_digest
from .mount import LazyFsError, LazyMount, clean_up_on_signals
from .nodelog import address_taken, last_error

NODES = 3
KEY_PREFIX = b"pl/"
KEY_END = b"pl0"  # the first key after every pl/ key
WRITE_BUFFER_BYTES = 64 << 10
SNAPSHOT_ENTRIES = 2000
SNAPSHOT_KEEP_ENTRIES = 200
TICK_S = 0.05
WRITERS = 3
VALUE_RANDOM_BYTES = 48
WRITE_TIMEOUT_S = 5.0
WRITE_PAUSE_AFTER_ERROR_S = 0.1
WRITES_MAX = 5_000_000           # the load's bound, whatever the run's length
PROGRESS_ACKS_MIN, PROGRESS_ACKS_MAX = 20, 150  # new acks between two cuts
PROGRESS_TIMEOUT_S = 90.0
RECOVERY_TIMEOUT_S = 90.0        # a cut member serves and catches up within this
SCAN_TIMEOUT_S = 30.0
SCAN_PAGES_MAX = 10_000
SHOWN_MAX = 5
MID_WRITE_TIMEOUT_S = 10.0       # an armed member writes its WAL within this under load
MID_WRITE_POLL_S = 0.01
RELAUNCHES_MAX = 5               # of a member whose port was taken while it was down
RELAUNCH_PAUSE_S = 1.0


class PowerLossFailure(AssertionError):
    """A promise was broken (or the run could not go on). The message says which."""


# --------------------------------------------------------------------------- the load
@dataclass
class History:
    """What the writers sent and what they were told. Keys are unique per put.

    Invariant: acked, unknown and rejected are disjoint subsets of attempted's keys;
    a key is in attempted before its put is sent."""

    attempted: dict[bytes, bytes] = field(default_factory=dict)
    acked: dict[bytes, bytes] = field(default_factory=dict)
    unknown: set[bytes] = field(default_factory=set)    # outcome unknown (may be there)
    rejected: set[bytes] = field(default_factory=set)   # certainly not applied


class WriteLoad:
    """WRITERS threads putting unique keys until stopped (at most WRITES_MAX puts)."""

    def __init__(self, endpoints: str, seed: int) -> None:
        self.endpoints = endpoints
        self.seed = seed
        self.history = History()
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared: writers wait (during checks)
        self._running.set()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # unexpected exceptions in a writer

    def start(self) -> None:
        for n in range(WRITERS):
            t = threading.Thread(target=self._writer, args=(n,), daemon=True,
                                 name=f"powerloss-writer-{n}")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=WRITE_TIMEOUT_S * 3)

    def pause(self) -> None:
        """Writers send nothing new until resume() (puts in flight finish)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def acked_count(self) -> int:
        with self._lock:
            return len(self.history.acked)

    def snapshot(self) -> History:
        with self._lock:
            h = self.history
            return History(dict(h.attempted), dict(h.acked), set(h.unknown), set(h.rejected))

    def _writer(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        with Client(self.endpoints, timeout=WRITE_TIMEOUT_S) as client:
            while not self._stop.is_set():
                if not self._running.wait(timeout=WRITE_PAUSE_AFTER_ERROR_S):
                    continue
                with self._lock:
                    if self._next >= WRITES_MAX:
                        return
                    seq = self._next
                    self._next += 1
                    key = KEY_PREFIX + b"%09d" % seq
                    value = b"%d:" % seq + rng.randbytes(VALUE_RANDOM_BYTES).hex().encode()
                    self.history.attempted[key] = value
                try:
                    client.put(key, value)
                except KvraftError as e:
                    with self._lock:
                        (self.history.unknown if e.outcome_unknown
                         else self.history.rejected).add(key)
                    self._stop.wait(WRITE_PAUSE_AFTER_ERROR_S)
                    continue
                except Exception as e:  # a bug in the client: the run must hear of it
                    with self._lock:
                        self.history.unknown.add(key)
                        self.errors.append(f"{type(e).__name__}: {e}")
                    return
                with self._lock:
                    self.history.acked[key] = value


# --------------------------------------------------------------------------- reports
@dataclass
class RunReport:
    seed: int
    mode: str
    root: str
    one_member_cuts: int = 0
    all_member_cuts: int = 0
    mid_write_cuts: int = 0         # one-member cuts that froze inside a WAL write
    acked_writes: int = 0           # acknowledged by the end of the run
    acked_checks: int = 0           # acknowledged writes verified, summed over checks
    unknown_writes: int = 0
    wal_files_torn: int = 0
    wal_files_dropped: int = 0
    wal_bytes_lost: int = 0
    files_torn: int = 0
    bytes_lost: int = 0
    names_lost: int = 0
    files_vanished: int = 0
    wal_files_vanished: int = 0     # of them, LevelDB logs (their synced records too)
    relaunches: int = 0             # members launched again: their port was taken
    seconds: float = 0.0

    @property
    def cuts(self) -> int:
        return self.one_member_cuts + self.all_member_cuts

    def line(self) -> str:
        return (f"power-loss run (seed {self.seed}, mode {self.mode}): {self.cuts} cuts "
                f"({self.one_member_cuts} of one member, {self.mid_write_cuts} of them in "
                f"a WAL write, {self.all_member_cuts} of all), "
                f"{self.acked_writes} acknowledged writes ({self.acked_checks} checks of "
                f"acknowledged writes, {self.unknown_writes} outcomes unknown), torn WAL "
                f"files {self.wal_files_torn}, dropped WAL tails {self.wal_files_dropped}, "
                f"WAL bytes lost {self.wal_bytes_lost}, bytes lost {self.bytes_lost}, "
                f"files torn {self.files_torn}, "
                f"names lost {self.names_lost}, files vanished {self.files_vanished} "
                f"({self.wal_files_vanished} WAL), "
                f"{self.relaunches} relaunches (port taken), {self.seconds:.0f} s")


@dataclass
class RunConfig:
    seed: int
    one_member_cuts: int
    all_member_cuts: int
    mode: str = "ext4"
    torn_probability: float = 0.5
    # A one-member cut lands right after a WAL write, before its fsync, this often.
    mid_write_probability: float = 0.5
    root: Path | None = None     # default: a new directory under the system temp dir
    keep: bool = False           # keep the directory even when the run passes
    log: Callable[[str], None] = print


# --------------------------------------------------------------------------- the cluster
def lazy_cluster(root: Path, mode: str) -> tuple[LocalCluster, dict[int, LazyMount]]:
    """NODES defined (not started) members, each data directory on its own lazyfs
    mount (mounted). The caller closes the cluster, then the mounts, then `root`."""
    cluster = LocalCluster(root, tick_s=TICK_S, extra_args=[
        "--leveldb-write-buffer-bytes", str(WRITE_BUFFER_BYTES),
        "--snapshot-entries", str(SNAPSHOT_ENTRIES),
        "--snapshot-keep-entries", str(SNAPSHOT_KEEP_ENTRIES),
    ])
    cluster.keep_root = True  # mounts live inside it
    mounts: dict[int, LazyMount] = {}
    try:
        for node_id in range(1, NODES + 1):
            node = cluster.define(node_id)
            mount = LazyMount(root / f"node{node_id}" / "fs", mode=mode)
            mounts[node_id] = mount
            mount.start()
            node.data_dir = mount.mountpoint / "data"
    except BaseException:
        for mount in mounts.values():
            mount.close()
        raise
    cluster.initial_cluster = {i: n.peer_address for i, n in cluster.nodes.items()}
    return cluster, mounts


def close_lazy_cluster(cluster: LocalCluster, mounts: dict[int, LazyMount]) -> None:
    """Kill what still runs; keep what the nodes left (all made durable) for a look."""
    cluster.close()
    for mount in mounts.values():
        with contextlib.suppress(LazyFsError, OSError):
            mount.stop()
        mount.close()


# --------------------------------------------------------------------------- the run
class PowerLossRun:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.root = Path(config.root or tempfile.mkdtemp(prefix="kvraft-powerloss-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.report = RunReport(config.seed, config.mode, str(self.root))
        self.cluster: LocalCluster | None = None
        self.mounts: dict[int, LazyMount] = {}
        self.load: WriteLoad | None = None
        self.context = "before the first cut"
        self.checks_dir = self.root / "checks"
        self._relaunches_left: dict[int, int] = {}  # per member, reset at each restart

    def log(self, message: str) -> None:
        self.config.log(message)

    # --- the whole run ---------------------------------------------------------------
    def run(self) -> RunReport:
        started = time.monotonic()
        passed = False
        self.log(f"power-loss run: seed {self.config.seed}, mode {self.config.mode}, "
                 f"{self.config.one_member_cuts} one-member and {self.config.all_member_cuts} "
                 f"all-member cuts, directory {self.root}")
        try:
            self._start()
            plan = (["one"] * self.config.one_member_cuts
                    + ["all"] * self.config.all_member_cuts)
            self.rng.shuffle(plan)
            for number, kind in enumerate(plan, start=1):
                self._cut_round(number, kind)
            self._finish()
            passed = True
        except (ClusterError, LazyFsError, grpc.RpcError, KvraftError) as e:
            raise self._failure(f"the run could not go on: {e}") from None
        except PowerLossFailure as e:
            raise self._failure(str(e)) from None
        finally:
            self.report.seconds = time.monotonic() - started
            self._teardown(keep=not passed or self.config.keep)
        return self.report

    def _failure(self, what: str) -> PowerLossFailure:
        c = self.config
        replay = (f".venv/bin/python -m tests.powerloss.run --seed {c.seed} --cuts "
                  f"{c.one_member_cuts + c.all_member_cuts} --all-cuts {c.all_member_cuts} "
                  f"--mode {c.mode} --torn-probability {c.torn_probability} "
                  f"--mid-write-probability {c.mid_write_probability}")
        return PowerLossFailure(
            f"POWER-LOSS FAILURE (seed {c.seed}, mode {c.mode}) {self.context}: {what}\n"
            f"  directories kept at {self.root}\n  replay the plan: {replay}")

    def _start(self) -> None:
        self.cluster, self.mounts = lazy_cluster(self.root, self.config.mode)
        for node_id in self.cluster.nodes:
            self.cluster.launch(node_id)
        for node_id in self.cluster.nodes:
            while True:
                try:
                    self.cluster.wait_serving(node_id)
                    break
                except ClusterError:
                    if not self._relaunched_if_address_taken(node_id):
                        raise
        self.cluster.wait_leader()
        self.load = WriteLoad(self.cluster.endpoints(), self.config.seed)
        self.load.start()
        self._wait_progress(PROGRESS_ACKS_MAX)

    def _teardown(self, keep: bool) -> None:
        if self.load is not None:
            self.load.stop()
        if self.cluster is not None:
            close_lazy_cluster(self.cluster, self.mounts)
        (self.root / "report.json").write_text(json.dumps(self.report.__dict__, indent=1))
        if keep:
            self.log(f"directories kept at {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- one cut ---------------------------------------------------------------------
    def _wait_progress(self, new_acks: int) -> None:
        assert self.load is not None
        target = self.load.acked_count() + new_acks

        def progressed() -> bool:
            if self.load.errors:
                raise PowerLossFailure(f"a writer failed: {self.load.errors[0]}")
            self.cluster.check_no_crash()
            return self.load.acked_count() >= target

        wait_until(progressed, PROGRESS_TIMEOUT_S, f"{new_acks} more acknowledged writes",
                   self.cluster.all_log_tails)

    def _cut_round(self, number: int, kind: str) -> None:
        self._wait_progress(self.rng.randint(PROGRESS_ACKS_MIN, PROGRESS_ACKS_MAX))
        time.sleep(self.rng.uniform(0.0, 0.3))  # vary where in a round the cut lands
        if kind == "all":
            victims = sorted(self.cluster.nodes)
            self.report.all_member_cuts += 1
            self.context = f"at cut {number} (all members)"
        else:
            leader = self.cluster.wait_leader()
            others = [i for i in sorted(self.cluster.nodes) if i != leader]
            victims = [leader if self.rng.random() < 0.5 else self.rng.choice(others)]
            self.report.one_member_cuts += 1
            role = "the leader" if victims[0] == leader else "a follower"
            self.context = f"at cut {number} (node {victims[0]}, {role})"
        mid_write = kind == "one" and self.rng.random() < self.config.mid_write_probability
        seeds = {v: self.rng.getrandbits(32) for v in victims}
        applied_before = {v: self._applied_or_none(v) for v in victims}
        if mid_write:
            self._freeze_at_wal_write(victims[0])
        for victim in victims:
            self.cluster.kill9(victim)
        for victim in victims:
            cut = self.mounts[victim].cut(seed=seeds[victim],
                                          torn_probability=self.config.torn_probability)
            self._count(cut)
            self.mounts[victim].start()
        states = [self._check_offline(v, number) for v in victims]
        self._compare_states(states, "offline after the cut")
        for victim in victims:
            self.cluster.launch(victim)
        for victim in victims:
            self._wait_recovered(victim)
        assert self.load is not None
        # The checks scan everything written so far: hold the load meanwhile, so the
        # data (and each check) does not grow with the time the checks themselves take.
        self.load.pause()
        try:
            self._check_acknowledged()
            for victim in victims:
                self._check_caught_up(victim)
        finally:
            self.load.resume()
        rollback = ", ".join(f"node {s.node_id} {applied_before[s.node_id]}->{s.applied_index}"
                             for s in states)
        self.log(f"cut {number:>3} {kind:>3} {victims}: ok; {self.load.acked_count()} acked, "
                 f"torn WAL files so far {self.report.wal_files_torn}; applied index before"
                 f" the cut -> durable: {rollback}")

    def _freeze_at_wal_write(self, node_id: int) -> None:
        """Let the power fail right after the member's next write to its WAL returns,
        before LevelDB fsyncs it: the cut then finds unsynced WAL data for certain (a
        record being written), which a cut at a random moment rarely does when every
        write is synced. The member sees EIO from then on (and may exit of it)."""
        mount = self.mounts[node_id]
        mount.arm_wal_write()
        self.context += ", in a WAL write"
        deadline = time.monotonic() + MID_WRITE_TIMEOUT_S
        while not mount.counters()["frozen"]:
            if time.monotonic() >= deadline:
                # No WAL write came (the member is idle or stuck): cut it as it is.
                self.log(f"  node {node_id} wrote no WAL record within "
                         f"{MID_WRITE_TIMEOUT_S:.0f} s of being armed; cut anyway")
                return
            time.sleep(MID_WRITE_POLL_S)
        self.report.mid_write_cuts += 1

    def _applied_or_none(self, node_id: int) -> int | None:
        try:
            return self.cluster.status(node_id, timeout_s=1.0).header.applied_index
        except grpc.RpcError:
            return None

    def _count(self, cut: dict[str, Any]) -> None:
        r = self.report
        r.wal_files_torn += cut["wal_files_torn"]
        r.wal_files_dropped += cut["wal_files_dropped"]
        r.wal_bytes_lost += cut["wal_bytes_lost"]
        r.files_torn += cut["files_torn"]
        r.bytes_lost += cut["bytes_lost"]
        r.names_lost += cut["names_lost"]
        r.files_vanished += cut["files_vanished"]
        wal_vanished = [p for p in cut.get("vanished", []) if p.endswith(".log")]
        if wal_vanished:
            # A log file whose name was not durable: in ext4 mode one never fsynced
            # (made just before the cut: it held nothing synced); in posix mode also one
            # made since db/'s last fsync, with whatever was synced into it.
            r.wal_files_vanished += len(wal_vanished)
            self.log(f"  {self.context}: WAL files vanished with their names: "
                     f"{', '.join(wal_vanished)}")

    # --- checks ----------------------------------------------------------------------
    def _check_offline(self, node_id: int, number: int) -> DurableState:
        scratch = self.checks_dir / f"cut{number:04d}-node{node_id}"
        state = inspect_data_dir(self.cluster.nodes[node_id].data_dir, node_id, scratch)
        if state.problems:
            acked = ""
            if state.lost_effects and self.load is not None:
                history = self.load.snapshot()
                n = sum(1 for _, key in state.lost_effects if key in history.acked)
                acked = (f" ({n} of the {len(state.lost_effects)} lost writes had been "
                         "acknowledged to a client)")
            raise PowerLossFailure(
                f"node {node_id}'s data directory after the cut ({state.summary()}): "
                + "; ".join(state.problems) + acked + f" [copy checked: {scratch}]")
        shutil.rmtree(scratch, ignore_errors=True)
        return state

    @staticmethod
    def _compare_states(states: list[DurableState], where: str) -> None:
        by_index: dict[int, DurableState] = {}
        for state in states:
            other = by_index.setdefault(state.applied_index, state)
            if other.kv_digest != state.kv_digest:
                raise PowerLossFailure(
                    f"nodes {other.node_id} and {state.node_id} are both at applied index "
                    f"{state.applied_index} but their key-value states differ ({where}: "
                    f"{other.kv_keys} vs {state.kv_keys} keys)")

    def _wait_recovered(self, node_id: int) -> None:
        """The member serves again, and knows a leader (it has rejoined). A member that
        could not bind its address (another process took the port while it was down)
        is launched again, at most RELAUNCHES_MAX times: the machine's doing."""
        node = self.cluster.nodes[node_id]
        self._relaunches_left[node_id] = RELAUNCHES_MAX

        def serving_with_leader() -> bool:
            if not node.running():
                if self._relaunched_if_address_taken(node_id):
                    return False
                raise PowerLossFailure(
                    f"node {node_id} did not recover: it exited with "
                    f"{node.proc.returncode if node.proc else None} after the cut; "
                    f"{last_error(node.log_path)}\n{self.cluster.log_tail(node_id)}")
            return self.cluster.status(node_id, timeout_s=1.0).header.leader_id > 0

        wait_until(serving_with_leader, RECOVERY_TIMEOUT_S,
                   f"node {node_id} to serve and know a leader after the cut",
                   lambda: self.cluster.log_tail(node_id))

    def _relaunched_if_address_taken(self, node_id: int) -> bool:
        """If the member exited because it could not bind its address, launch it again
        (at most RELAUNCHES_MAX times per start) and say so; else False."""
        node = self.cluster.nodes[node_id]
        taken = address_taken(node.log_path)
        left = self._relaunches_left.setdefault(node_id, RELAUNCHES_MAX)
        if node.running() or taken is None or left == 0:
            return False
        self._relaunches_left[node_id] = left - 1
        self.report.relaunches += 1
        self.log(f"  node {node_id} could not listen ({taken}); launching it again "
                 f"({RELAUNCHES_MAX - left + 1} of {RELAUNCHES_MAX})")
        time.sleep(RELAUNCH_PAUSE_S)
        self.cluster.launch(node_id)
        return True

    def _check_acknowledged(self) -> None:
        """Every write acknowledged so far is in a linearizable scan; nothing else is
        there that was not sent."""
        assert self.load is not None
        before = self.load.snapshot()
        state = self._scan_linearizable()
        after = self.load.snapshot()  # writes sent during the scan may show up in it
        self._compare_with_history(state, before, after, "a linearizable scan")
        self.report.acked_checks += len(before.acked)

    def _check_caught_up(self, node_id: int) -> None:
        """The member catches up with what the leader had applied after the writes
        acknowledged so far, and then holds every one of them."""
        assert self.load is not None
        before = self.load.snapshot()
        leader = self.cluster.wait_leader()
        target = self.cluster.status(leader).header.applied_index

        def caught_up() -> bool:
            self.cluster.check_no_crash()
            return self.cluster.status(node_id, timeout_s=1.0).header.applied_index >= target

        wait_until(caught_up, RECOVERY_TIMEOUT_S, f"node {node_id} to apply index {target}",
                   lambda: self.cluster.log_tail(node_id))
        state, _ = self._scan_member(node_id)
        after = self.load.snapshot()
        self._compare_with_history(state, before, after,
                                   f"node {node_id}'s own scan after catching up")
        self.report.acked_checks += len(before.acked)

    @staticmethod
    def _compare_with_history(state: dict[bytes, bytes], before: History, after: History,
                              where: str) -> None:
        missing = [k for k in before.acked if k not in state]
        wrong = [k for k, v in before.acked.items() if k in state and state[k] != v]
        foreign = [k for k, v in state.items() if after.attempted.get(k) != v]
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(before.acked)} acknowledged writes are "
                            f"missing from {where}: {_show(missing)}")
        if wrong:
            problems.append(f"{len(wrong)} acknowledged writes have another value in {where}: "
                            f"{_show(wrong)}")
        if foreign:
            problems.append(f"{len(foreign)} keys in {where} were never written with that "
                            f"value: {_show(foreign)}")
        if problems:
            raise PowerLossFailure("; ".join(problems))

    def _scan_linearizable(self) -> dict[bytes, bytes]:
        deadline = time.monotonic() + SCAN_TIMEOUT_S * 2
        with Client(self.cluster.endpoints(), timeout=SCAN_TIMEOUT_S) as client:
            while True:
                try:
                    return dict(client.scan(KEY_PREFIX, KEY_END))
                except KvraftError as e:
                    if time.monotonic() >= deadline:
                        raise PowerLossFailure(f"a linearizable scan kept failing: {e}"
                                               ) from None
                    time.sleep(0.2)

    def _scan_member(self, node_id: int) -> tuple[dict[bytes, bytes], int]:
        """A serializable scan of one member's own state, page by page; returns it and
        the applied index it ended at (the same at both ends, or it is retried)."""
        kv = self.cluster.kv(node_id)
        deadline = time.monotonic() + SCAN_TIMEOUT_S
        while True:
            state: dict[bytes, bytes] = {}
            start, first_applied, last_applied = KEY_PREFIX, None, 0
            for _ in range(SCAN_PAGES_MAX):
                r = kv.Scan(pb.ScanRequest(start=start, end=KEY_END,
                                           consistency=pb.SERIALIZABLE), timeout=SCAN_TIMEOUT_S)
                first_applied = r.header.applied_index if first_applied is None else first_applied
                last_applied = r.header.applied_index
                state.update((p.key, p.value) for p in r.kvs)
                if not r.more:
                    break
                start = r.kvs[-1].key + b"\x00"
            if first_applied == last_applied or time.monotonic() >= deadline:
                return state, last_applied
            # The member applied entries between pages: not one point in time.

    # --- the end ---------------------------------------------------------------------
    def _finish(self) -> None:
        assert self.load is not None
        self.context = "at the end of the run"
        self.load.stop()
        self._check_acknowledged()
        leader = self.cluster.wait_leader()
        target = self.cluster.status(leader).header.applied_index
        for node_id in self.cluster.nodes:
            self.cluster.wait_applied(node_id, target, timeout_s=RECOVERY_TIMEOUT_S)
        online = []
        for node_id in sorted(self.cluster.nodes):
            state, applied = self._scan_member(node_id)
            online.append(DurableState(node_id, applied_index=applied, kv_keys=len(state),
                                       kv_digest=kv_digest(sorted(state.items()))))
        self._compare_states(online, "through the API after the load")
        final = self.load.snapshot()
        self.report.acked_writes = len(final.acked)
        self.report.unknown_writes = len(final.unknown)
        for node_id in sorted(self.cluster.nodes):
            code = self.cluster.terminate(node_id)
            if code != 0:
                raise PowerLossFailure(f"node {node_id} exited with {code} on SIGTERM")
        offline = [self._check_offline(i, 0) for i in sorted(self.cluster.nodes)]
        self._compare_states(offline, "offline after a clean stop")
        if self.report.wal_files_torn == 0:
            raise PowerLossFailure(
                f"no cut tore a LevelDB write-ahead log ({self.report.cuts} cuts): the file "
                "system lost nothing that mattered, so this run proved nothing")


def _show(keys: list[bytes]) -> str:
    shown = ", ".join(repr(k) for k in sorted(keys)[:SHOWN_MAX])
    return shown + (f" and {len(keys) - SHOWN_MAX} more" if len(keys) > SHOWN_MAX else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.powerloss.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", type=int, default=12, help="power cuts in all")
    parser.add_argument("--all-cuts", type=int, default=None,
                        help="how many of them cut every member at once [default: a quarter]")
    parser.add_argument("--seed", type=int, default=None, help="[default: drawn, printed]")
    parser.add_argument("--mode", choices=["ext4", "posix"], default="ext4")
    parser.add_argument("--torn-probability", type=float, default=0.5)
    parser.add_argument("--mid-write-probability", type=float, default=0.5,
                        help="how often a one-member cut lands inside a WAL write")
    parser.add_argument("--dir", type=Path, default=None, help="run directory [default: temp]")
    parser.add_argument("--keep", action="store_true", help="keep the directory on success")
    parser.add_argument("--bootstrap-sweep", action="store_true",
                        help="first cut a founding member at every fsync of its bootstrap "
                        "(tests/powerloss/bootstrap.py)")
    args = parser.parse_args(argv)
    if args.cuts < 1:
        parser.error("--cuts must be at least 1")
    all_cuts = args.all_cuts if args.all_cuts is not None else max(1, args.cuts // 4)
    if not 0 <= all_cuts <= args.cuts:
        parser.error("--all-cuts must be between 0 and --cuts")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    clean_up_on_signals()
    sweep_failed = False
    if args.bootstrap_sweep:
        from .bootstrap import sweep  # imports this module: not at the top

        sweep_report = sweep(args.mode)
        sweep_failed = bool(sweep_report.failures)
        print(("FAILED: " if sweep_failed else "PASSED: ") + sweep_report.line())
    try:
        report = PowerLossRun(RunConfig(
            seed=seed, one_member_cuts=args.cuts - all_cuts, all_member_cuts=all_cuts,
            mode=args.mode, torn_probability=args.torn_probability,
            mid_write_probability=args.mid_write_probability, root=args.dir,
            keep=args.keep)).run()
    except PowerLossFailure as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"PASSED: {report.line()}")
    return 1 if sweep_failed else 0


if __name__ == "__main__":
    sys.exit(main())
