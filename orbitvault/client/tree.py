"""Trees: one directory's entries, stored as a tree blob (FORMAT.md, "Trees").

A tree is compact JSON `{"nodes": [...]}` with nodes sorted by name bytes. Encoding is
deterministic (fixed key order, no whitespace), so an unchanged directory encodes to the same
bytes, hence the same keyed id, and an unchanged re-backup stores no new tree.

Names and symlink targets are bytes on POSIX. Internally they are `str` with surrogateescape (what
`os` returns); in JSON a valid UTF-8 name is stored as "name", anything else as "name_b64", so the
JSON stays valid UTF-8 for any implementation.

Decoding checks types and shapes. Whether a name is safe to create on disk (`is_safe_name`) is
decided by the restorer and check, so a hostile tree is reported entry by entry.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

from orbitvault.client.errors import InvalidFormat

NODE_TYPES = ("file", "dir", "symlink", "dev", "chardev", "fifo", "socket")


def _enc_name(value: str, key: str, out: dict[str, Any]) -> None:
    raw = os.fsencode(value)
    try:
        out[key] = raw.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(raw).decode()


def _dec_name(d: dict[str, Any], key: str) -> str | None:
    if key in d:
        v = d[key]
        if not isinstance(v, str):
            raise InvalidFormat(f"tree node field {key!r} must be a string")
        return v
    if key + "_b64" in d:
        try:
            return os.fsdecode(base64.b64decode(d[key + "_b64"], validate=True))
        except (ValueError, TypeError):
            raise InvalidFormat(f"tree node field {key}_b64 is not base64") from None
    return None


def is_safe_name(name: str) -> bool:
    """A single path component that cannot climb or escape: no '/', NUL, '.', '..' or ''."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


def name_key(name: str) -> bytes:
    return os.fsencode(name)


@dataclass(slots=True)
class Node:
    """One directory entry and its metadata (times in integer nanoseconds since the epoch)."""

    name: str
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device_id: int = 0
    links: int = 1
    rdev: int = 0
    linktarget: str | None = None
    xattrs: list[tuple[str, bytes]] = field(default_factory=list)
    content: list[bytes] | None = None
    subtree: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        _enc_name(self.name, "name", d)
        d["type"] = self.type
        d["mode"] = self.mode
        d["uid"] = self.uid
        d["gid"] = self.gid
        if self.user is not None:
            d["user"] = self.user
        if self.group is not None:
            d["group"] = self.group
        d["mtime_ns"] = self.mtime_ns
        d["atime_ns"] = self.atime_ns
        d["ctime_ns"] = self.ctime_ns
        if self.type == "file":
            d["size"] = self.size
        d["inode"] = self.inode
        d["device_id"] = self.device_id
        d["links"] = self.links
        if self.rdev:
            d["rdev"] = self.rdev
        if self.linktarget is not None:
            _enc_name(self.linktarget, "linktarget", d)
        if self.xattrs:
            d["xattrs"] = [{"name": n, "value": base64.b64encode(v).decode()} for n, v in self.xattrs]
        if self.content is not None:
            d["content"] = [c.hex() for c in self.content]
        if self.subtree is not None:
            d["subtree"] = self.subtree.hex()
        return d

    @classmethod
    def from_json(cls, d: Any) -> Node:
        if not isinstance(d, dict):
            raise InvalidFormat("tree node is not an object")
        name = _dec_name(d, "name")
        if name is None:
            raise InvalidFormat("tree node without a name")
        t = d.get("type")
        if t not in NODE_TYPES:
            raise InvalidFormat(f"tree node {name!r} has unknown type {t!r}")
        try:
            ints = []
            for key, default, lo, hi in _INT_FIELDS:  # one pass; `_int` only to say what is wrong
                v = d.get(key, default)
                if type(v) is not int or not lo <= v <= hi:
                    v = _int(d, key, default, lo=lo, hi=hi)
                ints.append(v)
            mode, uid, gid, mtime, atime, ctime, size, inode, dev, links, rdev = ints
            node = cls(
                name,
                t,
                mode,
                uid,
                gid,
                _opt_str(d, "user"),
                _opt_str(d, "group"),
                mtime,
                atime,
                ctime,
                size,
                inode,
                dev,
                links,
                rdev,
                _dec_name(d, "linktarget"),
            )
            xattrs = d.get("xattrs", [])
            if not isinstance(xattrs, list):
                raise InvalidFormat("xattrs must be a list")
            if xattrs:
                node.xattrs = [(str(x["name"]), base64.b64decode(x["value"], validate=True)) for x in xattrs]
            if "content" in d:
                content = d["content"]
                if not isinstance(content, list):
                    raise InvalidFormat("content must be a list")
                node.content = [bytes.fromhex(c) if type(c) is str and len(c) == 64 else _id(c) for c in content]
            if "subtree" in d:
                node.subtree = _id(d["subtree"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidFormat(f"tree node {name!r}: {e}") from None
        if node.type == "file" and node.content is None:
            raise InvalidFormat(f"file node {name!r} without content list")
        if node.type == "dir" and node.subtree is None:
            raise InvalidFormat(f"dir node {name!r} without subtree")
        if node.type == "symlink" and node.linktarget is None:
            raise InvalidFormat(f"symlink node {name!r} without target")
        if not 0 <= node.mode <= 0o7777:
            raise InvalidFormat(f"node {name!r}: mode {node.mode:o} out of range")
        return node


_U32 = 2**32 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_U64 = 2**64 - 1
# Integer fields in constructor order: (key, default, lowest, highest), what the OS calls they feed accept.
_INT_FIELDS = (
    ("mode", 0, 0, _U64),
    ("uid", 0, 0, _U32),
    ("gid", 0, 0, _U32),
    ("mtime_ns", 0, _I64_MIN, _I64_MAX),
    ("atime_ns", 0, _I64_MIN, _I64_MAX),
    ("ctime_ns", 0, _I64_MIN, _I64_MAX),
    ("size", 0, 0, _I64_MAX),
    ("inode", 0, 0, _U64),
    ("device_id", 0, 0, _U64),
    ("links", 1, 0, _U32),
    ("rdev", 0, 0, _U64),
)


def _int(d: dict[str, Any], key: str, default: int = 0, *, lo: int = 0, hi: int = 2**64 - 1) -> int:
    """An integer field within what the OS calls it feeds accept (a hostile tree must not crash them)."""
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidFormat(f"field {key!r} must be an integer")
    if not lo <= v <= hi:
        raise InvalidFormat(f"field {key!r} = {v} is out of range {lo}..{hi}")
    return v


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise InvalidFormat(f"field {key!r} must be a string")
    return v


def _id(v: Any) -> bytes:
    if not isinstance(v, str) or len(v) != 64:
        raise InvalidFormat(f"bad blob id {v!r}")
    return bytes.fromhex(v)


def encode_tree(nodes: list[Node]) -> bytes:
    """Deterministic tree blob plaintext; nodes must already be sorted by name bytes."""
    return json.dumps({"nodes": [n.to_json() for n in nodes]}, separators=(",", ":"), ensure_ascii=False).encode()


def decode_tree(data: bytes) -> list[Node]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidFormat(f"tree blob is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise InvalidFormat("tree blob has no node list")
    return [Node.from_json(n) for n in doc["nodes"]]


def sort_nodes(nodes: list[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: name_key(n.name))
