"""The `kvraft` command line and kvraft.client against real `kvraft serve` processes on
loopback (tests/cluster/harness.py): SPEC §3's commands end to end, SPEC §2's bad inputs
with their status codes and no data change, failover, and `serve`'s own failures."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.client import Client, DeadlineExceeded, FailedPrecondition, InvalidArgument, Put
from tests.cli.helpers import (
    GENEROUS_TIMEOUT_S,
    KVRAFT,
    assert_one_error_line,
    clean_env,
    run_kvraft,
)
from tests.client.conftest import refused_endpoint
from tests.cluster.harness import LocalCluster, free_port, wait_until

pytestmark = pytest.mark.cluster

SERVE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


def endpoints(cluster: LocalCluster, ids: list[int] | None = None) -> str:
    chosen = ids if ids is not None else sorted(cluster.nodes)
    return ",".join(cluster.nodes[i].client_address for i in chosen)


def everything(cluster: LocalCluster) -> list[tuple[bytes, bytes]]:
    with Client(endpoints(cluster), timeout=GENEROUS_TIMEOUT_S) as kv:
        return kv.scan()


def test_kv_commands_end_to_end(cluster: LocalCluster) -> None:
    e = endpoints(cluster)
    assert run_kvraft("put", "e2e/a", "1", "--endpoints", e).stdout == b"OK\n"
    assert run_kvraft("put", "e2e/b", "2", "--endpoints", e).returncode == 0
    # A linearizable get through each member sees the acknowledged write.
    for node_id in sorted(cluster.nodes):
        got = run_kvraft("get", "e2e/a", "--endpoints", endpoints(cluster, [node_id]))
        assert (got.returncode, got.stdout) == (0, b"1\n"), got.stderr
    scan = run_kvraft("scan", "--prefix", "e2e/", "--endpoints", e)
    assert scan.stdout == b"e2e/a\t1\ne2e/b\t2\n"
    assert run_kvraft("cas", "e2e/a", "1", "one", "--endpoints", e).returncode == 0
    lost = run_kvraft("cas", "e2e/a", "1", "uno", "--endpoints", e)
    assert assert_one_error_line(lost, 1) == "error: cas failed: the current value is one"
    # Acknowledged by the member that answered, after applying it there: a serializable
    # read of that member sees it.
    one = endpoints(cluster, [cluster.wait_leader()])
    assert run_kvraft("cas", "--expect-absent", "e2e/c", "3", "--endpoints", one).returncode == 0
    assert run_kvraft("get", "e2e/c", "--serializable", "--endpoints", one).stdout == b"3\n"
    assert run_kvraft("delete", "e2e/b", "--endpoints", e).stdout == b"deleted\n"
    missing = run_kvraft("get", "e2e/b", "--endpoints", e)
    assert assert_one_error_line(missing, 1) == "error: key not found: e2e/b"
    final = run_kvraft("scan", "e2e/", "e2e0", "--endpoints", e)
    assert final.stdout == b"e2e/a\tone\ne2e/c\t3\n"


def test_status_table_of_every_member(cluster: LocalCluster) -> None:
    def settled() -> list[dict] | None:
        # A loaded machine may see an election in between: poll for an agreed view.
        result = run_kvraft("status", "--json", "--endpoints", endpoints(cluster, [1]))
        assert result.returncode == 0, result.stderr
        members = json.loads(result.stdout)
        leaders = {m.get("leader") for m in members}
        return members if len(leaders) == 1 and all(m["reachable"] for m in members) else None

    members = wait_until(settled, 30, "every member to agree on a leader")
    assert [m["id"] for m in members] == [1, 2, 3]
    leader = members[0]["leader"]
    assert [m["role"] == "leader" for m in members] == [i == leader for i in (1, 2, 3)]
    assert all(m["term"] > 0 and m["applied"] > 0 and m["commit"] > 0 for m in members)
    assert {m["client_address"] for m in members} == {
        n.client_address for n in cluster.nodes.values()}
    table = run_kvraft("status", "--endpoints", endpoints(cluster)).stdout.decode().splitlines()
    assert table[0].split()[:4] == ["ID", "CLIENT", "PEER", "ROLE"] and len(table) == 4


def test_client_api_batch_and_pages(cluster: LocalCluster) -> None:
    with Client(endpoints(cluster), timeout=GENEROUS_TIMEOUT_S) as kv:
        kv.put("api/gone", "x")
        assert kv.batch([Put("api/1", "a"), Put("api/2", "b"), ("delete", "api/gone"),
                         ("delete", "api/never")]) == [True, False]
        assert kv.scan("api/", "api0") == [(b"api/1", b"a"), (b"api/2", b"b")]
        assert kv.scan("api/", "api0", limit=1) == [(b"api/1", b"a")]
        assert kv.cas("api/1", "a", "c") is True and kv.get("api/1") == b"c"


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("empty key", lambda kv: kv.put(b"", b"v")),
        ("4 KiB + 1 key", lambda kv: kv.put(b"k" * 4097, b"v")),
        ("1 MiB + 1 value", lambda kv: kv.put(b"k", b"v" * ((1 << 20) + 1))),
        ("empty key cas", lambda kv: kv.cas(b"", None, b"v")),
        ("empty key delete", lambda kv: kv.delete(b"")),
        ("empty key get", lambda kv: kv.get(b"")),
        ("batch over 4 MiB", lambda kv: kv.batch(
            [Put(f"b{i}", b"v" * (1 << 20)) for i in range(5)])),
        ("batch with an empty key", lambda kv: kv.batch([Put("ok", "v"), Put("", "v")])),
        ("member with a malformed address", lambda kv: kv.member_add(9, "nohostport")),
    ],
)
def test_bad_input_is_invalid_argument_and_changes_nothing(cluster: LocalCluster, what: str,
                                                           call) -> None:
    before = everything(cluster)
    with Client(endpoints(cluster), timeout=GENEROUS_TIMEOUT_S) as kv, \
            pytest.raises(InvalidArgument):
        call(kv)
    assert everything(cluster) == before, what


def test_member_change_that_cannot_apply_is_failed_precondition(cluster: LocalCluster) -> None:
    e = endpoints(cluster)
    members_before = run_kvraft("member", "list", "--json", "--endpoints", e).stdout
    unknown = run_kvraft("member", "remove", "77", "--endpoints", e)
    assert assert_one_error_line(unknown, 3).startswith("error: failed precondition: ")
    transfer = run_kvraft("leader", "transfer", "77", "--endpoints", e)
    assert assert_one_error_line(transfer, 3).startswith("error: failed precondition: ")
    with Client(e, timeout=GENEROUS_TIMEOUT_S) as kv, pytest.raises(FailedPrecondition):
        kv.member_add(1, cluster.nodes[1].peer_address, cluster.nodes[1].client_address)
    assert run_kvraft("member", "list", "--json", "--endpoints", e).stdout == members_before


def test_cli_errors_against_the_real_server_are_one_line(cluster: LocalCluster) -> None:
    e = endpoints(cluster)
    before = everything(cluster)
    empty = run_kvraft("put", "", "v", "--endpoints", e)
    assert assert_one_error_line(empty, 3).startswith("error: invalid argument: ")
    long_key = run_kvraft("put", "k" * 4097, "v", "--endpoints", e)
    assert assert_one_error_line(long_key, 3).startswith("error: invalid argument: ")
    assert everything(cluster) == before


def test_leader_transfer_through_the_cli(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    target = next(i for i in sorted(cluster.nodes) if i != leader)
    result = run_kvraft("leader", "transfer", str(target), "--timeout", "10",
                        "--endpoints", endpoints(cluster))
    assert (result.returncode, result.stdout) == (0, f"member {target} is the leader\n".encode())
    cluster.wait_leader()


def test_failover_past_a_dead_endpoint_and_a_killed_follower(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(i for i in sorted(cluster.nodes) if i != leader)
    with refused_endpoint() as dead:
        with_dead = f"{dead},{endpoints(cluster)}"
        assert run_kvraft("put", "fo/1", "v", "--endpoints", with_dead).returncode == 0
    cluster.kill9(follower)
    # Hold the dead member's client port (bound, not listening) so that no other
    # process can take it while our requests are aimed at it.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host, _, port = cluster.nodes[follower].client_address.rpartition(":")
    try:
        holder.bind((host, int(port)))
        # The killed follower listed first: refused, so even the write moves on.
        first = f"{endpoints(cluster, [follower])},{endpoints(cluster, [leader])}"
        assert run_kvraft("cas", "--expect-absent", "fo/2", "v", "--endpoints",
                          first).returncode == 0
        assert run_kvraft("get", "fo/2", "--endpoints", first).stdout == b"v\n"
    finally:
        holder.close()
        cluster.restart(follower)
    cluster.wait_leader()


# ------------------------------------------------------------------ serve itself


def _serve_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {"KVRAFT_LISTEN": f"127.0.0.1:{free_port()}",
           "KVRAFT_PEER_LISTEN": f"127.0.0.1:{free_port()}", "KVRAFT_TICK_INTERVAL": "0.05"}
    env.update(extra)
    return env


def _start_serve(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(KVRAFT), "serve", *args], cwd=cwd, env=clean_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=SERVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=SERVE_TIMEOUT_S)
        raise


def _wait_leader_at(endpoint: str, proc: subprocess.Popen[bytes]) -> None:
    def leads() -> bool:
        assert proc.poll() is None, proc.communicate(timeout=5)
        with Client(endpoint, timeout=1.0) as kv:
            try:
                return kv.status().leader_id > 0
            except Exception:
                return False

    wait_until(leads, SERVE_TIMEOUT_S, f"a leader at {endpoint}")


def test_serve_without_options_runs_a_single_node_in_the_current_folder(tmp_path: Path) -> None:
    """Only the ports come from the environment (other engineers' clusters may hold
    2379/2380); id, data dir and initial cluster are the defaults."""
    env = _serve_env(tmp_path)
    proc = _start_serve([], env, tmp_path)
    try:
        _wait_leader_at(env["KVRAFT_LISTEN"], proc)
        assert (tmp_path / "kvraft-data").is_dir()
        status = run_kvraft("status", "--json", "--endpoints", env["KVRAFT_LISTEN"])
        members = json.loads(status.stdout)
        assert [(m["id"], m["role"], m["peer_address"]) for m in members] == [
            (1, "leader", env["KVRAFT_PEER_LISTEN"])]
        assert run_kvraft("put", "k", "v", "--endpoints", env["KVRAFT_LISTEN"]).returncode == 0
    finally:
        code = _stop(proc, signal.SIGINT)
    assert code == 0
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    # A restart with the same folder recovers the acknowledged write.
    proc = _start_serve([], env, tmp_path)
    try:
        _wait_leader_at(env["KVRAFT_LISTEN"], proc)
        got = run_kvraft("get", "k", "--endpoints", env["KVRAFT_LISTEN"])
        assert got.stdout == b"v\n"
    finally:
        assert _stop(proc) == 0


def test_serve_reads_every_option_from_the_environment(tmp_path: Path) -> None:
    peer = f"127.0.0.1:{free_port()}"
    env = _serve_env(tmp_path, KVRAFT_ID="7", KVRAFT_DATA_DIR=str(tmp_path / "d7"),
                     KVRAFT_PEER_LISTEN=peer, KVRAFT_INITIAL_CLUSTER=f"7={peer}",
                     KVRAFT_LOG_LEVEL="DEBUG",
                     KVRAFT_METRICS_LISTEN=f"127.0.0.1:{free_port()}")
    proc = _start_serve([], env, tmp_path)
    try:
        _wait_leader_at(env["KVRAFT_LISTEN"], proc)
        with Client(env["KVRAFT_LISTEN"], timeout=GENEROUS_TIMEOUT_S) as kv:
            assert kv.status().member_id == 7
        assert (tmp_path / "d7").is_dir()
    finally:
        assert _stop(proc) == 0


def test_serve_refuses_a_data_dir_of_another_node_and_a_busy_port(tmp_path: Path) -> None:
    env = _serve_env(tmp_path, KVRAFT_DATA_DIR=str(tmp_path / "node1"))
    proc = _start_serve([], env, tmp_path)
    try:
        _wait_leader_at(env["KVRAFT_LISTEN"], proc)
        # Same ports while node 1 holds them: one line, exit 1.
        busy = run_kvraft("serve", "--data-dir", str(tmp_path / "other"), env=env,
                          cwd=tmp_path, timeout_s=SERVE_TIMEOUT_S)
        assert assert_one_error_line(busy, 1) == (
            f"error: cannot listen on --listen {env['KVRAFT_LISTEN']}: address already in use")
        assert not (tmp_path / "other").exists()  # refused before touching a data dir
        # The data dir while node 1 holds its lock.
        locked = run_kvraft("serve", env=_serve_env(tmp_path, KVRAFT_DATA_DIR=str(
            tmp_path / "node1")), cwd=tmp_path, timeout_s=SERVE_TIMEOUT_S)
        assert str(tmp_path / "node1") in assert_one_error_line(locked, 1)
    finally:
        assert _stop(proc) == 0
    # Node 1's data dir given to node 2.
    other = run_kvraft("serve", "--id", "2", env=_serve_env(
        tmp_path, KVRAFT_DATA_DIR=str(tmp_path / "node1")), cwd=tmp_path,
        timeout_s=SERVE_TIMEOUT_S)
    assert str(tmp_path / "node1") in assert_one_error_line(other, 1)


def _members(e: str) -> dict[int, bool]:
    """Member id -> learner, as `kvraft member list --json` reports (empty on failure)."""
    listed = run_kvraft("member", "list", "--json", "--endpoints", e)
    return {m["id"]: m["learner"] for m in json.loads(listed.stdout or b"[]")}


def _converge(e: str, argv: list[str], done, what: str, attempts: list) -> None:
    """Run a member command until `done(members)` holds: a loaded machine can time out
    or refuse a change while an earlier one is still pending (the leader then has a
    conf change in flight). Every attempt's result is kept for the failure message."""
    def step() -> bool:
        if done(_members(e)):
            return True
        attempts.append(run_kvraft(*argv, "--timeout", "10", "--endpoints", e))
        return done(_members(e))

    wait_until(step, 90, what, lambda: "\n".join(
        f"rc={a.returncode} {a.stderr!r}" for a in attempts))


def test_member_add_learner_promote_remove_through_the_cli() -> None:
    """A node started with --join is added as a learner, catches up, is promoted to a
    voter and removed again, all with `kvraft member ...`."""
    with LocalCluster.start(3) as c:
        c.wait_leader()
        e = endpoints(c)
        assert run_kvraft("put", "before-join", "x", "--endpoints", e).returncode == 0
        new = c.define(4)
        c.launch(4, join=True)
        adds: list = []
        _converge(e, ["member", "add", "4", "--peer-address", new.peer_address,
                      "--client-address", new.client_address, "--learner"],
                  lambda m: m.get(4) is True, "member 4 added as a learner", adds)
        ok = [a for a in adds if a.returncode == 0]
        assert ok and ok[0].stdout.decode().splitlines()[0] == "member 4 added as a learner"

        def caught_up() -> bool:
            got = run_kvraft("get", "before-join", "--serializable", "--timeout", "1",
                             "--endpoints", new.client_address)
            return got.stdout == b"x\n"

        wait_until(caught_up, 60, "node 4 to catch up", lambda: c.log_tail(4))
        promotes: list = []
        _converge(e, ["member", "promote", "4"], lambda m: m.get(4) is False,
                  "member 4 promoted", promotes)
        assert _members(e) == {1: False, 2: False, 3: False, 4: False}
        status = json.loads(run_kvraft("status", "--json", "--endpoints", e).stdout)
        assert [m["id"] for m in status] == [1, 2, 3, 4]
        removes: list = []
        _converge(e, ["member", "remove", "4"], lambda m: m and 4 not in m,
                  "member 4 removed", removes)
        assert _members(e) == {1: False, 2: False, 3: False}


def test_reads_fail_over_from_a_frozen_member_and_writes_to_it_are_unknown(
        cluster: LocalCluster) -> None:
    """A SIGSTOPped member never answers. A new connection to it never completes (the
    request is not sent: a definite failure, and a read or write moves on); a write sent
    on a connection made before it froze has an unknown outcome and is not re-sent."""
    leader = cluster.wait_leader()
    frozen = next(i for i in sorted(cluster.nodes) if i != leader)
    assert run_kvraft("put", "frozen/k", "v", "--endpoints", endpoints(cluster)).returncode == 0
    with Client(endpoints(cluster, [frozen]), timeout=GENEROUS_TIMEOUT_S) as warm:
        assert warm.get("frozen/k") == b"v"  # connected before the member freezes
        cluster.pause(frozen)
        try:
            order = f"{endpoints(cluster, [frozen])},{endpoints(cluster, [leader])}"
            got = run_kvraft("get", "frozen/k", "--timeout", "4", "--endpoints", order)
            assert (got.returncode, got.stdout) == (0, b"v\n"), got.stderr
            put = run_kvraft("put", "frozen/w", "v", "--timeout", "4", "--endpoints", order)
            assert put.returncode == 0, put.stderr
            alone = run_kvraft("put", "frozen/x", "v", "--timeout", "1",
                               "--endpoints", endpoints(cluster, [frozen]))
            assert "is unreachable" in assert_one_error_line(alone, 3)
            with pytest.raises(DeadlineExceeded) as unknown:
                warm.put("frozen/y", "v", timeout=1)
            assert unknown.value.outcome_unknown is True
        finally:
            cluster.resume(frozen)
    cluster.wait_leader()


def test_a_cut_off_member_refuses_writes_definitely(cluster: LocalCluster) -> None:
    """With the others frozen, a member soon knows no leader: it rejects a write before
    proposing it, marks the answer retry-safe, and the CLI reports a definite UNAVAILABLE
    (exit 3, not 'outcome unknown') within the deadline; nothing is written."""
    leader = cluster.wait_leader()
    alone = next(i for i in sorted(cluster.nodes) if i != leader)
    others = [i for i in sorted(cluster.nodes) if i != alone]
    for i in others:
        cluster.pause(i)
    try:
        wait_until(lambda: cluster.status(alone, timeout_s=1.0).header.leader_id == 0, 30,
                   f"member {alone} to lose its leader")
        result = run_kvraft("put", "cut-off", "v", "--timeout", "2",
                            "--endpoints", endpoints(cluster, [alone]))
        line = assert_one_error_line(result, 3)
        assert line.startswith("error: unavailable: ") and "may or may not" not in line
    finally:
        for i in others:
            cluster.resume(i)
    cluster.wait_leader()
    got = run_kvraft("get", "cut-off", "--endpoints", endpoints(cluster))
    assert assert_one_error_line(got, 1) == "error: key not found: cut-off"
