"""Correcting radiation upsets in a stored fragment on the node alone, from CRC32 syndromes.

Without this, any flipped bit makes a fragment an erasure that only k sibling rows on other
satellites can rebuild, and a row is lost once more than m of its fragments are hit between two
scrubs. At LEO's ~1e-6 upsets per bit per day a 64 KiB fragment takes about 0.5 upsets a day:
with hourly scrubs that is a few 1e-4 lost 4+2 rows per row-day, hundreds of lost rows per
terabyte a day. Upsets are mostly single bits (multi-bit upsets hit neighbouring bits), so the
node keeps a CRC32 of every 4 KiB block of every fragment (0.1% of the data) and corrects one or
two flipped bits per block in place. A correction counts only if the whole fragment then matches
its blake3 checksum, so a wrong guess (or a damaged CRC) is never stored: the row falls back to
the rebuild from peers.

CRC32 is linear: crc(a ^ e) ^ crc(a) = crc(e) ^ crc(0...0) for equal lengths, so the syndrome of a
damaged block (its CRC xor the stored one) depends only on where the bits flipped. A table from
the syndrome of every single-bit error to its position (built once per block length, ~40 ms)
turns one flip into a lookup and two flips into one pass over the table.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable
from functools import lru_cache
from math import prod

BLOCK = 4096
_CRC = struct.Struct(">I")
_MAX_TRIES = 64  # combinations of per-block candidates verified against the row's blake3


def block_crcs(fragment: bytes | memoryview) -> bytes:
    """The stored record: CRC32 of each 4 KiB block of a fragment (the last one may be short),
    4 bytes each, then a CRC32 of those, so radiation hitting the record itself is noticed
    (`intact`) and the scrubber rewrites it from the verified fragment."""
    mv = memoryview(fragment)
    crcs = b"".join(_CRC.pack(zlib.crc32(mv[i : i + BLOCK])) for i in range(0, len(mv), BLOCK))
    return crcs + _CRC.pack(zlib.crc32(crcs))


def intact(record: bytes | memoryview) -> bool:
    """Whether a `block_crcs` record is undamaged."""
    return (
        len(record) >= 8
        and len(record) % 4 == 0
        and zlib.crc32(record[:-4]) == _CRC.unpack_from(record, len(record) - 4)[0]
    )


@lru_cache(maxsize=4)
def _syndromes(length: int) -> dict[int, int]:
    """syndrome -> bit position of every single-bit error in a block of `length` bytes."""
    zero = bytearray(length)
    base = zlib.crc32(zero)
    table: dict[int, int] = {}
    for byte in range(length):
        for bit in range(8):
            zero[byte] = 1 << bit
            table[zlib.crc32(zero) ^ base] = byte * 8 + bit
        zero[byte] = 0
    return table


def _candidates(block: memoryview, stored: int) -> list[tuple[int, ...]] | None:
    """Bit positions whose flip gives the block its stored CRC: () for an intact block, one
    position for a single flip (unique: CRC-32 has Hamming distance 4 at this length), every
    matching pair for two flips (about one in eight has a second, wrong pair); None for more."""
    syndrome = zlib.crc32(block) ^ stored
    if syndrome == 0:
        return [()]
    table = _syndromes(len(block))
    one = table.get(syndrome)
    if one is not None:
        return [(one,)]
    pairs = [(p, q) for s, p in table.items() if (q := table.get(syndrome ^ s)) is not None and q > p]
    return pairs or None


def correct(fragment: bytes | memoryview, record: bytes, accept: Callable[[bytes], bool]) -> bytes | None:
    """The fragment with up to two flipped bits per block undone, if `accept` takes the result
    (the caller checks it against the row's blake3); None when it cannot be corrected here."""
    n = len(fragment)
    blocks = (n + BLOCK - 1) // BLOCK
    if blocks == 0 or len(record) != 4 * blocks + 4 or not intact(record):
        return None
    crcs = record[:-4]
    mv = memoryview(fragment)
    fixes: list[tuple[int, list[tuple[int, ...]]]] = []  # (block start, candidate flips)
    for i in range(blocks):
        start = i * BLOCK
        cands = _candidates(mv[start : start + BLOCK], _CRC.unpack_from(crcs, 4 * i)[0])
        if cands is None:
            return None  # three or more flips in this block (or its CRC was hit): peers rebuild it
        if cands != [()]:
            fixes.append((start, cands))
    if not fixes:
        return None  # every block matches its CRC, yet the fragment is damaged: a CRC was hit too
    if prod(len(c) for _start, c in fixes) > _MAX_TRIES:
        return None
    for choice in itertools.product(*(c for _start, c in fixes)):
        buf = bytearray(fragment)
        for (start, _c), bits in zip(fixes, choice, strict=True):
            for bit in bits:
                buf[start + bit // 8] ^= 1 << (bit % 8)
        out = bytes(buf)
        if accept(out):
            return out
    return None
