"""The operations commands of `kvraft` (SPEC §7, docs/cli.md): `snapshot save|status|
restore`, `defrag` and `alarm list|disarm`, over etcd's Maintenance service (and its
Cluster service for `defrag --cluster`), printing what etcdctl prints.

Registered into the click group of kvraft/cli.py by `register`; the client commands
take the connection flags of kvraft/cli_connection.py like every other (this module
imports nothing of cli.py, which would be an import cycle).

Failures are one line (kvraft/cli.py's `main` prints them), exit codes as there:
1 a refused file or directory, 2 bad usage, 3 the cluster failed the request.

`snapshot save FILE` streams Maintenance.Snapshot from the first member of --endpoints
that answers, checks the image's own crc32 and the stream's SHA-256 as the data
arrives, writes FILE atomically (FILE.part, fsync, rename, fsync the directory) and
reads it back with the storage's reader before the rename. The file is byte for byte
what `etcdctl snapshot save` writes from kvraft, so either tool's file serves
`snapshot status` and `snapshot restore`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import grpc

from kvraft import cli_auth, client_auth
from kvraft.cli_connection import command_options, refuses_connection_flags, tls_files
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.server.config import ServeError, parse_initial_cluster, parse_member_id
from kvraft.storage.datadir import fsync_dir
from kvraft.storage.restore import RestoreError, restore_data_dir
from kvraft.storage.snapshot import SnapshotStreamError, StreamParser
from kvraft.storage.snapshot_file import (
    PAGE_BYTES,
    SHA256_BYTES,
    SnapshotFileError,
    SnapshotFileInfo,
    read_snapshot_file,
)
from kvraft.tls import ClientTLS
from kvraft.wire import GRPC_MESSAGE_BYTES_MAX

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2
EXIT_REQUEST_FAILED = 3
# `snapshot save`: the whole transfer's deadline (--timeout bounds the connection).
SNAPSHOT_TRANSFER_TIMEOUT_S = 3600.0
PART_SUFFIX = ".part"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
]
WRITE_OUT = ("simple", "table", "json")


class OpsError(click.ClickException):
    """A refused file or directory: one line for the user (kvraft.cli.main prints it
    and returns `exit_code`)."""

    exit_code = EXIT_NEGATIVE

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class RequestFailed(OpsError):
    """The cluster failed the request, or could not be reached."""

    exit_code = EXIT_REQUEST_FAILED


def _rpc_failure(endpoint: str, err: grpc.RpcError) -> OpsError:
    code = err.code()
    word = code.name.lower().replace("_", " ") if code is not None else "failed"
    return RequestFailed(f"{endpoint}: {word}: {err.details() or ''}")


def open_channel(endpoint: str) -> grpc.Channel:
    """A channel to `endpoint`, with TLS when the command was given --cacert, --cert or
    --key (the files are read now), authenticating as the command's --user if given
    (kvraft/client_auth.py)."""
    channel = _open_raw_channel(endpoint)
    try:
        user, password = cli_auth.credentials()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    credentials = client_auth.Credentials(user, password or "") if user else None
    return client_auth.authenticated_channel(channel, credentials)


def _open_raw_channel(endpoint: str) -> grpc.Channel:
    options = tls_files()
    if not options:
        return grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
    try:
        tls = ClientTLS.from_options(options.get("cacert"), options.get("cert"),
                                    options.get("key"), names=("--cacert", "--cert", "--key"))
        if tls is None:
            return grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        credentials = tls.credentials(("--cacert", "--cert", "--key"))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    return grpc.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)


@contextlib.contextmanager
def _maintenance(endpoint: str, timeout_s: float
                 ) -> Iterator[etcdpb_grpc.MaintenanceStub]:
    """A Maintenance stub on a channel to `endpoint`, connected within `timeout_s`."""
    channel = open_channel(endpoint)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise RequestFailed(f"{endpoint}: unavailable: no connection within "
                                f"{timeout_s:g} s") from None
        yield etcdpb_grpc.MaintenanceStub(channel)
    finally:
        channel.close()


def _parse_member_id(value: str) -> int:
    try:
        return parse_member_id(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _parse_initial_cluster(value: str) -> dict[int, str]:
    try:
        return parse_initial_cluster(value)
    except ServeError as e:
        raise click.BadParameter(str(e)) from None


# --------------------------------------------------------------------------- snapshot


def save_snapshot(endpoints: list[str], path: Path, timeout_s: float,
                  transfer_timeout_s: float = SNAPSHOT_TRANSFER_TIMEOUT_S
                  ) -> SnapshotFileInfo:
    """Stream a snapshot from the first endpoint that answers into `path`, atomically.
    Raises OpsError."""
    last: OpsError | None = None
    for endpoint in endpoints:
        try:
            return _save_from(endpoint, path, timeout_s, transfer_timeout_s)
        except _Unreachable as e:
            # Not reachable, or lost mid-stream: the next member may answer (each
            # attempt writes the file anew).
            last = e.error
    assert last is not None
    raise last


class _Unreachable(Exception):
    def __init__(self, error: OpsError) -> None:
        self.error = error


def _save_from(endpoint: str, path: Path, timeout_s: float,
               transfer_timeout_s: float) -> SnapshotFileInfo:
    part = path.with_name(path.name + PART_SUFFIX)
    try:
        with _maintenance(endpoint, timeout_s) as stub:
            try:
                with open(part, "wb") as f:
                    _receive(endpoint, stub, f, max(timeout_s, transfer_timeout_s))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise OpsError(f"cannot write {part}: {e.strerror or e}") from None
        # Read back what is on disk with the storage's own reader: every check again.
        try:
            info = read_snapshot_file(part)
        except SnapshotFileError as e:
            raise OpsError(f"the snapshot written to {part} reads back damaged: "
                           f"{e.reason}") from None
        try:
            os.replace(part, path)
            fsync_dir(path.parent.absolute())
        except OSError as e:
            raise OpsError(f"cannot write {path}: {e.strerror or e}") from None
        info.path = path
        return info
    except OpsError as e:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        if isinstance(e, RequestFailed) and "unavailable" in e.message:
            raise _Unreachable(e) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise


def _receive(endpoint: str, stub: etcdpb_grpc.MaintenanceStub, f: Any,
             deadline_s: float) -> None:
    """Write the stream to `f`, checking the image (crc32, structure) and the
    SHA-256 of the final message as they arrive."""
    parser = StreamParser(keep_extra=True)
    digest = hashlib.sha256()
    checksum: bytes | None = None
    received = 0
    try:
        for response in stub.Snapshot(etcdpb.SnapshotRequest(), timeout=deadline_s):
            blob = response.blob
            if checksum is not None:
                raise RequestFailed(f"{endpoint}: the snapshot stream goes on after its checksum")
            if response.remaining_bytes == 0:
                checksum = blob
            else:
                digest.update(blob)
                try:
                    parser.feed(blob)
                except SnapshotStreamError as e:
                    raise RequestFailed(
                        f"{endpoint}: the snapshot stream is damaged: {e}") from None
                if len(parser.extra) > PAGE_BYTES:
                    raise RequestFailed(
                        f"{endpoint}: the snapshot stream has data after its image")
            f.write(blob)
            received += len(blob)
    except grpc.RpcError as e:
        error = _rpc_failure(endpoint, e)
        if received == 0 and e.code() == grpc.StatusCode.UNAVAILABLE:
            raise _Unreachable(error) from None
        raise error from None
    if not parser.done:
        raise RequestFailed(f"{endpoint}: the snapshot stream ended before its image did")
    if checksum is None or len(checksum) != SHA256_BYTES:
        raise RequestFailed(f"{endpoint}: the snapshot stream ended without its SHA-256")
    if checksum != digest.digest():
        raise RequestFailed(f"{endpoint}: the snapshot stream fails its SHA-256 checksum")
    if bytes(parser.extra).strip(b"\0"):
        raise RequestFailed(f"{endpoint}: the snapshot stream has data after its image")


def human_bytes(n: int) -> str:
    """Sizes as etcdctl prints them (SI units: 2.1 MB, 20 kB, 512 B)."""
    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    value, unit = float(n), 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    if unit == 0:
        return f"{n} B"
    return f"{value:.1f} {units[unit]}" if value < 10 else f"{value:.0f} {units[unit]}"


def status_fields(info: SnapshotFileInfo) -> dict[str, int]:
    """etcdctl's `snapshot status -w json` object."""
    return {"hash": info.crc32, "revision": info.revision, "totalKey": info.total_keys,
            "totalSize": info.size_bytes}


def format_status(info: SnapshotFileInfo, write_out: str) -> str:
    fields = status_fields(info)
    row = [f"{info.crc32:08x}", str(info.revision), str(info.total_keys),
           human_bytes(info.size_bytes)]
    if write_out == "json":
        return json.dumps(fields)
    if write_out == "simple":
        return ", ".join(row)
    header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
    widths = [max(len(h), len(c)) + 2 for h, c in zip(header, row, strict=True)]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    head = "|" + "|".join(h.center(w) for h, w in zip(header, widths, strict=True)) + "|"
    body = "|" + "|".join(f" {c.rjust(w - 2)} " for c, w in zip(row, widths, strict=True)) + "|"
    return "\n".join([rule, head, rule, body, rule])


def _works_on_files(command: str) -> Callable[[str], str]:
    return lambda flag: f"{command} works on files only"


def _snapshot_group() -> click.Group:
    @click.group("snapshot")
    def snapshot() -> None:
        """Back up the store to a file and restore a new cluster from one."""

    @snapshot.command("save")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @command_options
    def snapshot_save(file: Path, endpoints: list[str], timeout: float) -> int:
        """Stream a consistent snapshot of the store from a member into FILE (checked:
        the image's crc32 and the stream's SHA-256; written atomically)."""
        info = save_snapshot(endpoints, file, timeout)
        click.echo(f"Snapshot saved at {file}")
        click.echo(f"revision {info.revision}, {info.total_keys} keys, "
                   f"{info.size_bytes} bytes, hash {info.crc32:08x}", err=True)
        return EXIT_OK

    @snapshot.command("status")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-w", "--write-out", type=click.Choice(WRITE_OUT), default="table",
                  envvar="KVRAFT_WRITE_OUT",
                  show_default=True, help="Output format (etcdctl's: simple, table, json).")
    @refuses_connection_flags(_works_on_files("snapshot status"))
    def snapshot_status(file: Path, write_out: str) -> int:
        """Check FILE (its image's crc32, its SHA-256) and print its hash, revision,
        key count and size."""
        try:
            info = read_snapshot_file(file)
        except SnapshotFileError as e:
            raise OpsError(str(e)) from None
        click.echo(format_status(info, write_out))
        return EXIT_OK

    @snapshot.command("restore")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--data-dir", required=True, type=click.Path(path_type=Path),
                  envvar="KVRAFT_DATA_DIR",
                  help="The new member's data directory (absent or empty).")
    @click.option("--id", "node_id", required=True, metavar="ID", envvar="KVRAFT_ID",
                  callback=lambda ctx, p, v: _parse_member_id(v),
                  help="The new member's id (in --initial-cluster).")
    @click.option("--initial-cluster", required=True, metavar="ID=HOST:PORT[,...]",
                  envvar="KVRAFT_INITIAL_CLUSTER",
                  callback=lambda ctx, p, v: _parse_initial_cluster(v),
                  help="Every member of the new cluster and its peer address.")
    @click.option("--skip-hash-check", is_flag=True, envvar="KVRAFT_SKIP_HASH_CHECK",
                  help="Accept a file without its SHA-256 (the image's crc32 is still "
                  "checked).")
    @refuses_connection_flags(_works_on_files("snapshot restore"))
    def snapshot_restore(file: Path, data_dir: Path, node_id: int,
                         initial_cluster: dict[int, str], skip_hash_check: bool) -> int:
        """Make the data directory of member ID of a NEW cluster (a new cluster id, the
        members of --initial-cluster) holding FILE's data; start each member with
        `kvraft serve --data-dir DIR --id ID ...` on its restored directory."""
        try:
            result = restore_data_dir(file, data_dir, node_id, initial_cluster,
                                      verify_hash=not skip_hash_check)
        except RestoreError as e:
            raise OpsError(str(e)) from None
        click.echo(f"restored {file} (revision {result.info.revision}, "
                   f"{result.info.total_keys} keys) into {result.data_dir}: member "
                   f"{node_id} of new cluster {result.cluster_id:016x} (members "
                   f"{', '.join(map(str, sorted(initial_cluster)))})")
        return EXIT_OK

    return snapshot


# --------------------------------------------------------------------------- defrag


def _cluster_endpoints(endpoints: list[str], timeout_s: float) -> list[str]:
    """Every member's client address, from etcd's MemberList (etcdctl's --cluster)."""
    last: OpsError | None = None
    for endpoint in endpoints:
        channel = open_channel(endpoint)
        try:
            members = etcdpb_grpc.ClusterStub(channel).MemberList(
                etcdpb.MemberListRequest(linearizable=True), timeout=timeout_s).members
        except grpc.RpcError as e:
            last = _rpc_failure(endpoint, e)
            continue
        finally:
            channel.close()
        found: list[str] = []
        for m in members:
            for url in m.clientURLs:
                address = url.split("://", 1)[-1]
                if address not in found:
                    found.append(address)
        return found
    assert last is not None
    raise last


def _defrag_command() -> click.Command:
    @click.command("defrag")
    @click.option("--cluster", is_flag=True, envvar="KVRAFT_CLUSTER",
                  help="Every member the cluster lists, not only --endpoints.")
    @command_options
    def defrag(cluster: bool, endpoints: list[str], timeout: float) -> int:
        """Compact each member's LevelDB (etcd's Defragment), one member at a time;
        its reads and writes go on meanwhile. --timeout bounds each member's."""
        targets = _cluster_endpoints(endpoints, timeout) if cluster else endpoints
        failed = 0
        for endpoint in targets:
            try:
                with _maintenance(endpoint, timeout) as stub:
                    stub.Defragment(etcdpb.DefragmentRequest(), timeout=timeout)
            except grpc.RpcError as e:
                failed += 1
                click.echo(f"Failed to defragment etcd member[{endpoint}] "
                           f"({_rpc_failure(endpoint, e).message})", err=True)
                continue
            except OpsError as e:
                failed += 1
                click.echo(f"Failed to defragment etcd member[{endpoint}] ({e.message})",
                           err=True)
                continue
            click.echo(f"Finished defragmenting etcd member[{endpoint}]")
        if failed:
            raise RequestFailed(f"{failed} of {len(targets)} members were not defragmented")
        return EXIT_OK

    return defrag


# --------------------------------------------------------------------------- alarm


def _alarm_call(endpoints: list[str], timeout_s: float, request: etcdpb.AlarmRequest
                ) -> etcdpb.AlarmResponse:
    """One Alarm call, on the first endpoint that answers."""
    last: OpsError | None = None
    for endpoint in endpoints:
        channel = open_channel(endpoint)
        try:
            response: etcdpb.AlarmResponse = etcdpb_grpc.MaintenanceStub(channel).Alarm(
                request, timeout=timeout_s)
            return response
        except grpc.RpcError as e:
            last = _rpc_failure(endpoint, e)
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise last from None
        finally:
            channel.close()
    assert last is not None
    raise last


def format_alarm(alarm: etcdpb.AlarmMember) -> str:
    """etcdctl's line for an alarm, byte for byte: the member id in decimal, the
    alarm's name, and the space etcdctl 3.4 prints before the newline."""
    return f"memberID:{alarm.memberID} alarm:{etcdpb.AlarmType.Name(alarm.alarm)} "


def _alarm_group() -> click.Group:
    @click.group("alarm")
    def alarm() -> None:
        """List and disarm the cluster's alarms (NOSPACE, CORRUPT)."""

    @alarm.command("list")
    @command_options
    def alarm_list(endpoints: list[str], timeout: float) -> int:
        """Print every raised alarm, one per line (nothing when none is)."""
        response = _alarm_call(endpoints, timeout, etcdpb.AlarmRequest(
            action=etcdpb.AlarmRequest.GET))
        for a in response.alarms:
            click.echo(format_alarm(a))
        return EXIT_OK

    @alarm.command("disarm")
    @command_options
    def alarm_disarm(endpoints: list[str], timeout: float) -> int:
        """Disarm every raised alarm and print each one disarmed (as etcdctl's does:
        a NOSPACE alarm is raised again if the member is still past its quota)."""
        raised = _alarm_call(endpoints, timeout, etcdpb.AlarmRequest(
            action=etcdpb.AlarmRequest.GET)).alarms
        for a in raised:
            _alarm_call(endpoints, timeout, etcdpb.AlarmRequest(
                action=etcdpb.AlarmRequest.DEACTIVATE, memberID=a.memberID, alarm=a.alarm))
            click.echo(format_alarm(a))
        return EXIT_OK

    return alarm


# --------------------------------------------------------------------------- registry


def register(group: click.Group) -> None:
    """Add snapshot, defrag and alarm to `group` (kvraft/cli.py's `cli`)."""
    group.add_command(_snapshot_group())
    group.add_command(_defrag_command())
    group.add_command(_alarm_group())
