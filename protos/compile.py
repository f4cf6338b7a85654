"""Compiles protos/*.proto into the package kvraft.proto.

Run by the setuptools build (setup.py) so that `pip install .` and `pip install -e .`
both yield importable modules, and by `make protos`. Generated files are not committed.

protoc writes imports between generated modules as top-level imports
(`import eraftpb_pb2`), which do not resolve inside a package; they are rewritten to
package-relative form here.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "kvraft" / "proto"


def compile_protos() -> list[Path]:
    from grpc_tools import protoc  # build-time dependency (pyproject build-system)
    import grpc_tools

    sources = sorted(PROTO_DIR.glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *[str(s) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(s.name for s in sources)}")
    generated = sorted(OUT_DIR.glob("*_pb2*.py")) + sorted(OUT_DIR.glob("*_pb2.pyi"))
    local = {s.stem for s in sources}
    pattern = re.compile(r"^import (\w+)_pb2 as (\w+)$", re.M)
    for path in generated:
        text = path.read_text()

        def relative(m: re.Match[str]) -> str:
            if m.group(1) in local:
                return f"from . import {m.group(1)}_pb2 as {m.group(2)}"
            return m.group(0)

        fixed = pattern.sub(relative, text)
        if fixed != text:
            path.write_text(fixed)
    return generated


if __name__ == "__main__":
    for p in compile_protos():
        print(p.relative_to(ROOT))
    sys.exit(0)
