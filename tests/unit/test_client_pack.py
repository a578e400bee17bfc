from __future__ import annotations

import os
from pathlib import Path

import pytest

from orbitvault.client.backend import LocalBackend, object_name
from orbitvault.client.crypto import MasterKey, object_id
from orbitvault.client.errors import CorruptObject, InvalidFormat
from orbitvault.client.index import Index, decode_index, encode_index
from orbitvault.client.pack import FLAG_ZSTD, BlobCodec, BlobType, PackEntry, PackWriter, read_header, split_pack


def test_compressible_blobs_are_compressed_random_ones_stored_raw() -> None:
    codec = BlobCodec(MasterKey.generate(), level=3)
    text = b"abc " * 10_000
    enc = codec.encode(BlobType.DATA, text)
    assert enc.flags & FLAG_ZSTD and len(enc.sealed) < len(text) // 10
    rnd = os.urandom(50_000)
    enc2 = codec.encode(BlobType.DATA, rnd)
    assert enc2.flags == 0 and len(enc2.sealed) == len(rnd) + 40
    assert BlobCodec(codec.key, level=0).encode(BlobType.DATA, text).flags == 0
    for e, plain in ((enc, text), (enc2, rnd)):
        entry = PackEntry(e.type, e.flags, 0, len(e.sealed), e.raw_length, e.id)
        assert codec.decode(entry, e.sealed) == plain


def test_decode_checks_the_id_and_length() -> None:
    codec = BlobCodec(MasterKey.generate())
    enc = codec.encode(BlobType.DATA, b"x" * 1000)
    good = PackEntry(enc.type, enc.flags, 0, len(enc.sealed), enc.raw_length, enc.id)
    with pytest.raises(CorruptObject):
        codec.decode(PackEntry(enc.type, enc.flags, 0, len(enc.sealed), 999, enc.id), enc.sealed)
    with pytest.raises(CorruptObject):  # the id is in the AAD
        codec.decode(PackEntry(enc.type, enc.flags, 0, len(enc.sealed), enc.raw_length, b"\0" * 32), enc.sealed)
    assert codec.decode(good, enc.sealed) == b"x" * 1000


def test_pack_roundtrip_in_memory_and_from_a_backend(tmp_path: Path) -> None:
    key = MasterKey.generate()
    codec = BlobCodec(key)
    w = PackWriter(key)
    blobs = [codec.encode(BlobType.DATA, os.urandom(n)) for n in (10, 5000, 70_000)]
    for b in blobs:
        w.add(b)
    pack_id, data, entries = w.finish()
    assert [e.id for e in split_pack(key, data)] == [b.id for b in blobs]
    be = LocalBackend(tmp_path)
    be.create()
    name = object_name("data", pack_id.hex())
    be.put(name, data)
    got = read_header(be, key, name, len(data))
    assert got == entries
    assert [e.offset for e in got] == [0, len(blobs[0].sealed), len(blobs[0].sealed) + len(blobs[1].sealed)]
    damaged = bytearray(data)
    damaged[-10] ^= 1
    with pytest.raises(CorruptObject):
        split_pack(key, bytes(damaged))
    with pytest.raises(CorruptObject):
        split_pack(MasterKey.generate(), data)


def test_a_reused_pack_buffer_makes_the_same_packs() -> None:
    """A buffer written over by a later pack: longer or shorter than before, or still viewed by
    someone holding the earlier pack (it is then left alone, not resized under them)."""
    key = MasterKey.generate()
    codec = BlobCodec(key)
    big = [codec.encode(BlobType.DATA, os.urandom(n)) for n in (90_000, 40_000)]
    small = [codec.encode(BlobType.DATA, os.urandom(n)) for n in (300, 20)]
    bigger = [codec.encode(BlobType.DATA, os.urandom(n)) for n in (200_000, 1)]

    def pack(blobs: list, buf: bytearray | None = None) -> tuple[list[PackEntry], bytes, PackWriter]:
        """The pack's entries and its blobs (the sealed header differs every time: a fresh salt)."""
        w = PackWriter(key, buf)
        for b in blobs:
            w.add(b)
        pack_id, view, entries = w.finish()
        assert pack_id == object_id(view) and split_pack(key, view) == entries
        end = entries[-1].offset + entries[-1].length
        return entries, bytes(view[:end]), w

    *_rest, first = pack(big)
    buf = first.buf
    assert pack(small, buf)[:2] == pack(small)[:2]  # shorter than the stale bytes after it
    assert pack(bigger, buf)[:2] == pack(bigger)[:2]  # grows it
    held = memoryview(buf)[:10]  # an earlier pack's reader still holds a view
    huge = [codec.encode(BlobType.DATA, os.urandom(len(buf) + 10))]
    assert pack(huge, buf)[:2] == pack(huge)[:2]
    assert held.tobytes() == bytes(buf[:10])


def test_large_header_needs_a_second_read(tmp_path: Path) -> None:
    key = MasterKey.generate()
    codec = BlobCodec(key)
    w = PackWriter(key)
    for i in range(2000):  # 2000 x 42-byte entries > the 64 KiB first read
        w.add(codec.encode(BlobType.TREE, b"%d" % i))
    pack_id, data, entries = w.finish()
    be = LocalBackend(tmp_path)
    be.create()
    name = object_name("data", pack_id.hex())
    be.put(name, data)
    assert read_header(be, key, name, len(data)) == entries


def test_index_roundtrip_and_lookup() -> None:
    p1, p2 = b"\x01" * 32, b"\x02" * 32
    e1 = PackEntry(BlobType.DATA, 1, 0, 100, 200, b"\xaa" * 32)
    e2 = PackEntry(BlobType.TREE, 0, 100, 50, 10, b"\xbb" * 32)
    dup = PackEntry(BlobType.DATA, 1, 0, 100, 200, b"\xaa" * 32)
    raw = encode_index({p1: [e1, e2], p2: [dup]}, [b"\x09" * 32])
    packs, sup = decode_index(raw)
    assert packs == {p1: [e1, e2], p2: [dup]} and sup == [b"\x09" * 32]
    idx = Index()
    idx.add_index("i1", packs, sup)
    assert idx.lookup(e1.id) == (p1, e1) and e2.id in idx and idx.duplicate_blobs == 1
    assert "09" * 32 in idx.superseded
    idx.remove_packs([p1])
    assert idx.lookup(e1.id) == (p2, dup) and e2.id not in idx
    with pytest.raises(InvalidFormat):
        decode_index(raw[:-5])
    with pytest.raises(InvalidFormat):
        decode_index(b"XXXX" + raw[4:])
