"""A stand-in for `kvraft serve` that tests the chaos harness itself.

It speaks the KV and Cluster services of SPEC §2 without Raft:

* `--mode primary`: node 1 owns the data (a JSON file rewritten on every write, so a
  SIGKILL loses nothing); every other node forwards each request to node 1 over the
  node network, so partitions, kills and pauses all make requests fail or time out,
  but every answer is linearizable.
* `--mode local`: every node answers from its own copy and never talks to the others —
  not linearizable as soon as clients touch two nodes; the checker must say so.

    python -m tests.chaos.fake_node --id 2 --listen 10.213.7.2:2379 \
        --primary 10.213.7.1:2379 --data-dir DIR --mode primary
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc

FORWARD_TIMEOUT_S = 1.0
WORKERS = 16


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    def get(self, key: bytes) -> bytes | None:
        with self.lock:
            v = self.data.get(key.hex())
        return None if v is None else bytes.fromhex(v)

    def put(self, key: bytes, value: bytes) -> None:
        with self.lock:
            self.data[key.hex()] = value.hex()
            self._save()

    def cas(self, key: bytes, expected: bytes | None, value: bytes) -> tuple[bool, bytes | None]:
        with self.lock:
            cur = self.data.get(key.hex())
            current = None if cur is None else bytes.fromhex(cur)
            if current != expected:
                return False, current
            self.data[key.hex()] = value.hex()
            self._save()
            return True, value


class FakeKV(pb_grpc.KVServicer, pb_grpc.ClusterServicer):
    def __init__(self, node_id: int, store: Store | None, primary: str | None) -> None:
        self.node_id = node_id
        self.store = store
        self.forward = None
        if store is None:
            assert primary is not None
            channel = grpc.insecure_channel(primary)
            self.forward = pb_grpc.KVStub(channel)

    def _header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(member_id=self.node_id, leader_id=1, term=1)

    def _forwarded(self, method: str, request: object, context: grpc.ServicerContext) -> object:
        assert self.forward is not None
        try:
            return getattr(self.forward, method)(request, timeout=FORWARD_TIMEOUT_S)
        except grpc.RpcError as err:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"primary unreachable: {err.code()}")

    # gRPC method names are the service's.
    def Put(self, request, context):
        if self.store is None:
            return self._forwarded("Put", request, context)
        self.store.put(request.key, request.value)
        return pb.PutResponse(header=self._header())

    def Get(self, request, context):
        if self.store is None:
            return self._forwarded("Get", request, context)
        v = self.store.get(request.key)
        return pb.GetResponse(header=self._header(), found=v is not None, value=v or b"")

    def CompareAndSwap(self, request, context):
        if self.store is None:
            return self._forwarded("CompareAndSwap", request, context)
        expected = request.expected if request.HasField("expected") else None
        ok, current = self.store.cas(request.key, expected, request.value)
        return pb.CompareAndSwapResponse(header=self._header(), succeeded=ok,
                                         found=current is not None, current=current or b"")

    def Status(self, request, context):
        role = "leader" if self.node_id == 1 else "follower"
        return pb.StatusResponse(header=self._header(), role=role)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--primary", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--mode", choices=["primary", "local"], required=True)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    owns_data = args.mode == "local" or args.id == 1
    servicer = FakeKV(args.id, Store(data_dir / "data.json") if owns_data else None,
                      args.primary)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    pb_grpc.add_KVServicer_to_server(servicer, server)
    pb_grpc.add_ClusterServicer_to_server(servicer, server)
    server.add_insecure_port(args.listen)
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(grace=1.0)


if __name__ == "__main__":
    main()
