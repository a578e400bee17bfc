"""`orbitvault pki ...`: the CA and the certificates for mutual TLS between clients, gateway and nodes.

Adapters only: the work is in `orbitvault.ground.pki`. Keys are written 0600 and nothing is ever
overwritten; the CA key should then move offline (it is needed again only to issue certificates).
"""

from __future__ import annotations

from pathlib import Path

import click

from orbitvault.cli.errors import cli_errors

_DIR_HELP = "The PKI directory (ca.crt, ca.key and the issued NAME.crt / NAME.key)."


@click.group()
def pki() -> None:
    """Certificates for mutual TLS: a CA, then node, gateway and client certificates."""


@pki.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True, help=_DIR_HELP)
@click.option("--name", default="orbitvault CA", show_default=True, help="The CA's common name.")
@click.option("--days", type=int, default=3650, show_default=True, help="CA lifetime in days.")
def init(directory: Path, name: str, days: int) -> None:
    """Create the CA (ca.crt, ca.key) in DIR."""
    from orbitvault.ground import pki as domain

    with cli_errors():
        info = domain.init(directory, name=name, days=days)
    click.echo(f"CA created in {directory}: {directory / 'ca.crt'} (sha256 {info.sha256[:16]}...)")
    click.echo(f"valid until {info.not_after:%Y-%m-%d}; keep {directory / 'ca.key'} offline when not issuing", err=True)


@pki.command("issue")
@click.argument("role", type=click.Choice(["node", "gateway", "client"]))
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True, help=_DIR_HELP)
@click.option("--dns", multiple=True, help="DNS name peers dial (repeatable).")
@click.option("--ip", "ips", multiple=True, help="IP address peers dial (repeatable).")
@click.option("--days", type=int, help="Lifetime in days [default: node/gateway 365, client 90].")
def issue(role: str, name: str, directory: Path, dns: tuple[str, ...], ips: tuple[str, ...], days: int | None) -> None:
    """Issue a ROLE certificate NAME.crt and key NAME.key, signed by the CA in DIR.

    The role is written into the certificate (SAN URI orbitvault:role:ROLE): nodes accept shard
    calls only from node and gateway certificates; the gateway accepts client and gateway ones.
    Node and gateway certificates need the names/addresses peers dial (--dns, --ip); without any,
    they get localhost, 127.0.0.1 and ::1 for local use.
    """
    from orbitvault.ground import pki as domain

    with cli_errors():
        issued = domain.issue(directory, role, name, dns=dns, ips=ips, days=days)
    info = issued.info
    sans = ", ".join([*info.dns, *info.ips]) or "none"
    click.echo(f"{role} certificate {issued.cert_path} and key {issued.key_path}")
    click.echo(f"valid until {info.not_after:%Y-%m-%d}; SANs: {sans}", err=True)


@pki.command("show")
@click.argument("cert", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def show(cert: Path) -> None:
    """Print a certificate's role, names and validity."""
    from cryptography import x509

    from orbitvault.ground import pki as domain

    with cli_errors():
        try:
            parsed = x509.load_pem_x509_certificate(cert.read_bytes())
        except ValueError:
            raise click.ClickException(f"{cert} is not a PEM certificate") from None
        info = domain.describe(parsed)
    click.echo(f"name:       {info.name}")
    click.echo(f"role:       {info.role or ('CA' if parsed.issuer == parsed.subject else 'none')}")
    click.echo(f"valid:      {info.not_before:%Y-%m-%d %H:%M} .. {info.not_after:%Y-%m-%d %H:%M} UTC")
    click.echo(f"dns:        {', '.join(info.dns) or '-'}")
    click.echo(f"ip:         {', '.join(info.ips) or '-'}")
    click.echo(f"sha256:     {info.sha256}")
