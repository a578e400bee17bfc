"""The default encryption segment: one erasure row (sealed), so sealing feeds the coder row by row.

The other gateway tests pin a small explicit segment (the general path, where segments and rows
do not line up); these run the default, with chunks that straddle segments, align with them, or
are single bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from orbitvault.ground.crypto import TAG_LEN
from orbitvault.ground.pipeline import plain_per_stripe
from tests.unit.ground_fakes import Env, chunked, random_bytes

ROW = 4 * 4096  # Env's geometry: 4+2, 4 KiB fragments, 64 KiB stripes
SEG = ROW - TAG_LEN
PPS = 4 * SEG
BIG = 3 * PPS + 12_345


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, segment_size=0)
    yield e
    e.close()


def test_a_sealed_segment_is_a_row(env: Env) -> None:
    assert plain_per_stripe(env.geometry, 0) == (SEG, PPS)
    env.put("obj", random_bytes(BIG))
    record = env.gw.catalog.get_object("acme", "data", "obj")
    assert record is not None and (record.segment_size, record.plain_per_stripe) == (SEG, PPS)


@pytest.mark.parametrize("chunk", [1, 7_000, SEG, ROW, 3 * SEG + 5, 2**20])
@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, PPS - 1, PPS, PPS + 1, BIG])
def test_round_trip_whatever_the_chunks(env: Env, size: int, chunk: int) -> None:
    if chunk == 1 and size > PPS + 1:
        size = PPS + 1  # byte-sized chunks: keep it quick
    data = random_bytes(size, size)
    info = env.gw.put_object(env.p, "data", "obj", chunked(data, chunk), size=len(data))
    assert info.size == size and info.etag == blake3.blake3(data).digest()
    _, chunks = env.gw.get_object(env.p, "data", "obj")
    got = list(chunks)
    assert b"".join(got) == data
    assert all(len(c) <= SEG for c in got)


def test_unknown_size_ends_on_stripe_boundaries(env: Env) -> None:
    for size in (0, PPS, 2 * PPS, BIG):
        data = random_bytes(size, 3)
        assert env.gw.put_object(env.p, "data", f"s{size}", chunked(data, SEG)).size == size
        assert env.get(f"s{size}") == data


def test_ranges_at_every_boundary(env: Env) -> None:
    data = random_bytes(BIG, 1)
    env.put("obj", data)
    points = {0, 1, BIG - 1, BIG}
    for base in (SEG, ROW, 2 * SEG, PPS, 2 * PPS, 3 * PPS):
        points.update({base - 1, base, base + 1})
    ordered = sorted(p for p in points if 0 <= p <= BIG)
    for start in ordered:
        for end in ordered:
            if end >= start:
                assert env.get("obj", offset=start, length=end - start) == data[start:end], (start, end)


def test_a_range_reads_only_its_row(env: Env) -> None:
    data = random_bytes(BIG, 2)
    env.put("obj", data)
    before = sum(link.reads for link in env.links)
    assert env.get("obj", offset=2 * PPS + SEG + 5, length=10) == data[2 * PPS + SEG + 5 : 2 * PPS + SEG + 15]
    assert sum(link.reads for link in env.links) - before == 4  # one stripe, one batch, k shards
