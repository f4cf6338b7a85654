"""etcd's v3 gRPC API on kvraft's client port (SPEC §6-§8).

One module per etcd service (kv.py, watch.py, lease.py, cluster.py, maintenance.py,
auth.py), sharing header.py (the ResponseHeader every answer carries), errors.py
(etcd's status codes and messages) and limits.py (--max-request-bytes and the port's
receive limit). learner.py is the interceptor that restricts a learner to what etcd's
learner serves. `register.add_etcd_services` adds the services that exist to a
grpc.aio server; run.py calls it and installs the interceptor.
"""
