"""The ceiling of a Python unary RPC here: kvraft's KV service answering at once.

Serves Put and Get on grpc.aio in one process (as a kvraft node does) without touching
Raft, disk or state, so the load generator measured against it shows what the RPC layer
alone costs on this machine. Run: python -m tests.bench.echo_server --port PORT
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc


class EchoKV(kvraft_pb2_grpc.KVServicer):
    async def Put(self, request, context):
        return kvraft_pb2.PutResponse()

    async def Get(self, request, context):
        return kvraft_pb2.GetResponse(found=True, value=request.key)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    kvraft_pb2_grpc.add_KVServicer_to_server(EchoKV(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
