"""Which etcd services the client port serves: each module adds its own here."""
from __future__ import annotations

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc

from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from .cluster import EtcdClusterService
from .maintenance import EtcdMaintenanceService


def _full_name(service: str) -> str:
    return etcdpb.DESCRIPTOR.services_by_name[service].full_name


def add_etcd_services(server: grpc.aio.Server, node: Node, config: NodeConfig,
                      metrics: NodeMetrics) -> list[str]:
    """Add every etcd service to `server`; returns their full names (for reflection
    and the health service)."""
    names: list[str] = []
    etcdpb_grpc.add_ClusterServicer_to_server(EtcdClusterService(node, config, metrics), server)
    names.append(_full_name("Cluster"))
    etcdpb_grpc.add_MaintenanceServicer_to_server(
        EtcdMaintenanceService(node, config, metrics), server)
    names.append(_full_name("Maintenance"))
    return names
