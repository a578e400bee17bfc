"""Protected records: round trips, repair up to the code's limit, refusal beyond it, bad input."""

from __future__ import annotations

import functools
import random
import struct

import blake3
import pytest
import reedsolo
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orbitvault.erasure.record import (
    DEFAULT_PARITY,
    MAX_PARITY,
    MAX_PAYLOAD,
    MIN_PARITY,
    Recovered,
    protect,
    recover,
    stored_size,
)
from orbitvault.errors import DataLoss, InvalidArgument, RecordUncorrectable, Status

FRAMING = 40  # one framing copy, as documented in the module docstring
PARITIES = list(range(MIN_PARITY, MAX_PARITY + 1, 2))
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def payload_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def damage(stored: bytes, positions: list[int], rng: random.Random) -> bytes:
    """Change every byte at `positions` to a different value."""
    out = bytearray(stored)
    for pos in positions:
        out[pos] ^= rng.randrange(1, 256)
    return bytes(out)


def codewords(payload_len: int, parity: int) -> int:
    return -(-(payload_len + 16) // (255 - parity))


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 254, 255, 256, 3000, 4096, MAX_PAYLOAD])
def test_round_trip_sizes(size: int) -> None:
    payload = payload_of(size, seed=size)
    stored = protect(payload)
    assert isinstance(stored, bytes)
    assert len(stored) == stored_size(size)
    assert recover(stored) == Recovered(payload=payload, corrected=0, stored=stored)


@pytest.mark.parametrize("parity", [MIN_PARITY, 4, 16, DEFAULT_PARITY, MAX_PARITY])
@pytest.mark.parametrize("size", [0, 1, 700])
def test_round_trip_parities(parity: int, size: int) -> None:
    payload = payload_of(size, seed=parity)
    stored = protect(payload, parity=parity)
    assert len(stored) == stored_size(size, parity=parity)
    result = recover(stored)
    assert (result.payload, result.corrected, result.stored) == (payload, 0, stored)


@FAST
@given(payload=st.binary(max_size=2000), parity=st.sampled_from(PARITIES))
def test_round_trip_random(payload: bytes, parity: int) -> None:
    result = recover(protect(payload, parity=parity))
    assert result.payload == payload
    assert result.corrected == 0


def test_accepts_bytes_like_and_is_deterministic() -> None:
    payload = b"shard header"
    stored = protect(payload)
    assert protect(bytearray(payload)) == protect(memoryview(payload)) == stored
    assert recover(bytearray(stored)).payload == payload
    assert recover(memoryview(stored)).payload == payload


def test_stored_form_matches_documented_format() -> None:
    """An independent reader built from the module docstring decodes the stored form."""
    payload, parity = payload_of(1000, seed=7), 16
    stored = protect(payload, parity=parity)
    framing = stored[:FRAMING]
    assert stored[-FRAMING:] == framing
    fields = bytes(reedsolo.RSCodec(32).decode(framing)[0])
    assert struct.unpack(">2sBBI", fields) == (b"OV", 1, parity, len(payload))
    message = payload + blake3.blake3(fields + payload).digest()[:16]
    body = stored[FRAMING:-FRAMING]
    n = -(-len(message) // (255 - parity))
    assert len(stored) == 80 + len(message) + n * parity
    assert body[: len(message)] == message  # systematic
    for j in range(n):
        assert body[j::n] == bytes(reedsolo.RSCodec(parity).encode(message[j::n]))


# --- repair within the limit ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_up_to_half_parity_errors_anywhere_are_corrected(data: st.DataObject) -> None:
    parity = data.draw(st.sampled_from([2, 4, 8, 16, DEFAULT_PARITY, MAX_PARITY]), label="parity")
    payload = payload_of(data.draw(st.integers(0, 1500), label="size"), seed=parity)
    stored = protect(payload, parity=parity)
    count = data.draw(st.integers(1, parity // 2), label="errors")
    positions = data.draw(
        st.lists(st.integers(0, len(stored) - 1), min_size=count, max_size=count, unique=True),
        label="positions",
    )
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    result = recover(damage(stored, positions, rng))
    assert result.payload == payload
    assert result.corrected == count
    assert result.stored == stored


@pytest.mark.parametrize("where", ["front", "back"])
def test_one_framing_copy_destroyed_is_corrected(where: str) -> None:
    payload = payload_of(1024)
    stored = protect(payload)
    span = range(FRAMING) if where == "front" else range(len(stored) - FRAMING, len(stored))
    result = recover(damage(stored, list(span), random.Random(1)))
    assert (result.payload, result.corrected, result.stored) == (payload, FRAMING, stored)


def test_half_parity_errors_in_every_codeword_are_corrected() -> None:
    """The per-codeword limit, reached in every codeword at once, plus damage in both framings."""
    rng = random.Random(3)
    payload, parity = payload_of(2000, seed=3), DEFAULT_PARITY
    stored = protect(payload, parity=parity)
    n = codewords(len(payload), parity)
    body_len = len(stored) - 2 * FRAMING
    positions = [FRAMING + i for j in range(n) for i in rng.sample(range(j, body_len, n), parity // 2)]
    positions += rng.sample(range(FRAMING), 16) + rng.sample(range(len(stored) - FRAMING, len(stored)), 16)
    result = recover(damage(stored, positions, rng))
    assert (result.payload, result.corrected) == (payload, len(positions))


@FAST
@given(payload_len=st.sampled_from([0, 300, 1024, 4096]), offset=st.floats(0, 1), seed=st.integers(0, 99))
def test_burst_is_spread_over_codewords(payload_len: int, offset: float, seed: int) -> None:
    """A burst of n * parity/2 adjacent damaged bytes anywhere is corrected thanks to interleaving."""
    payload = payload_of(payload_len, seed=seed)
    stored = protect(payload)
    burst = codewords(payload_len, DEFAULT_PARITY) * DEFAULT_PARITY // 2
    start = int(offset * (len(stored) - burst))
    result = recover(damage(stored, list(range(start, start + burst)), random.Random(seed)))
    assert (result.payload, result.corrected) == (payload, burst)


def test_every_single_bit_flip_in_a_small_record_is_corrected() -> None:
    payload = payload_of(100, seed=5)
    stored = protect(payload)
    for pos in range(len(stored)):
        flipped = bytearray(stored)
        flipped[pos] ^= 1 << (pos % 8)
        result = recover(bytes(flipped))
        assert (result.payload, result.corrected, result.stored) == (payload, 1, stored), pos


@functools.cache
def stored_4k() -> bytes:
    return protect(payload_of(4096, seed=11))


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(0, stored_size(4096) - 1), bit=st.integers(0, 7))
def test_single_bit_flip_anywhere_is_corrected(pos: int, bit: int) -> None:
    """The realistic radiation case, on a 4 KiB record: always repaired, and counted."""
    stored = stored_4k()
    flipped = bytearray(stored)
    flipped[pos] ^= 1 << bit
    result = recover(bytes(flipped))
    assert (result.payload, result.corrected) == (payload_of(4096, seed=11), 1)


# --- beyond the limit: reported, never wrong bytes -----------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_heavy_damage_gives_exact_payload_or_uncorrectable(data: st.DataObject) -> None:
    parity = data.draw(st.sampled_from([2, 4, 16, DEFAULT_PARITY]), label="parity")
    payload = payload_of(data.draw(st.integers(0, 600), label="size"), seed=parity)
    stored = protect(payload, parity=parity)
    count = data.draw(st.integers(parity // 2 + 1, len(stored)), label="errors")
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    if data.draw(st.booleans(), label="burst"):
        start = rng.randrange(len(stored) - count + 1)
        positions = list(range(start, start + count))
    else:
        positions = rng.sample(range(len(stored)), count)
    try:
        result = recover(damage(stored, positions, rng))
    except RecordUncorrectable:
        event("reported")
        return
    event("repaired" if result.stored == stored else "wrong stored form")
    assert result.payload == payload
    assert result.stored == stored


@pytest.mark.parametrize("parity", [2, 8, DEFAULT_PARITY])
def test_one_error_too_many_in_a_codeword_is_reported(parity: int) -> None:
    """parity/2 + 1 damaged data bytes in one codeword: reedsolo fails or miscorrects; both reported."""
    rng = random.Random(parity)
    payload = payload_of(1500, seed=parity)
    stored = protect(payload, parity=parity)
    n = codewords(len(payload), parity)
    column = rng.randrange(n)
    positions = [FRAMING + i for i in rng.sample(range(column, len(payload) + 16, n), parity // 2 + 1)]
    with pytest.raises(RecordUncorrectable, match="beyond repair"):
        recover(damage(stored, positions, rng))


def test_both_framing_copies_destroyed_is_reported() -> None:
    stored = protect(payload_of(500))
    positions = list(range(FRAMING)) + list(range(len(stored) - FRAMING, len(stored)))
    with pytest.raises(RecordUncorrectable, match="framing"):
        recover(damage(stored, positions, random.Random(2)))


def test_blanked_memory_is_reported_as_data_loss() -> None:
    """All-zero framing copies are valid Reed-Solomon codewords; they must still count as damage."""
    stored = protect(payload_of(300))
    with pytest.raises(RecordUncorrectable):
        recover(bytes(len(stored)))
    front_blanked = bytes(FRAMING + 10) + stored[FRAMING + 10 :]
    assert recover(front_blanked).payload == payload_of(300)
    with pytest.raises(RecordUncorrectable):
        recover(bytes(FRAMING) + stored[FRAMING:-FRAMING] + bytes(FRAMING))


def test_garbage_of_a_plausible_length_is_reported_as_data_loss() -> None:
    stored = protect(payload_of(1024))
    with pytest.raises(RecordUncorrectable) as info:
        recover(random.Random(4).randbytes(len(stored)))
    assert isinstance(info.value, DataLoss)
    assert info.value.status is Status.DATA_LOSS


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["text", 42, None, [1, 2], 3.0])
def test_protect_rejects_non_bytes(payload: object) -> None:
    with pytest.raises(InvalidArgument, match="payload must be bytes"):
        protect(payload)  # type: ignore[arg-type]


def test_protect_rejects_too_large() -> None:
    with pytest.raises(InvalidArgument, match=f"at most {MAX_PAYLOAD} bytes"):
        protect(bytes(MAX_PAYLOAD + 1))


@pytest.mark.parametrize("parity", [0, 1, 3, -2, MAX_PARITY + 2, 254, 256, True, 32.0, "32", None])
def test_protect_rejects_bad_parity(parity: object) -> None:
    with pytest.raises(InvalidArgument, match="parity"):
        protect(b"x", parity=parity)  # type: ignore[arg-type]


@pytest.mark.parametrize("stored", ["text", 42, None, [1, 2]])
def test_recover_rejects_non_bytes(stored: object) -> None:
    with pytest.raises(InvalidArgument, match="stored must be bytes"):
        recover(stored)  # type: ignore[arg-type]


def _truncations() -> list[bytes]:
    stored = protect(payload_of(1024, seed=9))
    return [b"", b"\x00", stored[:50], stored[:97], stored[:300], stored[:-1], stored[1:], stored + b"\x00"]


@pytest.mark.parametrize("bad", _truncations(), ids=lambda b: f"{len(b)}B")
def test_recover_rejects_empty_truncated_or_extended(bad: bytes) -> None:
    with pytest.raises(InvalidArgument, match="truncated"):
        recover(bad)


def test_recover_rejects_impossibly_long_input() -> None:
    with pytest.raises(InvalidArgument, match="not a protected record"):
        recover(bytes(stored_size(MAX_PAYLOAD, parity=MAX_PARITY) + 1))


def test_recover_rejects_unknown_format_version() -> None:
    payload = b"from a future orbitvault"
    stored = protect(payload)
    fields = struct.pack(">2sBBI", b"OV", 2, DEFAULT_PARITY, len(payload))
    framing = bytes(reedsolo.RSCodec(32).encode(fields))
    with pytest.raises(InvalidArgument, match="version 2"):
        recover(framing + stored[FRAMING:-FRAMING] + framing)


@pytest.mark.parametrize(("payload_len", "parity"), [(-1, 32), (MAX_PAYLOAD + 1, 32), ("1", 32), (1, 3), (1, 0)])
def test_stored_size_rejects_bad_arguments(payload_len: object, parity: object) -> None:
    with pytest.raises(InvalidArgument):
        stored_size(payload_len, parity=parity)  # type: ignore[arg-type]


def test_recovered_is_frozen() -> None:
    result = recover(protect(b"abc"))
    with pytest.raises(AttributeError):
        result.corrected = 1  # type: ignore[misc]
