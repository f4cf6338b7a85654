"""One session of aetcd's watches (a Python etcd v3 client nobody here wrote) against
an endpoint; prints what it saw as one JSON object (test_watch_python_client.py asserts
it). Its own process, for the reason aetcd_session.py gives.

    python tests/etcd/aetcd_watch_session.py HOST PORT
"""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rtypes

EVENT_TIMEOUT_S = 10.0


async def take(events: Any, n: int) -> list[dict[str, Any]]:
    """The next `n` events of a watch, each bounded."""
    out: list[dict[str, Any]] = []
    it = events.__aiter__()
    while len(out) < n:
        e = await asyncio.wait_for(it.__anext__(), EVENT_TIMEOUT_S)
        out.append({"kind": str(e.kind), "key": e.kv.key.decode(), "value": e.kv.value.decode(),
                    "mod": e.kv.mod_revision,
                    # aetcd hands out the unset prev_kv of a watch with prev_kv as an
                    # empty KeyValue: no key means none.
                    "prev": e.prev_kv.value.decode() if e.prev_kv and e.prev_kv.key else None})
    return out


async def session(host: str, port: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with aetcd.Client(host=host, port=port, timeout=10) as client:
        prefix = await client.watch_prefix(b"/pw/", prev_kv=True)
        deletes = await client.watch(b"/pw/a", kind=aetcd.rtypes.EventKind.DELETE)
        first = (await client.put(b"/pw/a", b"1")).header.revision
        await client.put(b"/pw/b", b"2")
        await client.put(b"/other", b"x")
        await client.put(b"/pw/a", b"3")
        await client.delete(b"/pw/a")
        seen["first"] = first
        seen["prefix"] = await take(prefix, 4)
        seen["deletes"] = await take(deletes, 1)
        replay = await client.watch_prefix(b"/pw/", start_revision=first)
        seen["replay"] = await take(replay, 4)
        for w in (prefix, deletes, replay):
            await w.cancel()
        latest = (await client.put(b"/pw/c", b"4")).header.revision
        await client.compact(latest)
        try:
            old = await client.watch(b"/pw/a", start_revision=first)
            await take(old, 1)
            seen["compacted"] = None
        except aetcd.exceptions.RevisionCompactedError as e:
            seen["compacted"] = e.compacted_revision
        seen["latest"] = latest
    return seen


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    print(json.dumps(asyncio.run(session(host, port))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
