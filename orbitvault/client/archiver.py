"""backup: walk paths, cut, dedupe, compress, seal, pack, upload, write the snapshot.

Pipeline (bounded, both cores busy):

- the main thread walks the tree depth first. Each directory is scanned (`scan.py`: listed,
  filtered, lstat'ed, xattrs read, unchanged files recognised, small files read and hashed):
  by the main thread itself for the first `readers_after` small files, then by reader processes
  (`readers.py`), which scan directories ahead of the walk and seal small files' blobs. A
  process, not a thread: per small file the scan is mostly system calls and Python, which in
  one process would queue for one GIL;
- blobs the main thread hashed itself go to the pool in batches of ~64 for compression and
  sealing; blobs a reader sealed are packed by its result thread;
- files above `inline_limit` go to the pool whole: reading, FastCDC, blake3, zstandard and
  AES-GCM all release the GIL on large buffers, so pool threads run on the other core;
- every blob id is claimed before it is packed, so each content is stored once;
- sealed blobs are appended to packs by whichever thread made them (a memcpy under a lock);
  full packs go to one uploader thread, which stores them and writes index batches.

Memory stays bounded: at most `max_inflight` large files are in flight, a pool thread holds at
most a 2 x max-chunk read buffer, a reader sends at most ~2 MiB of blobs at a time and has at
most four directories requested, the uploader queue holds two packs, and directories wait for
their files in a bounded FIFO.

Unchanged files (same type, size, mtime, ctime and inode as in the parent snapshot, and every
chunk still indexed) are not opened at all; `files_read` in the summary counts every open for
reading, which is how the tests prove it.

Directories are finished in post-order from a FIFO: a directory closes after its subdirectories,
so by the time it reaches the head of the FIFO every subtree id it needs is known, and the walk
never waits for file contents except to bound memory.

With `stdin_fd` (backup --stdin) there is no walk: the stream becomes one file at the root of the
snapshot, chunked as it arrives, so memory stays bounded by the chunker's buffer whatever its size.
"""

from __future__ import annotations

import errno
import os
import posixpath
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from orbitvault import __version__
from orbitvault.client.pack import BlobType, EncodedBlob
from orbitvault.client.pipes import default_processes
from orbitvault.client.readers import ReaderPool, Scan
from orbitvault.client.repository import Packer, Repository, now_local
from orbitvault.client.scan import (
    Entry,
    Grown,
    Names,
    PrevSig,
    Scanner,
    ScanSettings,
    open_source,
    read_xattrs,
    stat_fields,
)
from orbitvault.client.snapshot import Snapshot, filter_snapshots
from orbitvault.client.tree import Node, encode_tree, name_key
from orbitvault.errors import OrbitVaultError


@dataclass
class BackupOptions:
    paths: list[str]
    excludes: list[str] = field(default_factory=list)
    iexcludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    parent: str | None = None
    force: bool = False
    ignore_inode: bool = False
    ignore_ctime: bool = False
    dry_run: bool = False
    read_concurrency: int = 2
    limit_upload_kib: int | None = None
    time: datetime | None = None
    max_inflight: int = 8
    inline_limit: int = 128 * 1024
    # Reader processes (None: 2 on a machine with 2+ cores, else 0), started once the walk itself
    # read `readers_after` small files (None: 512, so small backups never pay for starting them;
    # 0 when read_processes is given), and at least half of the files it saw lately.
    read_processes: int | None = None
    readers_after: int | None = None
    # NAME[:HEADER] specs: a directory holding NAME keeps only NAME (restic's --exclude-if-present)
    exclude_if_present: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    exclude_larger_than: int | None = None  # bytes; larger regular files are skipped
    stdin_fd: int | None = None  # back up this stream instead of `paths`
    stdin_filename: str = "stdin"


@dataclass
class BackupSummary:
    """restic's summary fields, plus orbitvault's: files_read/bytes_read (contents actually read),
    packs_written, packs_recovered (packs of an interrupted run found and reused), errors."""

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0
    data_added_packed: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    files_read: int = 0
    bytes_read: int = 0
    packs_written: int = 0
    packs_recovered: int = 0
    errors: int = 0
    backup_start: str = ""
    backup_end: str = ""
    total_duration: float = 0.0
    snapshot_id: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"message_type": "summary", **asdict(self)}


@dataclass
class BackupError:
    path: str
    message: str


class _Cancelled(Exception):
    pass


_Result = tuple[list[bytes], int] | OSError


@dataclass(slots=True, eq=False)
class _FileSlot:
    """A large file being read by the pool."""

    node: Node
    future: Future[_Result]
    prev: Node | None
    path: str


@dataclass(slots=True, eq=False)
class _PendingDir:
    node: Node
    path: str
    prev_subtree: bytes | None
    slots: list[Any] = field(default_factory=list)
    done: bool = False


_KINDS = {"d": "dir", "l": "symlink", "f": "file"}
# A file that had grown past inline_limit x this when a scan read it is read like a large file.
_MAX_FILE_FACTOR = 8
# Reader processes pay off when most files need reading (a first backup, a new tree), not for a
# re-backup with changes spread thin: they start when, within a window of this many files, at
# least half were read (and readers_after of them).
_WINDOW = 4096


def node_from_entry(entry: Entry) -> Node:
    """The node of a scanned directory, symlink or file (contents and subtree still to come)."""
    kind = _KINDS[entry[0]]
    mode, uid, gid, mtime, atime, ctime, size, ino, dev, nlink = entry[2]
    return Node(
        entry[1],
        kind,
        stat.S_IMODE(mode),
        uid,
        gid,
        entry[3],
        entry[4],
        mtime,
        0 if kind == "dir" else atime,  # listing a directory (this backup too) changes its atime
        ctime,
        size if kind == "file" else 0,
        ino,
        dev,
        nlink,
        0,
        entry[6] if kind == "symlink" else None,
        entry[5],
    )


def _subtree_of(prev: Node | None) -> bytes | None:
    """The parent snapshot's tree for a directory (None when it was not a directory then)."""
    return prev.subtree if prev is not None and prev.type == "dir" else None


def _signatures(prev: dict[str, Node]) -> dict[str, PrevSig] | None:
    """What a scan compares a file with to call it unchanged (files with contents only)."""
    sigs = {
        name: (n.size, n.mtime_ns, n.ctime_ns, n.inode)
        for name, n in prev.items()
        if n.type == "file" and n.content is not None
    }
    return sigs or None


def _dir_node(name: str, path: str, names: Names) -> Node:
    """An intermediate directory of the targets' absolute paths, with its real metadata."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory")
    fields = stat_fields(st)
    return node_from_entry(("d", name, fields, names.user(st.st_uid), names.group(st.st_gid), read_xattrs(path)))


class Archiver:
    def __init__(self, repo: Repository, opts: BackupOptions, *, lock: Any = None) -> None:
        self.repo = repo
        self.opts = opts
        self.lock = lock
        self.summary = BackupSummary(dry_run=opts.dry_run)
        self.errors: list[BackupError] = []
        self.warnings: list[str] = []
        self.on_error: Callable[[BackupError], None] | None = None
        self.settings = ScanSettings(
            excludes=tuple(opts.excludes),
            iexcludes=tuple(opts.iexcludes),
            exclude_if_present=tuple(opts.exclude_if_present),
            exclude_caches=opts.exclude_caches,
            exclude_larger_than=opts.exclude_larger_than,
            inline_limit=opts.inline_limit,
            ignore_ctime=opts.ignore_ctime,
            ignore_inode=opts.ignore_inode,
        )
        # The walk's own scanner: chunks it hashes are claimed here and sealed by the pool.
        self._max_small = _MAX_FILE_FACTOR * opts.inline_limit
        self._scanner = Scanner(self.settings, repo.key, repo.chunker, self._hashed_chunk, max_file=self._max_small)
        self._names = self._scanner.names
        self._stats_lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._claimed: set[bytes] = set()
        self._packer: Packer | None = None
        self._cancel = threading.Event()
        self._inflight = threading.BoundedSemaphore(opts.max_inflight)
        self._encode: list[tuple[BlobType, bytes, bytes | memoryview]] = []
        self._encode_bytes = 0
        self._job_error: BaseException | None = None
        self._closed: deque[_PendingDir] = deque()
        self._hardlinks: dict[tuple[int, int], _FileSlot | Node] = {}
        self._root_dev: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._readers: ReaderPool | None = None
        self._read_processes = default_processes() if opts.read_processes is None else max(0, opts.read_processes)
        if opts.readers_after is not None:
            self._readers_after = opts.readers_after
        else:
            self._readers_after = 512 if opts.read_processes is None else 0
        # Files seen and small files read by the walk itself, per window of _WINDOW files: readers
        # start when a window reads readers_after small files and at least half of what it sees.
        self._window_seen = 0
        self._window_read = 0
        self.parent: Snapshot | None = None
        # progress, read by the CLI's progress display (approximate while running)
        self.current_path = ""

    # --- public ----------------------------------------------------------------------------

    def run(self) -> tuple[Snapshot | None, BackupSummary]:
        t0 = time.monotonic()
        start = now_local()
        self.summary.backup_start = start.isoformat()
        repo = self.repo
        targets = self._targets()
        repo.load_index()
        unindexed = repo.unindexed_packs()
        if unindexed and not self.opts.dry_run:
            self.summary.packs_recovered = repo.recover_unindexed_packs(unindexed)
        # Like restic, a stream has no parent: there is nothing to compare it with but its bytes.
        self.parent = None if self.opts.stdin_fd is not None else self._find_parent(targets)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

        self._packer = Packer(
            repo, dry_run=self.opts.dry_run, limit_upload_kib=self.opts.limit_upload_kib, background=True
        )
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.opts.read_concurrency), thread_name_prefix="read")
        try:
            if self.opts.stdin_fd is not None:
                root = self._stdin_root(targets[0], self.opts.stdin_fd, self.opts.time or start)
            else:
                root = self._walk_roots(targets)
            self._drain(block=True)
            assert root.done and root.node.subtree is not None
            if self._readers is not None:
                self._readers.close()
            self._flush_encode()
            self._pool.shutdown(wait=True)
            self._check_failed()
            self._packer.flush()
        except BaseException:
            self._cancel.set()
            if self._readers is not None:
                self._readers.kill()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._packer.close()
            raise

        st = self._packer.stats
        s = self.summary
        s.data_blobs, s.tree_blobs = st.data_blobs, st.tree_blobs
        s.data_added, s.data_added_packed = st.bytes_raw, st.bytes_stored
        s.packs_written = st.packs
        s.errors = len(self.errors)
        snap = Snapshot(
            time=self.opts.time or start,
            tree=root.node.subtree,
            paths=targets,
            hostname=self.opts.host or socket.gethostname(),
            username=self._names.user(os.getuid()) or str(os.getuid()),
            uid=os.getuid(),
            gid=os.getgid(),
            tags=sorted(set(self.opts.tags)),
            parent=self.parent.id if self.parent else None,
            excludes=self.opts.excludes + self.opts.iexcludes,
            program_version=f"orbitvault {__version__}",
        )
        end = now_local()
        s.backup_end = end.isoformat()
        s.total_duration = round(time.monotonic() - t0, 3)
        snap.summary = {k: v for k, v in asdict(s).items() if k not in ("snapshot_id", "dry_run")}
        if self.opts.dry_run:
            return None, s
        if self.lock is not None:
            self.lock.check()
        s.snapshot_id = self.repo.save_snapshot(snap)
        return snap, s

    # --- setup -----------------------------------------------------------------------------

    def _targets(self) -> list[str]:
        if self.opts.stdin_fd is not None:
            name = posixpath.normpath("/" + self.opts.stdin_filename.lstrip("/"))
            if name == "/":
                raise OrbitVaultError(f"--stdin-filename {self.opts.stdin_filename!r} does not name a file")
            return [name]
        out = []
        for p in self.opts.paths:
            a = os.path.normpath(os.path.abspath(p))
            if a.startswith("//"):
                a = "/" + a.lstrip("/")
            out.append(a)
        out = sorted(set(out))
        if not out:
            raise OrbitVaultError("no paths to back up")
        # A path inside another is already covered.
        return [p for p in out if not any(p != q and (q == "/" or p.startswith(q + "/")) for q in out)]

    def _find_parent(self, targets: list[str]) -> Snapshot | None:
        if self.opts.force:
            return None
        snaps = self.repo.load_snapshots(on_error=lambda sid, e: self.warnings.append(f"snapshot {sid[:8]}: {e}"))
        if self.opts.parent:
            from orbitvault.client.snapshot import find_snapshot

            return find_snapshot(snaps, self.opts.parent)
        host = self.opts.host or socket.gethostname()
        cands = [s for s in filter_snapshots(snaps, hosts=[host]) if sorted(s.paths) == targets]
        return cands[-1] if cands else None

    # --- threads ---------------------------------------------------------------------------

    def _claim(self, blob_id: bytes) -> bool:
        """True if this caller must store the blob (nobody has stored or claimed it)."""
        with self._claim_lock:
            if blob_id in self._claimed or blob_id in self.repo.index:
                return False
            self._claimed.add(blob_id)
            return True

    def _read_job(self, path: str) -> _Result:
        """Pool: one large file."""
        try:
            if self._cancel.is_set():
                raise _Cancelled
            return self._read_file(path)
        except OSError as e:
            return e
        finally:
            self._inflight.release()

    def _read_file(self, path: str) -> tuple[list[bytes], int]:
        """Read, chunk, hash; compress, seal and pack the chunks nobody has stored yet."""
        assert self._packer is not None
        fd, fst = open_source(path)
        try:
            ids: list[bytes] = []
            size = 0
            key, codec, packer = self.repo.key, self.repo.codec, self._packer
            for mv in self.repo.chunker.chunk_fd(fd, fst.st_size):
                size += len(mv)
                bid = key.blob_id(mv)
                ids.append(bid)
                if self._claim(bid):
                    packer.add(codec.encode(BlobType.DATA, mv, bid))
                if self._cancel.is_set():
                    raise _Cancelled
        finally:
            os.close(fd)
        self._count_read(size)
        return ids, size

    def _read_small(self, path: str) -> tuple[list[bytes], int]:
        """Main thread: read and hash a small file (its new blobs are sealed by the pool); one
        that grew meanwhile is read like a large file."""
        try:
            ids, size = self._scanner.read_file(path)
        except Grown:
            return self._read_file(path)
        self._count_read(size)
        return ids, size

    def _hashed_chunk(self, bid: bytes, data: memoryview) -> None:
        """A chunk the walk's own scanner hashed: the pool seals it unless it is stored already."""
        if self._claim(bid):
            self._queue_encode(BlobType.DATA, bid, data)

    def _count_read(self, size: int) -> None:
        with self._stats_lock:
            self.summary.files_read += 1
            self.summary.bytes_read += size

    def _read_stream(self, fd: int) -> tuple[list[bytes], int]:
        """Main thread: a stream (stdin), cut as it arrives. Chunks are sealed and packed before
        the next is read (their memoryviews point into the chunker's reused buffer), so at most
        the chunker's buffer and the packer's packs are in memory, never the whole stream."""
        assert self._packer is not None
        ids: list[bytes] = []
        size = 0
        key, codec, packer = self.repo.key, self.repo.codec, self._packer
        for mv in self.repo.chunker.chunk_fd(fd, 0):
            size += len(mv)
            bid = key.blob_id(mv)
            ids.append(bid)
            if self._claim(bid):
                packer.add(codec.encode(BlobType.DATA, mv, bid))
            with self._stats_lock:
                self.summary.bytes_read = size
            self._check_failed()
        with self._stats_lock:
            self.summary.files_read += 1
        return ids, size

    def _queue_encode(self, blob_type: BlobType, bid: bytes, data: bytes | memoryview) -> None:
        self._encode.append((blob_type, bid, data))
        self._encode_bytes += len(data)
        if len(self._encode) >= 64 or self._encode_bytes >= 4 * 1024 * 1024:
            self._flush_encode()

    def _flush_encode(self) -> None:
        if not self._encode:
            return
        items, self._encode, self._encode_bytes = self._encode, [], 0
        self._acquire_slot()
        assert self._pool is not None
        try:
            fut = self._pool.submit(self._encode_job, items)
        except BaseException:
            self._inflight.release()
            raise
        fut.add_done_callback(self._job_done)

    def _job_done(self, fut: Future[None]) -> None:
        e = fut.exception() if not fut.cancelled() else None
        if e is not None and self._job_error is None:
            self._job_error = e

    def _encode_job(self, items: list[tuple[BlobType, bytes, bytes | memoryview]]) -> None:
        """Pool: compress, seal and pack blobs whose ids the main thread already knows."""
        try:
            assert self._packer is not None
            codec, packer = self.repo.codec, self._packer
            for blob_type, bid, data in items:
                if self._cancel.is_set():
                    raise _Cancelled
                packer.add(codec.encode(blob_type, data, bid))
        finally:
            self._inflight.release()

    def _acquire_slot(self) -> None:
        while not self._inflight.acquire(timeout=0.1):
            self._check_failed()

    def _submit(self, node: Node, prev: Node | None, full: str) -> _FileSlot:
        assert self._pool is not None
        while not self._inflight.acquire(timeout=0.1):
            self._check_failed()
            self._drain(block=False)
        try:
            fut = self._pool.submit(self._read_job, full)
        except BaseException:
            self._inflight.release()
            raise
        return _FileSlot(node, fut, prev, full)

    # --- reader processes ------------------------------------------------------------------

    def _start_readers(self) -> None:
        """Start the reader processes once the walk itself reads enough small files, densely."""
        w_read, w_seen = self._window_read, self._window_seen
        if not self._read_processes or w_read < self._readers_after or 2 * w_read < w_seen:
            return
        repo = self.repo
        try:
            self._readers = ReaderPool(
                key=repo.key,
                chunker=repo.config.chunker,
                level=repo.config.compression_level,
                max_file=self._max_small,
                settings=self.settings,
                processes=self._read_processes,
                on_blob=self._reader_blob,
                load_prev=self._load_prev,
                subdirs=self._subdirs,
            )
        except OSError as e:
            self.warnings.append(f"reader processes unavailable, reading in one process: {e.strerror or e}")
            self._read_processes = 0

    def _reader_blob(self, bid: bytes, sealed: bytes, raw_length: int, flags: int) -> None:
        """Result thread: a blob a reader sealed is packed unless someone stored it already."""
        if self._claim(bid):
            assert self._packer is not None
            self._packer.add(EncodedBlob(BlobType.DATA, bid, sealed, raw_length, flags))

    def _load_prev(self, subtree: bytes | None) -> tuple[dict[str, Node], dict[str, PrevSig] | None]:
        prev = self._prev_children(subtree)
        return prev, _signatures(prev)

    def _reader_wait(self) -> None:
        self._check_failed()
        self._drain(block=False)

    # --- walk ------------------------------------------------------------------------------

    def _error(self, path: str, err: BaseException) -> None:
        msg = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        e = BackupError(path, msg)
        self.errors.append(e)
        if self.on_error:
            self.on_error(e)

    def _prev_children(self, subtree: bytes | None) -> dict[str, Node]:
        if subtree is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(subtree)}
        except OrbitVaultError as e:
            self.warnings.append(f"parent tree {subtree.hex()[:8]} unreadable, reading files again: {e}")
            return {}

    def _walk_roots(self, targets: list[str]) -> _PendingDir:
        """The snapshot's root tree mirrors the absolute paths, with real metadata for the
        intermediate directories (like restic)."""
        prev_root = self.parent.tree if self.parent else None
        if targets == ["/"]:
            node = _dir_node("/", "/", self._names)
            self._root_dev = node.device_id
            return self._walk_dir("/", node, prev_root)
        trie: dict[str, Any] = {}
        for t in targets:
            cur = trie
            parts = t.strip("/").split("/")
            for p in parts[:-1]:
                cur = cur.setdefault(p, {})
            cur[parts[-1]] = None
        return self._virtual_dir("", Node(name="", type="dir"), trie, prev_root)

    def _stdin_root(self, target: str, fd: int, when: datetime) -> _PendingDir:
        """The stream as `target` (e.g. /stdin): mode 0644, owned by this user, modified `when`,
        below directories of the same owner and time when the name has several components."""
        uid, gid = os.getuid(), os.getgid()
        user, group = self._names.user(uid), self._names.group(gid)
        ns = int(when.timestamp()) * 10**9 + when.microsecond * 1000
        *dirs, name = target.strip("/").split("/")
        self.current_path = target

        def node(n: str, kind: str, mode: int) -> Node:
            return Node(n, kind, mode, uid, gid, user, group, mtime_ns=ns, atime_ns=ns, ctime_ns=ns)

        f = node(name, "file", 0o644)
        try:
            f.content, f.size = self._read_stream(fd)
        except OSError as e:
            raise OrbitVaultError(f"reading standard input: {e.strerror or e}") from None
        self.summary.files_new = self.summary.total_files_processed = 1
        self.summary.total_bytes_processed = f.size
        child: Node | _PendingDir = f
        for k in range(len(dirs), 0, -1):  # innermost first: the FIFO finishes directories in post-order
            pd = _PendingDir(node(dirs[k - 1], "dir", 0o755), "/" + "/".join(dirs[:k]), None, [child])
            self._closed.append(pd)
            child = pd
        root = _PendingDir(Node(name="", type="dir"), "/", None, [child])
        self._closed.append(root)
        return root

    def _virtual_dir(self, path: str, node: Node, trie: dict[str, Any], prev_subtree: bytes | None) -> _PendingDir:
        pd = _PendingDir(node, path or "/", prev_subtree)
        prev = self._prev_children(prev_subtree)
        sigs = _signatures(prev)
        for name in sorted(trie, key=name_key):
            full = f"{path}/{name}"
            sub = trie[name]
            if sub is None:  # a target: scanned alone, never excluded by the patterns
                for entry in self._scanner.entries(path, [name], sigs, select=False):
                    if entry[0] not in ("e", "s"):
                        self._root_dev = entry[2][8]
                    slot = self._entry(path, entry, prev.get(name))
                    if slot is not None:
                        pd.slots.append(slot)
                continue
            try:
                child = _dir_node(name, full, self._names)
            except OSError as e:
                self._error(full, e)
                continue
            p = prev.get(name)
            pd.slots.append(self._virtual_dir(full, child, sub, _subtree_of(p)))
        self._closed.append(pd)
        return pd

    def _walk_dir(self, path: str, node: Node, prev_subtree: bytes | None) -> _PendingDir:
        pd = _PendingDir(node, path, prev_subtree)
        base = path.rstrip("/")
        if self._readers is None:
            self._start_readers()
        if self._readers is not None:
            scan = self._readers.take(path, prev_subtree, self._root_dev, self._reader_wait)
            prev: dict[str, Node] = scan.prev
            if scan.error is not None:
                self._error(path, OSError(*scan.error))
            self.warnings.extend(scan.warnings)
            entries: list[Entry] = scan.entries
        else:
            prev = self._prev_children(prev_subtree)
            try:
                entries = list(self._scanner.scan(path, _signatures(prev), self.warnings))
            except OSError as e:
                self._error(path, e)
                entries = []
        in_process = self._readers is None
        for i, entry in enumerate(entries):
            if in_process and self._readers is not None:
                # The readers started below this directory: its other subdirectories are theirs.
                in_process = False
                self._readers.expect(self._subdirs_of(base, entries[i:], prev, self._root_dev), self._root_dev)
            slot = self._entry(base, entry, prev.get(entry[1]))
            if slot is not None:
                pd.slots.append(slot)
        self._closed.append(pd)
        self._drain(block=False)
        if len(self._closed) > 4096:  # bound memory: wait for the oldest directories
            self._drain(block=True, keep=2048)
        return pd

    def _subdirs(self, scan: Scan) -> list[tuple[str, bytes | None]]:
        """Result thread: the subdirectories of a reader's scan the walk will descend into."""
        return self._subdirs_of(scan.path.rstrip("/"), scan.entries, scan.prev, scan.root_dev)

    def _subdirs_of(
        self, base: str, entries: list[Entry], prev: dict[str, Node], root_dev: int | None
    ) -> list[tuple[str, bytes | None]]:
        """(path, parent snapshot's subtree) of each directory among `entries` the walk descends into."""
        return [
            (f"{base}/{e[1]}", _subtree_of(prev.get(e[1])))
            for e in entries
            if e[0] == "d" and self._descend(e, root_dev)
        ]

    def _descend(self, entry: Entry, root_dev: int | None) -> bool:
        """--one-file-system: a directory on another device than its target is left out."""
        return not (self.opts.one_file_system and root_dev is not None and entry[2][8] != root_dev)

    def _entry(self, base: str, entry: Entry, prev: Node | None) -> Any:
        kind, name = entry[0], entry[1]
        full = f"{base}/{name}"
        self.current_path = full
        if kind == "e":
            self._error(full, OSError(entry[2], entry[3]))
            return None
        if kind == "s":
            self.warnings.append(f"{full}: special file skipped")
            return None
        node = node_from_entry(entry)
        if kind == "d":
            if not self._descend(entry, self._root_dev):
                return None
            prev_sub = _subtree_of(prev)
            if prev_sub is None:
                self.summary.dirs_new += 1
            return self._walk_dir(full, node, prev_sub)
        if kind == "l":
            return node
        # regular file
        with self._stats_lock:
            self.summary.total_files_processed += 1
            self.summary.total_bytes_processed += node.size
        how = entry[6]
        self._window_seen += 1
        if self._window_seen > _WINDOW:
            self._window_seen = self._window_read = 0
        if how == "new":
            node.content, node.size = entry[7], entry[8]
            self._window_read += 1
            self._count_read(node.size)
            self._count_file(node, prev, prev is not None and prev.content == node.content)
            return node
        if how == "same" and prev is not None and prev.content is not None:
            index = self.repo.index
            if all(c in index for c in prev.content):
                node.content = prev.content
                node.size = prev.size
                self.summary.files_unmodified += 1
                return node
        # several names, empty, large, or unchanged but with chunks no longer in the index
        return self._file(full, node, prev)

    def _file(self, full: str, node: Node, prev: Node | None) -> Any:
        """A regular file the scan did not read (hard links are read once)."""
        linked = node.links > 1
        if linked:
            twin = self._hardlinks.get((node.device_id, node.inode))
            if isinstance(twin, _FileSlot):  # read once, whatever the number of names
                return _FileSlot(node, twin.future, prev, full)
            if twin is not None:
                node.content, node.size = twin.content, twin.size
                self._count_file(node, prev, prev is not None and prev.content == node.content)
                return node
        if node.size == 0:
            node.content = []
            self._count_file(node, prev, prev is not None and prev.type == "file" and prev.content == [])
            return node
        if node.size > self.opts.inline_limit:
            slot: _FileSlot | Node = self._submit(node, prev, full)
        else:
            try:
                node.content, node.size = self._read_small(full)
            except OSError as e:
                self._error(full, e)
                return None
            self._count_file(node, prev, prev is not None and prev.content == node.content)
            slot = node
        if linked:
            self._hardlinks[(node.device_id, node.inode)] = slot
        return slot

    def _count_file(self, node: Node, prev: Node | None, same: bool) -> None:
        if prev is None:
            self.summary.files_new += 1
        elif same and prev.type == node.type:
            self.summary.files_unmodified += 1
        else:
            self.summary.files_changed += 1

    def _check_failed(self) -> None:
        if self._packer is not None and self._packer.error is not None:
            raise self._packer.error
        if self._job_error is not None:
            raise self._job_error
        if self._readers is not None and self._readers.error is not None:
            raise self._readers.error

    # --- finishing directories -------------------------------------------------------------

    def _drain(self, *, block: bool, keep: int = 0) -> None:
        """Finish closed directories from the head of the FIFO: those ready, or (block) all but `keep`."""
        self._check_failed()
        closed = self._closed
        while len(closed) > keep:
            pd = closed[0]
            if not block and not self._ready(pd):
                return
            self._finish_dir(pd)
            closed.popleft()

    @staticmethod
    def _ready(pd: _PendingDir) -> bool:
        return all(not (isinstance(s, _FileSlot) and not s.future.done()) for s in pd.slots)

    def _finish_dir(self, pd: _PendingDir) -> None:
        nodes: list[Node] = []
        for s in pd.slots:
            if isinstance(s, Node):
                nodes.append(s)
            elif isinstance(s, _PendingDir):
                assert s.done, "directories finish in post-order"
                nodes.append(s.node)
            else:
                res = s.future.result()
                if isinstance(res, OSError):
                    self._error(s.path, res)
                    continue
                ids, size = res
                s.node.content, s.node.size = ids, size
                self._count_file(s.node, s.prev, s.prev is not None and s.prev.content == ids)
                nodes.append(s.node)
        data = encode_tree(nodes)
        tid = self.repo.key.blob_id(data)
        if pd.prev_subtree is not None:
            if tid == pd.prev_subtree:
                self.summary.dirs_unmodified += 1
            else:
                self.summary.dirs_changed += 1
        if self._claim(tid):
            self._queue_encode(BlobType.TREE, tid, data)
        pd.node.subtree = tid
        pd.done = True
        pd.slots = []
