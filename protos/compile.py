"""Compiles protos/*.proto into the package kvraft.proto.

Run by the setuptools build (setup.py) so that `pip install .` and `pip install -e .`
both yield importable modules, and by `make protos`. Generated files are not committed.

The .proto files live in `protos/` (the contract names them there), but protoc is told
that this directory *is* `kvraft/proto` (`-Ikvraft/proto=protos`, a virtual path). A
.proto imports another by that path (`import "kvraft/proto/eraftpb.proto";`), so the
generated module imports `from kvraft.proto import eraftpb_pb2` exactly as protoc
writes it: nothing generated is edited afterwards.

The directory is flat: one file per protobuf package, named after its package's last
part (kvraft.proto, peer.proto for kvraft.peer, eraftpb.proto; etcd's v3 API as
etcdserverpb.proto, mvccpb.proto and authpb.proto, hence `kvraft.proto.etcdserverpb_pb2`,
`kvraft.proto.mvccpb_pb2`, `kvraft.proto.authpb_pb2`). Flat on purpose: the generated
modules then all land in kvraft/proto/, which is what .gitignore, package-data,
`make clean` and the Makefile's rebuild rule name. A .proto in a subdirectory would
silently not be compiled, so it is refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PACKAGE_PATH = "kvraft/proto"          # where the generated modules belong, as a path
OUT_DIR = ROOT / PACKAGE_PATH


def compile_protos() -> list[Path]:
    # Build-time only: pyproject's build-system requires grpcio-tools; the installed
    # package never imports it.
    import grpc_tools
    from grpc_tools import protoc

    sources = sorted(PROTO_DIR.glob("*.proto"))
    nested = sorted(p for p in PROTO_DIR.rglob("*.proto") if p.parent != PROTO_DIR)
    if nested:
        raise RuntimeError(
            "protos/ is flat (see protos/compile.py): move "
            + ", ".join(str(p.relative_to(PROTO_DIR)) for p in nested) + " up into protos/")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_PATH}={PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *[f"{PACKAGE_PATH}/{s.name}" for s in sources],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(s.name for s in sources)}")
    return sorted(OUT_DIR.glob("*_pb2*.py")) + sorted(OUT_DIR.glob("*_pb2.pyi"))


if __name__ == "__main__":
    for p in compile_protos():
        print(p.relative_to(ROOT))
    sys.exit(0)
