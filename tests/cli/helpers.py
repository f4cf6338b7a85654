"""Run the real `kvraft` console script of this venv as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

KVRAFT = Path(sys.executable).parent / "kvraft"
RUN_TIMEOUT_S = 120.0
GENEROUS_TIMEOUT_S = 30.0


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any KVRAFT_* variable of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVRAFT_")}
    # A generous deadline unless the test sets one (flag or env): a loaded CI machine
    # must not turn a slow answer into a failure.
    env["KVRAFT_TIMEOUT"] = str(GENEROUS_TIMEOUT_S)
    env.update(extra or {})
    return env


def run_kvraft(
    *args: str | bytes,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float = RUN_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    assert KVRAFT.exists(), f"{KVRAFT} is missing: is the package installed in the venv?"
    return subprocess.run([str(KVRAFT), *args], capture_output=True, env=clean_env(env),
                          cwd=cwd, timeout=timeout_s, check=False)


def assert_one_error_line(result: subprocess.CompletedProcess[bytes],
                          exit_code: int | None = None) -> str:
    """The run failed with ONE `error: ...` line on stderr and no traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"expected a failure, got 0 (stdout {result.stdout!r})"
    if exit_code is not None:
        assert result.returncode == exit_code, (result.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]
