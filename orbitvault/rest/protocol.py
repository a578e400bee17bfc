"""restic's REST backend protocol, transport-free: URL paths, object names, keys, byte ranges.

A repository is a bucket, or a key prefix inside one: `/<bucket>/` is the repository at the
bucket's root, `/<bucket>/<sub>/<path>/` the one whose objects live under `sub/path/` (like
rest-server's nested and private repositories). Path segments are walked until one names a
restic file type, exactly as rest-server's `splitURLPath` does, so a sub path may not itself be
called `data`, `keys`, `locks`, `snapshots`, `index` or `config`.

Objects map to keys `<prefix>config` and `<prefix><type>/<name>`. Listings also report data
packs stored nested by their first two hex digits (`<prefix>data/ab/ab12...`, rest-server's
on-disk layout, e.g. a rest-server directory copied into a bucket), and reads fall back to that
key, so such a repository is served as it is; new packs are always written flat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

from orbitvault.errors import InvalidArgument
from orbitvault.ground import validate

TYPES = ("data", "keys", "locks", "snapshots", "index")
CONFIG = "config"
RESERVED = frozenset((*TYPES, CONFIG))
MIME_V1 = "application/vnd.x.restic.rest.v1"
MIME_V2 = "application/vnd.x.restic.rest.v2"
MAX_SUB_DEPTH = 8  # segments below the bucket; keys stay far below the gateway's 1 KiB limit
MAX_PATH = 2048

_NAME = re.compile(r"^[0-9a-f]{64}$")
_NESTED = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{64})$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class PathError(Exception):
    """A request path that names nothing servable; `status` is 400 (malformed) or 404 (no such route)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RangeNotSatisfiable(Exception):
    """The Range header cannot be served (416); with `size` known the answer carries
    `Content-Range: bytes */size`, as RFC 9110 asks."""

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class Kind(StrEnum):
    REPO = "repo"  # {path}: create (POST ?create=true)
    CONFIG = "config"  # {path}config
    LIST = "list"  # {path}{type}/
    OBJECT = "object"  # {path}{type}/{name}


@dataclass(frozen=True, slots=True)
class RepoRef:
    """One repository: a bucket of the caller's tenant and a key prefix ("" or "a/b/")."""

    bucket: str
    prefix: str = ""

    @property
    def label(self) -> str:
        """The repository as rest-server's metrics name it: its path without slashes around."""
        return f"{self.bucket}/{self.prefix.rstrip('/')}" if self.prefix else self.bucket

    def key(self, type_: str, name: str = "") -> str:
        return f"{self.prefix}{CONFIG}" if type_ == CONFIG else f"{self.prefix}{type_}/{name}"

    def nested_key(self, name: str) -> str:
        """rest-server's on-disk place of a data pack: data/<first two hex digits>/<name>."""
        return f"{self.prefix}data/{name[:2]}/{name}"

    def type_prefix(self, type_: str) -> str:
        return f"{self.prefix}{type_}/"


@dataclass(frozen=True, slots=True)
class Target:
    """What a request path addresses."""

    repo: RepoRef
    kind: Kind
    type: str = ""  # a member of TYPES, or CONFIG
    name: str = ""


def parse_path(path: str) -> Target:
    """The target of a URL path (without query). Raises PathError (400 malformed, 404 no route)."""
    if len(path) > MAX_PATH:
        raise PathError(400, f"request path longer than {MAX_PATH} bytes")
    if not path.startswith("/"):
        raise PathError(400, "request path must start with '/'")
    try:
        segs = [unquote(s, errors="strict") for s in path[1:].split("/")]
    except UnicodeDecodeError:
        raise PathError(400, "request path has percent-escapes that are not UTF-8") from None
    if not segs[0]:
        raise PathError(404, "no repository here: use /<bucket>/ or /<bucket>/<sub/path>/")
    try:
        bucket = validate.bucket_name(segs[0])
    except InvalidArgument as exc:
        raise PathError(400, str(exc)) from None
    i = 1
    sub: list[str] = []
    while i < len(segs) and segs[i] not in RESERVED:
        seg = segs[i]
        if seg == "" and i == len(segs) - 1:
            break  # the trailing slash of the repository path
        if seg in ("", ".", "..") or not _SEGMENT.match(seg):
            raise PathError(400, f"repository path segment {seg!r} is invalid: use 1-128 of A-Z a-z 0-9 . _ ~ -")
        sub.append(seg)
        i += 1
    if len(sub) > MAX_SUB_DEPTH:
        raise PathError(400, f"repository path is {len(sub)} levels below the bucket; at most {MAX_SUB_DEPTH}")
    repo = RepoRef(bucket, "".join(f"{s}/" for s in sub))
    rest = segs[i:]
    if not rest or rest == [""]:
        return Target(repo, Kind.REPO)
    head = rest[0]
    if head == CONFIG:
        if len(rest) == 1:
            return Target(repo, Kind.CONFIG, CONFIG)
        raise PathError(404, "nothing below config")
    if len(rest) != 2:
        raise PathError(404, f"use {head}/ to list or {head}/<64 hex digits> for one object")
    if rest[1] == "":
        return Target(repo, Kind.LIST, head)
    if not _NAME.match(rest[1]):
        raise PathError(400, f"object name {rest[1][:80]!r} is invalid: restic names are 64 lowercase hex digits")
    return Target(repo, Kind.OBJECT, head, rest[1])


def listed_name(type_: str, rel: str) -> str | None:
    """The restic name of a key below `<prefix><type>/` (relative part), or None if it is not one."""
    if _NAME.match(rel):
        return rel
    if type_ == "data":
        m = _NESTED.match(rel)
        if m and m.group(2).startswith(m.group(1)):
            return m.group(2)
    return None


def wants_v2(accept: str | None) -> bool:
    """API version 2 when the Accept header names its media type (version 1 otherwise)."""
    if not accept:
        return False
    return any(part.split(";", 1)[0].strip().lower() == MIME_V2 for part in accept.split(","))


# --- byte ranges (RFC 9110 §14), one range only ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """`bytes=first-last` (last None for open-ended) or, with first None, the suffix `bytes=-last`."""

    first: int | None
    last: int | None


def parse_range(header: str | None) -> RangeSpec | None:
    """The single byte range asked for; None when absent, of another unit or several ranges (then
    the whole object is served, which RFC 9110 allows). Malformed byte ranges raise
    RangeNotSatisfiable, as Go's http.ServeContent (rest-server) answers 416 for them."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    m = _RANGE.match(spec)
    if m is None or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable(f"malformed Range {header[:80]!r}")
    first = int(m.group(1)) if m.group(1) else None
    last = int(m.group(2)) if m.group(2) else None
    if first is not None and last is not None and last < first:
        raise RangeNotSatisfiable(f"Range {header[:80]!r} ends before it starts")
    return RangeSpec(first, last)


def resolve_range(spec: RangeSpec, size: int) -> tuple[int, int]:
    """(offset, length) of `spec` within an object of `size` bytes, or RangeNotSatisfiable."""
    if spec.first is None:  # suffix: the last N bytes
        n = spec.last or 0
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"suffix range of {n} bytes of a {size}-byte object", size)
        n = min(n, size)
        return size - n, n
    if spec.first >= size:
        raise RangeNotSatisfiable(f"range starts at {spec.first}, the object has {size} bytes", size)
    last = size - 1 if spec.last is None else min(spec.last, size - 1)
    return spec.first, last - spec.first + 1
