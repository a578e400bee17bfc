"""Garbage collection (design note §13): shards nobody will ever read.

1. Pending uploads (and repairs) whose owner is dead (a crashed gateway: its pid is gone, or it
   was an instance of this process that closed) or that are older than `pending_ttl_s`: their
   shards are deleted and the upload forgotten. A live owner's uploads are never touched.
2. Tombstones (shards of deleted or replaced versions that could not be deleted at once because
   their node was down): deleted when the node answers.
3. Orphans: shards a node holds that the catalog does not know (not placed, not pending, not a
   spooled shard's upload or relay copy, not a restore's relay copy named by `in_flight`, e.g.
   found after a rebuild), older than `pending_ttl_s` so nothing in flight is ever mistaken.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from orbitvault.errors import OrbitVaultError, Unavailable
from orbitvault.ground.catalog import Catalog, PendingUpload
from orbitvault.ground.model import GcReport
from orbitvault.ground.nodes import NodeDirectory
from orbitvault.ground.pipeline import Pipeline

_LIST_PAGE = 1000


def collect(
    catalog: Catalog,
    pipeline: Pipeline,
    nodes: NodeDirectory,
    *,
    live_owners: set[str],
    ttl_s: float,
    now_ms: int,
    scan_orphans: bool = True,
    in_flight: Callable[[], set[bytes]] = set,
) -> GcReport:
    """`in_flight()`: shard ids copied to nodes for work under way that the catalog does not
    record (a restore's relay copies); asked after each listing, so none made meanwhile is lost."""
    ttl_ms = int(ttl_s * 1000)
    removed = deleted = 0
    for p in catalog.pending_uploads():
        if _owner_dead(p, live_owners) or (now_ms - p.created_unix_ms > ttl_ms and p.owner not in live_owners):
            deleted += pipeline.discard(p.upload_id)
            removed += 1

    tombs = catalog.tombstones()
    left = set(pipeline.delete_shards(tombs))
    done = [t for t in tombs if t not in left]
    catalog.clear_tombstones(done)
    deleted += len(done)

    orphans = 0
    if scan_orphans:
        orphans = _collect_orphans(catalog, pipeline, nodes, now_ms - ttl_ms, in_flight)
    return GcReport(removed, deleted, orphans, len(left))


def _owner_dead(p: PendingUpload, live_owners: set[str]) -> bool:
    if p.owner in live_owners:
        return False
    if p.pid == os.getpid():
        return True  # an instance of this process that is gone
    try:
        os.kill(p.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _collect_orphans(
    catalog: Catalog, pipeline: Pipeline, nodes: NodeDirectory, older_than_ms: int, in_flight: Callable[[], set[bytes]]
) -> int:
    pending = catalog.pending_shard_ids() | catalog.spool_shard_ids()
    tombs = catalog.tombstone_ids()
    deleted = 0
    for st in nodes.up_nodes():
        node_id = st.node_id
        assert node_id is not None
        after = b""
        while True:
            try:
                page = st.link.list_shards(after=after, limit=_LIST_PAGE)
            except Unavailable as exc:
                nodes.mark_down(node_id, str(exc))
                break
            except OrbitVaultError:
                break
            if not page:
                break
            dead = []
            busy = in_flight()  # after the listing: a relay copy it shows is named here
            for info in page:
                h = info.header
                if h.created_unix_ms > older_than_ms or h.shard_id in pending or h.shard_id in tombs:
                    continue
                if h.shard_id in busy:
                    continue
                if catalog.shard_known(h.shard_id, node_id):
                    continue
                dead.append((node_id, h.shard_id))
            left = pipeline.delete_shards(dead)
            deleted += len(dead) - len(left)
            after = page[-1].header.shard_id
            if len(page) < _LIST_PAGE:
                break
    return deleted
