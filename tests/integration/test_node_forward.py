"""ForwardShard: store-and-forward between two real nodes, resumable across ISL windows."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from orbitvault.grpc.v1 import shard_store_pb2 as pb


def forward(node: Any, shard: Any, peer: Any, upload: bytes, **kw: Any) -> pb.ForwardShardResponse:
    req = pb.ForwardShardRequest(shard_id=shard.shard_id, target_address=peer.address, upload_id=upload, **kw)
    return node.stub.ForwardShard(req, timeout=30)


def head(node: Any, shard_id: bytes) -> pb.ShardInfo:
    return node.stub.HeadShard(pb.HeadShardRequest(shard_id=shard_id), timeout=10).shard


def test_forward_across_two_windows_resumes_and_moves(start_node: Any, make_shard: Any) -> None:
    a, b = start_node(), start_node()
    shard = make_shard()
    rows = len(shard.fragments)
    row_bytes = [len(f) + 32 for f in shard.fragments]
    a.put(shard)
    upload = b"f" * 16
    b_id = b.stub.NodeInfo(pb.NodeInfoRequest()).node_id

    # Window 1 carries 3 rows: the peer keeps them as a partial upload.
    first = forward(a, shard, b, upload, row_limit=3, target_node_id=b_id)
    assert (first.complete, first.committed_rows, first.row_count) == (False, 3, rows)
    assert first.bytes_sent == sum(row_bytes[:3])
    info = head(b, shard.shard_id)
    assert (info.state, info.committed_rows, info.upload_id) == (pb.SHARD_STATE_PARTIAL, 3, upload)

    # The same limit again sends nothing.
    again = forward(a, shard, b, upload, row_limit=3)
    assert (again.committed_rows, again.bytes_sent) == (3, 0)

    # Window 2 finishes it from row 3: only the missing rows travel; the source lets go.
    second = forward(a, shard, b, upload, delete_after=True)
    assert (second.complete, second.committed_rows, second.source_deleted) == (True, rows, True)
    assert second.bytes_sent == sum(row_bytes[3:])
    _, frags, _ = b.get_rows(shard.shard_id)
    assert frags == shard.fragments
    assert a.stored_ids() == []


def test_forward_refusals(start_node: Any, make_shard: Any) -> None:
    a, b = start_node(), start_node()
    shard = make_shard()
    with pytest.raises(grpc.RpcError) as err:
        forward(a, shard, b, b"f" * 16)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # not complete here
    a.put(shard)
    with pytest.raises(grpc.RpcError) as err:
        forward(a, shard, b, b"f" * 16, target_node_id=b"\x01" * 32)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert b.stored_ids() == []
    with pytest.raises(grpc.RpcError) as err:
        forward(a, shard, b, b"short")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        forward(a, shard, b, b"f" * 16, row_limit=len(shard.fragments) + 1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    b.server.stop(0)  # peer down: UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        forward(a, shard, b, b"f" * 16)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
