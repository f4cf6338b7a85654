"""The client commands of SPEC §3, run as the real `kvraft` console script against fake
members (real gRPC servers on loopback): output, exit codes, env vars, failover and the
one-line error of every failure."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.cli.helpers import KVRAFT, assert_one_error_line, clean_env, run_kvraft
from tests.client.fake_server import FakeCluster


def eps(cluster: FakeCluster) -> str:
    return ",".join(cluster.endpoints)


def test_put_get_delete(fake_cluster: FakeCluster) -> None:
    e = eps(fake_cluster)
    put = run_kvraft("put", "greeting", "hello world", "--endpoints", e)
    assert (put.returncode, put.stdout) == (0, b"OK\n")
    got = run_kvraft("get", "greeting", "--endpoints", e)
    assert (got.returncode, got.stdout, got.stderr) == (0, b"hello world\n", b"")
    serial = run_kvraft("get", "greeting", "--serializable", "--endpoints", e)
    assert serial.stdout == b"hello world\n"
    deleted = run_kvraft("delete", "greeting", "--endpoints", e)
    assert (deleted.returncode, deleted.stdout) == (0, b"deleted\n")
    again = run_kvraft("delete", "greeting", "--endpoints", e)
    assert (again.returncode, again.stdout) == (0, b"not found\n")
    assert fake_cluster.store == {}


def test_get_of_a_missing_key_prints_on_stderr_and_exits_1(fake_cluster: FakeCluster) -> None:
    result = run_kvraft("get", "nope", "--endpoints", eps(fake_cluster))
    line = assert_one_error_line(result, exit_code=1)
    assert line == "error: key not found: nope"
    assert result.stdout == b""


def test_bytes_that_are_not_utf8_round_trip(fake_cluster: FakeCluster) -> None:
    e = eps(fake_cluster).encode()
    assert run_kvraft(b"put", b"k\xff", b"v\xfe", b"--endpoints", e).returncode == 0
    assert fake_cluster.store == {b"k\xff": b"v\xfe"}
    assert run_kvraft(b"get", b"k\xff", b"--endpoints", e).stdout == b"v\xfe\n"
    scan = run_kvraft(b"scan", b"--endpoints", e)
    assert scan.stdout == b"k\\xff\tv\\xfe\n"


def test_a_value_starting_with_a_dash_after_double_dash(fake_cluster: FakeCluster) -> None:
    result = run_kvraft("put", "--endpoints", eps(fake_cluster), "--", "k", "-5")
    assert result.returncode == 0 and fake_cluster.store == {b"k": b"-5"}


def test_scan_range_prefix_limit_and_escaping(fake_cluster: FakeCluster) -> None:
    fake_cluster.store.update({b"a/1": b"x", b"a/2": b"line\nbreak\ttab", b"b/1": b"y",
                               b"c": b"z"})
    e = eps(fake_cluster)
    everything = run_kvraft("scan", "--endpoints", e)
    assert everything.stdout == b"a/1\tx\na/2\tline\\nbreak\\ttab\nb/1\ty\nc\tz\n"
    ranged = run_kvraft("scan", "a/2", "c", "--endpoints", e)
    assert ranged.stdout == b"a/2\tline\\nbreak\\ttab\nb/1\ty\n"
    from_start = run_kvraft("scan", "b", "--keys-only", "--endpoints", e)
    assert from_start.stdout == b"b/1\nc\n"
    prefix = run_kvraft("scan", "--prefix", "a/", "--keys-only", "--endpoints", e)
    assert prefix.stdout == b"a/1\na/2\n"
    limited = run_kvraft("scan", "--limit", "2", "--keys-only", "--endpoints", e)
    assert (limited.returncode, limited.stdout) == (0, b"a/1\na/2\n")
    assert b"more keys follow" in limited.stderr
    empty = run_kvraft("scan", "x", "--endpoints", e)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, b"", b"")


def test_cas_expected_value_and_expect_absent(fake_cluster: FakeCluster) -> None:
    e = eps(fake_cluster)
    created = run_kvraft("cas", "--expect-absent", "lock", "me", "--endpoints", e)
    assert (created.returncode, created.stdout) == (0, b"OK\n")
    taken = run_kvraft("cas", "--expect-absent", "lock", "you", "--endpoints", e)
    assert assert_one_error_line(taken, 1) == "error: cas failed: the current value is me"
    wrong = run_kvraft("cas", "lock", "you", "x", "--endpoints", e)
    assert assert_one_error_line(wrong, 1) == "error: cas failed: the current value is me"
    swapped = run_kvraft("cas", "lock", "me", "you", "--endpoints", e)
    assert swapped.returncode == 0
    missing = run_kvraft("cas", "other", "a", "b", "--endpoints", e)
    assert assert_one_error_line(missing, 1) == "error: cas failed: the key does not exist"
    assert fake_cluster.store == {b"lock": b"you"}


def test_status_table_asks_every_member(fake_cluster: FakeCluster) -> None:
    fake_cluster.leader_id = 2
    result = run_kvraft("status", "--endpoints", fake_cluster.endpoints[0])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "CLIENT", "PEER", "ROLE", "TERM", "LEADER", "COMMIT",
                                "APPLIED"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [r[3] for r in rows] == ["follower", "leader", "follower"]
    assert all(r[5] == "2" and r[4] == "2" for r in rows)
    assert rows[2][1] == fake_cluster.endpoints[2]
    # Every member was asked for its own status, not only the endpoint given.
    assert all(node.calls["Status"] >= 1 for node in fake_cluster.nodes)


def test_status_marks_an_unreachable_member(fake_cluster: FakeCluster) -> None:
    fake_cluster.node(3).stop()
    result = run_kvraft("status", "--json", "--endpoints", fake_cluster.endpoints[0])
    assert result.returncode == 0, result.stderr
    members = json.loads(result.stdout)
    assert [(m["id"], m["reachable"]) for m in members] == [(1, True), (2, True), (3, False)]
    assert members[0]["role"] == "leader" and members[1]["leader"] == 1


def test_member_commands(fake_cluster: FakeCluster) -> None:
    e = eps(fake_cluster)
    listed = run_kvraft("member", "list", "--json", "--endpoints", e)
    assert [m["id"] for m in json.loads(listed.stdout)] == [1, 2, 3]
    added = run_kvraft("member", "add", "4", "--peer-address", "127.0.0.1:7004",
                       "--client-address", "127.0.0.1:7104", "--learner", "--endpoints", e)
    assert added.returncode == 0, added.stderr
    assert added.stdout.decode().splitlines()[0] == "member 4 added as a learner"
    assert fake_cluster.members[4].learner is True
    promoted = run_kvraft("member", "promote", "4", "--endpoints", e)
    assert promoted.returncode == 0, promoted.stderr
    assert fake_cluster.members[4].learner is False
    again = run_kvraft("member", "promote", "4", "--endpoints", e)
    assert assert_one_error_line(again, 3) == "error: member 4 is already a voter"
    removed = run_kvraft("member", "remove", "4", "--endpoints", e)
    assert removed.returncode == 0 and 4 not in fake_cluster.members
    unknown = run_kvraft("member", "remove", "9", "--endpoints", e)
    line = assert_one_error_line(unknown, 3)
    assert line == "error: failed precondition: member 9 is not in the cluster"
    table = run_kvraft("member", "list", "--endpoints", e).stdout.decode().splitlines()
    assert table[0].split() == ["ID", "PEER", "CLIENT", "LEARNER"] and len(table) == 4


def test_leader_transfer_waits_for_the_new_leader(fake_cluster: FakeCluster) -> None:
    result = run_kvraft("leader", "transfer", "3", "--endpoints", eps(fake_cluster))
    assert (result.returncode, result.stdout) == (0, b"member 3 is the leader\n")
    assert fake_cluster.leader_id == 3


def test_endpoints_from_the_environment(fake_cluster: FakeCluster, dead_endpoint: str) -> None:
    env = {"KVRAFT_ENDPOINTS": eps(fake_cluster)}
    assert run_kvraft("put", "k", "v", env=env).returncode == 0
    assert run_kvraft("get", "k", env=env).stdout == b"v\n"
    # The flag wins over the environment.
    flagged = run_kvraft("get", "k", "--endpoints", dead_endpoint, "--timeout", "0.5", env=env)
    assert "unreachable" in assert_one_error_line(flagged, 3)
    bad = run_kvraft("get", "k", env={"KVRAFT_ENDPOINTS": "nonsense"})
    assert "malformed address 'nonsense'" in assert_one_error_line(bad, 2)
    bad_timeout = run_kvraft("get", "k", env={**env, "KVRAFT_TIMEOUT": "-1"})
    assert "--timeout" in assert_one_error_line(bad_timeout, 2)


def test_failover_past_a_dead_endpoint(fake_cluster: FakeCluster, dead_endpoint: str) -> None:
    e = f"{dead_endpoint},{eps(fake_cluster)}"
    assert run_kvraft("cas", "--expect-absent", "k", "v", "--endpoints", e).returncode == 0
    assert run_kvraft("get", "k", "--endpoints", e).stdout == b"v\n"
    assert fake_cluster.applied_writes == [(1, "CompareAndSwap")]


def test_every_endpoint_unreachable_is_one_line_exit_3(dead_endpoint: str) -> None:
    result = run_kvraft("put", "k", "v", "--endpoints", dead_endpoint, "--timeout", "0.5")
    line = assert_one_error_line(result, 3)
    assert line == f"error: unavailable: {dead_endpoint} is unreachable (connection refused)"
    status = run_kvraft("status", "--endpoints", dead_endpoint, "--timeout", "0.5")
    assert "unavailable" in assert_one_error_line(status, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["put", "", "v"], "error: invalid argument: empty key"),
        (["put", "k" * 4097, "v"], "error: invalid argument: key of 4097 bytes exceeds 4096"),
        (["get", ""], "error: invalid argument: empty key"),
        (["cas", "", "a", "b"], "error: invalid argument: empty key"),
    ],
)
def test_server_rejections_are_one_line_and_change_nothing(
        fake_cluster: FakeCluster, args: list[str], message: str) -> None:
    result = run_kvraft(*args, "--endpoints", eps(fake_cluster))
    assert assert_one_error_line(result, 3) == message
    assert fake_cluster.store == {} and fake_cluster.applied_writes == []


def test_a_write_whose_outcome_is_unknown_exits_4(fake_cluster: FakeCluster) -> None:
    fake_cluster.node(1).mode = "hang"
    result = run_kvraft("put", "k", "v", "--endpoints", eps(fake_cluster), "--timeout", "0.5")
    line = assert_one_error_line(result, 4)
    assert line.startswith("error: deadline exceeded:") and "may or may not" in line
    assert fake_cluster.node(2).calls["Put"] == 0  # never re-sent elsewhere


def test_injected_status_codes_are_named_in_words(fake_cluster: FakeCluster) -> None:
    fake_cluster.node(1).mode = "error:PERMISSION_DENIED"
    result = run_kvraft("get", "k", "--endpoints", eps(fake_cluster))
    assert assert_one_error_line(result, 3) == (
        "error: permission denied: injected permission_denied (fake)")


def test_a_closed_stdout_is_not_a_traceback(fake_cluster: FakeCluster) -> None:
    for i in range(2000):
        fake_cluster.store[f"key{i:05}".encode()] = b"v" * 50
    script = f"{KVRAFT} scan --endpoints {eps(fake_cluster)} | head -n 1"
    result = subprocess.run(["bash", "-c", script], capture_output=True, env=clean_env(),
                            timeout=60, check=False)
    assert result.stdout == b"key00000\t" + b"v" * 50 + b"\n"
    assert result.stderr == b""


@pytest.mark.slow
def test_bench_runs_against_the_cluster_and_prints_json(fake_cluster: FakeCluster) -> None:
    result = run_kvraft("bench", "--clients", "2", "--workers", "1", "--duration", "1",
                        "--keys", "10", "--read-ratio", "0.5", "--json",
                        "--endpoints", eps(fake_cluster), timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ops"] > 0 and report["reads"] > 0 and report["writes"] > 0
    assert report["spec"]["clients"] == 2
    assert len(fake_cluster.store) <= 10


def test_bench_against_an_unreachable_cluster_is_one_line(dead_endpoint: str) -> None:
    result = run_kvraft("bench", "--duration", "1", "--timeout", "0.5",
                        "--endpoints", dead_endpoint)
    assert "unreachable" in assert_one_error_line(result, 3)
    assert result.stdout == b""
