"""The import graph of kvraft, read from the source with `ast` (nothing is imported).

Two rules (README.md, "Layers"):
* no import cycles — not in kvraft.storage (issue 15: datadir -> snapshot -> log_store
  -> datadir was one), not anywhere in the package;
* a module imports only from its own layer or the layers below it: kvraft.raft nothing
  from storage or server, kvraft.storage nothing from server, kvraft.server nothing from
  the client, the CLI or the tools on top.

Every import counts, wherever it is written: at module level, inside a function (a
lazy import is still a dependency, and was how the storage circle hid), and under
`if TYPE_CHECKING:` (the type checker follows it; a layer that names another's types
depends on it). The implicit import of a package's `__init__` by its submodules is not
an edge (Python runs it first, whatever the submodule imports).
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "kvraft"

# README.md "Layers", bottom up. A name listed covers that module and, for a package,
# its submodules ("kvraft" only the top module itself: __version__). A module that no
# name covers fails the layering test until it is given a layer.
LAYERS: list[tuple[str, ...]] = [
    # the version; generated protobuf; wire constants; TLS files and names both sides use
    ("kvraft", "kvraft.proto", "kvraft.wire", "kvraft.tls"),
    ("kvraft.raft",),
    ("kvraft.storage",),
    ("kvraft.server",),
    ("kvraft.client", "kvraft.cli", "kvraft.cli_format", "kvraft.bench",
     "kvraft.devcluster", "kvraft.procs", "kvraft.__main__", "kvraft._cli_env",
     "kvraft.client_etcd", "kvraft.client_recipes", "kvraft.cli_etcd", "kvraft.cli_ops",
     "kvraft.cli_auth", "kvraft.devcerts", "kvraft.client_auth", "kvraft.cli_connection",
     "kvraft.cli_params"),
]


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every hand-written module of the package (generated *_pb2*.py are gitignored
    and depend on nothing of ours but each other)."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))
            if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))}


def _resolve(target: str, known: set[str]) -> str:
    """`target` if it is a module of ours, else the longest module prefix of it."""
    while target not in known and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The kvraft modules `name` imports (see the module docstring for what counts)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from a import b`: the module a.b when there is one, else a name in a.
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "kvraft" or target.startswith("kvraft."):
                resolved = _resolve(target, known)
                if resolved != name:
                    found.add(resolved)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = source_modules(package_dir)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


@functools.cache
def kvraft_graph() -> dict[str, set[str]]:
    """kvraft's own graph, parsed once for all the tests (which only read it)."""
    return import_graph()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. Depth-first, iterative."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        path.append(root)
        on_path.add(root)
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = pending.pop()
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt in done or nxt not in graph:
                continue
            stack.append((nxt, sorted(graph[nxt])))
            path.append(nxt)
            on_path.add(nxt)
    return None


def layer_of(module: str) -> int | None:
    for rank, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "kvraft" and module.startswith(name + ".")):
                return rank
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(imported):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{module} (layer {own}) imports {target} (layer {theirs})")
    return found


def subgraph(graph: dict[str, set[str]], prefix: str) -> dict[str, set[str]]:
    inside = {m for m in graph if m == prefix or m.startswith(prefix + ".")}
    return {m: graph[m] & inside for m in inside}


# --- the rules ----------------------------------------------------------------------
def test_the_storage_modules_import_each_other_without_a_cycle() -> None:
    graph = subgraph(kvraft_graph(), "kvraft.storage")
    assert "kvraft.storage.datadir" in graph and graph["kvraft.storage.log_store"], graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in kvraft.storage: " + " -> ".join(cycle or [])


def test_kvraft_has_no_import_cycle() -> None:
    cycle = find_cycle(kvraft_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in kvraft_graph() if layer_of(m) is None]
    assert not unplaced, (f"{unplaced}: give each a layer in LAYERS (and in README.md's "
                          "Layers section)")


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert layer_violations(kvraft_graph()) == []


def readme_layers() -> list[list[str]]:
    """The modules named on each line of README.md's "Layers" diagram, in its order
    (the lowest layer first)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layers", 1)[1]
    diagram = section.split("```", 2)[1]
    lines = [re.findall(r"kvraft(?:\.[a-z_]+)+", line) for line in diagram.splitlines()]
    return [names for names in lines if names]


def test_the_layers_here_are_the_readme_s() -> None:
    """README's diagram, line by line, names modules of strictly rising layers here."""
    rows = readme_layers()
    assert len(rows) >= 4, rows
    ranks = []
    for names in rows:
        row_ranks = {layer_of(name) for name in names}
        assert len(row_ranks) == 1 and None not in row_ranks, (names, row_ranks)
        ranks.append(row_ranks.pop())
    assert ranks == sorted(set(ranks)), f"README's layers {rows} are ranked {ranks} here"


# --- the checker itself -------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "kvraft"


def test_the_checker_sees_lazy_and_type_checking_imports_as_edges(tmp_path: Path) -> None:
    """The old storage circle, in miniature: each edge written in a different way."""
    package = _write(tmp_path, {
        "kvraft/__init__.py": "",
        "kvraft/storage/__init__.py": "",
        "kvraft/storage/datadir.py":
            "def open():\n    from kvraft.storage.snapshot import recover\n",
        "kvraft/storage/snapshot.py":
            "from typing import TYPE_CHECKING\n"
            "from kvraft.storage.datadir import DataDir\n"
            "if TYPE_CHECKING:\n    from kvraft.storage.log_store import LevelDBStorage\n",
        "kvraft/storage/log_store.py": "from . import datadir\n",
    })
    graph = import_graph(package)
    assert graph["kvraft.storage.datadir"] == {"kvraft.storage.snapshot"}
    assert graph["kvraft.storage.snapshot"] == {"kvraft.storage.datadir",
                                                "kvraft.storage.log_store"}
    assert graph["kvraft.storage.log_store"] == {"kvraft.storage.datadir"}
    assert find_cycle(graph) in (
        ["kvraft.storage.datadir", "kvraft.storage.snapshot", "kvraft.storage.datadir"],
        ["kvraft.storage.datadir", "kvraft.storage.snapshot", "kvraft.storage.log_store",
         "kvraft.storage.datadir"])


def test_the_checker_resolves_names_and_relative_imports(tmp_path: Path) -> None:
    package = _write(tmp_path, {
        "kvraft/__init__.py": "",
        "kvraft/raft/__init__.py": "from kvraft.raft.log import Log\n",
        "kvraft/raft/log.py": "import kvraft\n",
        "kvraft/server/__init__.py": "from .config import X\n",
        "kvraft/server/config.py": "from kvraft.raft import Log\nfrom ..client import C\n",
        "kvraft/client.py": "",
    })
    graph = import_graph(package)
    assert graph["kvraft.raft"] == {"kvraft.raft.log"}
    assert graph["kvraft.raft.log"] == {"kvraft"}
    assert graph["kvraft.server"] == {"kvraft.server.config"}
    assert graph["kvraft.server.config"] == {"kvraft.raft", "kvraft.client"}
    assert find_cycle(graph) is None
    assert layer_violations(graph) == [
        "kvraft.server.config (layer 3) imports kvraft.client (layer 4)"]


@pytest.mark.parametrize(("module", "layer"), [
    ("kvraft", 0), ("kvraft.proto.kvraft_pb2", 0), ("kvraft.raft.tracker.progress", 1),
    ("kvraft.storage.keys", 2), ("kvraft.server.node", 3), ("kvraft.cli", 4),
    ("kvraft.cli_format", 4), ("kvraft.bench.loadgen", 4), ("kvraft.wire", 0),
    ("kvraft.procs", 4), ("kvraft.nowhere", None),
])
def test_a_module_is_in_the_layer_that_lists_it_or_its_package(module: str,
                                                                layer: int | None) -> None:
    assert layer_of(module) == layer
