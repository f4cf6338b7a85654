"""The contract pages in docs/ stay in step with the code they describe, and the
repository cites its own docs rather than a file outside it."""
from __future__ import annotations

import importlib.resources
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

import kvraft.raft
from kvraft.cli import cli as cli_group
from kvraft.proto import kvraft_pb2

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONTRACT_PAGES = ["index.md", "raft.md", "wire-protocol.md", "cli.md", "client.md",
                  "entry-points.md", "embedding.md"]


def page(name: str) -> str:
    return (DOCS / name).read_text()


def test_every_contract_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [name for name in CONTRACT_PAGES if f": {name}" not in nav]
    assert not missing, f"pages missing from mkdocs.yml nav: {missing}"


def test_the_raft_page_names_every_public_name_of_kvraft_raft() -> None:
    text = page("raft.md")
    names = kvraft.raft.__all__
    assert "RawNode" in names and len(names) > 20
    missing = [n for n in names if n != "Raft" and f"`{n}" not in text and f"{n}`" not in text]
    assert not missing, f"docs/raft.md does not mention {missing}"


def test_the_wire_protocol_page_includes_the_proto_and_names_every_rpc() -> None:
    text = page("wire-protocol.md")
    assert '--8<-- "protos/kvraft.proto"' in text
    rpcs = [m.name for s in kvraft_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods]
    assert "Put" in rpcs and "TransferLeader" in rpcs
    missing = [r for r in rpcs if f"`{r}`" not in text]
    assert not missing, f"docs/wire-protocol.md does not describe {missing}"


def _commands(group: click.Group, prefix: str = "kvraft") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found.update(_commands(command, path))
        else:
            found[path] = command
    return found


def test_the_cli_page_names_every_command_and_every_serve_option() -> None:
    text = page("cli.md")
    commands = _commands(cli_group)
    assert "kvraft serve" in commands and "kvraft member add" in commands
    missing = [c for c in commands if f"`{c}" not in text]
    assert not missing, f"docs/cli.md does not describe {missing}"
    serve_options = [opt for p in commands["kvraft serve"].params
                     for opt in getattr(p, "opts", []) if opt.startswith("--")]
    assert "--initial-cluster" in serve_options
    missing = [o for o in serve_options if f"`{o}" not in text]
    assert not missing, f"docs/cli.md does not describe serve's {missing}"


def test_the_entry_points_page_names_every_make_target_in_make_help() -> None:
    help_text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True,
                               text=True, check=True, timeout=30).stdout
    targets = sorted({m.group(1) for m in re.finditer(r"^make ([a-z-]+)", help_text, re.M)})
    assert "run" in targets and "docs" in targets
    text = page("entry-points.md")
    missing = [t for t in targets if f"`make {t}" not in text]
    assert not missing, f"docs/entry-points.md does not describe make {missing}"


def test_nothing_in_the_repository_cites_a_contract_outside_it() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
    assert "README.md" in tracked
    this_file = Path(__file__).resolve().relative_to(ROOT).as_posix()
    citing = []
    for name in tracked:
        path = ROOT / name
        if name == this_file or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if "shared/SPEC" in text:
            citing.append(name)
    assert not citing, f"cite ../shared/SPEC.md instead of docs/: {citing}"


def test_the_package_is_marked_typed() -> None:
    assert importlib.resources.files("kvraft").joinpath("py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^"kvraft" = \["py.typed"\]', pyproject, re.M), \
        "py.typed is not in the package data, so a wheel would leave it out"


@pytest.mark.slow
def test_the_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs)")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (make docs)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "raft" / "index.html").is_file()
