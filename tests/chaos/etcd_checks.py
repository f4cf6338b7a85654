"""Checkers of the chaos run's etcd workloads (tests/chaos/etcd_workload.py): pure
functions over what the clients recorded, each with a unit test that feeds it a broken
history (tests/chaos/test_etcd_checks.py).

* Watches — Jepsen's etcd watch workload is the model: the canonical history is every
  event of the watched prefix, read after the run by one watch from revision 1; every
  watcher's events must be exactly that history's events from its first revision to
  its last, in order: no gap, no duplicate, no reordering, no event that is not there.
* Leases — a lease whose keep-alive was answered (TTL > 0) at time t after being sent
  at time s must not lose its key before s + TTL (the server counts from when it got
  the request, which is after s); a lease abandoned (no more keep-alives after s) must
  lose its key by s + TTL + a bound the caller states.
* Fencing — writes to the fenced resource happen through a Txn that compares the
  holder's lock key's create revision (its token); in the resource's history the tokens
  never go down: a holder whose lock was lost cannot write after its successor.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WatchEvent:
    revision: int
    key: bytes
    value: bytes
    deleted: bool


@dataclass
class WatcherLog:
    """What one watcher received, in order, with the time each event arrived."""

    name: str
    events: list[WatchEvent] = field(default_factory=list)
    received_s: list[float] = field(default_factory=list)


def check_watchers(canonical: Sequence[WatchEvent], watchers: Sequence[WatcherLog]
                   ) -> list[str]:
    problems: list[str] = []
    position = {(e.revision, e.key): i for i, e in enumerate(canonical)}
    for w in watchers:
        if not w.events:
            continue
        first = position.get((w.events[0].revision, w.events[0].key))
        if first is None:
            problems.append(f"{w.name}: event {w.events[0]} is not in the history")
            continue
        for offset, got in enumerate(w.events):
            i = first + offset
            want = canonical[i] if i < len(canonical) else None
            if got == want:
                continue
            at = position.get((got.revision, got.key))
            if at is not None and canonical[at] != got:
                at = None   # the revision happened, not this event
            if at is None:
                problems.append(f"{w.name}: event {got} is not in the history (expected "
                                f"{want})")
            elif want is None:
                problems.append(f"{w.name}: event {got} after the end of the history")
            elif at < i:
                problems.append(f"{w.name}: event {got} again or out of order, after "
                                f"{w.events[offset - 1]}")
            else:
                missed = canonical[i:at]
                problems.append(f"{w.name}: missed {len(missed)} events before {got}, "
                                f"first {missed[0]}")
            break
    return problems


@dataclass(frozen=True, slots=True)
class KeepAlive:
    sent_s: float
    answered_s: float
    ttl: int          # the answer's TTL; <= 0: the lease was gone


@dataclass
class LeaseLog:
    lease_id: int
    key: bytes
    ttl: int
    keepalives: list[KeepAlive] = field(default_factory=list)
    abandoned_s: float | None = None    # time of the last keep-alive sent, if abandoned


def check_leases(leases: Sequence[LeaseLog], deleted_seen_s: Mapping[bytes, float],
                 abandoned_bound_s: float, checked_until_s: float,
                 faults_end_s: float = 0.0) -> list[str]:
    """`deleted_seen_s`: for each lease key, the earliest time a watcher saw it
    deleted (an upper bound of the deletion's time); `checked_until_s`: until when the
    watchers were watching (an abandoned lease must be seen gone by then if its
    deadline plus the bound had passed). The bound counts from the later of the
    abandonment and `faults_end_s`: while a cluster has no leader, or changes leaders
    every few seconds, nobody can promise an expiry time."""
    problems: list[str] = []
    for lease in leases:
        deleted_s = deleted_seen_s.get(lease.key)
        if deleted_s is not None:
            for k in lease.keepalives:
                if k.ttl > 0 and k.answered_s < deleted_s and deleted_s < k.sent_s + lease.ttl:
                    problems.append(
                        f"lease {lease.lease_id:x}: its key was deleted by {deleted_s:.2f} s, "
                        f"but a keep-alive sent at {k.sent_s:.2f} s was answered TTL {k.ttl}"
                        f" (alive until at least {k.sent_s + lease.ttl:.2f} s)")
                    break
        if lease.abandoned_s is not None:
            due_s = max(lease.abandoned_s, faults_end_s) + lease.ttl + abandoned_bound_s
            late = deleted_s is not None and deleted_s > due_s
            never = deleted_s is None and checked_until_s > due_s
            if late or never:
                when = "never" if deleted_s is None else f"at {deleted_s:.2f} s"
                problems.append(
                    f"lease {lease.lease_id:x}: abandoned at {lease.abandoned_s:.2f} s "
                    f"with TTL {lease.ttl} s, its key deleted {when} (due by {due_s:.2f} s)")
    return problems


def check_fencing(resource_writes: Sequence[tuple[int, int]]) -> list[str]:
    """`resource_writes`: (revision, token) of every write to the fenced resource, from
    the canonical history. Tokens must not decrease with the revision."""
    problems: list[str] = []
    ordered = sorted(resource_writes)
    for (rev_a, tok_a), (rev_b, tok_b) in itertools.pairwise(ordered):
        if tok_b < tok_a:
            problems.append(f"the resource was written at revision {rev_b} with token "
                            f"{tok_b}, after token {tok_a} at revision {rev_a}")
    return problems
