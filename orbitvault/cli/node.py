"""`orbitvault node ...`: run and maintain a satellite storage node.

Adapters only: options are parsed here, the work is in `orbitvault.storage` and
`orbitvault.grpc.node_server`. Errors raised on purpose (`OrbitVaultError`) become one-line CLI
errors, never tracebacks. gRPC is imported only by the commands that serve, so `orbitvault --help`
stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from orbitvault.cli.errors import cli_errors
from orbitvault.cli.node_scrub import irradiate, scrub
from orbitvault.storage.config import load_node_config


@click.group()
def node() -> None:
    """Run and maintain a satellite storage node."""


@node.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Node config (TOML). ORBITVAULT_NODE_* variables override it, flags override both.",
)
@click.option("--listen", help='gRPC address "host:port"; port 0 picks a free one.  [default: 127.0.0.1:0]')
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the shard store lives.")
@click.option("--capacity", help='Bytes the node may use, e.g. "100GiB".')
@click.option(
    "--simulation/--no-simulation",
    default=None,
    help="Mark a new store as a test/simulation store (fault injection allowed).",
)
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), help="CA certificate (mTLS).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="This node's certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="This node's private key.")
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Serve plaintext gRPC without any authentication: local development only.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    config_path: Path | None,
    listen: str | None,
    data_dir: Path | None,
    capacity: str | None,
    simulation: bool | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool | None,
    log_level: str,
) -> None:
    """Serve the ShardStore and gRPC health services until SIGTERM or Ctrl-C.

    Mutual TLS with tls_ca/tls_cert/tls_key (`orbitvault pki issue node NAME`): only gateway and
    node certificates may call. Plaintext needs --insecure. Prints "listening on HOST:PORT" once
    the port is bound; logs (key=value) go to stderr.
    """
    with cli_errors():
        config = load_node_config(
            config_path,
            overrides={
                "listen": listen,
                "data_dir": data_dir,
                "capacity": capacity,
                "simulation": simulation,
                "tls_ca": tls_ca,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "insecure": insecure,
            },
        )
        from orbitvault.grpc.node_server import configure_logging, run

        configure_logging(log_level)
        run(config, announce=lambda address: click.echo(f"listening on {address}"))


node.add_command(scrub)
node.add_command(irradiate)
