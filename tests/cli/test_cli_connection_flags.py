"""The connection flags before the command (issue 13, kvraft/cli_connection.py):
`kvraft --endpoints H:P get k` as etcdctl takes its global flags. Every client command,
found by walking the click tree, takes each flag in both places with the same effect;
flag by flag the one after the command wins, then the one before, then KVRAFT_<FLAG>,
then the default; the commands that talk to no cluster refuse a flag before them."""
from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import kvraft.cli
from kvraft.cli import EXIT_OUTCOME_UNKNOWN, EXIT_REQUEST_FAILED, cli, main
from kvraft.cli_connection import FLAGS, is_client_command
from tests.cli.helpers import assert_one_error_line, run_kvraft

# The leaf commands that talk to no cluster: they take no connection flag.
OFFLINE = {"serve", "snapshot status", "snapshot restore"}

# A valid command line of each client command, but for the connection flags.
SAMPLE_ARGS: dict[str, list[str]] = {
    "put": ["k", "v"], "get": ["k"], "delete": ["k"], "scan": [], "cas": ["k", "a", "b"],
    "status": [], "member list": [], "member promote": ["2"], "member remove": ["2"],
    "member add": ["4", "--peer-address", "127.0.0.1:9", "--client-address", "127.0.0.1:9"],
    "leader transfer": ["2"], "bench": ["--duration", "0.1"],
    "watch": ["k"], "txn": [], "compact": ["1"], "lease grant": ["10"],
    "lease revoke": ["1"], "lease keep-alive": ["1"], "lease ttl": ["1"], "lease list": [],
    "lock": ["n"], "elect": ["n", "p"],
    "snapshot save": ["snap.db"], "defrag": [], "alarm list": [], "alarm disarm": [],
    "user add": ["u:pw"], "user delete": ["u"], "user list": [], "user get": ["u"],
    "user grant-role": ["u", "r"], "user revoke-role": ["u", "r"],
    "user passwd": ["u", "--new-password", "pw"], "role add": ["r"], "role delete": ["r"],
    "role list": [], "role get": ["r"], "role grant-permission": ["r", "read", "k"],
    "role revoke-permission": ["r", "k"], "auth enable": [], "auth disable": [],
    "auth status": [],
}
# `watch` waits up to a minute for a member whatever --timeout says: no dead endpoint.
WAITS_FOR_A_MEMBER = {"watch"}


def leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, path + " "))
        else:
            found[path] = command
    return found


def client_commands() -> list[str]:
    return sorted(p for p, c in leaf_commands(cli).items() if is_client_command(c))


def run(argv: list[str]) -> tuple[int, str, str]:
    """kvraft.cli.main in-process, with an empty stdin (txn reads it); (exit, out, err)."""
    with CliRunner().isolation(input=b"") as (out, err, _):
        code = main(argv)
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture(autouse=True)
def no_kvraft_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("KVRAFT_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # `snapshot save snap.db` writes nothing elsewhere


@pytest.fixture(scope="module")
def dead() -> Iterator[str]:
    """A loopback address that refuses connections (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_every_leaf_command_is_a_client_command_or_offline() -> None:
    leaves = leaf_commands(cli)
    assert set(leaves) >= OFFLINE
    assert set(client_commands()) == set(leaves) - OFFLINE
    assert set(SAMPLE_ARGS) == set(client_commands()), "give each client command its args"


def _both_placements(path: str, flags: list[str]) -> tuple[tuple[int, str, str], ...]:
    words = path.split()
    before = run([*flags, *words, *SAMPLE_ARGS[path]])
    after = run([*words, *SAMPLE_ARGS[path], *flags])
    return before, after


@pytest.mark.parametrize("path", sorted(SAMPLE_ARGS))
def test_a_tls_file_before_the_command_reaches_it(path: str) -> None:
    """The connection is set up with --cacert given before: the same refusal, naming the
    file, as with --cacert after (not a usage error of the parser)."""
    before, after = _both_placements(path, ["--cacert", "/nonexistent/ca-before.pem"])
    assert before == after
    code, out, err = before
    assert code == 2 and out == ""
    assert "error: --cacert /nonexistent/ca-before.pem: no such file" in err, err


@pytest.mark.parametrize("path", sorted(SAMPLE_ARGS))
def test_a_user_before_the_command_reaches_it(path: str) -> None:
    before, after = _both_placements(path, ["--user", ":secret"])
    assert before == after
    code, _, err = before
    assert code == 2 and err.splitlines()[-1].startswith("error: --user: the user name is empty")


@pytest.mark.slow  # each run waits out its --timeout; the two tests above are the fast proof
@pytest.mark.parametrize("path", sorted(set(SAMPLE_ARGS) - WAITS_FOR_A_MEMBER))
def test_endpoints_before_the_command_reach_it(path: str, dead: str) -> None:
    """Either way round the command tries the member given, and fails to reach it: a
    connection failure naming it, not a usage error. (The lines may differ in how the
    deadline fell on a loaded machine, so they are not compared.)"""
    for code, _, err in _both_placements(path, ["--endpoints", dead, "--timeout", "0.5"]):
        assert code in (EXIT_REQUEST_FAILED, EXIT_OUTCOME_UNKNOWN), err
        assert dead in err.splitlines()[-1] or f"member[{dead}]" in err, err


# --------------------------------------------------------------------------- precedence


class RecordingClient:
    """Stands in for kvraft.client.Client in kvraft.cli: records what `_connect` gives."""

    made: list[dict[str, Any]] = []

    def __init__(self, endpoints: list[str], **kwargs: Any) -> None:
        RecordingClient.made.append({"endpoints": list(endpoints), **kwargs})

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get(self, key: bytes, **kwargs: Any) -> bytes:
        return b"value"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    RecordingClient.made = []
    monkeypatch.setattr(kvraft.cli, "Client", RecordingClient)
    for name in ("env", "before", "after", "partner"):  # PEM-shaped: read, not parsed
        (tmp_path / f"{name}.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    return RecordingClient.made


# A value of each flag at each level, and what the command is then given: the value of
# the highest level present, else the default.
LEVEL_VALUES: dict[str, dict[str, str]] = {
    "--endpoints": {lvl: f"127.0.0.1:{1000 + i}" for i, lvl in enumerate(("env", "before",
                                                                          "after"))},
    "--timeout": {"env": "1.5", "before": "2.5", "after": "3.5"},
    "--user": {lvl: f"{lvl}:pw" for lvl in ("env", "before", "after")},
    **{f: {lvl: f"{lvl}.pem" for lvl in ("env", "before", "after")}
       for f in ("--cacert", "--cert", "--key")},
}
DEFAULTS = {"--endpoints": ["127.0.0.1:2379"], "--timeout": 5.0, "--user": None,
            "--cacert": None, "--cert": None, "--key": None}


def _given(flag: str, made: dict[str, Any]) -> Any:
    if flag == "--endpoints":
        return made["endpoints"]
    if flag == "--timeout":
        return made["timeout"]
    if flag == "--user":
        return f"{made['user']}:{made['password']}" if made["user"] else None
    return made.get(flag[2:])


LEVEL_SETS = [set(c) for n in range(4) for c in itertools.combinations(
    ("env", "before", "after"), n)]


@pytest.mark.parametrize("levels", LEVEL_SETS, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("flag", [f.flag for f in FLAGS])
def test_after_beats_before_beats_the_environment_beats_the_default(
        flag: str, levels: set[str], recorded: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    values = LEVEL_VALUES[flag]
    env_name = f"KVRAFT_{flag[2:].upper()}"
    if "env" in levels:
        monkeypatch.setenv(env_name, values["env"])
    partner = {"--cert": "KVRAFT_KEY", "--key": "KVRAFT_CERT"}.get(flag)
    if partner and levels:  # a client certificate and its key go together
        monkeypatch.setenv(partner, "partner.pem")
    before = [flag, values["before"]] if "before" in levels else []
    after = [flag, values["after"]] if "after" in levels else []
    code, out, err = run([*before, "get", "k", *after])
    assert (code, out, err) == (0, "value\n", "")
    top = next((lvl for lvl in ("after", "before", "env") if lvl in levels), None)
    expected: Any = DEFAULTS[flag] if top is None else values[top]
    if flag == "--endpoints" and top is not None:
        expected = [expected]
    if flag == "--timeout" and top is not None:
        expected = float(expected)
    assert _given(flag, recorded[-1]) == expected


def test_each_flag_is_resolved_on_its_own(recorded: list[dict[str, Any]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before and after mix flag by flag; an empty variable is unset; a malformed one
    does not matter when a flag before the command gives the value."""
    monkeypatch.setenv("KVRAFT_ENDPOINTS", "nonsense")
    monkeypatch.setenv("KVRAFT_TIMEOUT", "-1")
    monkeypatch.setenv("KVRAFT_USER", "")
    code, _, err = run(["--endpoints", "127.0.0.1:7", "--timeout", "2", "--cacert", "before.pem",
                        "get", "k", "--cert", "after.pem", "--key", "partner.pem"])
    assert (code, err) == (0, "")
    made = recorded[-1]
    assert made["endpoints"] == ["127.0.0.1:7"] and made["timeout"] == 2.0
    assert (made["user"], made["password"]) == (None, None)
    assert (made["cacert"], made["cert"], made["key"]) == ("before.pem", "after.pem",
                                                         "partner.pem")


def test_a_malformed_flag_before_the_command_is_a_usage_error() -> None:
    code, out, err = run(["--endpoints", "nohostport", "get", "k"])
    assert (code, out) == (2, "")
    assert err == ("error: Invalid value for '--endpoints': malformed address 'nohostport': "
                   "expected HOST:PORT (see 'kvraft --help')\n")
    code, _, err = run(["--timeout", "0", "get", "k"])
    assert code == 2 and "'--timeout'" in err


# --------------------------------------------------------------------------- refused, help


SERVE_REFUSALS = {
    "--endpoints": "serve takes --listen", "--cacert": "serve takes --trusted-ca-file",
    "--cert": "serve takes --cert-file", "--key": "serve takes --key-file",
    "--user": "serve does not take it", "--timeout": "serve does not take it",
}


@pytest.mark.parametrize("flag", sorted(SERVE_REFUSALS))
def test_a_client_flag_before_serve_is_one_usage_line(flag: str, tmp_path: Path) -> None:
    value = next(iter(LEVEL_VALUES[flag].values()))
    code, out, err = run([flag, value, "serve", "--data-dir", str(tmp_path / "never")])
    assert (code, out) == (2, "")
    assert err == (f"error: {flag} is a client flag; {SERVE_REFUSALS[flag]} "
                   "(see 'kvraft serve --help')\n")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("command", [["snapshot", "status", "f.db"],
                                     ["snapshot", "restore", "f.db", "--data-dir", "d",
                                      "--id", "1", "--initial-cluster", "1=127.0.0.1:9"]])
def test_a_client_flag_before_a_file_command_is_one_usage_line(command: list[str]) -> None:
    code, _, err = run(["--timeout", "3", "--endpoints", "127.0.0.1:9", *command])
    name = " ".join(command[:2])
    assert (code, err) == (2, f"error: --timeout is a client flag; {name} works on files "
                              f"only (see 'kvraft {name} --help')\n")


def test_the_root_help_shows_the_connection_flags() -> None:
    code, out, _ = run(["--help"])
    assert code == 0
    for flag in FLAGS:
        assert f"  {flag.flag} {flag.metavar}" in out, flag.flag
        assert flag.envvar in out


# --------------------------------------------------------------------------- a real node


@pytest.mark.cluster
def test_flags_before_the_command_against_a_real_node(dead: str) -> None:
    from tests.cluster.harness import LocalCluster

    with LocalCluster.start(1) as cluster:
        cluster.wait_leader()
        node = cluster.nodes[1].client_address
        put = run_kvraft("--endpoints", node, "put", "k", "v")
        assert (put.returncode, put.stdout) == (0, b"OK\n"), put.stderr
        got = run_kvraft("--endpoints", node, "get", "k")
        assert (got.returncode, got.stdout) == (0, b"v\n"), got.stderr
        # The flag after the command wins over the one before, either way round.
        rescued = run_kvraft("--endpoints", dead, "get", "k", "--endpoints", node)
        assert (rescued.returncode, rescued.stdout) == (0, b"v\n"), rescued.stderr
        lost = run_kvraft("--endpoints", node, "get", "k", "--endpoints", dead,
                          "--timeout", "1")
        assert assert_one_error_line(lost, 3) == (f"error: unavailable: {dead} is "
                                                   "unreachable (connection refused)")
