"""Compare a restored tree with its source: contents byte for byte and the metadata a restore sets.

Checked for every entry (never following symbolic links): it exists on both sides with the same
type; files have the same size and contents (blake3 over a memory map: no Python loop over bytes);
symbolic links the same target; permission bits, owner and group, and modification times (to the
nanosecond) agree; files hard-linked together in the source are hard-linked together in the copy;
and the copy holds nothing the source does not. Access times are not compared (reading changes
them), nor extended attributes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

MAX_REPORTED = 20


@dataclass
class TreeComparison:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    symlinks: int = 0
    dirs: int = 0
    hardlink_groups: int = 0
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0 and self.entries > 0

    def note(self, what: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < MAX_REPORTED:
            self.mismatches.append(what)

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "entries": self.entries,
            "files": self.files,
            "bytes": self.bytes,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlink_groups": self.hardlink_groups,
            "mismatches": self.mismatch_count,
            "first_mismatches": self.mismatches,
        }


def file_digest(path: str | os.PathLike[str]) -> bytes:
    h = blake3.blake3()
    if os.path.getsize(path):
        h.update_mmap(path)
    return h.digest()


def _walk(root: Path) -> dict[str, os.stat_result]:
    """Relative path -> lstat of every entry below `root` (the root itself as "")."""
    out = {"": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            p = base / name
            out[str(p.relative_to(root))] = os.lstat(p)
    return out


def compare_trees(
    source: str | os.PathLike[str], copy: str | os.PathLike[str], *, owner: bool = True
) -> TreeComparison:
    """Compare `copy` (a restore of `source`) with `source`; see the module docstring."""
    src_root, dst_root = Path(source), Path(copy)
    res = TreeComparison()
    if not dst_root.is_dir():
        res.note(f"{dst_root} does not exist")
        return res
    src, dst = _walk(src_root), _walk(dst_root)
    for extra in sorted(set(dst) - set(src)):
        res.note(f"{extra}: in the copy only")
    links: dict[tuple[int, int], list[str]] = {}
    for rel in sorted(src):
        s = src[rel]
        res.entries += 1
        d = dst.get(rel)
        name = rel or "."
        if d is None:
            res.note(f"{name}: missing")
            continue
        if stat.S_IFMT(s.st_mode) != stat.S_IFMT(d.st_mode):
            res.note(f"{name}: type {stat.filemode(s.st_mode)[0]} restored as {stat.filemode(d.st_mode)[0]}")
            continue
        if stat.S_ISLNK(s.st_mode):
            res.symlinks += 1
            if os.readlink(src_root / rel) != os.readlink(dst_root / rel):
                res.note(f"{name}: link target differs")
        else:
            if stat.S_IMODE(s.st_mode) != stat.S_IMODE(d.st_mode):
                res.note(f"{name}: mode {stat.filemode(s.st_mode)} restored as {stat.filemode(d.st_mode)}")
        if owner and (s.st_uid, s.st_gid) != (d.st_uid, d.st_gid):
            res.note(f"{name}: owner {s.st_uid}:{s.st_gid} restored as {d.st_uid}:{d.st_gid}")
        if rel and s.st_mtime_ns != d.st_mtime_ns:
            res.note(f"{name}: mtime {s.st_mtime_ns} restored as {d.st_mtime_ns}")
        if stat.S_ISDIR(s.st_mode):
            res.dirs += 1
        elif stat.S_ISREG(s.st_mode):
            res.files += 1
            res.bytes += s.st_size
            if s.st_size != d.st_size:
                res.note(f"{name}: size {s.st_size} restored as {d.st_size}")
            elif file_digest(src_root / rel) != file_digest(dst_root / rel):
                res.note(f"{name}: contents differ")
            if s.st_nlink > 1:
                links.setdefault((s.st_dev, s.st_ino), []).append(rel)
    for group in links.values():
        if len(group) < 2:
            continue  # linked to something outside the tree
        res.hardlink_groups += 1
        inodes = {(dst[r].st_dev, dst[r].st_ino) for r in group if r in dst}
        if len(inodes) != 1:
            res.note(f"{', '.join(group)}: hard links not restored as one file")
    return res
