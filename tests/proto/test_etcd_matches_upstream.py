"""The project's etcd protos against etcd's own 3.4 definitions, descriptor by descriptor.

Debian's golang-etcd-server-dev ships etcd 3.4's .proto files (the same release as its
etcd-server and etcd-client). They are compiled here into a descriptor set only — never
imported: their symbols would clash with ours in protobuf's default pool — and every
message, field (name, number, label, type, oneof), enum value, service and method of
packages etcdserverpb, mvccpb and authpb must be in ours exactly so. Ours may add only
what etcd 3.5 added (listed below), so a 3.4 client and a 3.5 client both read our bytes.
Skipped when the package is not installed (tests/bench/etcd.py installs it on demand).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from kvraft.proto import authpb_pb2, etcdserverpb_pb2, mvccpb_pb2

GOCODE = Path("/usr/share/gocode/src")
UPSTREAM_RPC = "etcd/etcdserver/etcdserverpb/rpc.proto"
INCLUDE_DIRS = [  # rpc.proto's imports: etcd's own files, gogoproto, google.api
    GOCODE / "go.etcd.io",
    GOCODE / "github.com/gogo/protobuf",
    GOCODE / "github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis",
]
PACKAGES = {"etcdserverpb", "mvccpb", "authpb"}

# What etcd 3.5 added to 3.4's API (a new message brings its fields); nothing else may
# be ours alone.
ETCD_35_ADDITIONS = {
    "service method etcdserverpb.Maintenance.Downgrade",
    "service method etcdserverpb.Auth.AuthStatus",
    "message etcdserverpb.DowngradeRequest",
    "message etcdserverpb.DowngradeResponse",
    "enum etcdserverpb.DowngradeRequest.DowngradeAction",
    "message etcdserverpb.AuthStatusRequest",
    "message etcdserverpb.AuthStatusResponse",
    "field etcdserverpb.MemberListRequest.linearizable",
    "field etcdserverpb.AuthUserAddRequest.hashedPassword",
    "field etcdserverpb.AuthUserChangePasswordRequest.hashedPassword",
}


def _flatten(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, Any]:
    """Every wire-relevant fact of the files, keyed "kind full.name" -> comparable value."""
    facts: dict[str, Any] = {}

    def enum(prefix: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        facts[f"enum {prefix}{e.name}"] = {v.name: v.number for v in e.value}

    def message(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}{m.name}"
        facts[f"message {name}"] = [o.name for o in m.oneof_decl]
        for f in m.field:
            oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
            facts[f"field {name}.{f.name}"] = (
                f.number, descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
                descriptor_pb2.FieldDescriptorProto.Type.Name(f.type), f.type_name, oneof)
        for nested in m.nested_type:
            message(f"{name}.", nested)
        for e in m.enum_type:
            enum(f"{name}.", e)

    for file in files:
        prefix = f"{file.package}."
        for m in file.message_type:
            message(prefix, m)
        for e in file.enum_type:
            enum(prefix, e)
        for s in file.service:
            for method in s.method:
                facts[f"service method {prefix}{s.name}.{method.name}"] = (
                    method.input_type, method.output_type,
                    method.client_streaming, method.server_streaming)
    return facts


@pytest.fixture(scope="module")
def upstream_34(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not (INCLUDE_DIRS[0] / UPSTREAM_RPC).exists():
        pytest.skip("etcd 3.4's protos are not installed (Debian: golang-etcd-server-dev)")
    import grpc_tools
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("etcd34") / "etcd34.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", *[f"-I{d}" for d in [*INCLUDE_DIRS, well_known]],
            "--include_imports", f"--descriptor_set_out={out}", UPSTREAM_RPC]
    assert protoc.main(args) == 0, "protoc failed on etcd's own rpc.proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return _flatten([f for f in files if f.package in PACKAGES])


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    files = []
    for module in (etcdserverpb_pb2, mvccpb_pb2, authpb_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return _flatten(files)


def test_upstream_set_is_not_empty(upstream_34: dict[str, Any]) -> None:
    # Guards the comparison below against an include path that compiles nothing.
    assert "message etcdserverpb.RangeRequest" in upstream_34
    assert "field mvccpb.KeyValue.mod_revision" in upstream_34
    assert "message authpb.Role" in upstream_34


def test_everything_in_etcd_34_is_ours_exactly(upstream_34: dict[str, Any],
                                               ours: dict[str, Any]) -> None:
    missing = sorted(k for k in upstream_34 if k not in ours)
    different = {k: {"etcd 3.4": upstream_34[k], "ours": ours[k]}
                 for k in upstream_34 if k in ours and ours[k] != upstream_34[k]}
    assert missing == []
    assert different == {}


def test_ours_adds_only_etcd_35s_additions(upstream_34: dict[str, Any],
                                           ours: dict[str, Any]) -> None:
    def added_with_a_new_message(key: str) -> bool:
        kind, _, name = key.partition(" ")
        return kind == "field" and f"message {name.rpartition('.')[0]}" in ETCD_35_ADDITIONS

    extras = {k for k in ours if k not in upstream_34 and not added_with_a_new_message(k)}
    assert extras == ETCD_35_ADDITIONS
