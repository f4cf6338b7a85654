"""Reading a harness node's log: the lines of its current start, its last error.

tests/cluster/harness.py appends every start of a node to one log file, each opened by
a "=== start #N" line. After a power cut a victim's log holds its previous start too,
which ends in whatever the cut did to it (with an armed lazyfs: the EIO of the frozen
mount), so a report must read only the current start.
"""
from __future__ import annotations

from pathlib import Path

START_MARK = "=== start #"
# The CLI's line for a port it cannot bind (kvraft/cli.py: "error: cannot listen on
# --peer-listen HOST:PORT: address already in use"): another process on this machine
# took the port after the harness picked it (or after the node's previous start
# released it). The machine's doing, not the store's.
ADDRESS_TAKEN = "address already in use"


def current_start(log_path: Path) -> list[str]:
    """The lines the node logged since its last start."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    starts = [n for n, line in enumerate(lines) if line.startswith(START_MARK)]
    return lines[starts[-1] + 1:] if starts else lines


def last_error(log_path: Path) -> str:
    """'it said: <the last error line of the current start>', or that there is none."""
    errors = [line.strip() for line in current_start(log_path)
              if line.startswith("error:") or "Error" in line or "CRITICAL" in line
              or "exiting:" in line]
    return f"it said: {errors[-1]}" if errors else "it logged no error"


def address_taken(log_path: Path) -> str | None:
    """The current start's line saying it could not bind its address, if any."""
    for line in current_start(log_path):
        if ADDRESS_TAKEN in line:
            return line.strip()
    return None
