"""Reed-Solomon k+m codec: ISA-L Cauchy matrices through pyeclib.

Cauchy matrices are MDS for every geometry (ISA-L's Vandermonde ones are not beyond small sizes),
so any k of the k+m fragments reproduce the data. This module codes one *row* at a time; the
stripe/row layout and checksums live in `orbitvault.erasure.stripe`.

A fragment is exactly what pyeclib produces: liberasurecode's 80-byte fragment header (index,
sizes, backend) followed by ceil(len(data)/k) payload bytes. The header is kept, not stripped:
decode and reconstruct need it, and it costs 0.12% on a 64 KiB fragment.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from functools import lru_cache

from orbitvault.errors import FragmentError, GeometryError, TooFewFragments

with warnings.catch_warnings():
    # pyeclib warns at import about its deprecated Jerasure backend, which we never use.
    warnings.simplefilter("ignore", FutureWarning)
    from pyeclib.ec_iface import ECDriver, ECDriverError

EC_TYPE = "isa_l_rs_cauchy"
# liberasurecode's EC_MAX_FRAGMENTS: its fragment bookkeeping is only specified up to 32 fragments,
# so larger geometries are refused even where pyeclib happens to accept them.
MAX_FRAGMENTS = 32


def check_geometry(k: int, m: int) -> None:
    """Raise GeometryError unless k+m is a geometry the backend guarantees to be MDS."""
    if not isinstance(k, int) or not isinstance(m, int) or isinstance(k, bool) or isinstance(m, bool):
        raise GeometryError(f"k and m must be integers, got k={k!r}, m={m!r}")
    if k < 1:
        raise GeometryError(f"k={k}: at least one data fragment per row is needed")
    if m < 1:
        raise GeometryError(f"m={m}: at least one parity fragment is needed, or nothing can be repaired")
    if k + m > MAX_FRAGMENTS:
        raise GeometryError(f"k+m={k + m}: the ISA-L backend supports at most {MAX_FRAGMENTS} fragments")


class Codec:
    """Encode one row into k+m fragments; decode or rebuild it from any k of them."""

    def __init__(self, k: int, m: int) -> None:
        check_geometry(k, m)
        self.k = k
        self.m = m
        self.n = k + m
        try:
            self._driver = ECDriver(k=k, m=m, ec_type=EC_TYPE)
        except ECDriverError as exc:  # pragma: no cover - backend missing from the pyeclib build
            raise GeometryError(f"{EC_TYPE} cannot code {k}+{m}: {exc}") from exc
        self.fragment_len = lru_cache(maxsize=64)(self._fragment_len)

    def __repr__(self) -> str:
        return f"Codec({self.k}+{self.m}, {EC_TYPE})"

    def _fragment_len(self, data_len: int) -> int:
        """Length of every fragment of a row holding `data_len` bytes (header included)."""
        if data_len < 1:
            raise FragmentError(f"a row holds at least 1 byte, got {data_len}")
        return int(self._driver.get_segment_info(data_len, data_len)["fragment_size"])

    def encode(self, data: bytes) -> list[bytes]:
        """k+m fragments of `data`, indexed 0..k+m-1 (0..k-1 hold the data, the rest parity)."""
        if not isinstance(data, bytes):
            raise FragmentError(f"encode takes bytes, got {type(data).__name__}")
        if not data:
            raise FragmentError("cannot encode an empty row")
        return self._driver.encode(data)

    def decode(self, fragments: Mapping[int, bytes], data_len: int) -> bytes:
        """The row's `data_len` bytes from at least k fragments (index -> fragment).

        Fragments must be known-good (checksum-verified by the caller): Reed-Solomon without
        checksums cannot tell a damaged fragment from a healthy one.
        """
        chosen = self._choose(fragments, data_len)
        try:
            data = self._driver.decode(chosen)
        except ECDriverError as exc:
            raise FragmentError(f"fragments rejected by the decoder: {exc}") from exc
        if len(data) != data_len:
            raise FragmentError(f"decoder returned {len(data)} bytes, expected {data_len}")
        return data

    def reconstruct(self, fragments: Mapping[int, bytes], data_len: int, targets: Iterable[int]) -> dict[int, bytes]:
        """Rebuild the fragments at `targets` (byte-identical to the originals) from any k others."""
        wanted = sorted(set(self._check_indexes(targets, "target")))
        if not wanted:
            return {}
        chosen = self._choose({i: f for i, f in fragments.items() if i not in wanted}, data_len)
        try:
            rebuilt = self._driver.reconstruct(chosen, wanted)
        except ECDriverError as exc:
            raise FragmentError(f"fragments rejected by the decoder: {exc}") from exc
        return dict(zip(wanted, rebuilt, strict=True))

    def _check_indexes(self, indexes: Iterable[int], what: str) -> list[int]:
        out = list(indexes)
        for i in out:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.n:
                raise FragmentError(f"{what} index {i!r} is out of range 0..{self.n - 1} for {self.k}+{self.m}")
        return out

    def _choose(self, fragments: Mapping[int, bytes], data_len: int) -> list[bytes]:
        """k fragments to decode from, data fragments first (their decode is a copy, not a solve)."""
        indexes = sorted(self._check_indexes(fragments.keys(), "fragment"))
        if len(indexes) < self.k:
            raise TooFewFragments(
                f"{len(indexes)} fragment(s) given, {self.k} needed to decode a {self.k}+{self.m} row",
                row=-1,
                healthy=indexes,
                damaged=[],
            )
        expected = self.fragment_len(data_len)
        chosen: list[bytes] = []
        for i in indexes[: self.k]:
            frag = fragments[i]
            if not isinstance(frag, bytes):
                raise FragmentError(f"fragment {i} must be bytes, got {type(frag).__name__}")
            if len(frag) != expected:
                raise FragmentError(
                    f"fragment {i} is {len(frag)} bytes; a row of {data_len} bytes has {expected}-byte fragments"
                )
            try:
                meta = self._driver.get_metadata(frag, formatted=True)
            except ECDriverError as exc:
                raise FragmentError(f"fragment {i} has a damaged or foreign header: {exc}") from exc
            if meta["index"] != i or meta["orig_data_size"] != data_len:
                raise FragmentError(
                    f"fragment given as index {i} of a {data_len}-byte row is index {meta['index']} "
                    f"of a {meta['orig_data_size']}-byte row"
                )
            chosen.append(frag)
        return chosen
