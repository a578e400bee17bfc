"""The hand-made wire encoding of the bulk messages is protobuf's, byte for byte, and the decoders
agree with the generated parser on everything they accept."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orbitvault.grpc import wire
from orbitvault.grpc.v1 import object_store_pb2, shard_store_pb2

rows_args = st.tuples(
    st.integers(0, 2**32 - 1),
    st.lists(st.binary(max_size=300), max_size=5),
    st.lists(st.binary(min_size=0, max_size=40), max_size=5),
)


@given(rows_args)
def test_rows_encode_exactly_as_protobuf(args: tuple[int, list[bytes], list[bytes]]) -> None:
    first, frags, sums = args
    ours = wire.encode_rows(first, frags, sums)
    msg = shard_store_pb2.PutShardRequest(
        rows=shard_store_pb2.RowBatch(first_row=first, fragments=frags, checksums=sums)
    )
    assert ours == msg.SerializeToString(deterministic=True)
    decoded = wire.decode_rows(ours)
    assert decoded is not None
    assert (decoded.first_row, [bytes(f) for f in decoded.fragments], [bytes(c) for c in decoded.checksums]) == (
        first,
        frags,
        sums,
    )


@given(st.binary(max_size=5000))
def test_data_encodes_exactly_as_protobuf(chunk: bytes) -> None:
    ours = wire.encode_data(memoryview(chunk))
    assert ours == object_store_pb2.PutObjectRequest(data=chunk).SerializeToString()
    decoded = wire.decode_data(ours)
    assert decoded is not None and bytes(decoded) == chunk


def test_start_messages_are_left_to_the_generated_parser() -> None:
    start = shard_store_pb2.PutShardRequest(start=shard_store_pb2.PutShardStart(upload_id=b"u" * 16))
    assert wire.decode_rows(start.SerializeToString()) is None
    put = object_store_pb2.PutObjectRequest(start=object_store_pb2.PutObjectStart(bucket="b", key="k"))
    assert wire.decode_data(put.SerializeToString()) is None
    assert wire.decode_rows(b"") is None and wire.decode_data(b"") is None


def _rows_agree(data: bytes) -> None:
    decoded = wire.decode_rows(data)  # never raises
    if decoded is None:
        return
    msg = shard_store_pb2.PutShardRequest.FromString(data)
    assert msg.WhichOneof("body") == "rows"
    assert msg.rows.first_row == decoded.first_row
    assert list(msg.rows.fragments) == [bytes(f) for f in decoded.fragments]
    assert list(msg.rows.checksums) == [bytes(c) for c in decoded.checksums]


@given(st.binary(max_size=200))
def test_whatever_rows_decode_accepts_protobuf_reads_the_same(data: bytes) -> None:
    _rows_agree(data)


@given(rows_args, st.integers(0, 10_000), st.integers(0, 255))
def test_damaged_rows_messages_are_refused_or_read_as_protobuf_reads_them(
    args: tuple[int, list[bytes], list[bytes]], at: int, byte: int
) -> None:
    data = bytearray(wire.encode_rows(*args))
    if data:
        data[at % len(data)] = byte
    _rows_agree(bytes(data))


@given(st.binary(max_size=200))
def test_whatever_data_decode_accepts_protobuf_reads_the_same(data: bytes) -> None:
    decoded = wire.decode_data(data)
    if decoded is None:
        return
    msg = object_store_pb2.PutObjectRequest.FromString(data)
    assert msg.WhichOneof("body") == "data" and msg.data == bytes(decoded)


def _intercepted(method: str) -> dict[str, Any]:
    """What the interceptor replaces in the handler of `method` (a handler records `_replace`)."""

    class Details:
        pass

    class Handler:
        def _replace(self, **kw: object) -> dict[str, object]:
            return kw

    Details.method = method  # type: ignore[attr-defined]
    return wire.BulkRequestInterceptor().intercept_service(lambda d: Handler(), Details())  # type: ignore[no-any-return]


def test_the_servers_hand_bulk_messages_over_undecoded() -> None:
    parse = _intercepted("/orbitvault.v1.ShardStore/PutShard")["request_deserializer"]
    assert isinstance(parse(wire.encode_rows(3, [b"f"], [b"c" * 32])), wire.Rows)
    start = shard_store_pb2.PutShardRequest(start=shard_store_pb2.PutShardStart(upload_id=b"u" * 16))
    assert parse(start.SerializeToString()) == start
    assert parse.full_name == "orbitvault.v1.PutShardRequest"


@given(st.binary(max_size=5000))
def test_get_object_data_responses_serialize_and_read_as_protobuf(chunk: bytes) -> None:
    ours = wire.DataResponse(memoryview(chunk)).SerializeToString()
    assert ours == object_store_pb2.GetObjectResponse(data=chunk).SerializeToString()
    decoded = wire.decode_get_response(ours)  # a oneof member is on the wire even when empty
    assert isinstance(decoded, memoryview) and bytes(decoded) == chunk


def test_get_object_info_and_odd_responses_are_parsed_by_the_generated_class() -> None:
    info = object_store_pb2.GetObjectResponse(info=object_store_pb2.ObjectInfo(key="k", size=7))
    assert wire.decode_get_response(info.SerializeToString()) == info
    twice = object_store_pb2.GetObjectResponse(data=b"a").SerializeToString() * 2  # last field wins
    assert wire.decode_get_response(twice) == object_store_pb2.GetObjectResponse.FromString(twice)


def test_the_gateway_serializes_get_object_data_without_a_message() -> None:
    replaced = _intercepted("/orbitvault.v1.ObjectStore/GetObject")
    assert set(replaced) == {"response_serializer"}  # requests are parsed as usual
    serialize = replaced["response_serializer"]
    assert (
        serialize(wire.DataResponse(b"chunk")) == object_store_pb2.GetObjectResponse(data=b"chunk").SerializeToString()
    )
    info = object_store_pb2.GetObjectResponse(info=object_store_pb2.ObjectInfo(key="k"))
    assert serialize(info) == info.SerializeToString()
