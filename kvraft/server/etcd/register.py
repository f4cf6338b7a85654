"""Which etcd services the client port serves: each module adds its own here."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc

from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from .auto_compaction import AutoCompactor
from .cluster import EtcdClusterService
from .corrupt_check import CorruptionCheck
from .kv import add_kv_service
from .lease import SERVICE_NAME as LEASE_SERVICE_NAME
from .lease import add_lease_service
from .maintenance import EtcdMaintenanceService
from .member_calls import add_member_calls
from .quota import QuotaWatch
from .watch import add_watch_service


def _full_name(service: str) -> str:
    return etcdpb.DESCRIPTOR.services_by_name[service].full_name


def add_etcd_services(server: grpc.aio.Server, node: Node, config: NodeConfig,
                      metrics: NodeMetrics,
                      on_close: list[Callable[[], Awaitable[None]]] | None = None,
                      peer_server: grpc.aio.Server | None = None, peer_tls: bool = False
                      ) -> list[str]:
    """Add every etcd service to `server`; returns their full names (for reflection
    and the health service). A service with work of its own to wait for at shutdown
    appends its close to `on_close`: the caller awaits each after the servers and the
    node stopped, before it closes the store. With `peer_server`, the calls members
    make to each other are served there too (member_calls.py; `peer_tls`: its TLS)."""
    names: list[str] = []
    closers = on_close if on_close is not None else []
    names.append(add_kv_service(server, node, config, metrics))
    names.append(add_watch_service(server, node, config, closers))
    lease = add_lease_service(server, node, config, metrics)
    names.append(LEASE_SERVICE_NAME)
    cluster = EtcdClusterService(node, config, metrics)
    etcdpb_grpc.add_ClusterServicer_to_server(cluster, server)
    names.append(_full_name("Cluster"))
    maintenance = EtcdMaintenanceService(node, config, metrics)
    etcdpb_grpc.add_MaintenanceServicer_to_server(maintenance, server)
    closers.append(maintenance.close)
    names.append(_full_name("Maintenance"))
    if peer_server is not None:
        add_member_calls(peer_server, node, peer_tls, lease, cluster, maintenance)
    _start(QuotaWatch(node, config.quota_backend_bytes, maintenance.db_dir).run(), closers)
    node.metrics.quota_backend_bytes.set(config.quota_backend_bytes)
    if config.auto_compaction is not None:
        _start(AutoCompactor(node, config.auto_compaction).run(), closers)
    if config.corrupt_check_interval_s > 0:
        _start(CorruptionCheck(node, config, config.corrupt_check_interval_s).run(), closers)
    return names


def _start(work: Coroutine[object, object, None], closers: list[Callable[[], Awaitable[None]]]
           ) -> None:
    """A background task of the etcd layer, cancelled at shutdown."""
    task = asyncio.get_running_loop().create_task(work)

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    closers.append(close)
