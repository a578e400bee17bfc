"""Blobs and packs (FORMAT.md, "Blobs" and "Packs").

A blob is one chunk of file data or one tree, compressed with zstd when that saves at least 1/32
of its size (otherwise stored raw: random data costs nothing to store and nothing to decode),
then sealed. Blobs are grouped into packs of about 16 MiB, data and trees in separate packs (tree
packs are small and read often; a cache can keep them whole). A pack ends with its sealed header
and the header's length, like restic's, so one ranged read from the end lists its contents
without an index.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import zstandard

from orbitvault.client.backend import Backend
from orbitvault.client.crypto import PACK_HEADER_AAD, MasterKey, blob_aad, object_id
from orbitvault.client.errors import CorruptObject

FLAG_ZSTD = 0x01
PACK_MAGIC = b"OVPK"
PACK_VERSION = 1
_HEADER_PREFIX = struct.Struct("<4sBI")  # magic, version, entry count
_ENTRY = struct.Struct("<BBII32s")  # type, flags, stored length, raw length, id
_TRAILER = struct.Struct("<I")
MAX_HEADER = 64 * 1024 * 1024
_TAIL_GUESS = 64 * 1024


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


@dataclass(frozen=True, slots=True)
class EncodedBlob:
    """A blob ready to be packed: `sealed` is what is stored."""

    type: BlobType
    id: bytes
    sealed: bytes
    raw_length: int
    flags: int


class PackEntry(NamedTuple):
    """One blob in one pack (what pack headers and index objects record). A named tuple: an
    index holds one per blob and is decoded before every command can start (3x faster to make
    than a frozen dataclass)."""

    type: BlobType
    flags: int
    offset: int
    length: int
    raw_length: int
    id: bytes


class BlobCodec:
    """Compress+seal and open+decompress blobs; thread-safe (zstd contexts are per thread)."""

    def __init__(self, key: MasterKey, level: int = 3) -> None:
        self.key = key
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(
        self, blob_type: BlobType, data: bytes | bytearray | memoryview, blob_id: bytes | None = None
    ) -> EncodedBlob:
        if blob_id is None:
            blob_id = self.key.blob_id(data)
        n = len(data)
        payload: bytes | bytearray | memoryview = data
        flags = 0
        if self.level != 0 and n >= 64:
            compressed = self._compressor().compress(data)
            if len(compressed) <= n - (n >> 5):
                payload, flags = compressed, FLAG_ZSTD
        return EncodedBlob(blob_type, blob_id, self.key.seal(payload, blob_aad(blob_type, blob_id)), n, flags)

    def decode(self, entry: PackEntry, sealed: bytes | bytearray | memoryview, *, verify: bool = True) -> bytes:
        """Plaintext of a stored blob; checks authentication, length and (by default) the id."""
        payload = self.key.open(sealed, blob_aad(entry.type, entry.id))
        if entry.flags & FLAG_ZSTD:
            try:
                data = self._decompressor().decompress(payload, max_output_size=entry.raw_length)
            except zstandard.ZstdError as e:
                raise CorruptObject(f"blob {entry.id.hex()}: bad zstd frame: {e}") from None
        else:
            data = payload
        if len(data) != entry.raw_length:
            raise CorruptObject(f"blob {entry.id.hex()}: length {len(data)} != recorded {entry.raw_length}")
        if verify and self.key.blob_id(data) != entry.id:
            raise CorruptObject(f"blob {entry.id.hex()}: content does not match its id")
        return data


class PackWriter:
    """Accumulates sealed blobs of one pack; `finish` appends the sealed header and names the pack.

    `buf` may be a buffer a finished pack is done with: it is written over, not reallocated, so a
    backup faults in each pack buffer's pages once, not once per pack (that faulting, under the
    GIL, was a third of the large-file phase's time). Its length is its capacity; `size` is what
    this pack holds.
    """

    def __init__(self, key: MasterKey, buf: bytearray | None = None) -> None:
        self.key = key
        self.buf = bytearray() if buf is None else buf
        self._n = 0
        self.entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        return self._n

    def __len__(self) -> int:
        return len(self.entries)

    def _append(self, data: bytes | bytearray | memoryview) -> int:
        offset, end = self._n, self._n + len(data)
        if end <= len(self.buf):
            self.buf[offset:end] = data  # same length: a copy into pages already there
        else:
            try:
                self.buf[offset:] = data  # grows (never shrinks: the capacity is kept)
            except BufferError:  # a view of an earlier pack held on to it somewhere: leave it be
                grown = bytearray(memoryview(self.buf)[:offset])
                grown += data
                self.buf = grown
        self._n = end
        return offset

    def add(self, blob: EncodedBlob) -> None:
        offset = self._append(blob.sealed)
        self.entries.append(PackEntry(blob.type, blob.flags, offset, len(blob.sealed), blob.raw_length, blob.id))

    def add_sealed(self, entry: PackEntry, sealed: bytes | memoryview) -> None:
        """Copy an already sealed blob (prune's repack): blobs do not depend on their pack."""
        offset = self._append(sealed)
        self.entries.append(PackEntry(entry.type, entry.flags, offset, len(sealed), entry.raw_length, entry.id))

    def finish(self) -> tuple[bytes, memoryview, list[PackEntry]]:
        """(pack id, the pack's bytes: a view of `buf`, to release before `buf` is reused, entries)."""
        header = bytearray(_HEADER_PREFIX.pack(PACK_MAGIC, PACK_VERSION, len(self.entries)))
        for e in self.entries:
            header += _ENTRY.pack(e.type, e.flags, e.length, e.raw_length, e.id)
        sealed = self.key.seal(header, PACK_HEADER_AAD)
        self._append(sealed)
        self._append(_TRAILER.pack(len(sealed)))
        view = memoryview(self.buf)[: self._n]
        return object_id(view), view, self.entries


def parse_header(key: MasterKey, sealed_header: bytes | memoryview, blobs_size: int) -> list[PackEntry]:
    """Entries of a pack from its sealed header; `blobs_size` is the pack size minus header and trailer."""
    header = key.open(sealed_header, PACK_HEADER_AAD)
    if len(header) < _HEADER_PREFIX.size:
        raise CorruptObject("pack header too short")
    magic, version, count = _HEADER_PREFIX.unpack_from(header)
    if magic != PACK_MAGIC or version != PACK_VERSION:
        raise CorruptObject(f"not an orbitvault pack header (magic {magic!r}, version {version})")
    if len(header) != _HEADER_PREFIX.size + count * _ENTRY.size:
        raise CorruptObject("pack header length does not match its entry count")
    entries = []
    offset = 0
    for t, flags, length, raw_length, blob_id in _ENTRY.iter_unpack(memoryview(header)[_HEADER_PREFIX.size :]):
        try:
            bt = BlobType(t)
        except ValueError:
            raise CorruptObject(f"unknown blob type {t} in pack header") from None
        entries.append(PackEntry(bt, flags, offset, length, raw_length, bytes(blob_id)))
        offset += length
    if offset != blobs_size:
        raise CorruptObject(f"pack header describes {offset} bytes of blobs, the pack holds {blobs_size}")
    return entries


def split_pack(key: MasterKey, data: bytes | memoryview) -> list[PackEntry]:
    """Entries of a whole pack held in memory."""
    size = len(data)
    if size < _TRAILER.size:
        raise CorruptObject("pack too short")
    (hlen,) = _TRAILER.unpack_from(data, size - _TRAILER.size)
    if hlen > size - _TRAILER.size:
        raise CorruptObject("pack header length exceeds the pack")
    start = size - _TRAILER.size - hlen
    return parse_header(key, memoryview(data)[start : size - _TRAILER.size], start)


def read_header(backend: Backend, key: MasterKey, name: str, size: int) -> list[PackEntry]:
    """Entries of a stored pack with one ranged read from its end (two if the header is large)."""
    if size < _TRAILER.size:
        raise CorruptObject(f"{name}: too short to be a pack")
    guess = min(size, _TAIL_GUESS)
    tail = backend.get(name, size - guess, guess)
    if len(tail) != guess:
        raise CorruptObject(f"{name}: short read of its tail (the pack is shorter than listed)")
    (hlen,) = _TRAILER.unpack_from(tail, guess - _TRAILER.size)
    if hlen > min(size - _TRAILER.size, MAX_HEADER):
        raise CorruptObject(f"{name}: header length {hlen} is impossible")
    if hlen + _TRAILER.size > guess:
        tail = backend.get(name, size - _TRAILER.size - hlen, hlen + _TRAILER.size)
    sealed = memoryview(tail)[len(tail) - _TRAILER.size - hlen : len(tail) - _TRAILER.size]
    try:
        return parse_header(key, sealed, size - _TRAILER.size - hlen)
    except CorruptObject as e:
        raise CorruptObject(f"{name}: {e}") from None


def pack_overhead(entry_count: int) -> int:
    """Bytes a pack adds around its blobs: sealed header plus trailer."""
    from orbitvault.client.crypto import SEAL_OVERHEAD

    return _HEADER_PREFIX.size + entry_count * _ENTRY.size + SEAL_OVERHEAD + _TRAILER.size
