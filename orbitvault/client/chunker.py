"""Content-defined chunking (FastCDC 2020 via `pyfastcdc`), parameters from the repository config.

Every client of one repository must cut identically for deduplication to work, so the parameters
(min/avg/max and the gear seed) live in the encrypted config. The seed XORs pyfastcdc's gear table:
without it, cut points are a function of the content alone and chunk sizes could fingerprint
known files even through encryption.

pyfastcdc's streaming mode allocates a buffer of 2 x max_size per call, too costly for the many
small files of a typical tree, so files up to that size are read whole and cut from memory (one
allocation of the file's size); bigger files are streamed. Chunk memoryviews are only valid until
the next chunk is produced: consumers hash/compress/encrypt them before asking for the next.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from pyfastcdc import FastCDC

from orbitvault.client.errors import InvalidFormat

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC parameters. pyfastcdc's own bounds apply (min 64 B..1 MiB, avg 256 B..4 MiB, max 1 KiB..16 MiB);
    the seed is below 2**63 (pyfastcdc shifts it left by one bit into a uint64)."""

    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 8 * MiB
    seed: int = 0
    normalization: int = 1

    def validate(self) -> None:
        if not (
            64 <= self.min_size <= MiB and 256 <= self.avg_size <= 4 * MiB and 1 * KiB <= self.max_size <= 16 * MiB
        ):
            raise InvalidFormat(f"chunker sizes out of pyfastcdc's range: {self}")
        if not (self.min_size <= self.avg_size <= self.max_size):
            raise InvalidFormat(f"chunker sizes must satisfy min <= avg <= max: {self}")
        if not (0 <= self.seed < 2**63 and 0 <= self.normalization <= 3):
            raise InvalidFormat(f"chunker seed/normalization out of range: {self}")

    def to_json(self) -> dict[str, int | str]:
        return {"algorithm": "fastcdc2020", **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ChunkerParams:
        if d.get("algorithm") != "fastcdc2020":
            raise InvalidFormat(f"unknown chunker algorithm {d.get('algorithm')!r}")
        try:
            p = cls(
                min_size=int(d["min_size"]),  # type: ignore[arg-type]
                avg_size=int(d["avg_size"]),  # type: ignore[arg-type]
                max_size=int(d["max_size"]),  # type: ignore[arg-type]
                seed=int(d["seed"]),  # type: ignore[arg-type]
                normalization=int(d.get("normalization", 1)),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidFormat(f"bad chunker parameters in config: {e}") from None
        p.validate()
        return p


class _PrefixReader:
    """`readinto` over bytes already read, then the rest of the file descriptor."""

    def __init__(self, prefix: bytes, raw: io.FileIO) -> None:
        self._prefix = memoryview(prefix)
        self._raw = raw

    def readinto(self, b: memoryview) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._raw.readinto(b) or 0


class Chunker:
    """Cuts files into chunks; one FastCDC instance per thread (they are not thread-safe)."""

    def __init__(self, params: ChunkerParams) -> None:
        params.validate()
        self.params = params
        self._local = threading.local()
        self.whole_file_limit = 2 * params.max_size

    def _cdc(self) -> FastCDC:
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            p = self.params
            cdc = FastCDC(
                p.avg_size, min_size=p.min_size, max_size=p.max_size, normalized_chunking=p.normalization, seed=p.seed
            )  # type: ignore[arg-type]
            self._local.cdc = cdc
        return cdc

    def chunk_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        if not data:
            return
        if len(data) <= self.params.min_size:  # FastCDC never cuts below min_size: one chunk
            yield memoryview(data)
            return
        for c in self._cdc().cut_buf(data):
            yield c.data

    def chunk_fd(self, fd: int, size_hint: int) -> Iterator[memoryview]:
        """Chunks of an open file, from its current position to EOF, whatever its size by now.

        `size_hint` (the size from stat) only sizes the first read, so a small file costs one
        allocation of its own size.
        """
        limit = self.whole_file_limit
        hint = max(size_hint, 0)
        if hint <= limit:
            # One read of the stat size; only a file that grew since needs more reads.
            head = os.read(fd, hint + 1) if hint else _read_up_to(fd, limit + 1)
            if len(head) == hint + 1 or (0 < len(head) < hint):
                head += _read_up_to(fd, limit + 1 - len(head))
        else:
            head = _read_up_to(fd, limit + 1)
        if len(head) <= limit:
            yield from self.chunk_bytes(head)
            return
        raw = io.FileIO(fd, "rb", closefd=False)  # only here: it costs an fstat
        for c in self._cdc().cut_stream(_PrefixReader(head, raw)):
            yield c.data


def _read_up_to(fd: int, n: int) -> bytes:
    """Up to n bytes (fewer only at EOF), in one allocation when the file is smaller than n."""
    first = os.read(fd, n)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        more = os.read(fd, n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts) if len(parts) > 1 else first
