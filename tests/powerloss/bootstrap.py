"""Power cuts at every fsync of a founding member's first start (issue 11, item 3).

    python -m tests.powerloss.bootstrap [--mode ext4|posix] [--points 1,5,9]

A random cut almost never lands inside bootstrap, which takes a few milliseconds, so
this sweep places one there on purpose: a fresh 3-node cluster is started with node 1's
lazyfs armed to lose power right after its k-th fsync (lazyfs `arm`); node 1 is then
SIGKILLed, cut, remounted and restarted, and must rejoin (serve, know the leader, apply
a write made after its restart). k runs over every fsync node 1 makes until it serves,
as counted by a first, uncut start; each point names the fsync it follows.

A start may need fewer fsyncs to serve than the measuring one (fewer election rounds):
its later points are then reached by writes through the other members, just after
bootstrap. A member that cannot bind its port (another process on this machine took
it after the harness picked it) is not the store's failure: the point runs again on a
fresh cluster. A failure names the member that exited and the error line of its
current start (the victim's first start always ends in the EIO of its frozen mount).
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kvraft.client import Client, KvraftError
from tests.cluster.harness import ClusterError, LocalCluster, wait_until

from .mount import LazyFsError, LazyMount, clean_up_on_signals
from .nodelog import address_taken, last_error
from .run import close_lazy_cluster, lazy_cluster

VICTIM = 1
FREEZE_TIMEOUT_S = 30.0
REJOIN_TIMEOUT_S = 45.0
PORT_RETRIES_MAX = 3
NUDGE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.05


@dataclass
class SweepReport:
    mode: str
    root: str
    points: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"bootstrap sweep ({self.mode}): {self.points} cut points, "
                f"{len(self.failures)} where the cluster did not recover")


def _bootstrap_journal(root: Path, mode: str) -> list[str]:
    """The fsyncs node 1 makes from its first start until it serves."""
    cluster, mounts = lazy_cluster(root, mode)
    try:
        for node_id in cluster.nodes:
            cluster.launch(node_id)
        cluster.wait_serving(VICTIM)
        return mounts[VICTIM].sync_journal()
    finally:
        close_lazy_cluster(cluster, mounts)


def _rejoins(cluster: LocalCluster, point: int) -> None:
    """Node 1 serves, knows a leader, and applies a write made after its restart."""
    node = cluster.nodes[VICTIM]

    def knows_leader() -> bool:
        if not node.running():
            code = node.proc.returncode if node.proc else None
            raise ClusterError(f"node {VICTIM} exited with {code}")
        return cluster.status(VICTIM, timeout_s=1.0).header.leader_id > 0

    wait_until(knows_leader, REJOIN_TIMEOUT_S, f"node {VICTIM} to serve and know a leader")
    others = [i for i in cluster.nodes if i != VICTIM]
    with Client(cluster.endpoints(others), timeout=10.0) as client:
        client.put(b"bootstrap/%d" % point, b"after the cut")
    leader = cluster.wait_leader()
    target = cluster.status(leader).header.applied_index
    cluster.wait_applied(VICTIM, target, timeout_s=REJOIN_TIMEOUT_S)
    value = cluster.get(VICTIM, b"bootstrap/%d" % point, serializable=True)
    if value != b"after the cut":
        raise ClusterError(f"node {VICTIM} applied index {target} without the write "
                           f"made before it (found {value!r})")


@dataclass
class PointResult:
    landed: str            # the path whose fsync the power failed after, in THIS start
    problem: str | None    # None: the cluster recovered
    nudges: int = 0        # writes it took to reach the fsync (0: inside bootstrap)
    port_retries: int = 0  # fresh clusters because a member's address was taken


class AddressTaken(ClusterError):
    """A member could not listen: another process on this machine took its port
    between the harness picking it and the member binding it. Not the store's fault:
    the point is run again on fresh ports."""


def _one_point(root: Path, mode: str, point: int) -> PointResult:
    """Cut node 1 right after its `point`-th fsync; say where that was, and whether
    the cluster recovered. A member that cannot bind its address (another test took
    the port) makes a fresh cluster, at most PORT_RETRIES_MAX times."""
    for attempt in range(PORT_RETRIES_MAX + 1):
        try:
            result = _one_cluster(root / f"try{attempt}" if attempt else root, mode, point)
        except AddressTaken as e:
            if attempt == PORT_RETRIES_MAX:
                return PointResult("?", f"{e} (on {attempt + 1} fresh clusters)",
                                   port_retries=attempt)
            continue
        result.port_retries = attempt
        return result
    raise AssertionError("unreachable")


def _one_cluster(root: Path, mode: str, point: int) -> PointResult:
    cluster, mounts = lazy_cluster(root, mode)
    victim: LazyMount = mounts[VICTIM]
    try:
        victim.arm(point)
        for node_id in cluster.nodes:
            cluster.launch(node_id)
        nudges = _wait_frozen(cluster, victim, point)
        # Timing decides how many log fsyncs come before serving: the k-th fsync of
        # this start need not be the measuring start's k-th.
        journal = victim.sync_journal()
        landed = journal[point - 1] if point <= len(journal) else "?"
        cluster.kill9(VICTIM)
        victim.cut(seed=point, torn_probability=0.5)
        victim.start()
        cluster.launch(VICTIM)
        try:
            _rejoins(cluster, point)
        except (ClusterError, KvraftError) as e:
            _raise_if_address_taken(cluster)
            return PointResult(landed, _why(cluster, str(e).splitlines()[0]), nudges)
        return PointResult(landed, None, nudges)
    finally:
        close_lazy_cluster(cluster, mounts)


def _wait_frozen(cluster: LocalCluster, victim: LazyMount, point: int) -> int:
    """Wait until node 1's lazyfs froze after its `point`-th fsync; return how many
    writes that took. A start that needs fewer fsyncs to serve than the measuring one
    goes idle before it: once it serves, each write makes node 1 fsync its log again,
    so the point is still reached (just after bootstrap rather than inside it)."""
    deadline = time.monotonic() + FREEZE_TIMEOUT_S
    nudges = 0
    others = [i for i in cluster.nodes if i != VICTIM]
    while not victim.counters()["frozen"]:
        for node_id, node in cluster.nodes.items():
            if node.proc is not None and not node.running():
                if node_id == VICTIM and victim.counters()["frozen"]:
                    return nudges  # froze since the loop's check, and died of its EIO
                _raise_if_address_taken(cluster)
                raise ClusterError(
                    f"node {node_id} exited with {node.proc.returncode} before node "
                    f"{VICTIM}'s fsync {point}: {last_error(node.log_path)}")
        if time.monotonic() >= deadline:
            raise ClusterError(f"node {VICTIM} did not reach fsync {point} within "
                               f"{FREEZE_TIMEOUT_S:.0f} s ({nudges} writes made to get there)")
        if _serving_with_leader(cluster, VICTIM):
            with contextlib.suppress(KvraftError), \
                    Client(cluster.endpoints(others), timeout=NUDGE_TIMEOUT_S) as client:
                client.put(b"nudge/%d" % nudges, b"x")
                nudges += 1
        time.sleep(POLL_INTERVAL_S)
    return nudges


def _serving_with_leader(cluster: LocalCluster, node_id: int) -> bool:
    try:
        return cluster.status(node_id, timeout_s=0.5).header.leader_id > 0
    except grpc.RpcError:
        return False


def _raise_if_address_taken(cluster: LocalCluster) -> None:
    for node_id, node in sorted(cluster.nodes.items()):
        if node.proc is None or node.running():
            continue
        line = address_taken(node.log_path)
        if line is not None:
            raise AddressTaken(f"node {node_id} could not listen: {line}")


def _why(cluster: LocalCluster, what: str) -> str:
    """`what` went wrong; add each member that exited on its own (or the victim, if it
    still runs) and the last error line it logged in its CURRENT start. A node's log
    holds all its starts, and the victim's first one always ends in the EIO of the
    frozen mount: that line says nothing about why the restarted cluster failed."""
    exited = [i for i, n in sorted(cluster.nodes.items())
              if n.proc is not None and not n.running() and not n.stopped_by_harness]
    said = []
    for node_id in exited or [VICTIM]:
        node = cluster.nodes[node_id]
        code = node.proc.returncode if node.proc is not None else None
        state = f"exited with {code}" if node_id in exited else "still runs"
        said.append(f"node {node_id} ({state}, start #{node.starts}): "
                    f"{last_error(node.log_path)}")
    return f"{what}; " + "; ".join(said)


def sweep(mode: str = "ext4", points: Iterable[int] | None = None, root: Path | None = None,
          log: Callable[[str], None] = print, keep: bool = False) -> SweepReport:
    base = Path(root or tempfile.mkdtemp(prefix="kvraft-bootstrap-"))
    report = SweepReport(mode, str(base))
    journal = _bootstrap_journal(base / "measure", mode)
    chosen = list(points) if points is not None else list(range(1, len(journal) + 1))
    log(f"bootstrap sweep ({mode}): node {VICTIM} makes {len(journal)} fsyncs before it "
        f"serves; cutting after each of {chosen} (directory {base})")
    for point in chosen:
        started = time.monotonic()
        where = journal[point - 1] if point <= len(journal) else "?"
        try:
            result = _one_point(base / f"point{point:03d}", mode, point)
            problem = result.problem
            if result.landed != where:
                where = f"{result.landed}; in the measuring start {where}"
        except (ClusterError, LazyFsError) as e:
            problem = f"the sweep could not run this point: {str(e).splitlines()[0]}"
        report.points += 1
        if problem is None:
            shutil.rmtree(base / f"point{point:03d}", ignore_errors=True)
            notes = "".join([
                f", reached after {result.nudges} writes" if result.nudges else "",
                f", {result.port_retries} fresh clusters (a port was taken)"
                if result.port_retries else ""])
            log(f"  cut after fsync {point:>2} ({where}): rejoined "
                f"({time.monotonic() - started:.0f} s{notes})")
        else:
            failure = (f"cut after fsync {point} ({where}): {problem} "
                       f"[kept: {base / f'point{point:03d}'}]")
            report.failures.append(failure)
            log(f"  {failure}")
    if not report.failures and not keep:
        shutil.rmtree(base, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.powerloss.bootstrap",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["ext4", "posix"], default="ext4")
    parser.add_argument("--points", default=None,
                        help="comma-separated fsync numbers [default: every one]")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    points = [int(p) for p in args.points.split(",")] if args.points else None
    clean_up_on_signals()
    report = sweep(args.mode, points, args.dir)
    print(("FAILED: " if report.failures else "PASSED: ") + report.line())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
