"""The gateway facade: the one object every adapter (gRPC servicer, CLI) calls (design note, "Seams").

It checks who may do what (tenants, key modes, object lock), validates inputs, and delegates the
data path to `pipeline`, repair to `repair`, garbage collection to `gc` and recovery from orbit to
`checkpoint`. It never imports grpc; errors are `orbitvault.errors` classes, whose messages say
what to do.

Server duties (the adapter's loop, not done here implicitly): call `collect_garbage()` once after
start (uploads of a crashed gateway) and every `pending_ttl_s`; `repair_once()` every
`repair_interval_s`; `checkpoint()` whenever `checkpoint_due()`; `start_scheduler()` once, so
scheduled mode's executor (`scheduled.py`) runs in the server process (and only there).

Scheduled mode: a put with mode "scheduled" (or any put, with `mode = "scheduled"` in the config)
returns once its shards are durably in the ground spool (QUEUED); they reach orbit in contact
windows. Such an object is readable at once: reads use ground copies (spooled shards until the
object is DURABLE, then shards a RestoreObject brought down) before any node.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import math
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import blake3

from orbitvault.erasure.layout import Geometry
from orbitvault.errors import (
    AlreadyExists,
    FailedPrecondition,
    GeometryError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from orbitvault.ground import audit as audit_mod
from orbitvault.ground import checkpoint as checkpoint_mod
from orbitvault.ground import gc as gc_mod
from orbitvault.ground import ids as ids_mod
from orbitvault.ground import mfa as mfa_mod
from orbitvault.ground import validate
from orbitvault.ground.catalog import (
    BucketRecord,
    Catalog,
    CommitResult,
    KeyRecord,
    ObjectRecord,
    TenantRecord,
)
from orbitvault.ground.config import MAX_GATEWAY_STRIPE, GatewayConfig
from orbitvault.ground.crypto import (
    KEY_LEN,
    MasterKey,
    SegmentSealer,
    check_customer_key,
    customer_key_hash,
    data_key_aad,
    open_customer_key,
    unwrap_key,
    wrap_key,
)
from orbitvault.ground.model import (
    SYSTEM_BUCKET,
    SYSTEM_TENANT,
    ApiKey,
    BucketInfo,
    ByteRange,
    DefaultRetention,
    DurabilityState,
    GatewayNode,
    GatewayStatus,
    GcReport,
    KeyMode,
    NodeReachability,
    ObjectInfo,
    ObjectStatus,
    Principal,
    RebuildReport,
    RepairBacklog,
    RepairReport,
    RestoreInfo,
    RestoreState,
    Retention,
    RetentionMode,
)
from orbitvault.ground.nodes import NodeDirectory
from orbitvault.ground.pipeline import Pipeline, WritePlan, plain_per_stripe
from orbitvault.ground.repair import RepairCoordinator
from orbitvault.ground.scheduled import ScheduledMode, make_clock
from orbitvault.orbit.clock import Clock, SimulatedClock

VERSION = "0.1.0"
TOKEN_PREFIX = "ovk_"
_TOKEN = re.compile(r"^ovk_([0-9a-f]{16})_([0-9a-f]{64})$")
_LARGE_CONSTELLATION = 14  # nodes from which the default storage class is 10+4
MAX_PAGE_TOKEN = 2048

# Owners (gateway instances) alive in this process: their pending uploads are not garbage.
_LIVE_OWNERS: set[str] = set()
_LIVE_LOCK = threading.Lock()


class Gateway:
    """Buckets, objects, tenants and maintenance over a catalog and a set of storage nodes."""

    def __init__(
        self,
        config: GatewayConfig,
        links: NodeDirectory,
        master_key: MasterKey,
        *,
        clock: Clock | None = None,
        ids_config: ids_mod.IdsConfig | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or make_clock(config)
        self.nodes = links
        links.use_clock(self.clock)
        self.master = master_key
        self.catalog = Catalog(config.state_dir)
        try:
            self.catalog.bind_master(master_key.fingerprint())
        except Exception:
            self.catalog.close()
            raise
        try:
            self.audit = audit_mod.AuditLog(
                config.audit_path, master_key.derive("audit"), head=self.catalog, clock=self.clock.now
            )
        except OSError as exc:
            self.catalog.close()
            raise FailedPrecondition(f"cannot open the audit log {config.audit_path}: {exc.strerror or exc}") from None
        self._mfa_kek = master_key.derive("mfa secrets")
        self._mfa_session_key = master_key.derive("mfa sessions")
        self._mfa_lockout = mfa_mod.Lockout()
        self.ids = ids_mod.IntrusionDetector(
            ids_config
            or ids_mod.IdsConfig(
                window_s=config.ids_window_s,
                auth_failures=config.ids_auth_failures,
                mass_deletes=config.ids_mass_deletes,
                rate_per_s=config.rate_limit_per_s,
                burst=config.rate_limit_burst,
            ),
            self._on_alert,
            clock=self.clock.now,
            state_path=Path(config.state_dir) / "ids.json",
        )
        self.owner = os.urandom(8).hex()
        with _LIVE_LOCK:
            _LIVE_OWNERS.add(self.owner)
        self.pool = ThreadPoolExecutor(max_workers=config.io_threads, thread_name_prefix="gateway-io")
        self.pipeline = Pipeline(
            self.catalog, links, self.pool, self.clock, master_key.catalog_key, on_damage=self._queue_damage
        )
        self.repairer = RepairCoordinator(self.catalog, links, self.pipeline, master_key, config, self.owner)
        self._put_slots = threading.BoundedSemaphore(config.max_put_concurrency)
        self._tenant_keys: dict[str, bytes] = {}
        self._nodes_lock = threading.Lock()
        self._closed = False
        links.seed((r.node_id, r.address, r.last_seen_unix_ms / 1000) for r in self.catalog.nodes())
        self.scheduler: ScheduledMode | None = None
        self._scheduler_lock = threading.Lock()
        self._run_scheduler = False
        if config.mode == "scheduled" or self.catalog.spool_objects() or self.catalog.restores():
            try:
                self._scheduled()
            except Exception:
                self.close()
                raise

    # --- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop: the I/O pool drains, the catalog closes. Links belong to the caller's directory."""
        if self._closed:
            return
        self._closed = True
        if self.scheduler is not None:
            self.scheduler.stop()
        self.pool.shutdown(wait=True)
        with _LIVE_LOCK:
            _LIVE_OWNERS.discard(self.owner)
        self.ids.save()
        self.audit.close()
        self.catalog.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # --- scheduled mode -------------------------------------------------------------------------------

    def _scheduled(self) -> ScheduledMode:
        """Scheduled mode's spool and executor, made on first need (its executor runs only once the
        server called `start_scheduler`: admin commands opening the state dir must not run it)."""
        with self._scheduler_lock:
            if self.scheduler is None:
                self.scheduler = ScheduledMode(
                    catalog=self.catalog,
                    nodes=self.nodes,
                    clock=self.clock,
                    config=self.config,
                    refresh=lambda: self.refresh_nodes(force=False),
                )
                self.pipeline.ground = self.scheduler.ground
                if self._run_scheduler:
                    self.scheduler.start()
            return self.scheduler

    def start_scheduler(self) -> None:
        """Run scheduled mode's executor in this process (the server calls this once)."""
        with self._scheduler_lock:
            self._run_scheduler = True
            if self.scheduler is not None:
                self.scheduler.start()

    # --- nodes ----------------------------------------------------------------------------------------

    def refresh_nodes(self, *, force: bool = True) -> None:
        """Ask nodes for NodeInfo (if `force` or the last answer is older than node_refresh_s)."""
        with self._nodes_lock:
            last = self.nodes.last_refresh
            if not force and last is not None and self.clock.now() - last < self.config.node_refresh_s:
                return
            self.nodes.refresh(self.pool)
            self.repairer.remember_nodes()

    # --- tenants and keys ----------------------------------------------------------------------------

    def create_tenant(self, name: str, *, actor: str = "admin") -> None:
        """Create tenant `name`; `actor` names who did it in the audit log (the CLI: user@host)."""
        with self._audited(actor, "tenant.create", name, tenant=name):
            validate.tenant_name(name)
            self._create_tenant(name)

    def _create_tenant(self, name: str) -> None:
        tenant_key = os.urandom(KEY_LEN)
        rec = TenantRecord(name, self.master.wrap_tenant_key(name, tenant_key), self.now_ms())
        if not self.catalog.put_tenant(rec):
            raise AlreadyExists(f"tenant {name!r} already exists")

    def create_api_key(self, tenant: str, mode: KeyMode = KeyMode.FULL, *, actor: str = "admin") -> ApiKey:
        with self._audited(actor, "key.create", tenant, tenant=tenant) as audit:
            validate.tenant_name(tenant)  # never for the internal tenant
            if self.catalog.get_tenant(tenant) is None:
                raise NotFound(f"tenant {tenant!r} does not exist; create it first")
            mode = KeyMode(mode)
            key_id = os.urandom(8).hex()
            secret = os.urandom(32).hex()
            created = self.now_ms()
            rec = KeyRecord(key_id, blake3.blake3(secret.encode()).digest(), tenant, mode, created)
            if not self.catalog.put_key(rec):
                raise AlreadyExists("key id collision; try again")
            audit.update(key=key_id, mode=mode.value)
            return ApiKey(key_id, tenant, mode, created, f"{TOKEN_PREFIX}{key_id}_{secret}")

    def delete_api_key(self, key_id: str, *, actor: str = "admin", mfa: str | mfa_mod.Grant | None = None) -> None:
        """Revoke a key; a tenant with MFA needs a current code (or session) for it."""
        rec = self.catalog.get_key(key_id) if isinstance(key_id, str) else None
        with self._audited(actor, "key.delete", str(key_id), tenant=rec.tenant if rec else "") as audit:
            if rec is not None:
                audit["mfa"] = self._require_mfa(rec.tenant, "", mfa, "deleting an API key")
            if not self.catalog.delete_key(key_id):
                raise NotFound(f"API key {key_id!r} does not exist")

    def authenticate(self, token: str | None, *, client: str = "", source: str = "") -> Principal:
        """The caller's tenant and key mode from its API token; `client` (the adapter's view of the
        caller: TLS identity or address) goes into the principal for the audit log; `source` (its
        address without port) is what failed-authentication bursts are counted by."""
        try:
            return self._authenticate(token, client)
        except Unauthenticated:
            key_id = ""
            if isinstance(token, str) and (m := _TOKEN.match(token)):
                key_id = m.group(1)
            self.ids.auth_failed(source=source or client, key_id=key_id)
            raise

    def _authenticate(self, token: str | None, client: str) -> Principal:
        if not token:
            raise Unauthenticated("no API key given: send it in the x-orbitvault-api-key metadata")
        m = _TOKEN.match(token)
        if m is None:
            raise Unauthenticated("malformed API key: expected ovk_<16 hex>_<64 hex>")
        rec = self.catalog.get_key(m.group(1))
        if rec is None or not hmac.compare_digest(rec.secret_blake3, blake3.blake3(m.group(2).encode()).digest()):
            raise Unauthenticated("unknown or revoked API key")
        if self.catalog.get_tenant(rec.tenant) is None:
            raise Unauthenticated(f"the key's tenant {rec.tenant!r} no longer exists")
        return Principal(rec.tenant, rec.key_id, rec.mode, client)

    def _tenant_key(self, tenant: str) -> bytes:
        key = self._tenant_keys.get(tenant)
        if key is None:
            rec = self.catalog.get_tenant(tenant)
            if rec is None:
                raise NotFound(f"tenant {tenant!r} does not exist")
            key = self.master.unwrap_tenant_key(tenant, rec.wrapped_key)
            self._tenant_keys[tenant] = key
        return key

    # --- buckets --------------------------------------------------------------------------------------

    def make_geometry(self, k: int, m: int, fragment_size: int = 0, stripe_size: int = 0) -> Geometry:
        """A storage class with the gateway's defaults where 0 is given (the proto's convention)."""
        try:
            fs = fragment_size or self.config.fragment_size
            row = k * fs
            stripe = stripe_size or self.config.stripe_size or max(row, (MAX_GATEWAY_STRIPE // row) * row)
            return Geometry(k, m, fs, stripe)
        except GeometryError:
            raise
        except (TypeError, ZeroDivisionError):
            raise InvalidArgument(f"storage class {k}+{m}: k, m and sizes must be integers") from None

    def default_geometry(self) -> Geometry:
        k, m = (10, 4) if len(self.nodes) >= _LARGE_CONSTELLATION else (4, 2)
        return self.make_geometry(k, m)

    def create_bucket(
        self,
        p: Principal,
        name: str,
        geometry: Geometry | None = None,
        default_retention: DefaultRetention | None = None,
    ) -> BucketInfo:
        with self._audited(p, "bucket.create", name):
            self._check_tenant(p)
            self._may_write(p, "create buckets")
            validate.bucket_name(name)
            g = self._check_geometry(geometry) if geometry is not None else self.default_geometry()
            if default_retention is not None:
                if not isinstance(default_retention, DefaultRetention):
                    raise InvalidArgument("default_retention must be a DefaultRetention")
                RetentionMode(default_retention.mode)
                if not isinstance(default_retention.retain_for_ms, int) or default_retention.retain_for_ms <= 0:
                    raise InvalidArgument("default retention needs retain_for_ms > 0")
            rec = BucketRecord(p.tenant, name, g, default_retention, self.now_ms())
            if not self.catalog.put_bucket(rec):
                raise AlreadyExists(f"bucket {name!r} already exists")
            return _bucket_info(rec)

    def _check_geometry(self, g: Geometry) -> Geometry:
        if not isinstance(g, Geometry):
            raise InvalidArgument("storage class must be a Geometry")
        if g.stripe_size > MAX_GATEWAY_STRIPE:
            raise InvalidArgument(
                f"storage class {g}: stripes of at most {MAX_GATEWAY_STRIPE // 2**20} MiB keep a put's memory "
                "bounded; give a smaller stripe_size (or 0 for the default)"
            )
        if len(self.nodes) and g.k + 1 > len(self.nodes):
            raise InvalidArgument(
                f"storage class {g.k}+{g.m} needs at least {g.k + 1} storage nodes to accept a write; "
                f"the gateway knows {len(self.nodes)}"
            )
        return g

    def list_buckets(self, p: Principal, *, page_token: str = "", page_size: int = 100) -> tuple[list[BucketInfo], str]:
        self._check_tenant(p)
        size = validate.page_size(page_size)
        after = _decode_token(page_token).decode() if page_token else ""
        recs = self.catalog.buckets(p.tenant, after, size + 1)
        more = len(recs) > size
        recs = recs[:size]
        token = _encode_token(recs[-1].name.encode()) if more else ""
        return [_bucket_info(r) for r in recs], token

    def delete_bucket(self, p: Principal, name: str, *, mfa: str | mfa_mod.Grant | None = None) -> None:
        with self._audited(p, "bucket.delete", name) as audit:
            self._check_tenant(p)
            self.ids.delete_attempt(p.tenant, p.key_id)
            self._may_write(p, "delete buckets")
            if p.mode is KeyMode.APPEND_ONLY:
                raise PermissionDenied("an append-only key cannot delete buckets")
            validate.bucket_name(name)
            audit["mfa"] = self._require_mfa(p.tenant, p.key_id, mfa, "deleting a bucket")
            self.catalog.delete_bucket(p.tenant, name)

    def _bucket(self, p: Principal, name: str) -> BucketRecord:
        if p.tenant != SYSTEM_TENANT:
            validate.bucket_name(name)
        rec = self.catalog.get_bucket(p.tenant, name)
        if rec is None:
            raise NotFound(f"bucket {name!r} does not exist")
        return rec

    # --- objects --------------------------------------------------------------------------------------

    def put_object(
        self,
        p: Principal,
        bucket: str,
        key: str,
        data: Iterable[bytes],
        *,
        size: int | None = None,
        content_type: str = "",
        metadata: Mapping[str, str] | None = None,
        retention: Retention | None = None,
        legal_hold: bool = False,
        customer_key: bytes | None = None,
        content_blake3: bytes | None = None,
        mfa: str | mfa_mod.Grant | None = None,
        mode: str | None = None,
    ) -> ObjectInfo:
        """Store an object (replacing the current version: with tenant MFA, that needs `mfa`).

        `mode` "direct" or "scheduled" (None: the config's): scheduled returns once the shards are
        durably spooled on the ground (QUEUED); they go up in contact windows.
        """
        if mode is not None and mode not in ("direct", "scheduled"):
            raise InvalidArgument(f"put mode must be direct or scheduled, got {mode!r}")
        scheduled = (mode or self.config.mode) == "scheduled"
        with self._audited(p, "object.put", f"{bucket}/{key}") as audit:
            self._check_tenant(p)
            self._may_write(p, "write objects")
            b = self._bucket(p, bucket)
            validate.object_key(key)
            content_type = validate.content_type(content_type)
            meta = validate.metadata(metadata)
            size = validate.object_size(size)
            content_blake3 = validate.optional_id(content_blake3, "content_blake3")
            if customer_key is not None:
                check_customer_key(customer_key)
            now = self.now_ms()
            if retention is not None:
                retention = _check_retention(retention)
            elif b.default_retention is not None:
                retention = Retention(b.default_retention.mode, now + b.default_retention.retain_for_ms)
            existing = self.catalog.get_object(p.tenant, bucket, key)
            self._check_replace(p, existing, now)  # fail fast; checked again atomically at commit
            mfa_ok = False
            if existing is not None:
                audit["replaces"] = existing.object_id.hex()
                audit["mfa"] = self._require_mfa(p.tenant, p.key_id, mfa, "overwriting an object", key=key)
                mfa_ok = True

            object_id = os.urandom(32)
            data_key = os.urandom(KEY_LEN)
            aad = data_key_aad(p.tenant, object_id)
            if customer_key is not None:
                wrapped, ck_hash = wrap_key(customer_key, data_key, aad), customer_key_hash(customer_key)
            else:
                wrapped, ck_hash = wrap_key(self._tenant_key(p.tenant), data_key, aad), b""
            seg, pps = plain_per_stripe(b.geometry, self.config.segment_size)
            base = ObjectRecord(
                object_id=object_id,
                tenant=p.tenant,
                bucket=bucket,
                key=key,
                size=0,
                etag=bytes(32),
                created_unix_ms=now,
                content_type=content_type,
                metadata=meta,
                geometry=b.geometry,
                stripe_count=0,
                plain_per_stripe=pps,
                segment_size=seg,
                wrapped_data_key=wrapped,
                customer_key_blake3=ck_hash,
                retention=retention,
                legal_hold=bool(legal_hold),
            )
            tenant_rec = self.catalog.get_tenant(p.tenant)
            assert tenant_rec is not None
            if isinstance(data, bytes | bytearray | memoryview):
                data = [data]  # a whole object given at once (small objects, tests)
            sampler = ids_mod.Sampler(data)  # what intrusion detection sees of the plaintext
            plan = WritePlan(base, data_key, tenant_rec.wrapped_key, size, content_blake3, self.owner)

            def check(old: ObjectRecord | None) -> None:
                self._check_replace(p, old, self.now_ms(), mfa_ok=mfa_ok)

            if scheduled:
                audit["mode"] = "scheduled"
                commit, result = self._put_scheduled(plan, sampler, tenant_rec.wrapped_key, check)
            else:
                self.refresh_nodes(force=False)
                with self._put_slots:
                    result = self.pipeline.write(plan, sampler)
                try:
                    commit = self.catalog.commit_object(
                        result.record,
                        result.stripes,
                        upload_id=object_id,
                        failed=result.failed,
                        check_replace=check,
                        now_ms=self.now_ms(),
                    )
                except BaseException:
                    self.pipeline.discard(object_id)
                    raise
            if commit.replaced is not None and self.scheduler is not None:
                self.scheduler.forget(commit.replaced.object_id)
            if commit.tombstoned:  # the replaced version's shards: delete now, GC retries the rest
                left = set(self.pipeline.delete_shards(commit.tombstoned))
                self.catalog.clear_tombstones([t for t in commit.tombstoned if t not in left])
            audit.update(version=object_id.hex(), bytes=result.record.size)
            if p.tenant != SYSTEM_TENANT:
                self.ids.uploaded(p.tenant, p.key_id, result.record.size, *sampler.finish(), meta)
            if retention is not None:
                audit["retention"] = f"{retention.mode.value}:{retention.retain_until_unix_ms}"
            if legal_hold:
                audit["legal_hold"] = True
            return self._info(result.record)

    def _put_scheduled(
        self, plan: WritePlan, data: Iterable[bytes], tenant_key_wrapped: bytes, check: Any
    ) -> tuple[CommitResult, Any]:
        """Spool the object's shards and commit it with its spool entries (state QUEUED)."""
        sched = self._scheduled()
        oid = plan.record.object_id
        with sched.holding(), self._put_slots:  # simulated time stands still while it streams in
            result = self.pipeline.spool_write(plan, data, sched.spool)
            try:
                spool = sched.spool_records(result, tenant_key_wrapped, self.master.catalog_key, self.now_ms())
                commit = self.catalog.commit_object(
                    result.record,
                    result.stripes,
                    upload_id=oid,
                    failed=[],
                    check_replace=check,
                    now_ms=self.now_ms(),
                    spool=spool,
                )
            except BaseException:
                sched.spool.remove(oid)
                raise
            sched.enqueue(oid)
        return commit, result

    def restore_object(
        self, p: Principal, bucket: str, key: str, *, version_id: bytes | None = None, keep_for_ms: int = 0
    ) -> RestoreInfo:
        """Stage an object for reading: READY when its shards are readable now (a direct-mode
        gateway reads nodes as they answer; or a ground copy), else the downlinks are planned and
        executed over the contact plan and the ETA is returned."""
        if not isinstance(keep_for_ms, int) or keep_for_ms < 0:
            raise InvalidArgument("keep_for_ms must be a non-negative number of milliseconds")
        rec = self._object(p, bucket, key, version_id)
        if self.config.mode != "scheduled":
            return RestoreInfo(RestoreState.READY)  # direct mode: shards are on nodes in reach
        return self._scheduled().restore(rec, keep_for_ms)

    def _check_replace(self, p: Principal, old: ObjectRecord | None, now_ms: int, *, mfa_ok: bool = True) -> None:
        if old is None:
            return
        if p.mode is KeyMode.APPEND_ONLY:
            raise PermissionDenied(f"an append-only key cannot overwrite {old.key!r}; use a new key")
        if not mfa_ok and self._mfa_applies(p.tenant, old.key):
            # The key appeared while this put streamed: replacing it needs the code after all.
            raise PermissionDenied(f"{old.key!r} exists now; overwriting it needs an MFA code for this tenant")
        reason = _lock_reason(old, now_ms, bypass=False)
        if reason:
            raise FailedPrecondition(f"object {old.key!r} cannot be overwritten: {reason}")

    def get_object(
        self,
        p: Principal,
        bucket: str,
        key: str,
        *,
        offset: int = 0,
        length: int | None = None,
        version_id: bytes | None = None,
        customer_key: bytes | None = None,
    ) -> tuple[ObjectInfo, Iterator[bytes]]:
        """The object's info and its bytes [offset, offset+length) in chunks of at most one segment.

        Errors known before the first byte (NOT_FOUND, bad range or customer key, too few nodes
        up) are raised here; a failure found while reading (UNAVAILABLE, DATA_LOSS) is raised by
        the iterator, never as wrong bytes: every segment is authenticated before it is yielded.
        """
        rec = self._object(p, bucket, key, version_id)
        offset, length = validate.object_range(offset, length, rec.size)
        data_key = self._data_key(rec, customer_key)
        self.ids.read(p.tenant, p.key_id, length)
        if length:
            self._preflight(rec, offset, length)
        sealer = SegmentSealer(data_key, rec.object_id)
        return self._info(rec), self.pipeline.read(rec, sealer, offset, length)

    def _data_key(self, rec: ObjectRecord, customer_key: bytes | None) -> bytes:
        aad = data_key_aad(rec.tenant, rec.object_id)
        if rec.customer_key_blake3:
            ck = open_customer_key(rec.customer_key_blake3, customer_key)
            return unwrap_key(ck, rec.wrapped_data_key, aad)
        if customer_key is not None:
            raise InvalidArgument("this object is not encrypted with a customer key; send none")
        try:
            return unwrap_key(self._tenant_key(rec.tenant), rec.wrapped_data_key, aad)
        except Exception as exc:
            raise FailedPrecondition(f"object {rec.key!r}: its data key does not open with the tenant key") from exc

    def _preflight(self, rec: ObjectRecord, offset: int, length: int) -> None:
        """Refuse before the first byte when some stripe of the range has fewer than k shards on
        nodes that are up (after asking the nodes again, in case the marks are stale)."""
        self.refresh_nodes(force=False)
        first, last = offset // rec.plain_per_stripe, (offset + length - 1) // rec.plain_per_stripe

        ground = self.pipeline.ground

        def short() -> list[tuple[int, int]]:
            out = []
            for s in self.catalog.stripes(rec.object_id, first, last - first + 1):
                near = ground.shards(rec.object_id, s.index) if ground is not None else set()
                up = len(near) + sum(
                    1
                    for i, loc in enumerate(s.shards)
                    if loc is not None and i not in near and self.nodes.is_up(loc.node_id)
                )
                if up < rec.geometry.k:
                    out.append((s.index, up))
            return out

        if not short():
            return
        self.refresh_nodes(force=True)
        bad = short()
        if bad:
            s, up = bad[0]
            raise Unavailable(
                f"object {rec.key!r}: stripe {s} has {up} shard(s) on reachable nodes, {rec.geometry.k} are "
                f"needed ({len(bad)} stripe(s) affected); retry when nodes are back"
            )

    def head_object(self, p: Principal, bucket: str, key: str, *, version_id: bytes | None = None) -> ObjectInfo:
        return self._info(self._object(p, bucket, key, version_id), full=True)

    def _object(self, p: Principal, bucket: str, key: str, version_id: bytes | None) -> ObjectRecord:
        self._check_tenant(p)
        self._bucket(p, bucket)
        validate.object_key(key)
        vid = validate.optional_id(version_id, "version_id")
        rec = self.catalog.get_object(p.tenant, bucket, key)
        if rec is None:
            raise NotFound(f"object {key!r} does not exist in bucket {bucket!r}")
        if vid is not None and vid != rec.object_id:
            raise NotFound(f"version {vid.hex()} of {key!r} is not the current one (only one version is kept)")
        return rec

    def list_objects(
        self,
        p: Principal,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        page_token: str = "",
        page_size: int = 1000,
    ) -> tuple[list[ObjectInfo], list[str], str]:
        self._check_tenant(p)
        self._bucket(p, bucket)
        validate.bounded_str(prefix, "prefix", validate.MAX_PREFIX)
        validate.bounded_str(delimiter, "delimiter", validate.MAX_DELIMITER)
        size = validate.page_size(page_size)
        after = _decode_token(page_token) if page_token else None
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last: bytes | None = None
        while True:
            restart: bytes | None = None
            for rec in self.catalog.list_objects(p.tenant, bucket, prefix=prefix, after=after):
                cp = None
                if delimiter:
                    pos = rec.key.find(delimiter, len(prefix))
                    if pos >= 0:
                        cp = rec.key[: pos + len(delimiter)]
                if len(objects) + len(prefixes) >= size:
                    return objects, prefixes, _encode_token(last) if last is not None else ""
                if cp is not None:
                    prefixes.append(cp)
                    last = cp.encode() + b"\xff"  # after every key under the common prefix
                    restart = last
                    break
                objects.append(self._info(rec, full=False))
                last = rec.key.encode()
            if restart is None:
                return objects, prefixes, ""
            after = restart

    def delete_object(
        self,
        p: Principal,
        bucket: str,
        key: str,
        *,
        version_id: bytes | None = None,
        bypass_governance: bool = False,
        mfa: str | mfa_mod.Grant | None = None,
    ) -> bytes:
        with self._audited(p, "object.delete", f"{bucket}/{key}") as audit:
            self._check_tenant(p)
            self.ids.delete_attempt(p.tenant, p.key_id)
            self._may_write(p, "delete objects")
            if p.mode is KeyMode.APPEND_ONLY:
                raise PermissionDenied("an append-only key cannot delete objects")
            if bypass_governance and p.mode is not KeyMode.FULL:
                raise PermissionDenied("only a full-access key may bypass governance retention")
            self._bucket(p, bucket)
            validate.object_key(key)
            vid = validate.optional_id(version_id, "version_id")

            def check(rec: ObjectRecord) -> None:
                if vid is not None and vid != rec.object_id:
                    raise NotFound(f"version {vid.hex()} of {key!r} is not the current one")
                reason = _lock_reason(rec, self.now_ms(), bypass=bypass_governance)
                if reason:
                    raise FailedPrecondition(f"object {key!r} cannot be deleted: {reason}")

            if bypass_governance:
                audit["bypass_governance"] = True
            audit["mfa"] = self._require_mfa(p.tenant, p.key_id, mfa, "deleting an object", key=key)
            rec, dead = self.catalog.delete_object(p.tenant, bucket, key, check=check, now_ms=self.now_ms())
            if self.scheduler is not None:
                self.scheduler.forget(rec.object_id)
            audit.update(version=rec.object_id.hex(), bytes=rec.size)
            left = set(self.pipeline.delete_shards(dead))
            self.catalog.clear_tombstones([d for d in dead if d not in left])
            return rec.object_id

    def set_retention(
        self,
        p: Principal,
        bucket: str,
        key: str,
        retention: Retention | None,
        *,
        bypass_governance: bool = False,
        version_id: bytes | None = None,
        mfa: str | mfa_mod.Grant | None = None,
    ) -> ObjectInfo:
        """Lengthen always; shorten or remove GOVERNANCE only with bypass (full keys, and with tenant
        MFA a code); COMPLIANCE never."""
        with self._audited(p, "object.retention", f"{bucket}/{key}") as audit:
            current = self._object(p, bucket, key, version_id)
            self._may_write(p, "change retention")
            new = None if retention is None else _check_retention(retention)
            audit["retention"] = "none" if new is None else f"{new.mode.value}:{new.retain_until_unix_ms}"
            if bypass_governance:
                audit["bypass_governance"] = True
            if bypass_governance and p.mode is not KeyMode.FULL:
                raise PermissionDenied("only a full-access key may bypass governance retention")
            mfa_ok = False
            cur0 = current.retention
            shortens = cur0 is not None and cur0.retain_until_unix_ms > self.now_ms() and not _extends(cur0, new)
            if shortens and bypass_governance and p.mode is KeyMode.FULL and cur0.mode is RetentionMode.GOVERNANCE:
                # Checked again in `mutate`, on the record as it is inside the transaction.
                audit["mfa"] = self._require_mfa(p.tenant, p.key_id, mfa, "shortening retention", key=key)
                mfa_ok = True

            def mutate(rec: ObjectRecord) -> ObjectRecord:
                if version_id and rec.object_id != version_id:
                    raise NotFound(f"version {version_id.hex()} of {key!r} is not the current one")
                cur = rec.retention
                now = self.now_ms()
                if cur is not None and cur.retain_until_unix_ms > now and not _extends(cur, new):
                    if cur.mode is RetentionMode.COMPLIANCE:
                        raise FailedPrecondition(
                            f"object {key!r} is under COMPLIANCE retention until {cur.retain_until_unix_ms}; "
                            "it can only be extended"
                        )
                    if p.mode is KeyMode.APPEND_ONLY:
                        raise PermissionDenied("an append-only key cannot shorten or remove retention")
                    if not bypass_governance:
                        raise FailedPrecondition(
                            f"object {key!r} is under GOVERNANCE retention until {cur.retain_until_unix_ms}; "
                            "shortening or removing it needs bypass_governance"
                        )
                    if not mfa_ok and self._mfa_applies(p.tenant, key):
                        raise PermissionDenied(f"shortening the retention of {key!r} needs an MFA code for this tenant")
                    audit["shortened"] = True
                return replace(rec, retention=new)

            return self._info(self.catalog.update_object(p.tenant, bucket, key, mutate), full=True)

    def set_legal_hold(
        self,
        p: Principal,
        bucket: str,
        key: str,
        hold: bool,
        *,
        version_id: bytes | None = None,
        mfa: str | mfa_mod.Grant | None = None,
    ) -> ObjectInfo:
        """Place or lift a legal hold; lifting one needs a code when the tenant has MFA."""
        with self._audited(p, "object.legal_hold", f"{bucket}/{key}") as audit:
            rec = self._object(p, bucket, key, version_id)
            self._may_write(p, "change legal holds")
            audit["hold"] = bool(hold)
            if rec.legal_hold and not hold and p.mode is KeyMode.APPEND_ONLY:
                raise PermissionDenied("an append-only key cannot lift a legal hold")
            mfa_ok = False
            if rec.legal_hold and not hold:
                audit["mfa"] = self._require_mfa(p.tenant, p.key_id, mfa, "lifting a legal hold", key=key)
                mfa_ok = True

            def mutate(r: ObjectRecord) -> ObjectRecord:
                if r.legal_hold and not hold and not mfa_ok and self._mfa_applies(p.tenant, key):
                    raise PermissionDenied(f"lifting the legal hold on {key!r} needs an MFA code for this tenant")
                return replace(r, legal_hold=bool(hold))

            new = self.catalog.update_object(p.tenant, bucket, key, mutate)
            return self._info(new, full=True)

    def object_status(self, p: Principal, bucket: str, key: str, *, version_id: bytes | None = None) -> ObjectStatus:
        rec = self._object(p, bucket, key, version_id)
        return self._status(rec, predict=True)

    # --- durability -------------------------------------------------------------------------------------

    def _status(self, rec: ObjectRecord, *, predict: bool = False) -> ObjectStatus:
        """QUEUED (spooled; some stripe has fewer than k shards in orbit) -> PARTIAL (every stripe
        has k) -> DURABLE (all k+m in orbit); LOST when a stripe has fewer than k anywhere. With
        `predict`, a spooled object's DURABLE time and its lower bound come from the current plan."""
        g = rec.geometry
        queued = {(i.stripe, i.shard_index) for i in self.catalog.repair_items(rec.object_id)}
        spooled = len(self.catalog.spool_entries(rec.object_id)) if self.scheduler is not None else 0
        ground = self.pipeline.ground if spooled else None
        in_orbit = recoverable = 0
        lost: list[ByteRange] = []
        stripes = 0
        least = g.n
        for s in self.catalog.stripes(rec.object_id):
            stripes += 1
            ok = sum(
                1
                for i, loc in enumerate(s.shards)
                if loc is not None
                and (s.index, i) not in queued
                and not self.nodes.gone(loc.node_id, self.config.node_grace_s)
            )
            in_orbit += ok
            least = min(least, ok)
            if ok >= g.k:
                recoverable += 1
            elif ground is None or len(ground.shards(rec.object_id, s.index)) < g.k:
                start = s.index * rec.plain_per_stripe
                lost.append(ByteRange(start, rec.plain_len(s.index)))
        total = stripes * g.n
        if lost:
            state = DurabilityState.LOST
        elif in_orbit == total:
            state = DurabilityState.DURABLE
        elif spooled and recoverable < stripes:
            state = DurabilityState.QUEUED
        else:
            state = DurabilityState.PARTIAL
        predicted = bound = 0
        if predict and spooled and self.scheduler is not None:
            when, low = self.scheduler.prediction(rec.object_id)
            predicted = 0 if when is None else math.ceil(when * 1000)
            bound = 0 if low is None else math.ceil(low * 1000)
        return ObjectStatus(
            rec.object_id,
            state,
            in_orbit,
            total,
            spooled,
            stripes,
            recoverable,
            predicted,
            tuple(lost),
            bound,
            least if stripes else 0,
        )

    def _info(self, rec: ObjectRecord, *, full: bool = True) -> ObjectInfo:
        if full:
            state = self._status(rec).state
        elif self.scheduler is not None and self.catalog.spool_object(rec.object_id) is not None:
            state = DurabilityState.QUEUED  # listing: spooled, not yet all in orbit (no stripe scan)
        else:  # listing: the repair queue alone, no stripe scan
            state = DurabilityState.PARTIAL if self.catalog.has_repairs(rec.object_id) else DurabilityState.DURABLE
        return ObjectInfo(
            bucket=rec.bucket,
            key=rec.key,
            version_id=rec.object_id,
            size=rec.size,
            etag=rec.etag,
            content_type=rec.content_type,
            metadata=dict(rec.metadata) if full else {},
            created_unix_ms=rec.created_unix_ms,
            storage_class=rec.geometry,
            retention=rec.retention,
            legal_hold=rec.legal_hold,
            durability=state,
            customer_key_blake3=rec.customer_key_blake3,
        )

    def _queue_damage(self, items: list[tuple[bytes, int, int, str]]) -> None:
        self.catalog.queue_repair(items, self.now_ms())

    # --- status and maintenance ---------------------------------------------------------------------------

    def status(self) -> GatewayStatus:
        """Nodes, repair backlog, and in scheduled mode the spool, RPO (backlog DURABLE per the plan)
        next to its capacity lower bound, and the gateway's (possibly simulated) time."""
        self.refresh_nodes(force=True)
        grace = self.config.node_grace_s
        sched = self.scheduler
        nodes = []
        for st in self.nodes.states():
            if st.node_id is None:
                continue
            status = st.status
            satellite = status.satellite if status else ""
            in_contact, next_contact = True, 0.0
            if sched is not None and satellite:
                in_contact, next_contact = sched.contact(satellite)
            if st.up:
                reach = NodeReachability.IN_CONTACT if in_contact else NodeReachability.OUT_OF_CONTACT
            elif self.nodes.gone(st.node_id, grace):
                reach = NodeReachability.RETIRED
            else:
                reach = NodeReachability.DOWN
            nodes.append(
                GatewayNode(
                    node_id=st.node_id,
                    name=status.name if status else "",
                    address=st.address,
                    satellite=satellite,
                    plane=st.plane,
                    reachability=reach,
                    last_seen_unix_ms=int(st.last_seen * 1000),
                    next_contact_unix_ms=math.ceil(next_contact * 1000),
                    capacity_bytes=status.capacity_bytes if status else 0,
                    used_bytes=status.used_bytes if status else 0,
                    shard_count=status.shard_count if status else 0,
                )
            )
        nodes.sort(key=lambda n: n.node_id)
        simulated = isinstance(self.clock, SimulatedClock)
        if sched is None:
            return GatewayStatus(
                tuple(nodes), self.repair_backlog(), 0, 0, self.now_ms(), VERSION, self.config.mode, simulated
            )
        b = sched.backlog()
        return GatewayStatus(
            tuple(nodes),
            self.repair_backlog(),
            b.shards,
            b.spooled_bytes,
            self.now_ms(),
            VERSION,
            self.config.mode,
            simulated,
            b.backlog_bytes,
            0 if b.durable_at is None else math.ceil(b.durable_at * 1000),
            0 if b.bound_at is None else math.ceil(b.bound_at * 1000),
            b.restores_in_progress,
        )

    def repair_backlog(self) -> RepairBacklog:
        return self.repairer.backlog()

    def repair_once(self) -> RepairReport:
        self.refresh_nodes(force=True)
        return self.repairer.sweep(self.now_ms())

    def collect_garbage(self, *, scan_orphans: bool = True) -> GcReport:
        self.refresh_nodes(force=False)
        with _LIVE_LOCK:
            live = set(_LIVE_OWNERS)
        return gc_mod.collect(
            self.catalog,
            self.pipeline,
            self.nodes,
            live_owners=live,
            ttl_s=self.config.pending_ttl_s,
            now_ms=self.now_ms(),
            scan_orphans=scan_orphans,
            in_flight=self.scheduler.relay_shards if self.scheduler is not None else set,
        )

    def checkpoint(self) -> int:
        """Write the catalog into the constellation as an object of the system bucket; returns its seq."""
        self._ensure_system()
        return checkpoint_mod.write_checkpoint(self, self._system_principal())

    def checkpoint_due(self) -> bool:
        return checkpoint_mod.due(self.catalog, self.config, self.now_ms())

    def _system_principal(self) -> Principal:
        return Principal(SYSTEM_TENANT, "", KeyMode.FULL)

    def _ensure_system(self) -> None:
        if self.catalog.get_tenant(SYSTEM_TENANT) is None:
            with contextlib.suppress(AlreadyExists):
                self._create_tenant(SYSTEM_TENANT)
        if self.catalog.get_bucket(SYSTEM_TENANT, SYSTEM_BUCKET) is None:
            rec = BucketRecord(SYSTEM_TENANT, SYSTEM_BUCKET, self.default_geometry(), None, self.now_ms())
            self.catalog.put_bucket(rec)

    @classmethod
    def rebuild(
        cls, config: GatewayConfig, links: NodeDirectory, master_key: MasterKey, *, clock: Clock | None = None
    ) -> RebuildReport:
        """Recover the catalog from the nodes alone into an empty state dir (design note §9).

        Built in a sibling directory and moved into place only when complete, so a rebuild that
        fails half-way leaves the state dir as it was and can simply be run again.
        """
        state = Path(config.state_dir)
        if (state / "catalog").exists():
            existing = Catalog(state)
            try:
                if not existing.is_empty():
                    raise FailedPrecondition(
                        f"{state} already holds a catalog; rebuild only fills an empty state directory"
                    )
            finally:
                existing.close()
        tmp = state.with_name(state.name + ".rebuilding")
        shutil.rmtree(tmp, ignore_errors=True)
        gw = cls(replace(config, state_dir=tmp), links, master_key, clock=clock)
        try:
            report = checkpoint_mod.rebuild(gw)
        finally:
            gw.close()
        state.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(state / "catalog", ignore_errors=True)
        os.replace(tmp / "catalog", state / "catalog")
        shutil.rmtree(tmp, ignore_errors=True)
        return report

    # --- MFA --------------------------------------------------------------------------------------------

    def mfa_enable(self, tenant: str, *, exempt: Sequence[str] = (), actor: str = "admin") -> mfa_mod.Enrolment:
        """Enrol `tenant` in TOTP for destructive calls; the secret is shown once (here) only."""
        with self._audited(actor, "mfa.enable", tenant, tenant=tenant) as audit:
            validate.tenant_name(tenant)
            if self.catalog.get_tenant(tenant) is None:
                raise NotFound(f"tenant {tenant!r} does not exist")
            patterns = mfa_mod.check_exempt(exempt)
            secret = mfa_mod.generate_secret()
            wrapped = mfa_mod.wrap_secret(self._mfa_kek, tenant, secret)
            rec = mfa_mod.MfaRecord(tenant, wrapped, self.now_ms(), -1, patterns)
            if not self.catalog.put_mfa(rec):
                raise AlreadyExists(f"tenant {tenant!r} already has MFA; disable it (with a current code) first")
            audit["exempt"] = ",".join(patterns)
            return mfa_mod.Enrolment(tenant, mfa_mod.secret_b32(secret), mfa_mod.otpauth_uri(secret, tenant))

    def mfa_disable(self, tenant: str, code: str | None, *, actor: str = "admin") -> None:
        """Remove the tenant's MFA; needs a current code (a hostile operator cannot switch it off)."""
        with self._audited(actor, "mfa.disable", tenant, tenant=tenant) as audit:
            if self.catalog.get_mfa(tenant) is None:
                raise NotFound(f"tenant {tenant!r} has no MFA enabled")
            if code is not None and code.startswith(mfa_mod.SESSION_PREFIX):
                raise PermissionDenied("disabling MFA needs a code from the authenticator, not a session")
            audit["mfa"] = self._require_mfa(tenant, "", code, "disabling MFA")
            self.catalog.delete_mfa(tenant)

    def mfa_status(self, tenant: str) -> mfa_mod.MfaRecord | None:
        """The tenant's enrolment (secret still wrapped), or None."""
        return self.catalog.get_mfa(tenant)

    def mfa_required(self, tenant: str) -> bool:
        return self.catalog.get_mfa(tenant) is not None

    def authorize_mfa(self, p: Principal, proof: str) -> mfa_mod.Grant | None:
        """Check a code or session for `p`'s tenant and return a session to reuse (None: no MFA).

        Adapters call this when a request carries a code, and hand the session back to the client,
        so batch deletes need one code, not one per 30-second step.
        """
        rec = self.catalog.get_mfa(p.tenant)
        if rec is None:
            return None
        via = self._verify_mfa(rec, p.key_id, proof)
        return self._grant(rec, p.key_id, via)

    def _grant(self, rec: mfa_mod.MfaRecord, key_id: str, via: str) -> mfa_mod.Grant:
        ttl_ms = int(self.config.mfa_session_s * 1000)
        expires = self.now_ms() + ttl_ms
        token = mfa_mod.issue_session(self._mfa_session_key, rec, key_id, expires) if ttl_ms else ""
        return mfa_mod.Grant(rec.tenant, key_id, via, token, expires if ttl_ms else 0)

    def _mfa_applies(self, tenant: str, key: str | None = None) -> bool:
        rec = self.catalog.get_mfa(tenant)
        return rec is not None and not (key is not None and rec.exempts(key))

    def _require_mfa(
        self, tenant: str, key_id: str, proof: str | mfa_mod.Grant | None, what: str, *, key: str | None = None
    ) -> str:
        """Nothing when the tenant has no MFA (or `key` is exempt); else a valid code or session.

        Returns how it was satisfied ("off", "exempt", "code", "session") for the audit log.
        """
        rec = self.catalog.get_mfa(tenant)
        if rec is None:
            return "off"
        if key is not None and rec.exempts(key):
            return "exempt"
        if isinstance(proof, mfa_mod.Grant):
            if (proof.tenant, proof.key_id) != (tenant, key_id):
                raise PermissionDenied("the MFA grant was made for another tenant or key")
            return proof.via
        if not proof:
            raise PermissionDenied(
                f"{what} needs MFA: tenant {tenant!r} has MFA delete enabled; send a current code from its "
                "authenticator (gRPC metadata x-orbitvault-mfa, SDK parameter mfa=)"
            )
        return self._verify_mfa(rec, key_id, proof)

    def _verify_mfa(self, rec: mfa_mod.MfaRecord, key_id: str, proof: str) -> str:
        if not isinstance(proof, str) or len(proof) > 128:
            raise PermissionDenied("the MFA value is neither a code nor a session token")
        if proof.startswith(mfa_mod.SESSION_PREFIX):
            if mfa_mod.check_session(self._mfa_session_key, rec, key_id, proof, self.now_ms()):
                return "session"
            raise PermissionDenied("the MFA session expired or belongs to another key; send a current code")
        self._mfa_lockout.check(rec.tenant)
        code = mfa_mod.check_code(proof)
        secret = mfa_mod.unwrap_secret(self._mfa_kek, rec.tenant, rec.wrapped_secret)
        step = mfa_mod.match_step(secret, code, self.clock.now())
        if step is None:
            if self._mfa_lockout.failed(rec.tenant):
                self.ids.alert("mfa.lockout", f"tenant:{rec.tenant}", rec.tenant, {"key": key_id or "admin"})
            self.ids.auth_failed(key_id=key_id or f"admin@{rec.tenant}", tenant=rec.tenant, what="mfa")
            raise PermissionDenied("wrong MFA code (or the gateway's clock is off by more than 30 s)")
        if step <= rec.last_step or not self.catalog.consume_mfa_step(rec.tenant, step, rec.enabled_unix_ms):
            self.ids.auth_failed(key_id=key_id or f"admin@{rec.tenant}", tenant=rec.tenant, what="mfa-replay")
            raise PermissionDenied("this MFA code was used already (codes are single-use); wait for the next one")
        return "code"

    # --- audit ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _audited(self, who: Principal | str, action: str, target: str, *, tenant: str = "") -> Iterator[dict[str, Any]]:
        """Record the call in the audit log when it ends, with its outcome (ok, denied, failed).

        The body adds details to the dict it gets. Internal maintenance (the system tenant's
        checkpoints) is not a call and is not recorded. A crash (BaseException) records nothing:
        the call did not end. While the log cannot be written, mutating calls are refused.
        """
        if isinstance(who, Principal):
            principal, tenant, key_id = who.client or "api", who.tenant, who.key_id
        else:
            principal, key_id = str(who), ""
        if tenant == SYSTEM_TENANT:
            yield {}
            return
        self.audit.check_writable()
        detail: dict[str, Any] = {}
        try:
            yield detail
        except ids_mod.RateLimited:
            raise  # counted and alerted by the detector; one entry per refused call would flood the log
        except Exception as exc:
            self._record(action, target, exc, principal, tenant, key_id, detail)
            raise
        self._record(action, target, None, principal, tenant, key_id, detail)

    def _on_alert(self, alert: ids_mod.Alert) -> None:
        """Intrusion alerts go into the audit log (the metrics count them in the detector)."""
        with contextlib.suppress(OSError):
            self.audit.append(
                f"alert.{alert.kind}",
                target=alert.subject,
                outcome="alert",
                status="OK",
                principal="ids",
                tenant=alert.tenant,
                detail=alert.detail,
            )

    def _record(
        self,
        action: str,
        target: str,
        exc: BaseException | None,
        principal: str,
        tenant: str,
        key_id: str,
        detail: Mapping[str, Any],
    ) -> None:
        outcome, status, reason = audit_mod.outcome_of(exc)
        if reason:
            detail = {**detail, "reason": reason}
        # A failed append is logged by the audit log; the next mutating call is refused until it works.
        with contextlib.suppress(OSError):
            self.audit.append(
                action,
                target=target,
                outcome=outcome,
                status=status,
                principal=principal,
                tenant=tenant,
                key_id=key_id,
                detail=detail,
            )

    # --- permissions ----------------------------------------------------------------------------------

    def _check_tenant(self, p: Principal) -> None:
        if not isinstance(p, Principal):
            raise Unauthenticated("no principal: authenticate first")
        if p.tenant == SYSTEM_TENANT:
            return
        if self.catalog.get_tenant(p.tenant) is None:
            raise Unauthenticated(f"tenant {p.tenant!r} does not exist")
        self.ids.admit(p.tenant)  # every tenant call passes here once: the rate limit

    @staticmethod
    def _may_write(p: Principal, what: str) -> None:
        if p.mode is KeyMode.READ_ONLY:
            raise PermissionDenied(f"a read-only key cannot {what}")


# --- helpers ------------------------------------------------------------------------------------------


def _bucket_info(rec: BucketRecord) -> BucketInfo:
    return BucketInfo(rec.name, rec.geometry, rec.default_retention, rec.created_unix_ms)


def _check_retention(r: Retention) -> Retention:
    if not isinstance(r, Retention):
        raise InvalidArgument("retention must be a Retention")
    try:
        mode = RetentionMode(r.mode)
    except ValueError:
        raise InvalidArgument(f"retention mode must be GOVERNANCE or COMPLIANCE, got {r.mode!r}") from None
    until = r.retain_until_unix_ms
    if not isinstance(until, int) or isinstance(until, bool) or until <= 0:
        raise InvalidArgument(f"retain_until_unix_ms must be a positive integer, got {until!r}")
    return Retention(mode, until)


def _extends(cur: Retention, new: Retention | None) -> bool:
    """True if `new` keeps the object locked at least as long and at least as strictly."""
    if new is None or new.retain_until_unix_ms < cur.retain_until_unix_ms:
        return False
    return not (cur.mode is RetentionMode.COMPLIANCE and new.mode is not RetentionMode.COMPLIANCE)


def _lock_reason(rec: ObjectRecord, now_ms: int, *, bypass: bool) -> str:
    """Why `rec` may not be deleted or overwritten now ('' if it may)."""
    if rec.legal_hold:
        return "a legal hold is placed; lift it first"
    r = rec.retention
    if r is None or r.retain_until_unix_ms <= now_ms:
        return ""
    if r.mode is RetentionMode.COMPLIANCE:
        return f"COMPLIANCE retention until {r.retain_until_unix_ms} (unix ms); nobody can remove it earlier"
    if bypass:
        return ""
    return f"GOVERNANCE retention until {r.retain_until_unix_ms} (unix ms); a full-access key may bypass it"


def _encode_token(after: bytes) -> str:
    """Opaque page token: the position to resume after (a key, or a common prefix + 0xff)."""
    return "v1." + base64.urlsafe_b64encode(after).decode().rstrip("=")


def _decode_token(token: str) -> bytes:
    bad = InvalidArgument("page_token is malformed: pass next_page_token from the previous page unchanged")
    if not isinstance(token, str) or len(token) > MAX_PAGE_TOKEN or not token.startswith("v1."):
        raise bad
    body = token[3:]
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad from None


__all__ = ["VERSION", "Gateway"]
