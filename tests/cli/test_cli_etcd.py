"""The etcd commands of the `kvraft` CLI (SPEC §6) as the real console script against a
real 3-node cluster, cross-checked with etcdctl 3.4 (Debian's etcd-client): the same
output for watch and txn, leases granted by one and seen by the other, `kvraft lock`
and `etcdctl lock` excluding each other on one name, and an election campaigned by
etcdctl observed by `kvraft elect`."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.client import Client
from tests.cli.helpers import KVRAFT, assert_one_error_line, clean_env, run_kvraft
from tests.cluster.harness import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

ETCDCTL = shutil.which("etcdctl")
needs_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl (etcd-client) is not "
                                   "installed")
LEASE_TTL_S = 3
WAIT_S = 30.0
# A waiter that should stay blocked is checked after this long.
BLOCKED_CHECK_S = 2.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


@pytest.fixture(scope="module")
def eps(cluster: LocalCluster) -> str:
    return cluster.endpoints()


def with_endpoints(eps: str, args: tuple[str, ...]) -> list[str]:
    """`args` with --endpoints before a `--` (after it, it would be COMMAND's)."""
    cut = args.index("--") if "--" in args else len(args)
    return [*args[:cut], "--endpoints", eps, *args[cut:]]


def kvraft(eps: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    if stdin is None:
        return run_kvraft(*with_endpoints(eps, args))
    return subprocess.run([str(KVRAFT), *with_endpoints(eps, args)], input=stdin,
                          capture_output=True, env=clean_env(), timeout=120, check=False)


def etcdctl(eps: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    assert ETCDCTL is not None
    return subprocess.run([ETCDCTL, f"--endpoints={eps}", *args], input=stdin,
                          capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
                          timeout=60, check=False)


class Running:
    """A long-running command (watch, lock, elect) whose stdout lines are collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        self.lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip(b"\n"))

    def wait_lines(self, n: int, what: str) -> list[bytes]:
        wait_until(lambda: len(self.lines) >= n or self.proc.poll() is not None, WAIT_S, what)
        assert len(self.lines) >= n, (what, self.lines, self.stderr())
        return self.lines[:n]

    def interrupt(self) -> int:
        """SIGINT by PID (Ctrl-C), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(WAIT_S)
        finally:
            self.kill()
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr(self) -> bytes:
        if self.proc.poll() is None or self.proc.stderr is None:
            return b""
        return self.proc.stderr.read()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.kill()


def start_kvraft(running: list[Running], eps: str, *args: str) -> Running:
    r = Running([str(KVRAFT), *with_endpoints(eps, args)], clean_env())
    running.append(r)
    return r


def start_etcdctl(running: list[Running], eps: str, *args: str) -> Running:
    assert ETCDCTL is not None
    r = Running([ETCDCTL, f"--endpoints={eps}", *args], {**os.environ, "ETCDCTL_API": "3"})
    running.append(r)
    return r


def revision_of(eps: str, key: str) -> int:
    with Client(eps.split(","), timeout=10) as kv:
        return kv.range(key).kvs[0].mod_revision


# --------------------------------------------------------------------------- KV, leases


def test_put_with_a_lease_get_at_a_revision_and_the_lease_commands(eps: str) -> None:
    granted = kvraft(eps, "lease", "grant", str(LEASE_TTL_S * 10))
    assert granted.returncode == 0, granted.stderr
    m = re.fullmatch(rb"lease ([0-9a-f]{16}) granted with TTL\(30s\)\n", granted.stdout)
    assert m, granted.stdout
    lease_hex = m.group(1).decode()
    assert kvraft(eps, "put", "cli/leased", "v1", "--lease", lease_hex).stdout == b"OK\n"
    first = revision_of(eps, "cli/leased")
    assert kvraft(eps, "put", "cli/leased", "v2", "--lease", lease_hex).returncode == 0
    assert kvraft(eps, "get", "cli/leased", "--rev", str(first)).stdout == b"v1\n"
    assert kvraft(eps, "get", "cli/leased").stdout == b"v2\n"

    ttl = kvraft(eps, "lease", "ttl", lease_hex, "--keys")
    assert re.fullmatch(rf"lease {lease_hex} granted with TTL\(30s\), remaining\(\d+s\), "
                        r"attached keys\(\[cli/leased\]\)\n".encode(), ttl.stdout), ttl.stdout
    listed = kvraft(eps, "lease", "list").stdout.decode().splitlines()
    assert listed[0] == f"found {len(listed) - 1} leases" and lease_hex in listed[1:]
    once = kvraft(eps, "lease", "keep-alive", lease_hex, "--once")
    assert once.stdout == f"lease {lease_hex} keepalived with TTL(30)\n".encode()
    assert kvraft(eps, "lease", "revoke", lease_hex).stdout == \
        f"lease {lease_hex} revoked\n".encode()
    gone = kvraft(eps, "lease", "ttl", lease_hex)
    assert (gone.returncode, gone.stdout) == (1, f"lease {lease_hex} already expired\n".encode())
    missing = kvraft(eps, "get", "cli/leased")
    assert assert_one_error_line(missing, 1) == "error: key not found: cli/leased"
    again = kvraft(eps, "lease", "revoke", lease_hex)
    assert "lease not found" in assert_one_error_line(again, 3)
    bad = kvraft(eps, "put", "k", "v", "--lease", "xyz")
    assert "invalid lease id" in assert_one_error_line(bad, 2)


@needs_etcdctl
def test_a_lease_granted_by_kvraft_is_seen_by_etcdctl_and_back(eps: str) -> None:
    ours = kvraft(eps, "lease", "grant", "60").stdout.split()[1].decode()
    assert kvraft(eps, "put", "cli/ours", "x", "--lease", ours).returncode == 0
    seen = etcdctl(eps, "lease", "timetolive", ours, "--keys")
    assert seen.stdout.startswith(f"lease {ours} granted with TTL(60s)".encode())
    assert b"attached keys([cli/ours])" in seen.stdout
    theirs = etcdctl(eps, "lease", "grant", "60").stdout.split()[1].decode()
    assert etcdctl(eps, "put", "cli/theirs", "y", f"--lease={theirs}").returncode == 0
    ttl = kvraft(eps, "lease", "ttl", theirs, "--keys")
    assert b"attached keys([cli/theirs])" in ttl.stdout, ttl
    for lease_hex in (ours, theirs):
        assert kvraft(eps, "lease", "revoke", lease_hex).returncode == 0
    assert etcdctl(eps, "get", "cli/ours").stdout == b""


def test_lease_keep_alive_renews_until_interrupted(eps: str, running: list[Running]) -> None:
    # A TTL that outlasts starting the keep-alive process on a loaded machine (seconds).
    ttl_s = 10
    lease_hex = kvraft(eps, "lease", "grant", str(ttl_s)).stdout.split()[1].decode()
    keeper = start_kvraft(running, eps, "lease", "keep-alive", lease_hex)
    lines = keeper.wait_lines(3, "three renewals (one every TTL/3)")
    assert set(lines) == {f"lease {lease_hex} keepalived with TTL({ttl_s})".encode()}
    time.sleep(ttl_s / 2)  # renewals go on: the lease has lived past its TTL
    assert keeper.proc.poll() is None
    assert kvraft(eps, "lease", "ttl", lease_hex).returncode == 0
    assert keeper.interrupt() == 0
    kvraft(eps, "lease", "revoke", lease_hex)
    after = kvraft(eps, "lease", "keep-alive", lease_hex)
    assert (after.returncode, after.stdout) == (
        1, f"lease {lease_hex} expired or revoked.\n".encode())


# --------------------------------------------------------------------------- watch


@needs_etcdctl
def test_watch_prints_what_etcdctl_watch_prints(eps: str, running: list[Running]) -> None:
    kvraft(eps, "put", "cliw/a", "1")
    start = revision_of(eps, "cliw/a")
    kvraft(eps, "put", "cliw/a", "two words")
    kvraft(eps, "put", "cliw/b", "")
    kvraft(eps, "delete", "cliw/a")
    ours = start_kvraft(running, eps, "watch", "cliw/", "--prefix", "--prev-kv",
                        "--rev", str(start))
    theirs = start_etcdctl(running, eps, "watch", "cliw/", "--prefix", "--prev-kv",
                           f"--rev={start}")
    expected = [b"PUT", b"cliw/a", b"1",
                b"PUT", b"cliw/a", b"1", b"cliw/a", b"two words",
                b"PUT", b"cliw/b", b"",
                b"DELETE", b"cliw/a", b"two words", b"cliw/a", b""]
    assert theirs.wait_lines(len(expected), "etcdctl's events") == expected
    assert ours.wait_lines(len(expected), "kvraft's events") == expected
    kvraft(eps, "put", "cliw/c", "live")        # and changes made while it watches
    assert ours.wait_lines(len(expected) + 3, "a live event")[-3:] == [
        b"PUT", b"cliw/c", b"live"]
    assert ours.interrupt() == 0
    theirs.interrupt()


def test_watch_of_a_compacted_revision_fails_in_one_line(eps: str) -> None:
    kvraft(eps, "put", "cliw/compacted", "x")
    rev = revision_of(eps, "cliw/compacted")
    kvraft(eps, "put", "cliw/compacted", "y")
    assert kvraft(eps, "compact", str(rev + 1)).stdout == f"compacted revision {rev + 1}\n".encode()
    watched = kvraft(eps, "watch", "cliw/compacted", "--rev", str(rev))
    assert "required revision has been compacted" in assert_one_error_line(watched, 3)
    got = kvraft(eps, "get", "cliw/compacted", "--rev", str(rev))
    assert "required revision has been compacted" in assert_one_error_line(got, 3)


# --------------------------------------------------------------------------- txn

TXN_SUCCESS = b'''value("clit/k") = "v1"
mod("clit/k") > "0"

put clit/k v2
get clit/k
del clit/nope
put "clit/with space" "a \\"quoted\\" value"

get clit/k

'''
TXN_FAILURE = b'''version("clit/k") > "100"

put clit/k never

get --prefix clit/
del clit/k

'''


def test_txn_reads_etcdctls_format_and_prints_its_output(eps: str) -> None:
    kvraft(eps, "put", "clit/k", "v1")
    won = kvraft(eps, "txn", stdin=TXN_SUCCESS)
    assert won.returncode == 0, won.stderr
    assert won.stdout == b"SUCCESS\n\nOK\n\nclit/k\nv2\n\n0\n\nOK\n"
    assert kvraft(eps, "get", "clit/with space").stdout == b'a "quoted" value\n'
    lost = kvraft(eps, "txn", stdin=TXN_FAILURE)
    assert lost.stdout == (b"FAILURE\n\nclit/k\nv2\nclit/with space\na \"quoted\" value\n"
                           b"\n1\n")
    bad = kvraft(eps, "txn", stdin=b'value("k") == "x"\n\n\n')
    assert assert_one_error_line(bad, 2) == 'error: malformed comparison: value("k") == "x"'
    bad_op = kvraft(eps, "txn", stdin=b'\nfrobnicate k\n\n')
    assert "unknown request: frobnicate k" in assert_one_error_line(bad_op, 2)


@needs_etcdctl
def test_txn_output_is_etcdctls_for_the_same_input(eps: str) -> None:
    outputs = []
    for run in (lambda: kvraft(eps, "txn", stdin=TXN_SUCCESS),
                lambda: etcdctl(eps, "txn", stdin=TXN_SUCCESS),
                lambda: kvraft(eps, "txn", stdin=TXN_FAILURE),
                lambda: etcdctl(eps, "txn", stdin=TXN_FAILURE)):
        kvraft(eps, "put", "clit/k", "v1")   # the same state before each run
        result = run()
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[2] == outputs[3]


# --------------------------------------------------------------------------- lock


@needs_etcdctl
def test_a_kvraft_lock_blocks_etcdctl_lock_until_released(
        eps: str, running: list[Running]) -> None:
    holder = start_kvraft(running, eps, "lock", "cli-lock-a")
    (key,) = holder.wait_lines(1, "kvraft lock prints its key")
    assert re.fullmatch(rb"cli-lock-a/[0-9a-f]+", key), key
    waiter = start_etcdctl(running, eps, "lock", "cli-lock-a", "echo", "etcdctl-got-it")
    time.sleep(BLOCKED_CHECK_S)
    assert waiter.proc.poll() is None and waiter.lines == [], "etcdctl took a held lock"
    assert holder.interrupt() == 0
    assert waiter.wait_lines(1, "etcdctl gets the lock once released") == [b"etcdctl-got-it"]
    assert waiter.proc.wait(WAIT_S) == 0


@needs_etcdctl
def test_an_etcdctl_lock_blocks_kvraft_lock_and_the_command_gets_the_token(
        eps: str, running: list[Running]) -> None:
    holder = start_etcdctl(running, eps, "lock", "cli-lock-b")
    (key,) = holder.wait_lines(1, "etcdctl lock prints its key")
    held_rev = revision_of(eps, key.decode())
    waiter = start_kvraft(running, eps, "lock", "cli-lock-b", "--",
                          "sh", "-c", 'echo "$KVRAFT_LOCK_KEY $KVRAFT_LOCK_REV $ETCD_LOCK_KEY"')
    time.sleep(BLOCKED_CHECK_S)
    assert waiter.proc.poll() is None and waiter.lines == [], "kvraft took a held lock"
    holder.interrupt()
    (line,) = waiter.wait_lines(1, "kvraft runs its command once the lock is free")
    lock_key, token, etcd_key = line.split()
    assert lock_key == etcd_key and lock_key.startswith(b"cli-lock-b/")
    assert int(token) > held_rev           # a later holder has a larger fencing token
    assert waiter.proc.wait(WAIT_S) == 0
    with Client(eps.split(","), timeout=10) as kv:  # released: no key left
        assert kv.range("cli-lock-b/", prefix=True).kvs == ()


def test_lock_exits_with_its_commands_status(eps: str) -> None:
    result = kvraft(eps, "lock", "cli-lock-c", "--", "sh", "-c", "exit 7")
    assert result.returncode == 7
    missing = kvraft(eps, "lock", "cli-lock-c", "--", str(Path("/nonexistent/cmd")))
    assert "cannot run /nonexistent/cmd" in assert_one_error_line(missing, 1)


# --------------------------------------------------------------------------- elect


@needs_etcdctl
def test_kvraft_elect_observes_an_etcdctl_campaign_and_etcdctl_sees_kvrafts(
        eps: str, running: list[Running]) -> None:
    first = start_etcdctl(running, eps, "elect", "cli-elect", "p1")
    leader_key, value = first.wait_lines(2, "etcdctl is elected")
    assert value == b"p1" and leader_key.startswith(b"cli-elect/")
    observer = start_kvraft(running, eps, "elect", "cli-elect")
    assert observer.wait_lines(2, "kvraft observes etcdctl's leader") == [leader_key, b"p1"]
    campaigner = start_kvraft(running, eps, "elect", "cli-elect", "p2")
    time.sleep(BLOCKED_CHECK_S)
    assert campaigner.lines == [], "kvraft was elected while etcdctl led"
    first.interrupt()                             # etcdctl resigns
    ours = campaigner.wait_lines(2, "kvraft is elected")
    assert ours[1] == b"p2" and ours[0] != leader_key and ours[0].startswith(b"cli-elect/")
    assert observer.wait_lines(4, "the observer sees the new leader")[2:] == ours
    theirs = start_etcdctl(running, eps, "elect", "-l", "cli-elect")
    assert theirs.wait_lines(2, "etcdctl observes kvraft's leader") == ours
    assert campaigner.interrupt() == 0            # resigns
    assert observer.interrupt() == 0
    theirs.interrupt()
    with Client(eps.split(","), timeout=10) as kv:
        wait_until(lambda: kv.range("cli-elect/", prefix=True).kvs == (), WAIT_S,
                   "every campaign's key is gone")
