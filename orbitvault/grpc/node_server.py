"""Build and run a storage node: the ShardStore service and gRPC health on one server.

`serve(config)` opens the store, binds (port 0 picks a free port) and returns a running
`NodeServer`; `run(config)` is what `orbitvault node serve` calls: it serves until SIGTERM or
SIGINT, then shuts down gracefully: health turns NOT_SERVING, new calls are refused, in-flight puts
get `shutdown_grace_s` to finish, and a put still unfinished then is cancelled, which stores
nothing (the store commits a shard only once all of it has arrived). A second signal exits at once;
LMDB's synced commits make even that safe.

Logs are key=value lines (`configure_logging`), so they can be grepped and parsed alike.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orbitvault.errors import FailedPrecondition
from orbitvault.grpc.convert import MAX_MESSAGE_BYTES
from orbitvault.grpc.guard import MalformedRequestInterceptor
from orbitvault.grpc.peers import GrpcPeerRows
from orbitvault.grpc.process import stop_on_signal
from orbitvault.grpc.shard_service import NodeIdentity, Repairer, ShardStoreService
from orbitvault.grpc.tls import RoleCheck, TlsFiles, add_port, server_credentials, tls_files
from orbitvault.grpc.v1 import shard_store_pb2, shard_store_pb2_grpc
from orbitvault.grpc.wire import BulkRequestInterceptor
from orbitvault.orbit.clock import Clock
from orbitvault.storage.config import NodeConfig
from orbitvault.storage.metrics import ScrubCollector
from orbitvault.storage.scrubber import PeerRows, RowRepairer, Scrubber
from orbitvault.storage.store import ShardStore

log = logging.getLogger("orbitvault.node")

SERVICE_NAME = shard_store_pb2.DESCRIPTOR.services_by_name["ShardStore"].full_name
# Reads and small calls beyond the put slots: enough to serve reads while puts stream in.
_EXTRA_WORKERS = 12
# After the grace period, how long cancelled puts get to unwind before the store is closed.
_UNWIND_S = 10.0


@dataclass
class NodeServer:
    """A running node: its bound address, store and services. Stop it with `stop()`."""

    config: NodeConfig
    store: ShardStore
    service: ShardStoreService
    health: health.HealthServicer
    port: int
    address: str
    _server: grpc.Server
    _metrics: Any = None
    _scrub: tuple[threading.Thread, threading.Event] | None = None
    _peer_client: Any = None  # the GrpcPeerRows serve() opened itself, closed on stop
    _stopped: bool = field(default=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (idempotent): refuse new calls, let in-flight ones run for `grace`
        seconds (default: the config's shutdown_grace_s), cancel the rest, close the store."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        grace = self.config.shutdown_grace_s if grace is None else grace
        began = time.monotonic()
        in_flight = self.service.puts_in_flight
        log.info("node stopping grace_s=%g puts_in_flight=%d", grace, in_flight)
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        if self._scrub is not None:
            thread, stop_scrub = self._scrub
            stop_scrub.set()
            thread.join(_UNWIND_S)
        if self._metrics is not None:
            self._metrics.shutdown()
        if self._peer_client is not None:
            self._peer_client.close()
        self.service.close()
        # Cancelled puts unwind through store.put (nothing is committed); wait for them so the
        # store is not closed under a running transaction.
        if self.service.wait_puts_done(_UNWIND_S):
            self.store.close()
        else:
            log.warning("node stopped with puts still unwinding; store left open for process exit")
        log.info("node stopped ms=%.0f", (time.monotonic() - began) * 1000)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> NodeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)


def serve(
    config: NodeConfig,
    *,
    clock: Clock | None = None,
    repair: Repairer | None = None,
    peers: PeerRows | None = None,
    store: ShardStore | None = None,
) -> NodeServer:
    """Open the store (unless given), start the server, return it running.

    `repair` rebuilds damaged rows met by GetShard before they are sent; `peers` gives the
    in-process scrubber (config scrub.enabled_in_process) sibling rows; without it the scrubber
    still verifies and repairs in place, and reports rows it could not rebuild.

    The port is mutual TLS with the config's tls_* files (peers are called with the same
    certificate); plaintext only when the config says `insecure` (FailedPrecondition otherwise).
    """
    files = tls_files(config, "node")
    if files is not None:
        server_credentials(files)  # unreadable files fail here, before the store is opened
    own_store = store is None
    if store is None:
        store = ShardStore(config.data_dir, capacity_bytes=config.capacity, simulation=config.simulation)
    own_peers = peers is None and bool(config.peers)
    if own_peers:
        peers = GrpcPeerRows(config.peers, tls=files)
    if repair is None:
        repair = RowRepairer(store, peers)  # GetShard repairs damaged rows before sending them
    try:
        node = _start(config, store, clock, repair, peers, files)
    except BaseException:
        if own_store:
            store.close()
        if own_peers:
            peers.close()  # type: ignore[union-attr]
        raise
    if own_peers:
        node._peer_client = peers
    return node


def _start(
    config: NodeConfig,
    store: ShardStore,
    clock: Clock | None,
    repair: Repairer | None,
    peers: PeerRows | None,
    files: TlsFiles | None,
) -> NodeServer:
    identity = NodeIdentity(
        name=config.name,
        satellite=config.satellite,
        plane=config.plane,
        scrub_in_process=config.scrub.enabled_in_process,
        scrub_rate_bytes_per_s=config.scrub.rate_bytes_per_s,
    )
    service = ShardStoreService(
        store,
        identity,
        clock=clock,
        repair=repair,
        max_concurrent_puts=config.max_concurrent_puts,
        roles=RoleCheck(tls=files is not None),
        peer_tls=files,  # ForwardShard calls peers with this node's own certificate
    )
    health_service = health.HealthServicer(experimental_non_blocking=True)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.max_concurrent_puts + _EXTRA_WORKERS, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Never share a port with another live process: a restarted node must fail loudly
            # if its predecessor still holds the address.
            ("grpc.so_reuseport", 0),
        ],
        # Garbage requests: INVALID_ARGUMENT, not INTERNAL; bulk messages decoded without copies.
        interceptors=[MalformedRequestInterceptor(), BulkRequestInterceptor()],
    )
    shard_store_pb2_grpc.add_ShardStoreServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    try:
        port = add_port(server, config.listen, files)
    except RuntimeError:  # grpc logs the cause itself; its exception text adds nothing for the operator
        raise FailedPrecondition(f"cannot listen on {config.listen}: address in use or not local") from None
    if not port:
        raise FailedPrecondition(f"cannot listen on {config.listen}: address in use or not local")
    host = config.listen.rpartition(":")[0]
    address = f"{host}:{port}"
    metrics = _start_metrics(config, service, host) if config.metrics_port else None
    server.start()
    for name in ("", SERVICE_NAME):
        health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "node serving address=%s tls=%s node_id=%s name=%s data_dir=%s capacity=%d used=%d shards=%d simulation=%s",
        address,
        "mtls" if files is not None else "off-insecure",
        store.node_id.hex(),
        config.name,
        config.data_dir,
        store.capacity_bytes,
        store.used_bytes(),
        store.shard_count(),
        str(store.simulation).lower(),
    )
    scrub = _start_scrubber(config, store, peers) if config.scrub.enabled_in_process else None
    return NodeServer(config, store, service, health_service, port, address, server, metrics, scrub)


def _start_scrubber(
    config: NodeConfig, store: ShardStore, peers: PeerRows | None
) -> tuple[threading.Thread, threading.Event]:
    scrubber = Scrubber(
        store, peers, rate_bytes_per_s=config.scrub.rate_bytes_per_s, interval_s=config.scrub.interval_s
    )
    stop = threading.Event()
    thread = threading.Thread(target=scrubber.run_forever, args=(stop,), name="scrubber", daemon=True)
    thread.start()
    return thread, stop


def run(config: NodeConfig, *, announce: Callable[[str], None] | None = None, **kwargs: Any) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully; `announce` gets the bound address."""
    with stop_on_signal(log) as stop:
        node = serve(config, **kwargs)
        try:
            if announce is not None:
                announce(node.address)
            while not stop.wait(0.5):
                pass
        finally:
            node.stop()


# --- metrics -----------------------------------------------------------------------------------------


class _NodeMetrics:
    """Prometheus exposition: the scrub counters persisted in the store (whichever process scrubs)
    plus this node's store gauges, read at scrape time."""

    def __init__(self, service: ShardStoreService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        store = self.service.store
        yield from ScrubCollector(store, node_gauges=False).collect()
        try:
            figures = [
                ("capacity_bytes", "Bytes the node may use for shards.", store.capacity_bytes),
                ("used_bytes", "Bytes in use by shards.", store.used_bytes()),
                ("shards", "Complete shards stored.", store.shard_count()),
                ("puts_in_flight", "PutShard streams being received.", self.service.puts_in_flight),
            ]
        except Exception:  # the store closed under a last scrape
            return
        for name, doc, value in figures:
            yield GaugeMetricFamily(f"orbitvault_node_{name}", doc, value=value)


def _start_metrics(config: NodeConfig, service: ShardStoreService, host: str) -> Any:
    from prometheus_client import start_http_server

    addr = host.strip("[]") or "127.0.0.1"
    try:
        httpd, _thread = start_http_server(config.metrics_port, addr=addr, registry=_NodeMetrics(service))
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve metrics on {addr}:{config.metrics_port}: {exc.strerror}") from None
    log.info("metrics serving address=%s:%d", addr, config.metrics_port)
    return httpd


# --- logging -----------------------------------------------------------------------------------------


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=... logger=... msg="what happened" key=value ...` on one line.

    Messages are written as a few words then key=value fields ("put committed shard=ab rows=3");
    the words become `msg`, the fields are kept as they are. Tracebacks follow on their own lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        words, fields = _split_fields(text)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} msg={_quote(words)}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _split_fields(text: str) -> tuple[str, str]:
    parts = text.split(" ")
    for i, part in enumerate(parts):
        if "=" in part and not part.startswith("="):
            return " ".join(parts[:i]), " ".join(parts[i:])
    return text, ""


def _quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_./:" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def configure_logging(level: str = "info", stream: Any = None) -> None:
    """Key=value logs on stderr (stdout stays free for what the command prints)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
