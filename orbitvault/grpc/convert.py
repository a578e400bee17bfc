"""Proto <-> domain conversions for the ShardStore service, with the size bounds the IDL states.

Everything that arrives from the network passes through here before domain code sees it, so this
is where bounds are enforced (design §6: inputs from the network are bounded): ids are exactly 32
bytes, a RowBatch holds at most 1024 rows and no fragment longer than its geometry allows. The
domain types validate their own invariants too; the checks here exist to name the offending proto
field in the message and to refuse oversized input before any of it is copied.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import CHECKSUM_LEN, coder_for
from orbitvault.errors import GeometryError, InvalidArgument
from orbitvault.grpc import wire
from orbitvault.grpc.v1 import common_pb2, shard_store_pb2
from orbitvault.storage.header import ID_LEN, MAX_CATALOG_RECORD, ShardHeader, Sibling
from orbitvault.storage.store import RowBatch, RowRead, RowStatus, ShardInfo, UploadState

KiB = 1024
MiB = 1024 * KiB

# Bulk streams carry about this much payload per message (common.proto: 16 rows of 64 KiB).
TARGET_MESSAGE_BYTES = 1 * MiB
# Largest message a node accepts or sends: one fragment of the largest geometry (8 MiB + the
# codec's 80-byte header) alone in a RowBatch, its checksum and framing, with room to spare.
MAX_MESSAGE_BYTES = 9 * MiB
# Rows per RowBatch and per ReadRows request (shard_store.proto).
MAX_ROWS_PER_MESSAGE = 1024
MAX_SIBLINGS = 32
MAX_PAGE_TOKEN = 256

# Options for channels that talk to nodes: without them a client refuses GetShard messages
# carrying fragments over gRPC's default 4 MiB receive limit.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

_ROW_STATUS_TO_PROTO = {
    RowStatus.OK: shard_store_pb2.ROW_STATUS_OK,
    RowStatus.DAMAGED: shard_store_pb2.ROW_STATUS_DAMAGED,
    RowStatus.MISSING: shard_store_pb2.ROW_STATUS_MISSING,
}
_ROW_STATUS_FROM_PROTO = {v: k for k, v in _ROW_STATUS_TO_PROTO.items()}


# --- ids ------------------------------------------------------------------------------------------


def check_id(value: bytes, field: str) -> bytes:
    """`value` if it is a 32-byte id, else InvalidArgument naming the field."""
    if len(value) != ID_LEN:
        raise InvalidArgument(f"{field} must be {ID_LEN} bytes, got {len(value)}")
    return bytes(value)


def id_hex(value: bytes) -> str:
    """Ids in text (logs, page tokens) are lowercase hex."""
    return value.hex()


def id_from_hex(text: str, field: str) -> bytes:
    """Parse a 64-hex-digit id; InvalidArgument naming the field otherwise."""
    if len(text) != 2 * ID_LEN:
        raise InvalidArgument(f"{field} must be {2 * ID_LEN} hex digits, got {len(text)} characters")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidArgument(f"{field} must be hex digits") from None


# --- geometry, header -------------------------------------------------------------------------------


def geometry_from_proto(msg: common_pb2.Geometry, field: str = "geometry") -> Geometry:
    """A domain Geometry; proto stripe_size 0 is refused (the domain would pick a default, which
    would silently change the meaning of a stored header)."""
    if msg.stripe_size == 0:
        raise InvalidArgument(f"{field}.stripe_size is required (a positive multiple of k x fragment_size)")
    try:
        return Geometry(msg.k, msg.m, msg.fragment_size, msg.stripe_size)
    except GeometryError as exc:
        raise InvalidArgument(f"{field}: {exc}") from exc


def geometry_to_proto(g: Geometry) -> common_pb2.Geometry:
    return common_pb2.Geometry(k=g.k, m=g.m, fragment_size=g.fragment_size, stripe_size=g.stripe_size)


def max_fragment_len(g: Geometry) -> int:
    """Stored length of a fragment of a full row: the longest fragment the geometry allows."""
    return coder_for(g).codec.fragment_len(g.row_size)


def header_from_proto(msg: shard_store_pb2.ShardHeader, field: str = "header") -> ShardHeader:
    """A validated domain ShardHeader; a row_count that contradicts the geometry is refused."""
    check_id(msg.shard_id, f"{field}.shard_id")
    check_id(msg.object_id, f"{field}.object_id")
    if not msg.HasField("geometry"):
        raise InvalidArgument(f"{field}.geometry is required")
    geometry = geometry_from_proto(msg.geometry, f"{field}.geometry")
    if len(msg.siblings) > min(MAX_SIBLINGS, geometry.n):
        raise InvalidArgument(f"{field}.siblings has {len(msg.siblings)} entries; at most k+m = {geometry.n}")
    if len(msg.catalog_record) > MAX_CATALOG_RECORD:
        raise InvalidArgument(
            f"{field}.catalog_record is {len(msg.catalog_record)} bytes; at most {MAX_CATALOG_RECORD}"
        )
    siblings = []
    for i, s in enumerate(msg.siblings):
        check_id(s.node_id, f"{field}.siblings[{i}].node_id")
        check_id(s.shard_id, f"{field}.siblings[{i}].shard_id")
        siblings.append(Sibling(s.shard_index, bytes(s.node_id), bytes(s.shard_id)))
    try:
        header = ShardHeader(
            shard_id=bytes(msg.shard_id),
            object_id=bytes(msg.object_id),
            stripe_index=msg.stripe_index,
            stripe_count=msg.stripe_count,
            shard_index=msg.shard_index,
            geometry=geometry,
            stripe_data_len=msg.stripe_data_len,
            siblings=tuple(siblings),
            created_unix_ms=msg.created_unix_ms,
            catalog_record=bytes(msg.catalog_record),
        )
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}: {exc}") from exc
    if msg.row_count != header.row_count:
        raise InvalidArgument(
            f"{field}.row_count is {msg.row_count}, but stripe_data_len {header.stripe_data_len} in rows of "
            f"{geometry.row_size} bytes makes {header.row_count}"
        )
    return header


def header_to_proto(h: ShardHeader, *, include_catalog_record: bool = True) -> shard_store_pb2.ShardHeader:
    return shard_store_pb2.ShardHeader(
        shard_id=h.shard_id,
        object_id=h.object_id,
        stripe_index=h.stripe_index,
        stripe_count=h.stripe_count,
        shard_index=h.shard_index,
        geometry=geometry_to_proto(h.geometry),
        stripe_data_len=h.stripe_data_len,
        row_count=h.row_count,
        siblings=[
            common_pb2.ShardLocation(shard_index=s.shard_index, node_id=s.node_id, shard_id=s.shard_id)
            for s in h.siblings
        ],
        created_unix_ms=h.created_unix_ms,
        catalog_record=h.catalog_record if include_catalog_record else b"",
    )


# --- rows -----------------------------------------------------------------------------------------------


def row_batch_from_proto(
    msg: shard_store_pb2.RowBatch | wire.Rows, header: ShardHeader, field: str = "rows"
) -> RowBatch:
    """A domain RowBatch for `header`'s shard, bounded; order, exact lengths and checksums are the
    store's to check (it is the authority on what it commits). Fragments may stay views of the
    received message (`wire.Rows`); checksums become bytes."""
    n = len(msg.fragments)
    if n == 0:
        raise InvalidArgument(f"{field} at row {msg.first_row} holds no fragments")
    if n > MAX_ROWS_PER_MESSAGE:
        raise InvalidArgument(f"{field} holds {n} rows; at most {MAX_ROWS_PER_MESSAGE} per message")
    if len(msg.checksums) != n:
        raise InvalidArgument(f"{field} at row {msg.first_row}: {n} fragments but {len(msg.checksums)} checksums")
    if msg.first_row + n > header.row_count:
        raise InvalidArgument(
            f"{field} rows {msg.first_row}..{msg.first_row + n - 1} run past the shard's {header.row_count} row(s)"
        )
    limit = max_fragment_len(header.geometry)
    fragments = list(msg.fragments)
    checksums = [bytes(c) for c in msg.checksums]
    for i, (frag, digest) in enumerate(zip(fragments, checksums, strict=True)):
        if not frag:
            raise InvalidArgument(f"{field}: row {msg.first_row + i} has an empty fragment")
        if len(frag) > limit:
            raise InvalidArgument(
                f"{field}: row {msg.first_row + i} fragment is {len(frag)} bytes; the geometry allows {limit}"
            )
        if len(digest) != CHECKSUM_LEN:
            raise InvalidArgument(f"{field}: row {msg.first_row + i} checksum must be {CHECKSUM_LEN} bytes")
    return RowBatch(first_row=msg.first_row, fragments=fragments, checksums=checksums)


def rows_response(
    first_row: int, fragments: Sequence[bytes], checksums: Sequence[bytes]
) -> shard_store_pb2.GetShardResponse:
    """`GetShardResponse(rows=RowBatch(first_row, fragments, checksums))`, built in place: handing a
    RowBatch to the constructor copies every fragment twice more (serialized, then parsed into the
    parent). Requests carrying rows are serialized by hand instead (`wire.encode_rows`)."""
    msg = shard_store_pb2.GetShardResponse()
    rows = msg.rows
    rows.SetInParent()
    rows.first_row = first_row
    rows.fragments.extend(fragments)
    rows.checksums.extend(checksums)
    return msg


def row_read_to_proto(r: RowRead) -> shard_store_pb2.RowRead:
    return shard_store_pb2.RowRead(
        row=r.row,
        status=_ROW_STATUS_TO_PROTO[r.status],
        fragment=r.fragment if r.status is RowStatus.OK and r.fragment is not None else b"",
        checksum=r.checksum or b"",
    )


def row_read_from_proto(msg: shard_store_pb2.RowRead) -> RowRead:
    """For peer clients (repair): a RowRead whose claims are consistent, else InvalidArgument."""
    status = _ROW_STATUS_FROM_PROTO.get(msg.status)
    if status is None:
        raise InvalidArgument(f"row {msg.row}: unknown row status {msg.status}")
    if status is RowStatus.MISSING:
        return RowRead(row=msg.row, status=status, fragment=None, checksum=b"")
    if len(msg.checksum) != CHECKSUM_LEN:
        raise InvalidArgument(f"row {msg.row}: checksum must be {CHECKSUM_LEN} bytes")
    if status is RowStatus.OK and not msg.fragment:
        raise InvalidArgument(f"row {msg.row}: status OK without a fragment")
    return RowRead(
        row=msg.row,
        status=status,
        fragment=bytes(msg.fragment) if status is RowStatus.OK else None,
        checksum=bytes(msg.checksum),
    )


def check_row_list(rows: Iterable[int], row_count: int, field: str = "rows") -> list[int]:
    """ReadRows' row list: strictly ascending, at most 1024, each below row_count."""
    out = list(rows)
    if not out:
        raise InvalidArgument(f"{field} is empty; ask for at least one row")
    if len(out) > MAX_ROWS_PER_MESSAGE:
        raise InvalidArgument(f"{field} asks for {len(out)} rows; at most {MAX_ROWS_PER_MESSAGE} per call")
    for prev, cur in itertools.pairwise(out):
        if cur <= prev:
            raise InvalidArgument(f"{field} must be strictly ascending; {cur} follows {prev}")
    if out[-1] >= row_count:
        raise InvalidArgument(f"{field}: row {out[-1]} is beyond the shard's {row_count} row(s)")
    return out


def row_range(msg: shard_store_pb2.GetShardRequest, row_count: int) -> range:
    """GetShard's requested rows; unset means all, row_count 0 means to the last row."""
    if not msg.HasField("rows"):
        return range(row_count)
    first, count = msg.rows.first_row, msg.rows.row_count
    if first >= row_count:
        raise InvalidArgument(f"rows.first_row {first} is beyond the shard's {row_count} row(s)")
    end = row_count if count == 0 else first + count
    if end > row_count:
        raise InvalidArgument(
            f"rows {first}..{end - 1} run past the shard's {row_count} row(s); row_count 0 reads to the end"
        )
    return range(first, end)


# --- shard info -------------------------------------------------------------------------------------------


def shard_info_to_proto(info: ShardInfo, *, include_catalog_record: bool = True) -> shard_store_pb2.ShardInfo:
    """A complete stored shard."""
    return shard_store_pb2.ShardInfo(
        header=header_to_proto(info.header, include_catalog_record=include_catalog_record),
        state=shard_store_pb2.SHARD_STATE_COMPLETE,
        committed_rows=info.header.row_count,
        stored_bytes=info.stored_bytes,
        damaged_rows=info.damaged_rows,
        last_verified_unix_ms=info.last_verified_unix_ms,
    )


def upload_state_to_proto(state: UploadState) -> shard_store_pb2.ShardInfo:
    """A partial upload (scheduled mode): where a resumed transfer continues."""
    return shard_store_pb2.ShardInfo(
        header=header_to_proto(state.header),
        state=shard_store_pb2.SHARD_STATE_PARTIAL,
        committed_rows=state.committed_rows,
        upload_id=state.upload_id,
        upload_expires_unix_ms=state.expires_unix_ms,
    )


def shard_info_from_proto(msg: shard_store_pb2.ShardInfo, field: str = "shard") -> ShardInfo:
    """For clients: a ShardInfo from HeadShard or ListShards."""
    if not msg.HasField("header"):
        raise InvalidArgument(f"{field}.header is missing")
    return ShardInfo(
        header=header_from_proto(msg.header, f"{field}.header"),
        stored_bytes=msg.stored_bytes,
        damaged_rows=msg.damaged_rows,
        last_verified_unix_ms=msg.last_verified_unix_ms,
    )
