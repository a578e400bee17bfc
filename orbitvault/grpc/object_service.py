"""The ObjectStore gRPC servicer: a thin adapter over the domain facade `orbitvault.ground.gateway.Gateway`.

Every call is authenticated from the `x-orbitvault-api-key` metadata (`Gateway.authenticate`; a
missing or wrong key is UNAUTHENTICATED), converted and bounded here (sizes of names, metadata,
ids, messages) and handed to the facade; what it raises becomes a status in `status.rpc_errors`,
so a client never sees a traceback. Bounds are checked before anything is copied or stored; the
domain (`ground/validate.py`) checks the same rules again for every other caller.

PutObject feeds the facade a generator over the request stream, so the gateway holds at most what
the put pipeline buffers (about two stripes), never the object; a stream that breaks, sends more or
fewer bytes than it announced, or a second `start`, raises out of that generator inside the facade,
which then stores nothing. GetObject sends the ObjectInfo first, then the range in messages of at
most about 1 MiB. Counters for the metrics endpoint are kept here (`ServiceCounters`), without any
Prometheus dependency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3
import grpc

from orbitvault.erasure.layout import Geometry
from orbitvault.errors import InvalidArgument, Unavailable
from orbitvault.ground import model, validate
from orbitvault.ground.gateway import Gateway
from orbitvault.ground.mfa import SESSION_PREFIX, Grant
from orbitvault.grpc import wire
from orbitvault.grpc.status import rpc_errors
from orbitvault.grpc.tls import CLIENT_OR_GATEWAY, Role, RoleCheck, peer_identity
from orbitvault.grpc.v1 import common_pb2, object_store_pb2_grpc
from orbitvault.grpc.v1 import object_store_pb2 as pb

log = logging.getLogger("orbitvault.gateway")

API_KEY_HEADER = "x-orbitvault-api-key"
# A TOTP code (or an MFA session token) for destructive calls of a tenant with MFA; the answer's
# initial metadata carries a session token to send instead of the next codes.
MFA_HEADER = "x-orbitvault-mfa"
MFA_SESSION_HEADER = "x-orbitvault-mfa-session"
MAX_MFA = 128
MAX_TOKEN = 256
MAX_DATA_MESSAGE = 4 * 1024 * 1024  # object_store.proto: data messages are at most 4 MiB
MAX_MESSAGE_BYTES = MAX_DATA_MESSAGE + 64 * 1024  # plus the start message's framing and metadata
TARGET_DATA_MESSAGE = 1024 * 1024
MAX_PAGE_TOKEN = 1024
ID_LEN = 32
_PUT_MODES = {pb.PUT_MODE_UNSPECIFIED: None, pb.PUT_MODE_DIRECT: "direct", pb.PUT_MODE_SCHEDULED: "scheduled"}


# --- counters ------------------------------------------------------------------------------------


@dataclass
class ServiceCounters:
    """What the metrics endpoint reports about client traffic; thread-safe, monotonic."""

    puts: int = 0
    put_bytes: int = 0
    puts_failed: int = 0
    gets: int = 0
    get_bytes: int = 0
    gets_failed: int = 0
    puts_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _idle: threading.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._idle = threading.Condition(self._lock)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
            if self.puts_in_flight == 0:
                self._idle.notify_all()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def wait_puts_done(self, timeout: float | None) -> bool:
        """Block until no put is in flight; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self.puts_in_flight == 0, timeout)


# --- proto <-> domain ----------------------------------------------------------------------------


def _enum_to_pb(enum_type: Any, prefix: str, value: Any) -> int:
    """Domain enum -> proto number by name (model.py promises names equal the proto suffixes)."""
    if value is None:
        return 0
    return enum_type.Value(f"{prefix}_{value.name}")


def geometry_to_pb(g: Geometry) -> common_pb2.Geometry:
    return common_pb2.Geometry(k=g.k, m=g.m, fragment_size=g.fragment_size, stripe_size=g.stripe_size)


def retention_to_pb(r: model.Retention | None) -> pb.Retention | None:
    if r is None:
        return None
    return pb.Retention(
        mode=_enum_to_pb(pb.RetentionMode, "RETENTION_MODE", r.mode), retain_until_unix_ms=r.retain_until_unix_ms
    )


def retention_from_pb(msg: pb.Retention, field_name: str) -> model.Retention | None:
    """None for an unset or UNSPECIFIED retention (meaning: none)."""
    if msg.mode == pb.RETENTION_MODE_UNSPECIFIED:
        return None
    name = pb.RetentionMode.Name(msg.mode).removeprefix("RETENTION_MODE_") if msg.mode in (1, 2) else ""
    if not name:
        raise InvalidArgument(f"{field_name}.mode {msg.mode} is not a retention mode")
    if msg.retain_until_unix_ms <= 0:
        raise InvalidArgument(f"{field_name}.retain_until_unix_ms must be set (a time in unix milliseconds)")
    return model.Retention(model.RetentionMode[name], msg.retain_until_unix_ms)


def default_retention_from_pb(msg: pb.DefaultRetention) -> model.DefaultRetention | None:
    if msg.mode == pb.RETENTION_MODE_UNSPECIFIED:
        if msg.retain_for_ms:
            raise InvalidArgument("default_retention.retain_for_ms is set but mode is not")
        return None
    if msg.mode not in (pb.RETENTION_MODE_GOVERNANCE, pb.RETENTION_MODE_COMPLIANCE):
        raise InvalidArgument(f"default_retention.mode {msg.mode} is not a retention mode")
    if msg.retain_for_ms <= 0:
        raise InvalidArgument("default_retention.retain_for_ms must be positive (milliseconds)")
    name = pb.RetentionMode.Name(msg.mode).removeprefix("RETENTION_MODE_")
    return model.DefaultRetention(model.RetentionMode[name], msg.retain_for_ms)


def object_info_to_pb(info: model.ObjectInfo, *, with_metadata: bool = True) -> pb.ObjectInfo:
    msg = pb.ObjectInfo(
        bucket=info.bucket,
        key=info.key,
        version_id=info.version_id,
        size=info.size,
        etag=info.etag,
        content_type=info.content_type,
        metadata=dict(info.metadata) if with_metadata else {},
        created_unix_ms=info.created_unix_ms,
        storage_class=geometry_to_pb(info.storage_class),
        legal_hold=info.legal_hold,
        durability=_enum_to_pb(pb.DurabilityState, "DURABILITY_STATE", info.durability),
        customer_key_blake3=info.customer_key_blake3,
    )
    if (r := retention_to_pb(info.retention)) is not None:
        msg.retention.CopyFrom(r)
    return msg


def bucket_info_to_pb(b: model.BucketInfo) -> pb.BucketInfo:
    msg = pb.BucketInfo(name=b.name, storage_class=geometry_to_pb(b.storage_class), created_unix_ms=b.created_unix_ms)
    if b.default_retention is not None:
        msg.default_retention.CopyFrom(
            pb.DefaultRetention(
                mode=_enum_to_pb(pb.RetentionMode, "RETENTION_MODE", b.default_retention.mode),
                retain_for_ms=b.default_retention.retain_for_ms,
            )
        )
    return msg


def storage_class_from_pb(msg: common_pb2.Geometry, make: Any) -> Geometry | None:
    """CreateBucket's storage class: all zero -> None (the gateway's default); fragment and stripe
    size 0 -> the gateway's defaults (`make` is `Gateway.make_geometry`)."""
    if msg.k == 0 and msg.m == 0 and msg.fragment_size == 0 and msg.stripe_size == 0:
        return None
    if msg.k == 0 or msg.m == 0:
        raise InvalidArgument("storage_class needs both k and m (k >= 1, m >= 1, k + m <= 32), or neither")
    if msg.k + msg.m > 32:
        raise InvalidArgument(f"storage_class {msg.k}+{msg.m} has more than 32 fragments per row")
    try:
        return make(msg.k, msg.m, msg.fragment_size, msg.stripe_size)
    except InvalidArgument as exc:
        raise InvalidArgument(f"storage_class: {exc}") from None


def _version(value: bytes, field_name: str = "version_id") -> bytes | None:
    if not value:
        return None
    if len(value) != ID_LEN:
        raise InvalidArgument(f"{field_name} must be {ID_LEN} bytes (or empty for the current version)")
    return bytes(value)


def _customer_key(msg: pb.CustomerKey, field_name: str = "customer_key") -> bytes | None:
    if not msg.key and not msg.key_blake3:
        return None
    if len(msg.key) != 32:
        raise InvalidArgument(f"{field_name}.key must be 32 bytes (AES-256)")
    if msg.key_blake3 and blake3.blake3(msg.key).digest() != msg.key_blake3:
        raise InvalidArgument(f"{field_name}.key_blake3 does not match the key: it was damaged on the way")
    return bytes(msg.key)


def _names(bucket: str, key: str | None = None) -> None:
    """Bounds on names before they reach the domain (which checks them again)."""
    validate.bucket_name(bucket)
    if key is not None:
        validate.object_key(key)


def _page(token: str, size: int) -> tuple[str, int]:
    if len(token) > MAX_PAGE_TOKEN:
        raise InvalidArgument(f"page_token is longer than {MAX_PAGE_TOKEN} characters")
    return token, validate.page_size(size)


def _split(data: bytes | memoryview) -> Iterator[bytes | memoryview]:
    """Outgoing data in messages of at most about 1 MiB, whatever size the facade hands over
    (views: each message is serialized with one copy)."""
    if len(data) <= 2 * TARGET_DATA_MESSAGE:
        if data:
            yield data
        return
    view = memoryview(data)
    for i in range(0, len(view), TARGET_DATA_MESSAGE):
        yield view[i : i + TARGET_DATA_MESSAGE]


# --- the servicer --------------------------------------------------------------------------------


class ObjectStoreService(object_store_pb2_grpc.ObjectStoreServicer):
    """Serves the gateway's facade over gRPC. Thread-safe: the facade is; this keeps counters only."""

    def __init__(
        self, gateway: Gateway, *, counters: ServiceCounters | None = None, roles: RoleCheck | None = None
    ) -> None:
        self.gateway = gateway
        self.counters = counters or ServiceCounters()
        self.roles = roles or RoleCheck(tls=False)
        self._accepting = True

    def stop_accepting_puts(self) -> None:
        """New puts are refused with UNAVAILABLE (shutdown); running ones go on."""
        self._accepting = False

    def _principal(self, context: grpc.ServicerContext) -> model.Principal:
        # mTLS first (client or gateway certificates; nodes have no business here), then the API
        # key: the certificate says which machine calls, the key which tenant and what it may do.
        who = self.roles.require(context, CLIENT_OR_GATEWAY, "the ObjectStore API")
        token: str | None = None
        for k, v in context.invocation_metadata() or ():
            if k == API_KEY_HEADER:
                token = v if isinstance(v, str) else None
                break
        if token is not None and len(token) > MAX_TOKEN:
            token = ""  # far too long to be a key: fail as a wrong key, without hashing it
        peer = context.peer() or ""
        client = str(who) if who is not None else peer
        return self.gateway.authenticate(token, client=client, source=_peer_host(peer))

    def _mfa(self, context: grpc.ServicerContext, p: model.Principal) -> str | Grant | None:
        """The call's MFA proof; a code is turned into a session token, sent back to the client in
        the initial metadata (before the call's own outcome) so its next destructive calls reuse it."""
        proof: str | None = None
        for k, v in context.invocation_metadata() or ():
            if k == MFA_HEADER:
                proof = v if isinstance(v, str) else None
                break
        if not proof:
            return None
        if len(proof) > MAX_MFA:
            raise InvalidArgument(f"{MFA_HEADER} is longer than {MAX_MFA} characters")
        if proof.startswith(SESSION_PREFIX):
            return proof
        grant = self.gateway.authorize_mfa(p, proof)  # None: the tenant has no MFA
        if grant is not None and grant.session:
            context.send_initial_metadata(((MFA_SESSION_HEADER, grant.session),))
        return grant

    # --- buckets ----------------------------------------------------------------------------------

    @rpc_errors
    def CreateBucket(self, request: pb.CreateBucketRequest, context: grpc.ServicerContext) -> pb.CreateBucketResponse:
        p = self._principal(context)
        _names(request.bucket)
        geometry = None
        if request.HasField("storage_class"):
            geometry = storage_class_from_pb(request.storage_class, self.gateway.make_geometry)
        default = None
        if request.HasField("default_retention"):
            default = default_retention_from_pb(request.default_retention)
        info = self.gateway.create_bucket(p, request.bucket, geometry, default)
        log.info("bucket created tenant=%s bucket=%s", p.tenant, request.bucket)
        return pb.CreateBucketResponse(bucket=bucket_info_to_pb(info))

    @rpc_errors
    def ListBuckets(self, request: pb.ListBucketsRequest, context: grpc.ServicerContext) -> pb.ListBucketsResponse:
        p = self._principal(context)
        token, size = _page(request.page_token, request.page_size)
        buckets, next_token = self.gateway.list_buckets(p, page_token=token, page_size=size)
        return pb.ListBucketsResponse(buckets=[bucket_info_to_pb(b) for b in buckets], next_page_token=next_token)

    @rpc_errors
    def DeleteBucket(self, request: pb.DeleteBucketRequest, context: grpc.ServicerContext) -> pb.DeleteBucketResponse:
        p = self._principal(context)
        _names(request.bucket)
        self.gateway.delete_bucket(p, request.bucket, mfa=self._mfa(context, p))
        log.info("bucket deleted tenant=%s bucket=%s", p.tenant, request.bucket)
        return pb.DeleteBucketResponse()

    # --- PutObject --------------------------------------------------------------------------------

    @rpc_errors
    def PutObject(
        self, request_iterator: Iterator[pb.PutObjectRequest | memoryview], context: grpc.ServicerContext
    ) -> pb.PutObjectResponse:
        p = self._principal(context)
        if not self._accepting:
            raise_unavailable_shutting_down()
        first = next(request_iterator, None)
        if first is None or isinstance(first, memoryview) or first.WhichOneof("body") != "start":
            raise InvalidArgument("the first PutObject message must be `start` (bucket, key, options)")
        start = first.start
        _names(start.bucket, start.key)
        validate.content_type(start.content_type)
        metadata = validate.metadata(dict(start.metadata))
        size = validate.object_size(start.size) if start.HasField("size") else None
        retention = retention_from_pb(start.retention, "start.retention") if start.HasField("retention") else None
        customer_key = _customer_key(start.customer_key, "start.customer_key")
        mode = _PUT_MODES.get(start.mode)
        if start.mode not in _PUT_MODES:
            raise InvalidArgument(f"start.mode {start.mode} is not a put mode")
        if start.content_blake3 and len(start.content_blake3) != ID_LEN:
            raise InvalidArgument(f"start.content_blake3 must be {ID_LEN} bytes (blake3 of the data)")
        mfa = self._mfa(context, p)
        began = time.monotonic()
        self.counters.add(puts_in_flight=1)
        try:
            info = self.gateway.put_object(
                p,
                start.bucket,
                start.key,
                _data(request_iterator, size),
                size=size,
                content_type=start.content_type,
                metadata=metadata,
                retention=retention,
                legal_hold=start.legal_hold,
                customer_key=customer_key,
                content_blake3=bytes(start.content_blake3) or None,
                mfa=mfa,
                mode=mode,
            )
        except BaseException:
            self.counters.add(puts_in_flight=-1, puts_failed=1)
            raise
        self.counters.add(puts_in_flight=-1, puts=1, put_bytes=info.size)
        log.info(
            "object stored tenant=%s bucket=%s key=%r version=%s bytes=%d ms=%.0f",
            p.tenant,
            start.bucket,
            start.key,
            info.version_id.hex()[:16],
            info.size,
            (time.monotonic() - began) * 1000,
        )
        return pb.PutObjectResponse(object=object_info_to_pb(info))

    # --- GetObject --------------------------------------------------------------------------------

    @rpc_errors
    def GetObject(self, request: pb.GetObjectRequest, context: grpc.ServicerContext) -> Iterator[pb.GetObjectResponse]:
        p = self._principal(context)
        _names(request.bucket, request.key)
        length = request.length if request.HasField("length") else None
        info, chunks = self.gateway.get_object(
            p,
            request.bucket,
            request.key,
            offset=request.offset,
            length=length,
            version_id=_version(request.version_id),
            customer_key=_customer_key(request.customer_key),
        )
        sent = 0
        ok = False
        try:
            yield pb.GetObjectResponse(info=object_info_to_pb(info))
            for chunk in chunks:
                for piece in _split(chunk):
                    sent += len(piece)
                    yield wire.DataResponse(piece)  # type: ignore[misc]
            ok = True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a client that went away must not leave node reads running
            self.counters.add(gets=1, get_bytes=sent, gets_failed=0 if ok else 1)

    # --- the rest ---------------------------------------------------------------------------------

    @rpc_errors
    def HeadObject(self, request: pb.HeadObjectRequest, context: grpc.ServicerContext) -> pb.HeadObjectResponse:
        p = self._principal(context)
        _names(request.bucket, request.key)
        info = self.gateway.head_object(p, request.bucket, request.key, version_id=_version(request.version_id))
        return pb.HeadObjectResponse(object=object_info_to_pb(info))

    @rpc_errors
    def ListObjects(self, request: pb.ListObjectsRequest, context: grpc.ServicerContext) -> pb.ListObjectsResponse:
        p = self._principal(context)
        _names(request.bucket)
        validate.bounded_str(request.prefix, "prefix", validate.MAX_PREFIX)
        validate.bounded_str(request.delimiter, "delimiter", validate.MAX_DELIMITER)
        token, size = _page(request.page_token, request.page_size)
        objects, prefixes, next_token = self.gateway.list_objects(
            p, request.bucket, prefix=request.prefix, delimiter=request.delimiter, page_token=token, page_size=size
        )
        return pb.ListObjectsResponse(
            objects=[object_info_to_pb(o, with_metadata=False) for o in objects],
            common_prefixes=prefixes,
            next_page_token=next_token,
        )

    @rpc_errors
    def DeleteObject(self, request: pb.DeleteObjectRequest, context: grpc.ServicerContext) -> pb.DeleteObjectResponse:
        p = self._principal(context)
        _names(request.bucket, request.key)
        version = self.gateway.delete_object(
            p,
            request.bucket,
            request.key,
            version_id=_version(request.version_id),
            bypass_governance=request.bypass_governance,
            mfa=self._mfa(context, p),
        )
        log.info("object deleted tenant=%s bucket=%s key=%r", p.tenant, request.bucket, request.key)
        return pb.DeleteObjectResponse(version_id=version)

    @rpc_errors
    def SetObjectRetention(
        self, request: pb.SetObjectRetentionRequest, context: grpc.ServicerContext
    ) -> pb.SetObjectRetentionResponse:
        p = self._principal(context)
        _names(request.bucket, request.key)
        retention = retention_from_pb(request.retention, "retention") if request.HasField("retention") else None
        info = self.gateway.set_retention(
            p,
            request.bucket,
            request.key,
            retention,
            bypass_governance=request.bypass_governance,
            version_id=_version(request.version_id),
            mfa=self._mfa(context, p),
        )
        return pb.SetObjectRetentionResponse(object=object_info_to_pb(info))

    @rpc_errors
    def SetLegalHold(self, request: pb.SetLegalHoldRequest, context: grpc.ServicerContext) -> pb.SetLegalHoldResponse:
        p = self._principal(context)
        _names(request.bucket, request.key)
        info = self.gateway.set_legal_hold(
            p,
            request.bucket,
            request.key,
            request.legal_hold,
            version_id=_version(request.version_id),
            mfa=self._mfa(context, p),
        )
        return pb.SetLegalHoldResponse(object=object_info_to_pb(info))

    @rpc_errors
    def GetObjectStatus(
        self, request: pb.GetObjectStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetObjectStatusResponse:
        p = self._principal(context)
        _names(request.bucket, request.key)
        st = self.gateway.object_status(p, request.bucket, request.key, version_id=_version(request.version_id))
        return pb.GetObjectStatusResponse(
            version_id=st.version_id,
            state=_enum_to_pb(pb.DurabilityState, "DURABILITY_STATE", st.state),
            shards_in_orbit=st.shards_in_orbit,
            shards_total=st.shards_total,
            shards_spooled=st.shards_spooled,
            stripes_total=st.stripes_total,
            stripes_recoverable=st.stripes_recoverable,
            predicted_durable_unix_ms=st.predicted_durable_unix_ms,
            lost_ranges=[pb.ByteRange(offset=r.offset, length=r.length) for r in st.lost_ranges],
            durable_bound_unix_ms=st.durable_bound_unix_ms,
            stripe_min_in_orbit=st.stripe_min_in_orbit,
        )

    @rpc_errors
    def RestoreObject(
        self, request: pb.RestoreObjectRequest, context: grpc.ServicerContext
    ) -> pb.RestoreObjectResponse:
        """READY when the object reads now (direct mode, or a ground copy); else the gateway plans
        the downlinks over the contact plan and answers IN_PROGRESS with the ETA (poll again)."""
        p = self._principal(context)
        _names(request.bucket, request.key)
        if request.keep_for_ms < 0:
            raise InvalidArgument("keep_for_ms must not be negative")
        info = self.gateway.restore_object(
            p, request.bucket, request.key, version_id=_version(request.version_id), keep_for_ms=request.keep_for_ms
        )
        state = pb.RESTORE_STATE_READY if info.state is model.RestoreState.READY else pb.RESTORE_STATE_IN_PROGRESS
        return pb.RestoreObjectResponse(
            state=state,
            eta_unix_ms=info.eta_unix_ms,
            expires_unix_ms=info.expires_unix_ms,
            eta_bound_unix_ms=info.eta_bound_unix_ms,
        )

    @rpc_errors
    def GetGatewayStatus(
        self, request: pb.GetGatewayStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetGatewayStatusResponse:
        self._principal(context)
        # Node addresses are infrastructure, not a tenant's business: only the operator (the
        # gateway's own certificate, as `orbitvault gateway status --config` presents) sees them.
        who = peer_identity(context) if self.roles.tls else None
        operator = who is not None and who.role is Role.GATEWAY
        return gateway_status_to_pb(self.gateway.status(), addresses=operator)


def gateway_status_to_pb(st: model.GatewayStatus, *, addresses: bool = True) -> pb.GetGatewayStatusResponse:
    r = st.repair
    return pb.GetGatewayStatusResponse(
        nodes=[
            pb.GatewayNode(
                node_id=n.node_id,
                name=n.name,
                address=n.address if addresses else "",
                satellite=n.satellite,
                plane=n.plane,
                reachability=_enum_to_pb(pb.NodeReachability, "NODE_REACHABILITY", n.reachability),
                last_seen_unix_ms=n.last_seen_unix_ms,
                next_contact_unix_ms=n.next_contact_unix_ms,
                capacity_bytes=n.capacity_bytes,
                used_bytes=n.used_bytes,
                shard_count=n.shard_count,
            )
            for n in st.nodes
        ],
        repair=pb.RepairBacklog(
            shards_missing=r.shards_missing,
            rows_damaged=r.rows_damaged,
            bytes_pending=r.bytes_pending,
            stripes_at_risk=r.stripes_at_risk,
            oldest_pending_unix_ms=r.oldest_pending_unix_ms,
        ),
        spooled_shards=st.spooled_shards,
        spooled_bytes=st.spooled_bytes,
        gateway_time_unix_ms=st.gateway_time_unix_ms,
        version=st.version,
        mode=st.mode,
        simulated_clock=st.simulated_clock,
        backlog_bytes=st.backlog_bytes,
        backlog_durable_unix_ms=st.backlog_durable_unix_ms,
        backlog_bound_unix_ms=st.backlog_bound_unix_ms,
        restores_in_progress=st.restores_in_progress,
    )


def _peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.5:53211" -> "10.0.0.5"): failed
    logins are counted per host, not per connection."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0]
        return host.strip("[]") or rest
    return peer


def raise_unavailable_shutting_down() -> None:
    raise Unavailable("the gateway is shutting down; retry against it once it is back")


def _data(requests: Iterator[pb.PutObjectRequest | memoryview], size: int | None) -> Iterator[bytes | memoryview]:
    """The object's bytes from the rest of the stream, checked as they come: only `data` messages,
    each at most 4 MiB, and exactly `size` bytes in all when the client announced it. Raising here
    (inside the facade's put) makes the put store nothing."""
    n = 0
    for i, msg in enumerate(requests, start=2):
        if isinstance(msg, memoryview):  # a `data` message, decoded without copies (wire.py)
            chunk: bytes | memoryview = msg
        else:
            kind = msg.WhichOneof("body")
            if kind != "data":
                what = "a second `start`" if kind == "start" else "empty"
                raise InvalidArgument(f"PutObject message {i} is {what}; every message after `start` carries data")
            chunk = msg.data
        if len(chunk) > MAX_DATA_MESSAGE:
            raise InvalidArgument(f"PutObject message {i} carries {len(chunk)} bytes; at most {MAX_DATA_MESSAGE}")
        n += len(chunk)
        if size is not None and n > size:
            raise InvalidArgument(f"the stream carries more than the {size} bytes announced in start.size")
        if chunk:
            yield chunk
    if size is not None and n != size:
        raise InvalidArgument(f"the stream carried {n} bytes but start.size announced {size}; nothing was stored")
