"""The `kvraft` command line (docs/cli.md): `serve` runs a node; the other commands are
clients of a running cluster (kvraft.client).

Every option also reads the environment as KVRAFT_<OPTION> (KVRAFT_DATA_DIR,
KVRAFT_ENDPOINTS, ...). The client commands' connection flags (--endpoints, --timeout,
--user, --cacert, --cert, --key) may also go before the command, on the root group
(kvraft/cli_connection.py). Every failure prints ONE line on stderr, `error: <what>`, and
exits non-zero (never a traceback; KVRAFT_DEBUG=1 shows one for unexpected errors):

    0  done
    1  a negative answer: `get` found no key, `cas` did not swap; `serve` could not start
    2  bad usage: a missing, malformed or conflicting flag or argument
    3  the cluster refused or failed the request (its gRPC status, in words)
    4  a write's outcome is unknown (deadline passed or connection lost after sending):
       read the key back before retrying
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import click

# _cli_env first (it sorts before kvraft.client): gRPC's log level, before grpc loads.
from kvraft import __version__, _cli_env, cli_auth  # noqa: F401
from kvraft.cli_connection import (
    command_options,
    group_options,
    refuses_connection_flags,
    tls_files,
)
from kvraft.cli_format import escape_bytes, format_table
from kvraft.cli_params import ADDRESS, INITIAL_CLUSTER, MEMBER_ID
from kvraft.client import (
    DEFAULT_ENDPOINT,
    UINT32_MAX,
    Client,
    KvraftError,
    Member,
    NodeStatus,
    prefix_end,
)
from kvraft.server.config import (
    EVENT_LOOPS,
    MAX_REQUEST_BYTES_MAX,
    READ_MODES,
    NodeConfig,
    ServeError,
    parse_corrupt_check_time,
    parse_retention,
    parse_warning_apply_duration,
)
from kvraft.tls import ClientTLS

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2
EXIT_REQUEST_FAILED = 3
EXIT_OUTCOME_UNKNOWN = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

DEFAULT_NODE_ID = 1
DEFAULT_DATA_DIR = "./kvraft-data"
DEFAULT_LISTEN = DEFAULT_ENDPOINT
DEFAULT_PEER_LISTEN = "127.0.0.1:2380"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# `kvraft status` asks every member at once; clusters are 3-7 members, this bounds it.
STATUS_PARALLEL_MAX = 16
# `kvraft leader transfer` polls Status until the new leader shows, this often.
TRANSFER_POLL_S = 0.1


class CliError(click.ClickException):
    """A one-line failure with its exit code (`exit_status`: click declares
    ClickException.exit_code one constant for the whole class)."""

    def __init__(self, message: str, exit_code: int = EXIT_NEGATIVE) -> None:
        super().__init__(message)
        self.exit_status = exit_code


def _client_tls() -> ClientTLS | None:
    """The current command's TLS settings, checked: a TLS file missing or unreadable,
    a cert without its key is a usage error naming the flag."""
    tls = tls_files()
    try:
        return ClientTLS.from_options(tls.get("cacert"), tls.get("cert"), tls.get("key"),
                                      names=("--cacert", "--cert", "--key"))
    except ValueError as e:
        raise CliError(_one_line(str(e)), EXIT_USAGE) from None


def _connect(endpoints: list[str], timeout: float) -> Client:
    _client_tls()
    try:
        user, password = cli_auth.credentials()
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    return Client(endpoints, timeout=timeout, user=user, password=password,
                  **tls_files())


def _key_bytes(text: str) -> bytes:
    # os.fsencode undoes the surrogate escapes Python uses for argv bytes that are not
    # UTF-8, so any key typed (or scripted) reaches the server byte for byte.
    return os.fsencode(text)


def _err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- root


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 done; 1 no such key / cas not swapped / serve failed; 2 bad usage; "
    "3 request failed; 4 write outcome unknown. Every option reads KVRAFT_<OPTION> from "
    "the environment. The options above are the client commands' connection flags: "
    "given here, before the command, or after it, where they win.",
)
@click.version_option(__version__, prog_name="kvraft")
@group_options
def cli() -> None:
    """kvraft: a replicated key-value store on Raft."""


# --------------------------------------------------------------------------- serve


def _serve_tls_options(fn: Callable) -> Callable:
    """etcd's TLS flags of `kvraft serve` (SPEC §8); their values reach NodeConfig's
    fields of the same names (checked there: kvraft/server/tls.py)."""
    options = (
        ("--cert-file", "Client port TLS certificate (PEM); with --key-file the port "
                        "serves only TLS."),
        ("--key-file", "The --cert-file certificate's private key."),
        ("--trusted-ca-file", "CA bundle that signs client certificates "
                              "(for --client-cert-auth)."),
        ("--peer-cert-file", "Peer port certificate, for both ends of a peer connection; "
                             "it must name this member (SAN URI kvraft://member/ID or "
                             "CN member-ID)."),
        ("--peer-key-file", "The --peer-cert-file certificate's private key."),
        ("--peer-trusted-ca-file", "CA bundle that signs every member's peer certificate "
                                   "(the peer port is then mutual TLS)."),
    )
    for flag, help_text in reversed(options):  # the last decorator applied shows first
        envvar = "KVRAFT_" + flag[2:].upper().replace("-", "_")
        fn = click.option(flag, envvar=envvar, default=None, metavar="FILE",
                          help=help_text)(fn)
        if flag == "--peer-cert-file":  # after --trusted-ca-file, before the peer's
            fn = click.option("--client-cert-auth", is_flag=True,
                              envvar="KVRAFT_CLIENT_CERT_AUTH",
                              help="Refuse clients without a certificate signed by "
                              "--trusted-ca-file.")(fn)
    return fn


# A client flag before `serve` is refused (kvraft/cli_connection.py), pointing at
# serve's flag of the same role where it has one.
_SERVE_COUNTERPARTS = {"--endpoints": "serve takes --listen",
                       "--cacert": "serve takes --trusted-ca-file",
                       "--cert": "serve takes --cert-file", "--key": "serve takes --key-file"}


@cli.command()
@click.option("--id", "node_id", type=MEMBER_ID, envvar="KVRAFT_ID", default=DEFAULT_NODE_ID,
              show_default=True, help="This node's member id: a positive integer, decimal "
              "or 0x-hex (etcdctl prints the id `member add` gave in hex).")
@click.option("--data-dir", envvar="KVRAFT_DATA_DIR", default=DEFAULT_DATA_DIR,
              show_default=True, help="Where the node keeps its Raft log and data.")
@click.option("--listen", type=ADDRESS, envvar="KVRAFT_LISTEN", default=DEFAULT_LISTEN,
              show_default=True, help="Client address (KV, Cluster, health, reflection).")
@click.option("--peer-listen", type=ADDRESS, envvar="KVRAFT_PEER_LISTEN",
              default=DEFAULT_PEER_LISTEN, show_default=True,
              help="Address for the peers' Raft traffic.")
@click.option("--initial-cluster", type=INITIAL_CLUSTER, envvar="KVRAFT_INITIAL_CLUSTER",
              default=None, help="Founding members' peer addresses, this node's included; "
              "read only when the data dir is new. [default: ID=PEER-LISTEN, one node]")
@click.option("--join", is_flag=True, envvar="KVRAFT_JOIN",
              help="Start empty and wait to be added with `kvraft member add` "
              "(--initial-cluster then need not list this node).")
@click.option("--metrics-listen", type=ADDRESS, envvar="KVRAFT_METRICS_LISTEN", default=None,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              envvar="KVRAFT_LOG_LEVEL", default=NodeConfig.log_level.lower(),
              show_default=True)
@click.option("--advertise-client", type=ADDRESS, envvar="KVRAFT_ADVERTISE_CLIENT",
              default=None, help="Client address published to members. [default: --listen]")
@click.option("--advertise-peer", type=ADDRESS, envvar="KVRAFT_ADVERTISE_PEER", default=None,
              help="Peer address others dial. [default: this node's --initial-cluster "
              "entry, else --peer-listen]")
@click.option("--tick-interval", type=click.FloatRange(min=0.001, max=10.0),
              envvar="KVRAFT_TICK_INTERVAL", default=NodeConfig.tick_interval_s,
              show_default=True, metavar="SECONDS",
              help="Raft tick; elections fire after 10-20 ticks.")
@click.option("--snapshot-entries", type=click.IntRange(min=1), envvar="KVRAFT_SNAPSHOT_ENTRIES",
              default=NodeConfig.snapshot_entries, show_default=True,
              help="Snapshot and compact the log after this many applied entries.")
@click.option("--snapshot-keep-entries", type=click.IntRange(min=0),
              envvar="KVRAFT_SNAPSHOT_KEEP_ENTRIES", default=NodeConfig.snapshot_keep_entries,
              show_default=True, help="Log entries kept behind a snapshot for slow followers.")
@click.option("--event-loop", type=click.Choice(EVENT_LOOPS), envvar="KVRAFT_EVENT_LOOP",
              default=NodeConfig.event_loop, show_default=True,
              help="The node's event loop: uvloop (libuv), or the standard library's asyncio.")
@click.option("--read-mode", type=click.Choice(READ_MODES), envvar="KVRAFT_READ_MODE",
              default=NodeConfig.read_mode, show_default=True,
              help="How a linearizable read is confirmed: a heartbeat round (safe), or the "
              "leader's lease while it holds (lease; assumes bounded clock drift).")
@click.option("--leveldb-write-buffer-bytes", type=click.IntRange(min=64 << 10, max=1 << 30),
              envvar="KVRAFT_LEVELDB_WRITE_BUFFER_BYTES",
              default=NodeConfig.leveldb_write_buffer_bytes, show_default=True, metavar="BYTES",
              help="LevelDB memtable size; it starts a new write-ahead log file each time "
              "this fills.")
@click.option("--profile", "profile_path", envvar="KVRAFT_PROFILE", default=None,
              metavar="FILE", help="A development aid: write a cProfile of the node to FILE "
              "({id} = node id) when it stops.")
@click.option("--quota-backend-bytes", type=click.IntRange(min=1),
              envvar="KVRAFT_QUOTA_BACKEND_BYTES", default=NodeConfig.quota_backend_bytes,
              show_default=True, metavar="BYTES",
              help="Past this size of its database a member raises a NOSPACE alarm, and "
              "writes that add data are refused until it is disarmed.")
@click.option("--auto-compaction-retention", envvar="KVRAFT_AUTO_COMPACTION_RETENTION",
              default="0", show_default=True, metavar="REVISIONS|DURATION",
              help="Compact history automatically: keep this many revisions, or a "
              "duration's worth (30s, 5m, 1h); 0 is off.")
@click.option("--max-request-bytes", type=click.IntRange(min=1, max=MAX_REQUEST_BYTES_MAX),
              envvar="KVRAFT_MAX_REQUEST_BYTES", default=NodeConfig.max_request_bytes,
              show_default=True, metavar="BYTES",
              help="etcd's API refuses a write larger than this: etcdserver: request is "
              "too large.")
@click.option("--max-txn-ops", type=click.IntRange(min=1), envvar="KVRAFT_MAX_TXN_OPS",
              default=NodeConfig.max_txn_ops, show_default=True, metavar="N",
              help="etcd's API refuses a txn with more compares, or ops in a branch: "
              "etcdserver: too many operations in txn request.")
@click.option("--corrupt-check-time", envvar="KVRAFT_CORRUPT_CHECK_TIME", default="0",
              show_default=True, metavar="DURATION",
              help="How often the leader compares every member's HashKV and raises a "
              "CORRUPT alarm (writes refused) for a member whose data differs (30s, 5m); "
              "0 is off.")
@click.option("--warning-apply-duration", envvar="KVRAFT_WARNING_APPLY_DURATION",
              default="100ms", show_default=True, metavar="DURATION",
              help="Log a warning when applying a batch of committed entries takes "
              "longer than this (100ms, 1s).")
@_serve_tls_options
@refuses_connection_flags(lambda flag: _SERVE_COUNTERPARTS.get(flag, "serve does not take it"))
def serve(node_id: int, data_dir: str, listen: str, peer_listen: str,
          initial_cluster: dict[int, str] | None, join: bool, metrics_listen: str | None,
          log_level: str, advertise_client: str | None, advertise_peer: str | None,
          tick_interval: float, snapshot_entries: int, snapshot_keep_entries: int,
          event_loop: str, read_mode: str, leveldb_write_buffer_bytes: int,
          profile_path: str | None, quota_backend_bytes: int,
          auto_compaction_retention: str, max_request_bytes: int, max_txn_ops: int,
          corrupt_check_time: str, warning_apply_duration: str, **tls: Any) -> int:
    """Run a node until SIGTERM or SIGINT (Ctrl-C).

    With no options: a single-node cluster serving 127.0.0.1:2379 with its data in
    ./kvraft-data."""
    if not data_dir.strip():
        raise click.UsageError("--data-dir must not be empty")
    if listen == peer_listen:
        raise click.UsageError(f"--listen and --peer-listen must differ (both {listen})")
    if metrics_listen is not None and metrics_listen in (listen, peer_listen):
        raise click.UsageError(f"--metrics-listen {metrics_listen} is already used by "
                               "--listen or --peer-listen")
    if initial_cluster is None:
        initial_cluster = {} if join else {node_id: advertise_peer or peer_listen}
    elif not join and node_id not in initial_cluster:
        raise click.UsageError(f"--initial-cluster does not list this node's id {node_id} "
                               "(pass --join to join an existing cluster)")
    for flag, address in (("--listen", listen), ("--peer-listen", peer_listen),
                          ("--metrics-listen", metrics_listen)):
        if address is not None:
            _check_bindable(flag, address)
    try:
        from kvraft.server import run_node
    except ImportError as e:
        raise CliError(f"the node is not available in this build ({e})") from None
    config = NodeConfig(
        node_id=node_id, data_dir=data_dir, listen=listen, peer_listen=peer_listen,
        initial_cluster=initial_cluster, join=join, metrics_listen=metrics_listen,
        log_level=log_level.upper(), advertise_client=advertise_client,
        advertise_peer=advertise_peer or initial_cluster.get(node_id),
        tick_interval_s=tick_interval, snapshot_entries=snapshot_entries,
        snapshot_keep_entries=snapshot_keep_entries, event_loop=event_loop,
        read_mode=read_mode, leveldb_write_buffer_bytes=leveldb_write_buffer_bytes,
        profile_path=profile_path or None,
        quota_backend_bytes=quota_backend_bytes,
        max_request_bytes=max_request_bytes, max_txn_ops=max_txn_ops,
        cert_file=tls["cert_file"] or None, key_file=tls["key_file"] or None,
        trusted_ca_file=tls["trusted_ca_file"] or None,
        client_cert_auth=bool(tls["client_cert_auth"]),
        peer_cert_file=tls["peer_cert_file"] or None,
        peer_key_file=tls["peer_key_file"] or None,
        peer_trusted_ca_file=tls["peer_trusted_ca_file"] or None,
    )
    try:
        config.auto_compaction = parse_retention(auto_compaction_retention)
        config.corrupt_check_interval_s = parse_corrupt_check_time(corrupt_check_time)
        config.warning_apply_duration_s = parse_warning_apply_duration(
            warning_apply_duration)
        config.validate()
        return run_node(config)
    except ServeError as e:
        raise CliError(_one_line(str(e))) from None
    except OSError as e:
        raise CliError(_one_line(f"cannot serve: {e}")) from None


def _check_bindable(flag: str, address: str) -> None:
    """Fail early, in one line and before the data dir is touched, when a listen
    address is taken or not local. The node binds again for real (a port can still be
    taken in between; the node then reports it)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return  # unresolvable here: let the node report it
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            probe.bind(sockaddr)
        except OSError as e:
            raise CliError(f"cannot listen on {flag} {address}: "
                           f"{(e.strerror or str(e)).lower()}") from None


# --------------------------------------------------------------------------- KV


def _lease_id_type() -> click.ParamType:
    """A lease id in hex (kvraft/cli_etcd.py, with the other lease commands)."""
    from kvraft.cli_etcd import LEASE_ID

    return LEASE_ID


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", "lease_id", type=_lease_id_type(), default=None,
              help="Attach KEY to this lease (hex id, as `kvraft lease grant` prints): "
              "the key is deleted when the lease expires or is revoked.")
@command_options
def put(key: str, value: str, lease_id: int | None, endpoints: list[str],
        timeout: float) -> int:
    """Set KEY to VALUE (use `--` before a VALUE that starts with '-')."""
    with _connect(endpoints, timeout) as kv:
        kv.put(_key_bytes(key), _key_bytes(value), lease=lease_id or 0)
    click.echo("OK")
    return EXIT_OK


@cli.command()
@click.argument("key")
@click.option("--serializable", is_flag=True,
              help="Read the answering member's local state (may be stale; no quorum round).")
@click.option("--rev", type=click.IntRange(min=0), default=0, show_default=True,
              help="Read KEY as it was at this revision (0: the latest).")
@command_options
def get(key: str, serializable: bool, rev: int, endpoints: list[str], timeout: float) -> int:
    """Print KEY's value on stdout (exit 1 if there is no such key)."""
    with _connect(endpoints, timeout) as kv:
        value = kv.get(_key_bytes(key), serializable=serializable, revision=rev)
    if value is None:
        _err(f"key not found: {escape_bytes(_key_bytes(key))}")
        return EXIT_NEGATIVE
    out = sys.stdout.buffer  # click.get_binary_stream is deprecated (click 8.5)
    out.write(value + b"\n")
    out.flush()
    return EXIT_OK


@cli.command()
@click.argument("key")
@command_options
def delete(key: str, endpoints: list[str], timeout: float) -> int:
    """Delete KEY; prints 'deleted' or 'not found'."""
    with _connect(endpoints, timeout) as kv:
        existed = kv.delete(_key_bytes(key))
    click.echo("deleted" if existed else "not found")
    return EXIT_OK


@cli.command()
@click.argument("start", required=False)
@click.argument("end", required=False)
@click.option("--prefix", default=None, help="Every key starting with P (not with START/END).")
@click.option("--limit", type=click.IntRange(0, UINT32_MAX), default=0, show_default=True,
              help="At most N keys (0: no limit).")
@click.option("--keys-only", is_flag=True, help="Print keys without values.")
@click.option("--serializable", is_flag=True, help="Read local state (may be stale).")
@command_options
def scan(start: str | None, end: str | None, prefix: str | None, limit: int, keys_only: bool,
         serializable: bool, endpoints: list[str], timeout: float) -> int:
    """List keys in [START, END) in order, one `KEY<TAB>VALUE` line each.

    Without END: to the last key; without START: from the first. Tabs, newlines,
    backslashes and bytes that are not UTF-8 are printed escaped (\\t \\n \\\\ \\xNN).
    Keys stream out page by page; --timeout applies to each page."""
    if prefix is not None:
        if start is not None:
            raise click.UsageError("--prefix cannot be combined with START or END")
        start_b = _key_bytes(prefix)
        end_b = prefix_end(start_b)
    else:
        start_b = _key_bytes(start or "")
        end_b = _key_bytes(end or "")
    more = False
    with _connect(endpoints, timeout) as kv:
        # Page by page, each with its own --timeout: a big range streams to stdout.
        for page, page_more in kv.scan_pages(start_b, end_b, limit,
                                             serializable=serializable):
            lines = [escape_bytes(k) if keys_only else f"{escape_bytes(k)}\t{escape_bytes(v)}"
                     for k, v in page]
            if lines:
                click.echo("\n".join(lines))
            more = page_more
    if more:
        click.echo(f"(stopped at --limit {limit}; more keys follow)", err=True)
    return EXIT_OK


@cli.command()
@click.argument("args", nargs=-1, metavar="KEY EXPECTED NEW")
@click.option("--expect-absent", is_flag=True,
              help="Swap only if KEY does not exist; then give KEY NEW only.")
@command_options
def cas(args: tuple[str, ...], expect_absent: bool, endpoints: list[str],
        timeout: float) -> int:
    """Set KEY to NEW iff its value is EXPECTED (or, with --expect-absent, iff it does
    not exist: `kvraft cas --expect-absent KEY NEW`). Exit 1 when not swapped."""
    if expect_absent:
        if len(args) == 3:
            raise click.UsageError("--expect-absent cannot be combined with EXPECTED: "
                                   "give KEY NEW")
        if len(args) != 2:
            raise click.UsageError(f"cas --expect-absent takes KEY NEW, got {len(args)} "
                                   "argument(s)")
        key, new = args
        expected: bytes | None = None
    else:
        if len(args) != 3:
            raise click.UsageError(f"cas takes KEY EXPECTED NEW (or --expect-absent KEY NEW),"
                                   f" got {len(args)} argument(s)")
        key, expected_text, new = args
        expected = _key_bytes(expected_text)
    with _connect(endpoints, timeout) as kv:
        result = kv.compare_and_swap(_key_bytes(key), expected, _key_bytes(new))
    if result.succeeded:
        click.echo("OK")
        return EXIT_OK
    if result.current is None:
        _err("cas failed: the key does not exist")
    else:
        _err(f"cas failed: the current value is {escape_bytes(result.current)}")
    return EXIT_NEGATIVE


# --------------------------------------------------------------------------- cluster


def _status_rows(statuses: list[tuple[Member, NodeStatus | None]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for member, st in statuses:
        if st is None:
            role = "learner, unreachable" if member.learner else "unreachable"
            rows.append([member.id, member.client_address or "-", member.peer_address,
                         role, "-", "-", "-", "-"])
        else:
            rows.append([member.id, member.client_address or "-", member.peer_address,
                         st.role, st.term, st.leader_id or "-", st.commit_index,
                         st.applied_index])
    return rows


def _status_json(member: Member, st: NodeStatus | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": member.id, "client_address": member.client_address,
                           "peer_address": member.peer_address, "learner": member.learner,
                           "reachable": st is not None}
    if st is not None:
        out.update(role=st.role, term=st.term, leader=st.leader_id,
                   commit=st.commit_index, applied=st.applied_index, last_index=st.last_index)
    return out


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per member.")
@command_options
def status(as_json: bool, endpoints: list[str], timeout: float) -> int:
    """A table of members: id, addresses, role, term, leader, commit, applied.

    Asks one endpoint for the member list, then every member for its own Status."""
    with _connect(endpoints, timeout) as kv:
        first = kv.status()
        members = sorted(first.members, key=lambda m: m.id)
        if not members:
            members = [Member(first.member_id, "", kv.endpoints[0], False)]

        def ask(member: Member) -> NodeStatus | None:
            if member.id == first.member_id:
                return first
            if not member.client_address:
                return None
            try:
                return kv.status(member.client_address, timeout=timeout)
            except (KvraftError, ValueError):
                return None

        workers = min(len(members), STATUS_PARALLEL_MAX)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(ask, members))
    pairs = list(zip(members, answers, strict=True))
    if as_json:
        click.echo(json.dumps([_status_json(m, st) for m, st in pairs], indent=2))
    else:
        header = ["ID", "CLIENT", "PEER", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED"]
        click.echo(format_table(header, _status_rows(pairs)))
    return EXIT_OK


def _print_members(members: list[Member], as_json: bool) -> None:
    members = sorted(members, key=lambda m: m.id)
    if as_json:
        click.echo(json.dumps([m.__dict__ for m in members], indent=2))
        return
    rows = [[m.id, m.peer_address, m.client_address or "-", "yes" if m.learner else "no"]
            for m in members]
    click.echo(format_table(["ID", "PEER", "CLIENT", "LEARNER"], rows))


@cli.group()
def member() -> None:
    """List, add, promote and remove members."""


@member.command("list")
@click.option("--json", "as_json", is_flag=True)
@command_options
def member_list(as_json: bool, endpoints: list[str], timeout: float) -> int:
    """The cluster's members and their addresses."""
    with _connect(endpoints, timeout) as kv:
        _print_members(kv.member_list(), as_json)
    return EXIT_OK


@member.command("add")
@click.argument("member_id", metavar="ID", type=MEMBER_ID)
@click.option("--peer-address", type=ADDRESS, required=True,
              help="Where the new member serves Raft traffic (its --peer-listen).")
@click.option("--client-address", type=ADDRESS, required=True,
              help="Where it serves clients (its --listen).")
@click.option("--learner", is_flag=True,
              help="Add as a non-voting learner (promote later with `member promote`).")
@command_options
def member_add(member_id: int, peer_address: str, client_address: str, learner: bool,
               endpoints: list[str], timeout: float) -> int:
    """Add member ID; then start it with `kvraft serve --join --id ID ...`."""
    with _connect(endpoints, timeout) as kv:
        members = kv.member_add(member_id, peer_address, client_address, learner=learner)
    click.echo(f"member {member_id} added" + (" as a learner" if learner else ""))
    _print_members(members, False)
    return EXIT_OK


@member.command("promote")
@click.argument("member_id", metavar="ID", type=MEMBER_ID)
@command_options
def member_promote(member_id: int, endpoints: list[str], timeout: float) -> int:
    """Make the learner ID a voter."""
    with _connect(endpoints, timeout) as kv:
        current = {m.id: m for m in kv.member_list()}
        learner = current.get(member_id)
        if learner is None:
            raise CliError(f"member {member_id} is not in the cluster", EXIT_REQUEST_FAILED)
        if not learner.learner:
            raise CliError(f"member {member_id} is already a voter", EXIT_REQUEST_FAILED)
        members = kv.member_add(member_id, learner.peer_address, learner.client_address,
                                learner=False)
    click.echo(f"member {member_id} promoted to voter")
    _print_members(members, False)
    return EXIT_OK


@member.command("remove")
@click.argument("member_id", metavar="ID", type=MEMBER_ID)
@command_options
def member_remove(member_id: int, endpoints: list[str], timeout: float) -> int:
    """Remove member ID from the cluster."""
    with _connect(endpoints, timeout) as kv:
        members = kv.member_remove(member_id)
    click.echo(f"member {member_id} removed")
    _print_members(members, False)
    return EXIT_OK


@cli.group()
def leader() -> None:
    """Leadership."""


@leader.command("transfer")
@click.argument("member_id", metavar="ID", type=MEMBER_ID)
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait (within --timeout) until ID leads.")
@command_options
def leader_transfer(member_id: int, wait: bool, endpoints: list[str], timeout: float) -> int:
    """Ask the leader to hand leadership to member ID."""
    deadline = time.monotonic() + timeout
    with _connect(endpoints, timeout) as kv:
        kv.transfer_leader(member_id)
        if not wait:
            click.echo(f"leadership transfer to {member_id} requested")
            return EXIT_OK
        leader_id = 0
        while time.monotonic() < deadline:
            try:
                leader_id = kv.status(timeout=max(deadline - time.monotonic(), 0.01)).leader_id
            except KvraftError:
                leader_id = 0
            if leader_id == member_id:
                click.echo(f"member {member_id} is the leader")
                return EXIT_OK
            time.sleep(min(TRANSFER_POLL_S, max(deadline - time.monotonic(), 0)))
    raise CliError(f"member {member_id} did not take over within {timeout:g} s "
                   f"(leader: {leader_id or 'unknown'})", EXIT_REQUEST_FAILED)


# --------------------------------------------------------------------------- bench


@cli.command()
@click.option("--clients", type=click.IntRange(min=1, max=10_000), default=16,
              show_default=True, help="Concurrent closed-loop clients.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS")
@click.option("--value-size", type=click.IntRange(min=0, max=1 << 20), default=100,
              show_default=True, metavar="BYTES")
@click.option("--keys", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Key space size.")
@click.option("--read-ratio", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of operations that are linearizable gets.")
@click.option("--workers", type=click.IntRange(min=0, max=256), default=0, show_default=True,
              help="Load processes (0: one per CPU).")
@click.option("--preload", is_flag=True, help="Write every key once before measuring.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@command_options
def bench(clients: int, duration: float, value_size: int, keys: int, read_ratio: float,
          workers: int, preload: bool, as_json: bool, endpoints: list[str],
          timeout: float) -> int:
    """Load the cluster and print throughput and latency percentiles."""
    try:
        from kvraft.bench.loadgen import LoadError, LoadSpec, print_progress, run_load
    except ImportError:
        raise CliError("bench is not available yet in this build") from None
    with _connect(endpoints, timeout) as kv:
        kv.status()  # one clear error line now rather than a run of failed requests
    spec = LoadSpec(endpoints=tuple(endpoints), clients=clients, duration_s=duration,
                    value_size=value_size, keys=keys, read_ratio=read_ratio, workers=workers,
                    request_timeout_s=timeout, preload=preload,
                    tls=_client_tls())
    try:
        result = run_load(spec, progress=None if as_json else print_progress)
    except (LoadError, ValueError) as e:
        raise CliError(f"bench: {_one_line(str(e))}", EXIT_REQUEST_FAILED) from None
    finally:
        if not as_json:
            click.echo("", err=True)  # end the progress line
    click.echo(result.to_json() if as_json else result.format_table())
    if result.ops == 0:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"
        raise CliError(f"bench: no request succeeded (errors: {failures})",
                       EXIT_REQUEST_FAILED)
    return EXIT_OK


# --------------------------------------------------------------------------- etcd's API


def _register_etcd_commands() -> None:
    """watch, txn, lease, lock, elect, compact (SPEC §6): kvraft/cli_etcd.py."""
    from kvraft import cli_etcd

    cli_etcd.register(cli, sys.modules[__name__])


_register_etcd_commands()


# --------------------------------------------------------------------------- operations


def _register_ops_commands() -> None:
    """snapshot, defrag and alarm (SPEC §7): kvraft/cli_ops.py."""
    from kvraft import cli_ops

    cli_ops.register(cli)


_register_ops_commands()


# --------------------------------------------------------------------------- main


def _describe(err: KvraftError) -> str:
    word = err.code.name.lower().replace("_", " ") if err.code is not None else "failed"
    return _one_line(f"{word}: {err.message}")


def _silence_stdout() -> None:
    """stdout's reader went away (`kvraft scan | head`): drop further output quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """The console script: run the command and return its exit code."""
    try:
        result = cli.main(args=argv, prog_name="kvraft", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else "kvraft --help")
        return EXIT_OK
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "kvraft"
        _err(f"{_one_line(e.format_message())} (see '{command} --help')")
        return EXIT_USAGE
    except click.ClickException as e:
        _err(_one_line(e.format_message()))
        return e.exit_status if isinstance(e, CliError) else e.exit_code
    except KvraftError as e:
        _err(_describe(e))
        return EXIT_OUTCOME_UNKNOWN if e.outcome_unknown else EXIT_REQUEST_FAILED
    except (click.Abort, KeyboardInterrupt):
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except Exception as e:
        if os.environ.get("KVRAFT_DEBUG"):
            raise
        _err(_one_line(f"internal error: {type(e).__name__}: {e}"))
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK


cli_auth.register(cli, sys.modules[__name__])   # kvraft user|role|auth (SPEC §8)

if __name__ == "__main__":
    sys.exit(main())
