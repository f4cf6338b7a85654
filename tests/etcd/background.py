"""etcdctl commands that run until stopped (lock, elect, make-mirror), started in the
background against a cluster: their output goes to a file the test reads while they run,
and each is stopped by its own pid, also when the test fails."""
from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.etcd.conftest import ETCDCTL, etcdctl_env

STOP_TIMEOUT_S = 5.0


class Background:
    """One etcdctl process; `output` holds its stdout and stderr, as written so far."""

    def __init__(self, argv: list[str], output: Path) -> None:
        self.output = output
        with output.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=etcdctl_env())

    def text(self) -> str:
        return self.output.read_text()

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGINT (etcdctl unlocks, resigns, or ends its mirror), SIGKILL if it lingers;
        its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        return self.proc.returncode


@contextlib.contextmanager
def etcdctl_background(endpoints: str, *args: str, output: Path) -> Iterator[Background]:
    """`etcdctl --endpoints=ENDPOINTS ARGS` until the block ends (stopped by its pid)."""
    assert ETCDCTL is not None, "etcdctl is not installed (Debian: etcd-client)"
    job = Background([ETCDCTL, f"--endpoints={endpoints}", "--dial-timeout=5s", *args],
                     output)
    try:
        yield job
    finally:
        job.stop()
