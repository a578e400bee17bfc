"""The gateway's value types: what the facade takes and returns (no grpc, no LMDB).

Field names follow the proto messages of the same name (`object_store.proto`): times are
`*_unix_ms` ints, ids are bytes. Enum *names* match the proto enum values without their prefix
(`RetentionMode.GOVERNANCE` <-> `RETENTION_MODE_GOVERNANCE`), so adapters map by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from orbitvault.erasure.layout import Geometry

SYSTEM_TENANT = ".system"
SYSTEM_BUCKET = ".orbitvault"


class KeyMode(StrEnum):
    """What an API key may do. Append-only: no delete, no overwrite, no retention shortening."""

    FULL = "full"
    READ_ONLY = "read-only"
    APPEND_ONLY = "append-only"


class RetentionMode(StrEnum):
    GOVERNANCE = "GOVERNANCE"
    COMPLIANCE = "COMPLIANCE"


class DurabilityState(StrEnum):
    QUEUED = "QUEUED"
    PARTIAL = "PARTIAL"
    DURABLE = "DURABLE"
    LOST = "LOST"


class NodeReachability(StrEnum):
    IN_CONTACT = "IN_CONTACT"
    OUT_OF_CONTACT = "OUT_OF_CONTACT"
    DOWN = "DOWN"
    RETIRED = "RETIRED"


@dataclass(frozen=True, slots=True)
class Retention:
    """Retention of one object version; None in its place means no retention."""

    mode: RetentionMode
    retain_until_unix_ms: int


@dataclass(frozen=True, slots=True)
class DefaultRetention:
    """Retention a bucket gives new versions that do not set their own."""

    mode: RetentionMode
    retain_for_ms: int


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant and the key's mode (from `Gateway.authenticate`), and `client`:
    how the adapter saw the caller (TLS identity `client:alice`, or its address), for the audit log."""

    tenant: str
    key_id: str
    mode: KeyMode
    client: str = ""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as created: `token` is shown once and never stored (only blake3 of the secret is)."""

    key_id: str
    tenant: str
    mode: KeyMode
    created_unix_ms: int
    token: str = field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    storage_class: Geometry
    default_retention: DefaultRetention | None
    created_unix_ms: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    version_id: bytes
    size: int
    etag: bytes
    content_type: str
    metadata: Mapping[str, str]
    created_unix_ms: int
    storage_class: Geometry
    retention: Retention | None
    legal_hold: bool
    durability: DurabilityState
    customer_key_blake3: bytes = b""


@dataclass(frozen=True, slots=True)
class ByteRange:
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    version_id: bytes
    state: DurabilityState
    shards_in_orbit: int
    shards_total: int
    shards_spooled: int
    stripes_total: int
    stripes_recoverable: int
    predicted_durable_unix_ms: int = 0
    lost_ranges: tuple[ByteRange, ...] = ()
    durable_bound_unix_ms: int = 0  # lower bound for predicted_durable_unix_ms (window capacity)
    stripe_min_in_orbit: int = 0  # fewest shards in orbit of any stripe


class RestoreState(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    READY = "READY"


@dataclass(frozen=True, slots=True)
class RestoreInfo:
    """Where a RestoreObject stands: READY (expires_unix_ms: when a staged copy is dropped, 0 for
    none) or IN_PROGRESS with the plan's ETA and its lower bound (the RTO bound)."""

    state: RestoreState
    eta_unix_ms: int = 0
    expires_unix_ms: int = 0
    eta_bound_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class GatewayNode:
    node_id: bytes
    name: str
    address: str
    satellite: str
    plane: str
    reachability: NodeReachability
    last_seen_unix_ms: int
    next_contact_unix_ms: int
    capacity_bytes: int
    used_bytes: int
    shard_count: int


@dataclass(frozen=True, slots=True)
class RepairBacklog:
    shards_missing: int
    rows_damaged: int
    bytes_pending: int
    stripes_at_risk: int
    oldest_pending_unix_ms: int


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    nodes: tuple[GatewayNode, ...]
    repair: RepairBacklog
    spooled_shards: int
    spooled_bytes: int
    gateway_time_unix_ms: int
    version: str
    mode: str = "direct"
    simulated_clock: bool = False
    backlog_bytes: int = 0
    backlog_durable_unix_ms: int = 0  # RPO: the backlog DURABLE per the current plan (0: none/unknown)
    backlog_bound_unix_ms: int = 0  # ... and its lower bound from window capacity
    restores_in_progress: int = 0


@dataclass(frozen=True, slots=True)
class RepairReport:
    """One repair sweep: what was rebuilt, what could not be, what is left."""

    shards_rebuilt: int = 0
    shards_failed: int = 0
    bytes_written: int = 0
    nodes_gone: tuple[bytes, ...] = ()
    backlog: int = 0
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GcReport:
    pending_uploads_removed: int = 0
    shards_deleted: int = 0
    orphans_deleted: int = 0
    tombstones_left: int = 0


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What `Gateway.rebuild` recovered from the nodes, and what it could not."""

    checkpoint_seq: int = 0
    nodes_listed: int = 0
    nodes_unreachable: int = 0
    shards_seen: int = 0
    tenants: int = 0
    buckets: int = 0
    api_keys: int = 0
    objects: int = 0
    objects_from_headers: int = 0
    objects_dropped: tuple[str, ...] = ()
    orphan_shards: int = 0
    shards_missing: int = 0
    errors: tuple[str, ...] = ()
