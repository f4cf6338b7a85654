"""etcd's v3 gRPC API on kvraft's client port (SPEC §6-§8).

One module per etcd service (kv.py, watch.py, lease.py, cluster.py, maintenance.py,
auth.py), sharing header.py (the ResponseHeader every answer carries) and errors.py
(etcd's status codes and messages). `register.add_etcd_services` adds the ones that
exist to a grpc.aio server; run.py calls it.
"""
