"""Short spellings for the unit tests."""
from __future__ import annotations

from kvraft.storage.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    KeyValue,
    MVCCStore,
    PutRequest,
    RangeRequest,
)


def put(store: MVCCStore, key: bytes, value: bytes = b"v", **kw: object) -> int:
    return store.put(PutRequest(key, value, **kw)).revision  # type: ignore[arg-type]


def delete(store: MVCCStore, key: bytes, end: bytes = b"") -> int:
    return store.delete_range(DeleteRangeRequest(key, end)).deleted


def get(store: MVCCStore, key: bytes, rev: int = 0) -> KeyValue | None:
    kvs = store.range(RangeRequest(key, revision=rev)).kvs
    return kvs[0] if kvs else None


def keys(store: MVCCStore, start: bytes = b"\x00", end: bytes = b"\x00", rev: int = 0,
         **kw: object) -> list[bytes]:
    resp = store.range(RangeRequest(start, end, revision=rev, **kw))  # type: ignore[arg-type]
    return [kv.key for kv in resp.kvs]


def cmp(key: bytes, target: CompareTarget, result: CompareResult, operand: object,
        range_end: bytes = b"") -> Compare:
    field = {CompareTarget.VALUE: "value", CompareTarget.VERSION: "version",
             CompareTarget.CREATE: "create_revision", CompareTarget.MOD: "mod_revision",
             CompareTarget.LEASE: "lease"}[target]
    return Compare(key, target, result, range_end=range_end,
                   **{field: operand})  # type: ignore[arg-type]
