"""`orbitvault gateway ...`: run and administer the ground gateway.

Adapters only: options are parsed here, the work is in `orbitvault.ground` (the `Gateway` facade)
and `orbitvault.grpc.gateway_server`. Admin commands (tenant, key, rebuild) open the gateway's
state directory directly, as the note's seams intend: LMDB is multi-process, so they work while
the server runs. Errors raised on purpose (`OrbitVaultError`) become one-line CLI errors, never
tracebacks. gRPC is imported only by the commands that need it, so `orbitvault --help` stays fast.

Secrets: `keygen` writes the master key file (mode 0600, never overwritten); `key create` prints
the API token once, alone on stdout (so `TOKEN=$(orbitvault gateway key create acme)` works), with
the explanation on stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from orbitvault.errors import OrbitVaultError

_CONFIG_HELP = "Gateway config (TOML). ORBITVAULT_GATEWAY_* variables override it, flags override both."


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except OrbitVaultError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # state dir unreadable, disk full, ...: say which file, not a traceback
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"{e.strerror or e}{where}") from None


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that opens the gateway's state takes."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP),
        click.option(
            "--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the catalog (LMDB) lives."
        ),
        click.option(
            "--master-key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The master key file (`gateway keygen`).",
        ),
        click.option("--nodes", help='Storage node addresses, comma-separated ("host:port,host:port").'),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(config_path: Path | None, **overrides: Any) -> Any:
    from orbitvault.ground.config import load_gateway_config

    return load_gateway_config(config_path, overrides=overrides)


@contextmanager
def _open_gateway(config: Any, *, need_nodes: bool = False) -> Iterator[Any]:
    """The facade on the config's state dir (nodes are only contacted by commands that need them)."""
    from orbitvault.ground.gateway import Gateway
    from orbitvault.ground.nodes import NodeDirectory
    from orbitvault.grpc.gateway_server import build_directory, load_master_key

    key = load_master_key(config)
    directory = build_directory(config) if (need_nodes or config.nodes) else NodeDirectory()
    try:
        gw = Gateway(config, directory, key)
        try:
            yield gw
        finally:
            gw.close()
    finally:
        directory.close()


@click.group()
def gateway() -> None:
    """Run and administer the ground gateway (ObjectStore service)."""


# --- serve -------------------------------------------------------------------------------------------


@gateway.command()
@_config_options
@click.option("--listen", help='gRPC address "host:port"; port 0 picks a free one.  [default: 127.0.0.1:7300]')
@click.option("--metrics-port", type=int, help="Prometheus HTTP port (0 = off).")
@click.option(
    "--shutdown-grace",
    type=float,
    default=30.0,
    show_default=True,
    help="SIGTERM: seconds in-flight puts may take to finish.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    config_path: Path | None,
    state_dir: Path | None,
    master_key_file: Path | None,
    nodes: str | None,
    listen: str | None,
    metrics_port: int | None,
    shutdown_grace: float,
    log_level: str,
) -> None:
    """Serve the ObjectStore and gRPC health services until SIGTERM or Ctrl-C.

    Prints "listening on HOST:PORT" once the port is bound; logs (key=value) go to stderr.
    Repair, garbage collection and catalog checkpoints run in the background.
    """
    with _errors():
        config = _load(
            config_path,
            state_dir=state_dir,
            master_key_file=master_key_file,
            nodes=nodes,
            listen=listen,
            metrics_port=metrics_port,
        )
        from orbitvault.grpc.gateway_server import configure_logging, run

        configure_logging(log_level)
        run(
            config,
            announce=lambda address: click.echo(f"listening on {address}", nl=True),
            shutdown_grace_s=shutdown_grace,
        )


# --- keygen --------------------------------------------------------------------------------------------


@gateway.command()
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to create (0600)."
)
def keygen(out: Path) -> None:
    """Create a new master key file (32 random bytes, hex). Keep a copy offline: without it a
    gateway rebuilt from orbit cannot read any object."""
    from orbitvault.ground.crypto import MasterKey

    with _errors():
        key = MasterKey.generate()
        key.write_file(out)
    click.echo(f"master key written to {out} (fingerprint {key.fingerprint().hex()})")
    click.echo("keep a copy offline; set master_key_file in the gateway config to use it", err=True)


# --- tenants and keys ------------------------------------------------------------------------------------


@gateway.group()
def tenant() -> None:
    """Manage tenants (each sees only its own buckets)."""


@tenant.command("create")
@click.argument("name")
@_config_options
def tenant_create(
    name: str, config_path: Path | None, state_dir: Path | None, master_key_file: Path | None, nodes: str | None
) -> None:
    """Create tenant NAME (with its own key, wrapped by the master key)."""
    with _errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            gw.create_tenant(name)
    click.echo(f"tenant {name} created")


@gateway.group()
def key() -> None:
    """Manage API keys."""


@key.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.option(
    "--mode",
    type=click.Choice(["full", "read-only", "append-only"]),
    default="full",
    show_default=True,
    help="append-only: no deletes, no overwrites, no retention shortening.",
)
@_config_options
def key_create(
    tenant_name: str,
    mode: str,
    config_path: Path | None,
    state_dir: Path | None,
    master_key_file: Path | None,
    nodes: str | None,
) -> None:
    """Create an API key for TENANT and print its token (shown once; only a hash is stored)."""
    from orbitvault.ground.model import KeyMode

    with _errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            api_key = gw.create_api_key(tenant_name, KeyMode(mode))
    click.echo(f"created {api_key.mode} key {api_key.key_id} for tenant {api_key.tenant}", err=True)
    click.echo(api_key.token)
    click.echo("store this token now: it is not shown again (send it as x-orbitvault-api-key)", err=True)


@key.command("delete")
@click.argument("key_id")
@_config_options
def key_delete(
    key_id: str, config_path: Path | None, state_dir: Path | None, master_key_file: Path | None, nodes: str | None
) -> None:
    """Revoke the API key KEY_ID (the 16 hex digits after `ovk_`)."""
    with _errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            gw.delete_api_key(key_id)
    click.echo(f"key {key_id} deleted")


# --- rebuild ----------------------------------------------------------------------------------------------


@gateway.command()
@_config_options
def rebuild(config_path: Path | None, state_dir: Path | None, master_key_file: Path | None, nodes: str | None) -> None:
    """Recover the catalog from the storage nodes alone into an empty state directory.

    Lists every shard on every node (their headers carry encrypted catalog records), reads the
    newest catalog checkpoint stored in orbit, and rebuilds tenants, keys, buckets and objects.
    Needs the gateway's master key. Exits 3 if some node could not be listed (the catalog is then
    incomplete; run again with every node up into an empty directory).
    """
    from orbitvault.ground.gateway import Gateway
    from orbitvault.grpc.gateway_server import build_directory, load_master_key

    with _errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        master = load_master_key(config)
        directory = build_directory(config)
        try:
            report = Gateway.rebuild(config, directory, master)
        finally:
            directory.close()
    click.echo(
        f"rebuilt {config.state_dir}: checkpoint {report.checkpoint_seq or 'none'}, "
        f"{report.tenants} tenant(s), {report.api_keys} key(s), {report.buckets} bucket(s), "
        f"{report.objects} object(s) ({report.objects_from_headers} newer than the checkpoint)"
    )
    click.echo(
        f"nodes listed {report.nodes_listed}, unreachable {report.nodes_unreachable}; shards seen "
        f"{report.shards_seen}, missing {report.shards_missing} (queued for repair), orphans {report.orphan_shards}"
    )
    for what in report.objects_dropped[:20]:
        click.echo(f"dropped: {what}", err=True)
    for error in report.errors[:20]:
        click.echo(f"error: {error}", err=True)
    if report.nodes_unreachable:
        raise SystemExit(3)


# --- status ---------------------------------------------------------------------------------------------


@gateway.command()
@click.option("--address", help='The gateway\'s address "host:port" (default: listen from --config).')
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP)
@click.option("--api-key", envvar="ORBITVAULT_API_KEY", help="An API token (or ORBITVAULT_API_KEY).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the answer.")
def status(address: str | None, config_path: Path | None, api_key: str | None, timeout: float) -> None:
    """Ask a running gateway for its nodes and repair backlog."""
    with _errors():
        if address is None:
            address = _load(config_path).listen
        if not api_key:
            raise click.ClickException("an API key is needed: --api-key or ORBITVAULT_API_KEY")
        from orbitvault.client.sdk import ObjectStoreClient

        with ObjectStoreClient(address, api_key, timeout_s=timeout, retries=1) as client:
            st = client.gateway_status()
    click.echo(f"gateway {address} version {st.version}")
    up = sum(1 for n in st.nodes if n.reachability == "in_contact")
    click.echo(f"nodes: {len(st.nodes)} known, {up} up")
    for n in st.nodes:
        used = f"{n.used_bytes / 2**20:.1f}/{n.capacity_bytes / 2**20:.0f} MiB"
        plane = f" plane {n.plane}" if n.plane else ""
        click.echo(f"  {n.node_id.hex()[:16]}  {n.name:<12} {n.address:<21} {n.reachability:<14} {used}{plane}")
    r = st.repair
    click.echo(
        f"repair backlog: {r.shards_missing} shard(s) missing, {r.rows_damaged} row(s) damaged, "
        f"{r.bytes_pending} byte(s) pending, {r.stripes_at_risk} stripe(s) at risk"
    )
