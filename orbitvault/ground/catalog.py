"""The gateway's catalog on LMDB: every write one synced transaction (design note §7).

Named databases in `<state_dir>/catalog`:

    meta          str -> bytes                 fingerprint, change counter, checkpoint state
    tenants       name -> JSON                 wrapped tenant key
    api_keys      key_id -> JSON               blake3 of the secret, tenant, mode
    buckets       tenant 0 name -> JSON        storage class, default retention
    objects       tenant 0 bucket 0 key[:T] -> JSON {key: record}   (see below)
    by_id         object_id -> JSON [tenant, bucket, key]
    stripes       object_id | stripe u32 -> JSON {len, shards: [[node, shard] | null] * (k+m)}
    shard_index   shard_id -> object_id | stripe u32 | index u8 | node_id
    node_shards   node_id | shard_id -> ""
    pending       upload_id -> JSON            an upload (or repair) in progress, its owner
    pending_shards upload_id | stripe u32 -> JSON [[index, node, shard], ...]
    repair        object_id | stripe u32 | index u8 -> JSON {reason, queued_ms}
    tombstones    node_id | shard_id -> JSON {queued_ms}    shards to delete when the node answers
    nodes         node_id -> JSON              address, plane, last status, last seen
    mfa           tenant -> JSON               wrapped TOTP secret, enabled, last time step used
    spool_objects object_id -> JSON            a scheduled-mode object not yet DURABLE: queue position,
                                               tenant, the catalog-record pieces of its shard headers
    spool         object_id | stripe u32 | index u8 -> JSON   a spooled shard not yet in orbit:
                                               its id, rows, and the upload(s) under way for it
    restores      object_id -> JSON            a restored (staged) copy: when ready, when it expires

LMDB keys are at most 511 bytes, object keys up to 1024: an `objects` entry is keyed by the first
`_KEY_PREFIX` bytes of the key and holds every key sharing them, sorted, so listing stays in exact
bytewise key order. Bytes inside JSON are hex.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lmdb

from orbitvault.erasure.layout import Geometry
from orbitvault.errors import FailedPrecondition, NotFound
from orbitvault.ground.crypto import TAG_LEN
from orbitvault.ground.mfa import MfaRecord
from orbitvault.ground.model import DefaultRetention, KeyMode, Retention, RetentionMode

_KEY_PREFIX = 360
_STRIPE_KEY = struct.Struct(">32sI")
_REPAIR_KEY = struct.Struct(">32sIB")
_SHARD_INDEX = struct.Struct(">32sIB32s")
_MAP_SIZE = 64 << 30  # sparse reservation; the file grows with use
_PAGE = 500

# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardLoc:
    node_id: bytes
    shard_id: bytes


@dataclass(frozen=True, slots=True)
class StripeRecord:
    """Where one stripe's k+m shards are; None where a shard is missing (queued for repair)."""

    index: int
    data_len: int  # sealed bytes the erasure layer coded
    shards: tuple[ShardLoc | None, ...]

    def present(self) -> list[int]:
        return [i for i, s in enumerate(self.shards) if s is not None]

    def to_json(self) -> bytes:
        shards = [None if s is None else [s.node_id.hex(), s.shard_id.hex()] for s in self.shards]
        return _dump({"len": self.data_len, "shards": shards})

    @classmethod
    def from_json(cls, index: int, raw: bytes) -> StripeRecord:
        d = json.loads(raw)
        shards = tuple(None if s is None else ShardLoc(bytes.fromhex(s[0]), bytes.fromhex(s[1])) for s in d["shards"])
        return cls(index, d["len"], shards)


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One current object version: everything ObjectInfo needs, plus how to read it back."""

    object_id: bytes
    tenant: str
    bucket: str
    key: str
    size: int
    etag: bytes
    created_unix_ms: int
    content_type: str
    metadata: dict[str, str]
    geometry: Geometry
    stripe_count: int
    plain_per_stripe: int
    segment_size: int
    wrapped_data_key: bytes
    customer_key_blake3: bytes = b""
    retention: Retention | None = None
    legal_hold: bool = False

    def to_dict(self) -> dict[str, Any]:
        g = self.geometry
        return {
            "object_id": self.object_id.hex(),
            "tenant": self.tenant,
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "etag": self.etag.hex(),
            "created": self.created_unix_ms,
            "content_type": self.content_type,
            "metadata": self.metadata,
            "geometry": [g.k, g.m, g.fragment_size, g.stripe_size],
            "stripes": self.stripe_count,
            "pps": self.plain_per_stripe,
            "segment": self.segment_size,
            "wrapped_key": self.wrapped_data_key.hex(),
            "sse_c": self.customer_key_blake3.hex(),
            "retention": None
            if self.retention is None
            else [self.retention.mode.value, self.retention.retain_until_unix_ms],
            "legal_hold": self.legal_hold,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectRecord:
        ret = d.get("retention")
        return cls(
            object_id=bytes.fromhex(d["object_id"]),
            tenant=d["tenant"],
            bucket=d["bucket"],
            key=d["key"],
            size=d["size"],
            etag=bytes.fromhex(d["etag"]),
            created_unix_ms=d["created"],
            content_type=d["content_type"],
            metadata=dict(d["metadata"]),
            geometry=Geometry(*d["geometry"]),
            stripe_count=d["stripes"],
            plain_per_stripe=d["pps"],
            segment_size=d["segment"],
            wrapped_data_key=bytes.fromhex(d["wrapped_key"]),
            customer_key_blake3=bytes.fromhex(d.get("sse_c", "")),
            retention=None if ret is None else Retention(RetentionMode(ret[0]), ret[1]),
            legal_hold=bool(d.get("legal_hold", False)),
        )

    def plain_len(self, stripe: int) -> int:
        """Plaintext bytes in stripe `stripe` (0 for the single stripe of an empty object)."""
        return max(0, min(self.plain_per_stripe, self.size - stripe * self.plain_per_stripe))

    def segments(self, stripe: int) -> int:
        return max(1, -(-self.plain_len(stripe) // self.segment_size))

    def sealed_len(self, stripe: int) -> int:
        return self.plain_len(stripe) + TAG_LEN * self.segments(stripe)


@dataclass(frozen=True, slots=True)
class TenantRecord:
    name: str
    wrapped_key: bytes
    created_unix_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "wrapped_key": self.wrapped_key.hex(), "created": self.created_unix_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TenantRecord:
        return cls(d["name"], bytes.fromhex(d["wrapped_key"]), d["created"])


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    secret_blake3: bytes
    tenant: str
    mode: KeyMode
    created_unix_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "secret_blake3": self.secret_blake3.hex(),
            "tenant": self.tenant,
            "mode": self.mode.value,
            "created": self.created_unix_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyRecord:
        return cls(d["key_id"], bytes.fromhex(d["secret_blake3"]), d["tenant"], KeyMode(d["mode"]), d["created"])


@dataclass(frozen=True, slots=True)
class BucketRecord:
    tenant: str
    name: str
    geometry: Geometry
    default_retention: DefaultRetention | None
    created_unix_ms: int

    def to_dict(self) -> dict[str, Any]:
        g, dr = self.geometry, self.default_retention
        return {
            "tenant": self.tenant,
            "name": self.name,
            "geometry": [g.k, g.m, g.fragment_size, g.stripe_size],
            "default_retention": None if dr is None else [dr.mode.value, dr.retain_for_ms],
            "created": self.created_unix_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BucketRecord:
        dr = d.get("default_retention")
        return cls(
            d["tenant"],
            d["name"],
            Geometry(*d["geometry"]),
            None if dr is None else DefaultRetention(RetentionMode(dr[0]), dr[1]),
            d["created"],
        )


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An upload (kind "put") or a shard rebuild (kind "repair") whose shards may exist on nodes
    but are not in the catalog yet: GC deletes them if its owner died or it grew too old."""

    upload_id: bytes
    owner: str
    pid: int
    created_unix_ms: int
    kind: str = "put"
    tenant: str = ""
    bucket: str = ""
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "pid": self.pid,
            "created": self.created_unix_ms,
            "kind": self.kind,
            "tenant": self.tenant,
            "bucket": self.bucket,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, upload_id: bytes, d: dict[str, Any]) -> PendingUpload:
        return cls(upload_id, d["owner"], d["pid"], d["created"], d["kind"], d["tenant"], d["bucket"], d["key"])


@dataclass(frozen=True, slots=True)
class SpoolObject:
    """A scheduled-mode object whose shards are not all in orbit yet (queue order: `seq`)."""

    object_id: bytes
    queued_unix_ms: int
    tenant: str
    pieces: tuple[bytes, ...]  # selfdesc pieces: shard i's header carries pieces[i % len]
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "queued": self.queued_unix_ms,
            "tenant": self.tenant,
            "pieces": [x.hex() for x in self.pieces],
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, object_id: bytes, d: dict[str, Any]) -> SpoolObject:
        return cls(object_id, d["queued"], d["tenant"], tuple(bytes.fromhex(x) for x in d["pieces"]), d["seq"])


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A spooled shard not yet in orbit, and the uploads under way for it.

    `target` is the satellite it is bound to once its first byte goes up (late binding), with the
    node, upload id and rows committed there; `relay` a satellite that receives the whole shard
    first and forwards it over an inter-satellite link. `header` is the shard header as first sent:
    a resumed upload must present the same one.
    """

    object_id: bytes
    stripe: int
    index: int
    shard_id: bytes
    rows: int
    granule: int  # planned bytes per row: a full fragment and its checksum
    target: str = ""
    target_node: bytes = b""
    upload_id: bytes = b""
    committed: int = 0
    relay: str = ""
    relay_node: bytes = b""
    relay_upload_id: bytes = b""
    relay_committed: int = 0
    header: bytes = b""

    @property
    def key(self) -> tuple[bytes, int, int]:
        return (self.object_id, self.stripe, self.index)

    @property
    def size(self) -> int:
        """Planned bytes of the shard (what the scheduler fits into windows)."""
        return self.rows * self.granule

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard_id.hex(),
            "rows": self.rows,
            "granule": self.granule,
            "target": self.target,
            "target_node": self.target_node.hex(),
            "upload": self.upload_id.hex(),
            "committed": self.committed,
            "relay": self.relay,
            "relay_node": self.relay_node.hex(),
            "relay_upload": self.relay_upload_id.hex(),
            "relay_committed": self.relay_committed,
            "header": self.header.hex(),
        }

    @classmethod
    def from_dict(cls, object_id: bytes, stripe: int, index: int, d: dict[str, Any]) -> SpoolEntry:
        return cls(
            object_id,
            stripe,
            index,
            bytes.fromhex(d["shard"]),
            d["rows"],
            d["granule"],
            d["target"],
            bytes.fromhex(d["target_node"]),
            bytes.fromhex(d["upload"]),
            d["committed"],
            d["relay"],
            bytes.fromhex(d["relay_node"]),
            bytes.fromhex(d["relay_upload"]),
            d["relay_committed"],
            bytes.fromhex(d["header"]),
        )


@dataclass(frozen=True, slots=True)
class RepairItem:
    object_id: bytes
    stripe: int
    shard_index: int
    reason: str
    queued_unix_ms: int


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: bytes
    address: str
    name: str = ""
    plane: str = ""
    capacity_bytes: int = 0
    used_bytes: int = 0
    shard_count: int = 0
    last_seen_unix_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "plane": self.plane,
            "capacity": self.capacity_bytes,
            "used": self.used_bytes,
            "shards": self.shard_count,
            "last_seen": self.last_seen_unix_ms,
        }

    @classmethod
    def from_dict(cls, node_id: bytes, d: dict[str, Any]) -> NodeRecord:
        return cls(node_id, d["address"], d["name"], d["plane"], d["capacity"], d["used"], d["shards"], d["last_seen"])


@dataclass
class CommitResult:
    replaced: ObjectRecord | None
    tombstoned: list[tuple[bytes, bytes]] = field(default_factory=list)


# --- the catalog ---------------------------------------------------------------------------------


class Catalog:
    """All gateway state; safe to share between threads (and processes, LMDB being multi-process)."""

    TABLES = (
        "meta",
        "tenants",
        "api_keys",
        "buckets",
        "objects",
        "by_id",
        "stripes",
        "shard_index",
        "node_shards",
        "pending",
        "pending_shards",
        "repair",
        "tombstones",
        "nodes",
        "mfa",
        "spool_objects",
        "spool",
        "restores",
    )

    def __init__(self, state_dir: str | Path, *, sync: bool = True) -> None:
        self.path = Path(state_dir) / "catalog"
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(self.path), map_size=_MAP_SIZE, max_dbs=len(self.TABLES) + 1, sync=sync, metasync=sync
            )
        except lmdb.Error as exc:
            raise FailedPrecondition(f"cannot open the gateway catalog at {self.path}: {exc}") from exc
        self._db = {name: self._env.open_db(name.encode()) for name in self.TABLES}

    def close(self) -> None:
        self._env.close()

    def db(self, name: str) -> Any:
        return self._db[name]

    def read(self) -> lmdb.Transaction:
        return self._env.begin()

    def write(self) -> lmdb.Transaction:
        return self._env.begin(write=True)

    # --- meta ---------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        with self.read() as txn:
            v = txn.get(key.encode(), db=self._db["meta"])
        return None if v is None else bytes(v)

    def put_meta(self, key: str, value: bytes) -> None:
        with self.write() as txn:
            txn.put(key.encode(), value, db=self._db["meta"])

    def bind_master(self, fingerprint: bytes) -> None:
        """Remember which master key this state belongs to; refuse another one later."""
        with self.write() as txn:
            known = txn.get(b"fingerprint", db=self._db["meta"])
            if known is None:
                txn.put(b"fingerprint", fingerprint, db=self._db["meta"])
            elif bytes(known) != fingerprint:
                raise FailedPrecondition(
                    f"the master key does not match the gateway state in {self.path.parent}; give the master key "
                    "this gateway was set up with"
                )

    def is_empty(self) -> bool:
        with self.read() as txn:
            return all(txn.stat(self._db[t])["entries"] == 0 for t in ("tenants", "buckets", "objects"))

    def changes(self) -> int:
        v = self.get_meta("changes")
        return int(v) if v else 0

    def _bump(self, txn: lmdb.Transaction, n: int = 1, *, urgent: bool = False) -> None:
        meta = self._db["meta"]
        v = txn.get(b"changes", db=meta)
        txn.put(b"changes", str((int(v) if v else 0) + n).encode(), db=meta)
        if urgent:
            txn.put(b"checkpoint_urgent", b"1", db=meta)

    # --- tenants, keys, buckets ---------------------------------------------------------------------

    def get_tenant(self, name: str) -> TenantRecord | None:
        return self._get("tenants", name.encode(), TenantRecord.from_dict)

    def put_tenant(self, rec: TenantRecord, *, exclusive: bool = True) -> bool:
        return self._put("tenants", rec.name.encode(), rec.to_dict(), exclusive)

    def tenants(self) -> list[TenantRecord]:
        return [TenantRecord.from_dict(json.loads(v)) for _, v in self.scan("tenants")]

    def get_key(self, key_id: str) -> KeyRecord | None:
        return self._get("api_keys", key_id.encode(), KeyRecord.from_dict)

    def put_key(self, rec: KeyRecord, *, exclusive: bool = True) -> bool:
        return self._put("api_keys", rec.key_id.encode(), rec.to_dict(), exclusive)

    def delete_key(self, key_id: str) -> bool:
        with self.write() as txn:
            found = txn.delete(key_id.encode(), db=self._db["api_keys"])
            if found:
                self._bump(txn, urgent=True)
        return found

    # --- MFA ----------------------------------------------------------------------------------------------

    def get_mfa(self, tenant: str) -> MfaRecord | None:
        return self._get("mfa", tenant.encode(), MfaRecord.from_dict)

    def put_mfa(self, rec: MfaRecord) -> bool:
        """Enrol a tenant; False if it already has MFA (disable first)."""
        return self._put("mfa", rec.tenant.encode(), rec.to_dict(), True)

    def delete_mfa(self, tenant: str) -> bool:
        with self.write() as txn:
            found = txn.delete(tenant.encode(), db=self._db["mfa"])
            if found:
                self._bump(txn, urgent=True)
        return found

    def consume_mfa_step(self, tenant: str, step: int, enabled_unix_ms: int) -> bool:
        """Mark time step `step` used, atomically; False if it (or a later one) was used already,
        or the enrolment changed meanwhile. Not a catalog change worth a checkpoint."""
        with self.write() as txn:
            raw = txn.get(tenant.encode(), db=self._db["mfa"])
            if raw is None:
                return False
            rec = MfaRecord.from_dict(json.loads(bytes(raw)))
            if rec.enabled_unix_ms != enabled_unix_ms or step <= rec.last_step:
                return False
            txn.put(tenant.encode(), _dump(replace(rec, last_step=step).to_dict()), db=self._db["mfa"])
        return True

    def get_bucket(self, tenant: str, name: str) -> BucketRecord | None:
        return self._get("buckets", _bkey(tenant, name), BucketRecord.from_dict)

    def put_bucket(self, rec: BucketRecord, *, exclusive: bool = True) -> bool:
        return self._put("buckets", _bkey(rec.tenant, rec.name), rec.to_dict(), exclusive)

    def buckets(self, tenant: str, after: str = "", limit: int = 1000) -> list[BucketRecord]:
        prefix = tenant.encode() + b"\x00"
        start = prefix + after.encode() + b"\x00" if after else prefix
        out: list[BucketRecord] = []
        for _, v in self.scan("buckets", start=start, prefix=prefix):
            out.append(BucketRecord.from_dict(json.loads(v)))
            if len(out) >= limit:
                break
        return out

    def delete_bucket(self, tenant: str, name: str) -> None:
        """Delete a bucket if it holds no object, atomically with that check."""
        prefix = _okey_prefix(tenant, name)
        with self.write() as txn:
            if txn.get(_bkey(tenant, name), db=self._db["buckets"]) is None:
                raise NotFound(f"bucket {name!r} does not exist")
            cur = txn.cursor(db=self._db["objects"])
            if cur.set_range(prefix) and bytes(cur.key()).startswith(prefix):
                raise FailedPrecondition(f"bucket {name!r} is not empty; delete its objects first")
            txn.delete(_bkey(tenant, name), db=self._db["buckets"])
            self._bump(txn, urgent=True)

    # --- objects ------------------------------------------------------------------------------------

    def get_object(self, tenant: str, bucket: str, key: str) -> ObjectRecord | None:
        with self.read() as txn:
            return self._get_object(txn, tenant, bucket, key)

    def get_object_by_id(self, object_id: bytes) -> ObjectRecord | None:
        with self.read() as txn:
            v = txn.get(object_id, db=self._db["by_id"])
            if v is None:
                return None
            tenant, bucket, key = json.loads(bytes(v))
            return self._get_object(txn, tenant, bucket, key)

    def _get_object(self, txn: lmdb.Transaction, tenant: str, bucket: str, key: str) -> ObjectRecord | None:
        entry = txn.get(_okey(tenant, bucket, key), db=self._db["objects"])
        if entry is None:
            return None
        d = json.loads(bytes(entry)).get(key)
        return None if d is None else ObjectRecord.from_dict(d)

    def _set_object(self, txn: lmdb.Transaction, rec: ObjectRecord | None, where: tuple[str, str, str]) -> None:
        """Put `rec` at `where` (tenant, bucket, key), or remove what is there when rec is None."""
        ek = _okey(*where)
        raw = txn.get(ek, db=self._db["objects"])
        entry = json.loads(bytes(raw)) if raw is not None else {}
        if rec is None:
            entry.pop(where[2], None)
        else:
            entry[where[2]] = rec.to_dict()
        if entry:
            txn.put(ek, _dump(dict(sorted(entry.items(), key=lambda kv: kv[0].encode()))), db=self._db["objects"])
        elif raw is not None:
            txn.delete(ek, db=self._db["objects"])

    def list_objects(
        self, tenant: str, bucket: str, *, prefix: str = "", after: bytes | None = None
    ) -> Iterator[ObjectRecord]:
        """Current versions in bytewise key order, keys starting with `prefix`, strictly after the
        key bytes `after`. Read in pages of short transactions, so a slow consumer holds no
        snapshot open."""
        base = _okey_prefix(tenant, bucket)
        pfx = prefix.encode()
        start_key = max(pfx, after) if after is not None else pfx
        after_b = after
        while True:
            page: list[ObjectRecord] = []
            exhausted = True
            with self.read() as txn:
                cur = txn.cursor(db=self._db["objects"])
                found = cur.set_range(base + start_key[:_KEY_PREFIX])
                while found:
                    ek = bytes(cur.key())
                    if not ek.startswith(base) or not ek[len(base) :].startswith(pfx[:_KEY_PREFIX]):
                        break
                    if len(page) >= _PAGE:
                        exhausted = False
                        break
                    for key, d in json.loads(bytes(cur.value())).items():
                        kb = key.encode()
                        if kb.startswith(pfx) and (after_b is None or kb > after_b):
                            page.append(ObjectRecord.from_dict(d))
                    found = cur.next()
            yield from page
            if exhausted or not page:
                return
            after_b = page[-1].key.encode()
            start_key = after_b

    def commit_object(
        self,
        rec: ObjectRecord,
        stripes: list[StripeRecord],
        *,
        upload_id: bytes,
        failed: list[tuple[int, int, ShardLoc | None]],
        check_replace: Callable[[ObjectRecord | None], None],
        now_ms: int,
        spool: tuple[SpoolObject, list[SpoolEntry]] | None = None,
    ) -> CommitResult:
        """Make an upload visible in one transaction: the record, its stripes and indexes, repair
        entries for shards that failed (their ids tombstoned, they may exist), the pending upload
        removed, and a replaced version unlinked with its shards tombstoned. A scheduled put
        passes `spool`: the object's queue entry and its spooled shards, committed with it.

        `check_replace(existing)` raises to refuse (e.g. the existing version is locked); it runs
        inside the transaction, so the check and the replacement are atomic.
        """
        where = (rec.tenant, rec.bucket, rec.key)
        with self.write() as txn:
            if txn.get(_bkey(rec.tenant, rec.bucket), db=self._db["buckets"]) is None:
                raise NotFound(f"bucket {rec.bucket!r} was deleted during the upload")
            old = self._get_object(txn, *where)
            check_replace(old)
            result = CommitResult(old)
            if old is not None:
                result.tombstoned = self._unlink(txn, old, now_ms)
            self._set_object(txn, rec, where)
            txn.put(rec.object_id, _dump([rec.tenant, rec.bucket, rec.key]), db=self._db["by_id"])
            for s in stripes:
                self._put_stripe(txn, rec.object_id, s)
            for stripe, index, loc in failed:
                self._queue_repair(txn, rec.object_id, stripe, index, "put failed", now_ms)
                if loc is not None:  # sent but not acknowledged: it may exist
                    self._tombstone(txn, loc.node_id, loc.shard_id, now_ms)
            if spool is not None:
                head, entries = spool
                meta = self._db["meta"]
                raw = txn.get(b"spool_seq", db=meta)
                seq = (int(raw) if raw else 0) + 1
                txn.put(b"spool_seq", str(seq).encode(), db=meta)
                txn.put(rec.object_id, _dump(replace(head, seq=seq).to_dict()), db=self._db["spool_objects"])
                for e in entries:
                    txn.put(_REPAIR_KEY.pack(*e.key), _dump(e.to_dict()), db=self._db["spool"])
            self._remove_pending(txn, upload_id)
            self._bump(txn)
        return result

    def delete_object(
        self,
        tenant: str,
        bucket: str,
        key: str,
        *,
        check: Callable[[ObjectRecord], None],
        now_ms: int,
    ) -> tuple[ObjectRecord, list[tuple[bytes, bytes]]]:
        """Unlink an object (after `check` approves, in the same transaction); its shards are tombstoned."""
        with self.write() as txn:
            rec = self._get_object(txn, tenant, bucket, key)
            if rec is None:
                raise NotFound(f"object {key!r} does not exist in bucket {bucket!r}")
            check(rec)
            dead = self._unlink(txn, rec, now_ms)
            self._bump(txn)
        return rec, dead

    def update_object(
        self, tenant: str, bucket: str, key: str, mutate: Callable[[ObjectRecord], ObjectRecord]
    ) -> ObjectRecord:
        """Read-modify-write one record in a transaction (retention, legal hold)."""
        with self.write() as txn:
            rec = self._get_object(txn, tenant, bucket, key)
            if rec is None:
                raise NotFound(f"object {key!r} does not exist in bucket {bucket!r}")
            new = mutate(rec)
            self._set_object(txn, new, (tenant, bucket, key))
            self._bump(txn, urgent=True)  # lock state is only in headers as of the put: checkpoint soon
        return new

    def _unlink(self, txn: lmdb.Transaction, rec: ObjectRecord, now_ms: int) -> list[tuple[bytes, bytes]]:
        self._set_object(txn, None, (rec.tenant, rec.bucket, rec.key))
        txn.delete(rec.object_id, db=self._db["by_id"])
        dead: list[tuple[bytes, bytes]] = []
        for s in range(rec.stripe_count):
            sk = _STRIPE_KEY.pack(rec.object_id, s)
            raw = txn.get(sk, db=self._db["stripes"])
            if raw is None:
                continue
            for i, loc in enumerate(StripeRecord.from_json(s, bytes(raw)).shards):
                txn.delete(_REPAIR_KEY.pack(rec.object_id, s, i), db=self._db["repair"])
                if loc is None:
                    continue
                txn.delete(loc.shard_id, db=self._db["shard_index"])
                txn.delete(loc.node_id + loc.shard_id, db=self._db["node_shards"])
                self._tombstone(txn, loc.node_id, loc.shard_id, now_ms)
                dead.append((loc.node_id, loc.shard_id))
            txn.delete(sk, db=self._db["stripes"])
        if txn.delete(rec.object_id, db=self._db["spool_objects"]):
            cur = txn.cursor(db=self._db["spool"])
            found = cur.set_range(rec.object_id)
            while found and bytes(cur.key())[:32] == rec.object_id:
                e = json.loads(bytes(cur.value()))
                shard = bytes.fromhex(e["shard"])
                for node in (e["target_node"], e["relay_node"]):
                    if node:  # an upload was started there: its partial (or complete) copy goes
                        self._tombstone(txn, bytes.fromhex(node), shard, now_ms)
                        dead.append((bytes.fromhex(node), shard))
                found = cur.delete()
        txn.delete(rec.object_id, db=self._db["restores"])
        return dead

    def load_object(self, rec: ObjectRecord, stripes: list[StripeRecord], now_ms: int) -> None:
        self.load_objects([(rec, stripes)], now_ms)

    def load_objects(self, items: list[tuple[ObjectRecord, list[StripeRecord]]], now_ms: int) -> None:
        """Rebuild's import, many objects per transaction: records with the locations found on
        nodes; missing shards queued for repair."""
        with self.write() as txn:
            for rec, stripes in items:
                self._set_object(txn, rec, (rec.tenant, rec.bucket, rec.key))
                txn.put(rec.object_id, _dump([rec.tenant, rec.bucket, rec.key]), db=self._db["by_id"])
                for s in stripes:
                    self._put_stripe(txn, rec.object_id, s)
                    for i, loc in enumerate(s.shards):
                        if loc is None:
                            self._queue_repair(txn, rec.object_id, s.index, i, "missing after rebuild", now_ms)

    # --- stripes and shard locations -------------------------------------------------------------

    def _put_stripe(self, txn: lmdb.Transaction, object_id: bytes, s: StripeRecord) -> None:
        txn.put(_STRIPE_KEY.pack(object_id, s.index), s.to_json(), db=self._db["stripes"])
        for i, loc in enumerate(s.shards):
            if loc is not None:
                txn.put(loc.shard_id, _SHARD_INDEX.pack(object_id, s.index, i, loc.node_id), db=self._db["shard_index"])
                txn.put(loc.node_id + loc.shard_id, b"", db=self._db["node_shards"])

    def stripe(self, object_id: bytes, index: int) -> StripeRecord | None:
        with self.read() as txn:
            raw = txn.get(_STRIPE_KEY.pack(object_id, index), db=self._db["stripes"])
        return None if raw is None else StripeRecord.from_json(index, bytes(raw))

    def stripes(self, object_id: bytes, first: int = 0, count: int | None = None) -> Iterator[StripeRecord]:
        """Stripes in order, read in pages (a 10 GiB object has hundreds)."""
        index = first
        end = None if count is None else first + count
        while end is None or index < end:
            page: list[StripeRecord] = []
            with self.read() as txn:
                cur = txn.cursor(db=self._db["stripes"])
                found = cur.set_range(_STRIPE_KEY.pack(object_id, index))
                while found and len(page) < _PAGE:
                    oid, s = _STRIPE_KEY.unpack(bytes(cur.key()))
                    if oid != object_id or (end is not None and s >= end):
                        break
                    page.append(StripeRecord.from_json(s, bytes(cur.value())))
                    found = cur.next()
            if not page:
                return
            yield from page
            index = page[-1].index + 1

    def relocate_shard(
        self,
        object_id: bytes,
        stripe: int,
        index: int,
        new: ShardLoc,
        *,
        expected_old: ShardLoc | None,
        upload_id: bytes,
        now_ms: int,
    ) -> bool:
        """Repair's commit: point shard `index` at `new` if the object and the old location are
        unchanged; the old shard is tombstoned, the repair entry and the repair's pending record
        removed. False (nothing changed but the pending record) if the object moved on meanwhile."""
        sk = _STRIPE_KEY.pack(object_id, stripe)
        with self.write() as txn:
            raw = txn.get(sk, db=self._db["stripes"])
            self._remove_pending(txn, upload_id)
            if raw is None:
                self._tombstone(txn, new.node_id, new.shard_id, now_ms)
                return False
            rec = StripeRecord.from_json(stripe, bytes(raw))
            if rec.shards[index] != expected_old:
                self._tombstone(txn, new.node_id, new.shard_id, now_ms)
                return False
            if expected_old is not None:
                txn.delete(expected_old.shard_id, db=self._db["shard_index"])
                txn.delete(expected_old.node_id + expected_old.shard_id, db=self._db["node_shards"])
                self._tombstone(txn, expected_old.node_id, expected_old.shard_id, now_ms)
            shards = list(rec.shards)
            shards[index] = new
            self._put_stripe(txn, object_id, replace(rec, shards=tuple(shards)))
            txn.delete(_REPAIR_KEY.pack(object_id, stripe, index), db=self._db["repair"])
            self._bump(txn)
        return True

    def shard_owner(self, shard_id: bytes) -> tuple[bytes, int, int, bytes] | None:
        """(object_id, stripe, index, node_id) of a shard the catalog knows."""
        with self.read() as txn:
            raw = txn.get(shard_id, db=self._db["shard_index"])
        return None if raw is None else _SHARD_INDEX.unpack(bytes(raw))

    def shard_known(self, shard_id: bytes, node_id: bytes) -> bool:
        """Placed on `node_id`, part of a pending upload, or tombstoned: never an orphan. One
        snapshot, so an upload committing meanwhile (pending -> placed atomically) is seen once."""
        with self.read() as txn:
            raw = txn.get(shard_id, db=self._db["shard_index"])
            if raw is not None and _SHARD_INDEX.unpack(bytes(raw))[3] == node_id:
                return True
            if txn.get(node_id + shard_id, db=self._db["tombstones"]) is not None:
                return True
            hexid = shard_id.hex()
            for _, v in txn.cursor(db=self._db["pending_shards"]):
                if any(s == hexid for _, _, s in json.loads(bytes(v))):
                    return True
            for _, v in txn.cursor(db=self._db["spool"]):
                if json.loads(bytes(v))["shard"] == hexid:
                    return True  # an upload or relay copy of a spooled shard
        return False

    def shards_on_node(self, node_id: bytes) -> Iterator[bytes]:
        for k, _ in self.scan("node_shards", start=node_id, prefix=node_id):
            yield k[32:]

    # --- the scheduled-mode spool ----------------------------------------------------------------

    def spool_objects(self) -> list[SpoolObject]:
        """Objects not yet DURABLE, in queue order."""
        out = [SpoolObject.from_dict(k, json.loads(v)) for k, v in self.scan("spool_objects")]
        return sorted(out, key=lambda o: (o.seq, o.object_id))

    def spool_object(self, object_id: bytes) -> SpoolObject | None:
        with self.read() as txn:
            v = txn.get(object_id, db=self._db["spool_objects"])
        return None if v is None else SpoolObject.from_dict(object_id, json.loads(bytes(v)))

    def spool_entries(self, object_id: bytes | None = None) -> list[SpoolEntry]:
        out = []
        for k, v in self.scan("spool", start=object_id or b"", prefix=object_id or b""):
            oid, stripe, index = _REPAIR_KEY.unpack(k)
            out.append(SpoolEntry.from_dict(oid, stripe, index, json.loads(v)))
        return out

    def put_spool_entry(self, entry: SpoolEntry) -> bool:
        """Record an upload's progress; False (nothing written) if the shard left the spool meanwhile."""
        key = _REPAIR_KEY.pack(*entry.key)
        with self.write() as txn:
            if txn.get(key, db=self._db["spool"]) is None:
                return False
            txn.put(key, _dump(entry.to_dict()), db=self._db["spool"])
        return True

    def place_spooled(self, entry: SpoolEntry, loc: ShardLoc) -> bool | None:
        """A spooled shard is complete in orbit: point the stripe at it and drop it from the spool,
        in one transaction. True if that was the object's last spooled shard (it is DURABLE now),
        None if the object or the shard left the spool meanwhile (deleted or replaced)."""
        key = _REPAIR_KEY.pack(*entry.key)
        sk = _STRIPE_KEY.pack(entry.object_id, entry.stripe)
        with self.write() as txn:
            raw = txn.get(sk, db=self._db["stripes"])
            if raw is None or txn.get(key, db=self._db["spool"]) is None:
                return None
            rec = StripeRecord.from_json(entry.stripe, bytes(raw))
            shards = list(rec.shards)
            shards[entry.index] = loc
            self._put_stripe(txn, entry.object_id, replace(rec, shards=tuple(shards)))
            txn.delete(key, db=self._db["spool"])
            cur = txn.cursor(db=self._db["spool"])
            more = cur.set_range(entry.object_id) and bytes(cur.key())[:32] == entry.object_id
            if not more:
                txn.delete(entry.object_id, db=self._db["spool_objects"])
            self._bump(txn)
        return not more

    def spool_shard_ids(self) -> set[bytes]:
        return {bytes.fromhex(json.loads(v)["shard"]) for _, v in self.scan("spool")}

    # --- restores ---------------------------------------------------------------------------------

    def put_restore(self, object_id: bytes, ready_unix_ms: int, expires_unix_ms: int) -> bool:
        """A staged copy of the object is ready; False if the object is gone (then nothing is written)."""
        with self.write() as txn:
            if txn.get(object_id, db=self._db["by_id"]) is None:
                return False
            txn.put(object_id, _dump({"ready": ready_unix_ms, "expires": expires_unix_ms}), db=self._db["restores"])
        return True

    def restore(self, object_id: bytes) -> tuple[int, int] | None:
        """(ready, expires) unix ms of the object's staged copy, if there is one."""
        d = self._get("restores", object_id, lambda x: x)
        return None if d is None else (d["ready"], d["expires"])

    def restores(self) -> dict[bytes, tuple[int, int]]:
        return {k: (d["ready"], d["expires"]) for k, v in self.scan("restores") for d in [json.loads(v)]}

    def delete_restore(self, object_id: bytes) -> None:
        with self.write() as txn:
            txn.delete(object_id, db=self._db["restores"])

    # --- pending uploads -----------------------------------------------------------------------------

    def begin_pending(self, p: PendingUpload) -> None:
        with self.write() as txn:
            txn.put(p.upload_id, _dump(p.to_dict()), db=self._db["pending"])

    def add_pending_shards(self, upload_id: bytes, stripe: int, shards: list[tuple[int, ShardLoc]]) -> None:
        value = _dump([[i, s.node_id.hex(), s.shard_id.hex()] for i, s in shards])
        with self.write() as txn:
            txn.put(_STRIPE_KEY.pack(upload_id, stripe), value, db=self._db["pending_shards"])

    def pending_uploads(self) -> list[PendingUpload]:
        return [PendingUpload.from_dict(k, json.loads(v)) for k, v in self.scan("pending")]

    def pending_shards(self, upload_id: bytes) -> list[ShardLoc]:
        out: list[ShardLoc] = []
        for _, v in self.scan("pending_shards", start=upload_id, prefix=upload_id):
            out.extend(ShardLoc(bytes.fromhex(n), bytes.fromhex(s)) for _, n, s in json.loads(v))
        return out

    def pending_shard_ids(self) -> set[bytes]:
        out: set[bytes] = set()
        for _, v in self.scan("pending_shards"):
            out.update(bytes.fromhex(s) for _, _, s in json.loads(v))
        return out

    def drop_pending(self, upload_id: bytes, leftovers: list[ShardLoc], now_ms: int) -> None:
        """Forget an upload; shards that could not be deleted become tombstones, in the same txn."""
        with self.write() as txn:
            for loc in leftovers:
                self._tombstone(txn, loc.node_id, loc.shard_id, now_ms)
            self._remove_pending(txn, upload_id)

    def _remove_pending(self, txn: lmdb.Transaction, upload_id: bytes) -> None:
        txn.delete(upload_id, db=self._db["pending"])
        cur = txn.cursor(db=self._db["pending_shards"])
        found = cur.set_range(upload_id)
        while found and bytes(cur.key())[:32] == upload_id:
            found = cur.delete()

    # --- repair queue ------------------------------------------------------------------------------

    def queue_repair(self, items: list[tuple[bytes, int, int, str]], now_ms: int) -> int:
        """Queue (object_id, stripe, index, reason) unless already queued; returns how many were new."""
        added = 0
        with self.write() as txn:
            for object_id, stripe, index, reason in items:
                if txn.get(object_id, db=self._db["by_id"]) is None:
                    continue  # deleted meanwhile
                added += self._queue_repair(txn, object_id, stripe, index, reason, now_ms)
        return added

    def _queue_repair(
        self, txn: lmdb.Transaction, object_id: bytes, stripe: int, index: int, reason: str, now_ms: int
    ) -> int:
        return int(
            txn.put(
                _REPAIR_KEY.pack(object_id, stripe, index),
                _dump({"reason": reason, "queued": now_ms}),
                db=self._db["repair"],
                overwrite=False,
            )
        )

    def repair_items(self, object_id: bytes | None = None) -> list[RepairItem]:
        out = []
        for k, v in self.scan("repair", start=object_id or b"", prefix=object_id or b""):
            oid, stripe, index = _REPAIR_KEY.unpack(k)
            d = json.loads(v)
            out.append(RepairItem(oid, stripe, index, d["reason"], d["queued"]))
        return out

    def has_repairs(self, object_id: bytes) -> bool:
        with self.read() as txn:
            cur = txn.cursor(db=self._db["repair"])
            return bool(cur.set_range(object_id)) and bytes(cur.key())[:32] == object_id

    def remove_repair(self, object_id: bytes, stripe: int, index: int) -> None:
        with self.write() as txn:
            txn.delete(_REPAIR_KEY.pack(object_id, stripe, index), db=self._db["repair"])

    # --- tombstones -------------------------------------------------------------------------------

    def _tombstone(self, txn: lmdb.Transaction, node_id: bytes, shard_id: bytes, now_ms: int) -> None:
        txn.put(node_id + shard_id, _dump({"queued": now_ms}), db=self._db["tombstones"], overwrite=False)

    def tombstones(self) -> list[tuple[bytes, bytes]]:
        return [(k[:32], k[32:]) for k, _ in self.scan("tombstones")]

    def tombstone_ids(self) -> set[bytes]:
        return {k[32:] for k, _ in self.scan("tombstones")}

    def clear_tombstones(self, done: list[tuple[bytes, bytes]]) -> None:
        if not done:
            return
        with self.write() as txn:
            for node_id, shard_id in done:
                txn.delete(node_id + shard_id, db=self._db["tombstones"])

    def add_tombstones(self, items: list[tuple[bytes, bytes]], now_ms: int) -> None:
        with self.write() as txn:
            for node_id, shard_id in items:
                self._tombstone(txn, node_id, shard_id, now_ms)

    # --- nodes ------------------------------------------------------------------------------------

    def put_nodes(self, records: list[NodeRecord]) -> None:
        with self.write() as txn:
            for r in records:
                txn.put(r.node_id, _dump(r.to_dict()), db=self._db["nodes"])

    def nodes(self) -> list[NodeRecord]:
        return [NodeRecord.from_dict(k, json.loads(v)) for k, v in self.scan("nodes")]

    # --- generic ------------------------------------------------------------------------------------

    def scan(self, table: str, *, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in key order from `start` while keys start with `prefix`, in pages."""
        db = self._db[table]
        after: bytes | None = None
        while True:
            page: list[tuple[bytes, bytes]] = []
            with self.read() as txn:
                cur = txn.cursor(db=db)
                found = cur.set_range(after if after is not None else start) if (after or start) else cur.first()
                while found and len(page) < _PAGE:
                    k = bytes(cur.key())
                    if after is not None and k == after:
                        found = cur.next()
                        continue
                    if not k.startswith(prefix):
                        found = False
                        break
                    page.append((k, bytes(cur.value())))
                    found = cur.next()
            yield from page
            if not found or not page:
                return
            after = page[-1][0]

    def _get(self, table: str, key: bytes, conv: Callable[[dict[str, Any]], Any]) -> Any:
        with self.read() as txn:
            v = txn.get(key, db=self._db[table])
        return None if v is None else conv(json.loads(bytes(v)))

    def _put(self, table: str, key: bytes, value: dict[str, Any], exclusive: bool) -> bool:
        with self.write() as txn:
            ok = txn.put(key, _dump(value), db=self._db[table], overwrite=not exclusive)
            if ok:
                self._bump(txn, urgent=True)
        return bool(ok)

    def put_raw(self, items: list[tuple[str, bytes, bytes]]) -> None:
        """(table, key, value) written verbatim in one transaction (rebuild's import)."""
        with self.write() as txn:
            for table, key, value in items:
                txn.put(key, value, db=self._db[table])


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _bkey(tenant: str, bucket: str) -> bytes:
    return tenant.encode() + b"\x00" + bucket.encode()


def _okey_prefix(tenant: str, bucket: str) -> bytes:
    return tenant.encode() + b"\x00" + bucket.encode() + b"\x00"


def _okey(tenant: str, bucket: str, key: str) -> bytes:
    return _okey_prefix(tenant, bucket) + key.encode()[:_KEY_PREFIX]
