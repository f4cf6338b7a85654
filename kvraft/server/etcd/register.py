"""Which etcd services the client port serves: each module adds its own here."""
from __future__ import annotations

import grpc

from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from .kv import add_kv_service
from .watch import add_watch_service


def add_etcd_services(server: grpc.aio.Server, node: Node, config: NodeConfig,
                      metrics: NodeMetrics) -> list[str]:
    """Add every etcd service to `server`; returns their full names (for reflection
    and the health service)."""
    names: list[str] = []
    names.append(add_kv_service(server, node, config, metrics))
    names.append(add_watch_service(server, node, config))
    return names
