"""The ObjectStore SDK: put, get, list, head, delete and status against an orbitvault gateway.

This module is an adapter and imports grpc (design §1 keeps grpc inside `orbitvault/grpc/`; the SDK
is the one exception in `orbitvault/client/`, because a client must speak the wire protocol). The
rest of `orbitvault/client/` (the backup client) uses this SDK and stays free of grpc.

    tls = TlsFiles(Path("pki/ca.crt"), Path("pki/alice.crt"), Path("pki/alice.key"))
    with ObjectStoreClient("gw.example:7300", api_key, tls=tls) as s3:   # or insecure=True locally
        s3.create_bucket("photos")
        s3.put_file("photos", "2024/cat.jpg", "cat.jpg", content_type="image/jpeg")
        data = s3.get("photos", "2024/cat.jpg", offset=0, length=1024)
        for obj in s3.list("photos", prefix="2024/"):
            print(obj.key, obj.size)

Errors are the `orbitvault.errors` classes, mapped from status codes (`NotFound`, `Unavailable`,
`PermissionDenied`, ...), carrying the gateway's message. Idempotent calls (reads, head, list,
status, setting retention or a legal hold) are retried with exponential backoff and jitter when
the gateway answers UNAVAILABLE (or a deadline passes); a put is retried only when its data can be
replayed from the start (bytes, a file path, a seekable file), never for a one-shot iterator. A
get interrupted mid-stream resumes where it stopped, pinned to the version it started reading, so
a retried read never mixes two versions of a key. Creates and deletes are not retried: a lost
answer would turn into a misleading ALREADY_EXISTS or NOT_FOUND.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, TypeVar

import blake3
import grpc

from orbitvault.errors import DataLoss, InvalidArgument, OrbitVaultError, Unavailable
from orbitvault.grpc import wire
from orbitvault.grpc.status import error_from_rpc
from orbitvault.grpc.tls import TlsFiles, channel_credentials, client_tls
from orbitvault.grpc.v1 import common_pb2, object_store_pb2_grpc
from orbitvault.grpc.v1 import object_store_pb2 as pb

__all__ = [
    "BucketInfo",
    "DefaultRetention",
    "DurabilityState",
    "GatewayNode",
    "GatewayStatus",
    "ListPage",
    "ObjectInfo",
    "ObjectReader",
    "ObjectStatus",
    "ObjectStoreClient",
    "RepairBacklog",
    "RestoreStatus",
    "Retention",
    "RetentionMode",
    "StorageClass",
    "TlsFiles",
]

API_KEY_HEADER = "x-orbitvault-api-key"
MFA_HEADER = "x-orbitvault-mfa"
MFA_SESSION_HEADER = "x-orbitvault-mfa-session"
MfaSource = str | Callable[[], str]
CHUNK_SIZE = 1 << 20  # data per PutObject message: about 1 MiB is what the gateway streams best
MAX_MESSAGE = 8 << 20
T = TypeVar("T")

_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


# --- result and parameter types -------------------------------------------------------------------


class RetentionMode(StrEnum):
    NONE = "none"
    GOVERNANCE = "governance"
    COMPLIANCE = "compliance"


class DurabilityState(StrEnum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    PARTIAL = "partial"
    DURABLE = "durable"
    LOST = "lost"


_MODE_TO_PB = {
    RetentionMode.NONE: pb.RETENTION_MODE_UNSPECIFIED,
    RetentionMode.GOVERNANCE: pb.RETENTION_MODE_GOVERNANCE,
    RetentionMode.COMPLIANCE: pb.RETENTION_MODE_COMPLIANCE,
}
_MODE_FROM_PB = {v: k for k, v in _MODE_TO_PB.items()}
_PUT_MODES = {None: pb.PUT_MODE_UNSPECIFIED, "direct": pb.PUT_MODE_DIRECT, "scheduled": pb.PUT_MODE_SCHEDULED}
_DURABILITY_FROM_PB = {
    pb.DURABILITY_STATE_UNSPECIFIED: DurabilityState.UNSPECIFIED,
    pb.DURABILITY_STATE_QUEUED: DurabilityState.QUEUED,
    pb.DURABILITY_STATE_PARTIAL: DurabilityState.PARTIAL,
    pb.DURABILITY_STATE_DURABLE: DurabilityState.DURABLE,
    pb.DURABILITY_STATE_LOST: DurabilityState.LOST,
}


@dataclass(frozen=True, slots=True)
class StorageClass:
    """How objects are erasure-coded: k data + m parity fragments per row; 0 = gateway default."""

    k: int = 0
    m: int = 0
    fragment_size: int = 0
    stripe_size: int = 0


@dataclass(frozen=True, slots=True)
class Retention:
    """Object lock: undeletable (and not overwritable) until `retain_until_unix_ms`."""

    mode: RetentionMode
    retain_until_unix_ms: int


@dataclass(frozen=True, slots=True)
class DefaultRetention:
    """A bucket's retention for new objects that set none: locked for `retain_for_ms` after creation."""

    mode: RetentionMode
    retain_for_ms: int


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    storage_class: StorageClass
    default_retention: DefaultRetention | None
    created_unix_ms: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    version_id: bytes
    size: int
    etag: bytes  # blake3 of the plaintext
    content_type: str
    metadata: dict[str, str]
    created_unix_ms: int
    storage_class: StorageClass
    retention: Retention | None
    legal_hold: bool
    durability: DurabilityState
    customer_key_blake3: bytes

    @property
    def version_hex(self) -> str:
        return self.version_id.hex()

    @property
    def etag_hex(self) -> str:
        return self.etag.hex()


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjects page; `next_page_token` empty on the last one."""

    objects: list[ObjectInfo]
    common_prefixes: list[str]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    version_id: bytes
    state: DurabilityState
    shards_in_orbit: int
    shards_total: int
    shards_spooled: int
    stripes_total: int
    stripes_recoverable: int
    predicted_durable_unix_ms: int
    lost_ranges: list[tuple[int, int]]  # (offset, length)
    durable_bound_unix_ms: int = 0  # lower bound for predicted_durable_unix_ms
    stripe_min_in_orbit: int = 0  # fewest shards in orbit of any stripe


@dataclass(frozen=True, slots=True)
class RestoreStatus:
    ready: bool
    eta_unix_ms: int
    expires_unix_ms: int
    eta_bound_unix_ms: int = 0  # lower bound for eta_unix_ms (downlink window capacity)


@dataclass(frozen=True, slots=True)
class GatewayNode:
    node_id: bytes
    name: str
    address: str
    satellite: str
    plane: str
    reachability: str  # in_contact, out_of_contact, down, retired, unspecified
    last_seen_unix_ms: int
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
    nodes: list[GatewayNode]
    repair: RepairBacklog
    spooled_shards: int
    spooled_bytes: int
    gateway_time_unix_ms: int  # the gateway's clock: simulated time when simulated_clock
    version: str
    mode: str = ""
    simulated_clock: bool = False
    backlog_bytes: int = 0
    backlog_durable_unix_ms: int = 0  # RPO: when the spooled backlog is DURABLE per the plan
    backlog_bound_unix_ms: int = 0  # ... and the capacity lower bound for it
    restores_in_progress: int = 0


def _storage_class(g: common_pb2.Geometry) -> StorageClass:
    return StorageClass(g.k, g.m, g.fragment_size, g.stripe_size)


def _retention_from_pb(msg: pb.Retention) -> Retention | None:
    mode = _MODE_FROM_PB.get(msg.mode, RetentionMode.NONE)
    return None if mode is RetentionMode.NONE else Retention(mode, msg.retain_until_unix_ms)


def _retention_to_pb(r: Retention | None) -> pb.Retention | None:
    if r is None:
        return None
    return pb.Retention(mode=_MODE_TO_PB[RetentionMode(r.mode)], retain_until_unix_ms=r.retain_until_unix_ms)


def _object_info(msg: pb.ObjectInfo) -> ObjectInfo:
    return ObjectInfo(
        bucket=msg.bucket,
        key=msg.key,
        version_id=bytes(msg.version_id),
        size=msg.size,
        etag=bytes(msg.etag),
        content_type=msg.content_type,
        metadata=dict(msg.metadata),
        created_unix_ms=msg.created_unix_ms,
        storage_class=_storage_class(msg.storage_class),
        retention=_retention_from_pb(msg.retention) if msg.HasField("retention") else None,
        legal_hold=msg.legal_hold,
        durability=_DURABILITY_FROM_PB.get(msg.durability, DurabilityState.UNSPECIFIED),
        customer_key_blake3=bytes(msg.customer_key_blake3),
    )


def _bucket_info(msg: pb.BucketInfo) -> BucketInfo:
    default = None
    if msg.HasField("default_retention") and msg.default_retention.mode != pb.RETENTION_MODE_UNSPECIFIED:
        default = DefaultRetention(_MODE_FROM_PB[msg.default_retention.mode], msg.default_retention.retain_for_ms)
    return BucketInfo(msg.name, _storage_class(msg.storage_class), default, msg.created_unix_ms)


def _customer_key(key: bytes | None) -> pb.CustomerKey | None:
    if key is None:
        return None
    if len(key) != 32:
        raise InvalidArgument(f"a customer key must be 32 bytes (AES-256), got {len(key)}")
    return pb.CustomerKey(key=key, key_blake3=blake3.blake3(key).digest())


# --- put sources ----------------------------------------------------------------------------------


@dataclass
class _Source:
    """Where a put's bytes come from: `open()` starts (again) from the beginning, if it can."""

    open: Callable[[], Iterator[bytes]]
    size: int | None
    replayable: bool
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def _chunks(data: bytes | bytearray | memoryview, size: int) -> Iterator[bytes]:
    view = memoryview(data).cast("B")
    for i in range(0, len(view), size):
        yield bytes(view[i : i + size])


def _file_chunks(f: IO[bytes], size: int) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk


def _rechunk(parts: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Chunks of at most `size` bytes (larger pieces are split; empty ones dropped)."""
    for part in parts:
        if not isinstance(part, bytes | bytearray | memoryview):
            raise InvalidArgument(f"put data must be bytes chunks, got {type(part).__name__}")
        if len(part) <= size:
            if part:
                yield bytes(part)
        else:
            yield from _chunks(part, size)


def _source(data: Any, size: int | None, chunk: int) -> _Source:
    if isinstance(data, bytes | bytearray | memoryview):
        n = memoryview(data).nbytes
        if size is not None and size != n:
            raise InvalidArgument(f"size={size} but the data holds {n} bytes")
        return _Source(lambda: _chunks(data, chunk), n, True)
    if isinstance(data, str | os.PathLike):
        raise InvalidArgument("put() takes data; use put_file() for a path")
    if hasattr(data, "read"):
        try:
            start = data.tell() if data.seekable() else None
        except (OSError, AttributeError):
            start = None

        def from_file() -> Iterator[bytes]:
            if start is not None:
                data.seek(start)
            return _file_chunks(data, chunk)

        return _Source(from_file, size, start is not None)
    if isinstance(data, Iterable):
        iterator = iter(data)
        used = [False]

        def once() -> Iterator[bytes]:
            if used[0]:
                raise Unavailable("the put's data iterator was already consumed; it cannot be replayed")
            used[0] = True
            return _rechunk(iterator, chunk)

        return _Source(once, size, False)
    raise InvalidArgument(f"cannot put a {type(data).__name__}: give bytes, a binary file or an iterable of bytes")


# --- reader ---------------------------------------------------------------------------------------


class ObjectReader:
    """A GetObject stream: `info` describes the object, iterating yields the range's bytes in chunks.

    Resumes transparently after UNAVAILABLE (same version, from the next unread byte) within the
    client's retry budget. Close it (or use `with`) if you stop early, to cancel the stream.
    """

    def __init__(self, client: ObjectStoreClient, request: pb.GetObjectRequest) -> None:
        self._client = client
        self._request = request
        self._call: Any = None
        self._received = 0
        self._info_pb: pb.ObjectInfo | None = None
        self._iter = self._generate()
        self.info = self._start()

    def _open(self, attempt_request: pb.GetObjectRequest) -> pb.ObjectInfo:
        self._call = self._client._get_call(
            attempt_request, metadata=self._client._metadata, timeout=self._client.stream_timeout_s
        )
        first = next(self._call, None)
        if not isinstance(first, pb.GetObjectResponse) or first.WhichOneof("body") != "info":
            raise Unavailable("the gateway ended GetObject without describing the object")
        return first.info

    def _start(self) -> ObjectInfo:
        info = self._client._retry(lambda: self._translate(lambda: self._open(self._request)), "GetObject")
        self._info_pb = info
        return _object_info(info)

    @staticmethod
    def _translate(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err

    def _expected(self) -> int:
        assert self._info_pb is not None
        size = self._info_pb.size
        end = size if not self._request.HasField("length") else min(size, self._request.offset + self._request.length)
        return max(end - self._request.offset, 0)

    def _generate(self) -> Iterator[bytes | memoryview]:
        """The range's chunks: views of the received messages (`wire.decode_get_response`), or
        bytes from a message the generated class parsed."""
        attempt = 0
        while True:
            try:
                if self._call is None:
                    self._open(self._resume_request())
                for msg in self._call:
                    if isinstance(msg, memoryview):
                        data: bytes | memoryview = msg
                    elif msg.WhichOneof("body") == "data":
                        data = msg.data
                    else:
                        raise Unavailable("the gateway sent a second description in the middle of GetObject")
                    self._received += len(data)
                    attempt = 0  # progress: the retry budget is per stall, not per object
                    yield data
                break
            except grpc.RpcError as err:
                exc = error_from_rpc(err)
                if not isinstance(exc, Unavailable) or attempt >= self._client.retries:
                    raise exc from err
            except Unavailable:
                if attempt >= self._client.retries:
                    raise
            self._call = None
            self._client._sleep_backoff(attempt)
            attempt += 1
        if self._received != self._expected():
            raise Unavailable(f"GetObject ended after {self._received} of {self._expected()} bytes; retry the read")

    def _resume_request(self) -> pb.GetObjectRequest:
        """The same read from the next unread byte, pinned to the version being read."""
        assert self._info_pb is not None
        req = pb.GetObjectRequest()
        req.CopyFrom(self._request)
        req.version_id = self._info_pb.version_id
        req.offset = self._request.offset + self._received
        if self._request.HasField("length"):
            req.length = self._request.length - self._received
        return req

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._iter)
        return chunk if isinstance(chunk, bytes) else bytes(chunk)

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The chunks as received, without a copy: memoryviews of the received messages where
        the gateway sent plain data (for callers that copy or write them anyway)."""
        return self._iter

    def read_all(self) -> bytes:
        return b"".join(self._iter)

    def close(self) -> None:
        if self._call is not None and hasattr(self._call, "cancel"):
            self._call.cancel()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- client ---------------------------------------------------------------------------------------


class ObjectStoreClient:
    """A client for one gateway. Thread-safe (one channel, shared); close it when done.

    `timeout_s` bounds unary calls; `stream_timeout_s` (None: no deadline) bounds a whole put or
    get stream, which can take as long as the object is large. `retries` extra attempts with
    `backoff_s` * 2^n (capped at `max_backoff_s`, with jitter) apply to retried calls.
    Transport: `tls` (CA, client certificate and key from `orbitvault pki issue client NAME`) for
    mutual TLS, or ready `credentials`, or a `channel`; plaintext only with `insecure=True` (local
    development): a client given none of them refuses, so no API key leaves unencrypted by accident.

    MFA (tenants with MFA delete): destructive calls (delete, delete_bucket, overwriting put,
    shortening retention, lifting a legal hold) take `mfa=` a current TOTP code; or give the
    client `mfa` once (a code, or a callable returning a fresh code, e.g. a prompt). The gateway
    answers a verified code with a session token that this client then sends instead, so a batch
    of deletes (prune) needs one code, not one per 30 s.
    """

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        stream_timeout_s: float | None = None,
        retries: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        chunk_size: int = CHUNK_SIZE,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] = time.sleep,
        tls: TlsFiles | None = None,
        insecure: bool = False,
        mfa: MfaSource | None = None,
    ) -> None:
        if not 1 <= chunk_size <= 4 << 20:
            raise InvalidArgument("chunk_size must be 1 byte to 4 MiB")
        self.address = address
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.chunk_size = chunk_size
        self._sleep = sleep
        self._metadata = ((API_KEY_HEADER, api_key),) if api_key else ()
        self._mfa_source: MfaSource | None = mfa
        self._mfa_session: str | None = None
        self._mfa_lock = threading.Lock()
        if channel is None:
            if credentials is None:
                files = client_tls(tls, insecure, "ObjectStoreClient")
                credentials = channel_credentials(files) if files is not None else None
            try:
                if credentials is not None:
                    channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
                else:
                    channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            except ValueError as exc:
                raise InvalidArgument(f"bad gateway address {address!r}: {exc}") from None
        self._channel = channel
        self._stub = object_store_pb2_grpc.ObjectStoreStub(channel)
        # PutObject fed serialized messages: the data is copied once into each (wire.py)
        self._put_call = wire.put_object_call(channel)
        self._get_call = wire.get_object_call(channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ObjectStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------------

    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        self._sleep(delay * random.uniform(0.5, 1.0))

    def _retry(self, fn: Callable[[], T], what: str, *, retry: bool = True) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Unavailable:
                if not retry or attempt >= self.retries:
                    raise
            self._sleep_backoff(attempt)
            attempt += 1

    def _unary(self, method: str, request: Any, *, retry: bool = True) -> Any:
        rpc = getattr(self._stub, method)

        def call() -> Any:
            try:
                return rpc(request, metadata=self._metadata, timeout=self.timeout_s)
            except grpc.RpcError as err:
                raise error_from_rpc(err) from err

        return self._retry(call, method, retry=retry)

    # --- MFA --------------------------------------------------------------------------------------

    def set_mfa(self, mfa: MfaSource | None) -> None:
        """A code (used once) or a code provider for the next destructive calls; drops any session."""
        with self._mfa_lock:
            self._mfa_source = mfa
            self._mfa_session = None

    @property
    def mfa_session(self) -> str | None:
        """The MFA session token the gateway issued for an earlier code (None if none yet)."""
        return self._mfa_session

    def _mfa_proof(self, explicit: str | None, *, use_source: bool = True) -> str | None:
        with self._mfa_lock:
            if explicit:
                return explicit
            if self._mfa_session:
                return self._mfa_session
            if not use_source or self._mfa_source is None:
                return None
            if callable(self._mfa_source):
                return self._mfa_source()
            code, self._mfa_source = self._mfa_source, None  # a given code is single-use
            return code

    def _keep_session(self, call: Any, proof: str | None) -> None:
        """Remember the session the gateway sent back; forget one it refused."""
        try:
            md = call.initial_metadata() or ()
        except Exception:  # a call that never started has no metadata
            md = ()
        with self._mfa_lock:
            for k, v in md:
                if k == MFA_SESSION_HEADER and isinstance(v, str):
                    self._mfa_session = v
                    return
            code = call.code() if isinstance(call, grpc.RpcError) and isinstance(call, grpc.Call) else None
            if code is grpc.StatusCode.PERMISSION_DENIED and proof and proof == self._mfa_session:
                self._mfa_session = None  # expired: the next call uses a fresh code

    def _destructive(self, method: str, request: Any, mfa: str | None, *, retry: bool, use_source: bool = True) -> Any:
        """A unary call that may need MFA: sends the proof, keeps the session it yields.
        `use_source`: ask the client-level code/provider when there is no session yet."""
        rpc = getattr(self._stub, method)

        def call() -> Any:
            proof = self._mfa_proof(mfa, use_source=use_source)
            metadata = self._metadata + (((MFA_HEADER, proof),) if proof else ())
            try:
                response, rpc_call = rpc.with_call(request, metadata=metadata, timeout=self.timeout_s)
            except grpc.RpcError as err:
                self._keep_session(err, proof)
                raise error_from_rpc(err) from err
            self._keep_session(rpc_call, proof)
            return response

        return self._retry(call, method, retry=retry)

    # --- buckets ----------------------------------------------------------------------------------

    def create_bucket(
        self,
        name: str,
        *,
        storage_class: StorageClass | None = None,
        default_retention: DefaultRetention | None = None,
    ) -> BucketInfo:
        """Create a bucket; storage_class None (or zeros) picks the gateway's default."""
        req = pb.CreateBucketRequest(bucket=name)
        if storage_class is not None:
            sc = storage_class
            req.storage_class.CopyFrom(
                common_pb2.Geometry(k=sc.k, m=sc.m, fragment_size=sc.fragment_size, stripe_size=sc.stripe_size)
            )
        if default_retention is not None:
            req.default_retention.CopyFrom(
                pb.DefaultRetention(
                    mode=_MODE_TO_PB[RetentionMode(default_retention.mode)],
                    retain_for_ms=default_retention.retain_for_ms,
                )
            )
        return _bucket_info(self._unary("CreateBucket", req, retry=False).bucket)

    def list_buckets(self, *, page_size: int = 1000) -> Iterator[BucketInfo]:
        """Every bucket of the key's tenant, in name order (pages fetched as iterated)."""
        token = ""
        while True:
            page = self._unary("ListBuckets", pb.ListBucketsRequest(page_token=token, page_size=page_size))
            for b in page.buckets:
                yield _bucket_info(b)
            token = page.next_page_token
            if not token:
                return

    def delete_bucket(self, name: str, *, mfa: str | None = None) -> None:
        """Delete an empty bucket (`mfa`: a current code when the tenant has MFA)."""
        self._destructive("DeleteBucket", pb.DeleteBucketRequest(bucket=name), mfa, retry=False)

    # --- put ----------------------------------------------------------------------------------------

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes],
        *,
        size: int | None = None,
        content_type: str = "",
        metadata: Mapping[str, str] | None = None,
        retention: Retention | None = None,
        legal_hold: bool = False,
        customer_key: bytes | None = None,
        content_blake3: bytes | None = None,
        mfa: str | None = None,
        mode: str | None = None,
    ) -> ObjectInfo:
        """Store an object from bytes, a binary file object or an iterable of byte chunks.

        Replaces the key's current object (unless it is locked; with tenant MFA replacing needs
        `mfa` or a session). Give `size` when known: the gateway then refuses a stream of a
        different length and stores nothing. `mode` "direct" or "scheduled" (None: the gateway's
        default): a scheduled put returns once the data is durably spooled on the ground (QUEUED);
        `wait_durable` waits until it is all in orbit.
        """
        source = _source(data, size, self.chunk_size)
        return self._put(
            bucket,
            key,
            source,
            content_type=content_type,
            metadata=metadata,
            retention=retention,
            legal_hold=legal_hold,
            customer_key=customer_key,
            content_blake3=content_blake3,
            mfa=mfa,
            mode=mode,
        )

    def put_file(self, bucket: str, key: str, path: str | os.PathLike[str], **kwargs: Any) -> ObjectInfo:
        """Store a file (replayable, so an UNAVAILABLE gateway is retried from the start)."""
        p = Path(path)
        try:
            f = p.open("rb")
        except OSError as exc:
            raise InvalidArgument(f"cannot read {p}: {exc.strerror}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            return self._put(bucket, key, _source(f, size, self.chunk_size), **kwargs)

    def _put(
        self,
        bucket: str,
        key: str,
        source: _Source,
        *,
        content_type: str = "",
        metadata: Mapping[str, str] | None = None,
        retention: Retention | None = None,
        legal_hold: bool = False,
        customer_key: bytes | None = None,
        content_blake3: bytes | None = None,
        mfa: str | None = None,
        mode: str | None = None,
    ) -> ObjectInfo:
        if mode not in _PUT_MODES:
            raise InvalidArgument(f"put mode must be 'direct', 'scheduled' or None, got {mode!r}")
        start = pb.PutObjectStart(
            bucket=bucket,
            key=key,
            content_type=content_type,
            metadata=dict(metadata or {}),
            legal_hold=legal_hold,
            content_blake3=content_blake3 or b"",
            mode=_PUT_MODES[mode],
        )
        if source.size is not None:
            start.size = source.size
        if (r := _retention_to_pb(retention)) is not None:
            start.retention.CopyFrom(r)
        if (ck := _customer_key(customer_key)) is not None:
            start.customer_key.CopyFrom(ck)
        failure: list[BaseException] = []

        def messages() -> Iterator[bytes]:
            yield pb.PutObjectRequest(start=start).SerializeToString()
            try:
                for chunk in source.open():
                    yield wire.encode_data(chunk)
            except BaseException as exc:  # reading the source failed: report that, not CANCELLED
                failure.append(exc)
                raise

        def attempt() -> pb.PutObjectResponse:
            failure.clear()
            # Only an explicit code or a session: a put that creates a key needs none, so the
            # provider (which may prompt someone) is not asked for every put.
            proof = self._mfa_proof(mfa, use_source=False)
            metadata = self._metadata + (((MFA_HEADER, proof),) if proof else ())
            try:
                response, call = self._put_call.with_call(messages(), metadata=metadata, timeout=self.stream_timeout_s)
                self._keep_session(call, proof)
                return response
            except grpc.RpcError as err:
                self._keep_session(err, proof)
                if failure:
                    exc = failure[0]
                    if isinstance(exc, OrbitVaultError):
                        raise exc from None
                    raise InvalidArgument(f"reading the data to put failed: {exc!r}") from exc
                raise error_from_rpc(err) from err

        return _object_info(self._retry(attempt, "PutObject", retry=source.replayable).object)

    # --- get ----------------------------------------------------------------------------------------

    def _get_request(
        self,
        bucket: str,
        key: str,
        offset: int,
        length: int | None,
        version_id: bytes | None,
        customer_key: bytes | None,
    ) -> pb.GetObjectRequest:
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument("offset and length must not be negative")
        req = pb.GetObjectRequest(bucket=bucket, key=key, offset=offset, version_id=version_id or b"")
        if length is not None:
            req.length = length
        if (ck := _customer_key(customer_key)) is not None:
            req.customer_key.CopyFrom(ck)
        return req

    def open(
        self,
        bucket: str,
        key: str,
        *,
        offset: int = 0,
        length: int | None = None,
        version_id: bytes | None = None,
        customer_key: bytes | None = None,
    ) -> ObjectReader:
        """Start reading an object (or the byte range offset..offset+length); stream the chunks."""
        return ObjectReader(self, self._get_request(bucket, key, offset, length, version_id, customer_key))

    def get(self, bucket: str, key: str, **kwargs: Any) -> bytes:
        """The object's bytes (or a range: offset=, length=) in memory; see `open` for streaming."""
        with self.open(bucket, key, **kwargs) as reader:
            return reader.read_all()

    def get_into(self, bucket: str, key: str, out: IO[bytes], **kwargs: Any) -> ObjectInfo:
        """Write the object (or a range) to a binary stream; returns its description."""
        with self.open(bucket, key, **kwargs) as reader:
            for chunk in reader.chunks():
                out.write(chunk)
            return reader.info

    def get_file(self, bucket: str, key: str, path: str | os.PathLike[str], **kwargs: Any) -> ObjectInfo:
        """Download to `path`: written to a temporary file beside it and renamed once complete, so
        a failed download never leaves a truncated file under the final name."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        try:
            with tmp.open("wb") as f:
                info = self.get_into(bucket, key, f, **kwargs)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return info

    # --- head, list, delete, lock, status -----------------------------------------------------------

    def head(self, bucket: str, key: str, *, version_id: bytes | None = None) -> ObjectInfo:
        req = pb.HeadObjectRequest(bucket=bucket, key=key, version_id=version_id or b"")
        return _object_info(self._unary("HeadObject", req).object)

    def list_page(
        self, bucket: str, *, prefix: str = "", delimiter: str = "", page_token: str = "", page_size: int = 1000
    ) -> ListPage:
        req = pb.ListObjectsRequest(
            bucket=bucket, prefix=prefix, delimiter=delimiter, page_token=page_token, page_size=page_size
        )
        page = self._unary("ListObjects", req)
        return ListPage([_object_info(o) for o in page.objects], list(page.common_prefixes), page.next_page_token)

    def list_pages(
        self, bucket: str, *, prefix: str = "", delimiter: str = "", page_size: int = 1000
    ) -> Iterator[ListPage]:
        """Every page of a listing (with a delimiter, pages carry common prefixes too)."""
        token = ""
        while True:
            page = self.list_page(bucket, prefix=prefix, delimiter=delimiter, page_token=token, page_size=page_size)
            yield page
            token = page.next_page_token
            if not token:
                return

    def list(self, bucket: str, *, prefix: str = "", page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object in the bucket (under `prefix`) in key order, fetching pages as iterated."""
        for page in self.list_pages(bucket, prefix=prefix, page_size=page_size):
            yield from page.objects

    def delete(
        self,
        bucket: str,
        key: str,
        *,
        version_id: bytes | None = None,
        bypass_governance: bool = False,
        mfa: str | None = None,
    ) -> bytes:
        """Delete the object; returns the version id deleted. `mfa`: a current TOTP code when the
        tenant has MFA (or give the client one: see the class docstring)."""
        req = pb.DeleteObjectRequest(
            bucket=bucket, key=key, version_id=version_id or b"", bypass_governance=bypass_governance
        )
        return bytes(self._destructive("DeleteObject", req, mfa, retry=False).version_id)

    def set_retention(
        self,
        bucket: str,
        key: str,
        retention: Retention | None,
        *,
        version_id: bytes | None = None,
        bypass_governance: bool = False,
        mfa: str | None = None,
    ) -> ObjectInfo:
        """Set, extend or (governance with bypass only, and `mfa` with tenant MFA) shorten or remove
        an object's retention."""
        req = pb.SetObjectRetentionRequest(
            bucket=bucket, key=key, version_id=version_id or b"", bypass_governance=bypass_governance
        )
        if (r := _retention_to_pb(retention)) is not None:
            req.retention.CopyFrom(r)
        # Extending needs no code: only an explicit one (or a session) is sent, never a prompt.
        return _object_info(self._destructive("SetObjectRetention", req, mfa, retry=True, use_source=False).object)

    def set_legal_hold(
        self, bucket: str, key: str, hold: bool, *, version_id: bytes | None = None, mfa: str | None = None
    ) -> ObjectInfo:
        """Place or lift a legal hold (lifting one needs `mfa` when the tenant has MFA)."""
        req = pb.SetLegalHoldRequest(bucket=bucket, key=key, version_id=version_id or b"", legal_hold=hold)
        return _object_info(self._destructive("SetLegalHold", req, mfa, retry=True, use_source=not hold).object)

    def status(self, bucket: str, key: str, *, version_id: bytes | None = None) -> ObjectStatus:
        """Orbit durability of an object: queued / partial / durable / lost and shard counts."""
        req = pb.GetObjectStatusRequest(bucket=bucket, key=key, version_id=version_id or b"")
        r = self._unary("GetObjectStatus", req)
        return ObjectStatus(
            version_id=bytes(r.version_id),
            state=_DURABILITY_FROM_PB.get(r.state, DurabilityState.UNSPECIFIED),
            shards_in_orbit=r.shards_in_orbit,
            shards_total=r.shards_total,
            shards_spooled=r.shards_spooled,
            stripes_total=r.stripes_total,
            stripes_recoverable=r.stripes_recoverable,
            predicted_durable_unix_ms=r.predicted_durable_unix_ms,
            lost_ranges=[(x.offset, x.length) for x in r.lost_ranges],
            durable_bound_unix_ms=r.durable_bound_unix_ms,
            stripe_min_in_orbit=r.stripe_min_in_orbit,
        )

    def wait_durable(
        self,
        bucket: str,
        key: str,
        *,
        version_id: bytes | None = None,
        timeout_s: float = 600.0,
        poll_s: float = 0.2,
        on_progress: Callable[[ObjectStatus], None] | None = None,
    ) -> ObjectStatus:
        """Poll GetObjectStatus until the object is DURABLE (all k+m shards in orbit).

        Polls every `poll_s` real seconds (a gateway on a simulated clock moves through a day of
        passes in seconds, so the wait is short); `on_progress` sees every answer. Raises
        Unavailable after `timeout_s`, DataLoss if the object is LOST.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status(bucket, key, version_id=version_id)
            if on_progress is not None:
                on_progress(st)
            if st.state is DurabilityState.DURABLE:
                return st
            if st.state is DurabilityState.LOST:
                raise DataLoss(f"object {key!r} is LOST: ranges {st.lost_ranges} cannot be recovered")
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"object {key!r} is still {st.state.value} after {timeout_s:g}s "
                    f"({st.shards_in_orbit} of {st.shards_total} shards in orbit)"
                )
            time.sleep(poll_s)

    def restore(self, bucket: str, key: str, *, version_id: bytes | None = None, keep_for_ms: int = 0) -> RestoreStatus:
        """Stage an object whose shards are only reachable in future contact windows: READY now,
        or IN_PROGRESS with the ETA the gateway's contact plan gives (call again to poll)."""
        req = pb.RestoreObjectRequest(bucket=bucket, key=key, version_id=version_id or b"", keep_for_ms=keep_for_ms)
        r = self._unary("RestoreObject", req)
        return RestoreStatus(r.state == pb.RESTORE_STATE_READY, r.eta_unix_ms, r.expires_unix_ms, r.eta_bound_unix_ms)

    def wait_ready(
        self,
        bucket: str,
        key: str,
        *,
        version_id: bytes | None = None,
        keep_for_ms: int = 0,
        timeout_s: float = 600.0,
        poll_s: float = 0.2,
        on_progress: Callable[[RestoreStatus], None] | None = None,
    ) -> RestoreStatus:
        """Restore an object and poll until it is READY (then `get` reads it); see `restore`."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.restore(bucket, key, version_id=version_id, keep_for_ms=keep_for_ms)
            if on_progress is not None:
                on_progress(st)
            if st.ready:
                return st
            if time.monotonic() >= deadline:
                raise Unavailable(f"restore of {key!r} not ready after {timeout_s:g}s (ETA {st.eta_unix_ms} unix ms)")
            time.sleep(poll_s)

    def gateway_status(self) -> GatewayStatus:
        """Nodes as the gateway sees them and the repair backlog."""
        r = self._unary("GetGatewayStatus", pb.GetGatewayStatusRequest())
        nodes = [
            GatewayNode(
                node_id=bytes(n.node_id),
                name=n.name,
                address=n.address,
                satellite=n.satellite,
                plane=n.plane,
                reachability=pb.NodeReachability.Name(n.reachability).removeprefix("NODE_REACHABILITY_").lower(),
                last_seen_unix_ms=n.last_seen_unix_ms,
                capacity_bytes=n.capacity_bytes,
                used_bytes=n.used_bytes,
                shard_count=n.shard_count,
            )
            for n in r.nodes
        ]
        rb = r.repair
        repair = RepairBacklog(
            rb.shards_missing, rb.rows_damaged, rb.bytes_pending, rb.stripes_at_risk, rb.oldest_pending_unix_ms
        )
        return GatewayStatus(
            nodes,
            repair,
            r.spooled_shards,
            r.spooled_bytes,
            r.gateway_time_unix_ms,
            r.version,
            r.mode,
            r.simulated_clock,
            r.backlog_bytes,
            r.backlog_durable_unix_ms,
            r.backlog_bound_unix_ms,
            r.restores_in_progress,
        )


def blake3_of(data: bytes | IO[bytes]) -> bytes:
    """blake3 of bytes or a binary stream (for `content_blake3`, so the gateway verifies the upload)."""
    h = blake3.blake3()
    if isinstance(data, bytes | bytearray | memoryview):
        h.update(data)
    else:
        for chunk in _file_chunks(data, CHUNK_SIZE):
            h.update(chunk)
    return h.digest()
