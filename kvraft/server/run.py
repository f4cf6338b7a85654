"""`run_node`: open the data directory, start the node and its gRPC servers, serve until
SIGTERM/SIGINT, then shut down cleanly (docs/INTERFACES.md, "kvraft.server")."""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc, peer_pb2_grpc
from kvraft.wire import GRPC_MESSAGE_BYTES_MAX

from . import storage_adapter as sa
from .auth.interceptor import AccessCheck, AuthInterceptor
from .auth.tokens import TokenStore
from .config import NodeConfig, ServeError
from .etcd.auth import add_auth_service
from .etcd.learner import LearnerGuard
from .etcd.limits import receive_bytes_max
from .etcd.register import add_etcd_services
from .health import HealthChecks
from .kv_service import ClusterService, KVService
from .metrics import NodeMetrics
from .node import Node
from .parse_guard import ParseGuard
from .peer_service import PeerService
from .status import StatusBoard
from .tls import client_port_files, peer_port_files, server_credentials, validate_tls
from .transport import CHANNEL_OPTIONS, METADATA_OPTIONS

log = logging.getLogger("kvraft.server")

SHUTDOWN_GRACE_S = 2.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    try:
        logging.getLogger("kvraft").setLevel(level.upper())
    except ValueError as e:
        raise ServeError(f"unknown log level {level!r}") from e


def run_node(config: NodeConfig) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if the node failed.

    Raises ServeError (one line) when the node cannot start."""
    config.validate()
    validate_tls(config)
    configure_logging(config.log_level)
    loop_factory = event_loop_factory(config.event_loop)
    if not config.profile_path:
        return _run_on(loop_factory, config)
    # A development aid (`kvraft serve --profile FILE`): a cProfile of the node's Python
    # code (the event loop and every round), written when it stops.
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(_run_on, loop_factory, config)
    finally:
        profiler.dump_stats(config.profile_path.replace("{id}", str(config.node_id)))


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the event loop `kvraft serve --event-loop NAME` runs on."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as e:
        raise ServeError(f"--event-loop uvloop is not available here ({e}); "
                         "use --event-loop asyncio") from None
    return uvloop.new_event_loop


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The library the running loop comes from ("uvloop", "asyncio"): what the node
    really runs on, logged at start."""
    return type(loop).__module__.split(".")[0]


def _run_on(loop_factory: Callable[[], asyncio.AbstractEventLoop], config: NodeConfig) -> int:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(config))


def _client_server_options(config: NodeConfig) -> list[tuple[str, int]]:
    # Let oversized requests reach the handler, so they get INVALID_ARGUMENT with a
    # reason instead of the transport's RESOURCE_EXHAUSTED: kvraft's own up to twice
    # its limits, etcd's up to --max-request-bytes plus etcd's overhead (etcd/limits.py).
    limit = max(max(config.max_batch_bytes, config.max_value_bytes) * 2 + (1 << 20),
                receive_bytes_max(config.max_request_bytes))
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.so_reuseport", 0),
        *METADATA_OPTIONS,
    ]


def _bind(server: grpc.aio.Server, address: str, what: str,
          credentials: grpc.ServerCredentials | None = None) -> None:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:
        raise ServeError(f"cannot listen on {what} {address}: {e}") from None
    if port == 0:
        raise ServeError(f"cannot listen on {what} {address}: address unusable or in use")


async def _serve(config: NodeConfig) -> int:
    store = sa.open_store(config)
    try:
        metrics = NodeMetrics()
        node = Node(config, store, metrics)
        # Access on the client port (SPEC §8): every call but health's and reflection's
        # passes the interceptor's check; tokens are this member's (auth/tokens.py).
        tokens = TokenStore()
        access = AccessCheck(node, tokens, bool(getattr(config, "client_cert_auth", False)))
        # A request that does not parse is refused by ParseGuard, first on both servers
        # (parse_guard.py), so no other interceptor or servicer sees it. A learner then
        # refuses the etcd calls etcd's learner does (etcd/learner.py), before the access
        # check, as etcd checks it.
        node_name = f"node {config.node_id}"
        client_server = grpc.aio.server(
            options=_client_server_options(config),
            interceptors=[ParseGuard("client", metrics, node_name),
                          LearnerGuard(lambda: node.is_learner), AuthInterceptor(access)])
        peer_server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
                                      interceptors=[ParseGuard("peer", metrics, node_name)])
        kvraft_pb2_grpc.add_KVServicer_to_server(KVService(node, config, metrics), client_server)
        kvraft_pb2_grpc.add_ClusterServicer_to_server(
            ClusterService(node, config, metrics), client_server
        )
        # TLS (tls.py): the peer port's is always mutual; the client port's requires a
        # client certificate with --client-cert-auth. Both follow their files' rotation.
        peer_files, client_files = peer_port_files(config), client_port_files(config)
        etcd_closers: list[Callable[[], Awaitable[None]]] = []
        # The etcd calls members make to each other ride the peer port (member_calls.py).
        etcd_names = add_etcd_services(client_server, node, config, metrics, etcd_closers,
                                       peer_server, peer_tls=peer_files is not None)
        etcd_names.append(add_auth_service(client_server, node, config, metrics, tokens))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, client_server)
        reflection.enable_server_reflection(
            [
                kvraft_pb2.DESCRIPTOR.services_by_name["KV"].full_name,
                kvraft_pb2.DESCRIPTOR.services_by_name["Cluster"].full_name,
                *etcd_names,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ],
            client_server,
        )
        peer_pb2_grpc.add_PeerServicer_to_server(
            PeerService(node, metrics, peer_tls=peer_files is not None), peer_server)
        _bind(peer_server, config.peer_listen, "--peer-listen",
              server_credentials(peer_files, True, f"node {config.node_id} peer port")
              if peer_files else None)
        _bind(client_server, config.listen, "--listen",
              server_credentials(client_files, config.client_cert_auth,
                                 f"node {config.node_id} client port")
              if client_files else None)
        # Made before the node starts, so it sees the first leader (status.py).
        status_board = StatusBoard(node) if config.metrics_listen else None
        if config.metrics_listen:
            try:
                metrics.serve(config.metrics_listen,
                              HealthChecks(node, asyncio.get_running_loop()), status_board)
            except OSError as e:
                raise ServeError(
                    f"cannot listen on --metrics-listen {config.metrics_listen}: {e.strerror}"
                ) from None
        await peer_server.start()
        node.start()
        status_task = (asyncio.get_running_loop().create_task(status_board.run(),
                                                              name="status-board")
                       if status_board is not None else None)
        await client_server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in ("kvraft.KV", "kvraft.Cluster", *etcd_names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("node %d: serving clients on %s%s, peers on %s%s (cluster %016x, %s loop)%s",
                 config.node_id, config.listen,
                 (" (TLS, client certificates required)" if config.client_cert_auth
                  else " (TLS)") if client_files else "",
                 config.peer_listen, " (mutual TLS)" if peer_files else "", node.cluster_id,
                 _loop_name(asyncio.get_running_loop()),
                 " — waiting to be added" if config.join and not node.member_ids() else "")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stopped_task = loop.create_task(node.wait_stopped())
        stop_task = loop.create_task(stop.wait())
        await asyncio.wait({stopped_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        stopped_task.cancel()
        log.info("node %d: shutting down", config.node_id)
        await health_servicer.enter_graceful_shutdown()
        # Stop accepting and fail everything in flight with UNAVAILABLE together.
        await asyncio.gather(
            client_server.stop(SHUTDOWN_GRACE_S), node.stop(),
        )
        if status_task is not None and status_board is not None:
            status_task.cancel()      # it would stop at its next publish by itself
            status_board.publish()    # the page says "shutting down" while it can
        await peer_server.stop(0.2)
        for close in etcd_closers:   # before the store closes (finally, below)
            await close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("node %d: stopped", config.node_id)
        return 1 if node.fatal is not None else 0
    finally:
        store.close()
