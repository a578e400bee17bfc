"""Protected records: small critical records that repair their own byte errors.

A satellite node keeps, in front of each shard, a header record (stripe geometry, object id, sibling
nodes) that radiation can damage; later the gateway's catalog records use the same scheme. Losing
such a record loses everything it describes, so it is stored with Reed-Solomon parity (the
`reedsolo` package) and repaired in place: `recover` returns the payload and how many bytes it had
to repair, and the caller rewrites `Recovered.stored` when that number is not zero. A record damaged
beyond what the code can correct is *reported* (`RecordUncorrectable`), never returned: reedsolo
can silently miscorrect past its limit, so a BLAKE3 tag over the framing and the payload decides
whether a decode is right.

Guarantees, for a record protected with parity `p` (even, 2..64):

- any `p/2` damaged bytes anywhere in the stored form (framing included) are corrected;
- more precisely, up to `p/2` damaged bytes in each body codeword, with at least one of the two
  framing copies having at most 16 damaged bytes;
- one burst of up to `n * p/2` adjacent damaged bytes anywhere is corrected (`n` = number of body
  codewords; the body is interleaved, and a burst can reach only one framing copy);
- anything worse raises `RecordUncorrectable` or, in the worst case, still returns the exact
  payload (when the damage spared the payload and the tag); wrong bytes are never returned.

Default parity: 32, the CCSDS RS(255,223) code that space links use. It corrects 16 damaged bytes
in every 255-byte codeword (6.3% of the bytes) for 14.3% of parity, plus 96 fixed bytes (framing
and tag): a 1 KiB record is stored in 1280 bytes (+25%), a 4 KiB one in 4800 (+17%). Memory upsets
in LEO run near 1e-6 per bit per day, mostly single-bit, so a 4 KiB record sees about one upset a
month; 16 per codeword leaves a wide margin for multi-bit upsets and for records nobody rereads
for years, and the cost in bytes is small next to the shard the record describes. Parity 16
(6.7%, 8 bytes per codeword) halves the encode/decode time if that ever matters; pure-Python
reedsolo's time grows with length x parity. The compiled twin `creedsolo` (shipped in reedsolo's
2.x wheels, same field and generator, byte-identical codewords) is used when importable: it
protects a 1 KiB record in ~0.03 ms instead of ~3 ms, which keeps header checks off the hot path.

Stored format, version 1 (all integers big-endian)::

    stored  = F || body || F                 F = framing codeword, 40 bytes, twice (identical)
    F       = RS32(fields)                   8 field bytes + 32 parity bytes
    fields  = "OV" | version u8 = 1 | parity u8 | payload_len u32
    message = payload || tag                 L = payload_len + 16 bytes
    tag     = BLAKE3-256(fields || payload)[:16]
    n       = ceil(L / (255 - parity))       number of body codewords
    C_j     = RSparity(message[j::n])        j = 0..n-1; data bytes then `parity` parity bytes
    body[j::n] = C_j                         len(body) = L + n * parity

So body byte `i` is byte `i // n` of codeword `i % n`, and the body is systematic: `body[:L]` is
`message` verbatim, followed by the interleaved parity bytes. `len(stored)` is
`80 + L + n * parity` and must match the framing (`stored_size`).

`RSk(m)` is reedsolo's systematic Reed-Solomon encoding with `k` parity bytes over GF(2^8) with
primitive polynomial 0x11d, generator alpha = 2 and first consecutive root alpha^0:
`RSk(m) = m || (m(x) * x^k mod g(x))` with `g(x) = prod_{i<k} (x - alpha^i)`, the first byte
being the highest-degree coefficient; codewords shorter than 255 bytes are shortened codes
(implicit leading zeros). This is `reedsolo.RSCodec(k)` with its defaults.

Decoding: try the framing copies at `stored[:40]` then `stored[-40:]`; a copy counts if it RS
decodes to fields with magic "OV", version 1, an even parity in 2..64, `payload_len <= 16384`, and
describes exactly `len(stored)` bytes. For each such copy, RS-decode every `body[j::n]`, reassemble
`message`, and accept the payload only if the tag matches. A copy that decodes with magic "OV" but
another version means a newer format (`InvalidArgument`) if no copy is usable; any other undecodable
or invalid copy is damage (an all-zero copy is a valid codeword: blanked memory is damage too).
A fast path accepts a record whose first framing copy parses as-is and whose tag matches over the
raw systematic bytes, without RS decoding; the tag makes both paths equally trustworthy.

reedsolo keeps its field tables in module globals; every codec here uses the same field, so
concurrent use from several threads is safe as long as nothing else in the process configures
reedsolo with a different field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

import blake3

try:  # the compiled implementation; identical codewords, ~100x faster
    import creedsolo as reedsolo
except ImportError:  # pragma: no cover - pure-Python fallback
    import reedsolo  # type: ignore[no-redef]

from orbitvault.errors import InvalidArgument, RecordUncorrectable

__all__ = [
    "DEFAULT_PARITY",
    "MAX_PARITY",
    "MAX_PAYLOAD",
    "MIN_PARITY",
    "Recovered",
    "protect",
    "recover",
    "stored_size",
]

DEFAULT_PARITY = 32
MIN_PARITY = 2
# Beyond 64 (33% parity per codeword) a second copy of the record protects better; 64 also keeps
# "p/2 errors anywhere" true, since both 16-error framing copies fail only with 34+ damaged bytes.
MAX_PARITY = 64
# Records are headers and catalog entries, not data: bulk data belongs in erasure-coded rows, and
# pure-Python Reed-Solomon runs at well under 1 MB/s.
MAX_PAYLOAD = 16 * 1024

_MAGIC = b"OV"
_VERSION = 1
_FIELDS = struct.Struct(">2sBBI")  # magic, version, parity, payload length
_FRAMING_PARITY = 32
_FRAMING_SIZE = _FIELDS.size + _FRAMING_PARITY
_TAG_SIZE = 16
_CODEWORD_MAX = 255  # GF(2^8) codeword length

BytesLike = bytes | bytearray | memoryview

# What reedsolo raises on undecodable input: its own error, plus arithmetic and indexing
# failures on pathological garbage. All of them mean "this codeword cannot be decoded".
_RS_ERRORS = (reedsolo.ReedSolomonError, ZeroDivisionError, ValueError, IndexError)


@dataclass(frozen=True, slots=True)
class Recovered:
    """A record read back from its stored form.

    `corrected` is the number of stored bytes that were damaged and repaired (0 for a clean
    record): when it is not zero, write `stored` (the repaired stored form, byte for byte what
    `protect` returned) back in place, before more damage accumulates past the code's limit.
    """

    payload: bytes
    corrected: int
    stored: bytes = field(repr=False)


class _Fields(NamedTuple):
    parity: int
    payload_len: int

    def pack(self) -> bytes:
        return _FIELDS.pack(_MAGIC, _VERSION, self.parity, self.payload_len)


def stored_size(payload_len: int, *, parity: int = DEFAULT_PARITY) -> int:
    """Length of the stored form of a `payload_len`-byte record, so callers can reserve space."""
    _check_parity(parity)
    if not isinstance(payload_len, int) or isinstance(payload_len, bool) or payload_len < 0:
        raise InvalidArgument(f"payload_len must be a non-negative integer, got {payload_len!r}")
    if payload_len > MAX_PAYLOAD:
        raise InvalidArgument(_too_large(payload_len))
    return _size(payload_len, parity)


def protect(payload: BytesLike, *, parity: int = DEFAULT_PARITY) -> bytes:
    """Return the stored form of `payload`: framing, tag and Reed-Solomon parity added.

    `parity` bytes per 255-byte codeword correct `parity // 2` damaged bytes in it; see the module
    docstring for the format and what the default buys.
    """
    data = _as_bytes(payload, "payload")
    _check_parity(parity)
    if len(data) > MAX_PAYLOAD:
        raise InvalidArgument(_too_large(len(data)))
    fields = _Fields(parity, len(data)).pack()
    message = data + _tag(fields, data)
    n = _codeword_count(len(message), parity)
    codec = _codec(parity)
    body = bytearray(len(message) + n * parity)
    for j in range(n):
        body[j::n] = codec.encode(bytearray(message[j::n]))  # creedsolo wants writable buffers
    framing = bytes(_codec(_FRAMING_PARITY).encode(bytearray(fields)))
    return framing + bytes(body) + framing


def recover(stored: BytesLike) -> Recovered:
    """Decode a stored form, repairing damaged bytes, or raise rather than return wrong bytes.

    Raises `RecordUncorrectable` when the damage is beyond the code's limit (including garbage of
    a plausible length: to a decoder it is the same thing), and `InvalidArgument` when `stored` is
    not bytes, has a length no record can have, or its intact framing describes a different length
    (the record was truncated or extended).
    """
    data = _as_bytes(stored, "stored")
    lowest, highest = _size(0, MIN_PARITY), _size(MAX_PAYLOAD, MAX_PARITY)
    if not lowest <= len(data) <= highest:
        raise InvalidArgument(
            f"stored record is {len(data)} bytes; a protected record is {lowest} to {highest} bytes, "
            "so this one is truncated or is not a protected record"
        )
    payload, parity = _read_undamaged(data) or _decode(data)
    expected = protect(payload, parity=parity)
    return Recovered(payload=payload, corrected=_count_differences(expected, data), stored=expected)


# --- internals ------------------------------------------------------------------------------------


@cache
def _codec(parity: int) -> reedsolo.RSCodec:
    return reedsolo.RSCodec(parity)


def _as_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(f"{name} must be bytes, bytearray or memoryview, not {type(value).__name__}")
    return bytes(value)


def _check_parity(parity: object) -> None:
    if not isinstance(parity, int) or isinstance(parity, bool):
        raise InvalidArgument(f"parity must be an integer, got {parity!r}")
    if not MIN_PARITY <= parity <= MAX_PARITY or parity % 2:
        raise InvalidArgument(
            f"parity={parity}: use an even number of parity bytes per codeword from {MIN_PARITY} "
            f"to {MAX_PARITY} (it corrects parity/2 damaged bytes; default {DEFAULT_PARITY})"
        )


def _too_large(length: int) -> str:
    return (
        f"payload is {length} bytes; protected records hold at most {MAX_PAYLOAD} bytes "
        "(store bulk data as erasure-coded rows, and keep only its description in a record)"
    )


def _codeword_count(message_len: int, parity: int) -> int:
    return -(-message_len // (_CODEWORD_MAX - parity))


def _size(payload_len: int, parity: int) -> int:
    message_len = payload_len + _TAG_SIZE
    return 2 * _FRAMING_SIZE + message_len + _codeword_count(message_len, parity) * parity


def _tag(fields: bytes, payload: bytes) -> bytes:
    return blake3.blake3(fields + payload).digest(length=_TAG_SIZE)


def _parse_fields(raw: bytes) -> _Fields | None:
    """Version-1 framing fields, or None if these are not (damage, or blanked memory).

    Raises InvalidArgument only for a well-formed record of another format version. A wrong magic
    counts as damage, not as foreign data: an all-zero framing copy is a valid Reed-Solomon
    codeword, and zeroed memory is a failure to report as data loss.
    """
    magic, version, parity, payload_len = _FIELDS.unpack(raw)
    if magic != _MAGIC:
        return None
    if version != _VERSION:
        raise InvalidArgument(
            f"protected record format version {version} is not supported (this orbitvault reads "
            f"version {_VERSION}); upgrade orbitvault to read it"
        )
    if not MIN_PARITY <= parity <= MAX_PARITY or parity % 2 or payload_len > MAX_PAYLOAD:
        return None
    return _Fields(parity, payload_len)


def _read_undamaged(data: bytes) -> tuple[bytes, int] | None:
    """Fast path: the payload, if the first framing copy and the tag are intact as stored.

    The body is systematic, so an intact record needs no Reed-Solomon decoding at all; the tag
    proves the payload right. Damage elsewhere (parity bytes, second copy) is still counted by
    `recover`, which compares the whole stored form with a fresh encoding.
    """
    try:
        fields = _parse_fields(data[: _FIELDS.size])
    except InvalidArgument:  # perhaps a damaged version byte: let the slow path decide
        return None
    if fields is None or _size(fields.payload_len, fields.parity) != len(data):
        return None
    start = _FRAMING_SIZE
    payload = data[start : start + fields.payload_len]
    tag = data[start + fields.payload_len : start + fields.payload_len + _TAG_SIZE]
    if tag != _tag(fields.pack(), payload):
        return None
    return payload, fields.parity


def _decode(data: bytes) -> tuple[bytes, int]:
    """Slow path: Reed-Solomon decode framing and body, trying each framing copy."""
    framing_codec = _codec(_FRAMING_PARITY)
    candidates: list[_Fields] = []
    unsupported: InvalidArgument | None = None
    for copy in (data[:_FRAMING_SIZE], data[-_FRAMING_SIZE:]):
        try:
            raw = bytes(framing_codec.decode(bytearray(copy))[0])
        except _RS_ERRORS:
            continue
        try:
            fields = _parse_fields(raw)
        except InvalidArgument as exc:
            unsupported = exc
            continue
        if fields is not None and fields not in candidates:
            candidates.append(fields)
    if not candidates:
        if unsupported is not None:
            raise unsupported
        raise RecordUncorrectable(
            f"protected record ({len(data)} bytes) is damaged beyond repair: both copies of its "
            f"framing have more than {_FRAMING_PARITY // 2} damaged bytes (or were blanked); restore "
            "it from another copy"
        )
    sized = [fields for fields in candidates if _size(fields.payload_len, fields.parity) == len(data)]
    if not sized:
        described = _size(candidates[0].payload_len, candidates[0].parity)
        raise InvalidArgument(
            f"stored record is {len(data)} bytes but its framing describes a {described}-byte record: "
            "it was truncated or extended; pass exactly the bytes protect() returned"
        )
    errors: list[RecordUncorrectable] = []
    for fields in sized:
        try:
            return _decode_body(data[_FRAMING_SIZE:-_FRAMING_SIZE], fields), fields.parity
        except RecordUncorrectable as exc:
            errors.append(exc)
    raise errors[0]


def _decode_body(body: bytes, fields: _Fields) -> bytes:
    parity = fields.parity
    message = bytearray(fields.payload_len + _TAG_SIZE)
    n = _codeword_count(len(message), parity)
    codec = _codec(parity)
    for j in range(n):
        try:
            message[j::n] = codec.decode(bytearray(body[j::n]))[0]
        except _RS_ERRORS as exc:
            raise RecordUncorrectable(
                f"protected record is damaged beyond repair: codeword {j} of {n} has more than "
                f"{parity // 2} damaged bytes; restore it from another copy"
            ) from exc
    payload = bytes(message[: fields.payload_len])
    if bytes(message[fields.payload_len :]) != _tag(fields.pack(), payload):
        raise RecordUncorrectable(
            "protected record is damaged beyond repair: Reed-Solomon decoding produced bytes that fail "
            f"the record's tag (more than {parity // 2} damaged bytes in a codeword); restore it from "
            "another copy"
        )
    return payload


def _count_differences(a: bytes, b: bytes) -> int:
    """Number of positions where equal-length `a` and `b` differ, without a Python byte loop."""
    if a == b:
        return 0
    diff = (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
    return len(diff) - diff.count(0)
