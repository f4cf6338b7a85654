"""Load generation for `kvraft bench` and the side-by-side benchmarks (tests/bench/).

One generator drives any store through a small `Driver` interface, so kvraft, etcd and
a bare gRPC echo server are measured by the same code.
"""
