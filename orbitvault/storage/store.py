"""The satellite node's shard store, on LMDB.

A shard is a protected header record plus rows. Every write is one LMDB transaction, synced at
commit, so a shard is either wholly there or absent after a crash at any instant; readers never
block the writer, and several processes (`node serve`, `node scrub`) may open one store.

LMDB layout (named databases in `<path>/lmdb`):

    meta      str key -> bytes          node_id, simulation flag, used_bytes and capacity (u64), scrub state
    headers   shard_id -> protected record of ShardHeader.encode()
    info      shard_id -> stored_bytes u64 | last_verified_unix_ms i64 | damaged_rows u32
    rows      shard_id | row u32 -> checksum[32] | fragment
    sums      shard_id -> checksum[32] * row_count   (second copy of every row checksum)
    crcs      shard_id | row u32 -> CRC32 u32 per 4 KiB block of the fragment, then a CRC32 of those
              (`bitfix`; a damaged record is rewritten from the verified fragment by `verify_rows`)
    by_object object_id | shard_id -> b""
    uploads   shard_id -> id length u8 | committed rows u32 | expires i64 | upload id | header record
              (partial uploads of scheduled mode; their rows and checksums sit in `rows`/`sums`
              already, the shard becomes visible when `headers` gets it at the last row)

Checksums are kept twice because radiation hits them too: a row is verified against the copy
beside it; when they disagree, two of {fragment hash, copy 1, copy 2} agreeing tells which of the
three is damaged. A damaged checksum copy is rewritten in place. A damaged fragment with at most two
flipped bits per 4 KiB block is corrected in place from its block CRCs (`bitfix`, `correct_rows`);
beyond that it must be rebuilt from peers. A corrected or rebuilt fragment is accepted only if it
matches one of the two stored checksum copies. Rows stored before block CRCs existed get theirs from
the next scrub (`verify_rows`), and go to peers until then.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import blake3
import lmdb

from orbitvault.erasure.record import protect, recover, stored_size
from orbitvault.erasure.stripe import CHECKSUM_LEN
from orbitvault.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrbitVaultError,
    ResourceExhausted,
)
from orbitvault.storage import bitfix
from orbitvault.storage.header import ID_LEN, ShardHeader

_ROW_KEY = struct.Struct(">32sI")
_INFO = struct.Struct(">QqI")
_U64 = struct.Struct(">Q")
_READ_BATCH_BYTES = 4 << 20  # rows copied out per read transaction
_FLUSH_BYTES = 8 << 20  # an upload commits (synced) every this many bytes of verified rows
_UPLOAD = struct.Struct(">BIq")  # upload id length, committed rows, expires unix ms
UPLOAD_TTL_MS = 7 * 24 * 3600 * 1000  # a partial upload not resumed within a week is dropped

HEADER = "header"
CHECKSUMS = "checksums"


@dataclass(frozen=True, slots=True)
class CrcRecord:
    """Fault injection address of one row's block CRC record."""

    row: int


Target = int | str | CrcRecord  # a row number, HEADER, CHECKSUMS or a CrcRecord (fault injection addresses)


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Consecutive rows of a shard as they arrive: fragments[i] is row first_row + i (a fragment
    may be a view of the received message: the store copies it once, into the database)."""

    first_row: int
    fragments: Sequence[bytes | memoryview]
    checksums: Sequence[bytes]


class RowStatus(Enum):
    OK = "ok"
    DAMAGED = "damaged"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class RowRead:
    """One row as read: the fragment only when it verified; always the expected checksum."""

    row: int
    status: RowStatus
    fragment: bytes | None
    checksum: bytes


@dataclass(frozen=True, slots=True)
class ShardInfo:
    header: ShardHeader
    stored_bytes: int
    damaged_rows: int
    last_verified_unix_ms: int


@dataclass(frozen=True, slots=True)
class UploadState:
    """Where a resumable upload stands: rows below `committed_rows` are committed."""

    header: ShardHeader
    upload_id: bytes
    committed_rows: int
    expires_unix_ms: int  # 0 once complete

    @property
    def complete(self) -> bool:
        return self.committed_rows == self.header.row_count


@dataclass(frozen=True, slots=True)
class _Upload:
    upload_id: bytes
    committed_rows: int
    expires_unix_ms: int
    record: bytes  # the protected header record, stored as is when the shard completes

    @property
    def header(self) -> ShardHeader:
        return ShardHeader.decode(recover(self.record).payload)


def _pack_upload(upload_id: bytes, committed: int, expires: int, record: bytes) -> bytes:
    return _UPLOAD.pack(len(upload_id), committed, expires) + upload_id + record


def _unpack_upload(value: bytes) -> _Upload:
    n, committed, expires = _UPLOAD.unpack_from(value)
    start = _UPLOAD.size
    return _Upload(bytes(value[start : start + n]), committed, expires, bytes(value[start + n :]))


@dataclass(frozen=True, slots=True)
class RowCheck:
    """Result of verifying a shard's rows in place (the scrubber's unit of work)."""

    damaged: list[int]  # rows whose fragment is damaged: they need a rebuild from peers
    checksums_fixed: int  # rows whose checksum copy or block CRC record was damaged and rewritten in place
    bytes_verified: int


class ShardStore:
    """Shards of one node: put, read (verified), repair, delete, list; all transactional."""

    def __init__(
        self,
        path: str | Path,
        *,
        capacity_bytes: int | None = None,
        create: bool = True,
        simulation: bool = False,
        sync: bool = True,
    ) -> None:
        if capacity_bytes is not None and (
            not isinstance(capacity_bytes, int) or isinstance(capacity_bytes, bool) or capacity_bytes <= 0
        ):
            raise InvalidArgument(f"capacity must be a positive number of bytes, got {capacity_bytes!r}")
        self.path = Path(path)
        db_path = self.path / "lmdb"
        if not db_path.exists():
            if not create:
                raise NotFound(f"no shard store at {self.path}")
            if capacity_bytes is None:
                raise InvalidArgument("a new shard store needs a capacity")
            db_path.mkdir(parents=True)
        known = _read_capacity(db_path)
        capacity = capacity_bytes or known
        if capacity is None:
            raise InvalidArgument(f"the shard store at {self.path} records no capacity; give one")
        self.capacity_bytes: int = capacity
        # The map is a sparse reservation, sized from capacity so it never fills before the store does
        # (LMDB stores a 64 KiB value in 17 pages; headroom covers that and the B-trees). Every
        # process sizes it from the same recorded capacity, and never below what the file holds.
        data_file = db_path / "data.mdb"
        map_size = max(capacity * 2 + (256 << 20), data_file.stat().st_size if data_file.exists() else 0)
        try:
            self._env = lmdb.open(
                str(db_path), map_size=map_size, max_dbs=16, sync=sync, metasync=sync, readahead=False
            )
        except lmdb.Error as exc:
            raise FailedPrecondition(f"cannot open the shard store at {self.path}: {exc}") from exc
        self._meta = self._env.open_db(b"meta")
        self._headers = self._env.open_db(b"headers")
        self._info = self._env.open_db(b"info")
        self._rows = self._env.open_db(b"rows")
        self._sums = self._env.open_db(b"sums")
        self._by_object = self._env.open_db(b"by_object")
        self._uploads = self._env.open_db(b"uploads")
        self._crcs = self._env.open_db(b"crcs")
        with self._env.begin(write=True) as txn:
            node_id = txn.get(b"node_id", db=self._meta)
            if node_id is None:
                node_id = os.urandom(ID_LEN)
                txn.put(b"node_id", node_id, db=self._meta)
                txn.put(b"simulation", b"1" if simulation else b"0", db=self._meta)
                txn.put(b"used_bytes", _U64.pack(0), db=self._meta)
            self.node_id: bytes = bytes(node_id)
            self.simulation: bool = txn.get(b"simulation", db=self._meta) == b"1"
            if known != capacity:
                txn.put(b"capacity", _U64.pack(capacity), db=self._meta)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- accounting -----------------------------------------------------------------------------

    def used_bytes(self) -> int:
        with self._env.begin() as txn:
            return _U64.unpack(txn.get(b"used_bytes", db=self._meta))[0]

    def shard_count(self) -> int:
        with self._env.begin() as txn:
            return txn.stat(self._headers)["entries"]

    @staticmethod
    def required_bytes(header: ShardHeader) -> int:
        """What storing this shard counts against capacity: rows, both checksum copies, header."""
        return header.shard_len() + 2 * CHECKSUM_LEN * header.row_count + stored_size(len(header.encode()))

    # --- put --------------------------------------------------------------------------------------

    def put(self, header: ShardHeader, batches: Iterable[RowBatch]) -> ShardInfo:
        """Store a whole shard in one synced transaction, or nothing (see module docstring)."""
        if not isinstance(header, ShardHeader):
            raise InvalidArgument("put needs a ShardHeader")
        required = self.required_bytes(header)
        with self._env.begin() as txn:
            self._check_room(txn, header, required)
        rows = self._collect(header, batches)
        record = protect(header.encode())
        try:
            with self._env.begin(write=True) as txn:
                sid = header.shard_id
                self._drop_upload(txn, sid)  # a whole shard supersedes a partial upload of it
                self._check_room(txn, header, required)  # authoritative: another put may have raced us
                txn.put(sid, record, db=self._headers)
                txn.put(sid, _INFO.pack(required, 0, 0), db=self._info)
                txn.put(sid, b"".join(digest for digest, _ in rows), db=self._sums)
                txn.put(header.object_id + sid, b"", db=self._by_object)
                for r, (digest, fragment) in enumerate(rows):
                    txn.put(_ROW_KEY.pack(sid, r), digest + fragment, db=self._rows)
                    txn.put(_ROW_KEY.pack(sid, r), bitfix.block_crcs(fragment), db=self._crcs)
                self._add_used(txn, required)
        except lmdb.MapFullError as exc:
            raise ResourceExhausted(f"the node's store map is full ({exc}); free space or raise capacity") from exc
        return ShardInfo(header, required, 0, 0)

    def _check_room(self, txn: lmdb.Transaction, header: ShardHeader, required: int) -> None:
        if txn.get(header.shard_id, db=self._headers) is not None:
            raise AlreadyExists(f"shard {header.shard_id.hex()} is already stored; delete it first")
        used = _U64.unpack(txn.get(b"used_bytes", db=self._meta))[0]
        if used + required > self.capacity_bytes:
            raise ResourceExhausted(
                f"node full: the shard needs {required} bytes, {self.capacity_bytes - used} of "
                f"{self.capacity_bytes} are free"
            )

    def _collect(self, header: ShardHeader, batches: Iterable[RowBatch]) -> list[tuple[bytes, bytes]]:
        """Validate a whole-shard stream into memory; commit happens only once it is whole."""
        rows = [(digest, fragment) for _, digest, fragment in self._incoming(header, batches, 0, b"")]
        if len(rows) != header.row_count:
            raise InvalidArgument(f"the stream ended after {len(rows)} row(s); the header says {header.row_count}")
        return rows

    @staticmethod
    def _incoming(
        header: ShardHeader, batches: Iterable[RowBatch], committed: int, committed_sums: bytes
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """(row, checksum, fragment) of every new row, each checked for order, length and checksum.

        The first batch may start at or below `committed` (a resumed transfer re-sending what it
        was not sure had arrived); rows below it must carry the checksum already stored and are
        skipped, so nothing committed is rewritten.
        """
        row_count = header.row_count
        full_len = header.fragment_len(0)
        last_len = header.fragment_len(row_count - 1)
        expected: int | None = None
        for batch in batches:
            if not isinstance(batch, RowBatch):
                raise InvalidArgument("shard rows must arrive as RowBatch messages")
            if expected is None:
                if not 0 <= batch.first_row <= committed:
                    raise InvalidArgument(f"rows must continue at row {committed}; got a batch at {batch.first_row}")
                expected = batch.first_row
            elif batch.first_row != expected:
                raise InvalidArgument(f"rows out of order: expected row {expected}, got a batch at {batch.first_row}")
            if len(batch.fragments) != len(batch.checksums):
                raise InvalidArgument(
                    f"batch at row {batch.first_row}: {len(batch.fragments)} fragments, "
                    f"{len(batch.checksums)} checksums"
                )
            for fragment, digest in zip(batch.fragments, batch.checksums, strict=True):
                r, expected = expected, expected + 1
                if r >= row_count:
                    raise InvalidArgument(f"the stream carries more than the header's {row_count} row(s)")
                if not isinstance(digest, bytes) or len(digest) != CHECKSUM_LEN:
                    raise InvalidArgument(f"row {r}: a checksum is {CHECKSUM_LEN} bytes")
                if r < committed:
                    if digest != committed_sums[r * CHECKSUM_LEN : (r + 1) * CHECKSUM_LEN]:
                        raise InvalidArgument(f"row {r} differs from the row already committed for this upload")
                    continue
                want = last_len if r == row_count - 1 else full_len
                if not isinstance(fragment, bytes | memoryview) or len(fragment) != want:
                    got = len(fragment) if isinstance(fragment, bytes | memoryview) else type(fragment).__name__
                    raise InvalidArgument(f"row {r}: fragment is {got} bytes, the header implies {want}")
                if blake3.blake3(fragment).digest() != digest:
                    raise InvalidArgument(f"row {r}: fragment does not match its checksum (damaged in transit?)")
                yield r, digest, fragment

    # --- resumable uploads (scheduled mode) -------------------------------------------------------

    def put_rows(
        self,
        header: ShardHeader,
        upload_id: bytes,
        batches: Iterable[RowBatch],
        *,
        now_unix_ms: int,
        resume: bool = False,
        ttl_ms: int = UPLOAD_TTL_MS,
    ) -> UploadState:
        """Receive a shard across contact windows: rows are committed as they arrive.

        A transfer cut at loss of signal keeps every verified row; `resume=True` continues it
        from `committed_rows`. The shard stays invisible until its last row commits. Delivering
        a complete shard again is harmless (its state is returned, nothing is rewritten). Space
        for the whole shard is reserved when the upload starts, so it cannot fail later for room.
        """
        if not isinstance(header, ShardHeader):
            raise InvalidArgument("put_rows needs a ShardHeader")
        if not isinstance(upload_id, bytes) or not 16 <= len(upload_id) <= 32:
            raise InvalidArgument("an upload id is 16 to 32 bytes")
        sid, payload = header.shard_id, header.encode()
        expires = now_unix_ms + ttl_ms
        with self._env.begin(write=True) as txn:
            stored = txn.get(sid, db=self._headers)
            if stored is not None:
                if recover(bytes(stored)).payload != payload:
                    raise AlreadyExists(f"shard {sid.hex()} is already stored with another header")
                return UploadState(header, upload_id, header.row_count, 0)
            current = self._upload(txn, sid)
            if resume:
                if current is None:
                    raise FailedPrecondition(
                        f"no partial upload of shard {sid.hex()} to resume (never started or expired); "
                        "start it again without resume"
                    )
                if current.upload_id != upload_id or current.header.encode() != payload:
                    raise FailedPrecondition(
                        f"upload {upload_id.hex()} does not match the partial upload of {sid.hex()}"
                    )
                committed = current.committed_rows
            else:
                if current is not None:
                    self._drop_upload(txn, sid)
                required = self.required_bytes(header)
                self._check_room(txn, header, required)
                self._add_used(txn, required)
                txn.put(sid, b"", db=self._sums)
                committed = 0
            txn.put(sid, _pack_upload(upload_id, committed, expires, protect(payload)), db=self._uploads)
            committed_sums = bytes(txn.get(sid, db=self._sums) or b"")
        pending: list[tuple[int, bytes, bytes]] = []
        size = 0
        try:
            for row in self._incoming(header, batches, committed, committed_sums):
                pending.append(row)
                size += len(row[2])
                if size >= _FLUSH_BYTES:
                    committed = self._flush(header, upload_id, pending, expires)
                    pending, size = [], 0
        finally:
            if pending:  # keep every verified row, even when the stream broke or lied further on
                committed = self._flush(header, upload_id, pending, expires)
        return UploadState(header, upload_id, committed, 0 if committed == header.row_count else expires)

    def _flush(self, header: ShardHeader, upload_id: bytes, rows: list[tuple[int, bytes, bytes]], expires: int) -> int:
        """Commit verified rows of an upload (one synced transaction); finish the shard at its last row."""
        sid = header.shard_id
        try:
            with self._env.begin(write=True) as txn:
                current = self._upload(txn, sid)
                if current is None or current.upload_id != upload_id:
                    raise FailedPrecondition(f"upload {upload_id.hex()} of shard {sid.hex()} was replaced or expired")
                committed = current.committed_rows
                sums = bytearray(txn.get(sid, db=self._sums) or b"")
                for r, digest, fragment in rows:
                    if r < committed:
                        continue  # a duplicate delivery committed it meanwhile; checksums were compared
                    if r != committed:
                        raise FailedPrecondition(f"upload of {sid.hex()} is at row {committed}, not {r}")
                    txn.put(_ROW_KEY.pack(sid, r), digest + fragment, db=self._rows)
                    txn.put(_ROW_KEY.pack(sid, r), bitfix.block_crcs(fragment), db=self._crcs)
                    sums += digest
                    committed += 1
                txn.put(sid, bytes(sums), db=self._sums)
                if committed == header.row_count:
                    txn.put(sid, current.record, db=self._headers)
                    txn.put(sid, _INFO.pack(self.required_bytes(header), 0, 0), db=self._info)
                    txn.put(header.object_id + sid, b"", db=self._by_object)
                    txn.delete(sid, db=self._uploads)
                else:
                    txn.put(sid, _pack_upload(upload_id, committed, expires, current.record), db=self._uploads)
        except lmdb.MapFullError as exc:
            raise ResourceExhausted(f"the node's store map is full ({exc}); free space or raise capacity") from exc
        return committed

    def upload_state(self, shard_id: bytes) -> UploadState | None:
        """The partial upload of a shard, if one is in progress (None for complete or absent shards)."""
        _check_id(shard_id)
        with self._env.begin() as txn:
            current = self._upload(txn, shard_id)
        if current is None:
            return None
        return UploadState(current.header, current.upload_id, current.committed_rows, current.expires_unix_ms)

    def expire_uploads(self, now_unix_ms: int) -> int:
        """Drop partial uploads past their expiry (their reserved space is freed); returns how many."""
        with self._env.begin(write=True) as txn:
            expired = [
                bytes(sid)
                for sid, value in txn.cursor(db=self._uploads)
                if _unpack_upload(value).expires_unix_ms <= now_unix_ms
            ]
            for sid in expired:
                self._drop_upload(txn, sid)
        return len(expired)

    def _upload(self, txn: lmdb.Transaction, shard_id: bytes) -> _Upload | None:
        value = txn.get(shard_id, db=self._uploads)
        return None if value is None else _unpack_upload(value)

    def _drop_upload(self, txn: lmdb.Transaction, shard_id: bytes) -> None:
        """Forget a partial upload: its rows, its checksums and its reservation."""
        current = self._upload(txn, shard_id)
        if current is None:
            return
        self._delete_rows(txn, shard_id)
        txn.delete(shard_id, db=self._sums)
        txn.delete(shard_id, db=self._uploads)
        self._add_used(txn, -self.required_bytes(current.header))

    def _delete_rows(self, txn: lmdb.Transaction, shard_id: bytes) -> None:
        for db in (self._rows, self._crcs):
            cursor = txn.cursor(db=db)
            if cursor.set_range(_ROW_KEY.pack(shard_id, 0)):
                while cursor.key()[:ID_LEN] == shard_id and cursor.delete():
                    pass

    def _add_used(self, txn: lmdb.Transaction, delta: int) -> None:
        used = _U64.unpack(txn.get(b"used_bytes", db=self._meta))[0]
        txn.put(b"used_bytes", _U64.pack(max(used + delta, 0)), db=self._meta)

    # --- reads ------------------------------------------------------------------------------------

    def header(self, shard_id: bytes) -> ShardHeader:
        """The shard's header; correctable damage is corrected in memory (the scrubber rewrites it)."""
        with self._env.begin() as txn:
            record = self._record(txn, shard_id)
        return ShardHeader.decode(recover(record).payload)

    def head(self, shard_id: bytes) -> ShardInfo:
        with self._env.begin() as txn:
            record = self._record(txn, shard_id)
            info = txn.get(shard_id, db=self._info)
        stored, verified, damaged = _INFO.unpack(info)
        return ShardInfo(ShardHeader.decode(recover(record).payload), stored, damaged, verified)

    def read_rows(self, shard_id: bytes, rows: Iterable[int]) -> Iterator[RowRead]:
        """Rows in the order asked, each verified; a bad fragment comes back DAMAGED, never as data.

        Rows are copied out in transactions of a few MiB, so a slow consumer holds no snapshot open.
        """
        header = self.header(shard_id)
        wanted = [self._check_row(header, r) for r in rows]
        pos = 0
        while pos < len(wanted):
            batch: list[RowRead] = []
            size = 0
            with self._env.begin(buffers=True) as txn:
                sums = txn.get(shard_id, db=self._sums)
                while pos < len(wanted) and size < _READ_BATCH_BYTES:
                    r = wanted[pos]
                    value = txn.get(_ROW_KEY.pack(shard_id, r), db=self._rows)
                    batch.append(self._verify(r, value, sums))
                    size += len(value)
                    pos += 1
            yield from batch

    @staticmethod
    def _verify(row: int, value: memoryview | None, sums: memoryview | None) -> RowRead:
        if value is None:
            return RowRead(row, RowStatus.MISSING, None, b"")
        digest, fragment = value[:CHECKSUM_LEN], value[CHECKSUM_LEN:]
        actual = blake3.blake3(fragment).digest()
        if actual == digest:
            return RowRead(row, RowStatus.OK, bytes(fragment), actual)
        copy = bytes(sums[row * CHECKSUM_LEN : (row + 1) * CHECKSUM_LEN]) if sums is not None else b""
        if actual == copy:  # the checksum beside the row was hit, not the fragment
            return RowRead(row, RowStatus.OK, bytes(fragment), actual)
        return RowRead(row, RowStatus.DAMAGED, None, copy or bytes(digest))

    def verify_rows(self, shard_id: bytes) -> RowCheck:
        """Verify every row without copying it out; rewrite damaged checksum copies in place.

        Damaged fragments are only reported: rebuilding them needs peers (the scrubber's job).
        """
        header = self.header(shard_id)
        damaged: list[int] = []
        fixes: list[tuple[int, bytes]] = []  # (row, true checksum) where a copy is wrong
        crc_fixes: list[tuple[int, bytes]] = []  # (row, new block CRC record) where the record was hit
        crc_added: set[int] = set()  # rows stored before block CRCs existed get theirs (not damage)
        total = 0
        seen: set[int] = set()
        with self._env.begin(buffers=True) as txn:
            sums = txn.get(shard_id, db=self._sums)
            crcs = txn.cursor(db=self._crcs)
            cursor = txn.cursor(db=self._rows)
            found = cursor.set_range(_ROW_KEY.pack(shard_id, 0))
            while found:
                key, value = cursor.item()
                if bytes(key[:ID_LEN]) != shard_id:
                    break
                row = _ROW_KEY.unpack(key)[1]
                seen.add(row)
                total += len(value) - CHECKSUM_LEN
                digest, actual = value[:CHECKSUM_LEN], blake3.blake3(value[CHECKSUM_LEN:]).digest()
                copy = sums[row * CHECKSUM_LEN : (row + 1) * CHECKSUM_LEN] if sums is not None else b""
                if actual == digest:
                    if copy != actual:
                        fixes.append((row, actual))
                elif actual == copy:
                    fixes.append((row, actual))
                else:
                    damaged.append(row)
                if actual in (digest, copy):
                    has = crcs.set_key(key)
                    if not has or not bitfix.intact(crcs.value()):
                        crc_fixes.append((row, bitfix.block_crcs(value[CHECKSUM_LEN:])))
                        if not has:
                            crc_added.add(row)
                found = cursor.next()
        damaged.extend(r for r in range(header.row_count) if r not in seen)  # never after a committed put
        if fixes or crc_fixes:
            with self._env.begin(write=True) as txn:
                for row, digest in fixes:
                    self._set_checksum(txn, shard_id, row, digest)
                for row, record in crc_fixes:
                    key = _ROW_KEY.pack(shard_id, row)
                    if txn.get(key, db=self._rows) is not None:  # not deleted meanwhile
                        txn.put(key, record, db=self._crcs)
        fixed_rows = {r for r, _ in fixes} | {r for r, _ in crc_fixes if r not in crc_added}
        return RowCheck(sorted(damaged), len(fixed_rows), total)

    # --- repair -----------------------------------------------------------------------------------

    def write_row(self, shard_id: bytes, row: int, fragment: bytes) -> None:
        """Store a rebuilt fragment, accepted only if it matches one of the row's two stored checksums
        (or is byte-identical to the stored fragment, when both checksum copies were damaged)."""
        header = self.header(shard_id)
        self._check_row(header, row)
        if not isinstance(fragment, bytes) or len(fragment) != header.fragment_len(row):
            raise InvalidArgument(f"row {row}: a rebuilt fragment must be {header.fragment_len(row)} bytes")
        actual = blake3.blake3(fragment).digest()
        with self._env.begin(write=True) as txn:
            value = txn.get(_ROW_KEY.pack(shard_id, row), db=self._rows)
            sums = txn.get(shard_id, db=self._sums) or b""
            beside = bytes(value[:CHECKSUM_LEN]) if value else b""
            copies = {beside, sums[row * CHECKSUM_LEN : (row + 1) * CHECKSUM_LEN]}
            # Both checksum copies hit but the fragment intact: the rebuild (from k verified peers)
            # reproducing the stored fragment exactly is the proof.
            intact = value is not None and value[CHECKSUM_LEN:] == fragment
            if actual not in copies and not intact:
                raise InvalidArgument(f"shard {shard_id.hex()} row {row}: rebuilt fragment matches no stored checksum")
            txn.put(_ROW_KEY.pack(shard_id, row), actual + fragment, db=self._rows)
            txn.put(_ROW_KEY.pack(shard_id, row), bitfix.block_crcs(fragment), db=self._crcs)
            self._set_checksum(txn, shard_id, row, actual)

    def correct_rows(self, shard_id: bytes, rows: Iterable[int]) -> list[int]:
        """Undo up to two flipped bits per 4 KiB block of damaged fragments, on this node alone.

        A correction is stored only if the fragment then matches one of the row's two stored
        checksums (`write_row`); the rows returned were corrected, the others need peers.
        """
        found: list[tuple[int, bytes]] = []
        with self._env.begin() as txn:
            sums = txn.get(shard_id, db=self._sums) or b""
            for row in rows:
                key = _ROW_KEY.pack(shard_id, row)
                value, crcs = txn.get(key, db=self._rows), txn.get(key, db=self._crcs)
                if value is None or crcs is None:
                    continue
                copies = {value[:CHECKSUM_LEN], sums[row * CHECKSUM_LEN : (row + 1) * CHECKSUM_LEN]}
                fixed = bitfix.correct(value[CHECKSUM_LEN:], crcs, lambda f, c=copies: blake3.blake3(f).digest() in c)
                if fixed is not None:
                    found.append((row, fixed))
        done: list[int] = []
        for row, fragment in found:
            try:
                self.write_row(shard_id, row, fragment)
            except (NotFound, InvalidArgument):
                continue  # deleted or rewritten meanwhile
            done.append(row)
        return done

    def _set_checksum(self, txn: lmdb.Transaction, shard_id: bytes, row: int, digest: bytes) -> None:
        key = _ROW_KEY.pack(shard_id, row)
        value = txn.get(key, db=self._rows)
        if value is not None and value[:CHECKSUM_LEN] != digest:
            txn.put(key, digest + value[CHECKSUM_LEN:], db=self._rows)
        sums = bytearray(txn.get(shard_id, db=self._sums) or b"")
        if sums[row * CHECKSUM_LEN : (row + 1) * CHECKSUM_LEN] != digest:
            sums[row * CHECKSUM_LEN : (row + 1) * CHECKSUM_LEN] = digest
            txn.put(shard_id, bytes(sums), db=self._sums)

    def check_header(self, shard_id: bytes) -> int:
        """Verify the protected header; rewrite it if it needed correction. Returns bytes corrected."""
        with self._env.begin() as txn:
            record = self._record(txn, shard_id)
        recovered = recover(record)  # RecordUncorrectable propagates: the caller reports it
        if recovered.corrected:
            with self._env.begin(write=True) as txn:
                txn.put(shard_id, recovered.stored, db=self._headers)
        return recovered.corrected

    def mark_verified(self, shard_id: bytes, damaged_rows: int, when_unix_ms: int) -> None:
        with self._env.begin(write=True) as txn:
            info = txn.get(shard_id, db=self._info)
            if info is None:
                return  # deleted meanwhile
            stored, _, _ = _INFO.unpack(info)
            txn.put(shard_id, _INFO.pack(stored, when_unix_ms, damaged_rows), db=self._info)

    # --- delete and list -------------------------------------------------------------------------

    def delete(self, shard_id: bytes) -> int:
        """Remove a shard; returns the bytes freed (0 if it was not there)."""
        _check_id(shard_id)
        with self._env.begin(write=True) as txn:
            record = txn.get(shard_id, db=self._headers)
            if record is None:
                current = self._upload(txn, shard_id)
                if current is None:
                    return 0
                self._drop_upload(txn, shard_id)
                return self.required_bytes(current.header)
            stored = _INFO.unpack(txn.get(shard_id, db=self._info))[0]
            try:
                object_id = ShardHeader.decode(recover(record).payload).object_id
                txn.delete(object_id + shard_id, db=self._by_object)
            except OrbitVaultError:
                pass  # a header beyond repair must not make its shard undeletable; the index entry is harmless
            self._delete_rows(txn, shard_id)
            for db in (self._headers, self._info, self._sums):
                txn.delete(shard_id, db=db)
            self._add_used(txn, -stored)
        return stored

    def list(self, *, after: bytes = b"", limit: int = 100, object_id: bytes | None = None) -> list[ShardInfo]:
        """Up to `limit` shards in ascending shard_id order, strictly after `after`."""
        if not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"limit must be a positive integer, got {limit!r}")
        if object_id is not None:
            _check_id(object_id)
            ids = self._object_shards(object_id, after, limit)
        else:
            ids = []
            for sid in self.shard_ids(after):
                ids.append(sid)
                if len(ids) == limit:
                    break
        out = []
        for sid in ids:
            try:
                out.append(self.head(sid))
            except NotFound:
                continue  # deleted between the two transactions
            except DataLoss:
                continue  # header beyond repair: the scrubber reports it; listing the rest must go on
        return out

    def _object_shards(self, object_id: bytes, after: bytes, limit: int) -> list[bytes]:
        ids: list[bytes] = []
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._by_object)
            found = cursor.set_range(object_id + (after or b""))
            while found and len(ids) < limit:
                key = cursor.key()
                if key[:ID_LEN] != object_id:
                    break
                if key[ID_LEN:] > after:
                    ids.append(bytes(key[ID_LEN:]))
                found = cursor.next()
        return ids

    def shard_ids(self, after: bytes = b"") -> Iterator[bytes]:
        """Shard ids in ascending order after `after`, read in pages so no snapshot stays open."""
        while True:
            page: list[bytes] = []
            with self._env.begin() as txn:
                cursor = txn.cursor(db=self._headers)
                found = cursor.set_range(after) if after else cursor.first()
                while found and len(page) < 1000:
                    key = bytes(cursor.key())
                    if key > after:
                        page.append(key)
                    found = cursor.next()
            if not page:
                return
            yield from page
            after = page[-1]

    # --- fault injection --------------------------------------------------------------------------

    def stored_value_len(self, shard_id: bytes, target: Target) -> int:
        """Length of the stored value a fault can hit: a row (checksum + fragment), HEADER, CHECKSUMS or
        a row's CrcRecord."""
        with self._env.begin() as txn:
            db, key = self._target(txn, shard_id, target)
            value = txn.get(key, db=db)
        if value is None:
            raise NotFound(f"shard {shard_id.hex()} has no stored {target!r}")
        return len(value)

    def flip_bit(self, shard_id: bytes, target: Target, bit: int, *, force: bool = False) -> None:
        """Fault injection: flip one stored bit. Only on simulation stores unless forced."""
        if not self.simulation and not force:
            raise FailedPrecondition(
                f"{self.path} is not a simulation store; refusing to damage it (force to override)"
            )
        with self._env.begin(write=True) as txn:
            db, key = self._target(txn, shard_id, target)
            value = txn.get(key, db=db)
            if value is None or not 0 <= bit < 8 * len(value):
                raise InvalidArgument(f"bit {bit} is outside the stored {target!r} of shard {shard_id.hex()}")
            damaged = bytearray(value)
            damaged[bit // 8] ^= 1 << (bit % 8)
            txn.put(key, bytes(damaged), db=db)

    def _target(self, txn: lmdb.Transaction, shard_id: bytes, target: Target) -> tuple[object, bytes]:
        self._record(txn, shard_id)  # NotFound for unknown shards
        if target == HEADER:
            return self._headers, shard_id
        if target == CHECKSUMS:
            return self._sums, shard_id
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < 2**32:
            return self._rows, _ROW_KEY.pack(shard_id, target)
        if isinstance(target, CrcRecord) and 0 <= target.row < 2**32:
            return self._crcs, _ROW_KEY.pack(shard_id, target.row)
        raise InvalidArgument(
            f"fault target must be a row number, {HEADER!r}, {CHECKSUMS!r} or a CrcRecord; got {target!r}"
        )

    # --- meta -------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        with self._env.begin() as txn:
            value = txn.get(_meta_key(key), db=self._meta)
        return None if value is None else bytes(value)

    def put_meta(self, key: str, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(_meta_key(key), value, db=self._meta)

    # --- helpers ----------------------------------------------------------------------------------

    def _record(self, txn: lmdb.Transaction, shard_id: bytes) -> bytes:
        _check_id(shard_id)
        record = txn.get(shard_id, db=self._headers)
        if record is None:
            raise NotFound(f"shard {shard_id.hex()} is not on this node")
        return bytes(record)

    @staticmethod
    def _check_row(header: ShardHeader, row: int) -> int:
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < header.row_count:
            raise InvalidArgument(f"row {row!r} out of range: the shard has {header.row_count} row(s)")
        return row


_RESERVED_META = {"node_id", "simulation", "used_bytes", "capacity"}


def _read_capacity(db_path: Path) -> int | None:
    """The capacity recorded by the last process that opened the store with one (None if never)."""
    if not (db_path / "data.mdb").exists():
        return None
    env = lmdb.open(str(db_path), readonly=True, max_dbs=16, lock=True)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            value = txn.get(b"capacity", db=meta)
    except lmdb.NotFoundError:
        return None
    finally:
        env.close()
    return None if value is None else _U64.unpack(value)[0]


def _meta_key(key: str) -> bytes:
    if not isinstance(key, str) or not key or key in _RESERVED_META:
        raise InvalidArgument(f"meta key {key!r} is empty or reserved")
    return key.encode()


def _check_id(shard_id: object) -> None:
    if not isinstance(shard_id, bytes) or len(shard_id) != ID_LEN:
        raise InvalidArgument(f"a shard id is {ID_LEN} bytes")
