"""How the gateway's domain code reaches one storage node, without knowing it is gRPC.

`orbitvault.grpc.node_link.GrpcNodeLink` implements `NodeLink` over the ShardStore service;
tests implement it over an in-process `ShardStore`. Every method raises `orbitvault.errors`
classes: `Unavailable` when the node cannot be reached (the caller picks another node),
`NotFound`, `ResourceExhausted` (node full). Rows a node could not repair are not an error: they
come back as None in `FetchedRows` (the node's DATA_LOSS status names them), and the caller decodes
them from other shards.
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
