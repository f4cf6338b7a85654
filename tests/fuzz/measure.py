"""The measurement of issue 14, "Bad input" (docs/security.md): random payloads sent to
the ten methods of kvraft.KV and kvraft.Cluster of a real single member; prints the
answers' status codes and what the member's log got.

    python -m tests.fuzz.measure [PAYLOADS]      # default 3000, seed 14
"""
from __future__ import annotations

import collections
import random
import sys
import time

import grpc

from tests.cluster.harness import LocalCluster, retry_unavailable

from .methods import methods

SEED = 14
PAYLOAD_BYTES_MAX = 64


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 3000
    targets = [m for m in methods("client") if m.path.startswith(("/kvraft.KV/",
                                                                   "/kvraft.Cluster/"))]
    assert len(targets) == 10, [m.path for m in targets]
    rng = random.Random(SEED)
    codes: collections.Counter[str] = collections.Counter()
    with LocalCluster.start(1) as cluster:
        cluster.wait_leader()
        node = cluster.nodes[1]
        offset = node.log_path.stat().st_size
        started = time.monotonic()
        with grpc.insecure_channel(node.client_address) as channel:
            for i in range(count):
                m = targets[i % len(targets)]
                payload = rng.randbytes(rng.randint(1, PAYLOAD_BYTES_MAX))
                try:
                    m.call(channel, payload, 5.0)
                    codes["OK"] += 1
                except grpc.RpcError as e:
                    codes[e.code().name] += 1
        elapsed_s = time.monotonic() - started
        retry_unavailable(lambda: cluster.put(1, b"measure/after", b"ok"))
        serving = cluster.get(1, b"measure/after") == b"ok"
        with open(node.log_path, "rb") as f:
            f.seek(offset)
            log = f.read().decode("utf-8", "replace").splitlines()
    print(f"{count} payloads of 1..{PAYLOAD_BYTES_MAX} random bytes (seed {SEED}) to "
          f"{len(targets)} methods in {elapsed_s:.1f} s; serving after: {serving}")
    print("answers:", ", ".join(f"{k} {v}" for k, v in codes.most_common()))
    print(f"log lines written meanwhile: {len(log)}; ERROR lines: "
          f"{sum(' ERROR ' in line for line in log)}; tracebacks: "
          f"{sum(line.startswith('Traceback') for line in log)}; parse-guard lines: "
          f"{sum('kvraft.server.parse_guard' in line for line in log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
