"""Catalog checkpoints into orbit, and rebuilding a gateway from the nodes alone (design note §9).

A checkpoint is the catalog's lasting tables as zstd-compressed JSON lines, stored as an ordinary
object `catalog/<seq:016d>` of the system bucket: striped, sealed with the system tenant's keys
(wrapped by the master key) and erasure-coded like any object, so it is as durable as the data.
Shard locations and work queues are left out: rebuild takes locations from the nodes themselves.

Rebuild: ListShards (with catalog records) on every node -> shards grouped by object and stripe ->
the newest readable checkpoint -> its tenants, keys, MFA, buckets, nodes and tombstones -> its objects
whose every stripe still has k shards (others were deleted after it) -> objects described by shard
headers but absent from it (created after it), unless their shards were tombstoned -> newest version
per key. Shards left over are orphans, reported here and collected by GC later.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zstandard

from orbitvault.erasure.layout import Geometry
from orbitvault.errors import FailedPrecondition, OrbitVaultError
from orbitvault.ground import selfdesc
from orbitvault.ground.catalog import BucketRecord, Catalog, ObjectRecord, ShardLoc, StripeRecord, TenantRecord
from orbitvault.ground.config import GatewayConfig
from orbitvault.ground.model import SYSTEM_BUCKET, SYSTEM_TENANT, Principal, RebuildReport

if TYPE_CHECKING:
    from orbitvault.ground.gateway import Gateway

PREFIX = "catalog/"
KEEP = 3
CONTENT_TYPE = "application/x-orbitvault-catalog+zstd"
FORMAT = "orbitvault-catalog"
TABLES = ("tenants", "api_keys", "buckets", "nodes", "tombstones", "mfa", "objects")
_CHUNK = 1 << 20
_LIST_PAGE = 1000
_RETRIES = 2  # a rebuild asks a node that did not answer twice more before counting it unreachable
_RETRY_PAUSE_S = 0.5
_BATCH = 256  # catalog entries per transaction while importing
_lock = threading.Lock()


# --- writing ---------------------------------------------------------------------------------------


def due(catalog: Catalog, config: GatewayConfig, now_ms: int) -> bool:
    """A checkpoint is due after `checkpoint_every` changes, an admin or lock change, or
    `checkpoint_interval_s` with any change."""
    changes = catalog.changes()
    base = int(catalog.get_meta("checkpoint_changes") or b"0")
    if changes <= base:
        return False
    if catalog.get_meta("checkpoint_urgent") == b"1" or changes - base >= config.checkpoint_every:
        return True
    last = int(catalog.get_meta("checkpoint_ms") or b"0")
    return now_ms - last >= config.checkpoint_interval_s * 1000


def write_checkpoint(gw: Gateway, p: Principal) -> int:
    with _lock:
        cat = gw.catalog
        seq = int(cat.get_meta("checkpoint_seq") or b"0") + 1
        taken = gw.now_ms()
        cat.put_meta("checkpoint_urgent", b"0")  # urgent changes from now on call for the next one
        before = cat.changes()
        gw.put_object(p, SYSTEM_BUCKET, f"{PREFIX}{seq:016d}", _stream(cat, seq, taken), content_type=CONTENT_TYPE)
        own = 1
        keys: list[str] = []
        token = ""
        while True:
            infos, _, token = gw.list_objects(p, SYSTEM_BUCKET, prefix=PREFIX, page_token=token)
            keys.extend(i.key for i in infos)
            if not token:
                break
        for old in sorted(keys)[:-KEEP]:
            gw.delete_object(p, SYSTEM_BUCKET, old)
            own += 1
        with cat.write() as txn:
            meta = cat.db("meta")
            txn.put(b"checkpoint_seq", str(seq).encode(), db=meta)
            txn.put(b"checkpoint_ms", str(taken).encode(), db=meta)
            txn.put(b"checkpoint_changes", str(before + own).encode(), db=meta)
        return seq


def _stream(cat: Catalog, seq: int, taken: int) -> Iterator[bytes]:
    """The catalog as compressed JSON lines, produced lazily in ~1 MiB chunks (bounded memory)."""
    comp = zstandard.ZstdCompressor(level=3).compressobj()
    head = json.dumps({"format": FORMAT, "version": 1, "seq": seq, "taken": taken}).encode()
    out = bytearray(comp.compress(head + b"\n"))
    for table in TABLES:
        for k, v in cat.scan(table):
            out += comp.compress(b'{"t":"' + table.encode() + b'","k":"' + k.hex().encode() + b'","v":' + v + b"}\n")
            if len(out) >= _CHUNK:
                yield bytes(out)
                out.clear()
    out += comp.flush()
    yield bytes(out)


def _lines(chunks: Iterator[bytes]) -> Iterator[dict]:
    dec = zstandard.ZstdDecompressor().decompressobj()
    rest = b""
    for chunk in chunks:
        data = rest + dec.decompress(chunk)
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line:
                yield json.loads(line)
    if rest:
        yield json.loads(rest)


# --- rebuild ---------------------------------------------------------------------------------------


@dataclass
class _Seen:
    """What the nodes hold of one object."""

    geometry: Geometry
    stripes: dict[int, dict[int, ShardLoc]] = field(default_factory=dict)
    lens: dict[int, int] = field(default_factory=dict)
    records: list[bytes] = field(default_factory=list)


def rebuild(gw: Gateway) -> RebuildReport:
    cat = gw.catalog
    if not cat.is_empty():
        raise FailedPrecondition(
            f"{gw.config.state_dir} already holds a catalog; rebuild only fills an empty state directory"
        )
    now = gw.now_ms()
    errors: list[str] = []
    gw.refresh_nodes(force=True)
    for _ in range(_RETRIES):  # slow to answer (a loaded host, a first TLS handshake) is not gone
        if all(st.up for st in gw.nodes.states()):
            break
        time.sleep(_RETRY_PAUSE_S)
        gw.refresh_nodes(force=True)

    # 1. every shard on every reachable node
    seen: dict[bytes, _Seen] = {}
    listed = unreachable = total = duplicates = 0
    for st in gw.nodes.states():
        if not st.up or st.node_id is None:
            unreachable += 1
            continue
        try:
            infos = _list_node(st.link)
        except OrbitVaultError as exc:
            unreachable += 1
            errors.append(f"node {st.address}: listing failed: {exc}")
            continue
        listed += 1
        for info in infos:
            h = info.header
            total += 1
            obj = seen.setdefault(h.object_id, _Seen(h.geometry))
            slots = obj.stripes.setdefault(h.stripe_index, {})
            if h.shard_index in slots or h.geometry != obj.geometry:
                duplicates += 1
                continue
            slots[h.shard_index] = ShardLoc(st.node_id, h.shard_id)
            obj.lens[h.stripe_index] = h.stripe_data_len
            if h.catalog_record:
                obj.records.append(h.catalog_record)

    # 2. what the headers say
    key = gw.master.catalog_key
    described = {
        oid: d for oid, obj in seen.items() if (d := selfdesc.assemble(key, oid, obj.geometry, obj.records)) is not None
    }

    def stripes_of(rec: ObjectRecord) -> list[StripeRecord] | None:
        obj = seen.get(rec.object_id)
        if obj is None or obj.geometry != rec.geometry:
            return None
        out = []
        for s in range(rec.stripe_count):
            slots = obj.stripes.get(s, {})
            if len(slots) < rec.geometry.k or obj.lens.get(s) != rec.sealed_len(s):
                return None
            out.append(StripeRecord(s, obj.lens[s], tuple(slots.get(i) for i in range(rec.geometry.n))))
        return out

    # 3. the newest readable checkpoint
    loaded: set[bytes] = set()
    tombstoned: set[bytes] = set()
    dropped: list[str] = []
    counts = {"tenants": 0, "buckets": 0, "api_keys": 0}
    seq = 0
    system = gw._system_principal()
    candidates = sorted(
        (
            d
            for d in described.values()
            if d.complete
            and d.record.tenant == SYSTEM_TENANT
            and d.record.bucket == SYSTEM_BUCKET
            and d.record.key.startswith(PREFIX)
        ),
        key=lambda d: d.record.key,
        reverse=True,
    )
    for d in candidates:
        stripes = stripes_of(d.record)
        if stripes is None:
            errors.append(f"checkpoint {d.record.key}: fewer than k shards of some stripe remain")
            continue
        cat.put_tenant(TenantRecord(SYSTEM_TENANT, d.tenant_key_wrapped, now), exclusive=False)
        cat.put_bucket(BucketRecord(SYSTEM_TENANT, SYSTEM_BUCKET, d.record.geometry, None, now), exclusive=False)
        cat.load_object(d.record, stripes, now)
        loaded.add(d.record.object_id)
        try:
            _, chunks = gw.get_object(system, SYSTEM_BUCKET, d.record.key)
            seq = _apply(cat, _lines(chunks), stripes_of, loaded, tombstoned, dropped, counts, now)
        except (OrbitVaultError, ValueError, zstandard.ZstdError) as exc:
            errors.append(f"checkpoint {d.record.key} unreadable: {exc}")
            continue
        break

    # 4. objects newer than the checkpoint, from the headers alone
    newest: dict[tuple[str, str, str], tuple[ObjectRecord, bytes, list[StripeRecord]]] = {}
    from_headers = 0
    for oid, d in described.items():
        if oid in loaded or not d.complete:
            continue
        rec = d.record
        obj = seen[oid]
        if any(loc.shard_id in tombstoned for slots in obj.stripes.values() for loc in slots.values()):
            continue  # deleted before the checkpoint; its leftovers are orphans
        stripes = stripes_of(rec)
        if stripes is None:
            dropped.append(f"{rec.tenant}/{rec.bucket}/{rec.key} (new since the checkpoint, < k shards left)")
            continue
        where = (rec.tenant, rec.bucket, rec.key)
        cur = newest.get(where)
        if cur is None or cur[0].created_unix_ms < rec.created_unix_ms:
            newest[where] = (rec, d.tenant_key_wrapped, stripes)
    for (tenant, bucket, okey), (rec, tkw, stripes) in sorted(newest.items()):
        if cat.get_tenant(tenant) is None:
            cat.put_tenant(TenantRecord(tenant, tkw, now))
            counts["tenants"] += 1
        if cat.get_bucket(tenant, bucket) is None:
            cat.put_bucket(BucketRecord(tenant, bucket, rec.geometry, None, now))
            counts["buckets"] += 1
        existing = cat.get_object(tenant, bucket, okey)
        if existing is not None:
            if existing.created_unix_ms >= rec.created_unix_ms:
                continue
            cat.delete_object(tenant, bucket, okey, check=lambda r: None, now_ms=now)
            loaded.discard(existing.object_id)
        cat.load_object(rec, stripes, now)
        loaded.add(rec.object_id)
        from_headers += 1

    if seq:
        cat.put_meta("checkpoint_seq", str(seq).encode())
    used = sum(len(slots) for oid in loaded if oid in seen for slots in seen[oid].stripes.values())
    missing = len(cat.repair_items())
    return RebuildReport(
        checkpoint_seq=seq,
        nodes_listed=listed,
        nodes_unreachable=unreachable,
        shards_seen=total,
        tenants=len(cat.tenants()),
        buckets=sum(len(cat.buckets(t.name, limit=10**9)) for t in cat.tenants()),
        api_keys=counts["api_keys"],
        objects=len(loaded),
        objects_from_headers=from_headers,
        objects_dropped=tuple(dropped),
        orphan_shards=total - used,
        shards_missing=missing,
        errors=tuple(errors),
    )


def _list_node(link: Any) -> list[Any]:
    """Every shard a node holds, with its catalog record; a listing cut by an error is asked
    again from the start (up to `_RETRIES` times), so nothing is counted twice."""
    for attempt in range(_RETRIES + 1):
        infos: list[Any] = []
        after = b""
        try:
            while True:
                page = link.list_shards(after=after, limit=_LIST_PAGE, include_catalog_records=True)
                infos.extend(page)
                if len(page) < _LIST_PAGE:
                    return infos
                after = page[-1].header.shard_id
        except OrbitVaultError:
            if attempt == _RETRIES:
                raise
            time.sleep(_RETRY_PAUSE_S)
    raise AssertionError("unreachable")


def _apply(
    cat: Catalog,
    lines: Iterator[dict],
    stripes_of: Callable[[ObjectRecord], list[StripeRecord] | None],
    loaded: set[bytes],
    tombstoned: set[bytes],
    dropped: list[str],
    counts: dict[str, int],
    now: int,
) -> int:
    """Load one checkpoint's lines; returns its sequence number."""
    first = next(lines, None)
    if not first or first.get("format") != FORMAT or first.get("version") != 1:
        raise ValueError("not an orbitvault catalog checkpoint")
    raw: list[tuple[str, bytes, bytes]] = []
    objs: list[tuple[ObjectRecord, list[StripeRecord]]] = []

    def flush() -> None:
        if raw:
            cat.put_raw(raw)
            raw.clear()
        if objs:
            cat.load_objects(objs, now)
            objs.clear()

    for line in lines:
        table, k, v = line["t"], bytes.fromhex(line["k"]), line["v"]
        if table == "objects":
            for d in v.values():
                rec = ObjectRecord.from_dict(d)
                if rec.object_id in loaded:
                    continue
                stripes = stripes_of(rec)
                if stripes is None and rec.tenant == SYSTEM_TENANT and rec.key.startswith(PREFIX):
                    continue  # an older checkpoint, pruned after this one was written
                if stripes is None:
                    dropped.append(f"{rec.tenant}/{rec.bucket}/{rec.key} (gone from the nodes: deleted or replaced)")
                    continue
                objs.append((rec, stripes))
                loaded.add(rec.object_id)
        elif table in ("tenants", "api_keys", "buckets", "nodes", "tombstones", "mfa"):
            if table == "tenants" and k.decode() == SYSTEM_TENANT:
                continue  # already loaded from the checkpoint's own headers
            raw.append((table, k, json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()))
            if table == "tombstones":
                tombstoned.add(k[32:])
            elif table in counts:
                counts[table] += 1
        if len(raw) + len(objs) >= _BATCH:
            flush()
    flush()
    return int(first["seq"])
