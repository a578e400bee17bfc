"""`PeerRows` over gRPC: how a node's scrubber reads rows of sibling shards from other nodes.

Shard headers name siblings by node id, while the configuration lists peers by address, so the
node ids are learnt by asking every configured address `NodeInfo` (and cached; an unknown id
triggers a re-ask, at most once per `refresh_s`, so a node that is down costs one timeout per
refresh, not one per row). One channel per address, kept open, mutual TLS with the node's own
certificate when `tls` is given (plaintext only for an `insecure` node). Row lists are split into
`ReadRows` calls of at most 1024 rows. gRPC failures become orbitvault errors (`Unavailable` when
a peer is down or too slow), which is what the scrubber expects in order to try other siblings.

A header's sibling locations are hints: shards move after the header was written (the gateway's
repair rebuilds a lost node's shards elsewhere; a scheduled uplink binds a shard to another
satellite than first planned). When the named node lacks the shard or cannot be reached, the other
peers are asked `HeadShard` for it, and where it was found is remembered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from orbitvault.errors import InvalidArgument, NotFound, OrbitVaultError, Unavailable
from orbitvault.grpc.convert import CHANNEL_OPTIONS, MAX_ROWS_PER_MESSAGE, row_read_from_proto
from orbitvault.grpc.status import error_from_rpc
from orbitvault.grpc.tls import TlsFiles, channel_credentials, open_channel
from orbitvault.grpc.v1 import shard_store_pb2, shard_store_pb2_grpc
from orbitvault.storage.store import RowRead

log = logging.getLogger("orbitvault.peers")

_FOUND_LIMIT = 10_000  # shard id -> address entries remembered (oldest dropped first)


class GrpcPeerRows:
    """Read rows of shards held by peer nodes (implements `orbitvault.storage.scrubber.PeerRows`)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout_s: float = 10.0,
        info_timeout_s: float = 3.0,
        refresh_s: float = 30.0,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        tls: TlsFiles | None = None,
    ) -> None:
        self.addresses = tuple(dict.fromkeys(addresses))
        self.timeout_s = timeout_s
        self.info_timeout_s = info_timeout_s
        self.refresh_s = refresh_s
        creds = channel_credentials(tls) if tls is not None and channel_factory is None else None
        self._factory = channel_factory or (lambda addr: open_channel(addr, None, CHANNEL_OPTIONS, credentials=creds))
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, shard_store_pb2_grpc.ShardStoreStub] = {}
        self._address_of: dict[bytes, str] = {}
        self._found: dict[bytes, str] = {}  # shards met away from where their headers say
        self._last_refresh = -float("inf")

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
            self._stubs.clear()

    def __enter__(self) -> GrpcPeerRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- PeerRows ----------------------------------------------------------------------------------

    def read_rows(self, node_id: bytes, shard_id: bytes, rows: Sequence[int]) -> list[RowRead]:
        """Rows of `shard_id`, in request order; see `PeerRows`. `node_id` is where the header
        says the shard is; a shard found elsewhere earlier is read there, and one the named node
        lacks (or that node is unreachable) is looked for on the other peers."""
        with self._lock:
            moved = self._found.get(shard_id)
        if moved is not None:
            try:
                return self._read_at(moved, None, shard_id, rows)
            except (NotFound, Unavailable):
                with self._lock:
                    self._found.pop(shard_id, None)
        try:
            return self._read_at(self.address_of(node_id), node_id, shard_id, rows)
        except (NotFound, Unavailable) as exc:
            address = self.locate(shard_id, exclude=self._known_address(node_id))
            if address is None:
                raise exc from None
            log.info("sibling shard found elsewhere shard=%s address=%s", shard_id.hex(), address)
            return self._read_at(address, None, shard_id, rows)

    def locate(self, shard_id: bytes, *, exclude: str | None = None) -> str | None:
        """The address of a peer holding `shard_id` (HeadShard on each), remembered; None if none."""
        for address in self.addresses:
            if address == exclude:
                continue
            try:
                head = self._stub(address).HeadShard(
                    shard_store_pb2.HeadShardRequest(shard_id=shard_id), timeout=self.info_timeout_s
                )
            except (grpc.RpcError, Unavailable):
                continue  # lacks it, or down: ask the next
            if head.shard.state != shard_store_pb2.SHARD_STATE_COMPLETE:
                continue  # an upload in progress is no source
            with self._lock:
                if len(self._found) >= _FOUND_LIMIT:
                    self._found.pop(next(iter(self._found)))
                self._found[shard_id] = address
            return address
        return None

    def _known_address(self, node_id: bytes) -> str | None:
        with self._lock:
            return self._address_of.get(node_id)

    def _read_at(self, address: str, node_id: bytes | None, shard_id: bytes, rows: Sequence[int]) -> list[RowRead]:
        stub = self._stub(address)
        wanted = list(rows)
        out: list[RowRead] = []
        for i in range(0, len(wanted), MAX_ROWS_PER_MESSAGE):
            chunk = wanted[i : i + MAX_ROWS_PER_MESSAGE]
            request = shard_store_pb2.ReadRowsRequest(shard_id=shard_id, rows=chunk)
            got: list[RowRead] = []
            try:
                for msg in stub.ReadRows(request, timeout=self.timeout_s):
                    got.extend(row_read_from_proto(r) for r in msg.rows)
            except grpc.RpcError as err:
                exc = error_from_rpc(err)
                if isinstance(exc, Unavailable) and node_id is not None:
                    self._forget(node_id)  # it may have moved: ask again next time
                raise exc from err
            if [r.row for r in got] != chunk:
                raise InvalidArgument(
                    f"the node at {address} answered ReadRows with rows other than the {len(chunk)} asked"
                )
            out.extend(got)
        return out

    # --- node id -> address ------------------------------------------------------------------------

    def address_of(self, node_id: bytes) -> str:
        """The address of node `node_id`, asking peers NodeInfo if it is not known yet."""
        with self._lock:
            address = self._address_of.get(node_id)
        if address is not None:
            return address
        self.refresh()
        with self._lock:
            address = self._address_of.get(node_id)
        if address is None:
            raise Unavailable(
                f"node {node_id.hex()} is not among the reachable peers ({len(self.addresses)} configured); "
                "it may be down or missing from the node's peers list"
            )
        return address

    def refresh(self, *, force: bool = False) -> dict[bytes, str]:
        """Ask every configured peer its node id (at most once per `refresh_s` unless forced)."""
        with self._lock:
            if not force and self._monotonic() - self._last_refresh < self.refresh_s:
                return dict(self._address_of)
            self._last_refresh = self._monotonic()
            known = set(self._address_of.values())
        for address in self.addresses:
            if address in known:
                continue
            try:
                info = self._stub(address).NodeInfo(shard_store_pb2.NodeInfoRequest(), timeout=self.info_timeout_s)
            except grpc.RpcError as err:
                log.info("peer NodeInfo failed address=%s error=%r", address, error_from_rpc(err))
                continue
            if len(info.node_id) != 32:
                log.warning("peer answered NodeInfo without a valid node id address=%s", address)
                continue
            with self._lock:
                self._address_of[bytes(info.node_id)] = address
        with self._lock:
            return dict(self._address_of)

    def _forget(self, node_id: bytes) -> None:
        with self._lock:
            self._address_of.pop(node_id, None)

    def _stub(self, address: str) -> shard_store_pb2_grpc.ShardStoreStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                try:
                    channel = self._factory(address)
                except (ValueError, OrbitVaultError) as exc:
                    raise Unavailable(f"cannot open a channel to peer {address}: {exc}") from exc
                self._channels[address] = channel
                stub = self._stubs[address] = shard_store_pb2_grpc.ShardStoreStub(channel)
            return stub
