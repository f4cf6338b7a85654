"""Imported by kvraft.cli before anything imports grpc: gRPC core reads its environment
once, when it loads, so these defaults only work from here. An operator's own
GRPC_VERBOSITY or GRPC_EXPERIMENTS wins (GRPC_EXPERIMENTS= , empty, gives gRPC's own
defaults back).

GRPC_VERBOSITY: gRPC's default writes an INFO line to stderr for every failed TLS
handshake ("Handshake failed with error SSL_ERROR_SSL ..."), which would put a second
line under the CLI's one-line errors and let anyone flood a node's log with bad
handshakes. Only gRPC's errors are kept.

GRPC_EXPERIMENTS, for `kvraft serve` only: gRPC's EventEngine does a socket's reads and
writes on threads of its own and hands each completion to the thread that polls the
completion queue, which then wakes the asyncio loop: three threads and two wakeups per
event. With the EventEngine off for client and server sockets, the polling thread does
the I/O itself. Measured here (grpcio 1.85): a unary echo call in one process went from
about 550 to about 400 µs of CPU, and the EventEngine threads' ~18,000 context switches
per 3,000 calls went to ~100 (BENCHMARKS.md's kvraft-eventengine rows are the whole
cluster both ways). The client commands keep gRPC's default: their one-line errors name
the cause from gRPC's status details, which the two I/O paths word differently (the
older one says "connection refused (111)", or "fd shutdown (connect() timed out)" for a
channel backing off after a refusal), and a one-shot command's CPU does not matter.
`serve` is recognised as the first argument: it takes no options of the root group.
"""
import os
import sys

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
if sys.argv[1:2] == ["serve"]:
    os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")
