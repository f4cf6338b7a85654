"""Bad usage of `kvraft` (SPEC §3): each missing, malformed or conflicting flag or
argument is ONE `error:` line on stderr with exit 2 — checked through the real console
script — and the pure helpers behind the parsing and the output."""
from __future__ import annotations

import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft.cli import main
from kvraft.cli_format import escape_bytes, format_table
from kvraft.server.config import NodeConfig, ServeError, parse_initial_cluster
from tests.cli.helpers import assert_one_error_line, run_kvraft

BAD_USAGE = [
    # (argv, a phrase the error line must contain)
    (["put"], "Missing argument 'KEY'"),
    (["put", "k"], "Missing argument 'VALUE'"),
    (["put", "k", "v", "extra"], "unexpected extra argument"),
    (["get", "k", "--bogus"], "No such option"),
    (["frobnicate"], "No such command"),
    (["get", "k", "--endpoints", "nohostport"], "malformed address 'nohostport'"),
    (["get", "k", "--endpoints", "h:0"], "port must be 1-65535"),
    (["get", "k", "--endpoints", "h:99999"], "port must be 1-65535"),
    (["get", "k", "--endpoints", "a:1,,b:2"], "empty endpoint"),
    (["get", "k", "--timeout", "0"], "--timeout"),
    (["get", "k", "--timeout", "soon"], "--timeout"),
    (["scan", "a", "--prefix", "p"], "--prefix cannot be combined with START or END"),
    (["scan", "--limit", "-1"], "--limit"),
    (["scan", "a", "b", "c"], "unexpected extra argument"),
    (["cas", "k", "v"], "cas takes KEY EXPECTED NEW"),
    (["cas", "k", "a", "b", "c"], "cas takes KEY EXPECTED NEW"),
    (["cas", "--expect-absent", "k", "old", "new"], "--expect-absent cannot be combined"),
    (["cas", "--expect-absent", "k"], "cas --expect-absent takes KEY NEW"),
    (["member", "remove", "0"], "invalid member id '0'"),
    (["member", "remove", "-3"], "No such option"),
    (["member", "remove", "abc"], "invalid member id 'abc'"),
    (["member", "remove", str(1 << 64)], "invalid member id"),
    (["member", "add", "4", "--client-address", "h:1"], "Missing option '--peer-address'"),
    (["member", "add", "4", "--peer-address", "h", "--client-address", "h:1"],
     "malformed address 'h'"),
    (["member", "frob"], "No such command"),
    (["leader", "transfer"], "Missing argument 'ID'"),
    (["leader", "transfer", "x"], "invalid member id 'x'"),
    (["serve", "--id", "0"], "invalid member id '0'"),
    (["serve", "--id", "two"], "invalid member id 'two'"),
    (["serve", "--listen", "localhost"], "malformed address 'localhost'"),
    (["serve", "--peer-listen", "[::1:2380"], "malformed address"),
    (["serve", "--listen", "127.0.0.1:5000", "--peer-listen", "127.0.0.1:5000"],
     "--listen and --peer-listen must differ"),
    (["serve", "--metrics-listen", "127.0.0.1:2379"], "--metrics-listen 127.0.0.1:2379 is"),
    (["serve", "--initial-cluster", "1=h:1,1=h:2"], "member id 1 is listed twice"),
    (["serve", "--initial-cluster", "1=h:1,2=h:1"], "address h:1 is listed twice"),
    (["serve", "--initial-cluster", "1:h:1"], "expected ID=HOST:PORT"),
    (["serve", "--initial-cluster", "x=h:1"], "invalid member id 'x'"),
    (["serve", "--initial-cluster", "0=h:1"], "invalid member id '0'"),
    (["serve", "--initial-cluster", "1=h:1,"], "expected ID=HOST:PORT"),
    (["serve", "--id", "3", "--initial-cluster", "1=h:1,2=h:2"],
     "does not list this node's id 3"),
    (["serve", "--tick-interval", "0"], "--tick-interval"),
    (["serve", "--snapshot-entries", "0"], "--snapshot-entries"),
    (["serve", "--log-level", "loud"], "--log-level"),
    (["serve", "--read-mode", "fast"], "--read-mode"),
    (["serve", "--max-request-bytes", "0"], "--max-request-bytes"),
    (["serve", "--max-request-bytes", str(64 << 20)], "--max-request-bytes"),
    (["serve", "--max-txn-ops", "0"], "--max-txn-ops"),
    (["serve", "--data-dir", ""], "--data-dir must not be empty"),
    (["serve", "--data-dir", "  "], "--data-dir must not be empty"),
    (["bench", "--clients", "0"], "--clients"),
    (["bench", "--read-ratio", "1.5"], "--read-ratio"),
    (["bench", "--duration", "0"], "--duration"),
]


@pytest.mark.parametrize(("argv", "phrase"), BAD_USAGE, ids=[" ".join(a) for a, _ in BAD_USAGE])
def test_bad_usage_is_one_line_exit_2_in_process(argv: list[str], phrase: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and phrase in err, err
    assert "--help" in err  # points at the command's help


@pytest.mark.parametrize(
    ("argv", "env", "phrase"),
    [
        (["put", "k"], {}, "Missing argument 'VALUE'"),
        (["scan", "a", "--prefix", "p"], {}, "--prefix cannot be combined"),
        (["serve"], {"KVRAFT_ID": "x"}, "invalid member id 'x'"),
        (["serve"], {"KVRAFT_LISTEN": "nope"}, "malformed address 'nope'"),
        (["serve"], {"KVRAFT_JOIN": "maybe"}, "--join"),
        (["serve"], {"KVRAFT_TICK_INTERVAL": "fast"}, "--tick-interval"),
        (["serve"], {"KVRAFT_INITIAL_CLUSTER": "2=h:1"}, "does not list this node's id 1"),
        (["serve"], {"KVRAFT_LOG_LEVEL": "chatty"}, "--log-level"),
        (["get", "k"], {"KVRAFT_ENDPOINTS": "a:1,b"}, "malformed address 'b'"),
    ],
)
def test_bad_usage_through_the_console_script(argv: list[str], env: dict[str, str],
                                              phrase: str) -> None:
    """The installed script, flags and KVRAFT_* variables alike: one line, exit 2."""
    line = assert_one_error_line(run_kvraft(*argv, env=env), exit_code=2)
    assert phrase in line


def test_help_and_version_succeed() -> None:
    helped = run_kvraft("--help")
    assert helped.returncode == 0 and b"serve" in helped.stdout and b"Exit codes" in helped.stdout
    bare = run_kvraft()
    assert bare.returncode == 0 and b"Commands:" in bare.stdout
    version = run_kvraft("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"kvraft, version ")
    serve_help = run_kvraft("serve", "--help")
    for flag in (b"--id", b"--data-dir", b"--listen", b"--peer-listen", b"--initial-cluster",
                 b"--join", b"--metrics-listen", b"--log-level"):
        assert flag in serve_help.stdout


# ------------------------------------------------------------------ pure helpers


def test_parse_initial_cluster() -> None:
    """The one parser of --initial-cluster (kvraft.server.config), used by `serve`."""
    assert parse_initial_cluster("1=127.0.0.1:2380, 2=node-2:2380,3=[::1]:2380") == {
        1: "127.0.0.1:2380", 2: "node-2:2380", 3: "[::1]:2380"}
    for bad in ("", "1=", "=h:1", "1=h", "1=h:1;2=h:2", "1=h:1,1=h:2", "1=h:1,2=h:1",
                "\u00b2=h:1", "1=h:\u00b2", f"{1 << 64}=h:1", "1=a:b:1", "1=u@h:1"):
        with pytest.raises(ServeError) as info:
            parse_initial_cluster(bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain", "plain"),
        ("grüße".encode(), "grüße"),
        (b"a\tb\nc\rd", "a\\tb\\nc\\rd"),
        (b"back\\slash", "back\\\\slash"),
        (b"\x00\x1b\x7f", "\\x00\\x1b\\x7f"),
        (b"\xff\xfe", "\\xff\\xfe"),
        ("a\u2028b\x85c\u00a0".encode(), "a\\u2028b\\u0085c\\u00a0"),
    ],
)
def test_escape_bytes(raw: bytes, shown: str) -> None:
    assert escape_bytes(raw) == shown


def test_format_table_aligns_columns() -> None:
    assert format_table(["ID", "ROLE"], [[1, "leader"], [10, "follower"]]).splitlines() == [
        "ID  ROLE", "1   leader", "10  follower"]


def test_serve_on_a_taken_port_is_one_line_before_any_data_dir(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = run_kvraft("serve", "--listen", taken, cwd=tmp_path)
    line = assert_one_error_line(result, exit_code=1)
    assert line == f"error: cannot listen on --listen {taken}: address already in use"
    assert not (tmp_path / "kvraft-data").exists()


@given(st.binary(max_size=64))
def test_escaped_bytes_are_one_printable_line(raw: bytes) -> None:
    shown = escape_bytes(raw)
    assert shown.isprintable() and len(shown.splitlines()) <= 1


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def captured_config(monkeypatch: pytest.MonkeyPatch) -> list:
    """`kvraft serve` in-process with run_node replaced by a recorder of its NodeConfig."""
    import kvraft.server

    configs: list = []
    monkeypatch.setattr(kvraft.server, "run_node", lambda config: configs.append(config) or 0)
    for name in list(os.environ):
        if name.startswith("KVRAFT_"):
            monkeypatch.delenv(name)
    return configs


def test_serve_defaults_make_a_single_node_cluster(captured_config: list) -> None:
    listen, peer = _free_address(), _free_address()
    assert main(["serve", "--listen", listen, "--peer-listen", peer]) == 0
    (config,) = captured_config
    assert (config.node_id, config.data_dir, config.join) == (1, "./kvraft-data", False)
    assert config.initial_cluster == {1: peer} and config.advertise_peer == peer
    assert (config.metrics_listen, config.log_level, config.tick_interval_s) == (None, "INFO",
                                                                                 0.1)


def test_serve_reads_every_option_from_kvraft_env_vars(captured_config: list,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    listen, peer, metrics = _free_address(), _free_address(), _free_address()
    env = {
        "KVRAFT_ID": "3", "KVRAFT_DATA_DIR": "/tmp/somewhere", "KVRAFT_LISTEN": listen,
        "KVRAFT_PEER_LISTEN": peer, "KVRAFT_INITIAL_CLUSTER": "1=a:1,2=b:2,3=node-3:2380",
        "KVRAFT_JOIN": "true", "KVRAFT_METRICS_LISTEN": metrics, "KVRAFT_LOG_LEVEL": "Debug",
        "KVRAFT_ADVERTISE_CLIENT": "node-3:2379", "KVRAFT_ADVERTISE_PEER": "node-3:2390",
        "KVRAFT_TICK_INTERVAL": "0.02", "KVRAFT_SNAPSHOT_ENTRIES": "50",
        "KVRAFT_SNAPSHOT_KEEP_ENTRIES": "5", "KVRAFT_READ_MODE": "lease",
        "KVRAFT_MAX_REQUEST_BYTES": "65536", "KVRAFT_MAX_TXN_OPS": "16",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 0
    (config,) = captured_config
    assert (config.node_id, str(config.data_dir), config.listen, config.peer_listen) == (
        3, "/tmp/somewhere", listen, peer)
    assert config.initial_cluster == {1: "a:1", 2: "b:2", 3: "node-3:2380"}
    assert (config.join, config.metrics_listen, config.log_level) == (True, metrics, "DEBUG")
    assert (config.advertise_client, config.advertise_peer) == ("node-3:2379", "node-3:2390")
    assert (config.tick_interval_s, config.snapshot_entries, config.snapshot_keep_entries) == (
        0.02, 50, 5)
    assert config.read_mode == "lease"
    assert (config.max_request_bytes, config.max_txn_ops) == (65536, 16)
    # A flag wins over its variable.
    assert main(["serve", "--id", "2", "--log-level", "error", "--read-mode", "safe"]) == 0
    assert (captured_config[1].node_id, captured_config[1].log_level) == (2, "ERROR")
    assert captured_config[1].read_mode == "safe"


def test_serve_defaults_are_node_config_defaults(captured_config: list) -> None:
    """`kvraft serve` without tuning flags or variables runs NodeConfig's defaults."""
    assert main(["serve", "--listen", _free_address(), "--peer-listen", _free_address()]) == 0
    (config,) = captured_config
    for name in ("tick_interval_s", "snapshot_entries", "snapshot_keep_entries", "event_loop",
                 "log_level", "profile_path", "read_mode", "max_request_bytes", "max_txn_ops"):
        assert getattr(config, name) == getattr(NodeConfig, name), name


def test_node_config_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI is the one reader of KVRAFT_* variables: a NodeConfig built in-process
    (an embedding, a test) gets its plain defaults whatever the environment says."""
    for name in ("KVRAFT_TICK_INTERVAL", "KVRAFT_SNAPSHOT_ENTRIES",
                 "KVRAFT_SNAPSHOT_KEEP_ENTRIES", "KVRAFT_PROFILE"):
        monkeypatch.setenv(name, "7")
    config = NodeConfig(node_id=1, data_dir="/nonexistent", listen="127.0.0.1:1",
                        peer_listen="127.0.0.1:2", initial_cluster={1: "127.0.0.1:2"})
    assert (config.tick_interval_s, config.snapshot_entries, config.snapshot_keep_entries,
            config.profile_path) == (0.1, 10_000, 1_000, None)


def test_serve_passes_profile_from_its_variable(captured_config: list,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVRAFT_PROFILE", "/tmp/p-{id}.out")
    assert main(["serve", "--listen", _free_address(), "--peer-listen", _free_address()]) == 0
    assert captured_config[0].profile_path == "/tmp/p-{id}.out"


def test_serve_with_a_file_as_data_dir_is_one_line(tmp_path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_kvraft("serve", "--data-dir", str(not_a_dir), "--listen", _free_address(),
                        "--peer-listen", _free_address(), cwd=tmp_path)
    assert str(not_a_dir) in assert_one_error_line(result, exit_code=1)
    assert not_a_dir.read_text() == "x"


WORDS = ["put", "get", "delete", "scan", "cas", "status", "member", "leader", "bench", "list",
         "add", "remove", "promote", "transfer", "--endpoints", "--timeout", "--prefix",
         "--limit", "--expect-absent", "--serializable", "--json", "--learner",
         "--peer-address", "--client-address", "--keys-only", "--no-wait", "--clients",
         "--duration", "--", "k", "", "1", "0", "-1", "127.0.0.1:1", "a=b", "1.5", "é"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=7))
def test_any_command_line_ends_in_an_exit_code_never_a_traceback(argv: list[str]) -> None:
    """Random client command lines (never `serve`; every endpoint is a closed loopback
    port): an exit code of the documented set and at most one stderr line."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    err, out = io.StringIO(), io.TextIOWrapper(io.BytesIO())
    env = {"KVRAFT_ENDPOINTS": "127.0.0.1:1", "KVRAFT_TIMEOUT": "0.05"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            code = main(list(argv))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code in (0, 1, 2, 3, 4), (argv, code, err.getvalue())
    lines = err.getvalue().splitlines()
    assert len(lines) <= 1 and all(line.startswith("error: ") for line in lines), lines
