"""The test side of lazyfs: start a mount, cut its power, remount, always clean up.

    with LazyMount(tmp / "fs1", mode="ext4") as fs:    # mounted at fs.mountpoint
        ...write through fs.mountpoint...
        report = fs.cut(seed=7)                         # the volatile layer is gone
        fs.start()                                      # the reboot

Each LazyMount owns a directory: backing/ (the durable layer), mnt/ (the mount point),
control.sock and lazyfs.log. `close()` — run by the context manager also when a test
fails — stops the lazyfs process it started (by PID) and detaches the mount with
`fusermount3 -u -z` if it is still there.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
CONTROL_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
CONTROL_REPLY_BYTES_MAX = 1 << 20


def clean_up_on_signals() -> None:
    """Make SIGTERM, SIGHUP and SIGINT unwind the program (SystemExit / KeyboardInterrupt)
    so that every `finally` runs: the runs' teardown kills the nodes and unmounts.
    Python's default dies at once on SIGTERM, and a program started in the background
    by a shell inherits SIGINT ignored; either way its mounts and nodes would stay."""

    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, unwind)
    signal.signal(signal.SIGINT, signal.default_int_handler)


class LazyFsError(RuntimeError):
    """lazyfs could not be started, controlled or stopped; carries its log tail."""


def fuse_unavailable_reason() -> str | None:
    """Why lazyfs cannot run here, or None when it can (FUSE device, fusermount3,
    pyfuse3)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return f"pyfuse3 is not importable ({e}); it needs libfuse3-dev to build"
    return None


def mounted(path: Path) -> bool:
    """Whether `path` is a mount point, read from /proc/self/mountinfo (a stat of a
    FUSE mount whose process hangs would hang too)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def force_unmount(path: Path) -> None:
    """Detach a mount (lazily: works even when its process is gone or hung)."""
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


class LazyMount:
    def __init__(self, root: Path, mode: str = "ext4") -> None:
        self.root = Path(root)
        self.mode = mode
        self.backing = self.root / "backing"
        self.mountpoint = self.root / "mnt"
        self.control = self.root / "control.sock"
        self.log_path = self.root / "lazyfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0  # how many times it was mounted (1 + reboots)

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> LazyMount:
        """Mount (or remount after a cut): wait until the control channel answers."""
        assert self.proc is None or self.proc.poll() is not None, "lazyfs is running"
        force_unmount(self.mountpoint)  # a mount left by a killed lazyfs
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"=== mount #{self.mounts + 1} ({self.mode})\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.powerloss.lazyfs", "--backing", str(self.backing),
                 "--mount", str(self.mountpoint), "--control", str(self.control),
                 "--mode", self.mode],
                stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                start_new_session=True)
        self.mounts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise LazyFsError(f"lazyfs exited with {self.proc.returncode} while "
                                  f"mounting {self.mountpoint}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, LazyFsError):
                if self.request("ping", timeout_s=1.0)["ok"] and mounted(self.mountpoint):
                    return self
            if time.monotonic() >= deadline:
                raise LazyFsError(f"lazyfs did not mount {self.mountpoint} within "
                                  f"{START_TIMEOUT_S}s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cut(self, seed: int, torn_probability: float = 0.5) -> dict[str, Any]:
        """The power cut. Every process using the mount must already be dead. Returns
        what the cut lost and tore (model.CutReport); the mount is gone afterwards."""
        reply = self.request("cut", seed=seed, torn_probability=torn_probability)
        self._wait_exit()
        return reply["report"]

    def stop(self) -> None:
        """A clean shutdown: everything durable, then unmounted."""
        if self.running():
            self.request("stop")
            self._wait_exit()

    def arm(self, syncs: int) -> None:
        """The power fails right after `syncs` more fsyncs (see lazyfs `arm`)."""
        self.request("arm", syncs=syncs)

    def arm_wal_write(self, wal_writes: int = 1) -> None:
        """The power fails right after `wal_writes` more writes to a WAL (*.log) file
        return, before the writer can fsync them: a cut inside a synced write."""
        self.request("arm", wal_writes=wal_writes)

    def arm_volatile_wal_sync(self, syncs: int = 1) -> None:
        """The power fails right after `syncs` more fsyncs of WAL (*.log) files whose
        names stay volatile (posix mode: made since their directory's last fsync)."""
        self.request("arm", volatile_wal_syncs=syncs)

    def sync_journal(self) -> list[str]:
        """The paths fsynced so far (the first ones), in order; directories end in /."""
        return self.request("journal")["syncs"]

    def counters(self) -> dict[str, int]:
        return self.request("counters")["counters"]

    def close(self) -> None:
        """Stop the lazyfs process (SIGTERM, then SIGKILL, by PID) and make sure
        nothing is left mounted. Idempotent; safe whatever state things are in."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        force_unmount(self.mountpoint)

    def __enter__(self) -> LazyMount:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the control channel ---------------------------------------------------------
    def request(self, op: str, timeout_s: float = CONTROL_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.control))
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < CONTROL_REPLY_BYTES_MAX:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        if not data:
            raise LazyFsError(f"lazyfs at {self.control} closed the channel on {op!r}")
        reply = json.loads(data)
        if not reply.get("ok"):
            raise LazyFsError(f"lazyfs refused {op!r}: {reply.get('error')}")
        return reply

    def _wait_exit(self) -> None:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LazyFsError(f"lazyfs did not exit after unmounting:\n{self.log_tail()}"
                              ) from None
        if code != 0 or mounted(self.mountpoint):
            raise LazyFsError(f"lazyfs exited with {code}, mounted={mounted(self.mountpoint)}"
                              f":\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no lazyfs log)"
        return "\n".join(text)
