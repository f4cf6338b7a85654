"""examples/five_mem_node.py: five in-memory RawNodes commit and apply 100 proposals."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import load_example

SCRIPT_TIMEOUT_S = 60


def test_every_node_applies_all_100_proposals_in_one_order() -> None:
    example = load_example("five_mem_node")
    network = example.run(seed=7)
    expected = {b"key%03d=value %d" % (n, n) for n in range(100)}
    assert sorted(network) == [1, 2, 3, 4, 5]
    reference = network[1].applied
    assert len(reference) == 100 and set(reference) == expected
    for node_id, peer in network.items():
        assert peer.applied == reference, f"node {node_id} applied another order"
        assert len(peer.kv) == 100
        voters = sorted(peer.storage.initial_state().conf_state.voters)
        assert voters == [1, 2, 3, 4, 5], f"node {node_id} ended with voters {voters}"


def test_the_script_runs_as_written(examples_dir: Path) -> None:
    result = subprocess.run([sys.executable, str(examples_dir / "five_mem_node.py")],
                            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert all("applied 100 proposals (same order as node 1)" in ln for ln in lines), lines
