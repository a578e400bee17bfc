"""The bulk messages on the wire, encoded and decoded without the protobuf runtime's copies.

Every byte of object data crosses `PutObjectRequest.data` (client -> gateway) and, 1.5x over,
`PutShardRequest.rows` (gateway -> nodes); every byte read crosses `GetObjectResponse.data`
(gateway -> client). Built through the protobuf runtime, each byte was copied
four or five times per hop (into the message, into a sub-message merged into its parent, into the
serialized buffer as it grew, out again as a `bytes` field on the receiving side). Here a sending
side joins the wire bytes once, and a receiving side gets views into the buffer gRPC handed it.

The encodings are exactly protobuf's (fields in number order, proto3 defaults omitted), so a peer
using the generated classes reads them unchanged, and the decoders accept anything a protobuf
encoder may produce for these fields. A message they do not handle (the `start` messages, unknown
fields, other field orders) returns None from `decode_*`, and the caller parses it with the
generated class, which also produces the errors for malformed input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc

from orbitvault.grpc.v1 import object_store_pb2, shard_store_pb2

# Tags: (field number << 3) | wire type; wire type 0 = varint, 2 = length-delimited.
_ROWS = b"\x12"  # PutShardRequest.rows = 2
_FIRST_ROW = 0x08  # RowBatch.first_row = 1
_FRAGMENT = b"\x12"  # RowBatch.fragments = 2
_CHECKSUM = b"\x1a"  # RowBatch.checksums = 3
_DATA = b"\x12"  # PutObjectRequest.data = 2, and GetObjectResponse.data = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position); ValueError past the end or beyond 64 bits."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def encode_rows(first_row: int, fragments: Sequence[bytes], checksums: Sequence[bytes]) -> bytes:
    """`PutShardRequest(rows=RowBatch(first_row, fragments, checksums))`, serialized."""
    parts: list[bytes] = []
    if first_row:
        parts += (bytes((_FIRST_ROW,)), _varint(first_row))
    for tag, items in ((_FRAGMENT, fragments), (_CHECKSUM, checksums)):
        for item in items:
            parts += (tag, _varint(len(item)), item)
    body = sum(len(p) for p in parts)
    return b"".join([_ROWS, _varint(body), *parts])


def encode_data(chunk: bytes | bytearray | memoryview) -> bytes:
    """`PutObjectRequest(data=chunk)`, serialized."""
    return b"".join((_DATA, _varint(len(chunk)), chunk))


class Rows(NamedTuple):
    """A decoded `rows` message: fragments and checksums are views of the received buffer."""

    first_row: int
    fragments: list[memoryview]
    checksums: list[memoryview]


def _field(buf: memoryview, pos: int) -> tuple[int, int, int, int]:
    """(tag, value, start, end) of the field at `pos`: value for varints, [start, end) for bytes."""
    tag, pos = _read_varint(buf, pos)
    wire = tag & 7
    if wire == 0:
        value, pos = _read_varint(buf, pos)
        return tag, value, pos, pos
    if wire == 2:
        n, pos = _read_varint(buf, pos)
        if pos + n > len(buf):
            raise ValueError("a length runs past the end of the message")
        return tag, 0, pos, pos + n
    raise ValueError(f"wire type {wire} is not used by this message")


def decode_rows(data: bytes) -> Rows | None:
    """A `PutShardRequest` that is exactly one `rows` body, else None (parse it the usual way)."""
    buf = memoryview(data)
    try:
        tag, _, start, end = _field(buf, 0)
        if tag != _ROWS[0] or end != len(buf):
            return None
        first_row = 0
        fragments: list[memoryview] = []
        checksums: list[memoryview] = []
        pos = start
        while pos < end:
            tag, value, a, pos = _field(buf, pos)
            if tag == _FIRST_ROW:
                if value >= 1 << 32:
                    return None  # uint32 overflow: let the generated parser say what it makes of it
                first_row = value
            elif tag == _FRAGMENT[0]:
                fragments.append(buf[a:pos])
            elif tag == _CHECKSUM[0]:
                checksums.append(buf[a:pos])
            else:
                return None
        return Rows(first_row, fragments, checksums)
    except ValueError:
        return None


def decode_data(data: bytes) -> memoryview | None:
    """The chunk of a `PutObjectRequest` that is exactly one `data` field, else None."""
    buf = memoryview(data)
    try:
        tag, _, start, end = _field(buf, 0)
    except ValueError:
        return None
    if tag != _DATA[0] or end != len(buf):
        return None
    return buf[start:end]


class DataResponse:
    """`GetObjectResponse(data=chunk)` for a server to yield: serialized with one join by the
    response serializer `BulkRequestInterceptor` installs, without copying `chunk` into a message."""

    __slots__ = ("chunk",)

    def __init__(self, chunk: bytes | bytearray | memoryview) -> None:
        self.chunk = chunk

    def SerializeToString(self) -> bytes:  # the protobuf method, for `_serialize`
        return encode_data(self.chunk)


def decode_get_response(data: bytes) -> Any:
    """A received `GetObjectResponse`: a memoryview of the chunk when it is exactly one `data`
    field, else the generated message (the `info` that opens the stream, anything unusual)."""
    out = decode_data(data)
    return object_store_pb2.GetObjectResponse.FromString(data) if out is None else out


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


class _Deserializer:
    """A request deserializer: the fast decoder where it applies, else the generated class."""

    def __init__(self, message: Any, fast: Callable[[bytes], Any]) -> None:
        self._parse = message.FromString
        self._fast = fast
        self.full_name: str = message.DESCRIPTOR.full_name  # named in errors (see guard.py)

    def __call__(self, data: bytes) -> Any:
        out = self._fast(data)
        return self._parse(data) if out is None else out


PUT_SHARD = "/orbitvault.v1.ShardStore/PutShard"
PUT_OBJECT = "/orbitvault.v1.ObjectStore/PutObject"
GET_OBJECT = "/orbitvault.v1.ObjectStore/GetObject"

_SERVER_SIDE = {
    PUT_SHARD: _Deserializer(shard_store_pb2.PutShardRequest, decode_rows),
    PUT_OBJECT: _Deserializer(object_store_pb2.PutObjectRequest, decode_data),
}


# Responses a servicer may yield as `DataResponse` besides the generated class.
_RAW_RESPONSES = {GET_OBJECT}


class BulkRequestInterceptor(grpc.ServerInterceptor):
    """Servers hand PutShard `rows` messages to the servicer as `Rows` and PutObject `data`
    messages as memoryviews (every other message arrives as the generated class), and serialize
    the `DataResponse`s a GetObject servicer yields."""

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        fast = _SERVER_SIDE.get(method)
        if fast is not None:
            return handler._replace(request_deserializer=fast)
        if method in _RAW_RESPONSES:
            return handler._replace(response_serializer=_serialize)
        return handler


def raw_stream_unary(channel: grpc.Channel, method: str, response: Any) -> grpc.StreamUnaryMultiCallable:
    """A client-streaming call whose request iterator yields serialized messages (bytes)."""
    return channel.stream_unary(method, request_serializer=None, response_deserializer=response.FromString)


def put_shard_call(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """PutShard fed serialized messages: the start's `SerializeToString()`, then `encode_rows`."""
    return raw_stream_unary(channel, PUT_SHARD, shard_store_pb2.PutShardResponse)


def put_object_call(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """PutObject fed serialized messages: the start's `SerializeToString()`, then `encode_data`."""
    return raw_stream_unary(channel, PUT_OBJECT, object_store_pb2.PutObjectResponse)


def get_object_call(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    """GetObject whose stream yields data chunks as memoryviews (`decode_get_response`)."""
    return channel.unary_stream(
        GET_OBJECT,
        request_serializer=object_store_pb2.GetObjectRequest.SerializeToString,
        response_deserializer=decode_get_response,
    )
