"""`make run` (SPEC §5): a local 5-node cluster in the foreground that prints how to reach
it; Ctrl-C (SIGINT to the foreground process group) stops every node; the next run
restarts the same cluster from its data."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.cli.helpers import clean_env, run_kvraft
from tests.cluster.harness import wait_until

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


class MakeRun:
    """`make run` in its own session (so a SIGINT to its group is our Ctrl-C)."""

    def __init__(self, run_dir: Path) -> None:
        # -o install: never reinstall the shared venv from a test.
        self.proc = subprocess.Popen(
            ["make", "-s", "-o", "install", "run", f"RUN_DIR={run_dir}"], cwd=REPO,
            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; "
                                     f"output so far: {self.output}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"make run ended before {pattern!r}: {self.output}")
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def node_pids(self) -> list[int]:
        return [int(m.group(1)) for line in self.output
                if (m := re.search(r"^  node \d+ .* pid (\d+)$", line))]

    def interrupt(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        return self.proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """Cleanup on failure: the whole session we started, by its group id."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; its parent (the dev cluster) reaps it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def run_once(run_dir: Path, check) -> list[str]:
    run = MakeRun(run_dir)
    try:
        run.wait_for(r"^Ctrl-C stops every node\.$", READY_TIMEOUT_S)
        pids = run.node_pids()
        assert len(pids) == 5, run.output
        endpoints = next(line.split("=", 1)[1] for line in run.output
                         if "export KVRAFT_ENDPOINTS=" in line)
        assert len(endpoints.split(",")) == 5
        check(endpoints, run, pids)
        run.interrupt()
        for line in iter(run.lines.get, None):  # drain what it printed while stopping
            run.output.append(line)
    finally:
        run.kill()
    assert "every node stopped" in run.output, run.output
    assert not [pid for pid in pids if alive(pid)], "a node outlived make run"
    return run.output


def test_make_run_serves_five_nodes_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    def first(endpoints: str, run: MakeRun, pids: list[int]) -> None:
        put = run_kvraft("put", "hello", "world", env={"KVRAFT_ENDPOINTS": endpoints})
        assert put.returncode == 0, put.stderr

        def one_leader_all_reachable() -> bool:
            status = run_kvraft("status", "--json", env={"KVRAFT_ENDPOINTS": endpoints})
            members = json.loads(status.stdout or b"[]")
            return ([m["id"] for m in members] == [1, 2, 3, 4, 5]
                    and all(m["reachable"] for m in members)
                    and [m["role"] for m in members].count("leader") == 1)

        wait_until(one_leader_all_reachable, READY_TIMEOUT_S, "a status with one leader")

    output = run_once(run_dir, first)
    assert any(line.startswith("leader: node ") for line in output)
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [
        f"node{i}" for i in range(1, 6)]

    def second(endpoints: str, run: MakeRun, pids: list[int]) -> None:
        got = run_kvraft("get", "hello", env={"KVRAFT_ENDPOINTS": endpoints})
        assert (got.returncode, got.stdout) == (0, b"world\n"), got.stderr
        # A node killed under the dev cluster is reported; the others keep serving.
        os.kill(pids[4], signal.SIGKILL)
        run.wait_for(rf"^node 5 \(pid {pids[4]}\) exited with code -9; 4 node\(s\) still "
                     "running$", READY_TIMEOUT_S)
        again = run_kvraft("get", "hello", env={"KVRAFT_ENDPOINTS": endpoints})
        assert (again.returncode, again.stdout) == (0, b"world\n"), again.stderr

    run_once(run_dir, second)  # same ports and data: the write survived
