"""Generated protobuf and gRPC modules, compiled from protos/*.proto at install time.

The *_pb2*.py files here are build output (see protos/compile.py) and are not in git.
"""
