"""In-place correction of flipped bits from per-block CRC32s: what it fixes, and that it never
returns data its caller's checksum does not confirm."""

from __future__ import annotations

import os

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitvault.storage.bitfix import BLOCK, block_crcs, correct

FRAGMENT = os.urandom(3 * BLOCK + 1000)  # three whole blocks and a short one
CRCS = block_crcs(FRAGMENT)
DIGEST = blake3.blake3(FRAGMENT).digest()


def _accept(data: bytes) -> bool:
    return blake3.blake3(data).digest() == DIGEST


def _flipped(bits: list[int]) -> bytes:
    buf = bytearray(FRAGMENT)
    for b in bits:
        buf[b // 8] ^= 1 << (b % 8)
    return bytes(buf)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(FRAGMENT) * 8 - 1), min_size=1, max_size=6, unique=True))
def test_up_to_two_flips_per_block_are_undone_and_nothing_wrong_is_ever_returned(bits: list[int]) -> None:
    per_block: dict[int, int] = {}
    for b in bits:
        per_block[b // 8 // BLOCK] = per_block.get(b // 8 // BLOCK, 0) + 1
    fixed = correct(_flipped(bits), CRCS, _accept)
    if max(per_block.values()) <= 2:
        assert fixed == FRAGMENT
    else:
        assert fixed in (None, FRAGMENT)  # three flips in a block: left to the peers


def test_adjacent_multi_bit_upset_in_the_short_last_block() -> None:
    p = len(FRAGMENT) * 8 - 7
    assert correct(_flipped([p, p + 1]), CRCS, _accept) == FRAGMENT


def test_damaged_crcs_or_an_intact_fragment_give_nothing() -> None:
    bad = bytearray(CRCS)
    bad[0] ^= 0x40  # the first block's CRC hit, the fragment too
    assert correct(_flipped([5]), bytes(bad), _accept) is None
    assert correct(FRAGMENT, CRCS, _accept) is None  # nothing to correct
    assert correct(_flipped([5]), CRCS[:-4], _accept) is None  # CRCs of another length
    assert correct(_flipped([5]), CRCS, lambda _data: False) is None  # the caller's checksum decides
