"""check: verify a repository's structure and, on request, its data.

Structure (always): every index object decodes; every indexed pack exists with the size its
index implies; every snapshot decodes and every tree and data blob it references (recursively)
is indexed; tree names are safe. Packs present but not indexed, and blobs stored twice, are
reported as hints (prune removes them), not as errors.

Data (--read-data, --read-data-subset): selected packs are downloaded whole and their blake3
compared with their name, their header decrypted and compared with the index, and every blob
opened, decompressed and hashed. Errors name the pack, so a damaged pack can be found in the
store and removed or repaired.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from orbitvault.client.backend import name_id
from orbitvault.client.crypto import object_id
from orbitvault.client.pack import PackEntry, pack_overhead, split_pack
from orbitvault.client.repository import Repository
from orbitvault.client.tree import is_safe_name
from orbitvault.errors import InvalidArgument, OrbitVaultError

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(s: str) -> int:
    m = _SIZE_RE.match(s.strip())
    if not m:
        raise InvalidArgument(f"bad size {s!r}: use e.g. 500M, 2G")
    return int(float(m[1]) * _UNITS[m[2].lower()])


@dataclass
class CheckResult:
    errors: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    packs: int = 0
    snapshots: int = 0
    trees: int = 0
    blobs: int = 0
    packs_read: int = 0
    bytes_read: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "message_type": "summary",
            "num_errors": len(self.errors),
            "errors": self.errors,
            "hints": self.hints,
            "packs": self.packs,
            "snapshots": self.snapshots,
            "trees": self.trees,
            "blobs": self.blobs,
            "packs_read": self.packs_read,
            "bytes_read": self.bytes_read,
        }


def select_subset(pack_ids: list[str], sizes: dict[str, int], subset: str) -> list[str]:
    """restic's --read-data-subset: "n/t" (group n of t, by pack id), "x%" (random), or a size."""
    s = subset.strip()
    ids = sorted(pack_ids)
    if "/" in s:
        try:
            n, t = (int(x) for x in s.split("/", 1))
        except ValueError:
            raise InvalidArgument(f"bad subset {subset!r}: n/t needs integers") from None
        if not (1 <= n <= t):
            raise InvalidArgument(f"bad subset {subset!r}: need 1 <= n <= t")
        return [p for p in ids if int(p[:8], 16) % t == n - 1]
    rng = random.SystemRandom()
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            raise InvalidArgument(f"bad subset {subset!r}") from None
        if not 0 < pct <= 100:
            raise InvalidArgument(f"bad subset {subset!r}: percentage must be in (0, 100]")
        k = max(1, round(len(ids) * pct / 100)) if ids else 0
        return sorted(rng.sample(ids, k))
    budget = parse_size(s)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    out, total = [], 0
    for p in shuffled:
        if total + sizes.get(p, 0) > budget and out:
            break
        out.append(p)
        total += sizes.get(p, 0)
    return sorted(out)


class Checker:
    def __init__(self, repo: Repository, *, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.repo = repo
        self.result = CheckResult()
        self.progress = progress
        self._lock = threading.Lock()

    def _err(self, msg: str) -> None:
        with self._lock:
            self.result.errors.append(msg)

    def run(self, *, read_data: bool = False, subset: str | None = None, workers: int = 2) -> CheckResult:
        repo, res = self.repo, self.result
        repo.load_index(on_error=lambda iid, e: self._err(f"index {iid}: {e}"))
        index = repo.index
        stored = {name_id(i.name): i.size for i in repo.backend.list("data")}
        res.packs = len(stored)
        for pid, entries in index.packs().items():
            h = pid.hex()
            if h not in stored:
                self._err(f"pack {h}: missing (listed in the index)")
                continue
            expect = sum(e.length for e in entries) + pack_overhead(len(entries))
            if stored[h] != expect:
                self._err(f"pack {h}: size {stored[h]} does not match the {expect} bytes its index entries imply")
        for h in sorted(stored):
            if not index.has_pack(bytes.fromhex(h)):
                res.hints.append(f"pack {h}: not referenced by any index (run prune)")
        if index.duplicate_blobs:
            res.hints.append(f"{index.duplicate_blobs} blobs are stored more than once (prune removes the copies)")

        snaps = repo.load_snapshots(on_error=lambda sid, e: self._err(f"snapshot {sid}: {e}"))
        res.snapshots = len(snaps)
        seen_trees: set[bytes] = set()
        seen_blobs: set[bytes] = set()
        for s in snaps:
            self._check_tree(s.id, s.tree, seen_trees, seen_blobs, "/")
        res.trees = len(seen_trees)
        res.blobs = len(seen_blobs)

        if read_data or subset:
            ids = list(stored)
            if subset:
                ids = select_subset(ids, stored, subset)
            self._read_packs(ids, stored, workers)
        return res

    def _check_tree(self, sid: str, root: bytes, seen_trees: set[bytes], seen_blobs: set[bytes], path: str) -> None:
        stack = [(root, path)]
        index = self.repo.index
        while stack:
            tid, p = stack.pop()
            if tid in seen_trees:
                continue
            seen_trees.add(tid)
            if tid not in index:
                self._err(f"snapshot {sid[:8]}: tree {tid.hex()} for {p} is not in the index")
                continue
            try:
                nodes = self.repo.load_tree(tid)
            except OrbitVaultError as e:
                self._err(f"snapshot {sid[:8]}: tree {tid.hex()} for {p}: {e}")
                continue
            names: set[str] = set()
            for n in nodes:
                child = f"{p.rstrip('/')}/{n.name}"
                if not is_safe_name(n.name) or n.name in names:
                    self._err(f"snapshot {sid[:8]}: tree {tid.hex()[:8]} for {p}: unsafe or duplicate name {n.name!r}")
                names.add(n.name)
                if n.type == "dir" and n.subtree is not None:
                    stack.append((n.subtree, child))
                for bid in n.content or []:
                    if bid in seen_blobs:
                        continue
                    seen_blobs.add(bid)
                    if bid not in index:
                        self._err(f"snapshot {sid[:8]}: {child}: data blob {bid.hex()} is not in the index")

    def _read_packs(self, ids: list[str], sizes: dict[str, int], workers: int) -> None:
        total = len(ids)
        done = 0

        def one(h: str) -> None:
            nonlocal done
            self._read_pack(h)
            with self._lock:
                done += 1
                self.result.packs_read += 1
                self.result.bytes_read += sizes.get(h, 0)
            if self.progress:
                self.progress("read-data", done, total)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, ids))

    def _read_pack(self, h: str) -> None:
        repo = self.repo
        pid = bytes.fromhex(h)
        try:
            data = repo.backend.get(repo.pack_name(pid))
        except OrbitVaultError as e:
            self._err(f"pack {h}: cannot be read: {e}")
            return
        if object_id(data).hex() != h:
            self._err(f"pack {h}: content does not match its name (damaged in storage)")
        try:
            entries = split_pack(repo.key, data)
        except OrbitVaultError as e:
            self._err(f"pack {h}: header unreadable: {e}")
            return
        indexed = {(e.id, e.offset) for e in repo.index.pack_entries(pid)}
        if indexed and indexed != {(e.id, e.offset) for e in entries}:
            self._err(f"pack {h}: header does not match the index")
        mv = memoryview(data)
        bad = 0
        for e in entries:
            try:
                repo.codec.decode(e, mv[e.offset : e.offset + e.length])
            except OrbitVaultError:
                bad += 1
                first: PackEntry = e
        if bad:
            self._err(f"pack {h}: {bad} damaged blob(s), e.g. {first.id.hex()} at offset {first.offset}")
