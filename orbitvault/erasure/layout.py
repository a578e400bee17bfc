"""Object bytes -> stripes -> rows: the arithmetic of design §2, with no coding in it.

An object is cut into stripes of `stripe_size` bytes (the last one shorter). A stripe is cut into
rows of `row_size = k * fragment_size` bytes (the last one shorter); each row is coded on its own
into k+m fragments, and shard i of a stripe is fragment i of every row. The row is the unit of
coding, checksumming and repair, so a damaged 64 KiB block is rebuilt from the same row of k other
shards, not from whole shards. Short last rows are padded by the codec, never by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orbitvault.erasure.codec import check_geometry
from orbitvault.errors import GeometryError, InvalidArgument

KiB = 1024
MiB = 1024 * KiB
DEFAULT_FRAGMENT_SIZE = 64 * KiB
MIN_FRAGMENT_SIZE = 64  # small fragments only make sense in tests; they keep every code path reachable
MAX_FRAGMENT_SIZE = 8 * MiB
MAX_STRIPE_SIZE = 64 * MiB  # design §2: stripes hold at most 64 MiB of data


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open byte range [offset, offset + length) of an object or stripe."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class StripePiece:
    """The part of a byte range that falls in one stripe, in stripe-relative offsets."""

    stripe: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Geometry:
    """Storage class of a bucket: k+m, fragment size, stripe size.

    `stripe_size=0` picks the largest multiple of the row size that fits in 64 MiB.
    """

    k: int
    m: int
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    stripe_size: int = 0
    row_size: int = field(init=False)

    def __post_init__(self) -> None:
        check_geometry(self.k, self.m)
        fs = self.fragment_size
        if not isinstance(fs, int) or not MIN_FRAGMENT_SIZE <= fs <= MAX_FRAGMENT_SIZE:
            raise GeometryError(
                f"fragment_size={fs!r} must be an integer from {MIN_FRAGMENT_SIZE} to {MAX_FRAGMENT_SIZE}"
            )
        row = self.k * fs
        if row > MAX_STRIPE_SIZE:
            raise GeometryError(f"a row of {self.k} x {fs} bytes exceeds the {MAX_STRIPE_SIZE}-byte stripe limit")
        stripe = self.stripe_size or (MAX_STRIPE_SIZE // row) * row
        if not isinstance(stripe, int) or stripe <= 0 or stripe > MAX_STRIPE_SIZE or stripe % row:
            raise GeometryError(
                f"stripe_size={self.stripe_size!r} must be a positive multiple of the row size "
                f"{row} (k x fragment_size) and at most {MAX_STRIPE_SIZE}"
            )
        object.__setattr__(self, "stripe_size", stripe)
        object.__setattr__(self, "row_size", row)

    @property
    def n(self) -> int:
        """Fragments per row, shards per stripe."""
        return self.k + self.m

    @property
    def rows_per_stripe(self) -> int:
        return self.stripe_size // self.row_size

    def __str__(self) -> str:
        return f"{self.k}+{self.m} ({self.fragment_size / KiB:g} KiB fragments, {self.stripe_size / MiB:g} MiB stripes)"

    # --- object -> stripes ----------------------------------------------------------------------

    def stripe_count(self, object_len: int) -> int:
        _check_length(object_len, "object length")
        return -(-object_len // self.stripe_size)

    def stripe_span(self, index: int, object_len: int) -> Span:
        """Where stripe `index` of an `object_len`-byte object lies in the object."""
        count = self.stripe_count(object_len)
        if not isinstance(index, int) or not 0 <= index < count:
            raise InvalidArgument(f"stripe {index!r} out of range: the object has {count} stripe(s)")
        start = index * self.stripe_size
        return Span(start, min(self.stripe_size, object_len - start))

    def stripe_spans(self, object_len: int) -> list[Span]:
        return [self.stripe_span(i, object_len) for i in range(self.stripe_count(object_len))]

    def locate(self, offset: int, length: int, object_len: int) -> list[StripePiece]:
        """The stripes (and stripe-relative ranges) that hold object bytes [offset, offset+length)."""
        _check_range(offset, length, object_len, "object")
        pieces: list[StripePiece] = []
        pos, end = offset, offset + length
        while pos < end:
            stripe, inner = divmod(pos, self.stripe_size)
            take = min(end - pos, self.stripe_size - inner)
            pieces.append(StripePiece(stripe, inner, take))
            pos += take
        return pieces

    # --- stripe -> rows -------------------------------------------------------------------------

    def row_count(self, stripe_len: int) -> int:
        self._check_stripe_len(stripe_len)
        return -(-stripe_len // self.row_size)

    def row_span(self, row: int, stripe_len: int) -> Span:
        """Where row `row` of a `stripe_len`-byte stripe lies in the stripe."""
        count = self.row_count(stripe_len)
        if not isinstance(row, int) or not 0 <= row < count:
            raise InvalidArgument(f"row {row!r} out of range: the stripe has {count} row(s)")
        start = row * self.row_size
        return Span(start, min(self.row_size, stripe_len - start))

    def rows_for_range(self, offset: int, length: int, stripe_len: int) -> range:
        """The rows that hold stripe bytes [offset, offset+length); empty for length 0."""
        self._check_stripe_len(stripe_len)
        _check_range(offset, length, stripe_len, "stripe")
        if length == 0:
            return range(0)
        return range(offset // self.row_size, (offset + length - 1) // self.row_size + 1)

    def _check_stripe_len(self, stripe_len: int) -> None:
        _check_length(stripe_len, "stripe length")
        if stripe_len > self.stripe_size:
            raise InvalidArgument(f"stripe length {stripe_len} exceeds the stripe size {self.stripe_size}")


def _check_length(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer, got {value!r}")


def _check_range(offset: int, length: int, total: int, what: str) -> None:
    _check_length(offset, "offset")
    _check_length(length, "length")
    if offset + length > total:
        raise InvalidArgument(f"range {offset}+{length} runs past the end of the {total}-byte {what}")
