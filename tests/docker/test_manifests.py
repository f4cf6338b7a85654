"""Static checks of the deployment files: the invariants the cluster relies on.

No Docker or Kubernetes needed: the manifests and the compose file are parsed, and the
image's entrypoint (a POSIX shell script) runs against a stand-in `kvraft`.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from kvraft.server.health import CHECK_TIMEOUT_S

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e .[test]")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
REPLICAS = 5
QUORUM = REPLICAS // 2 + 1  # thesis §3.4: a majority of the voters
CLIENT_PORT = 2379
PEER_PORT = 2380
IMAGE_UID = 10001


def load_k8s() -> dict[tuple[str, str], dict]:
    """Every document under deploy/k8s applied by kustomization.yaml, by (kind, name)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects: dict[tuple[str, str], dict] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    return objects


def parse_initial_cluster(text: str) -> dict[int, str]:
    members = {}
    for item in text.split(","):
        member_id, _, address = item.partition("=")
        members[int(member_id)] = address
    return members


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    return load_k8s()


@pytest.fixture(scope="module")
def statefulset(k8s) -> dict:
    (sts,) = [o for (kind, _), o in k8s.items() if kind == "StatefulSet"]
    return sts


@pytest.fixture(scope="module")
def container(statefulset) -> dict:
    (c,) = statefulset["spec"]["template"]["spec"]["containers"]
    return c


def test_every_k8s_file_is_listed_in_the_kustomization():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_statefulset_runs_five_members_started_together(statefulset):
    spec = statefulset["spec"]
    assert spec["replicas"] == REPLICAS
    # OrderedReady would wait for kvraft-0 to be ready before creating kvraft-1, but no
    # member can be ready before a quorum is up to elect a leader.
    assert spec["podManagementPolicy"] == "Parallel"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()


def test_headless_service_publishes_peers_before_they_are_ready(k8s, statefulset):
    service = k8s[("Service", statefulset["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["peer"] == PEER_PORT


def test_initial_cluster_follows_the_ordinal_plus_one_rule(statefulset, container):
    """Pod <sts>-K is node K+1: the founding members listed are exactly those names."""
    env = env_of(container)
    assert env["KVRAFT_ID_FROM_HOSTNAME"] == "1"
    assert "KVRAFT_ID" not in env, "a fixed KVRAFT_ID would give every pod the same id"
    name = statefulset["metadata"]["name"]
    service = statefulset["spec"]["serviceName"]
    members = parse_initial_cluster(env["KVRAFT_INITIAL_CLUSTER"])
    assert members == {
        k + 1: f"{name}-{k}.{service}:{PEER_PORT}" for k in range(REPLICAS)
    }


def test_advertised_addresses_are_the_pods_stable_names(statefulset, container):
    env = env_of(container)
    service = statefulset["spec"]["serviceName"]
    assert env["KVRAFT_ADVERTISE_PEER"] == f"$(POD_NAME).{service}:{PEER_PORT}"
    assert env["KVRAFT_ADVERTISE_CLIENT"] == f"$(POD_NAME).{service}:{CLIENT_PORT}"
    (pod_name,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_probes_ask_livez_and_readyz_on_the_metrics_listener(container):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["client"] == CLIENT_PORT
    assert ports["peer"] == PEER_PORT
    env = env_of(container)
    listen_port = int(env["KVRAFT_LISTEN"].rpartition(":")[2])
    assert listen_port == ports["client"]
    # The probes' port is the one the member serves /livez and /readyz on.
    metrics_port = int(env["KVRAFT_METRICS_LISTEN"].rpartition(":")[2])
    assert ports["metrics"] == metrics_port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        get = container[probe]["httpGet"]
        assert (get["path"], ports.get(get["port"], get["port"])) == (path, metrics_port), probe
        # An answer within the probe's timeout: the checks give up after CHECK_TIMEOUT_S.
        assert container[probe]["timeoutSeconds"] > CHECK_TIMEOUT_S, probe


def test_data_directory_is_on_the_claimed_volume(statefulset, container):
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_mount = mounts[claim["metadata"]["name"]]
    assert data_mount == "/var/lib/kvraft"
    data_dir = env_of(container)["KVRAFT_DATA_DIR"]
    assert Path(data_dir).is_relative_to(data_mount)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_pod_runs_as_the_image_user_with_a_writable_volume(statefulset, container):
    security = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == IMAGE_UID
    assert security["fsGroup"] == IMAGE_UID
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in (DEPLOY / "Dockerfile").read_text()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_disruption_budget_keeps_a_quorum(k8s, statefulset):
    (pdb,) = [o for (kind, _), o in k8s.items() if kind == "PodDisruptionBudget"]
    spec = pdb["spec"]
    replicas = statefulset["spec"]["replicas"]
    # Pods guaranteed to stay up through voluntary disruptions.
    still_up = spec.get("minAvailable", replicas - spec.get("maxUnavailable", replicas))
    assert still_up >= QUORUM
    # ... and still lets one pod at a time be drained.
    assert still_up < replicas
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()


def test_client_service_targets_the_client_port_of_the_members(k8s, statefulset):
    services = [
        o for (kind, name), o in k8s.items()
        if kind == "Service" and name != statefulset["spec"]["serviceName"]
    ]
    (client,) = services
    assert client["spec"].get("clusterIP") != "None"
    (port,) = client["spec"]["ports"]
    assert port["targetPort"] == "client"
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert client["spec"]["selector"].items() <= pod_labels.items()


# ------------------------------------------------------------------ docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_defines_five_members_with_ids_one_to_five(compose):
    services = compose["services"]
    assert sorted(services) == [f"kvraft{n}" for n in range(1, REPLICAS + 1)]
    for n in range(1, REPLICAS + 1):
        env = services[f"kvraft{n}"]["environment"]
        assert env["KVRAFT_ID"] == str(n)
        members = parse_initial_cluster(env["KVRAFT_INITIAL_CLUSTER"])
        assert members == {m: f"kvraft{m}:{PEER_PORT}" for m in range(1, REPLICAS + 1)}
        assert env["KVRAFT_LISTEN"].endswith(f":{CLIENT_PORT}")
        assert env["KVRAFT_PEER_LISTEN"].endswith(f":{PEER_PORT}")
        # The published client port is the address members publish (Status, member list).
        (mapping,) = services[f"kvraft{n}"]["ports"]
        assert env["KVRAFT_ADVERTISE_CLIENT"] == mapping.rpartition(":")[0]
        assert env["KVRAFT_ADVERTISE_PEER"] == members[n]


def test_compose_publishes_node_n_on_loopback_port_2379n_by_default(compose):
    for n in range(1, REPLICAS + 1):
        (mapping,) = compose["services"][f"kvraft{n}"]["ports"]
        # "${KVRAFT_HOST_IP:-127.0.0.1}:${KVRAFT_HOST_PORT_N:-2379N}:2379"
        match = re.fullmatch(
            r"\$\{KVRAFT_HOST_IP:-127\.0\.0\.1\}:\$\{KVRAFT_HOST_PORT_(\d):-(\d+)\}:(\d+)",
            mapping,
        )
        assert match, mapping
        assert match.groups() == (str(n), f"2379{n}", str(CLIENT_PORT))


def test_compose_members_restart_keep_their_own_volume_and_share_a_network(compose):
    volumes_seen = set()
    for n in range(1, REPLICAS + 1):
        service = compose["services"][f"kvraft{n}"]
        assert service["restart"] == "unless-stopped"
        assert service["hostname"] == f"kvraft{n}"
        (volume,) = service["volumes"]
        name, _, mount = volume.partition(":")
        assert mount == "/var/lib/kvraft"
        assert name in compose["volumes"]
        volumes_seen.add(name)
        assert service["networks"] == ["kvraft"]
        assert service["environment"]["KVRAFT_DATA_DIR"].startswith(mount + "/")
    assert len(volumes_seen) == REPLICAS
    assert list(compose["networks"]) == ["kvraft"]


# ------------------------------------------------------------------ entrypoint


@pytest.fixture
def fake_kvraft(tmp_path) -> Path:
    """A stand-in `kvraft` on PATH that prints its id and arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kvraft"
    script.write_text('#!/bin/sh\necho "id=${KVRAFT_ID:-unset} args=$*"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def run_entrypoint(fake_kvraft: Path, env: dict[str, str], *args: str):
    base = {"PATH": f"{fake_kvraft}:/usr/bin:/bin"}
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *args],
        env={**base, **env}, capture_output=True, text=True, timeout=10, check=False,
    )


@pytest.mark.parametrize("ordinal", range(REPLICAS))
def test_entrypoint_derives_node_id_from_pod_ordinal(fake_kvraft, ordinal):
    out = run_entrypoint(
        fake_kvraft, {"KVRAFT_ID_FROM_HOSTNAME": "1", "HOSTNAME": f"kvraft-{ordinal}"}, "status"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"id={ordinal + 1} args=status"


def test_entrypoint_keeps_an_explicit_id(fake_kvraft):
    out = run_entrypoint(
        fake_kvraft,
        {"KVRAFT_ID_FROM_HOSTNAME": "1", "HOSTNAME": "kvraft-3", "KVRAFT_ID": "7"},
        "status",
    )
    assert out.stdout.strip() == "id=7 args=status"


def test_entrypoint_leaves_the_id_alone_unless_asked(fake_kvraft):
    out = run_entrypoint(fake_kvraft, {"HOSTNAME": "kvraft-3"}, "status")
    assert out.stdout.strip() == "id=unset args=status"


def test_entrypoint_refuses_a_hostname_without_ordinal(fake_kvraft):
    out = run_entrypoint(fake_kvraft, {"KVRAFT_ID_FROM_HOSTNAME": "1", "HOSTNAME": "kvraft"})
    assert out.returncode == 64
    assert "does not end in -ORDINAL" in out.stderr
    assert out.stdout == ""


def test_entrypoint_creates_the_data_directory_for_serve(fake_kvraft, tmp_path):
    data_dir = tmp_path / "volume" / "data"
    out = run_entrypoint(
        fake_kvraft, {"KVRAFT_ID": "2", "KVRAFT_DATA_DIR": str(data_dir)}, "serve"
    )
    assert out.returncode == 0, out.stderr
    assert data_dir.is_dir()
    assert out.stdout.strip() == "id=2 args=serve"


def test_entrypoint_execs_so_the_node_is_the_process_signals_reach(fake_kvraft):
    """`exec kvraft`: the stand-in reports the same PID the shell had."""
    (fake_kvraft / "kvraft").write_text('#!/bin/sh\necho "pid=$$"\n')
    out = subprocess.run(
        ["/bin/sh", "-c", f'echo "shell=$$"; exec /bin/sh {ENTRYPOINT} status'],
        env={"PATH": f"{fake_kvraft}:/usr/bin:/bin"},
        capture_output=True, text=True, timeout=10, check=False,
    )
    shell_pid = re.search(r"shell=(\d+)", out.stdout).group(1)
    assert f"pid={shell_pid}" in out.stdout
    assert os.access(ENTRYPOINT, os.X_OK)


# The Kubernetes versions the manifests are checked against: the oldest and the newest
# whose schemas kubernetes-validate ships (httpGet probes on a named port need neither
# a feature gate nor a recent release).
K8S_SCHEMA_VERSIONS = ("1.25.0", "latest")


@pytest.mark.parametrize("version", K8S_SCHEMA_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    """Strict: a misspelt field (an unknown property) fails as a wrong type does."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the test extra")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    objects = load_k8s()
    assert ("StatefulSet", "kvraft") in objects
    for key, doc in objects.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{key} is not a valid Kubernetes {version} object: {e.message}")
