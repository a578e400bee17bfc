"""Self-describing shards: the encrypted catalog record every shard header carries (design note §8).

The record is an object's essentials (tenant, bucket, key, size, etag, keys, lock state...) in a
compact binary form, sealed with the catalog key (HKDF of the master key; AAD = object id), so a
gateway rebuilt from orbit learns every object from ListShards alone, and a node learns nothing.

A header's record is at most 2 KiB. A long key plus metadata can exceed that, so the sealed blob is
cut into P pieces and shard i of a stripe carries piece i mod P; any k shards of the stripe still
hold every piece as long as each piece has more than m copies, which is checked at put time.
Each piece starts with: version u8 | P u8 | piece u8 | blob tag[4] (pieces of different blobs,
e.g. one rewritten by repair, are never mixed).

Only the record of the upload's last stripe is *complete* (size, etag and stripe count are known
only once the stream ends); earlier stripes carry the same record with those fields zero. Repair
rewrites complete records on whatever stripe it rebuilds.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from orbitvault.erasure.layout import Geometry
from orbitvault.errors import InvalidArgument
from orbitvault.ground.catalog import ObjectRecord
from orbitvault.ground.crypto import open_record, seal_record
from orbitvault.ground.model import Retention, RetentionMode
from orbitvault.storage.header import MAX_CATALOG_RECORD

_VERSION = 1
_PIECE = struct.Struct(">BBB4s")
_FIXED = struct.Struct(">BBqQIQI32sBq")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_FLAG_COMPLETE = 1
_FLAG_HOLD = 2
_MODES = {None: 0, RetentionMode.GOVERNANCE: 1, RetentionMode.COMPLIANCE: 2}
_MODES_BACK = {1: RetentionMode.GOVERNANCE, 2: RetentionMode.COMPLIANCE}
PIECE_PAYLOAD = MAX_CATALOG_RECORD - _PIECE.size


@dataclass(frozen=True, slots=True)
class Described:
    """What a shard header said about its object."""

    record: ObjectRecord
    tenant_key_wrapped: bytes
    complete: bool


def _aad(object_id: bytes) -> bytes:
    return b"orbitvault catalog record v1" + object_id


def encode(rec: ObjectRecord, tenant_key_wrapped: bytes, *, complete: bool) -> bytes:
    ret = rec.retention
    flags = (_FLAG_COMPLETE if complete else 0) | (_FLAG_HOLD if rec.legal_hold else 0)
    parts = [
        _FIXED.pack(
            _VERSION,
            flags,
            rec.created_unix_ms,
            rec.size if complete else 0,
            rec.stripe_count if complete else 0,
            rec.plain_per_stripe,
            rec.segment_size,
            rec.etag if complete else bytes(32),
            _MODES[None if ret is None else ret.mode],
            0 if ret is None else ret.retain_until_unix_ms,
        ),
        _bytes8(rec.wrapped_data_key),
        _bytes8(rec.customer_key_blake3),
        _bytes8(tenant_key_wrapped),
        _str8(rec.tenant),
        _str8(rec.bucket),
        _str16(rec.key),
        _str16(rec.content_type),
        _U8.pack(len(rec.metadata)),
    ]
    for k, v in rec.metadata.items():
        parts += [_str8(k), _str16(v)]
    return b"".join(parts)


def decode(object_id: bytes, geometry: Geometry, data: bytes) -> Described:
    (version, flags, created, size, stripes, pps, segment, etag, mode, until) = _FIXED.unpack_from(data)
    if version != _VERSION:
        raise InvalidArgument(f"catalog record version {version} is unknown")
    pos = _FIXED.size
    wrapped, pos = _take8(data, pos)
    sse_c, pos = _take8(data, pos)
    tkw, pos = _take8(data, pos)
    tenant, pos = _take8(data, pos)
    bucket, pos = _take8(data, pos)
    key, pos = _take16(data, pos)
    ctype, pos = _take16(data, pos)
    (count,) = _U8.unpack_from(data, pos)
    pos += 1
    metadata: dict[str, str] = {}
    for _ in range(count):
        k, pos = _take8(data, pos)
        v, pos = _take16(data, pos)
        metadata[k.decode()] = v.decode()
    rec = ObjectRecord(
        object_id=object_id,
        tenant=tenant.decode(),
        bucket=bucket.decode(),
        key=key.decode(),
        size=size,
        etag=etag,
        created_unix_ms=created,
        content_type=ctype.decode(),
        metadata=metadata,
        geometry=geometry,
        stripe_count=stripes,
        plain_per_stripe=pps,
        segment_size=segment,
        wrapped_data_key=wrapped,
        customer_key_blake3=sse_c,
        retention=Retention(_MODES_BACK[mode], until) if mode else None,
        legal_hold=bool(flags & _FLAG_HOLD),
    )
    return Described(rec, tkw, bool(flags & _FLAG_COMPLETE))


def pieces(catalog_key: bytes, rec: ObjectRecord, tenant_key_wrapped: bytes, *, complete: bool) -> list[bytes]:
    """The sealed record cut into header-sized pieces; InvalidArgument if the geometry cannot carry them."""
    blob = seal_record(catalog_key, encode(rec, tenant_key_wrapped, complete=complete), _aad(rec.object_id))
    count = -(-len(blob) // PIECE_PAYLOAD)
    g = rec.geometry
    if count > 1 and g.n // count <= g.m:
        raise InvalidArgument(
            f"key, content type and metadata are too long to describe this object in its {g.k}+{g.m} shard "
            "headers; shorten them"
        )
    tag = blob[:4]
    return [
        _PIECE.pack(_VERSION, count, i, tag) + blob[i * PIECE_PAYLOAD : (i + 1) * PIECE_PAYLOAD] for i in range(count)
    ]


def check_fits(rec: ObjectRecord, tenant_key_wrapped: bytes) -> None:
    """Raise before any shard is sent if the object's description cannot be carried."""
    pieces(bytes(32), rec, tenant_key_wrapped, complete=True)


def piece_for(all_pieces: list[bytes], shard_index: int) -> bytes:
    return all_pieces[shard_index % len(all_pieces)]


def assemble(catalog_key: bytes, object_id: bytes, geometry: Geometry, records: Iterable[bytes]) -> Described | None:
    """The best description found in some shards' records (complete first), or None."""
    groups: dict[tuple[int, bytes], dict[int, bytes]] = defaultdict(dict)
    for raw in records:
        if len(raw) < _PIECE.size:
            continue
        version, count, index, tag = _PIECE.unpack_from(raw)
        if version != _VERSION or count < 1 or index >= count:
            continue
        groups[(count, tag)][index] = raw[_PIECE.size :]
    best: Described | None = None
    for (count, _), parts in groups.items():
        if len(parts) != count:
            continue
        plain = open_record(catalog_key, b"".join(parts[i] for i in range(count)), _aad(object_id))
        if plain is None:
            continue
        try:
            found = decode(object_id, geometry, plain)
        except (struct.error, InvalidArgument, UnicodeDecodeError, KeyError):
            continue
        if best is None or (found.complete and not best.complete):
            best = found
    return best


def _bytes8(b: bytes) -> bytes:
    return _U8.pack(len(b)) + b


def _str8(s: str) -> bytes:
    return _bytes8(s.encode())


def _str16(s: str) -> bytes:
    b = s.encode()
    return _U16.pack(len(b)) + b


def _take8(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = _U8.unpack_from(data, pos)
    return data[pos + 1 : pos + 1 + n], pos + 1 + n


def _take16(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = _U16.unpack_from(data, pos)
    return data[pos + 2 : pos + 2 + n], pos + 2 + n
