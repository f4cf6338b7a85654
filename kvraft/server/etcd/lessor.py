"""The lessor: every member's view of the leases, and the leader's clock on them.

The state machine holds what is replicated, the same on every member: each granted
lease's id and TTL, and the remaining TTL of its last checkpoint (`sm.leases()`). Only
the leader holds a lease's deadline, in memory, on its monotonic clock (`node.clock`).
Only the leader expires leases, and only by proposing a `lease_revoke` through Raft:
the revoke's entry deletes the lease and its keys on every member at once, as one
revision. Followers track the leases (for LeaseLeases, and to take over) but never
expire anything.

Rules, each with the etcd bug it keeps out:
* A revoke that fails (no quorum, a leader change, a timeout) is proposed again until
  the lease is gone from the state machine (etcd #10686: a revoke that failed once was
  never retried, and the lease's keys lived forever). While this member leads, one task
  per expired lease retries with a bounded backoff; if leadership moves, the new leader
  finds the lease expired on its own clock and revokes it.
* A leader change neither restarts nor shortens a TTL (etcd #9395, #9888, #17132). On
  becoming leader: deadline = now + remaining + EXTENSION, where remaining is the lease's
  last checkpointed remaining TTL (its granted TTL if it has none) and the extension is
  one election timeout. The leader checkpoints remaining TTLs through Raft
  (`lease_checkpoint` entries, several leases per entry, at most
  CHECKPOINT_LEASES_PER_ENTRY_MAX) every CHECKPOINT_INTERVAL_S, for the leases whose
  remaining has moved at least that far (or half its TTL, if that is less) from the
  recorded one: so an abandoned lease lives at most about one interval plus one
  extension longer per failover, and a lease kept alive every TTL/3 costs no
  checkpoints at all (its remaining never moves half its TTL).
* A TTL below the minimum is raised to it, as etcd does: minTTL = ceil(3/2 election
  timeout) seconds (`min_lease_ttl_s`), so that a lease always outlives an election.
  Above LEASE_TTL_MAX_S a grant is refused (lease.py).
* Keep-alives reach the leader: a follower forwards them (lease.py). The leader renews
  only after a ReadIndex round confirms that it still leads, so a deposed leader cannot
  tell a client that its lease was renewed when the new leader never heard of it.

Why a client that keeps its lease alive every TTL/3 never loses it through a failover.
Write T for the TTL, E for the extension (one election timeout), d for a bound on how
long a keep-alive takes from the client to the leader (through a follower or not) once
a leader exists.
1. While one leader leads, each renewal sets deadline = now + T, and renewals arrive at
   most T/3 + d apart, so the lease's remaining on the leader's clock never falls below
   2T/3 - d. Every checkpoint it writes therefore records at least 2T/3 - d (rounded up,
   and at most T).
2. No one revokes the lease before a new leader's deadline passes: followers never
   expire; the old leader is dead, or deposed and unable to commit (check-quorum steps it
   down); by 1 it never saw the deadline pass, so no revoke of it is in any log.
3. A new leader elected at t_L sets deadline >= t_L + (2T/3 - d) + E (by 1; t_L + T + E
   when there is no checkpoint); a lease it learns of later, from an applied grant, gets
   now + T.
4. The client's keep-alives go on every T/3 against the members it can reach; the first
   one after t_L reaches the new leader by t_L + T/3 + d, before the deadline of 3 when
   T/3 + E > 2d. Since T >= minTTL = 3E/2, T/3 >= E/2, so d < 3E/4 is enough: a keep-alive
   crosses in under three quarters of an election timeout, which Raft already assumes of
   a message for a leader to be stable at all (broadcast time << election timeout).
From then on 1 holds again under the new leader. 1 assumes a holder that never lapsed:
one that did (cut off for half its TTL) may have been checkpointed low, and renewing it
does not move the record by itself — until the next round (CHECKPOINT_INTERVAL_S, more
than a short TTL) a failover would clock the renewed lease from the low record. So a
renewal of a lease whose record is below RENEWED_RECORD_MIN_SHARE of its TTL asks for a
checkpoint round at once (etcd's Renew likewise resets a checkpointed remaining TTL);
from its commit on, 1's bound holds again. An old checkpoint that a new leader
applies after taking over never moves its deadlines (3 already counted with one).

Threading and time: everything here runs on the node's event loop (listeners, the timer
task, the revoke and checkpoint proposals); nothing blocks, and no thread is started.
Deadlines are on `node.clock` and the timer sleeps on the loop's timers, so a node built
on a virtual clock and loop (tests/simcluster) drives the lessor's expiry on virtual
time; `tasks()` lists what it runs, for a harness that kills the process.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import StateRole
from kvraft.storage import ApplyResult
from kvraft.storage.commands import CommandDecodeError, decode_command, etcd_command

from .. import storage_adapter as sa
from ..node import Node
from ..waiters import NodeError

log = logging.getLogger("kvraft.server.etcd.lessor")

LEASE_TTL_MAX_S = 9_000_000_000          # etcd's MaxLeaseTTL ("too large lease TTL")
CHECKPOINT_INTERVAL_S = 5.0              # how often the leader checkpoints remaining TTLs
CHECKPOINT_LEASES_PER_ENTRY_MAX = 1_000  # leases per checkpoint entry (~22 bytes each)
REVOKES_IN_FLIGHT_MAX = 64               # revoke proposals at once; the rest wait their turn
REVOKE_TIMEOUT_S = 5.0                   # one revoke proposal's wait
REVOKE_RETRY_MIN_S = 0.1                 # backoff between failed revokes: doubles ...
REVOKE_RETRY_MAX_S = 2.0                 # ... up to this
CHECKPOINT_TIMEOUT_S = 5.0
# A renewal of a lease recorded with less than this share of its TTL left has it
# checkpointed at once (the docstring's last paragraph): 2/3 is the least a lease kept
# alive every TTL/3 is ever recorded with (rule 1), so such a lease never asks.
RENEWED_RECORD_MIN_SHARE = 2 / 3

# ApplyResult.kind of the lease commands (command.proto fields 11-13).
LEASE_GRANT = "lease_grant"
LEASE_REVOKE = "lease_revoke"
LEASE_CHECKPOINT = "lease_checkpoint"
LEASE_KINDS = frozenset({LEASE_GRANT, LEASE_REVOKE, LEASE_CHECKPOINT})


def min_lease_ttl_s(election_timeout_s: float) -> int:
    """etcd's minLeaseTTL: ceil(3/2 election timeout) in whole seconds (etcdserver
    server.go), so a lease outlives the election that may follow its leader's loss."""
    return max(1, math.ceil(3 * election_timeout_s / 2 - 1e-9))


def granted_ttl_s(requested_s: int, min_ttl_s: int) -> int:
    """The TTL a grant records: etcd raises a TTL below the minimum to it (lessor.Grant);
    the caller refuses one above LEASE_TTL_MAX_S first."""
    return max(requested_s, min_ttl_s)


class LeaseRecordLike(Protocol):
    """What the state machine records of a lease (kvraft.storage's LeaseRecord)."""

    @property
    def id(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def remaining_ttl(self) -> int: ...


@dataclass(slots=True)
class LeaseState:
    """One lease as this member's lessor knows it."""

    id: int
    ttl: int           # granted TTL in seconds, as the state machine records it
    checkpointed: int  # remaining TTL of the last applied checkpoint, seconds; 0 = none
    # Leader only: when the lease expires, on the leader's clock; 0.0 while not leading.
    # Invariant while leading: the table's heap holds an entry (at, id) with at <= deadline.
    deadline: float = 0.0
    # Leader only: its deadline passed and a revoke task owns it; it is never renewed again.
    revoking: bool = False
    # Leader only: renewed while its record was below RENEWED_RECORD_MIN_SHARE of its TTL;
    # due for a checkpoint whatever its divergence, until a checkpoint of it applies.
    renewed_low: bool = False

    def recorded_remaining(self) -> int:
        """The remaining TTL a new leader would start from (rule 3 of the docstring)."""
        return self.checkpointed or self.ttl


class LeaseTable:
    """The lessor's state, with time passed in: deterministic, no I/O, no loop.

    `leases` mirrors the state machine's leases (by the apply listener); while
    `leading`, every lease has a deadline and `_heap` orders them. The heap is lazy:
    renewals only push deadlines later and do not touch it; an entry that comes due is
    checked against the lease's current deadline and pushed again if it moved. So the
    heap holds about one entry per lease, whatever the keep-alive rate."""

    def __init__(self, *, extension_s: float, checkpoint_divergence_s: float) -> None:
        self.extension_s = extension_s
        self.checkpoint_divergence_s = checkpoint_divergence_s
        self.leases: dict[int, LeaseState] = {}
        self.leading = False
        self._heap: list[tuple[float, int]] = []

    # --- what the state machine says -------------------------------------------------
    def load(self, records: Iterable[LeaseRecordLike], now: float) -> None:
        """Replace the leases by the state machine's (at start, after a snapshot
        install). A lease the leader already clocks keeps its deadline; one new to it is
        clocked as on promotion."""
        old = self.leases
        self.leases = {}
        for r in records:
            lease = LeaseState(r.id, r.ttl, r.remaining_ttl)
            if self.leading:
                prev = old.get(r.id)
                if prev is not None and prev.ttl == r.ttl:
                    lease.deadline, lease.revoking = prev.deadline, prev.revoking
                else:
                    lease.deadline = now + lease.recorded_remaining() + self.extension_s
                    heapq.heappush(self._heap, (lease.deadline, lease.id))
            self.leases[r.id] = lease

    def grant(self, lease_id: int, ttl: int, now: float) -> None:
        """A grant applied: a leader clocks it from now (rule 3)."""
        lease = LeaseState(lease_id, ttl, 0)
        if self.leading:
            lease.deadline = now + ttl
            heapq.heappush(self._heap, (lease.deadline, lease_id))
        self.leases[lease_id] = lease

    def revoke(self, lease_id: int) -> None:
        """A revoke applied: the lease is gone (its heap entry is dropped when due)."""
        self.leases.pop(lease_id, None)

    def checkpoint(self, lease_id: int, remaining_s: int) -> None:
        """A checkpoint applied: recorded for a future leader; a leader's deadline does
        not move (its own checkpoint says what its clock says; an older leader's one is
        stale, see the docstring's last paragraph)."""
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.checkpointed = remaining_s
            lease.renewed_low = False

    # --- leadership --------------------------------------------------------------------
    def promote(self, now: float) -> None:
        """This member became leader: clock every lease from its recorded remaining TTL
        plus the extension (rule 3)."""
        self.leading = True
        self._heap = []
        for lease in self.leases.values():
            lease.deadline = now + lease.recorded_remaining() + self.extension_s
            lease.revoking = lease.renewed_low = False
            self._heap.append((lease.deadline, lease.id))
        heapq.heapify(self._heap)

    def demote(self) -> None:
        """This member stopped leading: its clock on the leases means nothing now."""
        self.leading = False
        self._heap = []
        for lease in self.leases.values():
            lease.deadline = 0.0
            lease.revoking = lease.renewed_low = False

    # --- the leader's clock ------------------------------------------------------------
    def renew(self, lease_id: int, now: float) -> int:
        """A keep-alive on the leader: the lease's TTL, now counted from `now`; 0 when
        the lease is unknown or already expired (etcd answers TTL 0 then)."""
        assert self.leading
        lease = self.leases.get(lease_id)
        if lease is None or lease.revoking or lease.deadline <= now:
            return 0
        lease.deadline = now + lease.ttl
        if lease.recorded_remaining() < RENEWED_RECORD_MIN_SHARE * lease.ttl:
            lease.renewed_low = True
        return lease.ttl

    def renewed_low(self) -> bool:
        """Some lease was renewed while recorded low and its checkpoint is not applied
        yet (a checkpoint round should run now)."""
        return self.leading and any(lease.renewed_low for lease in self.leases.values())

    def remaining_s(self, lease_id: int, now: float) -> float | None:
        """Seconds left on the leader's clock (<= 0 once expired); None if unknown."""
        assert self.leading
        lease = self.leases.get(lease_id)
        if lease is None:
            return None
        return 0.0 if lease.revoking else lease.deadline - now

    def next_deadline(self) -> float | None:
        """The earliest time a lease may expire (a lower bound); None if none can."""
        return self._heap[0][0] if self.leading and self._heap else None

    def pop_expired(self, now: float, limit: int) -> list[int]:
        """The leases whose deadline passed, at most `limit`; each is marked revoking
        and returned once per leadership (its revoke task retries until it is gone)."""
        expired: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(expired) < limit:
            _, lease_id = heapq.heappop(heap)
            lease = self.leases.get(lease_id)
            if lease is None or lease.revoking:
                continue
            if lease.deadline > now:
                heapq.heappush(heap, (lease.deadline, lease_id))   # renewed since
                continue
            lease.revoking = True
            expired.append(lease_id)
        return expired

    def due_checkpoints(self, now: float, limit: int) -> list[tuple[int, int]]:
        """(id, remaining seconds) of the leases whose remaining on the leader's clock
        is at least `checkpoint_divergence_s` away from the recorded one, the farthest
        first, at most `limit` (the rest come in a later round, once they are the
        farthest). Remaining is rounded up and at most the TTL: a checkpoint never
        shortens a lease, and repeated failovers cannot grow one past its TTL."""
        due: list[tuple[float, int, int]] = []
        for lease in self.leases.values():
            if lease.revoking:
                continue
            remaining = min(lease.ttl, math.ceil(lease.deadline - now))
            if remaining <= 0:
                continue
            divergence = abs(remaining - lease.recorded_remaining())
            # A short lease is checkpointed once half its TTL has gone (else a new
            # leader would give an abandoned one its whole TTL again at every
            # failover: etcd #9395); a kept-alive one (renewed every TTL/3) never
            # drifts that far, so it still costs no checkpoints.
            if lease.renewed_low or \
                    divergence >= min(self.checkpoint_divergence_s, max(1.0, lease.ttl / 2)):
                due.append((-divergence, lease.id, remaining))
        due.sort()
        return [(lease_id, remaining) for _, lease_id, remaining in due[:limit]]


class Lessor:
    """The table driven by a node: fed by its apply and role listeners, with one timer
    task that sleeps until the earliest deadline or checkpoint (never polls), and the
    revoke and checkpoint proposals."""

    def __init__(self, node: Node, *, checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
                 extension_s: float | None = None,
                 request_ids: Callable[[], int] = sa.new_request_id) -> None:
        self.node = node
        # The ids of its revoke and checkpoint proposals (a simulation passes a seeded
        # source: a run must be a function of its seed).
        self._request_id = request_ids
        election_timeout_s = node.config.election_tick * node.config.tick_interval_s
        self.min_ttl_s = min_lease_ttl_s(election_timeout_s)
        self.checkpoint_interval_s = checkpoint_interval_s
        self.table = LeaseTable(
            extension_s=election_timeout_s if extension_s is None else extension_s,
            checkpoint_divergence_s=checkpoint_interval_s)
        self._wake = asyncio.Event()
        # Bumped at every promotion and demotion: a revoke task of an older leadership
        # stops (the new leader, if any, owns the revokes now).
        self._generation = 0
        self._revokes: dict[int, asyncio.Task[None]] = {}   # lease id -> its revoke task
        self._checkpoint: asyncio.Task[None] | None = None  # the one in flight, if any
        self._next_checkpoint_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.revokes_proposed = 0       # counters, for tests and metrics
        self.checkpoints_proposed = 0

    # --- wiring ------------------------------------------------------------------------
    def attach(self) -> None:
        """Learn the leases from the state machine and follow its applies and the node's
        role. Call before the node starts."""
        self.table.load(self.node.store.sm.leases(), self.node.clock())
        self.node.apply_listeners.append(self._on_applied)
        self.node.role_listeners.append(self._on_role)
        if self.node.raw.raft.state == StateRole.Leader:
            self._on_role(self.node.id, StateRole.Leader)

    def start(self) -> None:
        """Start the timer task (on the running loop); it ends when the node stops."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lessor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def tasks(self) -> list[asyncio.Task[None]]:
        """The tasks running now: the timer, the revokes, the checkpoint in flight."""
        running = [self._task] if self._task is not None else []
        running.extend(self._revokes.values())
        if self._checkpoint is not None:
            running.append(self._checkpoint)
        return [t for t in running if not t.done()]

    @property
    def leading(self) -> bool:
        return self.table.leading

    def renew(self, lease_id: int) -> int:
        """Renew on this member, which must lead (lease.py checks, after a ReadIndex). A
        lease recorded low is checkpointed at once (the docstring's last paragraph)."""
        now = self.node.clock()
        ttl = self.table.renew(lease_id, now)
        if ttl and self.table.leases[lease_id].renewed_low:
            self._checkpoint_now(now)
        return ttl

    def _checkpoint_now(self, now: float) -> None:
        """Have the timer run a checkpoint round at once (after the one in flight)."""
        if self._checkpoint is None and self._next_checkpoint_at > now:
            self._next_checkpoint_at = now
            self._wake.set()

    def remaining_s(self, lease_id: int) -> float | None:
        return self.table.remaining_s(lease_id, self.node.clock())

    # --- listeners (on the loop) -------------------------------------------------------
    def _on_applied(self, entries: list[eraftpb.Entry], results: list[ApplyResult]) -> None:
        now = self.node.clock()
        if not entries:   # a snapshot was installed: the state machine is all new
            self.table.load(self.node.store.sm.leases(), now)
            self._wake.set()
            return
        # By index: the state machine gives no result for an entry it had applied before
        # a restart and the log handed out again, so the lists may differ in length.
        by_index = {r.index: r for r in results}
        for entry in entries:
            result = by_index.get(entry.index)
            if result is None or result.kind not in LEASE_KINDS:
                continue
            try:
                command = decode_command(entry.data)
            except CommandDecodeError:
                continue
            op = command.WhichOneof("op")
            if op == LEASE_GRANT:
                # The state machine as of the end of the batch: a lease revoked later
                # in it is gone already; a refused grant (the id was taken) finds the
                # lease that had the id in the table and leaves it alone.
                lease_id = command.lease_grant.ID
                record = self.node.store.sm.lease(lease_id)
                if record is not None and lease_id not in self.table.leases:
                    self.table.grant(lease_id, record.ttl, now)
                    self._wake.set()
            elif op == LEASE_REVOKE:
                self.table.revoke(command.lease_revoke.ID)
            elif op == LEASE_CHECKPOINT:
                for cp in command.lease_checkpoint.checkpoints:
                    self.table.checkpoint(cp.ID, cp.remaining_TTL)

    def _on_role(self, leader_id: int, role: StateRole) -> None:
        leading = role == StateRole.Leader
        if leading == self.table.leading:
            return
        self._generation += 1
        now = self.node.clock()
        if leading:
            self.table.promote(now)
            self._next_checkpoint_at = now + self.checkpoint_interval_s
            log.info("node %d: lessor clocks %d lease(s) as leader (extension %.1f s)",
                     self.node.id, len(self.table.leases), self.table.extension_s)
        else:
            self.table.demote()
        self._wake.set()

    # --- the timer task ----------------------------------------------------------------
    async def _run(self) -> None:
        stopped = asyncio.ensure_future(self.node.wait_stopped())
        try:
            while not stopped.done():
                self._wake.clear()
                now = self.node.clock()
                if self.table.leading:
                    self._start_revokes(now)
                    if now >= self._next_checkpoint_at:
                        self._maybe_checkpoint(now)
                        self._next_checkpoint_at = now + self.checkpoint_interval_s
                wait_s = self._wait_s(now)
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({woken, stopped}, timeout=wait_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
        finally:
            stopped.cancel()
            for task in list(self._revokes.values()):
                task.cancel()
            if self._checkpoint is not None:
                self._checkpoint.cancel()

    def _wait_s(self, now: float) -> float | None:
        """How long the timer sleeps: until the earliest deadline (unless the revokes
        are at their bound: a finishing one wakes it) or the next checkpoint round;
        forever on a follower (a promotion wakes it)."""
        if not self.table.leading:
            return None
        wake_at = self._next_checkpoint_at
        deadline = self.table.next_deadline()
        if deadline is not None and len(self._revokes) < REVOKES_IN_FLIGHT_MAX:
            wake_at = min(wake_at, deadline)
        return max(0.0, wake_at - now)

    def _start_revokes(self, now: float) -> None:
        room = REVOKES_IN_FLIGHT_MAX - len(self._revokes)
        if room <= 0:
            return
        loop = asyncio.get_running_loop()
        for lease_id in self.table.pop_expired(now, room):
            log.info("node %d: lease %016x expired; revoking", self.node.id, lease_id)
            self._revokes[lease_id] = loop.create_task(
                self._revoke(lease_id, self._generation), name=f"lease-revoke-{lease_id:x}")

    async def _revoke(self, lease_id: int, generation: int) -> None:
        """Propose the revoke until the lease is gone from the state machine, for as long
        as this leadership lasts (etcd #10686)."""
        backoff_s = REVOKE_RETRY_MIN_S
        try:
            while self._generation == generation and not self.node.stopping:
                if self.node.store.sm.lease(lease_id) is None:
                    return
                request_id = self._request_id()
                data = etcd_command(request_id, LEASE_REVOKE,
                                    etcdpb.LeaseRevokeRequest(ID=lease_id))
                self.revokes_proposed += 1
                try:
                    await self.node.propose(request_id, data, REVOKE_TIMEOUT_S)
                    continue   # applied (or refused: not found): the check above decides
                except NodeError as e:
                    log.info("node %d: revoke of lease %016x failed (%s); retrying in %.1f s",
                             self.node.id, lease_id, e.message, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(2 * backoff_s, REVOKE_RETRY_MAX_S)
        finally:
            if self._revokes.get(lease_id) is asyncio.current_task():
                del self._revokes[lease_id]
            self._wake.set()

    def _maybe_checkpoint(self, now: float) -> None:
        if self._checkpoint is not None:
            return   # the last round's entry is still on its way; the next round recounts
        due = self.table.due_checkpoints(now, CHECKPOINT_LEASES_PER_ENTRY_MAX)
        if not due:
            return
        request = etcdpb.LeaseCheckpointRequest(checkpoints=[
            etcdpb.LeaseCheckpoint(ID=lease_id, remaining_TTL=remaining)
            for lease_id, remaining in due])
        self._checkpoint = asyncio.get_running_loop().create_task(
            self._propose_checkpoint(request), name="lease-checkpoint")

    async def _propose_checkpoint(self, request: etcdpb.LeaseCheckpointRequest) -> None:
        """One proposal, best effort: a lost one is recounted by the next round."""
        applied = False
        try:
            request_id = self._request_id()
            self.checkpoints_proposed += 1
            await self.node.propose(request_id,
                                    etcd_command(request_id, LEASE_CHECKPOINT, request),
                                    CHECKPOINT_TIMEOUT_S)
            applied = True
        except NodeError as e:
            log.info("node %d: lease checkpoint of %d lease(s) failed: %s",
                     self.node.id, len(request.checkpoints), e.message)
        finally:
            self._checkpoint = None
            # A lease renewed low while this one was on its way goes at once; after a
            # failure, the next round retries (no burst of proposals without a quorum).
            if applied and self.table.renewed_low():
                self._checkpoint_now(self.node.clock())
