"""TLS in the deployment files (docs/security.md): the image's entrypoint picks a
member's certificates by id from KVRAFT_TLS_DIR, the compose overlay
(`make docker-up TLS=1`) and the Kubernetes overlay (deploy/k8s-tls) mount them, and
the image's health check (the compose cluster's) speaks TLS to a real TLS member."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster

from .tlscluster import CertDir, tls_cluster

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MEMBERS = range(1, 6)


def _entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The entrypoint with a stand-in `kvraft` that prints the TLS variables it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "kvraft"
    stand_in.write_text("#!/bin/sh\nenv | grep -E '^KVRAFT_[A-Z_]*(FILE|AUTH)=' | sort\n")
    stand_in.chmod(0o755)
    return subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "serve"],
                          capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env})


def test_the_entrypoint_picks_the_members_certificates_by_id(tmp_path: Path) -> None:
    result = _entrypoint(tmp_path, {"KVRAFT_TLS_DIR": "/certs", "KVRAFT_ID": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "KVRAFT_CERT_FILE=/certs/member-3.crt",
        "KVRAFT_KEY_FILE=/certs/member-3.key",
        "KVRAFT_PEER_CERT_FILE=/certs/peer-3.crt",
        "KVRAFT_PEER_KEY_FILE=/certs/peer-3.key",
        "KVRAFT_PEER_TRUSTED_CA_FILE=/certs/ca.crt",
    ]
    # From the StatefulSet pod's ordinal, with client certificates required, and an
    # explicit file kept.
    result = _entrypoint(tmp_path, {"KVRAFT_TLS_DIR": "/t", "KVRAFT_ID_FROM_HOSTNAME": "1",
                                    "KVRAFT_HOSTNAME": "kvraft-4",
                                    "KVRAFT_TLS_CLIENT_CERT_AUTH": "1",
                                    "KVRAFT_CERT_FILE": "/own/server.crt"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "KVRAFT_CERT_FILE=/own/server.crt" in lines
    assert "KVRAFT_PEER_CERT_FILE=/t/peer-5.crt" in lines
    assert "KVRAFT_TRUSTED_CA_FILE=/t/ca.crt" in lines and "KVRAFT_CLIENT_CERT_AUTH=1" in lines
    result = _entrypoint(tmp_path, {"KVRAFT_TLS_DIR": "/certs"})
    assert result.returncode == 64
    assert "KVRAFT_TLS_DIR needs KVRAFT_ID" in result.stderr


def test_the_compose_tls_overlay_mounts_the_certificates_on_every_member() -> None:
    base = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    overlay = yaml.safe_load((DEPLOY / "docker-compose.tls.yml").read_text())
    assert sorted(overlay["services"]) == sorted(base["services"])
    for n in MEMBERS:
        service = overlay["services"][f"kvraft{n}"]
        assert service["environment"]["KVRAFT_TLS_DIR"] == "/certs"
        assert service["volumes"] == ["./.build/certs:/certs:ro"]
        # The base names member n's host kvraftN: what `make certs` puts in its certificates.
        assert base["services"][f"kvraft{n}"]["environment"]["KVRAFT_ADVERTISE_PEER"] == \
            f"kvraft{n}:2380"
    makefile = (ROOT / "Makefile").read_text()
    assert "--member-host 'kvraft{id}'" in makefile


def test_the_kubernetes_tls_overlay_mounts_the_secret() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s-tls" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../k8s"]
    patch = yaml.safe_load((DEPLOY / "k8s-tls" / "statefulset-tls.yaml").read_text())
    pod = patch["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == env["KVRAFT_TLS_DIR"] and mount["readOnly"] is True
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and volume["secret"]["secretName"] == "kvraft-tls"
    assert volume["secret"]["defaultMode"] == 0o440
    if shutil.which("kubectl"):
        built = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s-tls")],
                               capture_output=True, text=True, timeout=60, check=True).stdout
        docs = {d["kind"]: d for d in yaml.safe_load_all(built) if d}
        spec = docs["StatefulSet"]["spec"]["template"]["spec"]
        assert any(v["name"] == "tls" for v in spec["volumes"])
        (built_container,) = spec["containers"]
        built_env = {e["name"]: e.get("value") for e in built_container["env"]}
        assert built_env["KVRAFT_TLS_DIR"] == "/etc/kvraft/tls"
        assert built_env["KVRAFT_ID_FROM_HOSTNAME"] == "1"  # the base's env is kept
        # The probes ask the plain-HTTP metrics listener: TLS does not concern them.
        assert built_container["readinessProbe"]["httpGet"]["port"] == "metrics"


@pytest.fixture(scope="module")
def mtls_node(certs: CertDir) -> Iterator[LocalCluster]:
    with tls_cluster(1, lambda i: certs.client_port_flags(i, client_cert_auth=True),
                     certs.channel_credentials()) as cluster:
        cluster.wait_leader()
        yield cluster


@pytest.mark.cluster
def test_the_health_check_speaks_tls_from_the_certificate_directory(
        mtls_node: LocalCluster, certs: CertDir) -> None:
    address = mtls_node.nodes[1].client_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVRAFT_")}

    def check(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), "--address",
                               address, "--leader"], capture_output=True, text=True,
                              timeout=30, check=False, env={**env, **extra})

    ok = check({"KVRAFT_TLS_DIR": str(certs.root), "KVRAFT_TLS_CLIENT_CERT_AUTH": "1"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("member=1 role=leader leader=1")
    # Without the client certificate the member refuses it.
    refused = check({"KVRAFT_TLS_DIR": str(certs.root)})
    assert refused.returncode == 1
    assert refused.stderr.startswith("UNAVAILABLE")
