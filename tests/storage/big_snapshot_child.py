"""Run by test_big_snapshot.py in its own process, so peak RSS is this work's alone.

Fills a store with KEYS keys of VALUE_BYTES each, then — while another thread keeps
applying writes — takes a snapshot, streams it in chunks into a second data dir,
installs it there, and compares the two images key by key. Prints one JSON line with
the peak RSS (VmHWM, which includes LevelDB's mmapped files) and the sampled peak of
anonymous memory (what the process itself holds).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import threading
from pathlib import Path

from kvraft.raft import eraftpb
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, batch_command, put_command

KEYS = 100_000
VALUE_BYTES = 1024
OPS_PER_ENTRY = 500
CHUNK_BYTES = 1 << 20


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class AnonRssSampler(threading.Thread):
    """Peak anonymous RSS (heap, not LevelDB's mmapped table files, which the kernel
    counts in VmHWM but may drop at any time), sampled every few milliseconds."""

    def __init__(self, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, status_bytes("RssAnon"))
            self.samples += 1
            self.stop.wait(self.interval_s)


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def key(i: int) -> bytes:
    return b"key%07d" % i


def main(root: Path) -> None:
    src_dd, dst_dd = DataDir.open(root / "src", 1), DataDir.open(root / "dst", 2)
    src_store, src = LevelDBStorage(src_dd), KVStateMachine(src_dd)
    dst_store, dst = LevelDBStorage(dst_dd), KVStateMachine(dst_dd)
    index = 0
    for start in range(0, KEYS, OPS_PER_ENTRY):
        index += 1
        ops = [(key(i), os.urandom(VALUE_BYTES)) for i in range(start, start + OPS_PER_ENTRY)]
        entry = eraftpb.Entry(index=index, term=1, data=batch_command(ops))
        src_store.persist([entry], eraftpb.HardState(term=1, commit=index))
        src.apply([entry])
    data_bytes = KEYS * (VALUE_BYTES + len(key(0)))
    baseline = peak_rss_bytes()
    peak_was_reset = reset_peak_rss()
    if peak_was_reset:
        baseline = peak_rss_bytes()

    baseline_anon = status_bytes("RssAnon")
    sampler = AnonRssSampler()
    sampler.start()
    stop = threading.Event()
    applied_during = [0]

    def keep_applying() -> None:
        i = index
        while not stop.is_set():
            i += 1
            entry = eraftpb.Entry(index=i, term=1, data=put_command(key(i % (2 * KEYS)),
                                                                    b"changed"))
            src_store.persist([entry], eraftpb.HardState(term=1, commit=i))
            src.apply([entry])
            applied_during[0] += 1

    applier = threading.Thread(target=keep_applying, daemon=True)
    applier.start()
    try:
        handle = src.create_snapshot()
        receiver = dst.receive_snapshot(handle.metadata)
        chunk_sizes_max = 0
        for chunk in handle.chunks(CHUNK_BYTES):
            chunk_sizes_max = max(chunk_sizes_max, len(chunk))
            receiver.write(chunk)
        staged = receiver.finish()
        dst.install_snapshot(staged, dst_store)
    finally:
        stop.set()
        applier.join(timeout=60)
    # Key-by-key comparison against the image the snapshot was taken from.
    identical = True
    compared = 0
    with handle._snapshot.iterator(prefix=b"K") as a, dst_dd.db.iterator(prefix=b"K") as b:
        for left, right in zip(a, b, strict=False):
            compared += 1
            if left != right:
                identical = False
                break
    dst_count = sum(1 for _ in dst_dd.db.iterator(prefix=b"K", include_value=False))
    handle.close()
    sampler.stop.set()
    sampler.join(timeout=10)
    result = {
        "keys": KEYS, "data_bytes": data_bytes, "snapshot_index": staged.metadata.index,
        "dst_applied": dst.applied_index, "records": staged.record_count,
        "compared": compared, "dst_keys": dst_count, "identical": identical,
        "applied_during": applied_during[0], "src_applied_after": src.applied_index,
        "changed_after_snapshot": src.get(key((index + 1) % (2 * KEYS))) == b"changed",
        "chunk_bytes_max": chunk_sizes_max, "baseline_rss": baseline,
        "peak_rss": peak_rss_bytes(), "peak_was_reset": peak_was_reset,
        "baseline_anon_rss": baseline_anon, "peak_anon_rss": sampler.peak,
        "anon_samples": sampler.samples,
    }
    src_dd.close()
    dst_dd.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
