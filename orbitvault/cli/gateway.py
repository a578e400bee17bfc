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

import getpass
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from orbitvault.cli.errors import cli_errors

_CONFIG_HELP = "Gateway config (TOML). ORBITVAULT_GATEWAY_* variables override it, flags override both."


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


def _tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """mTLS files (or plaintext with --insecure) for commands that open network connections."""
    options = [
        click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), help="CA certificate (mTLS)."),
        click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Our certificate."),
        click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="Our private key."),
        click.option(
            "--insecure", is_flag=True, default=None, help="Plaintext gRPC without TLS: local development only."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _actor() -> str:
    """Who runs an admin command, for the audit log: cli:user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


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
    # Admin commands work on the catalog alone; only those that need the nodes open links (and so
    # need the gateway's TLS files or insecure).
    directory = build_directory(config) if need_nodes else NodeDirectory()
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
@_tls_options
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
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool | None,
    listen: str | None,
    metrics_port: int | None,
    shutdown_grace: float,
    log_level: str,
) -> None:
    """Serve the ObjectStore and gRPC health services until SIGTERM or Ctrl-C.

    Mutual TLS with tls_ca/tls_cert/tls_key (`orbitvault pki issue gateway NAME`), both towards
    clients (client certificates plus an API key) and towards the nodes; plaintext needs --insecure.

    Prints "listening on HOST:PORT" once the port is bound; logs (key=value) go to stderr.
    Repair, garbage collection and catalog checkpoints run in the background.

    Scheduled mode (config: mode = "scheduled", constellation / contact_plan, clock, sim_start,
    spool_dir): puts return once spooled on the ground and the gateway uplinks them in contact
    windows. With clock = "simulated" the executor jumps from event to event while work is queued,
    so a demo puts its objects and polls `gateway status` / GetObjectStatus until DURABLE.
    """
    with cli_errors():
        config = _load(
            config_path,
            state_dir=state_dir,
            master_key_file=master_key_file,
            nodes=nodes,
            listen=listen,
            metrics_port=metrics_port,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            insecure=insecure,
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

    with cli_errors():
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
    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            gw.create_tenant(name, actor=_actor())
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

    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            api_key = gw.create_api_key(tenant_name, KeyMode(mode), actor=_actor())
    click.echo(f"created {api_key.mode} key {api_key.key_id} for tenant {api_key.tenant}", err=True)
    click.echo(api_key.token)
    click.echo("store this token now: it is not shown again (send it as x-orbitvault-api-key)", err=True)


@key.command("delete")
@click.argument("key_id")
@click.option("--mfa", "mfa_code", help="A current TOTP code (needed when the key's tenant has MFA).")
@_config_options
def key_delete(
    key_id: str,
    mfa_code: str | None,
    config_path: Path | None,
    state_dir: Path | None,
    master_key_file: Path | None,
    nodes: str | None,
) -> None:
    """Revoke the API key KEY_ID (the 16 hex digits after `ovk_`)."""
    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            gw.delete_api_key(key_id, actor=_actor(), mfa=mfa_code)
    click.echo(f"key {key_id} deleted")


# --- MFA --------------------------------------------------------------------------------------------------


@gateway.group()
def mfa() -> None:
    """TOTP second factor for a tenant's destructive calls (like S3 MFA Delete)."""


@mfa.command("enable")
@click.argument("tenant_name", metavar="TENANT")
@click.option(
    "--exempt",
    multiple=True,
    help="Object key glob that needs no code (repeatable), e.g. 'locks/*' for a backup repository's locks.",
)
@_config_options
def mfa_enable(
    tenant_name: str,
    exempt: tuple[str, ...],
    config_path: Path | None,
    state_dir: Path | None,
    master_key_file: Path | None,
    nodes: str | None,
) -> None:
    """Enable MFA for TENANT and print the otpauth:// URI (and the secret) for an authenticator app.

    From now on deleting objects or buckets, overwriting objects, shortening retention, lifting a
    legal hold and deleting the tenant's API keys need a current 6-digit code. The secret is shown
    only now; it is stored wrapped by the master key.
    """
    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            enrolment = gw.mfa_enable(tenant_name, exempt=exempt, actor=_actor())
    click.echo(enrolment.uri)
    click.echo(f"secret (base32): {enrolment.secret_b32}", err=True)
    click.echo(
        "add it to an authenticator app now (scan the URI as a QR code or type the secret): it is not shown again",
        err=True,
    )


@mfa.command("disable")
@click.argument("tenant_name", metavar="TENANT")
@click.option("--code", required=True, help="A current code from the tenant's authenticator.")
@_config_options
def mfa_disable(
    tenant_name: str,
    code: str,
    config_path: Path | None,
    state_dir: Path | None,
    master_key_file: Path | None,
    nodes: str | None,
) -> None:
    """Disable MFA for TENANT (needs a current code)."""
    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            gw.mfa_disable(tenant_name, code, actor=_actor())
    click.echo(f"MFA disabled for tenant {tenant_name}")


@mfa.command("status")
@click.argument("tenant_name", metavar="TENANT")
@_config_options
def mfa_status(
    tenant_name: str, config_path: Path | None, state_dir: Path | None, master_key_file: Path | None, nodes: str | None
) -> None:
    """Whether TENANT has MFA, since when, and its exempt patterns."""
    import datetime as dt

    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        with _open_gateway(config) as gw:
            rec = gw.mfa_status(tenant_name)
    if rec is None:
        click.echo(f"tenant {tenant_name}: MFA off")
        return
    since = dt.datetime.fromtimestamp(rec.enabled_unix_ms / 1000, dt.UTC)
    exempt = ", ".join(rec.exempt) or "none"
    click.echo(f"tenant {tenant_name}: MFA on since {since:%Y-%m-%d %H:%M} UTC; exempt: {exempt}")


# --- rebuild ----------------------------------------------------------------------------------------------


@gateway.command()
@_config_options
@_tls_options
def rebuild(
    config_path: Path | None,
    state_dir: Path | None,
    master_key_file: Path | None,
    nodes: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool | None,
) -> None:
    """Recover the catalog from the storage nodes alone into an empty state directory.

    Lists every shard on every node (their headers carry encrypted catalog records), reads the
    newest catalog checkpoint stored in orbit, and rebuilds tenants, keys, buckets and objects.
    Needs the gateway's master key. Exits 3 if some node could not be listed (the catalog is then
    incomplete; run again with every node up into an empty directory).
    """
    from orbitvault.ground.gateway import Gateway
    from orbitvault.grpc.gateway_server import build_directory, load_master_key

    with cli_errors():
        config = _load(
            config_path,
            state_dir=state_dir,
            master_key_file=master_key_file,
            nodes=nodes,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            insecure=insecure,
        )
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
@_tls_options
def status(
    address: str | None,
    config_path: Path | None,
    api_key: str | None,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool | None,
) -> None:
    """Ask a running gateway for its nodes and repair backlog.

    TLS: --tls-* (a client certificate), else the gateway's own files from --config; --insecure
    for a plaintext gateway.
    """
    with cli_errors():
        config = None
        if address is None or (config_path is not None and tls_ca is None and not insecure):
            config = _load(config_path)
            address = address or config.listen
        if not api_key:
            raise click.ClickException("an API key is needed: --api-key or ORBITVAULT_API_KEY")
        from orbitvault.client.sdk import ObjectStoreClient
        from orbitvault.grpc.tls import TlsFiles

        tls = None
        if tls_ca is not None or tls_cert is not None or tls_key is not None:
            if tls_ca is None or tls_cert is None or tls_key is None:
                raise click.ClickException("--tls-ca, --tls-cert and --tls-key go together")
            tls = TlsFiles(tls_ca, tls_cert, tls_key)
        elif config is not None and config.tls_ca is not None and not insecure:
            tls = TlsFiles(config.tls_ca, config.tls_cert, config.tls_key)
        elif config is not None and config.insecure and insecure is None:
            insecure = True
        with ObjectStoreClient(
            address, api_key, timeout_s=timeout, retries=1, tls=tls, insecure=bool(insecure)
        ) as client:
            st = client.gateway_status()
    click.echo(f"gateway {address} version {st.version}")
    up = sum(1 for n in st.nodes if n.reachability == "in_contact")
    click.echo(f"nodes: {len(st.nodes)} known, {up} up")
    for n in st.nodes:
        used = f"{n.used_bytes / 2**20:.1f}/{n.capacity_bytes / 2**20:.0f} MiB"
        plane = f" plane {n.plane}" if n.plane else ""
        sat = f" on {n.satellite}" if n.satellite else ""
        addr = n.address or "-"  # only the operator's (gateway) certificate is told addresses
        click.echo(f"  {n.node_id.hex()[:16]}  {n.name:<12} {addr:<21} {n.reachability:<14} {used}{plane}{sat}")
    r = st.repair
    click.echo(
        f"repair backlog: {r.shards_missing} shard(s) missing, {r.rows_damaged} row(s) damaged, "
        f"{r.bytes_pending} byte(s) pending, {r.stripes_at_risk} stripe(s) at risk"
    )
    clock = "simulated" if st.simulated_clock else "wall"
    click.echo(f"mode {st.mode or 'direct'}, {clock} clock at {_when(st.gateway_time_unix_ms)}")
    if st.spooled_shards or st.backlog_bytes or st.restores_in_progress:
        from orbitvault.orbit.rpo import Prediction

        durable = _when(st.backlog_durable_unix_ms) if st.backlog_durable_unix_ms else "beyond the contact plan"
        bound = _when(st.backlog_bound_unix_ms) if st.backlog_bound_unix_ms else "-"
        rpo = Prediction(
            "backlog",
            st.backlog_bytes,
            st.gateway_time_unix_ms / 1000,
            st.backlog_durable_unix_ms / 1000 or None,
            st.backlog_bound_unix_ms / 1000 or None,
            0,
            0.0,
        ).ratio
        ratio = f", {rpo:.2f}x the bound" if rpo is not None else ""
        click.echo(
            f"spool: {st.spooled_shards} shard(s), {st.backlog_bytes} byte(s) to uplink; RPO: DURABLE by {durable} "
            f"(capacity bound {bound}{ratio}); {st.restores_in_progress} restore(s) in progress"
        )


def _when(unix_ms: int) -> str:
    from orbitvault.orbit.timeutil import format_time

    return format_time(unix_ms / 1000)


# --- audit ---------------------------------------------------------------------------------------------


@gateway.group()
def audit() -> None:
    """The gateway's hash-chained audit log."""


@audit.command("verify")
@_config_options
def audit_verify(
    config_path: Path | None, state_dir: Path | None, master_key_file: Path | None, nodes: str | None
) -> None:
    """Check the audit log's hash chain; name the first modified, deleted or reordered entry.

    Needs the master key (entries are keyed with a key derived from it). Exits 1 when the log
    fails verification, naming the first bad line.
    """
    from orbitvault.ground import audit as audit_mod
    from orbitvault.ground.catalog import Catalog
    from orbitvault.grpc.gateway_server import load_master_key

    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        key = load_master_key(config)
        catalog = Catalog(config.state_dir)
        try:
            catalog.bind_master(key.fingerprint())  # a wrong master key would call every line modified
            head = audit_mod.read_head(catalog)
        finally:
            catalog.close()
        report = audit_mod.verify(config.audit_path, key.derive("audit"), head=head)
    if not report.ok:
        raise click.ClickException(
            f"audit log {config.audit_path} FAILS verification at line {report.first_bad_line}: {report.problem} "
            f"({report.entries} entries before it verified)"
        )
    click.echo(f"audit log {config.audit_path}: {report.entries} entries, hash chain intact")
    if report.note:
        click.echo(f"note: {report.note}", err=True)


@audit.command("show")
@_config_options
@click.option("--last", type=int, default=20, show_default=True, help="How many of the newest entries.")
def audit_show(
    config_path: Path | None, state_dir: Path | None, master_key_file: Path | None, nodes: str | None, last: int
) -> None:
    """Print the newest entries (JSON lines; verify first if it matters)."""
    from collections import deque

    from orbitvault.ground import audit as audit_mod

    with cli_errors():
        config = _load(config_path, state_dir=state_dir, master_key_file=master_key_file, nodes=nodes)
        if not config.audit_path.exists():
            raise click.ClickException(f"no audit log at {config.audit_path} yet")
        tail = deque((raw for _, raw, _ in audit_mod.entries(config.audit_path)), maxlen=max(last, 0))
    for raw in tail:
        try:
            click.echo(json.dumps(json.loads(raw), ensure_ascii=False))
        except ValueError:
            click.echo(raw.decode("utf-8", "replace"))
