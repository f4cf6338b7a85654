"""A replicated FIFO queue of your own, on kvraft's Raft core, LevelDB log and gRPC
peer transport (`kvraft.server.replicated.ReplicatedNode`).

Run one process per member, each given every member's peer address:

    python examples/replicated_queue.py --id 1 --data-dir q1 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
    (and --id 2 --data-dir q2, --id 3 --data-dir q3 with the same --peers)

Each process prints `ready`, then reads commands on stdin, one a line, and answers each
with one line on stdout:

    push ITEM   -> ok LENGTH            (the queue's length once ITEM is in it)
    pop         -> popped ITEM | empty
    list        -> queue ["ITEM", ...]  (linearizable: after a read barrier)
    a failure   -> error retry-safe: ... | error unknown: ...

The queue itself is the state machine below: `apply` is called with every committed
command, in the same order on every member, and what it returns for a command is the
answer its proposer gets. The queue lives in memory; the Raft log in --data-dir is
durable, so a restarted member replays the log and has the same queue again.
End of stdin, SIGTERM or SIGINT stop the process cleanly.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from collections import deque

from kvraft.server.config import ServeError
from kvraft.server.replicated import ReplicaConfig, ReplicaError, ReplicatedNode

REQUEST_TIMEOUT_S = 5.0
ITEM_BYTES_MAX = 64 << 10


class Queue:
    """The replicated state machine: a FIFO of strings."""

    def __init__(self) -> None:
        self.items: deque[str] = deque()

    def apply(self, index: int, data: bytes) -> object:
        """Deterministic: the same commands in the same order give the same queue."""
        command = json.loads(data)
        if command["op"] == "push":
            self.items.append(command["item"])
            return len(self.items)
        if command["op"] == "pop":
            return self.items.popleft() if self.items else None
        raise ValueError(f"unknown command at index {index}: {command!r}")


async def answer(node: ReplicatedNode, queue: Queue, line: str) -> str:
    op, _, arg = line.strip().partition(" ")
    try:
        if op == "push" and arg and len(arg.encode()) <= ITEM_BYTES_MAX:
            length = await node.propose(json.dumps({"op": "push", "item": arg}).encode(),
                                        REQUEST_TIMEOUT_S)
            return f"ok {length}"
        if op == "pop" and not arg:
            item = await node.propose(json.dumps({"op": "pop"}).encode(), REQUEST_TIMEOUT_S)
            return "empty" if item is None else f"popped {item}"
        if op == "leader" and not arg:
            return f"leader {node.leader_id}"    # this member's view; 0 when unknown
        if op == "list" and not arg:
            await node.read_barrier(REQUEST_TIMEOUT_S)
            return "queue " + json.dumps(list(queue.items))
    except ReplicaError as e:
        return f"error {'retry-safe' if e.retry_safe else 'unknown'}: {e}"
    return f"error usage: push ITEM | pop | list | leader (got {line.strip()!r})"


def read_lines_into(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str]) -> None:
    """On a daemon thread (a blocked read must not keep the process alive): every line
    of stdin, then "" at its end."""
    while True:
        line = sys.stdin.readline()
        try:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        except RuntimeError:
            return   # the loop is closed: the process is exiting
        if not line:
            return


async def serve(config: ReplicaConfig) -> int:
    queue = Queue()
    node = ReplicatedNode(config, queue.apply)
    await node.start()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lines.put_nowait, "")
    threading.Thread(target=read_lines_into, args=(loop, lines), daemon=True).start()
    print("ready", flush=True)
    try:
        while node.fatal is None:
            line = await lines.get()
            if not line:
                break   # end of stdin or a signal
            if line.strip():
                print(await answer(node, queue, line), flush=True)
    finally:
        await node.stop()
    return 1 if node.fatal is not None else 0


def parse_peers(text: str) -> dict[int, str]:
    peers = {}
    for item in text.split(","):
        member_id, sep, address = item.strip().partition("=")
        if not sep or not member_id.isdigit():
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {item!r}")
        peers[int(member_id)] = address
    return peers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--peers", type=parse_peers, required=True,
                        help="every member as ID=HOST:PORT, comma-separated")
    parser.add_argument("--tick-interval", type=float, default=0.1, help="seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ReplicaConfig(node_id=args.id, data_dir=args.data_dir, peers=args.peers,
                           tick_interval_s=args.tick_interval)
    try:
        return asyncio.run(serve(config))
    except ServeError as e:
        print(f"replicated_queue: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
