"""How the gateway's domain code reaches one storage node, without knowing it is gRPC.

`orbitvault.grpc.node_link.GrpcNodeLink` implements `NodeLink` over the ShardStore service;
tests implement it over an in-process `ShardStore`. Every method raises `orbitvault.errors`
classes: `Unavailable` when the node cannot be reached (the caller picks another node),
`NotFound`, `ResourceExhausted` (node full). Rows a node could not repair are not an error: they
come back as None in `FetchedRows` (the node's DATA_LOSS status names them), and the caller decodes
them from other shards.

Scheduled mode (`ground/scheduled.py`) uses three more calls, which links used only in direct mode
(the unit tests' fakes) need not have: `put_rows` (a resumable upload of a row range: what one
contact window carries), `head_shard` (where an upload stands on the node) and `forward_shard`
(the node pushes a shard it holds to a peer over an inter-satellite link).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from orbitvault.storage.header import ShardHeader
from orbitvault.storage.store import RowBatch, ShardInfo


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node says about itself (NodeInfo)."""

    node_id: bytes
    name: str
    plane: str
    capacity_bytes: int
    used_bytes: int
    shard_count: int
    satellite: str = ""  # the satellite the node flies on: how scheduled mode maps nodes to the plan

    @property
    def free_bytes(self) -> int:
        return max(self.capacity_bytes - self.used_bytes, 0)


@dataclass(frozen=True, slots=True)
class FetchedRows:
    """Rows of one shard as a node returned them: fragments[i] is row first_row + i.

    A fragment is None where the node reported the row damaged beyond its own repair; `checksums`
    are the expected checksums either way, so the erasure layer can verify what it uses.
    """

    first_row: int
    fragments: Sequence[bytes | None]
    checksums: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """Where a resumable upload (or a forward) stands on the receiving node."""

    committed_rows: int
    complete: bool
    bytes_sent: int = 0  # bytes this call carried (fragments and checksums; resumed rows not resent)
    upload_id: bytes = b""


class NodeLink(Protocol):
    """One storage node as the gateway uses it."""

    address: str

    def info(self) -> NodeStatus: ...

    def put_shard(self, header: ShardHeader, rows: Iterable[RowBatch]) -> None:
        """Store a whole shard; returns once the node has committed (synced) it."""
        ...

    def get_rows(self, shard_id: bytes, first_row: int, row_count: int) -> FetchedRows:
        """Rows [first_row, first_row + row_count) of a shard; damaged ones as None."""
        ...

    def delete_shard(self, shard_id: bytes) -> None:
        """Idempotent: deleting an absent shard succeeds."""
        ...

    def list_shards(
        self, *, after: bytes = b"", limit: int = 1000, include_catalog_records: bool = False
    ) -> list[ShardInfo]:
        """Shards in ascending id order after `after` (catalog records only when asked)."""
        ...

    def close(self) -> None: ...


class ScheduledLink(NodeLink, Protocol):
    """A NodeLink scheduled mode can drive: resumable uploads, their state, node-to-node forwards."""

    def put_rows(
        self, header: ShardHeader, upload_id: bytes, rows: Iterable[RowBatch], *, resume: bool
    ) -> UploadProgress:
        """Send rows of a resumable upload (a row range); the node commits them as they arrive.

        `resume=False` starts the upload (replacing a partial one of the shard); the first batch
        of a resumed upload must start at or below the node's committed rows.
        """
        ...

    def head_shard(self, shard_id: bytes) -> UploadProgress | None:
        """The shard's state on the node (complete, or a partial upload); None if it has neither."""
        ...

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
        """Have the node push its complete shard to the peer at `target_address`, rows [0, row_limit)."""
        ...
