"""The `kvraft` commands of etcd's API (SPEC §6, docs/cli.md): `watch`, `txn`, `lease`,
`lock`, `elect` and `compact` (`get --rev` and `put --lease` are in kvraft/cli.py).

Their output is etcdctl 3.4's "simple" output, so scripts written for etcdctl read it:
a watch event is its type, key and value on three lines; a lease id is 16 hex digits.
kvraft/cli.py calls `register(cli, <the kvraft.cli module>)` at its end: the commands
use its connection and its errors, handed in rather than imported (the import graph
has no cycles), and the connection flags of kvraft/cli_connection.py.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import click

from kvraft.cli_connection import command_options
from kvraft.client_etcd import (
    Compare,
    DeleteOp,
    DeleteResult,
    KeyValue,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    TxnResult,
)

# How often a waiting `lock` or `elect` checks that its lease is still alive.
LEASE_CHECK_S = 0.2
# `lease keep-alive` renews every TTL/3, as etcd's clients do, and at least this often.
KEEPALIVE_INTERVAL_MAX_S = 10.0


def _out(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def _kv_lines(kv: KeyValue, keys_only: bool = False) -> bytes:
    """etcdctl's printKV: the key on a line, then the value on a line."""
    return kv.key + b"\n" if keys_only else kv.key + b"\n" + kv.value + b"\n"


def format_event(event: Any) -> bytes:
    """etcdctl's simple watch output: the type, [the previous key and value,] the key
    and the value, each on its own line."""
    out = event.type.encode() + b"\n"
    if event.prev_kv is not None:
        out += _kv_lines(event.prev_kv)
    return out + _kv_lines(event.kv)


def format_txn(result: TxnResult, ops: list[Any]) -> bytes:
    """etcdctl's simple txn output: SUCCESS or FAILURE, then per op a blank line and
    its answer (OK; the deleted count; the keys and values read)."""
    out = [b"SUCCESS\n" if result.succeeded else b"FAILURE\n"]
    for op, response in zip(ops, result.responses, strict=False):
        out.append(b"\n")
        if isinstance(response, PutResult):
            out.append(b"OK\n")
        elif isinstance(response, DeleteResult):
            out.append(b"%d\n" % response.deleted)
        elif isinstance(response, RangeResult):
            if isinstance(op, RangeOp) and op.count_only:
                out.append(b"%d\n" % response.count)
            else:
                keys_only = isinstance(op, RangeOp) and op.keys_only
                out.extend(_kv_lines(kv, keys_only) for kv in response.kvs)
    return b"".join(out)


def _sigterm_interrupts() -> None:
    """SIGTERM ends a long-running command like Ctrl-C: it releases what it holds."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


# --------------------------------------------------------------------------- params


class LeaseIdType(click.ParamType):
    """A lease id in hex, as etcdctl prints and takes it (an optional 0x)."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip().lower().removeprefix("0x")
        try:
            lease_id = int(text, 16)
        except ValueError:
            lease_id = -1
        if not 0 < lease_id < 1 << 63 or not text:
            self.fail(f"invalid lease id {value!r}: expected a nonzero hex number "
                      "(as `lease grant` prints)", param, ctx)
        return lease_id


LEASE_ID = LeaseIdType()


# ---------------------------------------------------------------------- etcdctl txn


class TxnSyntaxError(ValueError):
    """A line of etcdctl's txn format that does not parse."""


# etcdctl's compare lines: <target>("<key>") <op> "<value>"
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMPARE_LINE = re.compile(rf'^\s*(\w+)\({_QUOTED}\)\s*(!=|=|<|>)\s*{_QUOTED}\s*$')
_TARGET_ALIASES = {"c": "create", "create": "create", "m": "mod", "mod": "mod",
                   "val": "value", "value": "value", "ver": "version", "version": "version",
                   "lease": "lease"}
_ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_ESCAPES = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("\\"): 92, ord('"'): 34,
            ord("'"): 39, ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("v"): 11, ord("0"): 0}


def unquote(text: str) -> bytes:
    """The bytes of the inside of a Go-quoted string (etcdctl uses strconv.Unquote):
    \\" \\\\ \\n \\t \\r \\xNN ... and every other byte as written."""
    raw = os.fsencode(text)
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b != 0x5C:  # not a backslash
            out.append(b)
            i += 1
            continue
        nxt = raw[i + 1] if i + 1 < len(raw) else -1
        if nxt == ord("x"):
            digits = raw[i + 2:i + 4]
            if len(digits) != 2 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
                raise TxnSyntaxError(f"bad \\x escape in {text!r}")
            out.append(int(digits, 16))
            i += 4
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise TxnSyntaxError(f"bad escape in {text!r}")
    return bytes(out)


def parse_compare(line: str) -> Compare:
    """One compare line, e.g. `mod("k") > "3"`, `value("k") = "v"`, `create("k") = "0"`
    (a lease compare takes the lease id in hex, as etcdctl prints it)."""
    m = _COMPARE_LINE.match(line)
    if m is None or m.group(1).lower() not in _TARGET_ALIASES:
        raise TxnSyntaxError(f"malformed comparison: {line.strip()}")
    target = _TARGET_ALIASES[m.group(1).lower()]
    operand_text = unquote(m.group(4))
    operand: bytes | int
    try:
        if target == "value":
            operand = operand_text
        else:
            operand = int(operand_text.decode(), 16 if target == "lease" else 10)
    except ValueError:
        raise TxnSyntaxError(f"malformed comparison: {line.strip()} "
                             f"(a {target} compare takes a number)") from None
    return Compare(unquote(m.group(2)), target, m.group(3), operand)


def _split_args(line: str) -> list[bytes]:
    """etcdctl's argify: words, or double-quoted strings with Go escapes."""
    return [unquote(a[1:-1]) if len(a) >= 2 and a[0] == a[-1] == '"' else os.fsencode(a)
            for a in _ARG.findall(line)]


def parse_op(line: str) -> RangeOp | PutOp | DeleteOp:
    """One request line: `get [--prefix] [--rev=R] [--limit=N] [--keys-only]
    [--count-only] KEY [END]`, `put [--lease=ID] [--prev-kv] KEY VALUE`, or
    `del [--prefix] [--prev-kv] KEY [END]`."""
    args = _split_args(line)
    verb = args[0].decode(errors="replace") if args else ""
    flags: dict[str, str] = {}
    positional: list[bytes] = []
    for a in args[1:]:
        if a.startswith(b"--") and len(a) > 2:
            name, _, val = a[2:].decode(errors="replace").partition("=")
            flags[name] = val
        else:
            positional.append(a)
    allowed = {"get": {"prefix", "rev", "limit", "keys-only", "count-only"},
               "put": {"lease", "prev-kv"}, "del": {"prefix", "prev-kv"}}.get(verb)
    if allowed is None:
        raise TxnSyntaxError(f"unknown request: {line.strip()} (get, put or del)")
    unknown = sorted(set(flags) - allowed)
    if unknown:
        raise TxnSyntaxError(f"unknown flag --{unknown[0]} in: {line.strip()}")
    try:
        if verb == "put":
            if len(positional) != 2:
                raise TxnSyntaxError(f"put takes KEY VALUE: {line.strip()}")
            return PutOp(positional[0], positional[1], lease=int(flags.get("lease") or "0", 16),
                         prev_kv="prev-kv" in flags)
        if not 1 <= len(positional) <= 2:
            raise TxnSyntaxError(f"{verb} takes KEY [END]: {line.strip()}")
        end = positional[1] if len(positional) > 1 else b""
        if verb == "get":
            return RangeOp(positional[0], end, prefix="prefix" in flags,
                           revision=int(flags.get("rev") or 0),
                           limit=int(flags.get("limit") or 0),
                           keys_only="keys-only" in flags, count_only="count-only" in flags)
        return DeleteOp(positional[0], end, prefix="prefix" in flags,
                        prev_kv="prev-kv" in flags)
    except TxnSyntaxError:
        raise
    except ValueError as e:  # a bad number, or prefix with an END
        raise TxnSyntaxError(f"{e}: {line.strip()}") from None


@dataclass
class TxnText:
    """A txn in etcdctl's format: compares, a blank line, success requests, a blank
    line, failure requests, and a blank line or the end of the input."""

    compare: list[Compare] = field(default_factory=list)
    success: list[RangeOp | PutOp | DeleteOp] = field(default_factory=list)
    failure: list[RangeOp | PutOp | DeleteOp] = field(default_factory=list)


TXN_PROMPTS = ("compares:", "success requests (get, put, del):",
               "failure requests (get, put, del):")


def parse_txn(lines: Iterable[str], prompt: Any = None) -> TxnText:
    """Read the three sections; `prompt(text)` is called before each (interactive)."""
    out = TxnText()
    section = 0
    if prompt:
        prompt(TXN_PROMPTS[0])
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            section += 1
            if section > 2:
                break
            if prompt:
                prompt(TXN_PROMPTS[section])
            continue
        if section == 0:
            out.compare.append(parse_compare(line))
        else:
            (out.success if section == 1 else out.failure).append(parse_op(line))
    return out


def _stdin_lines() -> Iterator[str]:
    for raw in sys.stdin.buffer:
        yield raw.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- commands


def register(cli: click.Group, base: ModuleType) -> None:
    """Add the commands to `cli`; `base` is kvraft.cli (options, connect, errors)."""
    connect = base._connect
    key_bytes = base._key_bytes
    CliError = base.CliError
    b: Any = base

    @cli.command()
    @click.argument("key")
    @click.option("--prefix", is_flag=True, help="Watch every key starting with KEY.")
    @click.option("--rev", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Replay the history from this revision (0: changes from now on).")
    @click.option("--prev-kv", is_flag=True, help="Print each key's previous value too.")
    @command_options
    def watch(key: str, prefix: bool, rev: int, prev_kv: bool, endpoints: list[str],
              timeout: float) -> int:
        """Print each change to KEY (or the keys under it) until Ctrl-C: the event type,
        [the previous key and value,] the key and the value, each on a line (etcdctl's
        output). Resumes on another member when one fails."""
        _sigterm_interrupts()
        with connect(endpoints, timeout) as kv:
            w = kv.watch(key_bytes(key), prefix=prefix, start_revision=rev, prev_kv=prev_kv)
            try:
                for event in w:
                    _out(format_event(event))
            except KeyboardInterrupt:
                return b.EXIT_OK
            finally:
                w.close()
        return b.EXIT_OK

    @cli.command()
    @click.option("-i", "--interactive", is_flag=True,
                  help="Prompt for each section (as etcdctl txn -i).")
    @command_options
    def txn(interactive: bool, endpoints: list[str], timeout: float) -> int:
        """Run a transaction read from stdin in etcdctl's format: compares (e.g.
        mod("k") > "3", value("k") = "v"), a blank line, the requests if they all hold
        (get, put, del), a blank line, the requests otherwise. Prints SUCCESS or FAILURE
        and each request's answer."""
        prompt = (lambda text: click.echo(text)) if interactive else None
        try:
            parsed = parse_txn(_stdin_lines(), prompt)
        except TxnSyntaxError as e:
            raise CliError(str(e), b.EXIT_USAGE) from None
        with connect(endpoints, timeout) as kv:
            result = kv.txn(parsed.compare, parsed.success, parsed.failure)
        _out(format_txn(result, parsed.success if result.succeeded else parsed.failure))
        return b.EXIT_OK

    @cli.command()
    @click.argument("revision", metavar="REV", type=click.IntRange(min=1))
    @click.option("--physical", is_flag=True,
                  help="Return once the compaction is applied to the store.")
    @command_options
    def compact(revision: int, physical: bool, endpoints: list[str], timeout: float) -> int:
        """Drop the history at and below REV (reads and watches below it then fail)."""
        with connect(endpoints, timeout) as kv:
            kv.compact(revision, physical=physical)
        click.echo(f"compacted revision {revision}")
        return b.EXIT_OK

    @cli.group()
    def lease() -> None:
        """Grant, revoke, keep alive and inspect leases (ids in hex, as etcdctl)."""

    @lease.command("grant")
    @click.argument("ttl", metavar="TTL", type=click.IntRange(min=1))
    @command_options
    def lease_grant(ttl: int, endpoints: list[str], timeout: float) -> int:
        """Grant a lease of TTL seconds; prints its id."""
        with connect(endpoints, timeout) as kv:
            lease_id, granted = kv.lease_grant(ttl)
        click.echo(f"lease {lease_id:016x} granted with TTL({granted}s)")
        return b.EXIT_OK

    @lease.command("revoke")
    @click.argument("lease_id", metavar="ID", type=LEASE_ID)
    @command_options
    def lease_revoke(lease_id: int, endpoints: list[str], timeout: float) -> int:
        """Revoke lease ID, deleting every key attached to it."""
        with connect(endpoints, timeout) as kv:
            kv.lease_revoke(lease_id)
        click.echo(f"lease {lease_id:016x} revoked")
        return b.EXIT_OK

    @lease.command("keep-alive")
    @click.argument("lease_id", metavar="ID", type=LEASE_ID)
    @click.option("--once", is_flag=True, help="Renew once and exit.")
    @command_options
    def lease_keep_alive(lease_id: int, once: bool, endpoints: list[str],
                         timeout: float) -> int:
        """Renew lease ID every TTL/3 until Ctrl-C (exit 1 once it is gone)."""
        _sigterm_interrupts()
        with connect(endpoints, timeout) as kv:
            try:
                while True:
                    ttl = kv.lease_keep_alive_once(lease_id)
                    if ttl <= 0:
                        click.echo(f"lease {lease_id:016x} expired or revoked.")
                        return b.EXIT_NEGATIVE
                    click.echo(f"lease {lease_id:016x} keepalived with TTL({ttl})")
                    if once:
                        return b.EXIT_OK
                    time.sleep(min(ttl / 3, KEEPALIVE_INTERVAL_MAX_S))
            except KeyboardInterrupt:
                return b.EXIT_OK

    @lease.command("ttl")
    @click.argument("lease_id", metavar="ID", type=LEASE_ID)
    @click.option("--keys", is_flag=True, help="List the keys attached to the lease too.")
    @command_options
    def lease_ttl(lease_id: int, keys: bool, endpoints: list[str], timeout: float) -> int:
        """Print lease ID's granted and remaining TTL (exit 1 when it is gone)."""
        with connect(endpoints, timeout) as kv:
            info = kv.lease_time_to_live(lease_id, keys=keys)
        if info is None:
            click.echo(f"lease {lease_id:016x} already expired")
            return b.EXIT_NEGATIVE
        line = (f"lease {lease_id:016x} granted with TTL({info.granted_ttl}s), "
                f"remaining({info.ttl}s)")
        if keys:
            names = " ".join(k.decode("utf-8", "replace") for k in info.keys)
            line += f", attached keys([{names}])"
        click.echo(line)
        return b.EXIT_OK

    @lease.command("list")
    @command_options
    def lease_list(endpoints: list[str], timeout: float) -> int:
        """Every granted lease's id."""
        with connect(endpoints, timeout) as kv:
            ids = kv.lease_list()
        click.echo(f"found {len(ids)} leases")
        for lease_id in ids:
            click.echo(f"{lease_id:016x}")
        return b.EXIT_OK

    @cli.command(context_settings={"ignore_unknown_options": True})
    @click.argument("name")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @click.option("--ttl", type=click.IntRange(min=1), default=60, show_default=True,
                  metavar="SECONDS", help="The lease behind the lock: it is lost this long "
                  "after this process stops renewing it.")
    @command_options
    def lock(name: str, command: tuple[str, ...], ttl: int, endpoints: list[str],
             timeout: float) -> int:
        """Take the lock NAME (etcd's recipe: `etcdctl lock NAME` excludes it and waits for
        it), then run COMMAND (after `--`) holding it, with KVRAFT_LOCK_KEY and
        KVRAFT_LOCK_REV (the fencing token; also as ETCD_LOCK_KEY/ETCD_LOCK_REV) in its
        environment, and exit with its status; without COMMAND print the lock's key and
        hold it until Ctrl-C."""
        _sigterm_interrupts()
        with connect(endpoints, timeout) as kv:
            try:
                held = kv.lock(key_bytes(name), ttl)
            except KeyboardInterrupt:
                return b.EXIT_INTERRUPTED
            try:
                if command:
                    env = dict(os.environ)
                    key_text = os.fsdecode(held.key)
                    for prefix in ("KVRAFT", "ETCD"):
                        env[f"{prefix}_LOCK_KEY"] = key_text
                        env[f"{prefix}_LOCK_REV"] = str(held.fencing_token)
                    try:
                        child = subprocess.Popen(list(command), env=env)
                    except OSError as e:
                        raise CliError(f"cannot run {command[0]}: "
                                       f"{(e.strerror or str(e)).lower()}") from None
                    try:
                        status = child.wait()
                    except KeyboardInterrupt:
                        child.terminate()
                        status = child.wait()
                    if not held.held:
                        b._err("the lock's lease was lost while the command ran")
                        return status or b.EXIT_REQUEST_FAILED
                    return status if status >= 0 else 128 - status
                _out(held.key + b"\n")
                try:
                    while held.held:
                        time.sleep(LEASE_CHECK_S)
                except KeyboardInterrupt:
                    return b.EXIT_OK
                raise CliError("the lock's lease was lost (expired)", b.EXIT_REQUEST_FAILED)
            finally:
                with contextlib.suppress(Exception):
                    held.release()

    @cli.command()
    @click.argument("name")
    @click.argument("proposal", required=False)
    @click.option("--ttl", type=click.IntRange(min=1), default=60, show_default=True,
                  metavar="SECONDS", help="The lease behind a campaign.")
    @command_options
    def elect(name: str, proposal: str | None, ttl: int, endpoints: list[str],
              timeout: float) -> int:
        """With PROPOSAL: campaign in the election NAME (etcd's recipe, as `etcdctl
        elect`), print the leader key and value once elected, lead until Ctrl-C, then
        resign. Without: print the leader's key and value, and again at every change,
        until Ctrl-C."""
        _sigterm_interrupts()
        with connect(endpoints, timeout) as kv:
            election = kv.election(key_bytes(name), ttl=ttl)
            if proposal is None:
                observer = election.observe()
                try:
                    for leader in observer:
                        _out(_kv_lines(leader))
                except KeyboardInterrupt:
                    return b.EXIT_OK
                finally:
                    observer.close()
                return b.EXIT_OK
            try:
                leader = election.campaign(key_bytes(proposal))
            except KeyboardInterrupt:
                return b.EXIT_INTERRUPTED
            try:
                _out(_kv_lines(leader))
                assert election.lease is not None
                while election.lease.alive:
                    time.sleep(LEASE_CHECK_S)
                raise CliError("the campaign's lease was lost (expired)", b.EXIT_REQUEST_FAILED)
            except KeyboardInterrupt:
                return b.EXIT_OK
            finally:
                with contextlib.suppress(Exception):
                    election.resign()

