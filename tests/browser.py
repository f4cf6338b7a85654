"""A real browser for the status page's tests: Debian's headless Chromium.

`dump_dom(url)` loads the page, lets its script run for `budget_ms` of *virtual* time
(Chromium advances the page's clock as fast as it can while no fetch is pending, so
the page's 2-second refreshes cost no wall time), and returns the DOM as the script
left it. `Dom` reads back what the tests assert: the body's `data-state`, the text of
an element by id, the rows of a table body.

Chromium runs in its own session with its own profile directory, reaching loopback
only (QUIET_FLAGS); on a timeout its whole process group is killed (by the group of
the PID started here) and the profile removed, also when the test fails.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

CHROMIUM = shutil.which("chromium")
CHROMIUM_TIMEOUT_S = 60

# Only loopback: none of Chromium's own traffic (updates, metrics, safe browsing), and
# every name but 127.0.0.1 unresolvable, so nothing leaves the machine.
QUIET_FLAGS = ("--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-extensions",
               "--disable-default-apps", "--disable-breakpad", "--no-pings",
               "--disable-domain-reliability",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's `chromium` package is not installed (.ci/run installs it)")


def _chromium(args: list[str]) -> str:
    assert CHROMIUM is not None
    profile = tempfile.mkdtemp(prefix="kvraft-chromium-")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}", *QUIET_FLAGS, *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: "
                             f"{' '.join(command)}") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {' '.join(command)}"
    return out


def dump_dom(url: str, budget_ms: int = 1000) -> Dom:
    return Dom(_chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url]))


def screenshot(url: str, path: str, budget_ms: int = 1000) -> None:
    """For looking at the page by hand (not asserted)."""
    _chromium([f"--virtual-time-budget={budget_ms}", "--window-size=1100,800",
               f"--screenshot={path}", url])


class Dom(HTMLParser):
    """The parsed DOM of one dump. `ids`: element id -> its text; `rows`: tbody id ->
    its rows, each the list of its cells' texts; `state`: <body data-state>; `tags`:
    every tag name seen, with its count."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.html = html
        self.ids: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.state = ""
        self.tags: dict[str, int] = {}
        self._open_ids: list[tuple[str, str, list[str]]] = []   # (tag, id, text parts)
        self._tbody: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        if tag == "body":
            self.state = a.get("data-state") or ""
        if tag == "tbody" and a.get("id"):
            self._tbody = a["id"]
            self.rows[self._tbody] = []
        elif tag == "tr" and self._tbody is not None:
            self.rows[self._tbody].append([])
        elif tag == "td" and self._tbody is not None:
            self._cell = []
        if a.get("id"):
            self._open_ids.append((tag, a["id"] or "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._tbody is not None:
            self.rows[self._tbody][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._tbody = None
        if self._open_ids and self._open_ids[-1][0] == tag:
            _, element_id, parts = self._open_ids.pop()
            self.ids[element_id] = "".join(parts)

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, _, parts in self._open_ids:
            parts.append(data)
