"""Child processes that run `kvraft serve`: the one process harness of `make run`
(kvraft.devcluster), the cluster tests (tests/cluster/harness.py) and the chaos tests
(tests/chaos/cluster.py).

A `ServeProcess` is one member's process slot. It starts the member's command with its
arguments and environment, appends the output to the member's log file (a marker line
per start, so one file tells every incarnation apart), signals it by PID only — SIGTERM
for a clean stop, SIGKILL, SIGSTOP/SIGCONT — and starts it again on the same data.
`stop_all` stops many at once within one bound. What a member is (its id, addresses,
data directory, how it is reached) stays with each caller; `serve_args` spells the
flags of `kvraft serve` for them.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from kvraft.client import Client, KvraftError, NodeStatus

# How long a stop (SIGTERM, then SIGKILL) and a wait for a process to exit may take.
STOP_TIMEOUT_S = 10.0
# How often the waits below look again.
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1  # prctl(2)


class ProcessError(RuntimeError):
    """A child process misbehaved; the message is one paragraph with its log tail."""


class ProcessExited(ProcessError):
    """The process exited while it was expected to run (e.g. while starting)."""


class StopTimeout(ProcessError):
    """The process ignored its stop signal for the whole bound and was SIGKILLed."""


def serve_command() -> list[str]:
    """`kvraft serve` run by this interpreter (works without the console script, and
    inside `ip netns exec`, which keeps the interpreter's path)."""
    return [sys.executable, "-m", "kvraft", "serve"]


def format_initial_cluster(members: Mapping[int, str]) -> str:
    """{1: "h:2380", 2: "h:2381"} -> "1=h:2380,2=h:2381" (--initial-cluster)."""
    return ",".join(f"{member_id}={address}" for member_id, address in sorted(members.items()))


def serve_args(node_id: int, data_dir: str | Path, listen: str, peer_listen: str, *,
               initial_cluster: Mapping[int, str] | None = None, join: bool = False,
               metrics_listen: str | None = None) -> list[str]:
    """The flags of `kvraft serve` for one member (append any others after them)."""
    args = ["--id", str(node_id), "--data-dir", str(data_dir), "--listen", listen,
            "--peer-listen", peer_listen]
    if metrics_listen is not None:
        args += ["--metrics-listen", metrics_listen]
    if join:
        args.append("--join")
    if initial_cluster:
        args += ["--initial-cluster", format_initial_cluster(initial_cluster)]
    return args


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its KVRAFT_* variables, plus `overrides`.

    A member takes its settings from its flags and `overrides` only, never from what
    the caller's shell happens to export (a stray KVRAFT_JOIN would change what every
    member does). Python output is unbuffered, so a log is complete at a SIGKILL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVRAFT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def node_status(address: str, timeout_s: float) -> NodeStatus | None:
    """The Status of the member at `address`, or None when it does not answer in time."""
    try:
        with Client([address], timeout=timeout_s) as client:
            return client.status(address, timeout=timeout_s)
    except KvraftError:
        return None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so a dev cluster
    killed without a chance to stop its members does not leave them running."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServeProcess:
    """One member's process: started, signalled and waited for by PID.

    Invariants:
    - `proc` is None until the first start, then the latest incarnation's Popen.
    - `paused` is True only while that process runs and was SIGSTOPped here.
    - `stop_requested` is True from the moment a stop or kill is sent here until the
      next start, so an exit nobody asked for is told apart (`exited_on_its_own`).
    - `starts` counts the starts, the marker of each incarnation in the log.
    """

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.stop_requested = False
        self.starts = 0

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The latest incarnation's exit code (None while it runs or before a start)."""
        return self.proc.poll() if self.proc is not None else None

    def exited_on_its_own(self) -> int | None:
        """The exit code when the process exited although no stop was sent here."""
        if self.stop_requested:
            return None
        return self.returncode

    # ------------------------------------------------------------------ start

    def start(self, argv: Sequence[str], env: Mapping[str, str], *,
              cwd: str | Path | None = None, own_session: bool = True,
              die_with_parent: bool = False) -> None:
        """Start an incarnation; its output goes to the end of the log file.

        own_session: a session of its own, so a Ctrl-C on the caller's terminal reaches
        the caller only, which then stops the process itself. die_with_parent: SIGTERM
        when the caller dies (Linux)."""
        assert not self.running(), f"{self.name} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"=== start #{self.starts} at {stamp}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env), cwd=cwd, start_new_session=own_session,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        self.paused = False
        self.stop_requested = False

    # ------------------------------------------------------------------ signals

    def send(self, sig: int) -> bool:
        """Send `sig` to the process by PID; False when it is not running."""
        if not self.running():
            return False
        assert self.proc is not None
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGKILL and wait: no clean shutdown, like a power cut of the process. A
        paused process is killed as it is (SIGKILL needs no SIGCONT)."""
        if self.proc is None:
            return
        self.stop_requested = True
        self.send(signal.SIGKILL)
        self.proc.wait(timeout=timeout_s)
        self.paused = False

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """A clean stop: resume it if paused, send `sig`, wait for the exit code. If it
        is still running after `timeout_s`, SIGKILL it and raise StopTimeout."""
        assert self.proc is not None, f"{self.name} was never started"
        self.stop_requested = True
        self.resume()
        self.send(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise StopTimeout(f"{self.name} (pid {self.proc.pid}) ignored signal {sig} for "
                              f"{timeout_s:g} s and was killed\n{self.log_tail()}") from None

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and state but runs no code."""
        if self.send(signal.SIGSTOP):
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.send(signal.SIGCONT)
        self.paused = False

    def record_exit(self, wait_status: int) -> int:
        """The caller reaped the process itself (os.wait): record its exit code."""
        assert self.proc is not None
        self.proc.returncode = os.waitstatus_to_exitcode(wait_status)
        self.paused = False
        return self.proc.returncode

    # ------------------------------------------------------------------ waits

    def check_running(self) -> None:
        """Raise ProcessExited (with the log's tail) unless the process runs."""
        if not self.running():
            raise ProcessExited(f"{self.name} exited with code {self.returncode}\n"
                                f"{self.log_tail()}")

    def wait_serving(self, probe: Callable[[], bool], timeout_s: float) -> None:
        """Poll `probe` (e.g. "its Status answers") until it returns True. Raises
        ProcessExited as soon as the process exits, TimeoutError after `timeout_s`. An
        exception from the probe counts as "not yet"."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while True:
            self.check_running()
            try:
                if probe():
                    return
            except Exception as e:  # a probe's connection errors while starting
                last_error = e
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} did not serve within {timeout_s:g} s "
                                   f"(last error: {last_error})\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)

    # ------------------------------------------------------------------ log

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log for {self.name})"
        return f"--- {self.name} log tail ---\n" + "\n".join(text)


def stop_all(processes: Iterable[ServeProcess], timeout_s: float = STOP_TIMEOUT_S,
             on_kill: Callable[[ServeProcess], None] | None = None) -> None:
    """SIGTERM every running process at once, wait for all within one `timeout_s`, then
    SIGKILL (and report through `on_kill`) any that still runs."""
    chosen = [p for p in processes if p.running()]
    for process in chosen:
        process.stop_requested = True
        process.resume()
        process.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in chosen:
        assert process.proc is not None
        try:
            process.proc.wait(timeout=max(deadline - time.monotonic(), POLL_INTERVAL_S))
        except subprocess.TimeoutExpired:
            if on_kill is not None:
                on_kill(process)
            process.kill(timeout_s)
