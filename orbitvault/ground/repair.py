"""The repair coordinator: keeps every stripe at k+m shards (design note §12).

Work comes from the catalog's repair queue: shards a put could not store, shards a read found
missing or damaged beyond their node's own repair, and every shard of a node not seen for
`node_grace_s` (queued by each sweep). A shard is rebuilt from k healthy shards of its stripe, row
batch by row batch (`StripeCoder.rebuild`), and stored on an eligible node (up, with room, not
holding another shard of the stripe, planes spread); like a put, the new shard is a pending upload
until the catalog points at it, so a crash mid-repair leaves nothing GC cannot find.
"""

from __future__ import annotations

import os

from orbitvault.erasure.stripe import ShardRows, checksum
from orbitvault.errors import OrbitVaultError, Unavailable
from orbitvault.ground import selfdesc
from orbitvault.ground.catalog import Catalog, NodeRecord, PendingUpload, RepairItem, ShardLoc
from orbitvault.ground.config import GatewayConfig
from orbitvault.ground.crypto import MasterKey
from orbitvault.ground.model import RepairBacklog, RepairReport
from orbitvault.ground.nodes import NodeDirectory
from orbitvault.ground.pipeline import Pipeline, StripeSource, row_batches, rows_per_call
from orbitvault.ground.placement import Candidate, choose
from orbitvault.storage.header import ShardHeader, Sibling


class RepairCoordinator:
    def __init__(
        self,
        catalog: Catalog,
        nodes: NodeDirectory,
        pipeline: Pipeline,
        master: MasterKey,
        config: GatewayConfig,
        owner: str,
    ) -> None:
        self.catalog = catalog
        self.nodes = nodes
        self.pipeline = pipeline
        self.master = master
        self.config = config
        self.owner = owner

    def remember_nodes(self) -> None:
        """Persist what nodes said, so ids and last-seen times survive a restart while nodes are down."""
        records = [
            NodeRecord(
                st.node_id,
                st.address,
                st.status.name,
                st.status.plane,
                st.status.capacity_bytes,
                st.status.used_bytes,
                st.status.shard_count,
                int(st.last_seen * 1000),
            )
            for st in self.nodes.states()
            if st.node_id is not None and st.status is not None and st.up
        ]
        if records:
            self.catalog.put_nodes(records)

    def known_node_ids(self) -> set[bytes]:
        ids = {st.node_id for st in self.nodes.states() if st.node_id is not None}
        ids.update(r.node_id for r in self.catalog.nodes())
        return ids

    def gone_nodes(self) -> list[bytes]:
        return sorted(n for n in self.known_node_ids() if self.nodes.gone(n, self.config.node_grace_s))

    def sweep(self, now_ms: int) -> RepairReport:
        """Queue the shards of gone nodes, then rebuild every queued shard that can be rebuilt now."""
        gone = self.gone_nodes()
        for node_id in gone:
            items = []
            for shard_id in self.catalog.shards_on_node(node_id):
                owner = self.catalog.shard_owner(shard_id)
                if owner is not None:
                    object_id, stripe, index, _ = owner
                    items.append((object_id, stripe, index, "node gone"))
            self.catalog.queue_repair(items, now_ms)
        rebuilt = failed = written = 0
        errors: list[str] = []
        for item in self.catalog.repair_items():
            try:
                n = self.repair(item, now_ms)
            except OrbitVaultError as exc:
                failed += 1
                where = f"object {item.object_id.hex()[:16]} stripe {item.stripe} shard {item.shard_index}"
                errors.append(f"{where}: {exc}")
                continue
            if n:
                rebuilt += 1
                written += n
        return RepairReport(rebuilt, failed, written, tuple(gone), len(self.catalog.repair_items()), tuple(errors))

    def repair(self, item: RepairItem, now_ms: int) -> int:
        """Rebuild one shard on a new node; returns the bytes stored (0 if nothing was left to do)."""
        oid, s, idx = item.object_id, item.stripe, item.shard_index
        rec = self.catalog.get_object_by_id(oid)
        stripe = self.catalog.stripe(oid, s) if rec is not None else None
        if rec is None or stripe is None:
            self.catalog.remove_repair(oid, s, idx)
            return 0
        g = rec.geometry
        old = stripe.shards[idx]
        others = [loc for i, loc in enumerate(stripe.shards) if i != idx and loc is not None]
        exclude = {loc.node_id for loc in others} | ({old.node_id} if old is not None else set())
        planes = [st.plane for loc in others if (st := self.nodes.get(loc.node_id)) is not None]
        need = self.pipeline.shard_bytes(oid, g, stripe.data_len)
        candidates = [Candidate(st.node_id, st.plane, st.free_bytes) for st in self.nodes.up_nodes() if st.node_id]
        chosen = choose(candidates, 1, need, used_planes=planes, exclude=exclude, rng=self.pipeline.rng)
        if not chosen:
            raise Unavailable(
                f"no eligible node for the shard: every reachable node with room already holds one of the "
                f"stripe's {g.n} shards; add nodes or bring some back"
            )
        target = chosen[0]

        source = StripeSource(self.pipeline, oid, g, stripe)
        rows = g.row_count(stripe.data_len)
        per = rows_per_call(g)
        fragments: list[bytes] = []
        for r0 in range(0, rows, per):
            r1 = min(r0 + per, rows)
            got = source.rebuild(idx, r0, r1, then=(r1, min(r1 + per, rows)) if r1 < rows else None)
            fragments.extend(got[r] for r in range(r0, r1))
        sums = [checksum(f) for f in fragments]

        new = ShardLoc(target.node_id, os.urandom(32))
        siblings = [Sibling(i, loc.node_id, loc.shard_id) for i, loc in enumerate(stripe.shards) if loc and i != idx]
        siblings.append(Sibling(idx, new.node_id, new.shard_id))
        tenant = self.catalog.get_tenant(rec.tenant)
        pieces = selfdesc.pieces(self.master.catalog_key, rec, tenant.wrapped_key if tenant else b"", complete=True)
        header = ShardHeader(
            shard_id=new.shard_id,
            object_id=oid,
            stripe_index=s,
            stripe_count=rec.stripe_count,
            shard_index=idx,
            geometry=g,
            stripe_data_len=stripe.data_len,
            siblings=tuple(siblings),
            created_unix_ms=rec.created_unix_ms,
            catalog_record=selfdesc.piece_for(pieces, idx),
        )
        repair_id = os.urandom(32)
        self.catalog.begin_pending(
            PendingUpload(repair_id, self.owner, os.getpid(), now_ms, "repair", rec.tenant, rec.bucket, rec.key)
        )
        self.catalog.add_pending_shards(repair_id, s, [(idx, new)])
        link = self.nodes.link(new.node_id)
        try:
            if link is None:
                raise Unavailable("the chosen node has no link")
            link.put_shard(header, row_batches(ShardRows(idx, 0, fragments, sums), per))
        except Exception as exc:
            if isinstance(exc, Unavailable):
                self.nodes.mark_down(new.node_id, str(exc))
            self.pipeline.discard(repair_id)
            raise
        self.nodes.reserve(new.node_id, need)
        moved = self.catalog.relocate_shard(oid, s, idx, new, expected_old=old, upload_id=repair_id, now_ms=now_ms)
        if moved and old is not None:
            dead = [(old.node_id, old.shard_id)]
            left = set(self.pipeline.delete_shards(dead))
            self.catalog.clear_tombstones([d for d in dead if d not in left])
        return need

    def backlog(self) -> RepairBacklog:
        items = self.catalog.repair_items()
        if not items:
            return RepairBacklog(0, 0, 0, 0, 0)
        missing: dict[tuple[bytes, int], int] = {}
        for it in items:
            missing[(it.object_id, it.stripe)] = missing.get((it.object_id, it.stripe), 0) + 1
        pending = at_risk = 0
        for (oid, s), count in missing.items():
            rec = self.catalog.get_object_by_id(oid)
            stripe = self.catalog.stripe(oid, s) if rec is not None else None
            if rec is None or stripe is None:
                continue
            pending += count * self.pipeline.shard_bytes(oid, rec.geometry, stripe.data_len)
            if rec.geometry.n - count == rec.geometry.k:
                at_risk += 1
        return RepairBacklog(len(items), 0, pending, at_risk, min(it.queued_unix_ms for it in items))
