"""Prometheus metrics of one node, served at /metrics on --metrics-listen, beside the
health endpoints /health, /livez and /readyz (health.py) and the status page at `/`
with its `/status.json` (status_page.py, status.py).

Each node owns its own CollectorRegistry, so several nodes in one test process (or a
re-created node) never collide on metric names."""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

from .config import parse_address
from .status_page import PAGE_BYTES

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Check:
    """One health check's outcome (health.py makes them)."""

    name: str
    ok: bool
    reason: str = ""


class HealthChecks(Protocol):
    """What the health endpoints ask (health.HealthChecks; a Protocol here, so that
    this module, which the transport imports, does not import the node)."""

    def health(self, serializable: bool) -> tuple[bool, str]: ...
    def livez(self) -> list[Check]: ...
    def readyz(self) -> list[Check]: ...


class StatusSource(Protocol):
    """What the status page shows (status.StatusBoard): callable from any thread."""

    def status(self) -> dict[str, Any]: ...


WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_resident_memory_bytes and the other process_* gauges, as etcd serves
        # them: `etcdctl check datascale` reads the resident memory before and after.
        ProcessCollector(registry=r)
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.requests = Counter(
            "kvraft_requests", "Client RPCs answered", ["rpc", "code"], registry=r
        )
        self.request_latency = Histogram(
            "kvraft_request_latency_seconds", "Client RPC latency", ["rpc", "code"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.term = Gauge("kvraft_term", "Current Raft term", registry=r)
        self.commit_index = Gauge("kvraft_commit_index", "Raft commit index", registry=r)
        self.applied_index = Gauge("kvraft_applied_index", "Applied index", registry=r)
        self.cluster_version = Gauge(
            "kvraft_cluster_version",
            "The cluster version this member applies with (1: before MVCC, 2: MVCC)",
            registry=r)
        self.revision = Gauge("kvraft_mvcc_revision", "The store's current revision",
                              registry=r)
        self.db_size_bytes = Gauge(
            "kvraft_db_size_bytes",
            "Bytes of this member's LevelDB files (what --quota-backend-bytes bounds)",
            registry=r)
        self.quota_backend_bytes = Gauge("kvraft_quota_backend_bytes",
                                         "--quota-backend-bytes", registry=r)
        # Members whose alarm of each type is raised, as this member's applied state
        # holds them (replicated: the same on every member at an index); refreshed
        # every quota check (etcd/quota.py). Every type is exported, 0 when clear.
        self.alarms = Gauge("kvraft_alarms", "Raised alarms, by type", ["alarm"],
                            registry=r)
        self.is_leader = Gauge("kvraft_is_leader", "1 when this node leads", registry=r)
        self.has_leader = Gauge(   # etcd_server_has_leader
            "kvraft_has_leader", "1 when this node knows a leader", registry=r)
        self.leader_changes = Counter(
            "kvraft_leader_changes", "Times this node saw the leader change", registry=r
        )
        self.proposals_in_flight = Gauge(
            "kvraft_proposals_in_flight", "Writes waiting to be applied", registry=r
        )
        # etcd_server_proposals_failed_total: writes and member changes this node
        # accepted whose wait ended in an error (leader lost, overwritten by a new
        # leader, dropped, deadline, shutdown); not the ones refused before they were
        # proposed (kvraft_proposals_refused), nor those their client abandoned.
        self.proposals_failed = Counter(
            "kvraft_proposals_failed", "Proposals that ended in an error", registry=r)
        self.reads_in_flight = Gauge(
            "kvraft_reads_in_flight", "Linearizable reads waiting on ReadIndex", registry=r
        )
        # Named after etcd's etcd_disk_wal_fsync_duration_seconds: the Raft log is
        # kvraft's write-ahead log, and each Ready write is one synced LevelDB batch.
        self.fsync_duration = Histogram(
            "kvraft_disk_wal_fsync_duration_seconds",
            "Synced Raft log write (entries and hard state) per persist batch",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        # etcd's etcd_server_apply_duration_seconds, per batch: one state-machine write.
        self.apply_duration = Histogram(
            "kvraft_apply_duration_seconds", "State machine apply per batch of entries",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.slow_fsyncs = Counter(
            "kvraft_slow_fsyncs", "Raft log fsyncs slower than 1 s (logged: slow_ops.py)",
            registry=r)
        self.slow_applies = Counter(   # etcd_server_slow_apply_total
            "kvraft_slow_applies",
            "Apply batches slower than --warning-apply-duration (logged: slow_ops.py)",
            registry=r)
        self.ready_entries = Histogram(
            "kvraft_ready_entries", "Entries persisted per Ready",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=r,
        )
        self.peer_queue_depth = Gauge(
            "kvraft_peer_queue_messages", "Messages queued to a peer", ["peer"], registry=r
        )
        self.peer_dropped = Counter(
            "kvraft_peer_dropped_messages", "Messages dropped on a full queue", ["peer"],
            registry=r,
        )
        self.peer_unreachable = Counter(
            "kvraft_peer_unreachable", "Unreachable reports per peer", ["peer"], registry=r
        )
        # Messages of inbound peer batches refused: another cluster, a non-member, a
        # sender its certificate does not name (mutual TLS), a replaced data directory.
        self.peer_refused = Counter(
            "kvraft_peer_refused_messages", "Inbound peer messages dropped, by reason",
            ["reason"], registry=r,
        )
        # Requests (or stream messages) that did not parse, refused INVALID_ARGUMENT
        # (parse_guard.py); `method` is one the port serves, so the labels are bounded.
        self.malformed_requests = Counter(
            "kvraft_malformed_requests", "Requests that did not parse, by port and method",
            ["port", "method"], registry=r,
        )
        self.snapshots_sent = Counter(
            "kvraft_snapshots_sent", "Snapshots streamed to peers", ["result"], registry=r
        )
        self.snapshots_installed = Counter(
            "kvraft_snapshots_installed", "Snapshots installed from the leader", registry=r
        )
        self.loop_lag = Histogram(
            "kvraft_event_loop_lag_seconds", "How late the event loop ran a due timer",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.loop_lag_max = Gauge(
            "kvraft_event_loop_lag_max_seconds",
            "The largest event-loop lag since the node started", registry=r,
        )
        self.apply_backlog_entries = Gauge(
            "kvraft_apply_backlog_entries", "Committed entries waiting to be applied",
            registry=r,
        )
        self.apply_backlog_bytes = Gauge(
            "kvraft_apply_backlog_bytes", "Bytes of committed entries waiting to be applied",
            registry=r,
        )
        self.proposals_held_back = Counter(
            "kvraft_proposals_held_back", "Writes held back because this member is behind",
            registry=r,
        )
        self.proposals_refused = Counter(
            "kvraft_proposals_refused",
            "Writes refused (RESOURCE_EXHAUSTED) because this member stayed behind",
            registry=r,
        )
        self.snapshots_created = Counter(
            "kvraft_snapshots_created", "Log compactions after a snapshot", registry=r
        )

    def observe_request(self, rpc: str, code: str, latency_s: float) -> None:
        # The labelled children are cached: a label lookup per request adds up.
        children = self._request_children.get((rpc, code))
        if children is None:
            children = self._request_children[(rpc, code)] = (
                self.requests.labels(rpc, code), self.request_latency.labels(rpc, code))
        children[0].inc()
        children[1].observe(latency_s)

    def serve(self, address: str, health: HealthChecks | None = None,
              status: StatusSource | None = None) -> None:
        """Serve /metrics (given `health`, /health, /livez and /readyz; given `status`,
        the status page) on `address`, from daemon threads. Raises OSError when it
        cannot listen."""
        host, port = parse_address(address, "--metrics-listen address")
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_MetricsServer", (_ThreadingWSGIServer,),
                            {"address_family": family})
        app = http_app(make_wsgi_app(self.registry), health, status)
        httpd: WSGIServer = make_server(host, port, app, server_class,
                                        handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a probe's thread never keeps the process from exiting


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:   # no line per scrape
        pass


def _checks_text(checks: list[Check], verbose: bool) -> tuple[bool, str]:
    healthy = all(c.ok for c in checks)
    lines = [f"[+]{c.name} ok" if c.ok else f"[-]{c.name} failed: {c.reason}"
             for c in checks] if verbose else []
    lines.append("ok" if healthy else "failed")
    return healthy, "\n".join(lines) + "\n"


def _answer(start_response: StartResponse, status: str, content_type: str, data: bytes,
            headers: tuple[tuple[str, str], ...] = ()) -> list[bytes]:
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(data))), *headers])
    return [data]


# The page runs only its own inline script and style and fetches only its own origin;
# no framing (it is read-only, but nothing needs to embed it).
_PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; connect-src 'self'; "
                                "frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


def _status_json(status: StatusSource, start_response: StartResponse) -> list[bytes]:
    try:
        body = json.dumps(status.status())
    except Exception as e:   # never a traceback on the listener; the page shows it
        body = json.dumps({"error": f"{type(e).__name__}: {e}"})
        return _answer(start_response, "503 Service Unavailable", "application/json",
                       body.encode(), (("Cache-Control", "no-store"),))
    return _answer(start_response, "200 OK", "application/json", body.encode(),
                   (("Cache-Control", "no-store"),))


def http_app(metrics_app: WsgiApp, health: HealthChecks | None,
             status: StatusSource | None = None) -> WsgiApp:
    """The metrics listener's WSGI app: the status page (`/`, `/status.json`), the
    health endpoints, and every other path to prometheus_client's app (/metrics)."""
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if status is not None and path == "/":
            return _answer(start_response, "200 OK", "text/html; charset=utf-8", PAGE_BYTES,
                           _PAGE_HEADERS)
        if status is not None and path == "/status.json":
            return _status_json(status, start_response)
        if health is None or path not in ("/health", "/livez", "/readyz"):
            return metrics_app(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if path == "/health":
            serializable = query.get("serializable", [""])[0].lower() == "true"
            healthy, reason = health.health(serializable)
            body = json.dumps({"health": "true" if healthy else "false", "reason": reason})
            content_type = "application/json"
        else:
            checks = health.livez() if path == "/livez" else health.readyz()
            healthy, body = _checks_text(checks, "verbose" in query)
            content_type = "text/plain; charset=utf-8"
        return _answer(start_response, "200 OK" if healthy else "503 Service Unavailable",
                       content_type, body.encode())

    return app
