"""The ShardStore service over real gRPC on loopback: round trips, paging, bounds, refusals."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import ShardRows, StripeCoder, checksum
from orbitvault.grpc import convert
from orbitvault.grpc.v1 import common_pb2
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.storage.scrubber import STATE_KEY, ScrubState
from tests.integration.conftest import SMALL_GEOMETRY, NodeClient, TestShard
from tests.unit.test_scrubber import wreck


def rpc_code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.PutShardResponse):
            list(result)
    return info.value.code(), info.value.details()


def assert_empty(node: NodeClient) -> None:
    assert node.stored_ids() == []
    assert node.stub.NodeInfo(pb.NodeInfoRequest()).used_bytes == 0


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows_per_message", [1, 7, 64, 1024])
def test_put_get_round_trip(node: NodeClient, make_shard: Any, rows_per_message: int) -> None:
    shard = make_shard()
    resp = node.put(shard, rows_per_message)
    assert resp.shard_id == shard.shard_id and resp.complete
    assert resp.committed_rows == shard.header.row_count == len(shard.fragments)
    assert resp.stored_bytes == node.store.required_bytes(shard.header)
    assert resp.committed_unix_ms > 0
    first, frags, sums = node.get_rows(shard.shard_id)
    assert (first, frags, sums) == (0, shard.fragments, shard.checksums)


def test_stripe_decodes_from_shards_read_back(node: NodeClient, make_shard: Any) -> None:
    """Put all k+m shards of a stripe, read back k of them (parity included), decode the data."""
    g = SMALL_GEOMETRY
    object_id = os.urandom(32)
    shards = [make_shard(shard_index=i, object_id=object_id, seed=7) for i in range(g.n)]
    for s in shards:
        node.put(s)
    pieces = []
    for i in (1, 3, 4, 5):  # k=4 of 6, two of them parity
        _, frags, sums = node.get_rows(shards[i].shard_id)
        pieces.append(ShardRows(i, 0, frags, sums))
    decoded = StripeCoder(g).decode(shards[0].header.stripe_data_len, pieces)
    assert decoded.data == shards[0].stripe
    listed = node.stub.ListShards(pb.ListShardsRequest(object_id=object_id)).shards
    assert sorted(s.header.shard_index for s in listed) == list(range(g.n))


def test_get_with_header_and_ranges(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard(catalog_record=b"opaque catalog record")
    node.put(shard)
    n = shard.header.row_count
    msgs = node.get(shard.shard_id, include_header=True, rows=pb.RowRange(first_row=2, row_count=3))
    assert msgs[0].WhichOneof("body") == "header"
    assert msgs[0].header == shard.proto_header()
    assert all(m.WhichOneof("body") == "rows" for m in msgs[1:])
    for first, count, want in [
        (0, 1, range(0, 1)),
        (5, 0, range(5, n)),
        (n - 1, 1, range(n - 1, n)),
        (3, n - 3, range(3, n)),
    ]:
        got_first, frags, sums = node.get_rows(shard.shard_id, rows=pb.RowRange(first_row=first, row_count=count))
        assert got_first == want.start
        assert frags == shard.fragments[want.start : want.stop]
        assert sums == shard.checksums[want.start : want.stop]
    for first, count in [(n, 0), (n + 5, 1), (n - 1, 2), (0, n + 1)]:
        code, details = rpc_code(
            lambda f=first, c=count: node.get(shard.shard_id, rows=pb.RowRange(first_row=f, row_count=c))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "row" in details


def test_get_packs_about_one_mib_per_message(node: NodeClient, make_shard: Any) -> None:
    g = Geometry(2, 1, fragment_size=64 * 1024, stripe_size=2 * 64 * 1024 * 40)
    shard = make_shard(geometry=g, data_len=g.stripe_size)
    node.put(shard)
    msgs = node.get(shard.shard_id)
    assert [len(m.rows.fragments) for m in msgs] == [16, 16, 8]  # 16 rows of 64 KiB: about 1 MiB
    assert all(m.ByteSize() < 1.1 * 2**20 for m in msgs)


def test_large_fragments_travel_alone(node: NodeClient, make_shard: Any) -> None:
    """8 MiB fragments exceed gRPC's default 4 MiB message limit: the node takes and sends them alone."""
    g = Geometry(1, 1, fragment_size=8 * 2**20, stripe_size=16 * 2**20)
    shard = make_shard(geometry=g, data_len=9 * 2**20)
    node.put(shard, rows_per_message=1)
    msgs = node.get(shard.shard_id)
    assert [len(m.rows.fragments) for m in msgs] == [1, 1]
    assert [f for m in msgs for f in m.rows.fragments] == shard.fragments


def test_head_delete_and_accounting(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard(catalog_record=b"c" * 2048)
    put = node.put(shard)
    info = node.stub.HeadShard(pb.HeadShardRequest(shard_id=shard.shard_id)).shard
    assert info.header == shard.proto_header()
    assert info.state == pb.SHARD_STATE_COMPLETE
    assert info.committed_rows == shard.header.row_count
    assert info.stored_bytes == put.stored_bytes
    assert node.stub.NodeInfo(pb.NodeInfoRequest()).used_bytes == put.stored_bytes

    gone = node.stub.DeleteShard(pb.DeleteShardRequest(shard_id=shard.shard_id))
    assert gone.existed and gone.freed_bytes == put.stored_bytes
    again = node.stub.DeleteShard(pb.DeleteShardRequest(shard_id=shard.shard_id))
    assert not again.existed and again.freed_bytes == 0
    assert_empty(node)
    for call in (
        lambda: node.stub.HeadShard(pb.HeadShardRequest(shard_id=shard.shard_id)),
        lambda: node.get(shard.shard_id),
        lambda: list(node.stub.ReadRows(pb.ReadRowsRequest(shard_id=shard.shard_id, rows=[0]))),
    ):
        code, details = rpc_code(call)
        assert code == grpc.StatusCode.NOT_FOUND and shard.shard_id.hex() in details
    node.put(shard)  # deleted shards can be stored again


def test_put_twice_is_already_exists(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard()
    node.put(shard)
    code, details = rpc_code(lambda: node.put(shard))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "delete it first" in details


def test_list_pages_in_shard_id_order(node: NodeClient, make_shard: Any) -> None:
    object_id = os.urandom(32)
    shards = [
        make_shard(data_len=100, object_id=object_id if i % 3 == 0 else None, catalog_record=b"rec") for i in range(25)
    ]
    for s in shards:
        node.put(s)
    want = sorted(s.shard_id for s in shards)

    def pages(**kwargs: Any) -> list[list[pb.ShardInfo]]:
        out, token = [], ""
        while True:
            page = node.stub.ListShards(pb.ListShardsRequest(page_token=token, **kwargs))
            out.append(list(page.shards))
            token = page.next_page_token
            if not token:
                return out

    paged = pages(page_size=7)
    assert [len(p) for p in paged] == [7, 7, 7, 4]
    assert [s.header.shard_id for p in paged for s in p] == want
    assert all(s.header.catalog_record == b"" for p in paged for s in p)
    one = pages()  # page_size 0 means 100
    assert len(one) == 1 and [s.header.shard_id for s in one[0]] == want
    exact = pages(page_size=25)
    assert [len(p) for p in exact] == [25]  # an exact fit still ends with an empty token
    with_records = pages(page_size=10, include_catalog_records=True)
    assert all(s.header.catalog_record == b"rec" for p in with_records for s in p)
    by_object = pages(page_size=2, object_id=object_id)
    assert [s.header.shard_id for p in by_object for s in p] == sorted(s.shard_id for s in shards[::3])

    # A token names a position: shards deleted or added meanwhile do not break paging.
    first = node.stub.ListShards(pb.ListShardsRequest(page_size=5))
    node.stub.DeleteShard(pb.DeleteShardRequest(shard_id=first.shards[-1].header.shard_id))
    rest = node.stub.ListShards(pb.ListShardsRequest(page_size=1000, page_token=first.next_page_token))
    assert [s.header.shard_id for s in rest.shards] == want[5:]


@pytest.mark.parametrize(
    ("request_kwargs", "fragment"),
    [
        ({"page_size": 1001}, "page_size"),
        ({"page_token": "zz" * 32}, "page_token"),
        ({"page_token": "ab"}, "page_token"),
        ({"page_token": "a" * 300}, "page_token"),
        ({"object_id": b"x" * 31}, "object_id"),
    ],
)
def test_list_refuses_bad_requests(node: NodeClient, request_kwargs: dict[str, Any], fragment: str) -> None:
    code, details = rpc_code(lambda: node.stub.ListShards(pb.ListShardsRequest(**request_kwargs)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details


def test_read_rows(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard()
    node.put(shard)
    rows = [0, 3, 4, shard.header.row_count - 1]
    got = [r for msg in node.stub.ReadRows(pb.ReadRowsRequest(shard_id=shard.shard_id, rows=rows)) for r in msg.rows]
    assert [r.row for r in got] == rows
    assert all(r.status == pb.ROW_STATUS_OK for r in got)
    assert [r.fragment for r in got] == [shard.fragments[i] for i in rows]
    assert [r.checksum for r in got] == [shard.checksums[i] for i in rows]
    n = shard.header.row_count
    for bad, words in [
        ([3, 3], "ascending"),
        ([4, 2], "ascending"),
        ([n], "beyond"),
        ([], "empty"),
        (list(range(1025)), "1024"),
    ]:
        code, details = rpc_code(lambda b=bad: node.stub.ReadRows(pb.ReadRowsRequest(shard_id=shard.shard_id, rows=b)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, (bad, details)


def read_until_status(node: Any, shard_id: bytes) -> tuple[list[bytes], list[bytes], grpc.RpcError | None]:
    """Every row a GetShard stream delivers, and the error status it ended with (None if OK)."""
    frags: list[bytes] = []
    sums: list[bytes] = []
    try:
        for msg in node.stub.GetShard(pb.GetShardRequest(shard_id=shard_id), timeout=10):
            frags += msg.rows.fragments
            sums += msg.rows.checksums
    except grpc.RpcError as exc:
        return frags, sums, exc
    return frags, sums, None


def test_damaged_rows_are_never_sent_as_data(start_node: Any, make_shard: Any) -> None:
    node = start_node(simulation=True)
    shard = make_shard()
    node.put(shard)
    wreck(node.store, shard.shard_id, 3, 8 * 32 + 100)  # row 3's fragment, beyond the node's correction
    node.store.flip_bit(shard.shard_id, 1, 8 * 32 + 7)  # one flipped bit in row 1: corrected on read
    # No peers to repair from: every healthy row arrives, row 3 as an empty marker, then DATA_LOSS names it.
    frags, sums, error = read_until_status(node, shard.shard_id)
    assert error is not None and error.code() is grpc.StatusCode.DATA_LOSS
    assert "rows 3 are damaged" in error.details()
    assert frags[3] == b"" and sums[3] == shard.checksums[3]
    assert frags[:3] + frags[4:] == shard.fragments[:3] + shard.fragments[4:]
    reads = [r for m in node.stub.ReadRows(pb.ReadRowsRequest(shard_id=shard.shard_id, rows=[2, 3])) for r in m.rows]
    assert [r.status for r in reads] == [pb.ROW_STATUS_OK, pb.ROW_STATUS_DAMAGED]
    assert reads[1].fragment == b"" and reads[1].checksum == shard.checksums[3]


def test_damaged_rows_are_repaired_before_get_when_a_repairer_is_set(start_node: Any, make_shard: Any) -> None:
    shard = make_shard()
    calls: list[tuple[bytes, list[int]]] = []
    holder: dict[str, NodeClient] = {}

    def repair(header: Any, rows: Any) -> list[int]:
        calls.append((header.shard_id, list(rows)))
        for r in rows:  # stands in for a rebuild from k siblings
            holder["node"].store.write_row(header.shard_id, r, shard.fragments[r])
        return list(rows)

    node = holder["node"] = start_node(simulation=True, repair=repair)
    node.put(shard)
    wreck(node.store, shard.shard_id, 5, 8 * 40)
    _, frags, _ = node.get_rows(shard.shard_id)
    assert frags == shard.fragments
    assert calls == [(shard.shard_id, [5])]
    _, frags, _ = node.get_rows(shard.shard_id)  # repaired for good: no second repair
    assert frags == shard.fragments and len(calls) == 1


def test_failing_repairer_falls_back_to_an_empty_fragment(start_node: Any, make_shard: Any) -> None:
    def repair(header: Any, rows: Any) -> list[int]:
        raise RuntimeError("peers unreachable")

    node = start_node(simulation=True, repair=repair)
    shard = make_shard()
    node.put(shard)
    wreck(node.store, shard.shard_id, 0, 8 * 40)
    frags, sums, error = read_until_status(node, shard.shard_id)
    assert error is not None and error.code() is grpc.StatusCode.DATA_LOSS
    assert frags[0] == b"" and sums[0] == shard.checksums[0] and frags[1:] == shard.fragments[1:]


# --- identity, health, scheduled mode ---------------------------------------------------------------------


def test_node_info(start_node: Any, make_shard: Any) -> None:
    node = start_node(name="sat-a1", satellite="OV-11", plane="2", capacity="2GiB")
    shard = make_shard()
    put = node.put(shard)
    info = node.stub.NodeInfo(pb.NodeInfoRequest())
    assert info.node_id == node.store.node_id and len(info.node_id) == 32
    assert (info.name, info.satellite, info.plane) == ("sat-a1", "OV-11", "2")
    assert info.capacity_bytes == 2 * 2**30
    assert info.used_bytes == put.stored_bytes and info.shard_count == 1
    assert info.scrub.activity == pb.SCRUB_ACTIVITY_DISABLED
    assert abs(info.node_time_unix_ms - time.time() * 1000) < 60_000
    assert info.version

    # What a scrubber (here: one pretending to be this process) persisted is what NodeInfo reports.
    state = ScrubState(activity="running", position_shard_id=shard.shard_id, pass_in_progress=True, pid=os.getpid())
    state.rows_verified, state.damaged_found, state.repaired_from_peers, state.passes_completed = 40, 3, 2, 5
    node.store.put_meta(STATE_KEY, state.to_json())
    scrub = node.stub.NodeInfo(pb.NodeInfoRequest()).scrub
    assert scrub.activity == pb.SCRUB_ACTIVITY_RUNNING
    assert scrub.position_shard_id == shard.shard_id
    assert (scrub.rows_verified, scrub.damaged_found, scrub.repaired_from_peers, scrub.passes_completed) == (
        40,
        3,
        2,
        5,
    )

    # A "running" left by a scrubber that died is not reported as running.
    dead = json.loads(state.to_json())
    dead["pid"] = 2**22 + 12345
    node.store.put_meta(STATE_KEY, json.dumps(dead).encode())
    scrub = node.stub.NodeInfo(pb.NodeInfoRequest()).scrub
    assert scrub.activity == pb.SCRUB_ACTIVITY_DISABLED and scrub.rows_verified == 40


def test_health_service(node: NodeClient) -> None:
    health = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "orbitvault.v1.ShardStore"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_resumable_upload_across_passes(node: NodeClient, make_shard: Any) -> None:
    """Scheduled mode: a transfer cut at loss of signal continues where it stopped, invisible till whole."""
    shard = make_shard()
    rows = len(shard.fragments)
    upload = b"u" * 16

    def start(resume: bool = False) -> pb.PutShardRequest:
        return pb.PutShardRequest(start=pb.PutShardStart(header=shard.proto_header(), upload_id=upload, resume=resume))

    # Pass 1: the window ends after 3 rows; the sender half-closes.
    first = node.stub.PutShard(iter([start(), *shard.row_requests(rows_per_message=1, end=3)]))
    assert (first.complete, first.committed_rows) == (False, 3) and first.upload_expires_unix_ms > 0
    head = node.stub.HeadShard(pb.HeadShardRequest(shard_id=shard.shard_id)).shard
    assert (head.state, head.committed_rows, head.upload_id) == (pb.SHARD_STATE_PARTIAL, 3, upload)
    assert node.stored_ids() == []  # not listed or readable; its space is reserved
    assert node.stub.NodeInfo(pb.NodeInfoRequest()).used_bytes == node.store.required_bytes(shard.header)

    # Pass 2: loss of signal mid-stream (the client's stream breaks after row 5).
    def cut() -> Any:
        yield start(resume=True)
        yield from shard.row_requests(rows_per_message=1, first=3, end=5)
        raise ConnectionResetError("loss of signal")

    with pytest.raises(grpc.RpcError):
        node.stub.PutShard(cut())
    committed = node.stub.HeadShard(pb.HeadShardRequest(shard_id=shard.shard_id)).shard.committed_rows
    assert 3 <= committed <= 5  # whatever reached the node before the cut is kept

    # Pass 3: resume from what the node holds; only the rest is sent.
    last = node.stub.PutShard(iter([start(resume=True), *shard.row_requests(rows_per_message=4, first=committed)]))
    assert (last.complete, last.committed_rows) == (True, rows)
    _, frags, _ = node.get_rows(shard.shard_id)
    assert frags == shard.fragments
    assert node.stub.HeadShard(pb.HeadShardRequest(shard_id=shard.shard_id)).shard.state == pb.SHARD_STATE_COMPLETE

    # Delivering it again is harmless.
    again = node.stub.PutShard(iter([start(), *shard.row_requests()]))
    assert again.complete


def test_resume_of_an_unknown_upload_is_refused(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard()
    resume = pb.PutShardRequest(start=pb.PutShardStart(header=shard.proto_header(), upload_id=b"u" * 16, resume=True))
    code, details = rpc_code(lambda: node.stub.PutShard(iter([resume, *shard.row_requests()])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no partial upload" in details
    code, details = rpc_code(lambda: node.stub.ForwardShard(pb.ForwardShardRequest(shard_id=shard.shard_id)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "upload_id" in details
    assert_empty(node)


# --- refusals: capacity, malformed and lying streams ---------------------------------------------------------


def test_capacity_refusal_stores_nothing(start_node: Any, make_shard: Any) -> None:
    shard = make_shard()
    probe = start_node()
    need = probe.store.required_bytes(shard.header)
    node = start_node(capacity=need + need // 2)
    node.put(shard)
    other = make_shard()
    code, details = rpc_code(lambda: node.put(other))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in details
    assert node.stored_ids() == [shard.shard_id]
    assert node.stub.NodeInfo(pb.NodeInfoRequest()).used_bytes == need

    tiny = start_node(capacity=1000)
    code, _ = rpc_code(lambda: tiny.stub.PutShard(shard.requests(rows_per_message=1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_empty(tiny)


def _malformed_streams() -> dict[str, Any]:
    """name -> function(shard) -> list of requests; every one must be refused as INVALID_ARGUMENT."""

    def start(shard: TestShard, **header_changes: Any) -> pb.PutShardRequest:
        h = shard.proto_header()
        for key, value in header_changes.items():
            if key == "geometry":
                h.geometry.CopyFrom(value)
            else:
                setattr(h, key, value)
        return pb.PutShardRequest(start=pb.PutShardStart(header=h))

    def rows(shard: TestShard, first: int, end: int, **changes: Any) -> pb.PutShardRequest:
        batch = pb.RowBatch(first_row=first, fragments=shard.fragments[first:end], checksums=shard.checksums[first:end])
        for key, value in changes.items():
            del getattr(batch, key)[:]
            getattr(batch, key).extend(value)
        return pb.PutShardRequest(rows=batch)

    def lying_checksum(s: TestShard) -> list[Any]:
        sums = list(s.checksums[:4])
        sums[2] = checksum(b"something else")
        return [start(s), rows(s, 0, 4, checksums=sums), *s.row_requests(first=4)]

    def flipped_fragment(s: TestShard) -> list[Any]:
        frags = list(s.fragments[:4])
        frags[1] = frags[1][:-1] + bytes([frags[1][-1] ^ 1])
        return [start(s), rows(s, 0, 4, fragments=frags), *s.row_requests(first=4)]

    n = SMALL_GEOMETRY.rows_per_stripe  # rows of make_shard()'s default shard
    return {
        "empty stream": lambda s: [],
        "no start message": lambda s: list(s.row_requests()),
        "start twice": lambda s: [start(s), start(s), *s.row_requests()],
        "start after rows": lambda s: [start(s), *s.row_requests(end=4), start(s), *s.row_requests(first=4)],
        "empty message": lambda s: [start(s), pb.PutShardRequest(), *s.row_requests()],
        "start without header": lambda s: [pb.PutShardRequest(start=pb.PutShardStart()), *s.row_requests()],
        "rows skip ahead": lambda s: [start(s), rows(s, 0, 4), rows(s, 5, n)],
        "rows repeated": lambda s: [start(s), rows(s, 0, 4), rows(s, 3, n)],
        "rows backwards": lambda s: [start(s), rows(s, 4, n), rows(s, 0, 4)],
        "checksum lies": lying_checksum,
        "fragment damaged in transit": flipped_fragment,
        "fewer rows than the header says": lambda s: [start(s), *s.row_requests(end=n - 1)],
        "only the start": lambda s: [start(s)],
        "more rows than the header says": lambda s: [
            start(s, stripe_data_len=s.header.geometry.row_size * 3, row_count=3),
            *s.row_requests(),
        ],
        "row_count contradicts the geometry": lambda s: [start(s, row_count=n + 1), *s.row_requests()],
        "shard_id of 31 bytes": lambda s: [start(s, shard_id=s.shard_id[:31]), *s.row_requests()],
        "object_id of 33 bytes": lambda s: [start(s, object_id=s.header.object_id + b"x"), *s.row_requests()],
        "empty shard_id": lambda s: [start(s, shard_id=b""), *s.row_requests()],
        "bad geometry": lambda s: [
            start(s, geometry=common_pb2.Geometry(k=0, m=2, fragment_size=64, stripe_size=64)),
            *s.row_requests(),
        ],
        "fragments without checksums": lambda s: [
            start(s),
            rows(s, 0, 4, checksums=s.checksums[:3]),
            *s.row_requests(first=4),
        ],
        "checksum of 31 bytes": lambda s: [
            start(s),
            rows(s, 0, 1, checksums=[s.checksums[0][:31]]),
            *s.row_requests(first=1),
        ],
        "fragment too long": lambda s: [
            start(s),
            rows(s, 0, 1, fragments=[s.fragments[0] * 2]),
            *s.row_requests(first=1),
        ],
        "fragment too short": lambda s: [
            start(s),
            rows(s, 0, 1, fragments=[s.fragments[0][:-1]]),
            *s.row_requests(first=1),
        ],
        "empty fragment": lambda s: [
            start(s),
            rows(s, 0, 1, fragments=[b""], checksums=[checksum(b"")]),
            *s.row_requests(first=1),
        ],
        "more than 1024 rows in a message": lambda s: [
            start(s),
            pb.PutShardRequest(
                rows=pb.RowBatch(first_row=0, fragments=[s.fragments[0]] * 1025, checksums=[s.checksums[0]] * 1025)
            ),
        ],
    }


MALFORMED = _malformed_streams()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_streams_are_refused_and_store_nothing(node: NodeClient, make_shard: Any, case: str) -> None:
    shard = make_shard()
    requests = MALFORMED[case](shard)
    code, details = rpc_code(lambda: node.stub.PutShard(iter(requests), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (case, code, details)
    assert details and "Traceback" not in details
    assert_empty(node)
    node.put(shard)  # the node is fine afterwards and the same shard can be stored
    assert node.get_rows(shard.shard_id)[1] == shard.fragments


def test_other_calls_validate_ids(node: NodeClient) -> None:
    for call in (
        lambda: node.stub.HeadShard(pb.HeadShardRequest(shard_id=b"short")),
        lambda: node.stub.DeleteShard(pb.DeleteShardRequest(shard_id=b"x" * 33)),
        lambda: node.get(b""),
        lambda: list(node.stub.ReadRows(pb.ReadRowsRequest(shard_id=b"x" * 31, rows=[0]))),
    ):
        code, details = rpc_code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "32 bytes" in details


def test_oversized_message_is_refused(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard()
    huge = pb.PutShardRequest(
        rows=pb.RowBatch(first_row=0, fragments=[b"x" * (convert.MAX_MESSAGE_BYTES + 1)], checksums=[b"c" * 32])
    )
    code, _ = rpc_code(
        lambda: node.stub.PutShard(
            iter([pb.PutShardRequest(start=pb.PutShardStart(header=shard.proto_header())), huge])
        )
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own limit on received messages
    assert_empty(node)


# --- streams that break, concurrency ------------------------------------------------------------------------


def test_client_cancel_mid_stream_stores_nothing(node: NodeClient, make_shard: Any) -> None:
    shard = make_shard()
    gate = threading.Event()

    requests = list(shard.requests(rows_per_message=4))

    def stream() -> Any:
        yield from requests[:3]
        gate.wait(30)
        yield from requests[3:]

    future = node.stub.PutShard.future(stream())
    time.sleep(0.3)
    future.cancel()
    gate.set()
    assert future.cancelled() or future.exception() is not None
    deadline = time.monotonic() + 10
    while node.server.service.puts_in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.server.service.puts_in_flight == 0
    assert_empty(node)
    node.put(shard)


def test_put_slots_bound_concurrent_puts(start_node: Any, make_shard: Any) -> None:
    node = start_node(max_concurrent_puts=1)
    a, b = make_shard(), make_shard()
    gate = threading.Event()
    a_requests = list(a.requests())

    def slow_a() -> Any:
        yield from a_requests[:2]
        gate.wait(30)
        yield from a_requests[2:]

    fut_a = node.stub.PutShard.future(slow_a())
    time.sleep(0.3)
    fut_b = node.stub.PutShard.future(b.requests())  # waits for the one slot
    time.sleep(0.3)
    assert not fut_b.done()
    gate.set()
    assert fut_a.result(timeout=30).complete and fut_b.result(timeout=30).complete

    node.server.service._put_wait_s = 0.2  # a put that finds no free slot in time is told to retry
    gate.clear()
    fut_a = node.stub.PutShard.future(_stall_after_start(make_shard(), gate))
    time.sleep(0.3)
    code, details = rpc_code(lambda: node.put(make_shard()))
    assert code == grpc.StatusCode.UNAVAILABLE and "busy" in details
    gate.set()
    fut_a.cancel()


def _stall_after_start(shard: TestShard, gate: threading.Event) -> Any:
    yield next(shard.requests())
    gate.wait(30)


def test_metrics_port_exposes_store_gauges(start_node: Any, make_shard: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = start_node(metrics_port=port)
    put = node.put(make_shard())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f"orbitvault_node_used_bytes {float(put.stored_bytes)}" in text
    assert "orbitvault_node_shards 1.0" in text


def test_in_process_scrubber_reports_through_node_info(start_node: Any, make_shard: Any) -> None:
    node = start_node(**{"scrub.enabled_in_process": True, "scrub.interval_s": 0.1})
    node.put(make_shard())
    deadline = time.monotonic() + 30
    scrub = node.stub.NodeInfo(pb.NodeInfoRequest()).scrub
    while scrub.shards_verified < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        scrub = node.stub.NodeInfo(pb.NodeInfoRequest()).scrub
    assert scrub.shards_verified >= 1 and scrub.passes_completed >= 1
    assert scrub.activity in (pb.SCRUB_ACTIVITY_IDLE, pb.SCRUB_ACTIVITY_RUNNING)
    assert scrub.damaged_found == 0
