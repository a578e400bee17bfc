"""The ShardStore gRPC servicer: a thin adapter over the domain `orbitvault.storage.store.ShardStore`.

It converts and bounds what arrives (`convert`), calls the store, and packs what goes out into
messages of about 1 MiB; every raised orbitvault error becomes its status in `status.rpc_errors`.
PutShard is all-or-nothing without an upload id (direct mode) and resumable with one (scheduled
mode: rows commit as they arrive, HeadShard tells where to continue). ForwardShard is
store-and-forward over an inter-satellite link: this node pushes a complete shard it holds to a
peer with a resumable PutShard, starting where the peer's upload stands (HeadShard), sending only
rows the peer lacks, up to the row limit the scheduler planned for the window (or until the
deadline, paced at the rate limit). The peer channel uses the node's own mTLS certificate.

Authorization (mTLS, `tls.RoleCheck`): every call, write or read, needs a gateway or node
certificate; a client certificate is refused with PERMISSION_DENIED before a byte of a stream is
read. Clients reach data only through the gateway, which enforces tenants, keys and object lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import grpc

from orbitvault import __version__
from orbitvault.errors import DataLoss, FailedPrecondition, InvalidArgument, OrbitVaultError, Unavailable
from orbitvault.grpc import convert, wire
from orbitvault.grpc.status import error_from_rpc, rpc_errors
from orbitvault.grpc.tls import NODE_OR_GATEWAY, RoleCheck, TlsFiles, open_channel
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.grpc.v1 import shard_store_pb2_grpc
from orbitvault.orbit.clock import Clock, WallClock
from orbitvault.storage.header import ShardHeader, Sibling
from orbitvault.storage.scrubber import ScrubState, format_rows, load_state, process_alive
from orbitvault.storage.store import RowBatch, RowRead, RowStatus, ShardStore

log = logging.getLogger("orbitvault.node")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Per-message framing allowance when packing rows (tags, lengths, the row number).
_ROW_OVERHEAD = 16
# ForwardShard: bounds on what a request may name, and how long calls to the peer may take.
_MAX_ADDRESS = 255
_PEER_TIMEOUT_S = 10.0
_PEER_MIN_RATE = 2_000_000.0

# Rebuild `rows` of the shard from peers and store them (store.write_row); return the rows it
# repaired. Raising, or leaving a row out, means that row could not be repaired.
Repairer = Callable[[ShardHeader, Sequence[int]], Iterable[int]]

_SCRUB_ACTIVITY = {"idle": pb.SCRUB_ACTIVITY_IDLE, "running": pb.SCRUB_ACTIVITY_RUNNING}


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What NodeInfo reports besides the store's own figures (from the node's configuration)."""

    name: str
    satellite: str = ""
    plane: str = ""
    scrub_in_process: bool = False
    scrub_rate_bytes_per_s: int = 0


class ShardStoreService(shard_store_pb2_grpc.ShardStoreServicer):
    """Serves one node's store. Thread-safe: the store is, and the servicer keeps only counters."""

    def __init__(
        self,
        store: ShardStore,
        identity: NodeIdentity,
        *,
        clock: Clock | None = None,
        repair: Repairer | None = None,
        max_concurrent_puts: int = 4,
        put_wait_s: float = 5.0,
        roles: RoleCheck | None = None,
        peer_tls: TlsFiles | None = None,
    ) -> None:
        self.store = store
        self.peer_tls = peer_tls
        self._peer_lock = threading.Lock()
        # per peer address: its channel, a stub, and PutShard fed serialized messages (wire.py)
        self._peers: dict[
            str, tuple[grpc.Channel, shard_store_pb2_grpc.ShardStoreStub, grpc.StreamUnaryMultiCallable]
        ] = {}
        self.roles = roles or RoleCheck(tls=False)
        self.identity = identity
        self.clock = clock or WallClock()
        self.repair = repair
        self.max_concurrent_puts = max_concurrent_puts
        self._put_slots = threading.BoundedSemaphore(max_concurrent_puts)
        self._put_wait_s = put_wait_s
        self._active = 0
        self._idle = threading.Condition()

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channels ForwardShard opened to peers."""
        with self._peer_lock:
            for channel, _stub, _put in self._peers.values():
                channel.close()
            self._peers.clear()

    @property
    def puts_in_flight(self) -> int:
        with self._idle:
            return self._active

    def wait_puts_done(self, timeout: float | None) -> bool:
        """Block until no put is running (the store may be closed then); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    @contextmanager
    def _put_slot(self) -> Iterator[None]:
        # Each put buffers up to one whole shard before its commit, so the number of puts at once
        # is what bounds the node's memory; a caller beyond it retries later (or elsewhere).
        if not self._put_slots.acquire(timeout=self._put_wait_s):
            raise Unavailable(
                f"node busy: {self.max_concurrent_puts} uploads in progress; retry later or use another node"
            )
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()
            self._put_slots.release()

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _authorize(self, context: grpc.ServicerContext, method: str) -> None:
        """Writes (PutShard, DeleteShard, ForwardShard) and reads alike: gateways and peer nodes only."""
        self.roles.require(context, NODE_OR_GATEWAY, method)

    # --- PutShard -------------------------------------------------------------------------------

    @rpc_errors
    def PutShard(
        self, request_iterator: Iterator[pb.PutShardRequest | wire.Rows], context: grpc.ServicerContext
    ) -> pb.PutShardResponse:
        self._authorize(context, "PutShard")
        with self._put_slot():
            first = next(request_iterator, None)
            if first is None:
                raise InvalidArgument("empty PutShard stream: the first message must be `start` with the header")
            if isinstance(first, wire.Rows) or first.WhichOneof("body") != "start":
                raise InvalidArgument("the first PutShard message must be `start` with the header")
            start = first.start
            if not start.HasField("header"):
                raise InvalidArgument("start.header is required")
            header = convert.header_from_proto(start.header, "start.header")
            if start.upload_id or start.resume:
                return self._put_resumable(start, header, request_iterator)
            began = time.monotonic()
            info = self.store.put(header, self._batches(request_iterator, header))
            committed = self._now_ms()
            log.info(
                "put committed shard=%s object=%s rows=%d bytes=%d ms=%.1f",
                header.shard_id.hex(),
                header.object_id.hex(),
                header.row_count,
                info.stored_bytes,
                (time.monotonic() - began) * 1000,
            )
            return pb.PutShardResponse(
                shard_id=header.shard_id,
                complete=True,
                committed_rows=header.row_count,
                stored_bytes=info.stored_bytes,
                committed_unix_ms=committed,
            )

    def _put_resumable(
        self, start: pb.PutShardStart, header: ShardHeader, requests: Iterator[pb.PutShardRequest | wire.Rows]
    ) -> pb.PutShardResponse:
        """Scheduled mode: rows commit as they arrive; a cut stream keeps them for a resume."""
        if not start.upload_id:
            raise InvalidArgument("resume needs the upload_id of the transfer to continue")
        now = self._now_ms()
        self.store.expire_uploads(now)
        state = self.store.put_rows(
            header, bytes(start.upload_id), self._batches(requests, header), now_unix_ms=now, resume=start.resume
        )
        log.info(
            "upload shard=%s committed_rows=%d of %d complete=%s",
            header.shard_id.hex(),
            state.committed_rows,
            header.row_count,
            state.complete,
        )
        return pb.PutShardResponse(
            shard_id=header.shard_id,
            complete=state.complete,
            committed_rows=state.committed_rows,
            stored_bytes=self.store.required_bytes(header) if state.complete else 0,
            committed_unix_ms=self._now_ms(),
            upload_expires_unix_ms=state.expires_unix_ms,
        )

    @staticmethod
    def _batches(requests: Iterator[pb.PutShardRequest | wire.Rows], header: ShardHeader) -> Iterator[RowBatch]:
        """The rest of the stream as domain batches; anything but `rows` is refused. A broken
        stream raises out of here and through store.put, which then stores nothing."""
        for i, msg in enumerate(requests, start=2):
            # `rows` usually arrives decoded without copies (wire.Rows); the generated class otherwise.
            kind = "rows" if isinstance(msg, wire.Rows) else msg.WhichOneof("body")
            if kind == "rows":
                rows = msg if isinstance(msg, wire.Rows) else msg.rows
                yield convert.row_batch_from_proto(rows, header, f"message {i} (rows)")
            elif kind == "start":
                raise InvalidArgument(f"message {i} is a second `start`; only the first message may be `start`")
            else:
                raise InvalidArgument(f"message {i} is empty: every message after `start` carries rows")

    # --- GetShard -------------------------------------------------------------------------------

    @rpc_errors
    def GetShard(self, request: pb.GetShardRequest, context: grpc.ServicerContext) -> Iterator[pb.GetShardResponse]:
        self._authorize(context, "GetShard")
        sid = convert.check_id(request.shard_id, "shard_id")
        header = self.store.header(sid)
        rows = convert.row_range(request, header.row_count)
        if request.include_header:
            yield pb.GetShardResponse(header=convert.header_to_proto(header))
        first = rows.start
        frags: list[bytes] = []
        sums: list[bytes] = []
        size = 0
        damaged: list[int] = []
        for r in self._read_repaired(header, rows):
            if r.status is RowStatus.OK and r.fragment is not None:
                frag = r.fragment
            else:  # proto: an empty fragment with the checksum it should have; the reader decodes it elsewhere
                frag = b""
                damaged.append(r.row)
            if frags and size + len(frag) > 2 * convert.TARGET_MESSAGE_BYTES:
                yield convert.rows_response(first, frags, sums)
                first, frags, sums, size = r.row, [], [], 0
            frags.append(frag)
            sums.append(r.checksum)
            size += len(frag) + len(r.checksum) + _ROW_OVERHEAD
            if size >= convert.TARGET_MESSAGE_BYTES or len(frags) >= convert.MAX_ROWS_PER_MESSAGE:
                yield convert.rows_response(first, frags, sums)
                first, frags, sums, size = r.row + 1, [], [], 0
        if frags:
            yield convert.rows_response(first, frags, sums)
        if damaged:
            # Every healthy row has been sent; the status names the rest, so a reader keeps what it
            # got and decodes exactly these rows from other shards.
            log.warning("get sent damaged rows as empty shard=%s rows=%s", sid.hex(), format_rows(damaged))
            raise DataLoss(
                f"shard {sid.hex()} rows {format_rows(damaged)} are damaged and could not be repaired "
                "from peers; read those rows from sibling shards"
            )

    def _read_repaired(self, header: ShardHeader, rows: range) -> Iterator[RowRead]:
        """Rows in order; a damaged row is corrected in place (a few flipped bits) or, with a
        repairer, rebuilt from peers, and re-read first."""
        sid = header.shard_id
        for r in self.store.read_rows(sid, rows):
            if r.status is RowStatus.OK:
                yield r
                continue
            if r.status is RowStatus.DAMAGED and self.store.correct_rows(sid, [r.row]):
                log.info("row corrected in place on read shard=%s row=%d", sid.hex(), r.row)
                r = next(iter(self.store.read_rows(sid, [r.row])))
                if r.status is RowStatus.OK:
                    yield r
                    continue
            yield r if self.repair is None else self._repair_row(header, r)

    def _repair_row(self, header: ShardHeader, bad: RowRead) -> RowRead:
        sid = header.shard_id
        assert self.repair is not None
        try:
            repaired = set(self.repair(header, [bad.row]))
        except OrbitVaultError as exc:
            log.warning("row repair failed shard=%s row=%d error=%r", sid.hex(), bad.row, str(exc))
            return bad
        except Exception:
            log.exception("row repair crashed shard=%s row=%d", sid.hex(), bad.row)
            return bad
        if bad.row not in repaired:
            return bad
        again = next(iter(self.store.read_rows(sid, [bad.row])))
        if again.status is RowStatus.OK:
            log.info("row repaired on read shard=%s row=%d", sid.hex(), bad.row)
        return again

    # --- HeadShard, DeleteShard, ListShards -------------------------------------------------------

    @rpc_errors
    def HeadShard(self, request: pb.HeadShardRequest, context: grpc.ServicerContext) -> pb.HeadShardResponse:
        self._authorize(context, "HeadShard")
        sid = convert.check_id(request.shard_id, "shard_id")
        upload = self.store.upload_state(sid)
        if upload is not None:
            return pb.HeadShardResponse(shard=convert.upload_state_to_proto(upload))
        return pb.HeadShardResponse(shard=convert.shard_info_to_proto(self.store.head(sid)))

    @rpc_errors
    def DeleteShard(self, request: pb.DeleteShardRequest, context: grpc.ServicerContext) -> pb.DeleteShardResponse:
        self._authorize(context, "DeleteShard")
        sid = convert.check_id(request.shard_id, "shard_id")
        freed = self.store.delete(sid)
        if freed:
            log.info("shard deleted shard=%s freed=%d", sid.hex(), freed)
        return pb.DeleteShardResponse(existed=freed > 0, freed_bytes=freed)

    @rpc_errors
    def ListShards(self, request: pb.ListShardsRequest, context: grpc.ServicerContext) -> pb.ListShardsResponse:
        self._authorize(context, "ListShards")
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size {size} is above the maximum {MAX_PAGE_SIZE}")
        if len(request.page_token) > convert.MAX_PAGE_TOKEN:
            raise InvalidArgument(f"page_token is longer than {convert.MAX_PAGE_TOKEN} characters")
        after = convert.id_from_hex(request.page_token, "page_token") if request.page_token else b""
        object_id = convert.check_id(request.object_id, "object_id") if request.object_id else None
        # One extra tells whether another page exists, so an empty token really means the end.
        infos = self.store.list(after=after, limit=size + 1, object_id=object_id)
        out = pb.ListShardsResponse()
        bytes_used = 0
        for info in infos[:size]:
            msg = convert.shard_info_to_proto(info, include_catalog_record=request.include_catalog_records)
            bytes_used += msg.ByteSize()
            if out.shards and bytes_used > convert.TARGET_MESSAGE_BYTES:
                break  # keep pages under about 1 MiB; the token resumes right here
            out.shards.append(msg)
        if len(out.shards) < len(infos):
            out.next_page_token = convert.id_hex(out.shards[-1].header.shard_id)
        return out

    # --- ReadRows -------------------------------------------------------------------------------------

    @rpc_errors
    def ReadRows(self, request: pb.ReadRowsRequest, context: grpc.ServicerContext) -> Iterator[pb.ReadRowsResponse]:
        self._authorize(context, "ReadRows")
        sid = convert.check_id(request.shard_id, "shard_id")
        header = self.store.header(sid)
        rows = convert.check_row_list(request.rows, header.row_count)
        out = pb.ReadRowsResponse()
        size = 0
        for r in self.store.read_rows(sid, rows):
            item = convert.row_read_to_proto(r)
            n = len(item.fragment) + len(item.checksum) + _ROW_OVERHEAD
            if out.rows and size + n > 2 * convert.TARGET_MESSAGE_BYTES:
                yield out
                out, size = pb.ReadRowsResponse(), 0
            out.rows.append(item)
            size += n
            if size >= convert.TARGET_MESSAGE_BYTES:
                yield out
                out, size = pb.ReadRowsResponse(), 0
        if out.rows:
            yield out

    # --- NodeInfo, ForwardShard -------------------------------------------------------------------------

    @rpc_errors
    def NodeInfo(self, request: pb.NodeInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfoResponse:
        self._authorize(context, "NodeInfo")
        return pb.NodeInfoResponse(
            node_id=self.store.node_id,
            name=self.identity.name,
            satellite=self.identity.satellite,
            plane=self.identity.plane,
            capacity_bytes=self.store.capacity_bytes,
            used_bytes=self.store.used_bytes(),
            shard_count=self.store.shard_count(),
            partial_upload_count=0,
            scrub=self.scrub_state(),
            node_time_unix_ms=self._now_ms(),
            version=__version__,
        )

    def scrub_state(self) -> pb.ScrubState:
        """From the state the scrubber (in this process or `node scrub`) persists in the store."""
        try:
            st = load_state(self.store)
        except OrbitVaultError as exc:  # unreadable state must not take NodeInfo down with it
            log.warning("scrub state unreadable error=%r", str(exc))
            st = ScrubState()
        live = st.pid != 0 and process_alive(st.pid)
        if live and st.activity in _SCRUB_ACTIVITY:
            activity = _SCRUB_ACTIVITY[st.activity]
        elif self.identity.scrub_in_process:
            activity = pb.SCRUB_ACTIVITY_IDLE
        else:  # no scrubber here and none alive elsewhere; a stale "running" means it died
            activity = pb.SCRUB_ACTIVITY_DISABLED
        running = activity == pb.SCRUB_ACTIVITY_RUNNING
        return pb.ScrubState(
            activity=activity,
            position_shard_id=st.position_shard_id if running else b"",
            position_row=st.position_row if running else 0,
            pass_shards_done=st.pass_shards_done,
            pass_shards_total=st.pass_shards_total,
            passes_completed=st.passes_completed,
            pass_started_unix_ms=st.pass_started_unix_ms if st.pass_in_progress else 0,
            last_pass_completed_unix_ms=st.last_pass_completed_unix_ms,
            throttle_bytes_per_sec=st.throttle_bytes_per_sec if live else self.identity.scrub_rate_bytes_per_s,
            shards_verified=st.shards_verified,
            rows_verified=st.rows_verified,
            bytes_verified=st.bytes_verified,
            damaged_found=st.damaged_found,
            repaired_in_place=st.repaired_in_place,
            repaired_from_peers=st.repaired_from_peers,
            unrecoverable=st.unrecoverable,
        )

    @rpc_errors
    def ForwardShard(self, request: pb.ForwardShardRequest, context: grpc.ServicerContext) -> pb.ForwardShardResponse:
        self._authorize(context, "ForwardShard")
        sid = convert.check_id(request.shard_id, "shard_id")
        if not 16 <= len(request.upload_id) <= 32:
            raise InvalidArgument("upload_id is required: 16 to 32 bytes naming the transfer (reuse it to resume)")
        address = request.target_address
        if not address or len(address) > _MAX_ADDRESS or ":" not in address:
            raise InvalidArgument(f'target_address must be "host:port", at most {_MAX_ADDRESS} bytes')
        target_id = convert.check_id(request.target_node_id, "target_node_id") if request.target_node_id else b""
        header = self.store.header(sid)  # NOT_FOUND unless the shard is complete here
        if request.siblings:
            if len(request.siblings) > header.geometry.n:
                raise InvalidArgument(
                    f"siblings has {len(request.siblings)} entries; at most k+m = {header.geometry.n}"
                )
            sibs = []
            for i, sib in enumerate(request.siblings):
                convert.check_id(sib.node_id, f"siblings[{i}].node_id")
                convert.check_id(sib.shard_id, f"siblings[{i}].shard_id")
                sibs.append(Sibling(sib.shard_index, bytes(sib.node_id), bytes(sib.shard_id)))
            try:
                header = replace(header, siblings=tuple(sibs))
            except InvalidArgument as exc:
                raise InvalidArgument(f"siblings: {exc}") from None
        rows = header.row_count
        limit = request.row_limit or rows
        if limit > rows:
            raise InvalidArgument(f"row_limit {request.row_limit} is beyond the shard's {rows} rows")
        upload_id = bytes(request.upload_id)
        stub, put = self._peer(address)
        try:
            if target_id:
                info = stub.NodeInfo(pb.NodeInfoRequest(), timeout=_PEER_TIMEOUT_S)
                if bytes(info.node_id) != target_id:
                    raise FailedPrecondition(
                        f"the node at {address} is {bytes(info.node_id).hex()[:16]}, not the target "
                        f"{target_id.hex()[:16]}; nothing was sent"
                    )
            committed, complete, resume = self._peer_state(stub, sid, upload_id)
            sent = 0
            if not complete and committed < limit:
                sent_box = [0]
                batches = self._forward_rows(header, committed, limit, request, sent_box)
                start = pb.PutShardStart(header=convert.header_to_proto(header), upload_id=upload_id, resume=resume)
                timeout = _PEER_TIMEOUT_S + (limit - committed) * header.fragment_len(0) / _PEER_MIN_RATE
                resp = put(_with_start(start, batches), timeout=timeout)
                committed, complete, sent = resp.committed_rows, resp.complete, sent_box[0]
        except grpc.RpcError as err:
            exc = error_from_rpc(err)
            raise type(exc)(f"forward to {address}: {exc}") from None
        deleted = False
        if complete and request.delete_after:
            self.store.delete(sid)
            deleted = True
        log.info(
            "forward shard=%s to=%s rows=%d/%d complete=%s bytes=%d deleted=%s",
            sid.hex(),
            address,
            committed,
            rows,
            complete,
            sent,
            deleted,
        )
        return pb.ForwardShardResponse(
            complete=complete, committed_rows=committed, row_count=rows, bytes_sent=sent, source_deleted=deleted
        )

    def _peer(self, address: str) -> tuple[shard_store_pb2_grpc.ShardStoreStub, grpc.StreamUnaryMultiCallable]:
        """One channel per peer address, kept open (mTLS with this node's certificate): its stub
        and its PutShard call."""
        with self._peer_lock:
            got = self._peers.get(address)
            if got is None:
                try:
                    channel = open_channel(address, self.peer_tls, convert.CHANNEL_OPTIONS)
                except ValueError as exc:
                    raise InvalidArgument(f"target_address {address!r}: {exc}") from None
                got = (channel, shard_store_pb2_grpc.ShardStoreStub(channel), wire.put_shard_call(channel))
                self._peers[address] = got
            return got[1], got[2]

    @staticmethod
    def _peer_state(stub: shard_store_pb2_grpc.ShardStoreStub, sid: bytes, upload_id: bytes) -> tuple[int, bool, bool]:
        """(committed rows, complete, resume) of the shard on the peer: a partial upload under
        another id is started over (the peer replaces it), one under ours is resumed."""
        try:
            head = stub.HeadShard(pb.HeadShardRequest(shard_id=sid), timeout=_PEER_TIMEOUT_S)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return 0, False, False
            raise
        info = head.shard
        if info.state == pb.SHARD_STATE_COMPLETE:
            return info.header.row_count, True, False
        if bytes(info.upload_id) == upload_id:
            return info.committed_rows, False, True
        return 0, False, False

    def _forward_rows(
        self, header: ShardHeader, first: int, limit: int, request: pb.ForwardShardRequest, sent: list[int]
    ) -> Iterator[bytes]:
        """Rows [first, limit) in serialized messages of about 1 MiB, stopping at the deadline (node
        time) and paced to the rate limit; a damaged row that cannot be repaired ends the forward there."""
        began = time.monotonic()
        frags: list[bytes] = []
        sums: list[bytes] = []
        at = first
        size = 0
        for r in self._read_repaired(header, range(first, limit)):
            if request.deadline_unix_ms and self._now_ms() >= request.deadline_unix_ms:
                break
            if r.status is not RowStatus.OK or r.fragment is None:
                log.warning("forward stopped at a damaged row shard=%s row=%d", header.shard_id.hex(), r.row)
                break
            frags.append(r.fragment)
            sums.append(r.checksum)
            size += len(r.fragment) + len(r.checksum)
            sent[0] += len(r.fragment) + len(r.checksum)
            if size >= convert.TARGET_MESSAGE_BYTES or len(frags) >= convert.MAX_ROWS_PER_MESSAGE:
                yield wire.encode_rows(at, frags, sums)
                at, frags, sums, size = r.row + 1, [], [], 0
            rate = request.max_rate_bytes_per_sec
            if rate:
                ahead = sent[0] / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)  # node time, real: the node paces its own link
        if frags:
            yield wire.encode_rows(at, frags, sums)


def _with_start(start: pb.PutShardStart, rows: Iterator[bytes]) -> Iterator[bytes]:
    yield pb.PutShardRequest(start=start).SerializeToString()
    yield from rows
