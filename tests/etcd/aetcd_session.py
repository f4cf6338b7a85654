"""One session of aetcd, a Python etcd v3 client nobody here wrote, against an endpoint;
prints what it saw as one JSON object (test_kv_python_client.py asserts it).

Run in a process of its own: aetcd registers etcd's .proto files (package etcdserverpb)
in protobuf's default pool, where kvraft's own copy of them already is in any process
that imported kvraft.proto.etcdserverpb_pb2 — the two cannot share a process.

    python tests/etcd/aetcd_session.py HOST PORT
"""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aetcd
import aetcd.exceptions


async def session(host: str, port: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with aetcd.Client(host=host, port=port, timeout=10) as client:
        put = await client.put(b"/py/a", b"1")
        seen["put_revision"] = put.header.revision
        got = await client.get(b"/py/a")
        assert got is not None
        seen["get"] = {"value": got.value.decode(), "create": got.create_revision,
                       "mod": got.mod_revision, "version": got.version,
                       "member_id": got.header.member_id,
                       "header_revision": got.header.revision}
        again = await client.put(b"/py/a", b"2", prev_kv=True)
        assert again.prev_kv is not None
        seen["prev_value"] = again.prev_kv.value.decode()
        seen["second_revision"] = again.header.revision
        await client.put(b"/py/b", b"3")
        prefix = await client.get_prefix(b"/py/")
        seen["prefix"] = [[kv.key.decode(), kv.value.decode()] for kv in prefix]
        seen["prefix_count"] = prefix.count
        seen["missing"] = await client.get(b"/py/never") is None

        tx = client.transactions
        ok, responses = await client.transaction(
            compare=[tx.value(b"/py/a") == b"2", tx.version(b"/py/a") == 2,
                     tx.mod(b"/py/a") == again.header.revision],
            success=[tx.put(b"/py/c", b"from-txn"), tx.get(b"/py/a")],
            failure=[tx.delete(b"/py/a")])
        seen["txn_succeeded"] = ok
        seen["txn_read"] = [value.decode() for value, _ in responses[1]]
        ok, _ = await client.transaction(compare=[tx.create(b"/py/b") < 1],
                                         success=[tx.put(b"/py/b", b"never")],
                                         failure=[tx.delete(b"/py/b")])
        seen["failed_txn_succeeded"] = ok
        seen["b_after_failure_branch"] = await client.get(b"/py/b") is None

        deleted = await client.delete(b"/py/a", prev_kv=True)
        assert deleted is not None
        seen["deleted"] = deleted.deleted
        seen["deleted_prev"] = deleted.prev_kv.value.decode() if deleted.prev_kv else None

        try:
            await client.put(b"", b"v")
            seen["empty_key_error"] = None
        except aetcd.exceptions.InvalidArgumentError as e:
            seen["empty_key_error"] = str(e)
    return seen


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    print(json.dumps(asyncio.run(session(host, port))))


if __name__ == "__main__":
    main()
