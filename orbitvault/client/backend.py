"""Where a repository's objects live: the `Backend` protocol and the `local:` directory backend.

A backend stores opaque, immutable objects under the names of FORMAT.md ("config",
"keys/<id>", "data/<id[:2]>/<id>", "index/<id>", "snapshots/<id>", "locks/<id>"). Every object
except `config` is named by the blake3 of its bytes, so a put never replaces different content and
an interrupted put must leave either nothing or the whole object: that is the one promise a backend
makes (`put` is atomic). The `orbit://` backend (the gateway, through the SDK) implements the same
protocol; `open_backend` is the single place that turns a repository URL into a backend.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from orbitvault.errors import InvalidArgument, NotFound

OBJECT_TYPES = ("keys", "data", "index", "snapshots", "locks")
CONFIG = "config"
_HEX64 = r"[0-9a-f]{64}"
_NAME_RE = re.compile(rf"^(config|(keys|index|snapshots|locks)/{_HEX64}|data/[0-9a-f]{{2}}/{_HEX64})$")


def check_name(name: str) -> str:
    """Refuse anything that is not an object name of FORMAT.md (no path games in backends)."""
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"not a repository object name: {name!r}")
    if name.startswith("data/") and name[5:7] != name[8:10]:
        raise InvalidArgument(f"pack name has the wrong fan-out directory: {name!r}")
    return name


def object_name(kind: str, id_hex: str) -> str:
    """The backend name of an object of `kind` ("data", "index", ...) with id `id_hex`."""
    if kind == "data":
        return f"data/{id_hex[:2]}/{id_hex}"
    return f"{kind}/{id_hex}"


def name_id(name: str) -> str:
    """The hex id part of an object name."""
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int


@runtime_checkable
class Backend(Protocol):
    """Object storage for one repository. Names are FORMAT.md object names.

    Errors: `NotFound` for a missing object, `Unavailable` when the store cannot be reached
    (callers may retry), other `OrbitVaultError`s as they come.
    """

    url: str

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Store `data` under `name` atomically: readers see all of it or nothing."""
        ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes, or `length` bytes from `offset` (fewer only at the end)."""
        ...

    def stat(self, name: str) -> ObjectInfo: ...

    def list(self, kind: str) -> Iterator[ObjectInfo]:
        """Every object of one type ("keys", "data", "index", "snapshots", "locks")."""
        ...

    def delete(self, name: str) -> None:
        """Idempotent: deleting a missing object succeeds."""
        ...

    def exists(self, name: str) -> bool: ...

    def create(self) -> None:
        """Prepare an empty repository location (init); fails if a repository exists there."""
        ...

    def close(self) -> None: ...


class LocalBackend:
    """A repository in a local directory: one file per object.

    Writes go to a temporary file in the destination directory, are fsynced, renamed into place and
    the directory is fsynced, so a crash at any instant leaves the old state or the complete new
    object (temporary files, named ".tmp-*", are ignored by `list` and removed by `prune`).
    Files are 0600 and directories 0700: the repository holds nothing secret in plaintext, but its
    key files are offline-attackable with the password's Argon2id cost.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = f"local:{self.root}"

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def create(self) -> None:
        if (self.root / CONFIG).exists():
            raise InvalidArgument(f"a repository already exists at {self.root}")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for kind in OBJECT_TYPES:
            (self.root / kind).mkdir(mode=0o700, exist_ok=True)
        for i in range(256):
            (self.root / "data" / f"{i:02x}").mkdir(mode=0o700, exist_ok=True)
        for d in [self.root / "data", *(self.root / k for k in OBJECT_TYPES), self.root, self.root.parent]:
            _fsync_dir(d)

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        final = self._path(name)
        directory = final.parent
        tmp = directory / f".tmp-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NotFound(f"repository directory {directory} is missing; is {self.root} a repository?") from None
        try:
            try:
                mv = memoryview(data)
                while mv:
                    mv = mv[os.write(fd, mv) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"object {name} not found in {self.url}") from None
        try:
            if length is None:
                length = os.fstat(fd).st_size - offset
            if length <= 0:
                return b""
            return _pread_all(fd, length, offset)
        finally:
            os.close(fd)

    def stat(self, name: str) -> ObjectInfo:
        try:
            return ObjectInfo(name, self._path(name).stat().st_size)
        except FileNotFoundError:
            raise NotFound(f"object {name} not found in {self.url}") from None

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, kind: str) -> Iterator[ObjectInfo]:
        if kind not in OBJECT_TYPES:
            raise InvalidArgument(f"unknown object type {kind!r}")
        base = self.root / kind
        dirs = [base / f"{i:02x}" for i in range(256)] if kind == "data" else [base]
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                name = f"{kind}/{d.name}/{entry.name}" if kind == "data" else f"{kind}/{entry.name}"
                if not _NAME_RE.match(name):
                    continue
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                yield ObjectInfo(name, size)

    def delete(self, name: str) -> None:
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)

    def remove_temporary(self, older_than_s: float) -> int:
        """Delete ".tmp-*" files left by crashed writers; only prune calls this (exclusive lock)."""
        import time

        removed = 0
        cutoff = time.time() - older_than_s
        for root, _dirs, files in os.walk(self.root):
            for f in files:
                if f.startswith(".tmp-"):
                    p = Path(root) / f
                    with contextlib.suppress(FileNotFoundError):
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            removed += 1
        return removed

    def close(self) -> None:
        pass


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ORBIT_RE = re.compile(
    r"^orbit://(?P<host>[^/:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})/(?P<bucket>[A-Za-z0-9._-]{1,63})/?$"
)


@dataclass(frozen=True, slots=True)
class OrbitLocation:
    host: str
    port: int
    bucket: str


def parse_orbit_url(url: str) -> OrbitLocation:
    m = _ORBIT_RE.match(url)
    if not m:
        raise InvalidArgument(f"bad orbit repository URL {url!r}: expected orbit://HOST:PORT/BUCKET")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise InvalidArgument(f"bad port in {url!r}")
    return OrbitLocation(m["host"].strip("[]"), port, m["bucket"])


def open_backend(url: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Backend:
    """Turn a repository location into a backend.

    `local:/path` (or a plain path, as restic accepts) is a directory; `orbit://HOST:PORT/BUCKET`
    is the gateway's ObjectStore, reached through the SDK (credentials from the environment, see
    `backend_orbit`), with metadata cached under `cache_dir` when given.
    """
    if not url:
        raise InvalidArgument("no repository given: use -r/--repo or ORBITVAULT_REPOSITORY")
    if url.startswith("orbit://"):
        from orbitvault.client.backend_orbit import OrbitBackend

        return OrbitBackend(url, cache_dir=cache_dir)
    if url.startswith("local:"):
        path = url[len("local:") :]
        if not path:
            raise InvalidArgument("local: needs a path, e.g. local:/srv/backup")
        return LocalBackend(path)
    if "://" in url:
        raise InvalidArgument(f"unknown repository scheme in {url!r}: use local:/path or orbit://HOST:PORT/BUCKET")
    return LocalBackend(url)
