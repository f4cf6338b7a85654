"""docs/etcd.md's compatibility tables: every row that calls an RPC or an etcdctl
command supported or partial names the test that shows it, and that test exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "etcd.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row under a "Compatibility" heading."""
    rows: list[list[str]] = []
    in_section = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_section = line.startswith("## Compatibility")
        elif in_section and line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_every_supported_or_partial_row_names_a_test_that_exists() -> None:
    rows = table_rows(PAGE.read_text())
    claimed = [r for r in rows if r[-2].startswith(("supported", "partial"))]
    assert len(claimed) >= 10, "the tables lost their rows"
    for row in claimed:
        ref = TEST_REF.fullmatch(row[-1])
        assert ref, f"row {row[:2]} claims support but names no test"
        path, name = ROOT / ref.group(1), ref.group(2)
        assert path.is_file(), f"row {row[:2]}: no file {ref.group(1)}"
        assert re.search(rf"^def {name}\(", path.read_text(), re.M), (
            f"row {row[:2]}: {ref.group(1)} has no test {name}")


def test_every_rpc_of_the_cluster_and_maintenance_services_has_a_row() -> None:
    from kvraft.proto import etcdserverpb_pb2 as etcdpb

    text = PAGE.read_text()
    for service in ("Cluster", "Maintenance", "KV", "Watch", "Lease"):
        for method in etcdpb.DESCRIPTOR.services_by_name[service].methods:
            assert f"`{method.name}`" in text, f"docs/etcd.md has no row for {method.name}"
