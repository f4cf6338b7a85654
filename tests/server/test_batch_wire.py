"""The Batch RPC's fast encoding: a client's BatchRequest bytes become the batch command
directly (kvraft.proto and command.proto share the wire format), and must decode to the
same command as building it op by op."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvraft.proto import kvraft_pb2 as pb
from kvraft.server import storage_adapter as sa
from kvraft.storage import commands

keys = st.binary(min_size=1, max_size=16)
ops = st.lists(st.one_of(st.tuples(st.just("put"), keys, st.binary(max_size=32)),
                         st.tuples(st.just("delete"), keys, st.just(b""))), max_size=20)


def request_of(batch: list[tuple[str, bytes, bytes]]) -> pb.BatchRequest:
    return pb.BatchRequest(ops=[
        pb.BatchOp(put=pb.PutRequest(key=k, value=v)) if kind == "put"
        else pb.BatchOp(delete=pb.DeleteRequest(key=k)) for kind, k, v in batch])


@given(ops, st.integers(min_value=1, max_value=(1 << 63) - 1))
def test_wire_encoding_equals_op_by_op_encoding(batch: list[tuple[str, bytes, bytes]],
                                               request_id: int) -> None:
    wire = sa.encode_batch_wire(request_id, request_of(batch).SerializeToString())
    rebuilt = sa.encode_batch(request_id, batch)
    decoded = commands.decode_command(wire)
    assert decoded == commands.decode_command(rebuilt)
    assert decoded.request_id == request_id
    assert decoded.WhichOneof("op") == "batch"
    assert [(o.WhichOneof("op"), o.put.key or o.delete.key, o.put.value)
            for o in decoded.batch.ops] == batch
