#!/opt/kvraft/bin/python
"""Container health check for a kvraft node (the image's HEALTHCHECK).

Asks the standard grpc.health.v1.Health service on the node's client port and exits 0
when it answers SERVING. With --leader it asks Cluster.Status instead, prints the node's
view (member, role, leader, term) and exits 0 only when a leader is known; `make
docker-up` uses that to wait for the first election.

The address defaults to the port of KVRAFT_LISTEN on 127.0.0.1 (a wildcard listen
host means "this container").

TLS (docs/security.md): when the node serves TLS from KVRAFT_TLS_DIR (the entrypoint's
convention) or KVRAFT_CERT_FILE, the check verifies the node's certificate with
KVRAFT_CACERT (default DIR/ca.crt) and presents KVRAFT_CERT/KVRAFT_KEY, or DIR's
client.crt/.key when the node requires client certificates.
"""
from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_LISTEN = "0.0.0.0:2379"
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def local_address(listen: str) -> str:
    """The address to dial for a node that listens on `listen` (HOST:PORT)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"KVRAFT_LISTEN is not HOST:PORT: {listen!r}")
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    return f"{host}:{port}"


def check_serving(channel: grpc.Channel, timeout_s: float) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def check_leader(channel: grpc.Channel, timeout_s: float) -> int:
    # Imported here so the plain health check does not pay for the kvraft protos.
    from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc

    reply = kvraft_pb2_grpc.ClusterStub(channel).Status(
        kvraft_pb2.StatusRequest(), timeout=timeout_s
    )
    header = reply.header
    print(
        f"member={header.member_id} role={reply.role} leader={header.leader_id} "
        f"term={header.term} commit={reply.commit_index}"
    )
    return 0 if header.leader_id != 0 else 1


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def channel_for(address: str, env: dict[str, str]) -> grpc.Channel:
    """A plaintext channel, or a TLS one when the node's environment says it serves TLS."""
    tls_dir = env.get("KVRAFT_TLS_DIR", "")
    if not (tls_dir or env.get("KVRAFT_CERT_FILE") or env.get("KVRAFT_CACERT")):
        return grpc.insecure_channel(address)
    cacert = env.get("KVRAFT_CACERT") or (os.path.join(tls_dir, "ca.crt") if tls_dir else "")
    cert, key = env.get("KVRAFT_CERT", ""), env.get("KVRAFT_KEY", "")
    client_auth = env.get("KVRAFT_TLS_CLIENT_CERT_AUTH") == "1" or \
        env.get("KVRAFT_CLIENT_CERT_AUTH", "").lower() in ("1", "true")
    if not cert and tls_dir and client_auth:
        cert, key = os.path.join(tls_dir, "client.crt"), os.path.join(tls_dir, "client.key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(cacert) if cacert else None,
        private_key=_read(key) if cert else None,
        certificate_chain=_read(cert) if cert else None)
    return grpc.secure_channel(address, credentials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="HOST:PORT to ask (default: from KVRAFT_LISTEN)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--leader", action="store_true", help="succeed only once a leader is known")
    args = parser.parse_args(argv)
    try:
        address = args.address or local_address(os.environ.get("KVRAFT_LISTEN", DEFAULT_LISTEN))
        with channel_for(address, dict(os.environ)) as channel:
            check = check_leader if args.leader else check_serving
            return check(channel, args.timeout)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    except OSError as e:  # a certificate file that cannot be read
        print(f"cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
