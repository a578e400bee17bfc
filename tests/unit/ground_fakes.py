"""An in-process constellation for gateway tests: `FakeLink` = NodeLink over a real ShardStore.

Faults a test can switch on per link:
- `down = True`: every call raises Unavailable (a node out of reach);
- `fail_puts_after = n`: put_shard succeeds n more times, then raises Unavailable;
- `crash_puts_after = n`: put_shard succeeds n more times, then raises `SimulatedCrash` (a
  BaseException, like the process dying: nothing catches it, nothing cleans up);
- `die_after_reads = n`: get_rows answers n more calls, then the node goes down (mid-read);
- `damage(shard_id, row)`: that row comes back as None, like a node's DATA_LOSS for rows it could
  not repair.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from orbitvault.errors import Unavailable
from orbitvault.ground.ports import FetchedRows, NodeStatus
from orbitvault.storage.header import ShardHeader
from orbitvault.storage.store import RowBatch, RowStatus, ShardInfo, ShardStore

if TYPE_CHECKING:
    from orbitvault.ground.gateway import Gateway
    from orbitvault.ground.model import ObjectInfo


class SimulatedCrash(BaseException):
    """The gateway process 'dies' here."""


class FakeLink:
    def __init__(self, store: ShardStore, address: str, *, name: str = "", plane: str = "") -> None:
        self.store = store
        self.address = address
        self.name = name or address
        self.plane = plane
        self.down = False
        self.fail_puts_after: int | None = None
        self.crash_puts_after: int | None = None
        self.die_after_reads: int | None = None
        self.damaged: set[tuple[bytes, int]] = set()
        self.puts = 0
        self.reads = 0

    def _check(self) -> None:
        if self.down:
            raise Unavailable(f"node {self.address} is down")

    def info(self) -> NodeStatus:
        self._check()
        return NodeStatus(
            node_id=self.store.node_id,
            name=self.name,
            plane=self.plane,
            capacity_bytes=self.store.capacity_bytes,
            used_bytes=self.store.used_bytes(),
            shard_count=self.store.shard_count(),
        )

    def put_shard(self, header: ShardHeader, rows: Iterable[RowBatch]) -> None:
        self._check()
        if self.crash_puts_after is not None:
            if self.crash_puts_after <= 0:
                raise SimulatedCrash(f"gateway crashed while sending to {self.address}")
            self.crash_puts_after -= 1
        if self.fail_puts_after is not None:
            if self.fail_puts_after <= 0:
                raise Unavailable(f"node {self.address} dropped the connection")
            self.fail_puts_after -= 1
        self.store.put(header, rows)
        self.puts += 1

    def get_rows(self, shard_id: bytes, first_row: int, row_count: int) -> FetchedRows:
        self._check()
        if self.die_after_reads is not None:
            if self.die_after_reads <= 0:
                self.down = True
                raise Unavailable(f"node {self.address} died mid-read")
            self.die_after_reads -= 1
        self.reads += 1
        fragments: list[bytes | None] = []
        checksums: list[bytes] = []
        for r in self.store.read_rows(shard_id, range(first_row, first_row + row_count)):
            bad = r.status is not RowStatus.OK or (shard_id, r.row) in self.damaged
            fragments.append(None if bad else r.fragment)
            checksums.append(r.checksum or bytes(32))
        return FetchedRows(first_row, fragments, checksums)

    def delete_shard(self, shard_id: bytes) -> None:
        self._check()
        self.store.delete(shard_id)

    def list_shards(
        self, *, after: bytes = b"", limit: int = 1000, include_catalog_records: bool = False
    ) -> list[ShardInfo]:
        self._check()
        return self.store.list(after=after, limit=limit)

    def damage(self, shard_id: bytes, row: int) -> None:
        self.damaged.add((shard_id, row))

    def close(self) -> None:
        pass


def make_links(root: Path, count: int, *, planes: int = 3, capacity: int = 256 << 20) -> list[FakeLink]:
    links = []
    for i in range(count):
        store = ShardStore(root / f"node{i}", capacity_bytes=capacity, simulation=True, sync=False)
        links.append(FakeLink(store, f"127.0.0.1:{7400 + i}", name=f"sat-{i}", plane=f"p{i % planes}"))
    return links


def close_links(links: list[FakeLink]) -> None:
    for link in links:
        link.store.close()


def random_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (fast: no Python loop over bytes)."""
    import random

    return random.Random(seed).randbytes(n) if n else b""


def chunked(data: bytes, size: int = 10_000) -> Iterable[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def token_hex() -> str:
    return os.urandom(8).hex()


class Env:
    """A gateway over `n` fake nodes with small geometries, on a simulated clock."""

    GEOMETRY_ARGS = (4, 2, 4096, 4 * 4096 * 4)  # rows of 16 KiB, stripes of 64 KiB (sealed)
    SEGMENT = 8192  # 7 segments (57344 plaintext bytes) per stripe

    def __init__(self, root: Path, n: int = 6, **config: object) -> None:
        from orbitvault.ground.config import GatewayConfig
        from orbitvault.ground.crypto import MasterKey
        from orbitvault.ground.nodes import NodeDirectory
        from orbitvault.orbit.clock import SimulatedClock

        self.root = root
        self.clock = SimulatedClock(1_700_000_000.0)
        self.links = make_links(root / "nodes", n)
        self.master = MasterKey.generate()
        settings = {"segment_size": self.SEGMENT, "io_threads": 8, "node_grace_s": 600.0, "pending_ttl_s": 300.0}
        settings.update(config)
        self.config = GatewayConfig(state_dir=root / "gateway", **settings)  # type: ignore[arg-type]
        self.directory = NodeDirectory(self.links, clock=self.clock)
        self.gw = self.open()
        self.gw.create_tenant("acme")
        self.key = self.gw.create_api_key("acme")
        self.p = self.gw.authenticate(self.key.token)
        self.geometry = self.gw.make_geometry(*self.GEOMETRY_ARGS)
        self.gw.create_bucket(self.p, "data", self.geometry)

    def open(self) -> Gateway:
        from orbitvault.ground.gateway import Gateway

        return Gateway(self.config, self.directory, self.master, clock=self.clock)

    def reopen(self) -> None:
        self.gw.close()
        self.gw = self.open()

    def put(self, key: str, data: bytes, bucket: str = "data", **kw: object) -> ObjectInfo:
        return self.gw.put_object(self.p, bucket, key, chunked(data, 7_000), size=len(data), **kw)  # type: ignore[arg-type]

    def get(self, key: str, bucket: str = "data", **kw: object) -> bytes:
        _, chunks = self.gw.get_object(self.p, bucket, key, **kw)  # type: ignore[arg-type]
        return b"".join(chunks)

    def close(self) -> None:
        self.gw.close()
        close_links(self.links)
