"""Shards kept on the ground: the spool (waiting for uplink windows) and the restore cache.

Scheduled mode seals and codes an object exactly as direct mode does, then writes its k+m shards
per stripe here instead of to nodes; the shards go up later, window by window. RestoreObject
brings k shards per stripe down into a second `GroundShards` (the restore cache). Both are read
like nodes are (`GroundCopies.get_rows`), so GetObject decodes from whichever k shards it finds.

One file per shard: `<root>/<object id hex>/<stripe:08d>-<index:02d>.shard` holding a fixed head
(magic, row count, full and last fragment length) and then, per row, its 32-byte checksum and its
fragment, so any row range is one seek and one read. Every file is written to a temporary name,
fsynced and renamed, and the directory fsynced: a shard file is whole or absent after a crash, and
a put holds at most the stripes it is coding in memory, never the object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from orbitvault.erasure.stripe import CHECKSUM_LEN
from orbitvault.errors import DataLoss, NotFound
from orbitvault.ground.ports import FetchedRows

MAGIC = b"OVSHARD1"
_HEAD = struct.Struct(">8sIII")  # magic, row count, full fragment length, last fragment length
_SUFFIX = ".shard"
STAGING = ".staging"


class GroundShards:
    """Shard files under one root directory (thread-safe: files are immutable once renamed)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _dir(self, object_id: bytes) -> Path:
        return self.root / object_id.hex()

    def path(self, object_id: bytes, stripe: int, index: int) -> Path:
        return self._dir(object_id) / f"{stripe:08d}-{index:02d}{_SUFFIX}"

    # --- writing ------------------------------------------------------------------------------------

    def write(
        self,
        object_id: bytes,
        stripe: int,
        index: int,
        fragments: Sequence[bytes],
        checksums: Sequence[bytes],
        *,
        sync_dir: bool = True,
        staged: bool = False,
    ) -> int:
        """Store one whole shard durably (temp + fsync + rename); returns the bytes written.

        `staged` writes it under `.staging/` instead, invisible to readers until `commit_staged`
        (a restore's downlink: the shard counts once its window's last byte has arrived).
        """
        if not fragments or len(fragments) != len(checksums):
            raise ValueError("a shard needs at least one row and a checksum per fragment")
        full, last = len(fragments[0]), len(fragments[-1])
        if any(len(f) != full for f in fragments[:-1]) or any(len(c) != CHECKSUM_LEN for c in checksums):
            raise ValueError("every fragment but the last must have one length; checksums are 32 bytes")
        final = self._staged(object_id, stripe, index) if staged else self.path(object_id, stripe, index)
        d = final.parent
        d.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.urandom(4).hex()}.tmp")
        written = 0
        try:
            with open(tmp, "wb") as f:
                f.write(_HEAD.pack(MAGIC, len(fragments), full, last))
                for frag, digest in zip(fragments, checksums, strict=True):
                    f.write(digest)
                    f.write(frag)
                    written += len(digest) + len(frag)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if sync_dir and not staged:
            self.sync(object_id)
        return written

    def _staged(self, object_id: bytes, stripe: int, index: int) -> Path:
        return self.root / STAGING / object_id.hex() / f"{stripe:08d}-{index:02d}{_SUFFIX}"

    def commit_staged(self, object_id: bytes, stripe: int, index: int) -> None:
        """Make a staged shard visible (rename into place, directory synced)."""
        final = self.path(object_id, stripe, index)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._staged(object_id, stripe, index), final)
        self.sync(object_id)

    def drop_staged(self, object_id: bytes | None = None) -> None:
        """Forget staged shards (of one object, or all: a restart abandons downlinks in flight)."""
        root = self.root / STAGING
        shutil.rmtree(root / object_id.hex() if object_id is not None else root, ignore_errors=True)

    def sync(self, object_id: bytes) -> None:
        """fsync the object's directory (and the root), so renames in it survive a crash."""
        for d in (self._dir(object_id), self.root):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- reading ------------------------------------------------------------------------------------

    def indexes(self, object_id: bytes, stripe: int) -> set[int]:
        """Shard indexes of the stripe held here."""
        prefix = f"{stripe:08d}-"
        try:
            names = os.listdir(self._dir(object_id))
        except FileNotFoundError:
            return set()
        return {int(n[len(prefix) : -len(_SUFFIX)]) for n in names if n.startswith(prefix) and n.endswith(_SUFFIX)}

    def has(self, object_id: bytes, stripe: int, index: int) -> bool:
        return self.path(object_id, stripe, index).exists()

    def get_rows(self, object_id: bytes, stripe: int, index: int, first_row: int, row_count: int) -> FetchedRows:
        """Rows [first_row, first_row + row_count) of a shard, as a node would answer them."""
        path = self.path(object_id, stripe, index)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with below; only the open may fail NotFound
        except FileNotFoundError:
            raise NotFound(f"shard {stripe}/{index} of {object_id.hex()[:16]} is not on the ground") from None
        with f:
            magic, rows, full, last = _HEAD.unpack(f.read(_HEAD.size))
            if magic != MAGIC or first_row < 0 or first_row + row_count > rows:
                raise DataLoss(f"ground shard file {path} is damaged or shorter than rows asked")
            f.seek(_HEAD.size + first_row * (CHECKSUM_LEN + full))
            frags: list[bytes | None] = []
            sums: list[bytes] = []
            for r in range(first_row, first_row + row_count):
                n = last if r == rows - 1 else full
                digest = f.read(CHECKSUM_LEN)
                frag = f.read(n)
                if len(digest) != CHECKSUM_LEN or len(frag) != n:
                    raise DataLoss(f"ground shard file {path} is truncated at row {r}")
                sums.append(digest)
                frags.append(frag)  # the reader verifies it against its checksum like any fragment
        return FetchedRows(first_row, frags, sums)

    def read_all(self, object_id: bytes, stripe: int, index: int) -> FetchedRows:
        with open(self.path(object_id, stripe, index), "rb") as f:
            _magic, rows, _full, _last = _HEAD.unpack(f.read(_HEAD.size))
        return self.get_rows(object_id, stripe, index, 0, rows)

    # --- housekeeping ---------------------------------------------------------------------------------

    def objects(self) -> Iterator[bytes]:
        """Objects with a directory here (whole or partial)."""
        for name in os.listdir(self.root):
            if len(name) == 64:
                with contextlib.suppress(ValueError):
                    yield bytes.fromhex(name)

    def remove(self, object_id: bytes) -> None:
        """Drop every shard of an object (idempotent)."""
        shutil.rmtree(self._dir(object_id), ignore_errors=True)
        self.drop_staged(object_id)

    def discard_temp(self, object_id: bytes) -> None:
        """Remove temporary files a crashed write left in an object's directory."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._dir(object_id)):
                if name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        (self._dir(object_id) / name).unlink()


class GroundCopies:
    """Every ground copy the read path may use: spooled shards first, then restored ones."""

    def __init__(self, *stores: GroundShards) -> None:
        self.stores = stores

    def shards(self, object_id: bytes, stripe: int) -> set[int]:
        out: set[int] = set()
        for s in self.stores:
            out |= s.indexes(object_id, stripe)
        return out

    def get_rows(self, object_id: bytes, stripe: int, index: int, first_row: int, row_count: int) -> FetchedRows:
        for s in self.stores:
            if s.has(object_id, stripe, index):
                return s.get_rows(object_id, stripe, index, first_row, row_count)
        raise NotFound(f"shard {stripe}/{index} of {object_id.hex()[:16]} is not on the ground")
