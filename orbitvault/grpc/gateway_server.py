"""Build and run a gateway: the ObjectStore service and gRPC health on one port, plus maintenance.

`serve(config)` loads the master key, opens the catalog (`Gateway`), binds (port 0 picks a free
port) and returns a running `GatewayServer`; `run(config)` is what `orbitvault gateway serve`
calls: it serves until SIGTERM or SIGINT, then shuts down gracefully: health turns NOT_SERVING,
new puts are refused (UNAVAILABLE, so SDKs retry elsewhere or later), in-flight calls get
`shutdown_grace_s` to finish, and a put still unfinished then is cancelled, which stores nothing:
its shards sit in a pending upload that GC removes (at once if the process stays up, or at the next
start). A second signal exits at once; the catalog's synced LMDB commits make even that safe.

Maintenance runs in one background thread, on intervals from the config: garbage collection at
start (pending uploads of a crashed predecessor) and every `pending_ttl_s`; a repair sweep every
`repair_interval_s`; a catalog checkpoint into the constellation whenever `checkpoint_due()`
(every `checkpoint_every` changes or `checkpoint_interval_s`). A failing duty is logged and tried
again next time; it never stops the server.

Scheduled mode (`mode = "scheduled"`, or puts asking for it): the executor of contact-plan
transfers runs in its own thread (`ground/scheduled.py`); with `clock = "simulated"` it advances
the simulated clock from event to event, so a day of passes runs in seconds.

Metrics (prometheus-client, on `metrics_port`): puts/gets and their bytes, puts in flight, the
repair backlog, nodes up, repair/GC/checkpoint counters. Logs are the node's key=value lines.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orbitvault.errors import FailedPrecondition, OrbitVaultError
from orbitvault.ground.config import GatewayConfig
from orbitvault.ground.crypto import MasterKey
from orbitvault.ground.gateway import Gateway
from orbitvault.ground.nodes import NodeDirectory
from orbitvault.grpc.guard import MalformedRequestInterceptor
from orbitvault.grpc.node_link import GrpcNodeLink
from orbitvault.grpc.node_server import configure_logging
from orbitvault.grpc.object_service import MAX_MESSAGE_BYTES, ObjectStoreService, ServiceCounters
from orbitvault.grpc.process import stop_on_signal
from orbitvault.grpc.tls import RoleCheck, TlsFiles, add_port, channel_credentials, server_credentials, tls_files
from orbitvault.grpc.v1 import object_store_pb2, object_store_pb2_grpc
from orbitvault.grpc.wire import BulkRequestInterceptor
from orbitvault.orbit.clock import Clock

__all__ = ["GatewayServer", "build_directory", "configure_logging", "load_master_key", "run", "serve"]

log = logging.getLogger("orbitvault.gateway")

SERVICE_NAME = object_store_pb2.DESCRIPTOR.services_by_name["ObjectStore"].full_name
# Calls beyond the put slots: reads, lists and heads go on while puts stream in.
_EXTRA_WORKERS = 16
# Calls admitted per worker thread (running or queued); beyond that the gateway is overloaded.
_QUEUE_FACTOR = 4
# After the grace period, how long cancelled puts get to unwind before the catalog is closed.
_UNWIND_S = 15.0
# How often the maintenance thread wakes to see what is due (it also wakes on stop).
_TICK_S = 1.0
# After a failed checkpoint, how long before the next attempt.
_CHECKPOINT_RETRY_S = 30.0


def load_master_key(config: GatewayConfig) -> MasterKey:
    """The master key from the config's file or passphrase; a clear error when neither is given."""
    if config.master_key_file is not None:
        return MasterKey.from_file(config.master_key_file)
    if config.master_key_passphrase is not None:
        assert config.master_key_salt is not None  # GatewayConfig insists on a salt with a passphrase
        return MasterKey.from_passphrase(config.master_key_passphrase, config.master_key_salt)
    raise FailedPrecondition(
        "the gateway needs its master key: set master_key_file (make one with `orbitvault gateway keygen "
        "--out FILE`) or master_key_passphrase and master_key_salt (ORBITVAULT_GATEWAY_MASTER_KEY_PASSPHRASE)"
    )


def build_directory(config: GatewayConfig, *, clock: Clock | None = None) -> NodeDirectory:
    """One gRPC link per configured node address, mTLS with the gateway's certificate (plaintext
    only for an `insecure` gateway)."""
    if not config.nodes:
        raise FailedPrecondition(
            "no storage nodes configured: list their addresses in `nodes` (or ORBITVAULT_GATEWAY_NODES)"
        )
    files = tls_files(config, "gateway")
    creds = channel_credentials(files) if files is not None else None
    return NodeDirectory([GrpcNodeLink(a, credentials=creds) for a in config.nodes], clock=clock)


# --- maintenance -----------------------------------------------------------------------------------


@dataclass
class MaintenanceStats:
    """Counters of the background duties (for metrics and status)."""

    repair_sweeps: int = 0
    shards_rebuilt: int = 0
    shards_repair_failed: int = 0
    gc_runs: int = 0
    gc_shards_deleted: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    duty_failures: int = 0


class Maintenance:
    """Runs repair, GC and checkpoints on their intervals in one thread (so they never overlap)."""

    def __init__(self, gateway: Gateway, config: GatewayConfig, *, gc_at_start: bool = True) -> None:
        self.gateway = gateway
        self.config = config
        self.stats = MaintenanceStats()
        self._stop = threading.Event()
        self._gc_at_start = gc_at_start
        self._thread = threading.Thread(target=self._run, name="gateway-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to stop after its current duty; False if it is still busy after `timeout`."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        now = time.monotonic()
        next_repair = now + self.config.repair_interval_s
        next_gc = now if self._gc_at_start else now + self.config.pending_ttl_s
        next_checkpoint = now
        # Run GC more often than the TTL, so an expired upload never waits a second TTL.
        gc_every = max(min(self.config.pending_ttl_s / 2, self.config.repair_interval_s), _TICK_S)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_gc:
                self._duty("gc", self._gc)
                next_gc = time.monotonic() + gc_every
            if self._stop.is_set():
                break
            if now >= next_repair:
                self._duty("repair", self._repair)
                next_repair = time.monotonic() + self.config.repair_interval_s
            if self._stop.is_set():
                break
            if now >= next_checkpoint and not self._duty("checkpoint", self._checkpoint_if_due):
                # Nodes down, most likely: try again later rather than every tick.
                next_checkpoint = time.monotonic() + _CHECKPOINT_RETRY_S
            self._stop.wait(min(_TICK_S, self.config.repair_interval_s))

    def _duty(self, name: str, fn: Callable[[], None]) -> bool:
        """Run one duty; False (logged) if it failed."""
        try:
            fn()
        except OrbitVaultError as exc:
            self.stats.duty_failures += 1
            log.warning("maintenance failed duty=%s error=%r", name, str(exc))
            return False
        except Exception:
            self.stats.duty_failures += 1
            log.exception("maintenance crashed duty=%s", name)
            return False
        return True

    def _gc(self) -> None:
        report = self.gateway.collect_garbage()
        first = self.stats.gc_runs == 0
        self.stats.gc_runs += 1
        self.stats.gc_shards_deleted += report.shards_deleted + report.orphans_deleted
        # The first run (leftovers of a crashed predecessor) is always logged, so operators and
        # tests can tell when the gateway has cleaned up after a crash.
        if first or report.pending_uploads_removed or report.shards_deleted or report.orphans_deleted:
            log.info(
                "gc done uploads_removed=%d shards_deleted=%d orphans_deleted=%d tombstones_left=%d",
                report.pending_uploads_removed,
                report.shards_deleted,
                report.orphans_deleted,
                report.tombstones_left,
            )

    def _repair(self) -> None:
        report = self.gateway.repair_once()
        self.stats.repair_sweeps += 1
        self.stats.shards_rebuilt += report.shards_rebuilt
        self.stats.shards_repair_failed += report.shards_failed
        if report.shards_rebuilt or report.shards_failed or report.nodes_gone:
            log.info(
                "repair sweep rebuilt=%d failed=%d bytes=%d nodes_gone=%d backlog=%d",
                report.shards_rebuilt,
                report.shards_failed,
                report.bytes_written,
                len(report.nodes_gone),
                report.backlog,
            )
        for error in report.errors[:5]:
            log.warning("repair error error=%r", error)

    def _checkpoint_if_due(self) -> None:
        if not self.gateway.checkpoint_due():
            return
        seq = self.gateway.checkpoint()
        self.stats.checkpoints += 1
        self.stats.last_checkpoint_seq = seq
        log.info("catalog checkpoint written seq=%d", seq)


# --- the server --------------------------------------------------------------------------------------


@dataclass
class GatewayServer:
    """A running gateway: its bound address, facade and services. Stop it with `stop()`."""

    config: GatewayConfig
    gateway: Gateway
    directory: NodeDirectory
    service: ObjectStoreService
    health: health.HealthServicer
    port: int
    address: str
    shutdown_grace_s: float
    _server: grpc.Server
    maintenance: Maintenance | None = None
    _metrics: Any = None
    rest: Any = None  # the restic REST endpoint (orbitvault.rest.server.RestServer) when [rest] is set
    _stopped: bool = field(default=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def counters(self) -> ServiceCounters:
        return self.service.counters

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (idempotent): refuse new puts, let in-flight calls run for `grace`
        seconds (default: shutdown_grace_s), cancel the rest, stop maintenance, close the catalog."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        grace = self.shutdown_grace_s if grace is None else grace
        began = time.monotonic()
        log.info("gateway stopping grace_s=%g puts_in_flight=%d", grace, self.counters.puts_in_flight)
        self.health.enter_graceful_shutdown()
        self.service.stop_accepting_puts()
        if self.rest is not None:
            self.rest.stop(grace)
        self._server.stop(grace).wait()
        if self.maintenance is not None and not self.maintenance.stop(_UNWIND_S):
            log.warning("gateway maintenance still busy at shutdown; leaving it to process exit")
        if self._metrics is not None:
            self._metrics.shutdown()
        # Cancelled puts unwind through the facade (their pending uploads are discarded); wait for
        # them so the catalog is not closed under a running transaction.
        if self.counters.wait_puts_done(_UNWIND_S):
            self.gateway.close()
            self.directory.close()
        else:
            log.warning("gateway stopped with puts still unwinding; catalog left open for process exit")
        log.info("gateway stopped ms=%.0f", (time.monotonic() - began) * 1000)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> GatewayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)


def serve(
    config: GatewayConfig,
    *,
    master_key: MasterKey | None = None,
    directory: NodeDirectory | None = None,
    clock: Clock | None = None,
    maintenance: bool = True,
    shutdown_grace_s: float = 30.0,
) -> GatewayServer:
    """Open the catalog, start the server (and, unless `maintenance=False`, the background duties).

    The port is mutual TLS with the config's tls_* files (client and gateway certificates may call,
    each still with an API key); plaintext only when the config says `insecure`.
    """
    files = tls_files(config, "gateway")
    if files is not None:
        server_credentials(files)  # unreadable files fail here, before the catalog is opened
    key = master_key or load_master_key(config)
    own_directory = directory is None
    directory = directory or build_directory(config, clock=clock)
    try:
        gateway = Gateway(config, directory, key, clock=clock)
    except BaseException:
        if own_directory:
            directory.close()
        raise
    try:
        return _start(config, gateway, directory, maintenance, shutdown_grace_s, files)
    except BaseException:
        gateway.close()
        if own_directory:
            directory.close()
        raise


def _start(
    config: GatewayConfig,
    gateway: Gateway,
    directory: NodeDirectory,
    maintenance: bool,
    shutdown_grace_s: float,
    files: TlsFiles | None,
) -> GatewayServer:
    service = ObjectStoreService(gateway, roles=RoleCheck(tls=files is not None))
    health_service = health.HealthServicer(experimental_non_blocking=True)
    workers = config.max_put_concurrency + _EXTRA_WORKERS
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-rpc"),
        # Calls queued beyond this are refused (RESOURCE_EXHAUSTED) instead of piling up in memory.
        maximum_concurrent_rpcs=workers * _QUEUE_FACTOR,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        # Garbage requests: INVALID_ARGUMENT, not INTERNAL; bulk messages decoded without copies.
        interceptors=[MalformedRequestInterceptor(), BulkRequestInterceptor()],
    )
    object_store_pb2_grpc.add_ObjectStoreServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    try:
        port = add_port(server, config.listen, files)
    except RuntimeError:
        raise FailedPrecondition(f"cannot listen on {config.listen}: address in use or not local") from None
    if not port:
        raise FailedPrecondition(f"cannot listen on {config.listen}: address in use or not local")
    host = config.listen.rpartition(":")[0]
    address = f"{host}:{port}"
    try:
        gateway.refresh_nodes(force=True)
    except OrbitVaultError as exc:  # nodes down at start are the repair loop's business, not fatal
        log.warning("node refresh at start failed error=%r", str(exc))
    maint = Maintenance(gateway, config) if maintenance else None
    metrics = _start_metrics(config, service, gateway, maint, host) if config.metrics_port else None
    # Scheduled mode's executor, before the first put can arrive: it clears spool leftovers first.
    gateway.start_scheduler()
    server.start()
    for name in ("", SERVICE_NAME):
        health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    up = sum(1 for st in directory.states() if st.up)
    log.info(
        "gateway serving address=%s tls=%s state_dir=%s nodes=%d nodes_up=%d pid=%d",
        address,
        "mtls" if files is not None else "off-insecure",
        config.state_dir,
        len(directory),
        up,
        os.getpid(),
    )
    rest = _start_rest(config, gateway) if config.rest is not None else None
    if maint is not None:
        maint.start()
    return GatewayServer(
        config,
        gateway,
        directory,
        service,
        health_service,
        port,
        address,
        shutdown_grace_s,
        server,
        maint,
        metrics,
        rest,
    )


def _start_rest(config: GatewayConfig, gateway: Gateway) -> Any:
    """restic's REST endpoint on the same facade (same catalog, keys, audit), from the [rest] table."""
    from orbitvault.rest.config import load_rest_settings
    from orbitvault.rest.server import serve_rest

    settings = load_rest_settings(config.rest, source="[rest] of the gateway config", gateway=config)
    rest = serve_rest(gateway, settings)
    log.info("rest serving url=%s", rest.url)
    return rest


def run(
    config: GatewayConfig,
    *,
    announce: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully; `announce` gets the bound address."""
    with stop_on_signal(log) as stop:
        gw = serve(config, **kwargs)
        try:
            if announce is not None:
                announce(gw.address)
                if gw.rest is not None:
                    announce(f"{gw.rest.url} (restic REST)")
            while not stop.wait(0.5):
                pass
        finally:
            gw.stop()


# --- metrics -----------------------------------------------------------------------------------------


class _GatewayMetrics:
    """Prometheus exposition, read at scrape time: client traffic counters, the repair backlog from
    the catalog, node reachability as last seen (a scrape never calls the nodes)."""

    def __init__(self, service: ObjectStoreService, gateway: Gateway, maintenance: Maintenance | None) -> None:
        self.service = service
        self.gateway = gateway
        self.maintenance = maintenance

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self.service.counters.snapshot()
        for name, doc in [
            ("puts", "PutObject calls that stored an object."),
            ("put_bytes", "Object bytes stored by PutObject."),
            ("puts_failed", "PutObject calls that failed (nothing stored)."),
            ("gets", "GetObject calls finished."),
            ("get_bytes", "Object bytes sent by GetObject."),
            ("gets_failed", "GetObject calls that ended early."),
        ]:
            yield CounterMetricFamily(f"orbitvault_gateway_{name}", doc, value=c[name])
        yield GaugeMetricFamily("orbitvault_gateway_puts_in_flight", "PutObject streams running.", c["puts_in_flight"])
        yield from _security_metrics(self.gateway)
        states = self.gateway.nodes.states()
        yield GaugeMetricFamily("orbitvault_gateway_nodes", "Storage nodes configured.", len(states))
        yield GaugeMetricFamily("orbitvault_gateway_nodes_up", "Storage nodes answering.", sum(st.up for st in states))
        try:
            b = self.gateway.repair_backlog()
        except Exception:  # the catalog closed under a last scrape
            return
        for name, doc, value in [
            ("repair_shards_missing", "Shards to rebuild or place.", b.shards_missing),
            ("repair_rows_damaged", "Damaged rows reported and not yet repaired.", b.rows_damaged),
            ("repair_bytes_pending", "Bytes to write to finish the repair backlog.", b.bytes_pending),
            ("repair_stripes_at_risk", "Stripes with exactly k healthy shards.", b.stripes_at_risk),
        ]:
            yield GaugeMetricFamily(f"orbitvault_gateway_{name}", doc, value=value)
        if self.maintenance is not None:
            s = self.maintenance.stats
            for name, doc, value in [
                ("repair_sweeps", "Repair sweeps run.", s.repair_sweeps),
                ("shards_rebuilt", "Shards rebuilt by repair.", s.shards_rebuilt),
                ("gc_shards_deleted", "Shards deleted by garbage collection.", s.gc_shards_deleted),
                ("checkpoints", "Catalog checkpoints written.", s.checkpoints),
                ("maintenance_failures", "Maintenance duties that failed.", s.duty_failures),
            ]:
                yield CounterMetricFamily(f"orbitvault_gateway_{name}", doc, value=value)


def _security_metrics(gateway: Gateway) -> Iterator[Any]:
    """Intrusion alerts by kind, rate-limited calls by tenant, failed logins, audit log health."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    ids = gateway.ids.snapshot()
    alerts = CounterMetricFamily(
        "orbitvault_gateway_ids_alerts", "Intrusion-detection alerts raised, by kind.", labels=["kind"]
    )
    for kind, n in sorted(ids["alerts"].items()):
        alerts.add_metric([kind], n)
    yield alerts
    limited = CounterMetricFamily(
        "orbitvault_gateway_rate_limited", "Calls refused by the per-tenant rate limit.", labels=["tenant"]
    )
    for tenant, n in sorted(ids["rate_limited"].items()):
        limited.add_metric([tenant], n)
    yield limited
    yield CounterMetricFamily(
        "orbitvault_gateway_auth_failures", "Failed authentications (API keys, MFA codes).", value=ids["auth_failures"]
    )
    yield CounterMetricFamily(
        "orbitvault_gateway_audit_entries", "Audit entries appended.", value=gateway.audit.appended
    )
    yield CounterMetricFamily(
        "orbitvault_gateway_audit_failures", "Audit appends that failed.", value=gateway.audit.failures
    )
    yield GaugeMetricFamily(
        "orbitvault_gateway_audit_writable",
        "1 while the audit log takes writes.",
        value=0 if gateway.audit.broken else 1,
    )


def _start_metrics(
    config: GatewayConfig, service: ObjectStoreService, gateway: Gateway, maint: Maintenance | None, host: str
) -> Any:
    from prometheus_client import start_http_server

    addr = host.strip("[]") or "127.0.0.1"
    try:
        httpd, _thread = start_http_server(
            config.metrics_port, addr=addr, registry=_GatewayMetrics(service, gateway, maint)
        )
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve metrics on {addr}:{config.metrics_port}: {exc.strerror}") from None
    log.info("metrics serving address=%s:%d", addr, config.metrics_port)
    return httpd
