"""Shared fixtures for integration tests: real nodes on loopback (port 0) and shards to store.

- `make_shard(...)`: a shard made by the real erasure layer (`TestShard`: header, fragments,
  checksums, and the PutShard request stream for it).
- `start_node(**config)`: an in-process node on 127.0.0.1:0 with its own data dir (`NodeClient`:
  the running server plus a ShardStore stub and a few call helpers); stopped at teardown. Plaintext
  (`insecure`, said explicitly as servers require) unless tls_* settings are given; then
  `channel_tls` are the files the test's own stub connects with.
- `node`: one such node with defaults.
- `spawn_node(data_dir, ...)`: `orbitvault node serve` as a subprocess (`NodeProcess`), for crash
  and signal tests; killed at teardown if still running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import StripeCoder
from orbitvault.grpc import convert
from orbitvault.grpc.node_server import NodeServer, serve
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.grpc.v1 import shard_store_pb2_grpc
from orbitvault.storage.config import load_node_config
from orbitvault.storage.header import ShardHeader, Sibling

# Small fragments keep shards tiny and tests fast while every code path stays reachable.
SMALL_GEOMETRY = Geometry(4, 2, fragment_size=64, stripe_size=64 * 4 * 64)


@dataclass
class TestShard:
    """One shard of a real stripe: what a gateway would send to a node."""

    __test__ = False  # not a test class, despite the name

    header: ShardHeader
    fragments: list[bytes]
    checksums: list[bytes]
    stripe: bytes = b""

    @property
    def shard_id(self) -> bytes:
        return self.header.shard_id

    def proto_header(self) -> pb.ShardHeader:
        return convert.header_to_proto(self.header)

    def requests(self, rows_per_message: int = 16) -> Iterator[pb.PutShardRequest]:
        """The well-formed PutShard stream: start, then rows in order."""
        yield pb.PutShardRequest(start=pb.PutShardStart(header=self.proto_header()))
        yield from self.row_requests(rows_per_message)

    def row_requests(self, rows_per_message: int = 16, first: int = 0, end: int | None = None) -> Iterator[Any]:
        end = len(self.fragments) if end is None else end
        for r in range(first, end, rows_per_message):
            stop = min(r + rows_per_message, end)
            yield pb.PutShardRequest(
                rows=pb.RowBatch(first_row=r, fragments=self.fragments[r:stop], checksums=self.checksums[r:stop])
            )


def _make_shard(
    *,
    geometry: Geometry = SMALL_GEOMETRY,
    data_len: int | None = None,
    shard_index: int = 0,
    object_id: bytes | None = None,
    catalog_record: bytes = b"",
    seed: int | None = None,
) -> TestShard:
    rnd = os.urandom if seed is None else _seeded(seed)
    data_len = geometry.stripe_size - 100 if data_len is None else data_len  # short last row
    data = rnd(data_len)
    encoded = StripeCoder(geometry).encode(data)
    rows = encoded.shards[shard_index]
    ids = [rnd(32) for _ in range(geometry.n)]
    nodes = [rnd(32) for _ in range(geometry.n)]
    header = ShardHeader(
        shard_id=ids[shard_index],
        object_id=object_id or rnd(32),
        stripe_index=0,
        stripe_count=1,
        shard_index=shard_index,
        geometry=geometry,
        stripe_data_len=data_len,
        siblings=tuple(Sibling(i, nodes[i], ids[i]) for i in range(geometry.n)),
        created_unix_ms=1_700_000_000_000,
        catalog_record=catalog_record,
    )
    return TestShard(header, list(rows.fragments), list(rows.checksums), data)


def _seeded(seed: int) -> Callable[[int], bytes]:
    import random

    r = random.Random(seed)
    return lambda n: r.randbytes(n)


@pytest.fixture
def make_shard() -> Callable[..., TestShard]:
    """make_shard(geometry=..., data_len=..., shard_index=..., object_id=..., seed=...) -> TestShard."""
    return _make_shard


# --- in-process nodes --------------------------------------------------------------------------------


@dataclass
class NodeClient:
    """A running in-process node and a client for it."""

    server: NodeServer
    channel: grpc.Channel
    stub: shard_store_pb2_grpc.ShardStoreStub
    data_dir: Path

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def store(self) -> Any:
        return self.server.store

    def put(self, shard: TestShard, rows_per_message: int = 16) -> pb.PutShardResponse:
        return self.stub.PutShard(shard.requests(rows_per_message), timeout=30)

    def get(self, shard_id: bytes, **kwargs: Any) -> list[pb.GetShardResponse]:
        return list(self.stub.GetShard(pb.GetShardRequest(shard_id=shard_id, **kwargs), timeout=30))

    def get_rows(self, shard_id: bytes, **kwargs: Any) -> tuple[int, list[bytes], list[bytes]]:
        """(first row, fragments, checksums) of a GetShard stream, checking the batches are contiguous."""
        first = None
        frags: list[bytes] = []
        sums: list[bytes] = []
        for msg in self.get(shard_id, **kwargs):
            if msg.WhichOneof("body") != "rows":
                continue
            if first is None:
                first = msg.rows.first_row
            assert msg.rows.first_row == first + len(frags), "GetShard batches must be contiguous"
            frags.extend(msg.rows.fragments)
            sums.extend(msg.rows.checksums)
        return (first or 0), frags, sums

    def stored_ids(self) -> list[bytes]:
        return [s.header.shard_id for s in self.stub.ListShards(pb.ListShardsRequest(page_size=1000)).shards]


@dataclass
class _Nodes:
    tmp: Path
    started: list[NodeClient] = field(default_factory=list)

    def __call__(
        self,
        data_dir: Path | None = None,
        *,
        repair: Any = None,
        peers: Any = None,
        channel_tls: Any = None,
        **settings: Any,
    ) -> NodeClient:
        from orbitvault.grpc.tls import open_channel

        data_dir = data_dir or self.tmp / f"node{len(self.started)}"
        values: dict[str, Any] = {"capacity": "1GiB", "listen": "127.0.0.1:0", "data_dir": str(data_dir)}
        if not any(k.startswith("tls_") for k in settings):
            values["insecure"] = True
        values.update(settings)
        config = load_node_config(None, env={}, overrides=values)
        server = serve(config, repair=repair, peers=peers)
        channel = open_channel(server.address, channel_tls, convert.CHANNEL_OPTIONS)
        client = NodeClient(server, channel, shard_store_pb2_grpc.ShardStoreStub(channel), data_dir)
        self.started.append(client)
        return client

    def close(self) -> None:
        for c in self.started:
            c.channel.close()
            c.server.stop(0)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[_Nodes]:
    """start_node(data_dir=None, repair=None, peers=None, **config keys) -> NodeClient; stopped at teardown."""
    nodes = _Nodes(tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def node(start_node: _Nodes) -> NodeClient:
    return start_node()


# --- node processes -----------------------------------------------------------------------------------

_LISTENING = re.compile(r"^listening on (\S+)$")


@dataclass
class NodeProcess:
    """`orbitvault node serve` running as a child process."""

    proc: subprocess.Popen[str]
    address: str
    data_dir: Path
    log_path: Path

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=convert.CHANNEL_OPTIONS)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        """What the node logged (stderr) so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass
class _Spawner:
    started: list[NodeProcess] = field(default_factory=list)

    def __call__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        cmd = [sys.executable, "-m", "orbitvault", "node", "serve", "--data-dir", str(data_dir)]
        cmd += ["--capacity", "1GiB", "--listen", "127.0.0.1:0", *args]
        if not any(a.startswith("--tls-") for a in args):
            cmd.append("--insecure")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_NODE_")}
        full_env.update(env or {})
        log_path = data_dir.parent / f"{data_dir.name}.{len(self.started)}.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log_file:  # a file, not a pipe: a full pipe would stall the node
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=full_env)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()
        while line and not _LISTENING.match(line.strip()) and time.monotonic() < deadline:
            line = proc.stdout.readline()
        m = _LISTENING.match(line.strip())
        if m is None:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"node did not start (exit {proc.returncode}):\n{log_path.read_text()}")
        node = NodeProcess(proc, m.group(1), data_dir, log_path)
        self.started.append(node)
        return node

    def close(self) -> None:
        for n in self.started:
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait(10)
            if n.proc.stdout is not None:
                n.proc.stdout.close()


@pytest.fixture
def spawn_node() -> Iterator[_Spawner]:
    """spawn_node(data_dir, *extra flags, env=...) -> NodeProcess, once it prints its address."""
    spawner = _Spawner()
    try:
        yield spawner
    finally:
        spawner.close()


# --- gateway: a constellation of in-process nodes, a gateway, SDK clients ---------------------------
#
# Small geometry so objects of several stripes stay tiny: 4+2, 4 KiB fragments, 64 KiB stripes and
# 4 KiB encryption segments (15 segments = 61440 plaintext bytes per stripe).
GW_FRAGMENT = 4096
GW_STRIPE = 65536
GW_SEGMENT = 4096
GW_PLAIN_PER_STRIPE = (GW_STRIPE // (GW_SEGMENT + 16)) * GW_SEGMENT


@dataclass
class Constellation:
    """`n` in-process nodes on planes 0..2, a master key file and gateway settings to go with them."""

    tmp: Path
    nodes: list[NodeClient]
    master_key_file: Path
    _start_node: _Nodes
    gateways: list[Any] = field(default_factory=list)
    node_settings: dict[str, Any] = field(default_factory=dict)  # e.g. TLS files, reused on restart
    clients: list[Any] = field(default_factory=list)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(n.address for n in self.nodes)

    def config(self, **settings: Any) -> Any:
        from orbitvault.ground.config import GatewayConfig

        values: dict[str, Any] = {
            "state_dir": self.tmp / "gateway",
            "listen": "127.0.0.1:0",
            "nodes": self.addresses,
            "master_key_file": self.master_key_file,
            "fragment_size": GW_FRAGMENT,
            "stripe_size": GW_STRIPE,
            "segment_size": GW_SEGMENT,
            "repair_interval_s": 3600.0,
            "io_threads": 16,
        }
        if not any(k.startswith("tls_") for k in settings):
            values["insecure"] = True
        values.update(settings)
        return GatewayConfig(**values)

    def toml(self, path: Path | None = None, **settings: Any) -> Path:
        """The same settings as a gateway.toml (for the CLI)."""
        cfg = self.config(**settings)
        path = path or self.tmp / "gateway.toml"
        lines = [
            f'state_dir = "{cfg.state_dir}"',
            f'listen = "{cfg.listen}"',
            "nodes = [" + ", ".join(f'"{a}"' for a in cfg.nodes) + "]",
            f'master_key_file = "{cfg.master_key_file}"',
            f"fragment_size = {cfg.fragment_size}",
            f"stripe_size = {cfg.stripe_size}",
            f"segment_size = {cfg.segment_size}",
            f"repair_interval_s = {cfg.repair_interval_s}",
            f"pending_ttl_s = {cfg.pending_ttl_s}",
            f"io_threads = {cfg.io_threads}",
        ]
        if cfg.insecure:
            lines.append("insecure = true")
        else:
            lines += [f'tls_ca = "{cfg.tls_ca}"', f'tls_cert = "{cfg.tls_cert}"', f'tls_key = "{cfg.tls_key}"']
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_gateway(self, *, maintenance: bool = False, **settings: Any) -> Any:
        """An in-process gateway server (GatewayServer); stopped at teardown."""
        from orbitvault.grpc.gateway_server import serve as serve_gateway

        server = serve_gateway(self.config(**settings), maintenance=maintenance, shutdown_grace_s=5)
        self.gateways.append(server)
        return server

    def client(self, address: str, token: str, **kwargs: Any) -> Any:
        from orbitvault.client.sdk import ObjectStoreClient

        kwargs.setdefault("retries", 1)
        kwargs.setdefault("backoff_s", 0.05)
        if not {"tls", "credentials", "channel"} & kwargs.keys():
            kwargs.setdefault("insecure", True)
        c = ObjectStoreClient(address, token, **kwargs)
        self.clients.append(c)
        return c

    def stop_node(self, i: int) -> None:
        self.nodes[i].channel.close()
        self.nodes[i].server.stop(0)

    def restart_node(self, i: int) -> NodeClient:
        """Start node i again on its old port and data dir."""
        old = self.nodes[i]
        port = old.address.rpartition(":")[2]
        self.nodes[i] = self._start_node(
            old.data_dir,
            listen=f"127.0.0.1:{port}",
            simulation=True,
            plane=str(i % 3),
            name=f"sat-{i}",
            **self.node_settings,
        )
        return self.nodes[i]

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for g in self.gateways:
            g.stop(0)


@pytest.fixture
def constellation(start_node: _Nodes, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Constellation]:
    """Six in-process nodes (override with @pytest.mark.parametrize("constellation", [7], indirect=True))."""
    from orbitvault.ground.crypto import MasterKey

    n = getattr(request, "param", 6)
    nodes = [start_node(simulation=True, plane=str(i % 3), name=f"sat-{i}") for i in range(n)]
    key_file = tmp_path / "master.key"
    MasterKey.generate().write_file(key_file)
    c = Constellation(tmp_path, nodes, key_file, start_node)
    try:
        yield c
    finally:
        c.close()


@dataclass
class GatewayUnderTest:
    """A running in-process gateway with tenant `acme` and a full-access client."""

    sky: Constellation
    server: Any
    token: str
    client: Any

    @property
    def gateway(self) -> Any:
        return self.server.gateway

    def new_client(self, tenant: str = "acme", mode: str = "full", **kwargs: Any) -> Any:
        from orbitvault.ground.model import KeyMode

        if tenant not in {t.name for t in self.gateway.catalog.tenants()}:
            self.gateway.create_tenant(tenant)
        token = self.gateway.create_api_key(tenant, KeyMode(mode)).token
        return self.sky.client(self.server.address, token, **kwargs)


@pytest.fixture
def gw(constellation: Constellation) -> GatewayUnderTest:
    server = constellation.start_gateway()
    server.gateway.create_tenant("acme")
    token = server.gateway.create_api_key("acme").token
    return GatewayUnderTest(constellation, server, token, constellation.client(server.address, token))


_GW_LISTENING = re.compile(r"^listening on (\S+)$")


@dataclass
class GatewayProcess:
    """`orbitvault gateway serve` running as a child process."""

    proc: subprocess.Popen[str]
    address: str
    log_path: Path

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass
class _GatewaySpawner:
    started: list[GatewayProcess] = field(default_factory=list)

    def __call__(self, config_path: Path, *args: str) -> GatewayProcess:
        cmd = [sys.executable, "-m", "orbitvault", "gateway", "serve", "--config", str(config_path), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_GATEWAY_")}
        log_path = config_path.parent / f"gateway.{len(self.started)}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = _GW_LISTENING.match(line.strip())
        if m is None:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"gateway did not start (exit {proc.returncode}):\n{log_path.read_text()}")
        gp = GatewayProcess(proc, m.group(1), log_path)
        self.started.append(gp)
        return gp

    def close(self) -> None:
        for g in self.started:
            if g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait(10)
            if g.proc.stdout is not None:
                g.proc.stdout.close()


@pytest.fixture
def spawn_gateway() -> Iterator[_GatewaySpawner]:
    """spawn_gateway(config_toml, *extra flags) -> GatewayProcess, once it prints its address."""
    spawner = _GatewaySpawner()
    try:
        yield spawner
    finally:
        spawner.close()
