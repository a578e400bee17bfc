"""`NodeLink` over gRPC: how the gateway's domain reaches one storage node's ShardStore.

One channel per node, kept open (grpc channels are thread-safe, so the put pipeline's threads share
it), mutual TLS with the gateway's certificate when `credentials` are given (`tls.py`; nodes take
shard writes from gateway and node certificates only). Every call has a deadline, so a node that
hangs costs the caller one timeout and then looks like a node that is down: UNAVAILABLE,
DEADLINE_EXCEEDED and CANCELLED all become `Unavailable` (via `status.error_from_rpc`), which is
what the domain needs to pick another node.

- PutShard re-packs the domain's row batches into messages of about 1 MiB (at most 1024 rows), so
  the domain may hand over rows in whatever batches its coder produces.
- GetShard of a row range: a node that could not repair some rows sends every healthy row, marks
  the damaged ones as empty fragments and ends with DATA_LOSS. That is not an error here: the
  result is a `FetchedRows` with None for those rows, so the domain decodes exactly them from
  other shards. A DATA_LOSS before all rows arrived (e.g. an unreadable header) stays an error.
- ListShards pages are followed until `limit` shards are collected or the node has no more.
- Scheduled mode: `put_rows` is PutShard with an upload id (rows commit as they arrive, a cut
  stream keeps them), `head_shard` is HeadShard (NOT_FOUND -> None), `forward_shard` is
  ForwardShard with a row limit (what one inter-satellite window carries).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import grpc

from orbitvault.erasure.stripe import CHECKSUM_LEN
from orbitvault.errors import DataLoss, InvalidArgument, NotFound, OrbitVaultError, Unavailable
from orbitvault.ground.ports import FetchedRows, NodeStatus, UploadProgress
from orbitvault.grpc import convert, wire
from orbitvault.grpc.status import error_from_rpc
from orbitvault.grpc.tls import open_channel
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.grpc.v1 import shard_store_pb2_grpc
from orbitvault.storage.header import ID_LEN, ShardHeader
from orbitvault.storage.store import RowBatch, ShardInfo

# Framing allowance per row when packing messages (tags, lengths).
_ROW_OVERHEAD = 16
# ListShards serves at most this many per page.
_LIST_PAGE = 1000
# A node that was down is retried quickly once it is back: grpc's default reconnect backoff grows
# to two minutes, which would keep a restarted node "down" long after it answers again; a
# NodeInfo probe of a node that is still down costs one refused connection per second at most.
LINK_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *convert.CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class GrpcNodeLink:
    """One storage node as the gateway uses it (implements `orbitvault.ground.ports.NodeLink`).

    `timeout_s` bounds small calls; bulk calls get `timeout_s` plus the time their bytes take at
    `min_rate_bytes_per_s`, so a slow but live node is not cut off while a hung one is.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        info_timeout_s: float = 3.0,
        min_rate_bytes_per_s: float = 2_000_000.0,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self._credentials = credentials
        self.timeout_s = timeout_s
        self.info_timeout_s = info_timeout_s
        self.min_rate_bytes_per_s = min_rate_bytes_per_s
        self._lock = threading.Lock()
        self._channel = channel
        self._stub: shard_store_pb2_grpc.ShardStoreStub | None = None
        self._put: grpc.StreamUnaryMultiCallable | None = None  # PutShard fed serialized messages
        self._closed = False

    def __repr__(self) -> str:
        return f"GrpcNodeLink({self.address!r})"

    # --- lifecycle ------------------------------------------------------------------------------

    def _get_stub(self) -> shard_store_pb2_grpc.ShardStoreStub:
        with self._lock:
            if self._closed:
                raise Unavailable(f"the link to node {self.address} is closed")
            if self._stub is None:
                if self._channel is None:
                    try:
                        self._channel = open_channel(
                            self.address, None, LINK_CHANNEL_OPTIONS, credentials=self._credentials
                        )
                    except ValueError as exc:
                        raise Unavailable(f"cannot open a channel to node {self.address}: {exc}") from exc
                self._stub = shard_store_pb2_grpc.ShardStoreStub(self._channel)
                self._put = wire.put_shard_call(self._channel)
            return self._stub

    def _put_shard(self) -> grpc.StreamUnaryMultiCallable:
        self._get_stub()
        assert self._put is not None
        return self._put

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._stub = None
            self._put = None

    def __enter__(self) -> GrpcNodeLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, err: grpc.RpcError, what: str) -> OrbitVaultError:
        """The orbitvault error for a failed call, naming the node (the domain logs and reports it)."""
        exc = error_from_rpc(err)
        return type(exc)(f"node {self.address}: {what}: {exc}") if str(exc) else exc

    def _bulk_timeout(self, nbytes: int) -> float:
        return self.timeout_s + nbytes / self.min_rate_bytes_per_s

    # --- NodeInfo ---------------------------------------------------------------------------------

    def info(self) -> NodeStatus:
        try:
            msg = self._get_stub().NodeInfo(pb.NodeInfoRequest(), timeout=self.info_timeout_s)
        except grpc.RpcError as err:
            raise self._error(err, "NodeInfo failed") from err
        if len(msg.node_id) != ID_LEN:
            raise Unavailable(f"node {self.address} answered NodeInfo without a valid node id")
        return NodeStatus(
            node_id=bytes(msg.node_id),
            name=msg.name,
            plane=msg.plane,
            capacity_bytes=msg.capacity_bytes,
            used_bytes=msg.used_bytes,
            shard_count=msg.shard_count,
            satellite=msg.satellite,
        )

    # --- PutShard ---------------------------------------------------------------------------------

    def put_shard(self, header: ShardHeader, rows: Iterable[RowBatch]) -> None:
        """Stream the whole shard; returns once the node has committed (synced) it."""
        start = pb.PutShardStart(header=convert.header_to_proto(header))
        self._stream_put(header, start, rows, f"PutShard {header.shard_id.hex()[:16]} failed")

    def put_rows(
        self, header: ShardHeader, upload_id: bytes, rows: Iterable[RowBatch], *, resume: bool
    ) -> UploadProgress:
        """A resumable PutShard carrying `rows` (a row range); returns what the node has committed."""
        sent = [0]

        def counted() -> Iterator[RowBatch]:
            for batch in rows:
                sent[0] += sum(len(f) for f in batch.fragments) + sum(len(c) for c in batch.checksums)
                yield batch

        start = pb.PutShardStart(header=convert.header_to_proto(header), upload_id=upload_id, resume=resume)
        resp = self._stream_put(header, start, counted(), f"PutShard (upload) {header.shard_id.hex()[:16]} failed")
        return UploadProgress(resp.committed_rows, resp.complete, sent[0], upload_id)

    def _stream_put(
        self, header: ShardHeader, start: pb.PutShardStart, rows: Iterable[RowBatch], what: str
    ) -> pb.PutShardResponse:
        """One PutShard call: `start`, then the rows as serialized messages (wire.py)."""
        failure: list[BaseException] = []  # an error raised by `rows` itself, not by the transport

        def messages() -> Iterator[bytes]:
            yield pb.PutShardRequest(start=start).SerializeToString()
            try:
                yield from _pack_rows(rows)
            except BaseException as exc:
                failure.append(exc)
                raise

        frag_len = header.geometry.fragment_size + 80 + 32
        try:
            return self._put_shard()(messages(), timeout=self._bulk_timeout(header.row_count * frag_len))
        except grpc.RpcError as err:
            if failure:  # grpc cancels the call when the request iterator raises; the cause is ours
                raise failure[0] from None
            raise self._error(err, what) from err

    def head_shard(self, shard_id: bytes) -> UploadProgress | None:
        try:
            msg = self._get_stub().HeadShard(pb.HeadShardRequest(shard_id=shard_id), timeout=self.timeout_s)
        except grpc.RpcError as err:
            exc = self._error(err, f"HeadShard {shard_id.hex()[:16]} failed")
            if isinstance(exc, NotFound):
                return None
            raise exc from err
        info = msg.shard
        complete = info.state == pb.SHARD_STATE_COMPLETE
        rows = info.header.row_count if complete else info.committed_rows
        return UploadProgress(rows, complete, 0, bytes(info.upload_id))

    def forward_shard(
        self,
        shard_id: bytes,
        target_address: str,
        *,
        target_node_id: bytes,
        upload_id: bytes,
        row_limit: int = 0,
        delete_after: bool = False,
    ) -> UploadProgress:
        request = pb.ForwardShardRequest(
            shard_id=shard_id,
            target_address=target_address,
            target_node_id=target_node_id,
            upload_id=upload_id,
            row_limit=row_limit,
            delete_after=delete_after,
        )
        try:
            resp = self._get_stub().ForwardShard(request, timeout=self._bulk_timeout(64 << 20))
        except grpc.RpcError as err:
            raise self._error(err, f"ForwardShard {shard_id.hex()[:16]} to {target_address} failed") from err
        return UploadProgress(resp.committed_rows, resp.complete, resp.bytes_sent, upload_id)

    # --- GetShard ---------------------------------------------------------------------------------

    def get_rows(self, shard_id: bytes, first_row: int, row_count: int) -> FetchedRows:
        """Rows [first_row, first_row + row_count); rows the node reported damaged come back as None."""
        if row_count <= 0:
            raise InvalidArgument(f"row_count must be positive, got {row_count}")
        request = pb.GetShardRequest(shard_id=shard_id, rows=pb.RowRange(first_row=first_row, row_count=row_count))
        fragments: list[bytes | None] = []
        checksums: list[bytes] = []
        # Generous: a range is at most one shard of one stripe.
        timeout = self._bulk_timeout(row_count * (64 * 1024 + 112))
        try:
            for msg in self._get_stub().GetShard(request, timeout=timeout):
                if msg.WhichOneof("body") != "rows":
                    continue
                self._take(msg.rows, first_row, row_count, fragments, checksums)
        except grpc.RpcError as err:
            exc = error_from_rpc(err)
            if not (isinstance(exc, DataLoss) and len(fragments) == row_count):
                raise self._error(err, f"GetShard {shard_id.hex()[:16]} failed") from err
            # Every row arrived; the damaged ones are the empty fragments, already None.
        if len(fragments) != row_count:
            raise Unavailable(
                f"node {self.address} ended GetShard {shard_id.hex()[:16]} after {len(fragments)} of {row_count} rows"
            )
        return FetchedRows(first_row=first_row, fragments=fragments, checksums=checksums)

    def _take(
        self,
        batch: pb.RowBatch,
        first_row: int,
        row_count: int,
        fragments: list[bytes | None],
        checksums: list[bytes],
    ) -> None:
        """Append one RowBatch, checking it continues the range (a node answering something else
        is treated as broken, not trusted)."""
        n = len(batch.fragments)
        if batch.first_row != first_row + len(fragments) or len(batch.checksums) != n:
            raise Unavailable(f"node {self.address} sent rows out of order or without checksums")
        if len(fragments) + n > row_count:
            raise Unavailable(f"node {self.address} sent more rows than the {row_count} asked")
        for frag, digest in zip(batch.fragments, batch.checksums, strict=True):
            if len(digest) != CHECKSUM_LEN:
                raise Unavailable(f"node {self.address} sent a checksum of {len(digest)} bytes")
            fragments.append(bytes(frag) if frag else None)
            checksums.append(bytes(digest))

    # --- DeleteShard, ListShards --------------------------------------------------------------------

    def delete_shard(self, shard_id: bytes) -> None:
        """Idempotent: deleting an absent shard succeeds."""
        try:
            self._get_stub().DeleteShard(pb.DeleteShardRequest(shard_id=shard_id), timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise self._error(err, f"DeleteShard {shard_id.hex()[:16]} failed") from err

    def list_shards(
        self, *, after: bytes = b"", limit: int = 1000, include_catalog_records: bool = False
    ) -> list[ShardInfo]:
        """Shards in ascending id order after `after`, following pages up to `limit` shards."""
        out: list[ShardInfo] = []
        token = after.hex()
        while len(out) < limit:
            request = pb.ListShardsRequest(
                page_size=min(limit - len(out), _LIST_PAGE),
                page_token=token,
                include_catalog_records=include_catalog_records,
            )
            try:
                page = self._get_stub().ListShards(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                raise self._error(err, "ListShards failed") from err
            for i, msg in enumerate(page.shards):
                try:
                    out.append(convert.shard_info_from_proto(msg, f"shards[{i}]"))
                except InvalidArgument as exc:
                    # One unreadable header must not hide the rest of the node's shards.
                    raise DataLoss(f"node {self.address} listed a shard with a bad header: {exc}") from exc
            token = page.next_page_token
            if not token:
                break
        return out[:limit]


def _pack_rows(batches: Iterable[RowBatch]) -> Iterator[bytes]:
    """Rows in serialized messages of about 1 MiB and at most 1024 rows; a larger fragment travels alone."""
    frags: list[bytes] = []
    sums: list[bytes] = []
    first = 0
    size = 0
    expected: int | None = None
    for batch in batches:
        if expected is not None and batch.first_row != expected and frags:
            # The domain skipped rows: flush so each message stays contiguous (the node refuses gaps).
            yield wire.encode_rows(first, frags, sums)
            frags, sums, size = [], [], 0
        for i, (frag, digest) in enumerate(zip(batch.fragments, batch.checksums, strict=True)):
            row = batch.first_row + i
            n = len(frag) + len(digest) + _ROW_OVERHEAD
            if frags and (size + n > convert.TARGET_MESSAGE_BYTES or len(frags) >= convert.MAX_ROWS_PER_MESSAGE):
                yield wire.encode_rows(first, frags, sums)
                frags, sums, size = [], [], 0
            if not frags:
                first = row
            frags.append(frag)
            sums.append(digest)
            size += n
        expected = batch.first_row + len(batch.fragments)
    if frags:
        yield wire.encode_rows(first, frags, sums)
