"""`kvraft user|role|auth` and `--user` against a real single-node cluster (SPEC §8):
etcdctl's argument shapes and messages, one-line errors, and etcdctl 3.4 seeing what
kvraft's commands set up."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cluster.harness import LocalCluster
from tests.etcd.conftest import ETCDCTL, etcdctl, failed, ok

# About 45 runs of the kvraft command, each a new Python process.
pytestmark = [pytest.mark.cluster, pytest.mark.slow]
CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def node() -> Iterator[LocalCluster]:
    with LocalCluster.start(1) as cluster:
        cluster.wait_leader()
        yield cluster


def kvraft(cluster: LocalCluster, *args: str, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVRAFT_")}
    return subprocess.run([sys.executable, "-m", "kvraft", *args, "--endpoints",
                           cluster.endpoints()], capture_output=True, text=True, input=stdin,
                          env=env, timeout=CLI_TIMEOUT_S)


def done(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"kvraft failed ({result.returncode}): {result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a refused command (exit 3, no traceback)."""
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_set_up_users_roles_and_auth_with_kvraft_and_use_them(node: LocalCluster) -> None:
    assert done(kvraft(node, "user", "add", "root:rootpw")) == "User root created\n"
    assert done(kvraft(node, "role", "add", "root")) == "Role root created\n"
    assert done(kvraft(node, "user", "grant-role", "root", "root")) == \
        "Role root is granted to user root\n"
    done(kvraft(node, "role", "add", "cfg"))
    assert done(kvraft(node, "role", "grant-permission", "cfg", "read", "cfg/", "--prefix")) \
        == "Role cfg updated\n"
    done(kvraft(node, "role", "grant-permission", "cfg", "readwrite", "cfg/mine/", "--prefix"))
    # the password asked for on stdin, twice
    done(kvraft(node, "user", "add", "dave", stdin="davepw\ndavepw\n"))
    done(kvraft(node, "user", "grant-role", "dave", "cfg"))
    done(kvraft(node, "put", "cfg/a", "1"))
    done(kvraft(node, "put", "other", "2"))
    assert done(kvraft(node, "auth", "enable")) == "Authentication Enabled\n"

    assert done(kvraft(node, "get", "cfg/a", "--user", "dave:davepw")) == "1\n"
    assert done(kvraft(node, "get", "cfg/a", "--user", "dave", stdin="davepw\n")) == "1\n"
    done(kvraft(node, "put", "cfg/mine/x", "3", "--user", "dave:davepw"))
    assert refused(kvraft(node, "put", "cfg/a", "9", "--user", "dave:davepw")) == \
        "error: permission denied: etcdserver: permission denied"
    assert refused(kvraft(node, "get", "other", "--user", "dave:davepw")) == \
        "error: permission denied: etcdserver: permission denied"
    assert refused(kvraft(node, "get", "cfg/a", "--user", "dave:nope")) == (
        "error: invalid argument: etcdserver: authentication failed, invalid user ID or "
        "password")
    assert refused(kvraft(node, "get", "cfg/a")) == \
        "error: invalid argument: etcdserver: user name is empty"
    assert done(kvraft(node, "scan", "--prefix", "cfg/", "--user", "dave:davepw")).split() == [
        "cfg/a", "1", "cfg/mine/x", "3"]

    assert done(kvraft(node, "user", "list", "--user", "root:rootpw")).split() == [
        "dave", "root"]
    assert done(kvraft(node, "role", "list", "--user", "root:rootpw")).split() == [
        "cfg", "root"]
    assert done(kvraft(node, "user", "get", "dave", "--user", "root:rootpw")) == \
        "User: dave\nRoles: cfg\n"
    role = done(kvraft(node, "role", "get", "cfg", "--user", "root:rootpw"))
    assert role.splitlines()[:3] == ["Role cfg", "KV Read:", "\t[cfg/, cfg0) (prefix cfg/)"]
    status = done(kvraft(node, "auth", "status", "--user", "dave:davepw")).splitlines()
    assert status[0] == "Authentication Status: true" and status[1].startswith("AuthRevision: ")
    assert refused(kvraft(node, "user", "list", "--user", "dave:davepw")) == \
        "error: permission denied: etcdserver: permission denied"

    # a user changes its own password; the old one stops working
    assert done(kvraft(node, "user", "passwd", "dave", "--new-password", "newpw",
                       "--user", "dave:davepw")) == "Password updated\n"
    refused(kvraft(node, "get", "cfg/a", "--user", "dave:davepw"))
    assert done(kvraft(node, "get", "cfg/a", "--user", "dave:newpw")) == "1\n"

    # the maintenance commands (kvraft/cli_ops.py) authenticate too: defrag is root's
    assert "Finished defragmenting" in done(kvraft(node, "defrag", "--user", "root:rootpw"))
    as_dave = kvraft(node, "defrag", "--user", "dave:newpw")
    assert as_dave.returncode == 3 and "etcdserver: permission denied" in as_dave.stderr

    if ETCDCTL is not None:   # etcdctl sees what kvraft set up
        assert ok(etcdctl(node.endpoints(), "--user=dave:newpw", "get", "cfg/a")).split() == [
            "cfg/a", "1"]
        assert "etcdserver: permission denied" in failed(
            etcdctl(node.endpoints(), "--user=dave:newpw", "put", "cfg/a", "x"))

    assert done(kvraft(node, "role", "revoke-permission", "cfg", "cfg/", "--prefix",
                       "--user", "root:rootpw")) == (
        "Permission of range [cfg/, cfg0) (prefix cfg/) is revoked from role cfg\n")
    refused(kvraft(node, "get", "cfg/a", "--user", "dave:newpw"))
    assert refused(kvraft(node, "user", "delete", "root", "--user", "root:rootpw")) == \
        "error: invalid argument: etcdserver: invalid auth management"
    assert done(kvraft(node, "auth", "disable", "--user", "root:rootpw")) == \
        "Authentication Disabled\n"
    assert done(kvraft(node, "get", "other")) == "2\n"
    assert done(kvraft(node, "auth", "status")).startswith("Authentication Status: false")


def test_auth_enable_without_root_and_bad_arguments_are_one_line(node: LocalCluster) -> None:
    done(kvraft(node, "user", "add", "solo:pw"))
    if "root" in done(kvraft(node, "user", "list")).split():   # left by another test
        done(kvraft(node, "user", "delete", "root"))
    assert refused(kvraft(node, "auth", "enable")) == \
        "error: failed precondition: etcdserver: root user does not exist"
    assert refused(kvraft(node, "user", "add", "solo:again")) == \
        "error: failed precondition: etcdserver: user name already exists"
    assert refused(kvraft(node, "user", "grant-role", "solo", "ghost")) == \
        "error: failed precondition: etcdserver: role name not found"
    usage = kvraft(node, "role", "grant-permission", "r", "read", "a", "b", "--prefix")
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
    usage = kvraft(node, "role", "grant-permission", "r", "delete", "a")
    assert usage.returncode == 2 and "delete" in usage.stderr
