"""Snapshot round trip of 100,000 keys (~100 MB) taken while applies continue:
streamed, installed elsewhere, identical — in bounded memory (issue: durable storage).

Runs in a child process (big_snapshot_child.py) so the memory measured is this work's.
LevelDB reads its tables through mmap, which the kernel counts in VmHWM as file pages
it can drop at will; the bound that matters is anonymous memory, sampled in the child.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANON_GROWTH_CEILING_BYTES = 64 << 20   # far below the ~100 MB data set
PEAK_RSS_CEILING_BYTES = 1 << 30       # generous: includes mmapped table files


@pytest.mark.slow
def test_snapshot_of_100k_keys_during_applies_is_identical_in_bounded_memory(
        tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.storage.big_snapshot_child", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"snapshot round trip: {r['keys']} keys, {r['data_bytes'] >> 20} MiB; anonymous "
          f"RSS {r['baseline_anon_rss'] >> 20} -> peak {r['peak_anon_rss'] >> 20} MiB; "
          f"VmHWM {r['peak_rss'] >> 20} MiB; {r['applied_during']} applies meanwhile")
    assert r["records"] == r["keys"] == r["dst_keys"] == r["compared"]
    assert r["identical"], "installed image differs from the snapshot"
    assert r["dst_applied"] == r["snapshot_index"]
    assert r["applied_during"] > 0 and r["changed_after_snapshot"], (
        "no apply ran during the snapshot, so consistency was not exercised")
    assert r["src_applied_after"] > r["snapshot_index"]
    assert r["chunk_bytes_max"] <= 1 << 20
    assert r["data_bytes"] > ANON_GROWTH_CEILING_BYTES  # else the bound proves nothing
    assert r["anon_samples"] > 10
    assert r["peak_anon_rss"] - r["baseline_anon_rss"] < ANON_GROWTH_CEILING_BYTES
    assert r["peak_rss"] < PEAK_RSS_CEILING_BYTES
