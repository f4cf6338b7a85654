"""The health endpoints of the metrics listener (SPEC §7): `/health`, `/livez`, `/readyz`.

They answer as etcd's do, for the same probes (a Kubernetes liveness and readiness
probe, a load balancer's health check):

* `/livez` — the process serves: its event loop runs a check within
  CHECK_TIMEOUT_S and the node has not failed. 200 `ok`, else 503. (etcd: the
  `serializable_read` check.) A member without a leader, or shutting down, is alive.
* `/readyz` — it can serve linearizable requests now: it is not shutting down, knows a
  leader, and a ReadIndex round (a linearizable read: a quorum confirms the leader,
  and this member has applied everything committed when the round began) completes
  within CHECK_TIMEOUT_S. 200 `ok`, else 503. (etcd: `linearizable_read`.)
* `/health` — etcd's JSON answer, `{"health":"true","reason":""}` with 200, or
  `{"health":"false","reason":"..."}` with 503: the node is not shutting down, knows a
  leader and completes a ReadIndex round in time. `/health?serializable=true` skips the
  leader and the round, and checks only that the loop answers (etcd 3.5's).

`?verbose` on /livez and /readyz lists each check as `[+]name ok` or `[-]name failed:
reason`, as Kubernetes' and etcd's endpoints do.

The HTTP server runs on its own threads (metrics.py). A check reads one attribute of
the node from there (its leader, whether it stops: one read, atomic under the GIL);
every check that needs more runs on the node's event loop, which owns the node
(`asyncio.run_coroutine_threadsafe`), so a blocked loop makes the probes fail instead
of answering from stale state.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

from .metrics import Check
from .node import Node
from .waiters import NodeError

# How long one check may take: below a Kubernetes probe's default timeout (1 s), so the
# probe gets an answer rather than a timeout.
CHECK_TIMEOUT_S = 0.8


class HealthChecks:
    """The checks of one node, callable from any thread but the node's loop."""

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop,
                 timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.node = node
        self.loop = loop
        self.timeout_s = timeout_s

    def _on_loop(self, work: Coroutine[Any, Any, Any]) -> str:
        """Run `work` on the node's loop; "" when it completed in time, else why not."""
        try:
            future = asyncio.run_coroutine_threadsafe(work, self.loop)
        except RuntimeError:   # the loop is closed: the node has stopped
            work.close()
            return "the node has stopped"
        try:
            future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return f"no answer within {self.timeout_s:g} s"
        except NodeError as e:
            return e.message
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return ""

    # ------------------------------------------------------------------ checks
    def serializable_read(self) -> Check:
        async def read() -> int:
            return self.node.store.sm.applied_index

        if self.node.fatal is not None:
            return Check("serializable_read", False, "the node failed")
        reason = self._on_loop(read())
        return Check("serializable_read", not reason, reason)

    def not_stopping(self) -> Check:
        stopping = self.node.stopping
        return Check("not_stopping", not stopping, "the node is shutting down" if stopping
                     else "")

    def leader(self) -> Check:
        known = self.node.raw.raft.leader_id != 0
        return Check("leader", known, "" if known else "no leader")

    def linearizable_read(self) -> Check:
        reason = self._on_loop(self.node.read_index(self.timeout_s))
        return Check("linearizable_read", not reason, reason)

    # ------------------------------------------------------------------ endpoints
    def livez(self) -> list[Check]:
        return [self.serializable_read()]

    def readyz(self) -> list[Check]:
        checks = [self.not_stopping(), self.leader()]
        if all(c.ok for c in checks):
            checks.append(self.linearizable_read())
        return checks

    def health(self, serializable: bool) -> tuple[bool, str]:
        """(healthy, reason) of etcd's /health; the reason in etcd's words where it has
        them ("RAFT NO LEADER")."""
        if self.node.stopping:
            return False, "the node is shutting down"
        if serializable:
            read = self.serializable_read()
            return read.ok, "" if read.ok else f"SERIALIZABLE READ ERROR: {read.reason}"
        if not self.leader().ok:
            return False, "RAFT NO LEADER"
        read = self.linearizable_read()
        return read.ok, "" if read.ok else f"LINEARIZABLE READ ERROR: {read.reason}"
