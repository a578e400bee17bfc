"""The shard header: what a node stores in front of a shard's rows.

Self-describing (design §2-3): stripe geometry, which object and stripe, where the sibling shards
are, and the gateway's opaque catalog record, so a new gateway can rebuild its catalog from the
nodes alone. On the node it is kept as a reedsolo-protected record (`orbitvault.erasure.record`),
so radiation damage to it is corrected in place.

Binary format, version 1 (big-endian), the payload of the protected record::

    "OVSH" | version u8 = 1
    shard_id[32] | object_id[32]
    stripe_index u32 | stripe_count u32 | shard_index u8
    k u8 | m u8 | fragment_size u32 | stripe_size u32
    stripe_data_len u64 | created_unix_ms i64
    sibling_count u8, then per sibling: shard_index u8 | node_id[32] | shard_id[32]
    catalog_record_len u16 | catalog_record
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import coder_for
from orbitvault.errors import GeometryError, InvalidArgument

ID_LEN = 32
MAX_CATALOG_RECORD = 2048
MAX_ROWS = 1 << 20

_MAGIC = b"OVSH"
_VERSION = 1
_FIXED = struct.Struct(">4sB32s32sIIBBBIIQqB")
_SIBLING = struct.Struct(">B32s32s")
_CATALOG_LEN = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Sibling:
    """Where one shard of the same stripe was placed."""

    shard_index: int
    node_id: bytes
    shard_id: bytes


@dataclass(frozen=True, slots=True)
class ShardHeader:
    """Everything a node and a rebuilding gateway need to know about one shard."""

    shard_id: bytes
    object_id: bytes
    stripe_index: int
    stripe_count: int
    shard_index: int
    geometry: Geometry
    stripe_data_len: int
    siblings: tuple[Sibling, ...] = ()
    created_unix_ms: int = 0
    catalog_record: bytes = b""

    def __post_init__(self) -> None:
        for name in ("shard_id", "object_id"):
            _check_id(getattr(self, name), name)
        g = self.geometry
        if not isinstance(g, Geometry):
            raise InvalidArgument("header geometry must be a Geometry")
        if not _uint(self.stripe_count, 32) or self.stripe_count < 1:
            raise InvalidArgument(f"stripe_count must be at least 1, got {self.stripe_count!r}")
        if not _uint(self.stripe_index, 32) or self.stripe_index >= self.stripe_count:
            raise InvalidArgument(f"stripe_index {self.stripe_index!r} out of range 0..{self.stripe_count - 1}")
        if not _uint(self.shard_index, 8) or self.shard_index >= g.n:
            raise InvalidArgument(f"shard_index {self.shard_index!r} out of range 0..{g.n - 1} for {g.k}+{g.m}")
        if not _uint(self.stripe_data_len, 64) or not 1 <= self.stripe_data_len <= g.stripe_size:
            raise InvalidArgument(f"stripe_data_len {self.stripe_data_len!r} must be 1..{g.stripe_size}")
        if not isinstance(self.created_unix_ms, int) or self.created_unix_ms < 0:
            raise InvalidArgument(f"created_unix_ms must be a non-negative integer, got {self.created_unix_ms!r}")
        if not isinstance(self.catalog_record, bytes) or len(self.catalog_record) > MAX_CATALOG_RECORD:
            raise InvalidArgument(f"catalog_record must be bytes of at most {MAX_CATALOG_RECORD}")
        seen: set[int] = set()
        for s in self.siblings:
            if not isinstance(s, Sibling) or not _uint(s.shard_index, 8) or s.shard_index >= g.n:
                raise InvalidArgument(f"sibling {s!r} is not a Sibling with a shard_index below {g.n}")
            if s.shard_index in seen:
                raise InvalidArgument(f"sibling shard_index {s.shard_index} is listed twice")
            seen.add(s.shard_index)
            _check_id(s.node_id, "sibling node_id")
            _check_id(s.shard_id, "sibling shard_id")
        object.__setattr__(self, "siblings", tuple(sorted(self.siblings, key=lambda s: s.shard_index)))

    @property
    def row_count(self) -> int:
        return self.geometry.row_count(self.stripe_data_len)

    def fragment_len(self, row: int) -> int:
        """Stored length of this shard's fragment of `row` (the codec's fragment header included)."""
        return coder_for(self.geometry).codec.fragment_len(self.geometry.row_span(row, self.stripe_data_len).length)

    def shard_len(self) -> int:
        """Bytes of all fragments of the shard (checksums and header not included)."""
        rows = self.row_count
        if rows == 0:
            return 0
        return (rows - 1) * self.fragment_len(0) + self.fragment_len(rows - 1)

    def encode(self) -> bytes:
        g = self.geometry
        fixed = _FIXED.pack(
            _MAGIC,
            _VERSION,
            self.shard_id,
            self.object_id,
            self.stripe_index,
            self.stripe_count,
            self.shard_index,
            g.k,
            g.m,
            g.fragment_size,
            g.stripe_size,
            self.stripe_data_len,
            self.created_unix_ms,
            len(self.siblings),
        )
        sibs = b"".join(_SIBLING.pack(s.shard_index, s.node_id, s.shard_id) for s in self.siblings)
        return fixed + sibs + _CATALOG_LEN.pack(len(self.catalog_record)) + self.catalog_record

    @classmethod
    def decode(cls, data: bytes) -> ShardHeader:
        """Parse `encode`'s output; anything malformed is an InvalidArgument, never a crash."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument("a shard header is bytes")
        data = bytes(data)
        if len(data) < _FIXED.size + _CATALOG_LEN.size:
            raise InvalidArgument(f"shard header of {len(data)} bytes is truncated")
        (magic, version, shard_id, object_id, stripe_index, stripe_count, shard_index, k, m, fsize, ssize, dlen,
         created, nsib) = _FIXED.unpack_from(data)  # fmt: skip
        if magic != _MAGIC or version != _VERSION:
            raise InvalidArgument(f"not a version-{_VERSION} shard header (magic {magic!r}, version {version})")
        pos = _FIXED.size
        end_sibs = pos + nsib * _SIBLING.size
        if len(data) < end_sibs + _CATALOG_LEN.size:
            raise InvalidArgument("shard header is truncated in its sibling list")
        siblings = tuple(Sibling(*_SIBLING.unpack_from(data, pos + i * _SIBLING.size)) for i in range(nsib))
        (clen,) = _CATALOG_LEN.unpack_from(data, end_sibs)
        catalog = data[end_sibs + _CATALOG_LEN.size :]
        if len(catalog) != clen:
            raise InvalidArgument(f"shard header catalog record is {len(catalog)} bytes, header says {clen}")
        try:
            geometry = Geometry(k, m, fsize, ssize)
        except GeometryError as exc:
            raise InvalidArgument(f"shard header geometry is invalid: {exc}") from exc
        return cls(shard_id, object_id, stripe_index, stripe_count, shard_index, geometry, dlen, siblings, created,
                   catalog)  # fmt: skip


def _check_id(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != ID_LEN:
        raise InvalidArgument(f"{name} must be {ID_LEN} bytes")


def _uint(value: object, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << bits)
