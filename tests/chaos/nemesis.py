"""The nemesis: a seeded schedule of faults applied to a running cluster.

The schedule (which faults, in which order, for how long, which split) is drawn from the
seed before the run, so a seed names a run; only "the leader" is resolved when the
fault starts. Every fault is followed by a heal (links restored, killed nodes restarted
on the same data directory, paused nodes continued), and the run ends with a quiet
period in which nothing is broken, so the cluster must recover and serve. With
`overlap` (make chaos OVERLAP=1), half the faults are not healed before the next one
starts, so process faults pile up under partitions (a new partition replaces the old).

Fault kinds:
* isolate-leader — the leader loses every peer link (clients still reach it: it must
  stop acknowledging, Thesis §6.2 check-quorum / §6.4 reads);
* split — a random majority / minority partition (3 / 2 of 5);
* bridge — two halves that only one "bridge" node sees both of (Jepsen's bridge);
* kill — SIGKILL a node (the leader half of the time), restart it at the heal;
* pause — SIGSTOP a node (the leader half of the time), SIGCONT at the heal.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time

from tests.chaos.cluster import Cluster

FAULT_KINDS = ("isolate-leader", "split", "bridge", "kill", "pause")
# Sized so that a 60 s run holds one fault of every kind: at most 2 + 5 * 6 + 4 * 3.5
# = 46 s of faults before the quiet period at 52 s.
FIRST_FAULT_S = (1.0, 2.0)
FAULT_S = (3.0, 6.0)
HEAL_GAP_S = (2.0, 3.5)
QUIET_MIN_S = 8.0
QUIET_FRACTION = 0.12
FAULTS_MAX = 1000


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    start_s: float  # offset from the start of the run
    duration_s: float
    # drawn from the seed: a permutation of the node indexes used by the fault
    order: tuple[int, ...]
    on_leader: bool  # kill / pause: the leader rather than order[0]
    heal_after: bool = True  # False: the next fault starts on top of this one

    def describe(self) -> str:
        on_leader = self.on_leader and self.kind in ("kill", "pause")
        return (f"{self.start_s:6.1f} s +{self.duration_s:4.1f} s  {self.kind}"
                f"{' (leader)' if on_leader else ''} order={list(self.order)}"
                f"{'' if self.heal_after else '  (no heal before the next)'}")


def schedule(
    seed: int, duration_s: float, nodes: int, overlap: bool = False
) -> tuple[list[Fault], float]:
    """Faults for a run of `duration_s`, and when the quiet period starts. Every kind
    appears once before any repeats, so a run long enough for five faults covers all."""
    rng = random.Random(seed)
    overlap_rng = random.Random(f"{seed}-overlap")  # the same faults with or without
    quiet_s = max(QUIET_MIN_S, QUIET_FRACTION * duration_s)
    faults_end_s = duration_s - quiet_s
    faults: list[Fault] = []
    t = rng.uniform(*FIRST_FAULT_S)
    kinds: list[str] = []
    while len(faults) < FAULTS_MAX:
        if not kinds:
            kinds = list(FAULT_KINDS)
            rng.shuffle(kinds)
        length = rng.uniform(*FAULT_S)
        if t + length > faults_end_s:
            break
        order = list(range(1, nodes + 1))
        rng.shuffle(order)
        on_leader = rng.random() < 0.5
        heal_after = not overlap or overlap_rng.random() < 0.5
        faults.append(Fault(kinds.pop(), t, length, tuple(order), on_leader, heal_after))
        t += length + rng.uniform(*HEAL_GAP_S)
    return faults, faults_end_s


class Nemesis:
    """Apply a schedule to a cluster; keeps a log of what it did, with times."""

    def __init__(self, cluster: Cluster, faults: list[Fault], t0_s: float) -> None:
        self.cluster = cluster
        self.faults = faults
        self.t0_s = t0_s
        self.log: list[str] = []
        self._killed: list[int] = []
        self._paused: list[int] = []

    def _note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0_s:7.2f} s  {text}")

    def run(self, stop: threading.Event, until_s: float) -> None:
        """Apply every fault at its time, healing after each; returns by `until_s`."""
        for fault in self.faults:
            if not self._sleep_until(stop, fault.start_s):
                break
            self.apply(fault)
            self._sleep_until(stop, fault.start_s + fault.duration_s)
            if fault.heal_after:
                self.heal()
        self.heal()
        self._sleep_until(stop, until_s)

    def _sleep_until(self, stop: threading.Event, offset_s: float) -> bool:
        remaining_s = self.t0_s + offset_s - time.monotonic()
        return not stop.wait(max(0.0, remaining_s))

    def _victim(self, fault: Fault) -> tuple[int, str]:
        if not fault.on_leader:
            return fault.order[0], ""
        leader = self.cluster.leader()
        if leader is None:
            return fault.order[0], " (no leader known)"
        return leader, " (the leader)"

    def apply(self, fault: Fault) -> None:
        net, order = self.cluster.net, list(fault.order)
        if fault.kind == "isolate-leader":
            leader = self.cluster.leader()
            what = "leader" if leader is not None else "(no leader known) node"
            leader = order[0] if leader is None else leader
            net.partition([{leader}, set(order) - {leader}])
            self._note(f"isolate {what} {leader}")
        elif fault.kind == "split":
            minority, majority = set(order[:2]), set(order[2:])
            net.partition([majority, minority])
            self._note(f"split majority {sorted(majority)} / minority {sorted(minority)}")
        elif fault.kind == "bridge":
            bridge, rest = order[0], order[1:]
            half = len(rest) // 2
            left, right = {bridge, *rest[:half]}, {bridge, *rest[half:]}
            net.partition([left, right])
            self._note(f"bridge {bridge} between {sorted(left)} and {sorted(right)}")
        elif fault.kind == "kill":
            victim, what = self._victim(fault)
            self.cluster.kill9(victim)
            self._killed.append(victim)
            self._note(f"kill -9 node {victim}{what}")
        elif fault.kind == "pause":
            victim, what = self._victim(fault)
            self.cluster.pause(victim)
            self._paused.append(victim)
            self._note(f"SIGSTOP node {victim}{what}")
        else:
            raise AssertionError(f"unknown fault kind {fault.kind}")

    def heal(self) -> None:
        did = []
        if self.cluster.net.cut_pairs():
            self.cluster.net.heal()
            did.append("links restored")
        for i in self._paused:
            self.cluster.resume(i)
            did.append(f"SIGCONT node {i}")
        for i in self._killed:
            self.cluster.restart(i)
            did.append(f"restart node {i}")
        self._paused.clear()
        self._killed.clear()
        if did:
            self._note("heal: " + ", ".join(did))

