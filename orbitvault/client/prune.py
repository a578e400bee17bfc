"""prune: remove data no snapshot references, repacking packs that are partly used.

Runs under the exclusive lock, with the whole index in memory:

1. mark every tree and data blob reachable from a snapshot (tree blobs are read; data is not);
2. classify packs: fully used (kept as is), unused (deleted), partly used (repack candidates),
   stored but not indexed (leftovers of an interrupted run: deleted), indexed but missing
   (their entries dropped; prune refuses if a used blob exists only there);
3. repack the partly used packs with the most unused bytes first until the unused bytes left
   are within --max-unused (restic's rule: unused <= limit of the repository after prune);
   blobs are copied verbatim (each is sealed on its own), after being authenticated;
4. write the new packs and a new index (marking the old index objects superseded), then delete
   the old index objects, then the obsolete packs. A crash at any point leaves a readable
   repository: at worst unindexed packs or duplicate entries, which the next prune removes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orbitvault.client.backend import LocalBackend, name_id, object_name
from orbitvault.client.check import parse_size
from orbitvault.client.pack import BlobType, PackEntry
from orbitvault.client.repository import Packer, Repository
from orbitvault.errors import DataLoss, InvalidArgument, OrbitVaultError

_INDEX_CHUNK = 50_000  # entries per index object written by prune


@dataclass
class PrunePlan:
    used_blobs: int = 0
    used_bytes: int = 0
    unused_blobs: int = 0
    unused_bytes: int = 0
    keep: list[bytes] = field(default_factory=list)
    repack: list[bytes] = field(default_factory=list)
    remove: list[bytes] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    missing: list[bytes] = field(default_factory=list)
    keep_entries: dict[bytes, set[tuple[bytes, int]]] = field(default_factory=dict)
    repack_bytes: int = 0
    remove_bytes: int = 0
    unused_after: int = 0
    total_before: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "message_type": "summary",
            "used_blobs": self.used_blobs,
            "used_size": self.used_bytes,
            "unused_blobs": self.unused_blobs,
            "unused_size": self.unused_bytes,
            "packs_keep": len(self.keep),
            "packs_repack": len(self.repack),
            "packs_remove": len(self.remove),
            "packs_unindexed": len(self.unindexed),
            "packs_missing": len(self.missing),
            "repack_size": self.repack_bytes,
            "remove_size": self.remove_bytes,
            "unused_size_after": self.unused_after,
            "total_size_before": self.total_before,
        }


def used_blobs(repo: Repository, on_tree: Callable[[], None] | None = None) -> set[bytes]:
    """Every tree and data blob reachable from a snapshot; fails if a tree cannot be read."""
    used: set[bytes] = set()
    for snap in repo.load_snapshots():
        stack = [snap.tree]
        while stack:
            tid = stack.pop()
            if tid in used:
                continue
            used.add(tid)
            try:
                nodes = repo.load_tree(tid)
            except OrbitVaultError as e:
                raise DataLoss(
                    f"snapshot {snap.short_id}: tree {tid.hex()} unreadable ({e}); run `orbitvault check` first"
                ) from None
            if on_tree:
                on_tree()
            for n in nodes:
                if n.subtree is not None:
                    stack.append(n.subtree)
                if n.content:
                    used.update(n.content)
    return used


def _max_unused(spec: str, used_bytes: int) -> float:
    s = spec.strip().lower()
    if s == "unlimited":
        return float("inf")
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            raise InvalidArgument(f"bad --max-unused {spec!r}") from None
        if not 0 <= pct < 100:
            raise InvalidArgument("--max-unused percentage must be in [0, 100)")
        return used_bytes * pct / (100 - pct)
    return parse_size(s)


def plan_prune(repo: Repository, *, max_unused: str = "5%") -> PrunePlan:
    repo.load_index()
    stored = {bytes.fromhex(name_id(i.name)): i.size for i in repo.backend.list("data")}
    used = used_blobs(repo)
    plan = PrunePlan()
    index = repo.index
    plan.unindexed = [p.hex() for p in stored if not index.has_pack(p)]
    plan.total_before = sum(stored.values())

    kept_blob: set[bytes] = set()  # used blobs already kept in one pack (later copies are unused)
    per_pack: dict[bytes, tuple[int, int, set[tuple[bytes, int]]]] = {}
    # Packs first that exist; a used blob whose only copy is missing is data loss.
    for pid, entries in index.packs().items():
        if pid not in stored:
            plan.missing.append(pid)
            continue
        u_bytes = n_bytes = 0
        keep_set: set[tuple[bytes, int]] = set()
        for e in entries:
            if e.id in used and e.id not in kept_blob:
                kept_blob.add(e.id)
                keep_set.add((e.id, e.offset))
                u_bytes += e.length
                plan.used_blobs += 1
            else:
                n_bytes += e.length
                plan.unused_blobs += 1
        plan.used_bytes += u_bytes
        plan.unused_bytes += n_bytes
        per_pack[pid] = (u_bytes, n_bytes, keep_set)
    lost = used - kept_blob
    if lost:
        sample = next(iter(lost)).hex()
        raise DataLoss(
            f"{len(lost)} used blobs are in no stored pack (e.g. {sample}); "
            "run `orbitvault check` — prune refuses to run on a damaged repository"
        )

    candidates = []
    for pid, (u, n, keep_set) in per_pack.items():
        entries = index.pack_entries(pid)
        if u == 0:
            plan.remove.append(pid)
            plan.remove_bytes += stored[pid]
        elif n == 0:
            plan.keep.append(pid)
        else:
            is_tree = any(e.type == BlobType.TREE for e in entries)
            candidates.append((is_tree, n / (u + n), pid, u, n))
        plan.keep_entries[pid] = keep_set
    limit = _max_unused(max_unused, plan.used_bytes)
    unused_left = sum(n for _t, _r, _p, _u, n in candidates)
    # Tree packs are always repacked (small, read often); then the emptiest data packs first.
    for is_tree, _ratio, pid, _u, n in sorted(candidates, key=lambda c: (not c[0], -c[1])):
        if is_tree or unused_left > limit:
            plan.repack.append(pid)
            plan.repack_bytes += stored[pid]
            unused_left -= n
        else:
            plan.keep.append(pid)
    plan.unused_after = max(unused_left, 0)
    return plan


def execute_prune(
    repo: Repository, plan: PrunePlan, *, lock: Any = None, progress: Callable[[int, int], None] | None = None
) -> None:
    index = repo.index
    old_ids = sorted(index.loaded_ids)  # before the new packs' index joins them
    packer = Packer(repo, index_every=1 << 30)
    total = len(plan.repack)
    for k, pid in enumerate(plan.repack):
        keep = plan.keep_entries[pid]
        wanted = sorted((e for e in index.pack_entries(pid) if (e.id, e.offset) in keep), key=lambda e: e.offset)
        _copy_blobs(repo, pid, wanted, packer)
        if lock is not None:
            lock.check()
        if progress:
            progress(k + 1, total)
    packer.flush()  # writes the new packs' index
    # New index for every kept pack, superseding all old index objects.
    kept: dict[bytes, list[PackEntry]] = {}
    for pid in plan.keep:
        entries = index.pack_entries(pid)
        kept[pid] = entries
    chunks: list[dict[bytes, list[PackEntry]]] = [{}]
    count = 0
    for pid, entries in kept.items():
        if count >= _INDEX_CHUNK:
            chunks.append({})
            count = 0
        chunks[-1][pid] = entries
        count += len(entries)
    sup = [bytes.fromhex(i) for i in old_ids]
    written = set()
    for part in chunks:
        if part:
            written.add(repo.save_index(part, sup))
    if lock is not None:
        lock.check()
    for iid in old_ids:
        if iid not in written:
            repo.backend.delete(object_name("index", iid))
            index.loaded_ids.discard(iid)
    for pid in plan.repack + plan.remove:
        repo.backend.delete(repo.pack_name(pid))
    for h in plan.unindexed:
        repo.backend.delete(object_name("data", h))
    index.remove_packs(plan.repack + plan.remove + plan.missing)
    if (cache := getattr(repo.backend, "tree_cache", None)) is not None:
        cache.retain(lambda blob_id: blob_id in index)
    if isinstance(repo.backend, LocalBackend):
        repo.backend.remove_temporary(older_than_s=24 * 3600)


def _copy_blobs(repo: Repository, pid: bytes, wanted: list[PackEntry], packer: Packer) -> None:
    if not wanted:
        return
    name = repo.pack_name(pid)
    start = wanted[0].offset
    end = wanted[-1].offset + wanted[-1].length
    buf = memoryview(repo.backend.get(name, start, end - start))
    if len(buf) != end - start:
        raise DataLoss(f"pack {pid.hex()}: short read while repacking")
    for e in wanted:
        sealed = buf[e.offset - start : e.offset - start + e.length]
        try:
            repo.codec.decode(e, sealed)  # authenticate before copying
        except OrbitVaultError as err:
            raise DataLoss(
                f"pack {pid.hex()}: blob {e.id.hex()} damaged ({err}); run `orbitvault check --read-data`"
            ) from None
        packer.add_sealed(e, bytes(sealed))
