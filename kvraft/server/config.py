"""The node's configuration (`NodeConfig`), its validation, and the cluster id.

`kvraft serve` (kvraft.cli) parses options into a NodeConfig; everything here is pure
and fails with `ServeError`, whose message is one line the CLI prints as is. The CLI is
the one place that reads command-line options and KVRAFT_* variables; NodeConfig's
defaults are plain values, and they are the defaults `kvraft serve` shows.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from kvraft.raft.config import Config, ReadOnlyOption
from kvraft.wire import GRPC_MESSAGE_BYTES_MAX, UINT64_MAX

MAX_KEY_BYTES = 4096
MIB = 1 << 20
# The event loops a node can run on. uvloop (libuv) is the default: a bare grpc.aio echo
# server served 3,945 -> 4,830 calls/s on it and a 3-node cluster +29-32% puts/s on this
# 2-core machine (issue 16's measurements); "asyncio" is the standard library's loop,
# kept for platforms without uvloop and for comparing the two.
EVENT_LOOPS = ("uvloop", "asyncio")
# How a LINEARIZABLE read is confirmed (SPEC §3 `--read-mode`): "safe", a ReadIndex
# heartbeat round per batch of reads (thesis §6.4); "lease", the leader's lease while it
# holds (thesis §6.4.1, bounded clock drift; kvraft/raft/read_only.py), else a round.
READ_MODES = ("safe", "lease")
# LevelDB's memtable size: a larger one switches write-ahead log files less often.
# LevelDB's own default; it clamps values outside [64 KiB, 1 GiB] silently, so those
# bounds are refused here instead. Tests use the minimum to switch log files often.
LEVELDB_WRITE_BUFFER_BYTES_DEFAULT = 4 * MIB
LEVELDB_WRITE_BUFFER_BYTES_MIN = 64 << 10
LEVELDB_WRITE_BUFFER_BYTES_MAX = 1 << 30


class ServeError(Exception):
    """A node cannot start: bad data directory, unusable address or bad config.

    str(e) is one line meant for the operator, without a traceback."""


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT) or raise ServeError naming `what`."""
    if not isinstance(address, str) or ":" not in address:
        raise ServeError(f"malformed {what} {address!r}: expected HOST:PORT")
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise ServeError(f"malformed {what} {address!r}: bad IPv6 host") from e
    elif ":" in host:  # an IPv6 host must be bracketed; anything else is not a host
        raise ServeError(f"malformed {what} {address!r}: expected HOST:PORT")
    # The characters a gRPC target would read as something else (path, user, query).
    if not host or any(c.isspace() or c in "/@?#[]" for c in host):
        raise ServeError(f"malformed {what} {address!r}: expected HOST:PORT")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ServeError(f"malformed {what} {address!r}: port must be 1-65535")
    return host, int(port_text)


def parse_member_id(text: str) -> int:
    """A member id: a positive integer up to 2**64-1, in decimal or 0x-hex (etcdctl
    prints ids in hex: `kvraft serve --id 0x8e9e05c52164694d`). Raises ValueError."""
    text = text.strip()
    if text[:2].lower() == "0x":
        digits, base = text[2:], 16
        valid = bool(digits) and all(c in "0123456789abcdefABCDEF" for c in digits)
    else:
        digits, base = text, 10
        valid = digits.isascii() and digits.isdigit()
    if not valid or not 0 < int(digits, base) <= UINT64_MAX:
        raise ValueError(f"invalid member id {text!r}: expected a positive integer "
                         "(decimal or 0x-hex) below 2**64")
    return int(digits, base)


def parse_initial_cluster(text: str) -> dict[int, str]:
    """`1=host:2380,2=host:2381` -> {1: "host:2380", 2: "host:2381"}: the founding
    members' peer addresses (`kvraft serve --initial-cluster`). Raises ServeError."""
    cluster: dict[int, str] = {}
    for raw_item in text.split(","):
        item = raw_item.strip()
        member, sep, address = item.partition("=")
        if not sep:
            raise ServeError(f"malformed member {item!r}: expected ID=HOST:PORT")
        member = member.strip()
        try:
            member_id = parse_member_id(member)
        except ValueError:
            raise ServeError(f"invalid member id {member!r} in {item!r}: "
                             "expected a positive integer") from None
        if member_id in cluster:
            raise ServeError(f"member id {member_id} is listed twice")
        address = address.strip()
        parse_address(address, f"address of member {member_id}")
        if address in cluster.values():
            raise ServeError(f"address {address} is listed twice")
        cluster[member_id] = address
    return cluster


def cluster_id_for(initial_cluster: dict[int, str]) -> int:
    """A cluster id every founding member derives alike from --initial-cluster.

    It is non-zero and fits a uint64; two clusters with different founding members or
    addresses get different ids (with overwhelming probability)."""
    canonical = ",".join(f"{i}={initial_cluster[i]}" for i in sorted(initial_cluster))
    digest = hashlib.sha256(canonical.encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


QUOTA_BACKEND_BYTES_DEFAULT = 2 << 30   # etcd's default, 2 GiB
# etcd's --max-request-bytes default, 1.5 MiB: the largest proposal its API takes.
MAX_REQUEST_BYTES_DEFAULT = 1572864
# An etcd request is one log entry, and a follower is sent an entry whole in one peer
# message (at most GRPC_MESSAGE_BYTES_MAX): half of that leaves room for the message's
# framing and the entries around it. A larger entry could be committed on the leader
# and never reach a follower.
MAX_REQUEST_BYTES_MAX = GRPC_MESSAGE_BYTES_MAX // 2
# etcd's --max-txn-ops default: mvcc.TXN_OPS_MAX, spelled again so that the CLI can
# load this module without the store (a test checks that the two agree).
MAX_TXN_OPS_DEFAULT = 128


# A duration as etcd's flags take one (Go's time.ParseDuration, from ms up): one or more
# NUMBER UNIT pairs, such as 30s, 5m, 1h30m, 1.5h, 500ms; a bare 0 is zero.
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def parse_duration_s(text: str) -> float:
    """An etcd-style duration (`_DURATION`) in seconds. Raises ValueError."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def parse_corrupt_check_time(text: str) -> float:
    """`--corrupt-check-time`: seconds between the leader's corruption checks; 0 is
    off. Raises ServeError."""
    try:
        return parse_duration_s(text)
    except ValueError:
        raise ServeError(f"--corrupt-check-time {text.strip()!r}: expected a duration such "
                         "as 30s, 5m or 1h (0 is off)") from None


# etcd's --warning-apply-duration default: an apply batch slower than this is logged.
WARNING_APPLY_DURATION_S_DEFAULT = 0.1


def parse_warning_apply_duration(text: str) -> float:
    """`--warning-apply-duration`: a positive duration, in seconds. Raises ServeError."""
    try:
        seconds = parse_duration_s(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ServeError(f"--warning-apply-duration {text.strip()!r}: expected a positive "
                         "duration such as 100ms, 1s or 2m")
    return seconds


@dataclass(frozen=True)
class AutoCompaction:
    """`--auto-compaction-retention`: keep `revisions` revisions of history, or the
    history of the last `period_s` seconds (etcd's revision and periodic modes)."""

    revisions: int = 0
    period_s: float = 0.0


def parse_retention(text: str) -> AutoCompaction | None:
    """"0" (off), an integer (revisions to keep), or a duration such as 30s, 5m, 1h,
    1h30m (history to keep)."""
    text = text.strip()
    if text.isdigit():
        return AutoCompaction(revisions=int(text)) if int(text) > 0 else None
    try:
        period_s = parse_duration_s(text) if text else 0.0
    except ValueError:
        raise ServeError(f"--auto-compaction-retention {text!r}: expected a number of "
                         "revisions or a duration such as 30s, 5m or 1h") from None
    return AutoCompaction(period_s=period_s) if period_s > 0 else None


@dataclass
class NodeConfig:
    """Everything one `kvraft serve` process needs; see docs/INTERFACES.md."""

    node_id: int
    data_dir: str | Path
    listen: str
    peer_listen: str
    initial_cluster: dict[int, str] = field(default_factory=dict)
    join: bool = False
    metrics_listen: str | None = None
    log_level: str = "INFO"
    event_loop: str = "uvloop"   # one of EVENT_LOOPS
    read_mode: str = "safe"      # one of READ_MODES
    advertise_client: str | None = None
    advertise_peer: str | None = None
    # Raft timing. Thesis §3.4: the election timeout must be well above the broadcast
    # time; with 100 ms ticks an election fires after 1-2 s of silence, which rides out
    # a loaded 2-core machine without needless elections. (`kvraft serve
    # --tick-interval` / KVRAFT_TICK_INTERVAL; tests use short ticks.)
    tick_interval_s: float = 0.1
    election_tick: int = 10
    heartbeat_tick: int = 2
    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MIB
    max_batch_bytes: int = 4 * MIB
    default_deadline_s: float = 5.0
    snapshot_entries: int = 10_000      # --snapshot-entries: compact after this many
    snapshot_keep_entries: int = 1_000  # --snapshot-keep-entries: trailing log window
    snapshot_chunk_bytes: int = MIB
    # --leveldb-write-buffer-bytes: LevelDB's memtable; each fill starts a new WAL file.
    leveldb_write_buffer_bytes: int = LEVELDB_WRITE_BUFFER_BYTES_DEFAULT
    peer_queue_messages_max: int = 4096
    peer_queue_bytes_max: int = 64 * MIB
    peer_batch_bytes_max: int = 16 * MIB
    scan_page_max: int = 10_000
    # Pushback (issue 11, item 8): a member holds new writes back, then refuses them
    # (RESOURCE_EXHAUSTED), while more than this many bytes of committed entries wait to
    # be applied on it (~1-3 s of applying on a small machine) ...
    apply_backlog_bytes_max: int = 32 * MIB
    # ... or, on the leader, while more than this many bytes of its entries wait for a
    # quorum's disks (and its own) to make them durable.
    uncommitted_bytes_max: int = 32 * MIB
    # A development aid (`kvraft serve --profile FILE`, KVRAFT_PROFILE): a cProfile of the
    # node's Python code written to FILE ({id} = the node id) when it stops.
    profile_path: str | None = None
    # --quota-backend-bytes: past it this member raises a NOSPACE alarm (server/quota.py).
    quota_backend_bytes: int = QUOTA_BACKEND_BYTES_DEFAULT
    # --warning-apply-duration: an apply batch slower than this logs a warning (rate
    # limited, slow_ops.py) and counts in kvraft_slow_applies_total.
    warning_apply_duration_s: float = WARNING_APPLY_DURATION_S_DEFAULT
    # --auto-compaction-retention, parsed (parse_retention): None = off.
    auto_compaction: AutoCompaction | None = None
    # etcd's request limits, on etcd's API only (server/etcd/limits.py): a proposal
    # whose encoded command is over --max-request-bytes is refused with "etcdserver:
    # request is too large"; a txn with more than --max-txn-ops compares, or ops in a
    # branch, with "etcdserver: too many operations in txn request".
    max_request_bytes: int = MAX_REQUEST_BYTES_DEFAULT
    max_txn_ops: int = MAX_TXN_OPS_DEFAULT
    # --corrupt-check-time, parsed (parse_corrupt_check_time): how often the leader
    # compares the members' HashKV (server/etcd/corrupt_check.py); 0 = off.
    corrupt_check_interval_s: float = 0.0
    # TLS (SPEC §8, kvraft/server/tls.py, docs/security.md). The client port serves TLS
    # with --cert-file/--key-file; --client-cert-auth (with --trusted-ca-file) requires
    # every client to present a certificate that CA signed. The peer port, when its
    # three files are given, is always mutual TLS, and a peer's certificate must name
    # the member it speaks for (kvraft.tls, the naming rule). None: plaintext.
    cert_file: str | None = None
    key_file: str | None = None
    trusted_ca_file: str | None = None
    client_cert_auth: bool = False
    peer_cert_file: str | None = None
    peer_key_file: str | None = None
    peer_trusted_ca_file: str | None = None

    @property
    def client_address(self) -> str:
        return self.advertise_client or self.listen

    @property
    def peer_address(self) -> str:
        return self.advertise_peer or self.peer_listen

    def validate(self) -> None:
        if not isinstance(self.node_id, int) or self.node_id <= 0:
            raise ServeError(f"node id must be a positive integer, got {self.node_id!r}")
        parse_address(self.listen, "--listen address")
        parse_address(self.peer_listen, "--peer-listen address")
        if self.metrics_listen:
            parse_address(self.metrics_listen, "--metrics-listen address")
        if self.advertise_client:
            parse_address(self.advertise_client, "client address")
        if self.advertise_peer:
            parse_address(self.advertise_peer, "peer address")
        if self.listen == self.peer_listen:
            raise ServeError(f"--listen and --peer-listen must differ (both {self.listen})")
        for member_id, address in self.initial_cluster.items():
            if not isinstance(member_id, int) or member_id <= 0:
                raise ServeError(
                    f"--initial-cluster: member id must be positive, got {member_id!r}")
            parse_address(address, f"--initial-cluster address of member {member_id}")
        if not self.join:
            if not self.initial_cluster:
                raise ServeError("--initial-cluster is empty (or pass --join)")
            if self.node_id not in self.initial_cluster:
                raise ServeError(
                    f"--initial-cluster does not list this node's id {self.node_id}"
                    " (pass --join to join an existing cluster)"
                )
        if self.event_loop not in EVENT_LOOPS:
            raise ServeError(f"unknown event loop {self.event_loop!r}: expected one of "
                             f"{', '.join(EVENT_LOOPS)}")
        if self.read_mode not in READ_MODES:
            raise ServeError(f"unknown read mode {self.read_mode!r}: expected one of "
                             f"{', '.join(READ_MODES)}")
        if self.read_mode == "lease":
            lease = Config(id=1, election_tick=self.election_tick,
                           heartbeat_tick=self.heartbeat_tick, check_quorum=True,
                           read_only_option=ReadOnlyOption.LeaseBased)
            if 0 < self.heartbeat_tick < self.election_tick and \
                    lease.lease_ticks() <= self.heartbeat_tick:
                raise ServeError(f"--read-mode lease: a lease of {lease.lease_ticks()} ticks "
                                 f"would not outlast the {self.heartbeat_tick} between "
                                 "heartbeats")
        if self.tick_interval_s <= 0 or self.heartbeat_tick <= 0:
            raise ServeError("tick interval and heartbeat ticks must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ServeError("election ticks must exceed heartbeat ticks")
        if self.max_value_bytes <= 0 or self.max_batch_bytes <= 0 or self.max_key_bytes <= 0:
            raise ServeError("size limits must be positive")
        if self.default_deadline_s <= 0:
            raise ServeError("the default deadline must be positive")
        if self.corrupt_check_interval_s < 0:
            raise ServeError("--corrupt-check-time must not be negative")
        if self.quota_backend_bytes <= 0:
            raise ServeError("--quota-backend-bytes must be positive")
        if not 0 < self.max_request_bytes <= MAX_REQUEST_BYTES_MAX:
            raise ServeError(f"--max-request-bytes must be 1..{MAX_REQUEST_BYTES_MAX} (a "
                             f"request is one log entry), got {self.max_request_bytes}")
        if self.max_txn_ops <= 0:
            raise ServeError(f"--max-txn-ops must be positive, got {self.max_txn_ops}")
        if not self.warning_apply_duration_s > 0:
            raise ServeError("--warning-apply-duration must be positive")
        if self.snapshot_entries <= 0 or self.snapshot_keep_entries < 0:
            raise ServeError("snapshot thresholds must be positive")
        if self.apply_backlog_bytes_max <= 0 or self.uncommitted_bytes_max < MIB:
            raise ServeError("the apply backlog limit must be positive and the uncommitted "
                             "limit at least 1 MiB")
        if not (LEVELDB_WRITE_BUFFER_BYTES_MIN <= self.leveldb_write_buffer_bytes
                <= LEVELDB_WRITE_BUFFER_BYTES_MAX):
            raise ServeError(
                f"the LevelDB write buffer must be {LEVELDB_WRITE_BUFFER_BYTES_MIN}.."
                f"{LEVELDB_WRITE_BUFFER_BYTES_MAX} bytes, got {self.leveldb_write_buffer_bytes}")
        # The TLS files are checked by tls.validate_tls (run_node calls it after this):
        # tls.py builds on this module.
