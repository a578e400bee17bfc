"""`orbitvault constellation up|down|status`: the local constellation, and the `Constellation` handle.

The work (constellation.toml, the state dir, configs, processes, status) is domain code in
`orbitvault.ground.constellation`; this module adds what needs gRPC: health probes, NodeInfo,
GetGatewayStatus and the SDK. The handle lives here, not in `ground/`, because `.client()`
returns an SDK client and domain code never imports grpc; the drill (`orbitvault demo`) is in this
package too.

    with Constellation.up(state_dir=tmp) as c:        # or Constellation.attach() to a running one
        with c.client() as s3:
            s3.put(c.bucket, "a", b"hi")
        c.kill_node("OV-12")                            # a satellite lost for good
    # leaving the block stops everything (down)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orbitvault.cli.errors import cli_errors
from orbitvault.errors import AlreadyExists, NotFound
from orbitvault.ground import constellation as dom
from orbitvault.ground.constellation import GATEWAY, ConstellationSpec, Layout, Member, StatusReport

if TYPE_CHECKING:
    import grpc

    from orbitvault.client.sdk import ObjectStoreClient
    from orbitvault.grpc.tls import TlsFiles


# --- gRPC adapters -------------------------------------------------------------------------------------

# A process being started refuses connections until it binds; grpc's default reconnect backoff
# (1 s, growing) would add seconds to `up` after it does.
_FAST = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]


class _Probes:
    """Health checks and NodeInfo over one channel per address, with the gateway's certificate
    (nodes answer ShardStore calls to gateway and node certificates only)."""

    def __init__(self, layout: Layout, tls: bool) -> None:
        from orbitvault.grpc.tls import TlsFiles

        self._files = TlsFiles(layout.ca, *layout.cert(GATEWAY)) if tls else None
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _channel(self, address: str) -> grpc.Channel:
        from orbitvault.grpc import convert
        from orbitvault.grpc.tls import open_channel

        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = open_channel(address, self._files, [*convert.CHANNEL_OPTIONS, *_FAST])
            return ch

    def healthy(self, m: Member) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            stub = health_pb2_grpc.HealthStub(self._channel(m.address))
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def node_info(self, m: Member) -> dom.NodeInfo:
        import grpc

        from orbitvault.grpc.status import error_from_rpc
        from orbitvault.grpc.v1 import shard_store_pb2 as pb
        from orbitvault.grpc.v1 import shard_store_pb2_grpc

        try:
            r = shard_store_pb2_grpc.ShardStoreStub(self._channel(m.address)).NodeInfo(
                pb.NodeInfoRequest(), timeout=3.0
            )
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        s = r.scrub
        scrub = dom.ScrubCounters(
            activity=pb.ScrubActivity.Name(s.activity).removeprefix("SCRUB_ACTIVITY_").lower(),
            passes_completed=s.passes_completed,
            shards_verified=s.shards_verified,
            bytes_verified=s.bytes_verified,
            damaged_found=s.damaged_found,
            repaired_in_place=s.repaired_in_place,
            repaired_from_peers=s.repaired_from_peers,
            unrecoverable=s.unrecoverable,
        )
        return dom.NodeInfo(r.capacity_bytes, r.used_bytes, r.shard_count, scrub, r.node_time_unix_ms)

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()


def _client_tls(settings: dom.ClientSettings) -> TlsFiles | None:
    from orbitvault.grpc.tls import TlsFiles

    if settings.insecure or settings.tls_ca is None or settings.tls_cert is None or settings.tls_key is None:
        return None
    return TlsFiles(settings.tls_ca, settings.tls_cert, settings.tls_key)


def _sdk(settings: dom.ClientSettings, **kwargs: Any) -> ObjectStoreClient:
    from orbitvault.client.sdk import ObjectStoreClient

    tls = _client_tls(settings)
    return ObjectStoreClient(settings.gateway, settings.api_key, tls=tls, insecure=tls is None, **kwargs)


def _gateway_info(settings: dom.ClientSettings) -> Callable[[Member], dom.GatewayInfo]:
    def ask(m: Member) -> dom.GatewayInfo:
        with _sdk(settings, timeout_s=3.0, retries=0) as c:
            st = c.gateway_status()
        r = st.repair
        return dom.GatewayInfo(
            nodes_known=len(st.nodes),
            nodes_up=sum(1 for n in st.nodes if n.reachability == "in_contact"),
            shards_missing=r.shards_missing,
            rows_damaged=r.rows_damaged,
            bytes_pending=r.bytes_pending,
            stripes_at_risk=r.stripes_at_risk,
            spooled_shards=st.spooled_shards,
            spooled_bytes=st.spooled_bytes,
            time_unix_ms=st.gateway_time_unix_ms,
            version=st.version,
        )

    return ask


def _ensure_bucket(settings: dom.ClientSettings, k: int, m: int) -> None:
    """The default repository's bucket, with the constellation's storage class (kept if it exists)."""
    from orbitvault.client.sdk import StorageClass

    with _sdk(settings, timeout_s=10.0) as c, suppress(AlreadyExists):
        c.create_bucket(settings.bucket, storage_class=StorageClass(k, m))


# --- the Python API ---------------------------------------------------------------------------------------


class Constellation:
    """A running local constellation: its addresses, credentials and processes.

    `up` starts it (and owns the processes: it reaps them); `attach` reads one started elsewhere
    (e.g. by `orbitvault constellation up`). Either way `down`, `kill_node` and `client` work.
    """

    def __init__(self, layout: Layout, running: dom.Running | None = None) -> None:
        state = dom.read_state(layout)
        if state is None:
            raise NotFound(f"no local constellation in {layout.root}: run `orbitvault constellation up`")
        self.layout = layout
        self.state = state
        self.settings = dom.client_settings(layout)
        # Processes this Python process started: waited for (reaped) when they stop.
        self._popens: dict[int, Any] = dict(running.popens) if running is not None else {}

    @classmethod
    def up(
        cls,
        config: str | Path | ConstellationSpec | None = None,
        state_dir: str | Path | None = None,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> Constellation:
        """Start from constellation.toml (None: the shipped sample) into `state_dir` (None: the
        default); returns once every process answers health checks and the bucket exists."""
        spec = config if isinstance(config, ConstellationSpec) else dom.load_spec(config)
        layout = Layout.at(state_dir)
        probes = _Probes(layout, spec.pki)
        try:

            def ready(run: dom.Running) -> None:
                if progress:
                    progress(f"creating bucket {spec.bucket!r} ({spec.k}+{spec.m})")
                _ensure_bucket(dom.client_settings(layout), spec.k, spec.m)

            running = dom.up(spec, layout, probe=probes.healthy, on_ready=ready, progress=progress)
        finally:
            probes.close()
        return cls(layout, running)

    @classmethod
    def attach(cls, state_dir: str | Path | None = None) -> Constellation:
        """The constellation laid out in `state_dir` (running or not)."""
        return cls(Layout.at(state_dir))

    # --- what clients need ---

    @property
    def state_dir(self) -> Path:
        return self.layout.root

    @property
    def gateway_address(self) -> str:
        return self.state.gateway.address

    @property
    def node_addresses(self) -> dict[str, str]:
        """Node name (= satellite) -> ShardStore address."""
        return {m.name: m.address for m in self.state.nodes}

    @property
    def token(self) -> str:
        return self.settings.api_key

    @property
    def bucket(self) -> str:
        return self.state.bucket

    @property
    def repository(self) -> str:
        return self.settings.repository

    @property
    def insecure(self) -> bool:
        return not self.state.tls

    @property
    def ca_path(self) -> Path | None:
        return self.layout.ca if self.state.tls else None

    @property
    def client_tls(self) -> TlsFiles | None:
        """CA, client certificate and key for the gateway (None when insecure)."""
        return _client_tls(self.settings)

    @property
    def gateway_tls(self) -> TlsFiles | None:
        """The gateway's own files: what may call the nodes directly (NodeInfo, ReadRows...)."""
        from orbitvault.grpc.tls import TlsFiles

        return TlsFiles(self.layout.ca, *self.layout.cert(GATEWAY)) if self.state.tls else None

    @property
    def gateway_config(self) -> Path:
        """The gateway's TOML config (for `orbitvault gateway rebuild --config ...`)."""
        return self.layout.config(GATEWAY)

    def node_config(self, name: str) -> Path:
        """The node's TOML config (for `orbitvault node irradiate --config ...`)."""
        self.state.member(name)
        return self.layout.config(name)

    def log_path(self, name: str) -> Path:
        self.state.member(name)
        return self.layout.log(name)

    def client(self, **kwargs: Any) -> ObjectStoreClient:
        """An SDK client for the gateway, with the constellation's TLS files and API key."""
        return _sdk(self.settings, **kwargs)

    # --- control ---

    def status(self) -> StatusReport:
        return status_report(self.layout)

    def kill_node(self, name: str) -> bool:
        """SIGKILL node `name` at once, as a satellite lost for good; it stays down (its store is
        left on disk). False if it was not running."""
        if self.state.member(name).role != "node":
            raise NotFound(f"{name!r} is not a storage node")
        return dom.kill(self.layout, name, popens=self._popens)

    def stop(self, name: str) -> bool:
        """Stop one process gracefully (e.g. "gateway" before a loss of the ground site)."""
        return dom.stop_one(self.layout, name, popens=self._popens)

    def start(self, name: str) -> None:
        """Start one stopped process again and wait until it answers health checks."""
        probes = _Probes(self.layout, self.state.tls)
        try:
            started = dom.start_one(self.layout, name, probe=probes.healthy)
        finally:
            probes.close()
        self._popens[started.popen.pid] = started.popen

    def down(self, *, purge: bool = False) -> list[str]:
        """Stop the gateway, then the nodes (graceful, SIGKILL after the timeout); `purge` deletes the state dir."""
        return dom.down(self.layout, purge=purge, popens=self._popens)

    def __enter__(self) -> Constellation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def status_report(layout: Layout) -> StatusReport:
    """Status with live gRPC answers from every running process."""
    state = dom.read_state(layout)
    if state is None:
        return dom.status(layout, node_info=_unreachable, gateway_info=_unreachable)
    probes = _Probes(layout, state.tls)
    try:
        # No client.toml: the first `up` stopped before the API key existed, so no gateway runs.
        ask_gateway = _gateway_info(dom.client_settings(layout)) if layout.client_file.exists() else _unreachable
        return dom.status(layout, node_info=probes.node_info, gateway_info=ask_gateway)
    finally:
        probes.close()


def _unreachable(m: Member) -> Any:
    raise NotFound(f"{m.name}: no credentials to ask it (client.toml missing)")


# --- the commands -------------------------------------------------------------------------------------------


_STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=dom.ENV_STATE_DIR,
    help=f"Where the constellation lives (or {dom.ENV_STATE_DIR}).  [default: user data dir / constellation]",
)


def _console() -> Any:
    """Terminal width on a terminal; wide enough for whole rows when piped or captured."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}" if n < 100 * 2**20 else f"{n / 2**20:.0f}"


@click.group()
def constellation() -> None:
    """A local constellation: a storage node per satellite and a gateway, on loopback."""


@constellation.command(short_help="Start the nodes and the gateway.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ORBITVAULT_CONSTELLATION_CONFIG",
    help="constellation.toml (or ORBITVAULT_CONSTELLATION_CONFIG).  [default: the shipped 8-satellite sample]",
)
@_STATE_DIR
def up(config_path: Path | None, state_dir: Path | None) -> None:
    """Start every node and the gateway, wait until each answers health checks, print a summary.

    The first `up` makes the state dir: master key, CA and certificates (mutual TLS, unless the
    file says insecure), tenant and API key (kept in client.toml, 0600, which the backup client
    reads when no repository is given), and the bucket. Later `up`s reuse all of it.
    """
    console = _console()
    with cli_errors():
        c = Constellation.up(config_path, state_dir, progress=lambda msg: console.print(f"[dim]•[/] {msg}"))
        _print_up(console, c)


def _print_up(console: Any, c: Constellation) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"constellation {c.state.name}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("process", "satellite", "plane", "address", "pid", "log"):
        table.add_column(col, no_wrap=col != "log")
    recs = dom.records(c.layout, c.state)
    for m in [c.state.gateway, *c.state.nodes]:
        pid = str(recs[m.name].pid) if m.name in recs else "-"
        table.add_row(m.name, m.satellite or "-", m.plane or "-", m.address, pid, str(c.layout.log(m.name)))
    console.print(table)
    security = "mutual TLS" if c.state.tls else "plaintext (insecure)"
    console.print(
        f"gateway [bold]{c.gateway_address}[/] ({c.state.mode} mode, {security}), "
        f"{len(c.state.nodes)} nodes, storage class {c.state.storage_class}"
    )
    console.print(f"repository [bold]{c.repository}[/]; API key and TLS files in {c.layout.client_file}")
    console.print("next: [bold]orbitvault init && orbitvault backup PATH[/] · status: orbitvault constellation status")
    console.print(f"stop: orbitvault constellation down{_dir_flag(c.layout)}")


def _dir_flag(layout: Layout) -> str:
    return "" if layout.root == dom.default_state_dir() else f" --state-dir {layout.root}"


@constellation.command(short_help="Nodes, gateway, repair backlog, next contacts.")
@_STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state_dir: Path | None, as_json: bool) -> None:
    """Nodes (up/down, capacity, scrub counters, next contact), gateway (nodes up, repair backlog, time)."""
    layout = Layout.at(state_dir)
    with cli_errors():
        report = status_report(layout)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    console = _console()
    if not report.exists:
        console.print(f"no local constellation in {layout.root} (not running); start one: orbitvault constellation up")
        return
    if not report.running:
        console.print(
            f"constellation {report.name} is not running ({layout.root}); start it: orbitvault constellation up"
        )
        return
    _print_status(console, report)


def _print_status(console: Any, r: StatusReport) -> None:
    from rich import box
    from rich.table import Table

    from orbitvault.orbit.timeutil import format_duration, format_time

    clock = "simulated" if r.clock == "simulated" else "wall"
    console.print(f"constellation [bold]{r.name}[/] · {r.mode} mode · {clock} clock {format_time(r.time)}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("node", "satellite", "plane", "address", "state", "used/cap MiB", "shards", "scrub passes"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("shards", "used/cap MiB") else "left")
    table.add_column("found/fixed/lost", no_wrap=True, justify="right")
    table.add_column("next contact")
    for n in r.nodes:
        if n.up:
            state = "[green]up[/]"
        else:
            state = f"[red]down[/] ({n.process})" if n.process != "running" else "[red]no answer[/]"
        contact = "-"
        if n.next_contact is not None:
            c = n.next_contact
            when = "now" if c.aos <= r.time else f"in {format_duration(c.aos - r.time)}"
            contact = f"{c.station} {when} ({format_duration(c.los - max(c.aos, r.time))})"
        cells = ["-"] * 4
        if isinstance(n.info, dom.NodeInfo):
            i, s = n.info, n.info.scrub
            fixed = s.repaired_in_place + s.repaired_from_peers
            cells = [
                f"{_mib(i.used_bytes)}/{_mib(i.capacity_bytes)}",
                str(i.shard_count),
                f"{s.passes_completed} ({s.activity})",
                f"{s.damaged_found}/{fixed}/{s.unrecoverable}",
            ]
        table.add_row(n.name, n.satellite, n.plane, n.address, state, *cells, contact)
    console.print(table)
    gw = r.gateway
    if gw is None:
        return
    if isinstance(gw.info, dom.GatewayInfo):
        g = gw.info
        console.print(
            f"gateway [bold]{gw.address}[/] [green]up[/]: {g.nodes_up}/{g.nodes_known} nodes in contact; repair "
            f"backlog {g.shards_missing} shard(s) missing, {g.rows_damaged} row(s) damaged, {g.stripes_at_risk} "
            f"stripe(s) at risk; spooled {g.spooled_shards} shard(s)"
        )
    else:
        why = f": {gw.error}" if gw.error else ""
        console.print(f"gateway {gw.address} [red]down[/] ({gw.process}{why})")
    console.print(f"{r.nodes_up}/{len(r.nodes)} nodes up · repository {r.repository}")


@constellation.command(short_help="Stop everything (--purge: and delete the state).")
@_STATE_DIR
@click.option("--purge", is_flag=True, help="Then delete the state dir: stores, catalog, keys, certificates.")
@click.option("--timeout", type=float, help="Seconds to wait after SIGTERM before SIGKILL.  [default: from the file]")
def down(state_dir: Path | None, purge: bool, timeout: float | None) -> None:
    """Stop the gateway, then the nodes (SIGTERM, then SIGKILL after a timeout). Idempotent."""
    layout = Layout.at(state_dir)
    existed = layout.root.exists()
    with cli_errors():
        started = time.monotonic()
        stopped = dom.down(layout, timeout_s=timeout, purge=purge, progress=lambda m: click.echo(f"• {m}"))
    if stopped:
        click.echo(f"stopped {len(stopped)} process(es) in {time.monotonic() - started:.1f} s")
    else:
        click.echo(f"not running ({layout.root})")
    if purge and existed:
        if layout.root.exists():
            click.echo(f"left {layout.root} alone: it does not hold a local constellation", err=True)
        else:
            click.echo(f"deleted {layout.root}")
