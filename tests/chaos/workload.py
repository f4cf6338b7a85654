"""Concurrent clients that record a history for the linearizability checker.

Each client thread has its own `kvraft.client.Client` (its own failover state; every
other client is pinned to a single member instead) and runs
a closed loop of put (a value unique to the run), linearizable get and compare-and-swap
on a small key set, every call with a deadline. The CAS expects the value that client
last saw for the key, as a real read-modify-write would; a failed CAS records the
current value the server reported, which the checker treats as a read.

Outcomes, as the client reports them (kvraft.client's docstring):
* success -> a completed operation with its result;
* a write that failed with `outcome_unknown` (deadline, connection lost after sending,
  an unmarked UNAVAILABLE) or any unexpected error -> indeterminate: it stays open;
* a write that failed *certainly unapplied* (refused before proposing) -> left out of
  the history; if it did take effect after all, a read of its unique value exposes it;
* a read that failed -> left out (it has no effect).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
import traceback

from kvraft.client import Client, KvraftError
from tests.chaos.linearizability import Kind, Op

CALL_TIMEOUT_S = 2.0
THINK_TIME_MAX_S = 0.01
JOIN_TIMEOUT_S = 30.0
# Bound on the recorded history; a client stops issuing operations past it.
OPS_MAX = 200_000
ERRORS_KEPT_MAX = 50


@dataclasses.dataclass
class Stats:
    ok: int = 0
    indeterminate: int = 0
    write_refused: int = 0
    read_failed: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


class Workload:
    def __init__(
        self,
        endpoints: list[str],
        seed: int,
        clients: int = 6,
        keys: int = 4,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self.endpoints = endpoints
        self.seed = seed
        self.clients = clients
        self.keys = [b"chaos-%d" % k for k in range(keys)]
        self.call_timeout_s = call_timeout_s
        self.t0_s = time.monotonic()
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats = Stats()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for c in range(self.clients):
            t = threading.Thread(target=self._client_loop, args=(c,), name=f"chaos-client-{c}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"client threads did not stop: {stuck}"

    def history(self) -> list[Op]:
        with self._lock:
            return sorted(self._ops, key=lambda op: op.id)

    def record(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def next_id(self) -> int:
        return next(self._ids)

    # -- one client ----------------------------------------------------------------------

    def _client_loop(self, c: int) -> None:
        rng = random.Random(self.seed * 1000 + c)
        endpoints = list(self.endpoints)
        rng.shuffle(endpoints)
        if c % 2 == 1:
            # Pinned to one member, no failover: a follower, a partitioned minority or a
            # deposed leader then keeps receiving requests and must answer them right.
            endpoints = [self.endpoints[(c // 2) % len(self.endpoints)]]
        last_seen: dict[bytes, bytes | None] = {}
        with Client(endpoints, timeout=self.call_timeout_s) as client:
            while not self._stop.is_set() and len(self._ops) < OPS_MAX:
                key = rng.choice(self.keys)
                roll = rng.random()
                kind = Kind.GET if roll < 0.5 else Kind.PUT if roll < 0.8 else Kind.CAS
                op_id = self.next_id()
                value = b"c%d-%d" % (c, op_id)
                expected = last_seen.get(key)
                self._one(client, c, op_id, key, kind, value, expected, last_seen)
                self._stop.wait(rng.uniform(0, THINK_TIME_MAX_S))

    def _one(
        self, client: Client, c: int, op_id: int, key: bytes, kind: Kind, value: bytes,
        expected: bytes | None, last_seen: dict[bytes, bytes | None],
    ) -> None:
        base = Op(id=op_id, client=c, key=key, kind=kind, invoke_s=time.monotonic(),
                  complete_s=None)
        try:
            if kind is Kind.GET:
                got = client.get(key, timeout=self.call_timeout_s)
                done = dataclasses.replace(base, complete_s=time.monotonic(), result=got)
                last_seen[key] = got
            elif kind is Kind.PUT:
                client.put(key, value, timeout=self.call_timeout_s)
                done = dataclasses.replace(base, complete_s=time.monotonic(), value=value)
                last_seen[key] = value
            else:
                cas = client.compare_and_swap(key, expected, value,
                                              timeout=self.call_timeout_s)
                done = dataclasses.replace(
                    base, complete_s=time.monotonic(), value=value, expected=expected,
                    result=cas.succeeded, current=None if cas.succeeded else cas.current,
                    current_known=not cas.succeeded,
                )
                last_seen[key] = value if cas.succeeded else cas.current
        except KvraftError as err:
            self._failed(base, value, expected, err, certain=not err.outcome_unknown)
            return
        except Exception as err:  # a client bug must not hide a possibly applied write
            self._failed(base, value, expected, err, certain=False)
            self._note(f"client {c} op {op_id}: {traceback.format_exc(limit=3)}")
            return
        self.record(done)
        with self._lock:
            self.stats.ok += 1

    def _failed(
        self, base: Op, value: bytes, expected: bytes | None, err: Exception, certain: bool
    ) -> None:
        with self._lock:
            if base.kind is Kind.GET:
                self.stats.read_failed += 1
                return
            if certain:
                self.stats.write_refused += 1
                return
            self.stats.indeterminate += 1
        self.record(dataclasses.replace(base, value=value, expected=expected))

    def _note(self, text: str) -> None:
        with self._lock:
            if len(self.stats.errors) < ERRORS_KEPT_MAX:
                self.stats.errors.append(text)

    # -- after the run -----------------------------------------------------------------

    def final_reads(self, timeout_s: float) -> dict[bytes, bytes | None]:
        """One linearizable read per key after everything healed, recorded in the history
        like any other read (so the checker verifies that no acknowledged write is lost),
        retried until it succeeds or `timeout_s` passes."""
        out: dict[bytes, bytes | None] = {}
        deadline = time.monotonic() + timeout_s
        with Client(self.endpoints, timeout=self.call_timeout_s) as client:
            for key in self.keys:
                while True:
                    invoke_s = time.monotonic()
                    try:
                        got = client.get(key, timeout=self.call_timeout_s)
                    except KvraftError:
                        if time.monotonic() > deadline:
                            raise
                        continue
                    self.record(Op(id=self.next_id(), client=-1, key=key, kind=Kind.GET,
                                   invoke_s=invoke_s, complete_s=time.monotonic(), result=got))
                    out[key] = got
                    break
        return out
