"""The repository index: which pack holds each blob (FORMAT.md, "Index objects").

In memory it is two dicts: blob id -> (pack id, entry) for lookups while backing up and
restoring, and pack id -> entries for check and prune. Several index objects may list the same
blob (two clients stored it concurrently, or a prune was interrupted); the first location loaded
wins for reads, and prune keeps exactly one copy.

Index objects are binary (fixed-size records, `struct.iter_unpack`), because they are the largest
metadata a client must read before it can do anything.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from orbitvault.client.errors import InvalidFormat
from orbitvault.client.pack import BlobType, PackEntry

INDEX_MAGIC = b"OVIX"
INDEX_VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, version, supersedes count
_PACK = struct.Struct("<32sI")  # pack id, entry count
_ENTRY = struct.Struct("<BBIII32s")  # type, flags, offset, length, raw length, blob id
_COUNT = struct.Struct("<I")
_TYPES = dict(enumerate(BlobType))  # faster than BlobType(t), and a bad type is a KeyError


def encode_index(packs: dict[bytes, list[PackEntry]], supersedes: Iterable[bytes] = ()) -> bytes:
    sup = list(supersedes)
    parts = [_PREFIX.pack(INDEX_MAGIC, INDEX_VERSION, len(sup)), *sup, _COUNT.pack(len(packs))]
    pack = _ENTRY.pack
    for pack_id, entries in packs.items():
        parts.append(_PACK.pack(pack_id, len(entries)))
        parts.extend(pack(e.type, e.flags, e.offset, e.length, e.raw_length, e.id) for e in entries)
    return b"".join(parts)


def decode_index(data: bytes) -> tuple[dict[bytes, list[PackEntry]], list[bytes]]:
    """(pack id -> entries, superseded index ids) of one index object's plaintext."""
    mv = memoryview(data)
    try:
        magic, version, nsup = _PREFIX.unpack_from(mv, 0)
        if magic != INDEX_MAGIC or version != INDEX_VERSION:
            raise InvalidFormat(f"not an orbitvault index (magic {magic!r}, version {version})")
        pos = _PREFIX.size
        supersedes = [bytes(mv[pos + 32 * i : pos + 32 * (i + 1)]) for i in range(nsup)]
        pos += 32 * nsup
        (npacks,) = _COUNT.unpack_from(mv, pos)
        pos += _COUNT.size
        packs: dict[bytes, list[PackEntry]] = {}
        for _ in range(npacks):
            pack_id, count = _PACK.unpack_from(mv, pos)
            pos += _PACK.size
            end = pos + count * _ENTRY.size
            if end > len(mv):
                raise InvalidFormat("index object truncated")
            entries = [
                PackEntry(_TYPES[t], flags, off, length, raw, bid)
                for t, flags, off, length, raw, bid in _ENTRY.iter_unpack(mv[pos:end])
            ]
            packs.setdefault(bytes(pack_id), []).extend(entries)
            pos = end
    except KeyError as e:
        raise InvalidFormat(f"index object: unknown blob type {e}") from None
    except (struct.error, ValueError) as e:
        raise InvalidFormat(f"malformed index object: {e}") from None
    if pos != len(mv):
        raise InvalidFormat("trailing bytes after index object")
    return packs, supersedes


class Index:
    """All blob locations known to this client."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, tuple[bytes, PackEntry]] = {}
        self._packs: dict[bytes, list[PackEntry]] = {}
        self.duplicate_blobs = 0
        self.loaded_ids: set[str] = set()
        self.superseded: set[str] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def add_pack(self, pack_id: bytes, entries: list[PackEntry]) -> None:
        known = self._packs.get(pack_id)
        if known is not None:
            # The same pack listed twice (two index objects): nothing new to learn.
            return
        self._packs[pack_id] = entries
        blobs = self._blobs
        for e in entries:
            if e.id in blobs:
                self.duplicate_blobs += 1
            else:
                blobs[e.id] = (pack_id, e)

    def add_index(self, index_id: str, packs: dict[bytes, list[PackEntry]], supersedes: list[bytes]) -> None:
        self.loaded_ids.add(index_id)
        self.superseded.update(s.hex() for s in supersedes)
        for pack_id, entries in packs.items():
            self.add_pack(pack_id, entries)

    def lookup(self, blob_id: bytes) -> tuple[bytes, PackEntry] | None:
        return self._blobs.get(blob_id)

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._packs

    def packs(self) -> dict[bytes, list[PackEntry]]:
        return self._packs

    def pack_entries(self, pack_id: bytes) -> list[PackEntry]:
        return self._packs.get(pack_id, [])

    def blobs(self) -> Iterator[tuple[bytes, bytes, PackEntry]]:
        for blob_id, (pack_id, entry) in self._blobs.items():
            yield blob_id, pack_id, entry

    def remove_packs(self, pack_ids: Iterable[bytes]) -> None:
        """Forget packs (prune); blobs they held that live elsewhere are re-pointed."""
        gone = set(pack_ids)
        for pid in gone:
            self._packs.pop(pid, None)
        stale = [bid for bid, (pid, _e) in self._blobs.items() if pid in gone]
        for bid in stale:
            del self._blobs[bid]
        if stale:
            need = set(stale)
            for pid, entries in self._packs.items():
                for e in entries:
                    if e.id in need and e.id not in self._blobs:
                        self._blobs[e.id] = (pid, e)
