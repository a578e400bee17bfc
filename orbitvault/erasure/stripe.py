"""Encode a stripe into k+m shards, decode it (or a byte range) and rebuild fragments of rows.

Every fragment-row carries a blake3 checksum, made at encode time and verified before the
fragment is used: a damaged fragment is an erasure, never decoded into output. Rows are decoded
independently, so each row may use a different set of k healthy fragments.

Shards are kept as lists of per-row fragments rather than one concatenated buffer: the node stores
rows individually, and concatenating would copy every byte once more for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import blake3

from orbitvault.erasure.codec import Codec
from orbitvault.erasure.layout import Geometry
from orbitvault.errors import FragmentError, InvalidArgument, TooFewFragments

CHECKSUM_LEN = 32


def checksum(fragment: bytes) -> bytes:
    """The 32-byte blake3 of one fragment-row."""
    return blake3.blake3(fragment).digest()


@dataclass(frozen=True, slots=True)
class ShardRows:
    """Consecutive rows `first_row`, `first_row+1`, ... of shard `index`, with their checksums.

    A fragment may be None where its holder knows it is missing or damaged.
    """

    index: int
    first_row: int
    fragments: Sequence[bytes | None]
    checksums: Sequence[bytes]

    @property
    def rows(self) -> range:
        return range(self.first_row, self.first_row + len(self.fragments))


@dataclass(frozen=True, slots=True)
class EncodedStripe:
    """The k+m shards of one stripe; `shards[i]` holds fragment i of every row."""

    geometry: Geometry
    data_len: int
    shards: list[ShardRows]

    @property
    def row_count(self) -> int:
        return self.geometry.row_count(self.data_len)


@dataclass(frozen=True, slots=True)
class Decoded:
    """Decoded bytes as per-row chunks, and the (row, shard) fragments found damaged (for repair).

    Chunks are kept apart because readers stream them: joining a 64 MiB stripe into one fresh
    buffer costs as much as decoding it (page faults on the new allocation).
    """

    chunks: list[bytes]
    damaged: list[tuple[int, int]]

    @property
    def data(self) -> bytes:
        """The decoded bytes in one buffer (a copy; prefer `chunks` on hot paths)."""
        return b"".join(self.chunks)


class StripeCoder:
    """Stripe-level coding for one geometry: rows through the codec, checksums around them."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.codec = Codec(geometry.k, geometry.m)

    def encode(self, data: bytes | bytearray | memoryview) -> EncodedStripe:
        """Cut `data` (at most one stripe) into rows and code each row into k+m fragments."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument(f"encode takes bytes, got {type(data).__name__}")
        view = memoryview(data).cast("B")
        size = self.geometry.row_size
        self.geometry.row_count(len(view))  # refuses more than a stripe
        return self.encode_rows([bytes(view[start : start + size]) for start in range(0, len(view), size)])

    def encode_rows(self, rows: Sequence[bytes]) -> EncodedStripe:
        """Code a stripe given as its rows: every row full (`row_size` bytes) but the last.

        The gateway seals one segment per row, so its rows arrive as separate buffers and are
        coded as they are (the codec takes bytes; slicing one stripe buffer would copy each row).
        """
        g = self.geometry
        if len(rows) > g.row_count(g.stripe_size):
            raise InvalidArgument(f"a stripe holds at most {g.row_count(g.stripe_size)} rows, got {len(rows)}")
        fragments: list[list[bytes]] = [[] for _ in range(g.n)]
        checksums: list[list[bytes]] = [[] for _ in range(g.n)]
        for r, row in enumerate(rows):
            if len(row) != g.row_size and (r != len(rows) - 1 or not 0 < len(row) < g.row_size):
                raise InvalidArgument(f"row {r} is {len(row)} bytes; every row but the last holds {g.row_size}")
            for i, frag in enumerate(self.codec.encode(row)):
                fragments[i].append(frag)
                checksums[i].append(checksum(frag))
        shards = [ShardRows(i, 0, fragments[i], checksums[i]) for i in range(g.n)]
        return EncodedStripe(g, sum(len(row) for row in rows), shards)

    def decode(
        self, stripe_len: int, shards: Iterable[ShardRows], offset: int = 0, length: int | None = None
    ) -> Decoded:
        """Bytes [offset, offset+length) of a `stripe_len`-byte stripe from any k healthy shards per row.

        `shards` need only cover the rows of the range; a shard may be given as several pieces.
        Raises TooFewFragments naming the row when fewer than k healthy fragments of it remain.
        """
        g = self.geometry
        if length is None:
            g.rows_for_range(offset, 0, stripe_len)  # validates stripe_len and offset
            length = stripe_len - offset
        rows = g.rows_for_range(offset, length, stripe_len)
        available = self._index(shards, stripe_len)
        damaged: list[tuple[int, int]] = []
        parts: list[bytes] = []
        for r in rows:
            row = g.row_span(r, stripe_len)
            healthy = self._healthy(r, available.get(r, {}), self.geometry.k, damaged)
            data = self.codec.decode(healthy, row.length)
            lo = max(offset - row.offset, 0)
            hi = min(offset + length - row.offset, row.length)
            parts.append(data if (lo, hi) == (0, row.length) else data[lo:hi])
        return Decoded(parts, damaged)

    def rebuild(
        self,
        stripe_len: int,
        shards: Iterable[ShardRows],
        targets: Iterable[int],
        rows: Iterable[int] | None = None,
    ) -> dict[int, dict[int, bytes]]:
        """Fragments of shards `targets` at `rows` (default: all) from k healthy others per row.

        Returns {shard index: {row: fragment}}; each rebuilt fragment is byte-identical to the
        original, so it matches the checksum stored for it.
        """
        g = self.geometry
        wanted = sorted(set(targets))
        for t in wanted:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < g.n:
                raise FragmentError(f"target shard {t!r} is out of range 0..{g.n - 1} for {g.k}+{g.m}")
        row_list = range(g.row_count(stripe_len)) if rows is None else sorted(set(rows))
        row_lens = {r: g.row_span(r, stripe_len).length for r in row_list}  # validates the rows
        available = self._index(shards, stripe_len)
        out: dict[int, dict[int, bytes]] = {t: {} for t in wanted}
        for r in row_list:
            sources = {i: f for i, f in available.get(r, {}).items() if i not in wanted}
            healthy = self._healthy(r, sources, g.k, [])
            rebuilt = self.codec.reconstruct(healthy, row_lens[r], wanted)
            for t, frag in rebuilt.items():
                out[t][r] = frag
        return out

    def _index(self, shards: Iterable[ShardRows], stripe_len: int) -> dict[int, dict[int, tuple[bytes | None, bytes]]]:
        """{row: {shard: (fragment, checksum)}}, refusing malformed or contradictory input."""
        g = self.geometry
        row_count = g.row_count(stripe_len)
        available: dict[int, dict[int, tuple[bytes | None, bytes]]] = {}
        for piece in shards:
            if not isinstance(piece, ShardRows):
                raise FragmentError(f"shards must be ShardRows, got {type(piece).__name__}")
            if not isinstance(piece.index, int) or not 0 <= piece.index < g.n:
                raise FragmentError(f"shard index {piece.index!r} is out of range 0..{g.n - 1} for {g.k}+{g.m}")
            if len(piece.fragments) != len(piece.checksums):
                raise FragmentError(
                    f"shard {piece.index}: {len(piece.fragments)} fragments but {len(piece.checksums)} checksums"
                )
            if piece.first_row < 0 or piece.first_row + len(piece.fragments) > row_count:
                raise FragmentError(
                    f"shard {piece.index}: rows {piece.first_row}..{piece.first_row + len(piece.fragments) - 1} "
                    f"are outside the stripe's {row_count} row(s)"
                )
            for r, frag, digest in zip(piece.rows, piece.fragments, piece.checksums, strict=True):
                if not isinstance(digest, bytes) or len(digest) != CHECKSUM_LEN:
                    raise FragmentError(f"shard {piece.index} row {r}: a checksum is {CHECKSUM_LEN} bytes")
                if frag is not None and not isinstance(frag, bytes):
                    raise FragmentError(f"shard {piece.index} row {r}: fragment must be bytes or None")
                row = available.setdefault(r, {})
                if piece.index in row:
                    raise FragmentError(f"shard {piece.index} row {r} is given twice")
                row[piece.index] = (frag, digest)
        return available

    @staticmethod
    def _healthy(
        row: int,
        candidates: dict[int, tuple[bytes | None, bytes]],
        k: int,
        damaged: list[tuple[int, int]],
    ) -> dict[int, bytes]:
        """The first k candidates (data fragments first) whose checksum holds; failures -> `damaged`."""
        healthy: dict[int, bytes] = {}
        bad: list[int] = []
        for i in sorted(candidates):
            if len(healthy) == k:
                break
            frag, digest = candidates[i]
            if frag is None:
                continue
            if checksum(frag) != digest:
                bad.append(i)
                continue
            healthy[i] = frag
        damaged.extend((row, i) for i in bad)
        if len(healthy) < k:
            raise TooFewFragments(
                f"row {row}: {len(healthy)} healthy fragment(s) of the {k} needed"
                + (f"; fragments {bad} failed their checksum" if bad else ""),
                row=row,
                healthy=sorted(healthy),
                damaged=bad,
            )
        return healthy


@lru_cache(maxsize=32)
def coder_for(geometry: Geometry) -> StripeCoder:
    """A shared StripeCoder per geometry: creating the ISA-L driver is not free, and coders are stateless."""
    return StripeCoder(geometry)
