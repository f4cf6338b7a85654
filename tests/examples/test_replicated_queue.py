"""examples/replicated_queue.py as three real processes on loopback: commands sent to
any member are applied in one order everywhere, and a member killed with SIGKILL
replays its LevelDB log into the same queue on restart."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import free_port

pytestmark = pytest.mark.cluster

READY_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 15.0      # a command's own deadline is 5 s; a retry loop adds more
RETRY_DEADLINE_S = 30.0      # retry-safe failures (no leader yet) are re-sent until this
RETRY_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0
TICK_INTERVAL_S = "0.05"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replicated_queue.py"


class Member:
    """One example process: commands on its stdin, answers read off its stdout."""

    def __init__(self, node_id: int, data_dir: Path, peers: str, log_path: Path) -> None:
        self.node_id, self.data_dir, self.peers, self.log_path = node_id, data_dir, peers, log_path
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()

    def start(self) -> None:
        self.lines = queue.Queue()
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE), "--id", str(self.node_id),
                 "--data-dir", str(self.data_dir), "--peers", self.peers,
                 "--tick-interval", TICK_INTERVAL_S],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                bufsize=1)
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        assert self.readline(READY_TIMEOUT_S) == "ready", self.log_tail()

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    def readline(self, timeout_s: float) -> str:
        try:
            return self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"node {self.node_id}: no answer within {timeout_s}s\n"
                                 f"{self.log_tail()}") from None

    def ask(self, command: str) -> str:
        """Send a command; re-send it while it fails retry-safe (e.g. no leader yet)."""
        assert self.proc is not None and self.proc.stdin is not None
        deadline = time.monotonic() + RETRY_DEADLINE_S
        while True:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            answer = self.readline(ANSWER_TIMEOUT_S)
            if not answer.startswith("error retry-safe") or time.monotonic() > deadline:
                return answer
            time.sleep(RETRY_INTERVAL_S)

    def queue_items(self) -> list[str]:
        answer = self.ask("list")
        assert answer.startswith("queue "), f"node {self.node_id}: {answer}"
        return json.loads(answer[len("queue "):])

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """Close stdin (the example's clean stop), then SIGKILL by PID if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
            return None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for_live_leader(members: dict[int, Member], alive: tuple[int, ...]) -> int:
    """Poll (bounded) until every member in `alive` names the same leader among them."""
    deadline = time.monotonic() + RETRY_DEADLINE_S
    while True:
        views = {members[i].ask("leader") for i in alive}
        if len(views) == 1 and (view := views.pop()).startswith("leader ") \
                and int(view.split()[1]) in alive:
            return int(view.split()[1])
        assert time.monotonic() < deadline, f"no common live leader among {alive}: {views}"
        time.sleep(RETRY_INTERVAL_S)


@pytest.fixture
def members(tmp_path: Path) -> Iterator[dict[int, Member]]:
    ports = {i: free_port() for i in (1, 2, 3)}
    peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in ports.items())
    group = {i: Member(i, tmp_path / f"q{i}", peers, tmp_path / f"q{i}.log") for i in ports}
    try:
        for m in group.values():
            m.start()
        yield group
    finally:
        for m in group.values():
            m.stop()


def test_three_processes_apply_one_order_and_a_restarted_one_replays_it(
        members: dict[int, Member]) -> None:
    pushed = []
    for n in range(9):
        member = members[n % 3 + 1]       # every member takes writes
        item = f"item-{n}-via-{member.node_id}"
        assert member.ask(f"push {item}") == f"ok {n + 1}", member.log_tail()
        pushed.append(item)
    # Pops through a follower and the others: the answers come from the replicated apply.
    popped = [members[i].ask("pop") for i in (3, 2)]
    assert popped == [f"popped {pushed[0]}", f"popped {pushed[1]}"]
    expected = pushed[2:]
    for m in members.values():
        assert m.queue_items() == expected, f"node {m.node_id} disagrees"

    members[2].kill9()
    # A write forwarded to a dead leader is lost (its outcome unknown), so write only
    # once both survivors follow a live leader: member 2 may have been the leader.
    wait_for_live_leader(members, alive=(1, 3))
    assert members[1].ask("push after-kill") == f"ok {len(expected) + 1}"
    expected.append("after-kill")
    members[2].start()                    # the same data directory: the log is replayed
    for m in members.values():
        assert m.queue_items() == expected, f"node {m.node_id} disagrees after the restart"
    assert all(m.stop() == 0 for m in members.values()), "a member did not stop cleanly"


def test_bad_peers_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--id", "4", "--data-dir", str(tmp_path / "q"),
         "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"],
        capture_output=True, text=True, timeout=STOP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "replicated_queue: peers does not list this node's id 4"]
