"""Snapshot objects and the snapshot selection rules shared by the commands (FORMAT.md, "Snapshots").

A snapshot's time keeps the UTC offset it was taken in (RFC 3339), like restic: forget's calendar
buckets (day, week, ...) are evaluated in the snapshot's own local time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orbitvault.client.errors import InvalidFormat
from orbitvault.errors import InvalidArgument, NotFound


@dataclass(slots=True)
class Snapshot:
    time: datetime
    tree: bytes
    paths: list[str]
    hostname: str = ""
    username: str = ""
    uid: int = 0
    gid: int = 0
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    excludes: list[str] = field(default_factory=list)
    original: str | None = None
    program_version: str = ""
    summary: dict[str, Any] | None = None
    id: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "time": self.time.isoformat(timespec="microseconds"),
            "tree": self.tree.hex(),
            "paths": self.paths,
            "hostname": self.hostname,
            "username": self.username,
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.tags:
            d["tags"] = self.tags
        if self.parent:
            d["parent"] = self.parent
        if self.excludes:
            d["excludes"] = self.excludes
        if self.original:
            d["original"] = self.original
        if self.program_version:
            d["program_version"] = self.program_version
        if self.summary is not None:
            d["summary"] = self.summary
        return d

    @classmethod
    def from_json(cls, d: Any, snapshot_id: str = "") -> Snapshot:
        if not isinstance(d, dict):
            raise InvalidFormat("snapshot is not a JSON object")
        try:
            t = datetime.fromisoformat(d["time"])
            if t.tzinfo is None:
                raise ValueError("time without UTC offset")
            tree = bytes.fromhex(d["tree"])
            if len(tree) != 32:
                raise ValueError("tree id must be 32 bytes")
            return cls(
                time=t,
                tree=tree,
                paths=[str(p) for p in d["paths"]],
                hostname=str(d.get("hostname", "")),
                username=str(d.get("username", "")),
                uid=int(d.get("uid", 0)),
                gid=int(d.get("gid", 0)),
                tags=[str(x) for x in d.get("tags") or []],
                parent=d.get("parent"),
                excludes=[str(x) for x in d.get("excludes") or []],
                original=d.get("original"),
                program_version=str(d.get("program_version", "")),
                summary=d.get("summary"),
                id=snapshot_id,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidFormat(f"malformed snapshot {snapshot_id[:8]}: {e}") from None

    def has_tags(self, taglist: Sequence[str]) -> bool:
        """restic's HasTags: all tags of the list present; the empty tag "" matches untagged snapshots."""
        for tag in taglist:
            if tag == "" and not self.tags:
                return True
            if tag not in self.tags:
                return False
        return True

    def has_tag_list(self, taglists: Sequence[Sequence[str]]) -> bool:
        """restic's HasTagList: any of the lists matches (none given: every snapshot)."""
        return not taglists or any(self.has_tags(tl) for tl in taglists)

    def has_paths(self, paths: Sequence[str]) -> bool:
        return all(p in self.paths for p in paths)


def parse_tag_lists(values: Iterable[str]) -> list[list[str]]:
    """--tag a,b --tag c  ->  [["a", "b"], ["c"]] (restic's TagLists)."""
    out = []
    for v in values:
        out.append([t.strip() for t in v.split(",")] if v else [""])
    return out


def filter_snapshots(
    snaps: Iterable[Snapshot],
    *,
    hosts: Sequence[str] = (),
    tags: Sequence[Sequence[str]] = (),
    paths: Sequence[str] = (),
) -> list[Snapshot]:
    out = []
    for s in snaps:
        if hosts and s.hostname not in hosts:
            continue
        if not s.has_tag_list(tags):
            continue
        if paths and not s.has_paths(paths):
            continue
        out.append(s)
    return sorted(out, key=lambda s: s.time)


def find_snapshot(snaps: Sequence[Snapshot], ref: str) -> Snapshot:
    """`ref` is a full id, a unique id prefix, "latest" (after filtering), or "latest~N"."""
    if ref == "latest" or ref.startswith("latest~"):
        n = 0
        if ref != "latest":
            try:
                n = int(ref[len("latest~") :])
            except ValueError:
                raise InvalidArgument(f"bad snapshot reference {ref!r}") from None
        ordered = sorted(snaps, key=lambda s: s.time)
        if len(ordered) <= n:
            raise NotFound("no matching snapshot found")
        return ordered[-1 - n]
    ref = ref.lower()
    matches = [s for s in snaps if s.id.startswith(ref)]
    if not matches:
        raise NotFound(f"no snapshot matches {ref!r}")
    if len(matches) > 1:
        raise InvalidArgument(f"snapshot prefix {ref!r} is ambiguous ({len(matches)} matches); give more digits")
    return matches[0]


GROUP_FIELDS = ("host", "paths", "tags")


def parse_group_by(value: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in value.split(",") if f.strip())
    for f in fields:
        if f not in GROUP_FIELDS:
            raise InvalidArgument(f"unknown --group-by field {f!r}: use host, paths, tags")
    return fields


def group_key(s: Snapshot, fields: Sequence[str]) -> dict[str, Any]:
    key: dict[str, Any] = {}
    if "host" in fields:
        key["hostname"] = s.hostname
    if "paths" in fields:
        key["paths"] = sorted(s.paths)
    if "tags" in fields:
        key["tags"] = sorted(s.tags)
    return key


def group_snapshots(snaps: Iterable[Snapshot], fields: Sequence[str]) -> list[tuple[dict[str, Any], list[Snapshot]]]:
    groups: dict[str, tuple[dict[str, Any], list[Snapshot]]] = {}
    for s in snaps:
        k = group_key(s, fields)
        groups.setdefault(repr(sorted(k.items())), (k, []))[1].append(s)
    return [groups[k] for k in sorted(groups)]
