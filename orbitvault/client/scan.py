"""One directory of a backup, scanned: listed, filtered, stat'ed, and its small files read and hashed.

This is the per-file work of a backup that costs system calls and Python time: the walking
process does it itself for small backups, and hands it to reader processes
(`orbitvault/client/readers.py`) for large ones, so that it runs beside the walk instead of
under the walk's GIL. Either way the same code decides what is backed up, so both give the
same snapshot.

A scan yields one entry per name that survives the excludes, in byte order of names:

- ("e", name, errno, message): the entry could not be stat'ed or read (reported; left out);
- ("s", name): a special file (device, FIFO, socket), skipped with a warning;
- ("d", name, stat, user, group, xattrs): a directory (the walk decides whether to descend);
- ("l", name, stat, user, group, xattrs, target): a symlink;
- ("f", name, stat, user, group, xattrs, how, ids, size): a regular file, where `how` is
  "new" (read: chunk ids and size), "same" (size, mtime, ctime and inode equal the parent
  snapshot's: not opened), "empty", "large" (above the inline limit: the walk reads it on its
  pool), or "linked" (several names: the walk reads it once, whatever the number of names).

`stat` is (st_mode, uid, gid, mtime_ns, atime_ns, ctime_ns, size, inode, device, nlink).
Each chunk of a "new" file is passed to `on_chunk(id, data)` before the entry is yielded.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from orbitvault.client.chunker import Chunker
from orbitvault.client.crypto import MasterKey
from orbitvault.client.filters import PathMatcher, tag_files
from orbitvault.client.tree import name_key

_O_NOATIME = getattr(os, "O_NOATIME", 0)
# O_NONBLOCK: a file swapped for a FIFO since its lstat fails the S_ISREG check instead of
# blocking the open until a writer comes (regular files ignore the flag).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Entry = tuple[Any, ...]
PrevSig = tuple[int, int, int, int]  # a parent-snapshot file: size, mtime_ns, ctime_ns, inode


@dataclass(frozen=True)
class ScanSettings:
    """What decides a scan's result: the backup's selection and change-detection options."""

    excludes: tuple[str, ...] = ()
    iexcludes: tuple[str, ...] = ()
    exclude_if_present: tuple[str, ...] = ()
    exclude_caches: bool = False
    exclude_larger_than: int | None = None
    inline_limit: int = 128 * 1024
    ignore_ctime: bool = False
    ignore_inode: bool = False


class Names:
    """uid/gid -> name, cached (one getpwuid per owner, not per file)."""

    def __init__(self) -> None:
        self._users: dict[int, str | None] = {}
        self._groups: dict[int, str | None] = {}

    def user(self, uid: int) -> str | None:
        return _cached(self._users, uid, lambda: pwd.getpwuid(uid).pw_name)

    def group(self, gid: int) -> str | None:
        return _cached(self._groups, gid, lambda: grp.getgrgid(gid).gr_name)


def _cached(cache: dict[int, str | None], key: int, look_up: Callable[[], str]) -> str | None:
    """`look_up()` once per key (None when the system has no name for it)."""
    if key not in cache:
        try:
            cache[key] = look_up()
        except KeyError:
            cache[key] = None
    return cache[key]


def read_xattrs(path: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue
    return out


def sorted_names(names: list[str]) -> list[str]:
    """Names in byte order: for valid UTF-8 that is code point order (no encoding needed)."""
    try:
        "".join(names).encode()
    except UnicodeEncodeError:  # surrogate-escaped bytes: sort by the bytes themselves
        return sorted(names, key=name_key)
    return sorted(names)


def stat_fields(st: os.stat_result) -> tuple[int, ...]:
    return (
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        st.st_atime_ns,
        st.st_ctime_ns,
        st.st_size,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
    )


def open_source(path: str, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """A file to back up, opened for reading: never through a symlink, without updating its
    atime where allowed, and only if it is still a regular file. The caller closes the fd."""
    try:
        fd = os.open(path, _READ_FLAGS | _O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)  # O_NOATIME needs ownership
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, fst


class Grown(Exception):
    """A small file grew past the limit while being read: the walk reads it as a large file."""


class Scanner:
    """Scans directories for one backup; `on_chunk` sees every chunk of every file read."""

    def __init__(
        self,
        settings: ScanSettings,
        key: MasterKey,
        chunker: Chunker,
        on_chunk: Callable[[bytes, memoryview], None],
        *,
        max_file: int,
    ) -> None:
        self.settings = settings
        self.key = key
        self.chunker = chunker
        self.on_chunk = on_chunk
        self.max_file = max_file
        self.names = Names()
        self.excluder = PathMatcher(settings.excludes, settings.iexcludes)
        self.tag_files = tag_files(settings.exclude_if_present, exclude_caches=settings.exclude_caches)

    def read_file(self, path: str, dir_fd: int | None = None) -> tuple[list[bytes], int]:
        """Chunk ids and size of a file (`path` relative to `dir_fd` when given); raises Grown
        past `max_file` (memory stays bounded)."""
        fd, fst = open_source(path, dir_fd)
        try:
            if fst.st_size > self.max_file:
                raise Grown
            ids: list[bytes] = []
            size = 0
            blob_id, on_chunk = self.key.blob_id, self.on_chunk
            for mv in self.chunker.chunk_fd(fd, fst.st_size):
                size += len(mv)
                if size > self.max_file:
                    raise Grown
                bid = blob_id(mv)
                ids.append(bid)
                on_chunk(bid, mv)
        finally:
            os.close(fd)
        return ids, size

    def list_names(self, path: str) -> list[str]:
        """The names in directory `path`, in byte order; raises OSError."""
        with os.scandir(path) as it:
            return sorted_names([e.name for e in it])

    def scan(self, path: str, prev: dict[str, PrevSig] | None, warnings: list[str]) -> Iterator[Entry]:
        """The entries of directory `path`; raises OSError when it cannot be listed."""
        names = self.list_names(path)
        tags = self._tags_in(path, names, warnings) if self.tag_files else ()
        if tags:  # a tagged directory keeps its tag file only
            names = [n for n in names if all(t == n for t in tags)]
        return self.entries(path, names, prev, select=True)

    def entries(self, path: str, names: list[str], prev: dict[str, PrevSig] | None, *, select: bool) -> Iterator[Entry]:
        """The entries of `names` in directory `path` (byte order); `select`: apply the
        excludes (the backup's own targets are not excluded)."""
        base = path.rstrip("/")
        # Names are looked up from the directory's descriptor: one path component each, not
        # the whole path again (where the directory cannot be opened, full paths say why).
        try:
            dfd: int | None = os.open(base or "/", _DIR_FLAGS)
        except OSError:
            dfd = None
        try:
            yield from self._entries(base, names, prev, select, dfd)
        finally:
            if dfd is not None:
                os.close(dfd)

    def _entries(
        self, base: str, names: list[str], prev: dict[str, PrevSig] | None, select: bool, dfd: int | None
    ) -> Iterator[Entry]:
        s = self.settings
        excluder = self.excluder if select else None
        users = self.names
        limit = s.exclude_larger_than
        for name in names:
            full = f"{base}/{name}"
            if excluder and excluder.match(full):
                continue
            at = full if dfd is None else name
            try:
                st = os.lstat(at, dir_fd=dfd)
                fmt = stat.S_IFMT(st.st_mode)
                if fmt == stat.S_IFREG:
                    if limit is not None and st.st_size > limit:
                        continue
                elif fmt != stat.S_IFDIR and fmt != stat.S_IFLNK:
                    yield ("s", name)
                    continue
                target = os.readlink(at, dir_fd=dfd) if fmt == stat.S_IFLNK else None
                xattrs = read_xattrs(full)
            except OSError as e:
                yield ("e", name, e.errno or 0, e.strerror or str(e))
                continue
            fields = stat_fields(st)
            user, group = users.user(st.st_uid), users.group(st.st_gid)
            if fmt == stat.S_IFDIR:
                yield ("d", name, fields, user, group, xattrs)
                continue
            if fmt == stat.S_IFLNK:
                yield ("l", name, fields, user, group, xattrs, target)
                continue
            sig = prev.get(name) if prev else None
            size = st.st_size
            if sig is not None and self._same(sig, st):
                yield ("f", name, fields, user, group, xattrs, "same", None, 0)
            elif st.st_nlink > 1:
                yield ("f", name, fields, user, group, xattrs, "linked", None, 0)
            elif size == 0:
                yield ("f", name, fields, user, group, xattrs, "empty", None, 0)
            elif size > s.inline_limit:
                yield ("f", name, fields, user, group, xattrs, "large", None, 0)
            else:
                try:
                    ids, got = self.read_file(at, dfd)
                except Grown:
                    yield ("f", name, fields, user, group, xattrs, "large", None, 0)
                    continue
                except OSError as e:
                    yield ("e", name, e.errno or 0, e.strerror or str(e))
                    continue
                yield ("f", name, fields, user, group, xattrs, "new", ids, got)

    def _same(self, sig: PrevSig, st: os.stat_result) -> bool:
        size, mtime, ctime, inode = sig
        if size != st.st_size or mtime != st.st_mtime_ns:
            return False
        if not self.settings.ignore_ctime and ctime != st.st_ctime_ns:
            return False
        return self.settings.ignore_inode or inode == st.st_ino

    def _tags_in(self, path: str, names: list[str], warnings: list[str]) -> list[str]:
        """Names of the tag files (--exclude-if-present, --exclude-caches) that mark `path`."""
        present = set(names)
        return [t.name for t in self.tag_files if t.name in present and t.marks(path, warnings.append)]
