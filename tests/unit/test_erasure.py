"""Erasure layer: codec, layout and stripe coding, by behaviour."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbitvault.erasure.codec import MAX_FRAGMENTS, Codec
from orbitvault.erasure.layout import MAX_STRIPE_SIZE, Geometry, Span, StripePiece
from orbitvault.erasure.stripe import CHECKSUM_LEN, ShardRows, StripeCoder, checksum
from orbitvault.errors import (
    DataLoss,
    FragmentError,
    GeometryError,
    InvalidArgument,
    OrbitVaultError,
    TooFewFragments,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small fragments keep rows and stripes tiny, so every boundary is reachable with little data.
SMALL = {
    (4, 2): Geometry(4, 2, fragment_size=64, stripe_size=64 * 4 * 3),
    (6, 3): Geometry(6, 3, fragment_size=64, stripe_size=64 * 6 * 2),
    (10, 4): Geometry(10, 4, fragment_size=64, stripe_size=64 * 10 * 2),
}


def encode_object(coder: StripeCoder, data: bytes) -> list:
    g = coder.geometry
    return [coder.encode(data[s.offset : s.end]) for s in g.stripe_spans(len(data))]


def decode_object(coder: StripeCoder, stripes: list, keep: list[int], object_len: int) -> bytes:
    g = coder.geometry
    out = []
    for span, enc in zip(g.stripe_spans(object_len), stripes, strict=True):
        out.append(coder.decode(span.length, [enc.shards[i] for i in keep]).data)
    return b"".join(out)


def flip_bit(fragment: bytes, bit: int) -> bytes:
    b = bytearray(fragment)
    b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


# --- codec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "m"), [(0, 2), (4, 0), (-1, 2), (30, 3), (2.0, 1), (True, 1), ("4", 2)])
def test_codec_refuses_geometries_the_backend_cannot_guarantee(k, m) -> None:
    with pytest.raises(GeometryError):
        Codec(k, m)


def test_codec_accepts_the_largest_supported_geometry() -> None:
    codec = Codec(MAX_FRAGMENTS - 4, 4)
    data = os.urandom(5000)
    frags = codec.encode(data)
    assert len(frags) == MAX_FRAGMENTS
    assert codec.decode({i: frags[i] for i in range(4, MAX_FRAGMENTS)}, 5000) == data


def test_codec_bad_inputs() -> None:
    codec = Codec(4, 2)
    data = os.urandom(1000)
    frags = dict(enumerate(codec.encode(data)))
    with pytest.raises(FragmentError):
        codec.encode(b"")
    with pytest.raises(FragmentError):
        codec.encode("text")  # type: ignore[arg-type]
    with pytest.raises(TooFewFragments):
        codec.decode({i: frags[i] for i in range(3)}, 1000)
    with pytest.raises(FragmentError, match="out of range"):
        codec.decode({**frags, 6: frags[0]}, 1000)
    with pytest.raises(FragmentError, match="is index"):
        codec.decode({0: frags[1], 1: frags[0], 2: frags[2], 3: frags[3]}, 1000)
    with pytest.raises(FragmentError, match="bytes"):
        codec.decode({0: frags[0][:-1], 1: frags[1], 2: frags[2], 3: frags[3]}, 1000)
    with pytest.raises(FragmentError):
        codec.decode(frags, 999)  # wrong length claimed
    with pytest.raises(FragmentError, match="out of range"):
        codec.reconstruct(frags, 1000, [7])
    assert codec.reconstruct(frags, 1000, []) == {}


# --- layout ---------------------------------------------------------------------------------------


def test_default_geometry_follows_the_design() -> None:
    g = Geometry(10, 4)
    assert g.fragment_size == 64 * 1024
    assert g.row_size == 640 * 1024
    assert g.stripe_size <= MAX_STRIPE_SIZE and g.stripe_size % g.row_size == 0
    assert MAX_STRIPE_SIZE - g.stripe_size < g.row_size


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 4, "m": 2, "fragment_size": 10},
        {"k": 4, "m": 2, "fragment_size": 16 * 1024 * 1024},
        {"k": 4, "m": 2, "fragment_size": 64, "stripe_size": 100},
        {"k": 4, "m": 2, "fragment_size": 64, "stripe_size": -256},
        {"k": 4, "m": 2, "stripe_size": 2 * MAX_STRIPE_SIZE},
        {"k": 28, "m": 4, "fragment_size": 4 * 1024 * 1024},
        {"k": 4, "m": 0},
    ],
)
def test_geometry_refuses_bad_sizes(kwargs) -> None:
    with pytest.raises(GeometryError):
        Geometry(**kwargs)


def test_layout_spans_and_ranges() -> None:
    g = SMALL[(4, 2)]  # rows of 256 B, stripes of 768 B
    assert g.stripe_count(0) == 0
    assert g.stripe_spans(768 * 2 + 1) == [Span(0, 768), Span(768, 768), Span(1536, 1)]
    assert g.locate(700, 100, 2000) == [StripePiece(0, 700, 68), StripePiece(1, 0, 32)]
    assert g.locate(5, 0, 10) == []
    assert g.row_count(257) == 2
    assert g.row_span(1, 257) == Span(256, 1)
    assert list(g.rows_for_range(255, 2, 768)) == [0, 1]
    assert list(g.rows_for_range(256, 256, 768)) == [1]
    for bad in (
        lambda: g.stripe_count(-1),
        lambda: g.stripe_span(3, 2000),
        lambda: g.locate(1990, 11, 2000),
        lambda: g.locate(-1, 1, 2000),
        lambda: g.row_count(769),
        lambda: g.row_span(2, 257),
        lambda: g.rows_for_range(0, 10, 5),
    ):
        with pytest.raises(InvalidArgument):
            bad()


# --- stripe coding --------------------------------------------------------------------------------


def sizes_for(g: Geometry) -> st.SearchStrategy[int]:
    r, s = g.row_size, g.stripe_size
    edges = [0, 1, r - 1, r, r + 1, s - 1, s, s + 1, 2 * s + r + 1]
    return st.one_of(st.sampled_from(edges), st.integers(0, 3 * s))


@FAST
@given(data=st.data())
def test_round_trip_any_size_any_k_subset(data) -> None:
    km = data.draw(st.sampled_from(sorted(SMALL)))
    g = SMALL[km]
    coder = StripeCoder(g)
    payload = os.urandom(data.draw(sizes_for(g)))
    stripes = encode_object(coder, payload)
    keep = sorted(data.draw(st.sets(st.integers(0, g.n - 1), min_size=g.k, max_size=g.k)))
    assert decode_object(coder, stripes, keep, len(payload)) == payload


@pytest.mark.parametrize("km", [(4, 2), (6, 3)])
def test_every_k_subset_decodes(km) -> None:
    g = SMALL[km]
    coder = StripeCoder(g)
    payload = os.urandom(g.stripe_size + g.row_size + 7)
    stripes = encode_object(coder, payload)
    for keep in itertools.combinations(range(g.n), g.k):
        assert decode_object(coder, stripes, list(keep), len(payload)) == payload, keep


def test_random_erasure_sets_for_10_plus_4() -> None:
    rng = random.Random(1004)
    coder = StripeCoder(Geometry(10, 4, fragment_size=4096))
    payload = os.urandom(3 * coder.geometry.row_size + 123)
    enc = coder.encode(payload)
    for _ in range(40):
        keep = rng.sample(range(14), rng.randint(10, 14))
        assert coder.decode(len(payload), [enc.shards[i] for i in keep]).data == payload


@FAST
@given(data=st.data())
def test_byte_ranges(data) -> None:
    g = SMALL[(4, 2)]
    coder = StripeCoder(g)
    stripe_len = data.draw(st.integers(0, g.stripe_size))
    payload = os.urandom(stripe_len)
    enc = coder.encode(payload)
    offset = data.draw(st.integers(0, stripe_len))
    length = data.draw(st.integers(0, stripe_len - offset))
    keep = sorted(data.draw(st.sets(st.integers(0, g.n - 1), min_size=g.k, max_size=g.n)))
    rows = g.rows_for_range(offset, length, stripe_len)
    # Only the rows of the range are fetched, as a ranged read would.
    pieces = [
        ShardRows(
            i,
            rows.start,
            enc.shards[i].fragments[rows.start : rows.stop],
            enc.shards[i].checksums[rows.start : rows.stop],
        )
        for i in keep
    ]
    assert coder.decode(stripe_len, pieces, offset, length).data == payload[offset : offset + length]


def test_ranges_at_every_row_boundary() -> None:
    g = SMALL[(4, 2)]
    coder = StripeCoder(g)
    payload = os.urandom(g.stripe_size)
    enc = coder.encode(payload)
    points = sorted(
        {0, 1, g.stripe_size - 1, g.stripe_size}
        | {b + d for b in range(0, g.stripe_size + 1, g.row_size) for d in (-1, 0, 1)}
    )
    points = [p for p in points if 0 <= p <= g.stripe_size]
    for a in points:
        for b in points:
            if a <= b:
                assert coder.decode(g.stripe_size, enc.shards[2:], a, b - a).data == payload[a:b]


@FAST
@given(data=st.data())
def test_rebuild_equals_the_original_fragments(data) -> None:
    km = data.draw(st.sampled_from(sorted(SMALL)))
    g = SMALL[km]
    coder = StripeCoder(g)
    stripe_len = data.draw(st.integers(1, g.stripe_size))
    enc = coder.encode(os.urandom(stripe_len))
    targets = sorted(data.draw(st.sets(st.integers(0, g.n - 1), min_size=1, max_size=g.m)))
    row_count = enc.row_count
    rows = sorted(data.draw(st.sets(st.integers(0, row_count - 1), min_size=1, max_size=row_count)))
    sources = [s for s in enc.shards if s.index not in targets]
    rebuilt = coder.rebuild(stripe_len, sources, targets, rows)
    for t in targets:
        assert sorted(rebuilt[t]) == rows
        for r in rows:
            assert rebuilt[t][r] == enc.shards[t].fragments[r]
            assert checksum(rebuilt[t][r]) == enc.shards[t].checksums[r]


@FAST
@given(data=st.data())
def test_damaged_fragments_are_never_decoded_into_output(data) -> None:
    """Flip bits in random fragments: the result is the exact data, or a DataLoss naming the row."""
    g = SMALL[(4, 2)]
    coder = StripeCoder(g)
    stripe_len = data.draw(st.integers(1, g.stripe_size))
    payload = os.urandom(stripe_len)
    enc = coder.encode(payload)
    frags = [list(s.fragments) for s in enc.shards]
    hits = data.draw(
        st.lists(
            st.tuples(st.integers(0, g.n - 1), st.integers(0, enc.row_count - 1), st.integers(0, 10**6)), max_size=8
        )
    )
    for shard, row, bit in hits:
        frags[shard][row] = flip_bit(frags[shard][row], bit)
    shards = [ShardRows(i, 0, frags[i], enc.shards[i].checksums) for i in range(g.n)]
    damaged_rows: dict[int, set[int]] = {}
    for shard, row, _ in hits:
        damaged_rows.setdefault(row, set()).add(shard)
    try:
        result = coder.decode(stripe_len, shards)
    except TooFewFragments as exc:
        assert len(damaged_rows.get(exc.row, ())) > g.m
        assert set(exc.damaged) <= damaged_rows[exc.row]
        return
    assert result.data == payload
    assert all(s in damaged_rows[r] for r, s in result.damaged)


def test_too_many_losses_name_the_row() -> None:
    g = SMALL[(4, 2)]
    coder = StripeCoder(g)
    payload = os.urandom(g.row_size * 2 + 5)
    enc = coder.encode(payload)
    frags = [list(s.fragments) for s in enc.shards]
    for i in (0, 1, 4):  # three of row 1's fragments damaged: only 3 of 4 needed remain
        frags[i][1] = flip_bit(frags[i][1], 3)
    shards = [ShardRows(i, 0, frags[i], enc.shards[i].checksums) for i in range(g.n)]
    with pytest.raises(TooFewFragments) as info:
        coder.decode(len(payload), shards)
    assert info.value.row == 1
    assert info.value.damaged == [0, 1, 4]
    assert isinstance(info.value, DataLoss)
    # Row 0 alone is still readable.
    assert coder.decode(len(payload), shards, 0, g.row_size).data == payload[: g.row_size]


def test_missing_rows_given_as_none_are_erasures() -> None:
    g = SMALL[(4, 2)]
    coder = StripeCoder(g)
    payload = os.urandom(g.row_size * 3)
    enc = coder.encode(payload)
    holes = [ShardRows(i, 0, [None, *s.fragments[1:]], s.checksums) for i, s in enumerate(enc.shards[:2])]
    assert coder.decode(len(payload), holes + enc.shards[2:]).data == payload


def test_empty_stripe() -> None:
    coder = StripeCoder(SMALL[(4, 2)])
    enc = coder.encode(b"")
    assert enc.row_count == 0 and all(len(s.fragments) == 0 for s in enc.shards)
    assert coder.decode(0, []).data == b""


BAD_STRIPE_CALLS = {
    "encode more than a stripe": lambda c, e, s0: c.encode(os.urandom(c.geometry.stripe_size + 1)),
    "encode text": lambda c, e, s0: c.encode("text"),
    "range past the end": lambda c, e, s0: c.decode(600, e.shards, 500, 101),
    "offset past the end": lambda c, e, s0: c.decode(600, e.shards, 601),
    "negative stripe length": lambda c, e, s0: c.decode(-1, e.shards),
    "shard index out of range": lambda c, e, s0: c.decode(600, [ShardRows(6, 0, s0.fragments, s0.checksums)]),
    "checksum count": lambda c, e, s0: c.decode(600, [ShardRows(0, 0, s0.fragments, s0.checksums[:-1])]),
    "rows outside the stripe": lambda c, e, s0: c.decode(600, [ShardRows(0, 2, s0.fragments, s0.checksums)]),
    "duplicate shard": lambda c, e, s0: c.decode(600, [s0, s0, *e.shards[1:]]),
    "short checksum": lambda c, e, s0: c.decode(600, [ShardRows(0, 0, s0.fragments, [b"x" * (CHECKSUM_LEN - 1)] * 3)]),
    "not ShardRows": lambda c, e, s0: c.decode(600, [(0, s0.fragments)]),
    "fewer than k shards": lambda c, e, s0: c.decode(600, e.shards[:3]),
    "rebuild target out of range": lambda c, e, s0: c.rebuild(600, e.shards, [6]),
    "rebuild row out of range": lambda c, e, s0: c.rebuild(600, e.shards, [0], rows=[3]),
    "rebuild from fewer than k": lambda c, e, s0: c.rebuild(600, e.shards[3:], [0]),
}


@pytest.mark.parametrize("case", sorted(BAD_STRIPE_CALLS))
def test_stripe_bad_inputs(case: str) -> None:
    coder = StripeCoder(SMALL[(4, 2)])
    enc = coder.encode(os.urandom(600))
    with pytest.raises(OrbitVaultError):
        BAD_STRIPE_CALLS[case](coder, enc, enc.shards[0])


def test_fragments_under_the_wrong_index_are_refused() -> None:
    """A fragment whose checksum matches but sits under another index must not decode to garbage."""
    g = SMALL[(4, 2)]
    coder = StripeCoder(g)
    payload = os.urandom(500)
    enc = coder.encode(payload)
    a, b = enc.shards[0], enc.shards[1]
    swapped = [ShardRows(0, 0, b.fragments, b.checksums), ShardRows(1, 0, a.fragments, a.checksums), *enc.shards[2:4]]
    with pytest.raises(FragmentError):
        coder.decode(len(payload), swapped)


def test_geometry_mismatch_is_refused() -> None:
    """Shards of a 4+2 stripe handed to a 6+3 coder are refused, never decoded."""
    enc = StripeCoder(SMALL[(4, 2)]).encode(os.urandom(300))
    other = StripeCoder(Geometry(6, 3, fragment_size=64, stripe_size=64 * 6 * 2))
    with pytest.raises(OrbitVaultError):
        other.decode(300, enc.shards)


def test_codec_refuses_a_fragment_with_a_damaged_header() -> None:
    codec = Codec(4, 2)
    frags = dict(enumerate(codec.encode(os.urandom(1000))))
    frags[0] = flip_bit(frags[0], 8 * 40 + 1)  # inside liberasurecode's 80-byte fragment header
    with pytest.raises(FragmentError):
        codec.decode(frags, 1000)
