"""`python -m kvraft.server`: start one node with `kvraft serve`'s flags.

A thin stand-in for the CLI (kvraft.cli owns `kvraft serve`, its env vars and defaults);
kept for debugging the server without the CLI layer."""
from __future__ import annotations

import argparse
import sys

from .config import NodeConfig, ServeError
from .run import run_node


def parse_initial_cluster(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in filter(None, text.split(",")):
        ident, sep, address = part.partition("=")
        if not sep or not ident.strip().isdigit():
            raise ServeError(f"malformed --initial-cluster entry {part!r}: expected ID=HOST:PORT")
        out[int(ident)] = address.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvraft.server")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer-listen", required=True)
    p.add_argument("--initial-cluster", default="")
    p.add_argument("--join", action="store_true")
    p.add_argument("--metrics-listen")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    try:
        config = NodeConfig(
            node_id=args.id, data_dir=args.data_dir, listen=args.listen,
            peer_listen=args.peer_listen,
            initial_cluster=parse_initial_cluster(args.initial_cluster),
            join=args.join, metrics_listen=args.metrics_listen, log_level=args.log_level,
        )
        return run_node(config)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
