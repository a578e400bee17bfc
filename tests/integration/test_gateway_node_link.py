"""GrpcNodeLink against a real node on loopback: the gateway's view of one ShardStore."""

from __future__ import annotations

from typing import Any

import pytest

from orbitvault.errors import NotFound, Unavailable
from orbitvault.grpc.node_link import GrpcNodeLink, _pack_rows
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.storage.store import RowBatch
from tests.unit.test_scrubber import wreck


def _batches(shard: Any, per: int = 5) -> list[RowBatch]:
    return [
        RowBatch(r, shard.fragments[r : r + per], shard.checksums[r : r + per])
        for r in range(0, len(shard.fragments), per)
    ]


def test_put_get_list_delete_round_trip(start_node: Any, make_shard: Any) -> None:
    node = start_node()
    shard = make_shard(catalog_record=b"opaque record")
    with GrpcNodeLink(node.address) as link:
        info = link.info()
        assert info.node_id == node.store.node_id and info.shard_count == 0
        link.put_shard(shard.header, _batches(shard))
        n = len(shard.fragments)
        got = link.get_rows(shard.shard_id, 0, n)
        assert list(got.fragments) == shard.fragments and list(got.checksums) == shard.checksums
        mid = link.get_rows(shard.shard_id, 3, 4)
        assert mid.first_row == 3 and list(mid.fragments) == shard.fragments[3:7]
        listed = link.list_shards(include_catalog_records=True)
        assert [s.header for s in listed] == [shard.header]
        assert link.list_shards()[0].header.catalog_record == b""
        assert link.list_shards(after=shard.shard_id) == []
        link.delete_shard(shard.shard_id)
        link.delete_shard(shard.shard_id)  # idempotent
        with pytest.raises(NotFound):
            link.get_rows(shard.shard_id, 0, 1)


def test_damaged_rows_come_back_as_none_not_an_error(start_node: Any, make_shard: Any) -> None:
    node = start_node(simulation=True)
    shard = make_shard()
    node.put(shard)
    wreck(node.store, shard.shard_id, 3, 8 * 32 + 100)  # row 3's fragment; no peers to repair from
    with GrpcNodeLink(node.address) as link:
        got = link.get_rows(shard.shard_id, 1, 5)
    assert got.fragments[2] is None and got.checksums[2] == shard.checksums[3]
    assert [f for i, f in enumerate(got.fragments) if i != 2] == [shard.fragments[r] for r in (1, 2, 4, 5)]


def test_list_follows_pages(start_node: Any, make_shard: Any) -> None:
    node = start_node()
    shards = [make_shard(data_len=100) for _ in range(5)]
    for s in shards:
        node.put(s)
    with GrpcNodeLink(node.address) as link:
        ids = sorted(s.shard_id for s in shards)
        assert [s.header.shard_id for s in link.list_shards()] == ids
        assert [s.header.shard_id for s in link.list_shards(limit=2)] == ids[:2]
        assert [s.header.shard_id for s in link.list_shards(after=ids[1], limit=10)] == ids[2:]


def test_a_node_that_is_down_is_unavailable(start_node: Any, make_shard: Any) -> None:
    node = start_node()
    address = node.address
    node.server.stop(0)
    with GrpcNodeLink(address, timeout_s=2, info_timeout_s=1) as link:
        with pytest.raises(Unavailable, match=address):
            link.info()
        shard = make_shard()
        with pytest.raises(Unavailable):
            link.put_shard(shard.header, _batches(shard))


def test_an_error_in_the_row_source_is_raised_as_itself(start_node: Any, make_shard: Any) -> None:
    node = start_node()
    shard = make_shard()

    def rows() -> Any:
        yield RowBatch(0, shard.fragments[:2], shard.checksums[:2])
        raise KeyError("the coder broke")

    with GrpcNodeLink(node.address) as link, pytest.raises(KeyError, match="the coder broke"):
        link.put_shard(shard.header, rows())
    assert node.stored_ids() == []  # all-or-nothing: nothing committed


def test_rows_are_packed_in_messages_of_about_one_mib() -> None:
    frag = b"x" * (300 * 1024)
    batches = [RowBatch(0, [frag] * 10, [b"c" * 32] * 10)]
    msgs = [pb.PutShardRequest.FromString(m).rows for m in _pack_rows(batches)]
    assert [m.first_row for m in msgs] == [0, 3, 6, 9]
    assert [f for m in msgs for f in m.fragments] == [frag] * 10
    small = [RowBatch(r, [b"y"], [b"c" * 32]) for r in range(2000)]
    assert [len(pb.PutShardRequest.FromString(m).rows.fragments) for m in _pack_rows(small)] == [1024, 976]
