from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from orbitvault.client.chunker import Chunker, ChunkerParams
from orbitvault.client.errors import InvalidFormat

P = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536, seed=12345)


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_chunks_respect_bounds_and_cover_the_input() -> None:
    data = _data(2_000_000)
    chunks = [bytes(c) for c in Chunker(P).chunk_bytes(data)]
    assert b"".join(chunks) == data
    assert all(P.min_size <= len(c) <= P.max_size for c in chunks[:-1])


def test_cut_points_are_content_defined_and_seeded() -> None:
    data = _data(1_000_000)
    a = [len(c) for c in Chunker(P).chunk_bytes(data)]
    shifted = [len(c) for c in Chunker(P).chunk_bytes(b"prefix" + data)]
    assert a[-5:] == shifted[-5:]  # resynchronises after an insertion
    other = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536, seed=999)
    assert [len(c) for c in Chunker(other).chunk_bytes(data)] != a


@pytest.mark.parametrize("size", [0, 100, 70_000, 140_000, 400_000])
def test_chunk_fd_matches_chunk_bytes(tmp_path: Path, size: int) -> None:
    # 2 x max_size = 131072: sizes above take the streaming path.
    data = _data(size, seed=size)
    f = tmp_path / "f"
    f.write_bytes(data)
    ch = Chunker(P)
    fd = os.open(f, os.O_RDONLY)
    try:
        from_fd = [bytes(c) for c in ch.chunk_fd(fd, size)]
    finally:
        os.close(fd)
    assert from_fd == [bytes(c) for c in ch.chunk_bytes(data)]


def test_file_grown_since_stat_is_read_whole(tmp_path: Path) -> None:
    data = _data(300_000)
    f = tmp_path / "f"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        got = b"".join(bytes(c) for c in Chunker(P).chunk_fd(fd, 10))
    finally:
        os.close(fd)
    assert got == data


@pytest.mark.parametrize(
    "bad",
    [
        ChunkerParams(min_size=10, avg_size=16384, max_size=65536),
        ChunkerParams(min_size=70000, avg_size=16384, max_size=65536),
        ChunkerParams(seed=2**63),
    ],
)
def test_params_validated(bad: ChunkerParams) -> None:
    with pytest.raises(InvalidFormat):
        bad.validate()


def test_params_json_roundtrip() -> None:
    assert ChunkerParams.from_json(P.to_json()) == P
