"""restore: recreate a snapshot (or part of it) under a target directory.

Safety first: nothing is ever written outside the target, whatever the snapshot says.

- Every name is checked to be one harmless path component (no "/", "..", ".", "", NUL);
  duplicates in a tree are refused.
- Every file system operation is relative to a directory file descriptor reached from the target
  one component at a time with O_NOFOLLOW|O_DIRECTORY, and files are opened with O_NOFOLLOW and
  created with O_EXCL after removing what was there. A symlink (restored or pre-existing) is thus
  never followed, so "symlink then file" tricks fail with ELOOP/ENOTDIR inside the target.
- Hard links are made only between files this restore created.

Speed: contents are restored pack by pack (each needed pack is read once, in as few ranged reads
as its needed blobs allow), blobs are opened, decompressed and verified in a thread pool and
written with pwrite at their offsets, so files need not be written in order. All-zero blobs are
skipped (holes) when restoring sparsely; files are sized with ftruncate first.

Metadata: files get owner (as root), mode, xattrs and times when their last blob is written;
symlinks get owner and times without following; directories get theirs last, deepest first,
because writing into a directory changes its times (and a read-only mode would stop the restore).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import pickle
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from orbitvault.client.backend import LocalBackend
from orbitvault.client.filters import PathMatcher, could_contain_match
from orbitvault.client.pack import PackEntry
from orbitvault.client.pipes import default_processes
from orbitvault.client.repository import Repository
from orbitvault.client.snapshot import Snapshot
from orbitvault.client.tree import Node, is_safe_name
from orbitvault.errors import OrbitVaultError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MERGE_GAP = 1 << 20
_MAX_READ = 4 << 20  # a ranged read spans at most this (a blob longer than it is read alone)
_BATCH_REFS = 200_000  # blobs planned at a time for threads
_STREAM_REFS = 1000  # ... and for writer processes, which write while the walk goes on
_PROCESSES_FROM = 2000  # blobs to write: below that, starting writer processes costs more than it saves
_READ_AHEAD = 4  # ranged reads ahead of the writers


@dataclass
class RestoreOptions:
    target: str
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    iincludes: list[str] = field(default_factory=list)
    iexcludes: list[str] = field(default_factory=list)
    verify: bool = False
    sparse: bool = True
    owner: bool | None = None
    workers: int = 3
    dry_run: bool = False
    # Writer processes (writers.py) for the contents: None = 2 on a machine with 2+ cores when
    # the restore writes at least 2000 blobs, else none; 0 = threads only.
    processes: int | None = None


@dataclass
class RestoreSummary:
    files_restored: int = 0
    dirs_restored: int = 0
    symlinks_restored: int = 0
    hardlinks_restored: int = 0
    bytes_restored: int = 0
    bytes_sparse: int = 0
    files_verified: int = 0
    errors: int = 0
    total_duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"message_type": "summary", **asdict(self)}


@dataclass
class RestoreError:
    path: str
    message: str


@dataclass(slots=True, eq=False)
class RestoreFile:
    path: tuple[str, ...]
    node: Node
    remaining: int = 0
    failed: bool = False
    link_to: RestoreFile | None = None
    single: bool = False  # one blob: created, written and finished by one worker in one go


def _display(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


_Group = list[tuple[PackEntry, list[tuple[RestoreFile, int]]]]
_Blobs = dict[bytes, tuple[PackEntry, list[tuple[RestoreFile, int]]]]  # a pack's needed blobs by id


def _groups(blobs: _Blobs) -> list[_Group]:
    """A pack's needed blobs in offset order, merged into ranged reads of up to 4 MiB (gaps under
    1 MiB are read and skipped)."""
    ranges: list[_Group] = []
    for ent in sorted(blobs.values(), key=lambda t: t[0].offset):
        if ranges:
            first, last = ranges[-1][0][0], ranges[-1][-1][0]
            end = ent[0].offset + ent[0].length
            if ent[0].offset - (last.offset + last.length) <= _MERGE_GAP and end - first.offset <= _MAX_READ:
                ranges[-1].append(ent)
                continue
        ranges.append([ent])
    return ranges


class FdCache:
    """Reference-counted LRU of open descriptors shared by the worker threads."""

    def __init__(self, opener: Callable[[tuple[str, ...]], int], cap: int) -> None:
        self._opener = opener
        self._cap = cap
        self._fds: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()  # key -> [fd, users]
        self._lock = threading.RLock()

    def acquire(self, key: tuple[str, ...]) -> int:
        with self._lock:
            ent = self._fds.get(key)
            if ent is not None:
                ent[1] += 1
                self._fds.move_to_end(key)
                return ent[0]
            fd = self._opener(key)
            self._fds[key] = [fd, 1]
            self._evict()
            return fd

    def release(self, key: tuple[str, ...]) -> None:
        with self._lock:
            ent = self._fds.get(key)
            if ent is not None:
                ent[1] -= 1
            self._evict()

    def discard(self, key: tuple[str, ...]) -> None:
        with self._lock:
            ent = self._fds.pop(key, None)
            if ent is not None:
                os.close(ent[0])

    def _evict(self) -> None:
        if len(self._fds) <= self._cap:
            return
        for key in list(self._fds):
            if len(self._fds) <= self._cap:
                break
            fd, users = self._fds[key]
            if users == 0:
                del self._fds[key]
                os.close(fd)

    def close_all(self) -> None:
        with self._lock:
            for fd, _users in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()


class Restorer:
    def __init__(self, repo: Repository, snapshot: Snapshot, opts: RestoreOptions) -> None:
        self.repo = repo
        self.snapshot = snapshot
        self.opts = opts
        self.includes = PathMatcher(opts.includes, opts.iincludes)
        self.excludes = PathMatcher(opts.excludes, opts.iexcludes)
        self.owner = (os.geteuid() == 0) if opts.owner is None else opts.owner
        self.summary = RestoreSummary()
        self.errors: list[RestoreError] = []
        self.on_error: Callable[[RestoreError], None] | None = None
        self.bytes_done = 0
        self._lock = threading.Lock()
        self._root_fd = -1
        self._dirs: FdCache | None = None
        self._files: FdCache | None = None
        self._dir_nodes: dict[tuple[str, ...], Node] = {}
        self._created_dirs: list[tuple[str, ...]] = []
        self._created_set: set[tuple[str, ...]] = set()
        self._umask_cleared = False
        self._ids = (os.geteuid(), os.getegid())
        self._writers: Any = None  # writers.WriterPool while contents are written by processes
        self._writer_files: dict[int, RestoreFile] = {}  # by id, as the writers know them
        self._read_pool: ThreadPoolExecutor | None = None  # reads ahead for writers (not local)
        self._ahead: deque[tuple[bytes, Future[list[Any]]]] = deque()
        self._primaries: dict[tuple[int, int], RestoreFile] = {}  # hard-linked files by (device, inode)

    # --- public ----------------------------------------------------------------------------

    def run(self) -> RestoreSummary:
        # Planning makes a node, a tuple and a file record per entry and keeps them all: the
        # cyclic collector would walk that growing heap again and again for nothing (none of it
        # is cyclic garbage), so it pauses for the restore.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if paused:
                gc.enable()

    def _run(self) -> RestoreSummary:
        t0 = time.monotonic()
        if self.opts.dry_run:
            for kind, _p, n, _sel in self._walk():
                if kind == "file":
                    self.summary.files_restored += 1
                    self.summary.bytes_restored += n.size
            self.summary.total_duration = round(time.monotonic() - t0, 3)
            return self.summary
        os.makedirs(self.opts.target, exist_ok=True)
        self._open_target()
        # With umask 0 a file is created with its final permission bits, which saves a chmod per
        # file (the descriptor is writable whatever the mode).
        old_umask = os.umask(0)
        self._umask_cleared = True
        try:
            files = self._create_and_write()
            self._link(files)
            self._dir_metadata()
            if self.opts.verify:
                self._verify([f for f in files if f.link_to is None and not f.failed])
        finally:
            if self._writers is not None:  # only when something failed on the way
                self._writers.kill()
                self._writers = None
            if self._read_pool is not None:
                self._read_pool.shutdown(wait=True, cancel_futures=True)
                self._read_pool = None
            os.umask(old_umask)
            self._umask_cleared = False
            self._files.close_all()
            self._dirs.close_all()
            os.close(self._root_fd)
        self.summary.errors = len(self.errors)
        self.summary.total_duration = round(time.monotonic() - t0, 3)
        return self.summary

    def _create_and_write(self) -> list[RestoreFile]:
        """Walk the snapshot, making what it holds and handing contents over in batches as it goes.

        With writer processes a batch is small (`_STREAM_REFS` blobs): they write the first files
        while this process is still reading trees and making directories, so the two cores share
        the planning too. Threads write a batch before the walk goes on, so theirs are large.
        """
        files: list[RestoreFile] = []
        items: list[tuple[str, tuple[str, ...], Node, bool]] = []
        refs = seen = 0  # blobs in `items`; blobs walked in all
        start_at = self._writers_from()
        for item in self._walk():
            items.append(item)
            if item[0] != "file":
                continue
            n = len(item[2].content or ())
            refs += n
            seen += n
            if seen >= start_at:
                start_at = 1 << 62
                self._start_writers()
            if refs >= (_STREAM_REFS if self._writers is not None else _BATCH_REFS):
                self._create_batch(items, files)
                items, refs = [], 0
        self._create_batch(items, files)
        if self._writers is not None:
            while self._ahead:
                self._hand_over(*self._ahead.popleft())
            self._writers.drain()
            self._writers.close()
            self._writers = None
        return files

    def _create_batch(self, items: list[tuple[str, tuple[str, ...], Node, bool]], files: list[RestoreFile]) -> None:
        new = self._create(items)
        files += new
        todo = [f for f in new if f.link_to is None and f.remaining > 0]
        if todo:
            self._restore_batch(todo)

    def _writers_from(self) -> int:
        """Blobs walked before writer processes start (never: more than there can be)."""
        n = self.opts.processes
        if n is None:
            return _PROCESSES_FROM if default_processes() else 1 << 62
        return 1 if n > 0 else 1 << 62

    def needed_packs(self) -> set[bytes]:
        """Packs holding the content of what `run` would restore, so a cold repository can stage
        exactly those first. Reads the snapshot's trees; problems are left for `run` to report."""
        on_error, self.on_error = self.on_error, None
        try:
            items = list(self._walk())
        finally:
            self.on_error = on_error
            self.errors.clear()
        index = self.repo.index
        return {
            loc[0]
            for kind, _p, n, _sel in items
            if kind == "file"
            for bid in n.content or ()
            if (loc := index.lookup(bid)) is not None
        }

    # --- plan ------------------------------------------------------------------------------

    def _error(self, path: tuple[str, ...] | str, err: BaseException | str) -> None:
        p = path if isinstance(path, str) else _display(path)
        msg = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        e = RestoreError(p, msg)
        with self._lock:
            self.errors.append(e)
        if self.on_error:
            self.on_error(e)

    def _walk(self) -> Iterator[tuple[str, tuple[str, ...], Node, bool]]:
        """What to restore, depth first: (type, path, node, selected), a directory before what it
        holds. Unsafe and duplicate names are refused (reported, skipped) here."""
        stack = [(self._tree_nodes(self.snapshot.tree, ()), (), set[str]())]
        filtered = bool(self.excludes or self.includes)
        selected = True
        while stack:
            nodes, rel, seen = stack[-1]
            for n in nodes:
                if not is_safe_name(n.name):
                    self._error(rel, f"refusing unsafe name {n.name!r} in the snapshot")
                    continue
                if n.name in seen:
                    self._error((*rel, n.name), "refusing duplicate name in the snapshot")
                    continue
                seen.add(n.name)
                path = (*rel, n.name)
                if filtered:
                    p = _display(path)
                    if self.excludes and self.excludes.match(p):
                        continue
                    selected = not self.includes or self.includes.match(p)
                if n.type == "dir":
                    if selected or could_contain_match(p, self.includes.patterns + self.includes.ipatterns):
                        yield ("dir", path, n, selected)
                        stack.append((self._tree_nodes(n.subtree, path), path, set()))  # type: ignore[arg-type]
                        break
                elif selected:
                    yield (n.type, path, n, True)
            else:
                stack.pop()

    def _tree_nodes(self, tree_id: bytes, rel: tuple[str, ...]) -> Iterator[Node]:
        try:
            return iter(self.repo.load_tree(tree_id))
        except OrbitVaultError as e:
            self._error(rel, f"cannot load tree {tree_id.hex()[:8]}: {e}")
            return iter(())

    # --- directories and descriptors -------------------------------------------------------

    def _open_target(self) -> None:
        """The target's descriptor and the descriptor caches below it (planner and writers)."""
        self._root_fd = os.open(self.opts.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs = FdCache(self._open_dir, 128)
        self._files = FdCache(self._open_file, 256)

    def _open_dir(self, path: tuple[str, ...]) -> int:
        """Open (creating as needed) a directory below the target, never following a symlink."""
        if not path:
            return os.dup(self._root_fd)
        assert self._dirs is not None
        parent = self._dirs.acquire(path[:-1])
        try:
            name = path[-1]
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                os.unlink(name, dir_fd=parent)  # a file or symlink where the snapshot has a directory
            os.mkdir(name, 0o700, dir_fd=parent)
            with self._lock:
                if path not in self._created_set:
                    self._created_set.add(path)
                    self._created_dirs.append(path)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        finally:
            self._dirs.release(path[:-1])

    def _ensure_dir(self, path: tuple[str, ...]) -> None:
        assert self._dirs is not None
        self._dirs.acquire(path)
        self._dirs.release(path)
        with self._lock:
            if path not in self._created_set:  # existed before: still ours to set metadata on
                self._created_set.add(path)
                self._created_dirs.append(path)

    def _open_file(self, path: tuple[str, ...]) -> int:
        assert self._dirs is not None
        parent = self._dirs.acquire(path[:-1])
        try:
            return os.open(path[-1], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            self._dirs.release(path[:-1])

    def _replace(self, parent: int, name: str) -> None:
        """Remove a non-directory at name (never following it); directories are left."""
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OSError(errno.EISDIR, "a directory is in the way") from None

    # --- create ----------------------------------------------------------------------------

    def _create_file(self, parent: int, name: str, node: Node, *, final_mode: bool) -> int:
        """A new file (never through a symlink; whatever non-directory was there is removed).

        `final_mode`: create it with its permission bits (only when this descriptor does all the
        writing: a read-only file could not be reopened for writing by a non-root user).
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        mode = node.mode & 0o777 if final_mode and self._umask_cleared else 0o600
        try:
            return os.open(name, flags, mode, dir_fd=parent)
        except FileExistsError:
            self._replace(parent, name)
            return os.open(name, flags, mode, dir_fd=parent)

    def _create(self, items: list[tuple[str, tuple[str, ...], Node, bool]]) -> list[RestoreFile]:
        """Make the directories, symlinks, empty and multi-blob files of `items`; one-blob files
        are only planned (the writer of their blob creates them)."""
        assert self._dirs is not None and self._files is not None
        files: list[RestoreFile] = []
        ensured: tuple[str, ...] | None = None  # the last directory made sure of (items come depth first)
        for kind, path, node, selected in items:
            if kind == "dir":
                self._dir_nodes[path] = node
                if selected:
                    try:
                        self._ensure_dir(path)
                        self.summary.dirs_restored += 1
                        ensured = path
                    except OSError as e:
                        self._error(path, e)
                continue
            where = path[:-1]
            try:
                if where and where != ensured:
                    self._ensure_dir(where)
                    ensured = where
            except OSError as e:
                self._error(path, e)
                continue
            if kind == "file":
                f = RestoreFile(path, node)
                if node.links > 1:
                    key = (node.device_id, node.inode)
                    primary = self._primaries.get(key)
                    if primary is not None:
                        f.link_to = primary
                        files.append(f)
                        continue
                    self._primaries[key] = f
                f.remaining = len(node.content or ())
                self.summary.files_restored += 1
                files.append(f)
                if f.remaining == 1:
                    f.single = True  # created by the worker that writes its blob
                    continue
            try:
                parent = self._dirs.acquire(where)
            except OSError as e:
                self._error(path, e)
                if kind == "file":
                    f.failed, f.remaining = True, 0
                continue
            try:
                if kind == "symlink":
                    self._replace(parent, path[-1])
                    os.symlink(node.linktarget or "", path[-1], dir_fd=parent)
                    self._symlink_metadata(parent, path[-1], node)
                    self.summary.symlinks_restored += 1
                elif kind == "file":
                    fd = self._create_file(parent, path[-1], node, final_mode=f.remaining == 0)
                    try:
                        if node.size:
                            os.ftruncate(fd, node.size)
                        if f.remaining == 0:
                            self._file_metadata(fd, node, mode_set=True)
                    finally:
                        os.close(fd)
                else:
                    self._error(path, f"{kind} nodes are not restored")
            except OSError as e:
                self._error(path, e)
                if kind == "file":
                    f.failed, f.remaining = True, 0
            finally:
                self._dirs.release(where)
        return files

    # --- contents --------------------------------------------------------------------------

    def _start_writers(self) -> None:
        from orbitvault.client.writers import WriterPool  # imports this module

        backend = self.repo.backend
        local = isinstance(backend, LocalBackend)
        try:
            self._writers = WriterPool(
                key=self.repo.key,
                local=str(backend.root) if local else None,
                target=self.opts.target,
                sparse=self.opts.sparse,
                owner=self.owner,
                processes=self.opts.processes or default_processes(),
                on_answer=self._writer_answer,
            )
        except OSError:
            self._writers = None  # no processes to be had: the threads do it
            return
        if not local:
            self._read_pool = ThreadPoolExecutor(max(1, self.opts.workers), thread_name_prefix="restore-read")

    def _restore_batch(self, files: list[RestoreFile]) -> None:
        index = self.repo.index
        plan: dict[bytes, _Blobs] = {}
        for f in files:
            offset = 0
            for bid in f.node.content or []:
                loc = index.lookup(bid)
                if loc is None:
                    self._error(f.path, f"blob {bid.hex()[:16]} is not in the index")
                    f.failed = True
                    f.remaining -= 1
                    continue
                pack_id, entry = loc
                blobs = plan.setdefault(pack_id, {})
                slot = blobs.get(bid)
                if slot is None:
                    blobs[bid] = (entry, [(f, offset)])
                else:
                    slot[1].append((f, offset))
                offset += entry.raw_length
        for f in files:
            if f.remaining == 0:
                self._finish_file(f)
        if self._writers is not None:
            self._restore_by_writers(plan, files)
            return
        with ThreadPoolExecutor(max_workers=max(1, self.opts.workers), thread_name_prefix="restore") as pool:
            for fut in [pool.submit(self._restore_pack, pid, blobs) for pid, blobs in plan.items()]:
                fut.result()

    def _restore_by_writers(self, plan: dict[bytes, _Blobs], files: list[RestoreFile]) -> None:
        """The writer processes get each ranged read's blobs and their targets. A local repository
        they read themselves; from any other, the ranges are read here (a few ahead, on the pool:
        a remote read waits on the network) and the bytes go along. Returns once every job is
        handed over (or read ahead), not when it is written."""
        fids: dict[int, int] = {}
        for fid, f in enumerate(files, len(self._writer_files)):
            fids[id(f)] = fid
            self._writer_files[fid] = f

        def job(group: _Group, buf: memoryview | None = None) -> list[Any]:
            entries = [(e, [(fids[id(f)], off) for f, off in targets]) for e, targets in group]
            return [(entries, None if buf is None else pickle.PickleBuffer(buf))]

        def read_job(pack_id: bytes, group: _Group) -> list[Any]:
            buf = self._read_group(pack_id, group)
            return [] if buf is None else job(group, buf)  # a failed read has failed its files

        # One job per ranged read (<= 4 MiB); from a remote repository a few are read ahead, so
        # memory stays bounded by those.
        for pack_id, blobs in plan.items():
            for group in _groups(blobs):
                if self._read_pool is None:
                    self._writers.submit(pack_id, job(group), self._writer_files)
                    continue
                self._ahead.append((pack_id, self._read_pool.submit(read_job, pack_id, group)))
                if len(self._ahead) >= _READ_AHEAD:
                    self._hand_over(*self._ahead.popleft())

    def _hand_over(self, pack_id: bytes, fut: Future[list[Any]]) -> None:
        groups = fut.result()
        if groups:
            self._writers.submit(pack_id, groups, self._writer_files)

    def _writer_answer(self, answer: tuple[list[int], list[int], list[tuple[str, str]], int, int]) -> None:
        """Result thread: a writer's job done; multi-blob files are finished here, at their last blob."""
        touched, failed, errors, nbytes, sparse = answer
        files = self._writer_files
        for path, message in errors:
            self._error(path, message)
        with self._lock:
            self.summary.bytes_restored += nbytes
            self.summary.bytes_sparse += sparse
            self.bytes_done += nbytes
        for fid in failed:
            files[fid].failed = True
        for fid in touched:
            f = files[fid]
            if f.single:
                with self._lock:
                    f.remaining = 0
            else:
                self._done_one(f)

    def _restore_pack(self, pack_id: bytes, blobs: _Blobs) -> None:
        for group in _groups(blobs):
            buf = self._read_group(pack_id, group)
            if buf is not None:
                self._write_group(pack_id, group, buf)

    def _read_group(self, pack_id: bytes, group: _Group) -> memoryview | None:
        """The bytes of one ranged read; None when it failed (its files are marked failed)."""
        start = group[0][0].offset
        end = group[-1][0].offset + group[-1][0].length
        try:
            buf = memoryview(self.repo.backend.get(self.repo.pack_name(pack_id), start, end - start))
            if len(buf) != end - start:
                raise OrbitVaultError(f"pack {pack_id.hex()}: short read")
        except OrbitVaultError as e:
            for entry, targets in group:
                self._blob_failed(entry, targets, e)
            return None
        return buf

    def _write_group(self, pack_id: bytes, group: _Group, buf: memoryview) -> None:
        """Open, decompress and verify each blob of a ranged read, and write it where it goes."""
        start = group[0][0].offset
        for entry, targets in group:
            try:
                data = self.repo.codec.decode(entry, buf[entry.offset - start : entry.offset - start + entry.length])
            except OrbitVaultError as e:
                self._blob_failed(entry, targets, OrbitVaultError(f"pack {pack_id.hex()}: {e}"))
                continue
            self._write_blob(data, targets)

    def _blob_failed(self, entry: PackEntry, targets: list[tuple[RestoreFile, int]], err: BaseException) -> None:
        for f, _off in targets:
            if not f.failed:
                self._error(f.path, err)
            f.failed = True
            self._done_one(f)

    def _write_blob(self, data: bytes, targets: list[tuple[RestoreFile, int]]) -> None:
        assert self._files is not None
        n = len(data)
        zero = self.opts.sparse and n > 0 and data[0] == 0 and data[-1] == 0 and data == bytes(n)
        for f, off in targets:
            if f.single:
                self._write_single(f, data, zero)
                continue
            if not f.failed and not zero:
                try:
                    fd = self._files.acquire(f.path)
                    try:
                        mv = memoryview(data)
                        pos = off
                        while mv:
                            w = os.pwrite(fd, mv, pos)
                            mv, pos = mv[w:], pos + w
                    finally:
                        self._files.release(f.path)
                except OSError as e:
                    self._error(f.path, e)
                    f.failed = True
            with self._lock:
                if zero:
                    self.summary.bytes_sparse += n
                self.summary.bytes_restored += n
                self.bytes_done += n
            self._done_one(f)

    def _write_single(self, f: RestoreFile, data: bytes, zero: bool) -> None:
        """A one-blob file: create, write, set metadata, close, in this worker."""
        assert self._dirs is not None
        try:
            parent = self._dirs.acquire(f.path[:-1])
            try:
                fd = self._create_file(parent, f.path[-1], f.node, final_mode=True)
            finally:
                self._dirs.release(f.path[:-1])
            try:
                if zero:
                    os.ftruncate(fd, len(data))
                else:
                    mv = memoryview(data)
                    while mv:
                        mv = mv[os.write(fd, mv) :]
                self._file_metadata(fd, f.node, mode_set=True)
            finally:
                os.close(fd)
        except OSError as e:
            self._error(f.path, e)
            f.failed = True
        with self._lock:
            f.remaining = 0
            n = len(data)
            if zero:
                self.summary.bytes_sparse += n
            self.summary.bytes_restored += n
            self.bytes_done += n

    def _done_one(self, f: RestoreFile) -> None:
        with self._lock:
            f.remaining -= 1
            last = f.remaining == 0
        if last:
            self._finish_file(f)

    def _finish_file(self, f: RestoreFile) -> None:
        assert self._files is not None
        if f.failed:
            self._files.discard(f.path)
            return
        try:
            fd = self._files.acquire(f.path)
            try:
                self._file_metadata(fd, f.node)
            finally:
                self._files.release(f.path)
        except OSError as e:
            self._error(f.path, e)
        self._files.discard(f.path)

    # --- metadata --------------------------------------------------------------------------

    def _file_metadata(self, fd: int, node: Node, *, mode_set: bool = False) -> None:
        chowned = False
        if self.owner and (node.uid, node.gid) != self._ids:
            os.fchown(fd, node.uid, node.gid)
            chowned = True
        # Created with its permission bits already (umask 0); chmod only for what creation
        # cannot set, or what chown cleared (setuid/setgid).
        if not (mode_set and self._umask_cleared) or node.mode & ~0o777 or chowned:
            os.fchmod(fd, node.mode)
        for name, value in node.xattrs:
            with contextlib.suppress(OSError):
                os.setxattr(fd, name, value)
        os.utime(fd, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns))

    def _symlink_metadata(self, parent: int, name: str, node: Node) -> None:
        if self.owner:
            with contextlib.suppress(OSError):
                os.chown(name, node.uid, node.gid, dir_fd=parent, follow_symlinks=False)
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(name, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _dir_metadata(self) -> None:
        assert self._dirs is not None
        for path in sorted(self._created_dirs, key=len, reverse=True):
            node = self._dir_nodes.get(path)
            if node is None:
                continue
            try:
                fd = self._dirs.acquire(path)
                try:
                    if self.owner:
                        os.fchown(fd, node.uid, node.gid)
                    for name, value in node.xattrs:
                        with contextlib.suppress(OSError):
                            os.setxattr(fd, name, value)
                    os.fchmod(fd, node.mode)
                    os.utime(fd, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns))
                finally:
                    self._dirs.release(path)
            except OSError as e:
                self._error(path, e)

    # --- hard links ------------------------------------------------------------------------

    def _link(self, files: list[RestoreFile]) -> None:
        assert self._dirs is not None
        for f in files:
            src = f.link_to
            if src is None:
                continue
            if src.failed:
                self._error(f.path, f"hard link target {_display(src.path)} was not restored")
                continue
            try:
                sp = self._dirs.acquire(src.path[:-1])
                try:
                    dp = self._dirs.acquire(f.path[:-1])
                    try:
                        self._replace(dp, f.path[-1])
                        os.link(src.path[-1], f.path[-1], src_dir_fd=sp, dst_dir_fd=dp, follow_symlinks=False)
                    finally:
                        self._dirs.release(f.path[:-1])
                finally:
                    self._dirs.release(src.path[:-1])
                self.summary.hardlinks_restored += 1
                self.summary.files_restored += 1
            except OSError as e:
                self._error(f.path, e)

    # --- verify ----------------------------------------------------------------------------

    def _verify(self, files: list[RestoreFile]) -> None:
        """Re-read every restored file and compare each chunk with its blob id."""
        assert self._dirs is not None
        key, index = self.repo.key, self.repo.index
        for f in files:
            try:
                parent = self._dirs.acquire(f.path[:-1])
                try:
                    fd = os.open(f.path[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                finally:
                    self._dirs.release(f.path[:-1])
                try:
                    ok = True
                    for bid in f.node.content or []:
                        loc = index.lookup(bid)
                        if loc is None:
                            ok = False
                            break
                        n = loc[1].raw_length
                        data = os.read(fd, n)
                        while len(data) < n:
                            more = os.read(fd, n - len(data))
                            if not more:
                                break
                            data += more
                        if key.blob_id(data) != bid:
                            ok = False
                            break
                    if ok and os.read(fd, 1):
                        ok = False
                finally:
                    os.close(fd)
                if ok:
                    self.summary.files_verified += 1
                else:
                    self._error(f.path, "verification failed: restored content differs from the snapshot")
            except OSError as e:
                self._error(f.path, e)
