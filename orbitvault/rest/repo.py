"""restic repositories over the Gateway facade: what each REST operation does to buckets and objects.

HTTP-free: takes a Principal (already authenticated), a `RepoRef` and names; raises
`orbitvault.errors` classes (mapped to HTTP statuses in one place, `server.http_status`) or
`RestError` for protocol rules the facade does not know (no overwrite, append-only, quota).

Semantics follow rest-server (`repo/repo.go`):
- create: the bucket is created if missing; an existing repository is fine (200).
- save: an existing name is never replaced (403); the body's SHA-256 must equal the name (400,
  nothing stored) unless `no_verify_upload`; config is not verified (its name is not a hash).
  The body streams into `Gateway.put_object`; the hash is checked as the last chunk goes by, and
  a mismatch raises from inside the data iterator, which aborts the put before the object
  becomes visible (the pipeline discards its shards).
- append-only (server setting, or an append-only key): every delete is refused (403) except of
  locks, which restic must remove after every command. An append-only *key* cannot delete at all
  in the facade, so lock deletes act for the same tenant at full mode - for `locks/` only.
- quota (`max_repo_size`): usage per repository is tallied from the catalog on first use, then
  kept in memory (rest-server keeps its counter the same way). A declared Content-Length that
  would exceed it is refused before reading (507, as rest-server); a body of undeclared length
  that runs over it is cut off (413) and nothing is stored. Deletes give the space back.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from orbitvault.errors import AlreadyExists, InvalidArgument, NotFound
from orbitvault.ground.gateway import Gateway
from orbitvault.ground.model import KeyMode, ObjectInfo, Principal
from orbitvault.rest.config import RestSettings
from orbitvault.rest.protocol import CONFIG, RangeNotSatisfiable, RangeSpec, RepoRef, listed_name, resolve_range

LIST_PAGE = 1000


class RestError(Exception):
    """A refusal with an HTTP status of its own (the facade has no word for it)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # label of the uploads_rejected metric, when it is one


class HashMismatch(InvalidArgument):
    """Raised from the upload iterator: the put aborts and nothing is stored."""


class BodyRefused(Exception):
    """Raised from the upload iterator: the body ran over a limit (413); nothing is stored."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = 413
        self.message = message
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Download:
    """An object being read: `chunks` yields exactly `length` bytes from `offset`."""

    size: int
    offset: int
    length: int
    partial: bool
    chunks: Iterator[bytes]


@dataclass
class _Charge:
    """Bytes one upload has counted against its repository's quota."""

    key: tuple[str, str, str]
    counted: int = 0


class Repositories:
    """The REST operations for every repository the gateway holds."""

    def __init__(self, gateway: Gateway, settings: RestSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self._usage: dict[tuple[str, str, str], int] = {}
        self._usage_lock = threading.Lock()
        self._writing: set[tuple[str, str, str]] = set()
        self._writing_cv = threading.Condition()

    # --- repository ----------------------------------------------------------------------------------

    def create(self, p: Principal, repo: RepoRef) -> bool:
        """Create the bucket if needed; True if it was created. Nested repositories need nothing more."""
        if p.mode is KeyMode.READ_ONLY:
            raise RestError(403, "a read-only key cannot create repositories")
        try:
            self.gateway.create_bucket(p, repo.bucket)
        except AlreadyExists:
            return False
        return True

    # --- reads ----------------------------------------------------------------------------------------

    def _keys(self, repo: RepoRef, type_: str, name: str) -> list[str]:
        """Where an object may be: its flat key, and for data also rest-server's nested one."""
        keys = [repo.key(type_, name)]
        if type_ == "data":
            keys.append(repo.nested_key(name))
        return keys

    def find(self, p: Principal, repo: RepoRef, type_: str, name: str = "") -> ObjectInfo:
        keys = self._keys(repo, type_, name)
        for key in keys[:-1]:
            try:
                return self.gateway.head_object(p, repo.bucket, key)
            except NotFound:
                pass
        return self.gateway.head_object(p, repo.bucket, keys[-1])

    def _get(
        self, p: Principal, repo: RepoRef, type_: str, name: str, offset: int = 0, length: int | None = None
    ) -> tuple[ObjectInfo, Iterator[bytes]]:
        keys = self._keys(repo, type_, name)
        for key in keys[:-1]:
            try:
                return self.gateway.get_object(p, repo.bucket, key, offset=offset, length=length)
            except NotFound:
                pass
        return self.gateway.get_object(p, repo.bucket, keys[-1], offset=offset, length=length)

    def open(self, p: Principal, repo: RepoRef, type_: str, name: str, spec: RangeSpec | None) -> Download:
        """Start reading; errors known before the first byte are raised here, not by the chunks."""
        if spec is None:
            info, chunks = self._get(p, repo, type_, name)
            return Download(info.size, 0, info.size, False, chunks)
        if spec.first is None:  # suffix range: the size decides the offset
            info = self.find(p, repo, type_, name)
            offset, length = resolve_range(spec, info.size)
            _, chunks = self.gateway.get_object(p, repo.bucket, info.key, offset=offset, length=length)
            return Download(info.size, offset, length, True, chunks)
        offset = spec.first
        want = None if spec.last is None else spec.last - spec.first + 1
        try:
            info, chunks = self._get(p, repo, type_, name, offset, want)
        except InvalidArgument:  # the only argument that can be wrong here: offset beyond the end
            size = self.find(p, repo, type_, name).size
            raise RangeNotSatisfiable(f"range starts at {offset}, the object has {size} bytes", size) from None
        if offset >= info.size:
            _close(chunks)
            raise RangeNotSatisfiable(f"range starts at {offset}, the object has {info.size} bytes", info.size)
        left = info.size - offset
        return Download(info.size, offset, left if want is None else min(want, left), True, chunks)

    def list(self, p: Principal, repo: RepoRef, type_: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every object of a type, page by page. The first page is read before
        returning, so a missing repository is an error here rather than halfway through a reply."""
        prefix = repo.type_prefix(type_)
        objects, _, token = self.gateway.list_objects(p, repo.bucket, prefix=prefix, page_size=LIST_PAGE)

        def walk(objects: list[ObjectInfo], token: str) -> Iterator[tuple[str, int]]:
            while True:
                for o in objects:
                    name = listed_name(type_, o.key[len(prefix) :])
                    if name is not None:
                        yield name, o.size
                if not token:
                    return
                objects, _, token = self.gateway.list_objects(
                    p, repo.bucket, prefix=prefix, page_token=token, page_size=LIST_PAGE
                )

        return walk(objects, token)

    # --- writes ---------------------------------------------------------------------------------------

    def check_write(self, p: Principal, length: int | None) -> None:
        """Refusals known from the headers alone, so a body is not read only to be thrown away."""
        if p.mode is KeyMode.READ_ONLY:
            raise RestError(403, "a read-only key cannot write; give restic --no-lock for read-only commands")
        limit = self.settings.max_object_size
        if length is not None and length > limit:
            raise RestError(413, f"upload of {length} bytes is larger than the {limit}-byte limit", "too_large")

    def save(
        self,
        p: Principal,
        repo: RepoRef,
        type_: str,
        name: str,
        body: Iterable[bytes],
        length: int | None,
    ) -> int:
        """Store a new object from a stream of chunks; returns its size."""
        self.check_write(p, length)
        key = repo.key(type_, name)
        slot = (p.tenant, repo.bucket, key)
        with self._writing_cv:  # one upload per key at a time: "exists?" then "store" is atomic here
            while slot in self._writing:
                self._writing_cv.wait()
            self._writing.add(slot)
        try:
            if self._exists(p, repo, type_, name):
                raise RestError(403, f"{type_}/{name} already exists; objects are never overwritten", "exists")
            charge = self._reserve(p, repo, length)
            stored = 0
            try:
                verify = type_ != CONFIG and not self.settings.no_verify_upload
                stream = self._checked(body, name if verify else None, charge)
                info = self.gateway.put_object(p, repo.bucket, key, stream, size=length)
                stored = info.size
                return stored
            finally:
                self._settle(charge, stored)
        finally:
            with self._writing_cv:
                self._writing.discard(slot)
                self._writing_cv.notify_all()

    def _exists(self, p: Principal, repo: RepoRef, type_: str, name: str) -> bool:
        try:
            self.find(p, repo, type_, name)
        except NotFound:  # a missing bucket too: put_object says so, before reading the body
            return False
        return True

    def _checked(self, body: Iterable[bytes], name: str | None, charge: _Charge | None) -> Iterator[bytes]:
        """The body as it flows into the put: hashed, held to the size limit and the quota."""
        h = hashlib.sha256() if name is not None else None
        limit = self.settings.max_object_size
        seen = 0
        for chunk in body:
            seen += len(chunk)
            if seen > limit:
                raise BodyRefused(f"upload is larger than the {limit}-byte limit; nothing stored", "too_large")
            if charge is not None and seen > charge.counted and not self._grow(charge, seen - charge.counted):
                raise BodyRefused(
                    f"the repository would exceed its quota of {self.settings.max_repo_size} bytes; nothing stored",
                    "quota",
                )
            if h is not None:
                h.update(chunk)
            yield chunk
        if h is not None and h.hexdigest() != name:
            raise HashMismatch("the body's SHA-256 does not match the object name; nothing stored (upload again)")

    # --- quota ----------------------------------------------------------------------------------------

    def _tally(self, p: Principal, repo: RepoRef) -> tuple[str, str, str]:
        """Load a repository's usage from the catalog once (like rest-server's start-up tally)."""
        k = (p.tenant, repo.bucket, repo.prefix)
        with self._usage_lock:
            if k in self._usage:
                return k
        total = 0
        token = ""
        while True:
            objects, _, token = self.gateway.list_objects(
                p, repo.bucket, prefix=repo.prefix, page_token=token, page_size=LIST_PAGE
            )
            total += sum(o.size for o in objects)
            if not token:
                break
        with self._usage_lock:
            self._usage.setdefault(k, total)
        return k

    def _reserve(self, p: Principal, repo: RepoRef, length: int | None) -> _Charge | None:
        """Count a declared length against the quota now (507 if it does not fit)."""
        quota = self.settings.max_repo_size
        if not quota:
            return None
        k = self._tally(p, repo)
        want = length or 0
        with self._usage_lock:
            used = self._usage[k]
            if used + want > quota:
                raise RestError(
                    507,
                    f"incoming blob ({want} bytes) would exceed the quota of repository {repo.label} "
                    f"({quota} bytes, {used} used)",
                    "quota",
                )
            self._usage[k] = used + want
        return _Charge(k, want)

    def _grow(self, charge: _Charge, more: int) -> bool:
        """Count `more` bytes of a body beyond what it declared; False if they do not fit."""
        with self._usage_lock:
            if self._usage[charge.key] + more > self.settings.max_repo_size:
                return False
            self._usage[charge.key] += more
            charge.counted += more
        return True

    def _settle(self, charge: _Charge | None, stored: int) -> None:
        """After a put: the repository holds `stored` bytes more than before it (0 if it failed)."""
        if charge is None:
            return
        with self._usage_lock:
            self._usage[charge.key] += stored - charge.counted

    def usage(self, p: Principal, repo: RepoRef) -> int:
        """Bytes the repository holds as the quota counts them (uploads in progress included)."""
        k = self._tally(p, repo)
        with self._usage_lock:
            return self._usage[k]

    # --- deletes --------------------------------------------------------------------------------------

    def check_delete(self, p: Principal, type_: str) -> None:
        if p.mode is KeyMode.READ_ONLY:
            raise RestError(403, "a read-only key cannot delete")
        if type_ != "locks" and (self.settings.append_only or p.mode is KeyMode.APPEND_ONLY):
            raise RestError(403, "append-only: only locks may be deleted")

    def delete(self, p: Principal, repo: RepoRef, type_: str, name: str = "") -> int:
        """Delete one object; returns its size."""
        self.check_delete(p, type_)
        actor = p
        if type_ == "locks" and p.mode is KeyMode.APPEND_ONLY:
            actor = replace(p, mode=KeyMode.FULL)  # rest-server's append-only mode removes locks
        info = self.find(actor, repo, type_, name)
        self.gateway.delete_object(actor, repo.bucket, info.key)
        if self.settings.max_repo_size:
            with self._usage_lock:
                k = (p.tenant, repo.bucket, repo.prefix)
                if k in self._usage:
                    self._usage[k] = max(0, self._usage[k] - info.size)
        return info.size


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
